"""The cache directory's layout: every path under it, named in one place.

The refresher writes this tree, every proxy process and command reads it, and they
may run as different users from different working directories: a path spelled in
two modules is a path that one day differs. Everything that finds a file under the
cache directory asks a :class:`CacheLayout`.

::

    <cache>/
      feeds/<name>.body            the last good body of a URL source
      feeds/<name>.state.json      its fetch state (validators, failures, holds)
      snapshots/                   compiled snapshots and the ``current`` pointer
      campaign/                    the campaign detector's list, lock and state
      ledger.sqlite3               the sightings ledger (unless a database URL is set)
      admin-token                  the admin API's generated token
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import platformdirs

CACHE_DIR_ENV: Final = "JECTGUARD_CACHE_DIR"
FEEDS_DIR: Final = "feeds"
BODY_SUFFIX: Final = ".body"
STATE_SUFFIX: Final = ".state.json"
SNAPSHOT_DIR: Final = "snapshots"
CAMPAIGN_DIR: Final = "campaign"
LEDGER_FILE: Final = "ledger.sqlite3"
TOKEN_FILE_NAME: Final = "admin-token"


def default_cache_dir() -> Path:
    """``$JECTGUARD_CACHE_DIR``, else the per-user data directory."""
    env = os.environ.get(CACHE_DIR_ENV)
    return (
        Path(env).expanduser()
        if env
        else Path(platformdirs.user_data_dir("jectguard", appauthor=False))
    )


def cache_dir_from(setting: str | os.PathLike[str] | None) -> Path:
    """The cache directory a flag or option names (``~`` expanded), else the default.

    One rule for ``--cache-dir``, the settings file's ``cache_dir`` and ``jg_cache_dir``:
    the same text names the same directory whoever reads it.
    """
    text = os.fspath(setting) if setting is not None else ""
    return Path(text).expanduser() if text else default_cache_dir()


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """Where each file lives under one cache directory."""

    root: Path

    @classmethod
    def from_setting(cls, setting: str | os.PathLike[str] | None) -> CacheLayout:
        return cls(cache_dir_from(setting))

    @property
    def feeds(self) -> Path:
        return self.root / FEEDS_DIR

    def feed_body(self, name: str) -> Path:
        """The last good body of URL source ``name``."""
        return self.feeds / f"{name}{BODY_SUFFIX}"

    def feed_state(self, name: str) -> Path:
        return self.feeds / f"{name}{STATE_SUFFIX}"

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOT_DIR

    @property
    def campaign(self) -> Path:
        return self.root / CAMPAIGN_DIR

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def admin_token(self) -> Path:
        return self.root / TOKEN_FILE_NAME


__all__ = [
    "CACHE_DIR_ENV",
    "CacheLayout",
    "LEDGER_FILE",
    "SNAPSHOT_DIR",
    "STATE_SUFFIX",
    "TOKEN_FILE_NAME",
    "cache_dir_from",
    "default_cache_dir",
]
