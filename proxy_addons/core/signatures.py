"""Injection signatures: named literal or regex patterns for known mass-injection waves.

A signatures file is TOML with one ``[[signature]]`` table per rule::

    [[signature]]
    name = "lizamoon"
    kind = "literal"            # or "regex"
    pattern = "lizamoon.com/ur.php"
    description = "2011 LizaMoon SQL-injection wave"
    reference = "https://..."
    targets = ["script", "url"] # optional; default both

A signature is matched, case-insensitively, against the decoded text of inline
scripts (``script``: after JS escapes are undone and literal concatenations
joined) and against the resolved URLs of active elements (``url``). A ``script``
match removes the script only when it can load or inject (the HTML scanner
decides, ``proxy_addons/core/jsscan.py``); in data it is a reported mention.
``parse_signatures`` is pure: it takes the file's text and raises
``ListFormatError`` (with the 1-based line of the offending table) on a bad file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy_addons.core.errors import ListFormatError

# A signature file is small and hand-written; anything bigger is a mistake.
MAX_SIGNATURES = 1000
MAX_PATTERN_CHARS = 2000
KINDS = ("literal", "regex")
TARGETS = ("script", "url")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Signature:
    """One named injection pattern; ``regex`` is compiled when the record is built."""

    name: str
    kind: str
    pattern: str
    description: str = ""
    reference: str = ""
    targets: frozenset[str] = frozenset(TARGETS)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"bad signature name {self.name!r} (want [a-z0-9._-], <= 64 chars)")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.pattern or len(self.pattern) > MAX_PATTERN_CHARS:
            raise ValueError(f"pattern must be 1..{MAX_PATTERN_CHARS} characters")
        if not self.targets or not self.targets <= frozenset(TARGETS):
            raise ValueError(f"targets must be a non-empty subset of {list(TARGETS)}")
        source = re.escape(self.pattern) if self.kind == "literal" else self.pattern
        try:
            compiled = re.compile(source, re.IGNORECASE | re.DOTALL)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc
        if compiled.search("") is not None:
            raise ValueError("pattern matches the empty string")
        object.__setattr__(self, "regex", compiled)

    def search(self, text: str) -> bool:
        return self.regex.search(text) is not None


def _table_lines(text: str) -> list[int]:
    """1-based line numbers of each ``[[signature]]`` header, in order."""
    return [
        i
        for i, line in enumerate(text.splitlines(), start=1)
        if re.match(r"^\s*\[\[\s*signature\s*\]\]", line)
    ]


def _str_field(table: dict[str, object], key: str, *, required: bool) -> str:
    value = table.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def parse_signatures(text: str, *, source: str = "signatures") -> list[Signature]:
    """Parse a signatures TOML document; raise ListFormatError naming the bad line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ListFormatError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"signature"}
    if unknown:
        raise ListFormatError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    tables = doc.get("signature", [])
    if not isinstance(tables, list):
        raise ListFormatError(f"{source}: 'signature' must be an array of tables")
    if len(tables) > MAX_SIGNATURES:
        raise ListFormatError(f"{source}: more than {MAX_SIGNATURES} signatures")
    lines = _table_lines(text)
    result: list[Signature] = []
    seen: set[str] = set()
    allowed = {"name", "kind", "pattern", "description", "reference", "targets"}
    for index, table in enumerate(tables):
        line = lines[index] if index < len(lines) else 0
        where = f"{source}: line {line}" if line else f"{source}: signature #{index + 1}"
        try:
            if not isinstance(table, dict):
                raise ValueError("not a table")
            extra = set(table) - allowed
            if extra:
                raise ValueError(f"unknown key(s): {', '.join(sorted(extra))}")
            targets_raw = table.get("targets", list(TARGETS))
            if not isinstance(targets_raw, list) or not all(
                isinstance(t, str) for t in targets_raw
            ):
                raise ValueError("'targets' must be a list of strings")
            sig = Signature(
                name=_str_field(table, "name", required=True),
                kind=_str_field(table, "kind", required=True),
                pattern=_str_field(table, "pattern", required=True),
                description=_str_field(table, "description", required=True),
                reference=_str_field(table, "reference", required=True),
                targets=frozenset(targets_raw),
            )
        except ValueError as exc:
            raise ListFormatError(f"{where}: {exc}") from exc
        if sig.name in seen:
            raise ListFormatError(f"{where}: duplicate signature name {sig.name!r}")
        seen.add(sig.name)
        result.append(sig)
    return result


def match_signature(signatures: Sequence[Signature], text: str, target: str) -> Signature | None:
    """The first signature for ``target`` ("script" or "url") that matches ``text``."""
    for sig in signatures:
        if target in sig.targets and sig.regex.search(text) is not None:
            return sig
    return None
