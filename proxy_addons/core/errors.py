"""One error base class for the core, with specific subclasses.

Every error carries a ``hint``: "input" errors are the caller's data (a bad URL,
a malformed list) and map to HTTP 400 / exit code 2; "state" errors concern
files the program owns (a corrupt snapshot) and map to a warning and keeping
the last good state.
"""

from __future__ import annotations


class JectguardError(Exception):
    """Base class of every error the core raises on purpose."""

    hint = "input"


class CanonError(JectguardError, ValueError):
    """A URL or host cannot be parsed or canonicalized."""


class URLTooLong(CanonError):
    """A URL longer than jectguard checks (``canon.MAX_URL_LENGTH``, as sent: encoded,
    without its fragment). The proxy refuses such a request: it cannot be checked."""


class ListFormatError(JectguardError, ValueError):
    """A whole list is refused (binary, unknown format, mostly rejected lines)."""


class SourceConfigError(JectguardError, ValueError):
    """The sources file (sources.toml) is malformed."""


class SnapshotError(JectguardError):
    """A compiled snapshot is corrupt, truncated, or of another version."""

    hint = "state"
