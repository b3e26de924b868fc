"""Where else a request or response names a host: pure readers of header values.

- :func:`routed_name`: the name a server routes a Host header by when the URL
  parser refuses the header (nginx's ``$host``).
- :func:`refresh_target`: the URL of a ``Refresh`` header, as HTML reads it.
- :func:`join_target`: a ``Location``/``Refresh`` URL joined to the request URL by
  the WHATWG parser, as a browser joins it (``urljoin`` reads ``/\\host`` as a path).
"""

from __future__ import annotations

import re
from typing import Final

import ada_url

_SURROGATE_RE: Final = re.compile("[\udc80-\udcff]")
_HTML_SPACE: Final = " \t\n\f\r"


def routed_name(value: str) -> str:
    """The name a server routes an unreadable Host by (nginx ``$host``).

    nginx keeps what comes before the first ``:`` (the port is not validated),
    drops one trailing dot and lowercases; Apache does the same with the name.
    """
    v = value.strip().lower()
    if v.startswith("["):
        return v[: v.find("]") + 1] if "]" in v else ""
    return v.partition(":")[0].rstrip(".")


def refresh_target(value: str) -> str | None:
    """The URL of a ``Refresh`` header (HTML's shared declarative refresh steps), if any."""
    s = value.lstrip(_HTML_SPACE)
    i = 0
    while i < len(s) and s[i].isdigit():
        i += 1
    if i == 0 and not s.startswith("."):
        return None
    while i < len(s) and (s[i].isdigit() or s[i] == "."):
        i += 1
    if i == len(s) or s[i] not in ";," + _HTML_SPACE:
        return None
    rest = s[i:].lstrip(_HTML_SPACE)
    if rest[:1] in (";", ","):
        rest = rest[1:].lstrip(_HTML_SPACE)
    if rest[:3].lower() == "url":
        after = rest[3:].lstrip(_HTML_SPACE)
        if after.startswith("="):
            rest = after[1:].lstrip(_HTML_SPACE)
    if rest[:1] in ("'", '"'):
        rest = rest[1:].partition(rest[0])[0]
    return rest or None


def join_target(base: str, target: str) -> str | None:
    """``target`` resolved against ``base`` by the WHATWG parser; None if no browser would."""
    # Header bytes that were not UTF-8 arrive as lone surrogates: a browser sends them
    # percent-encoded, so the engine must see them that way too.
    target = _SURROGATE_RE.sub(lambda m: f"%{ord(m.group(0)) - 0xDC00:02X}", target)
    try:
        return str(ada_url.join_url(base, target))
    except (ValueError, UnicodeError):
        return None  # the browser's own parser refuses it too: nothing is followed


__all__ = ["join_target", "refresh_target", "routed_name"]
