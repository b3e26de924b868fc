"""Value objects shared by the parsers, the compiler and the matcher."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class RuleKind(enum.IntEnum):
    """What a rule's key means and how it matches."""

    DOMAIN = 1  # key: canonical host; matches the host and every subdomain
    EXACT = 2  # key: canonical host; matches that host only
    URL = 3  # key: Safe Browsing expression "host/path[?query]"
    IP = 4  # key: canonical IP address (v4 dotted quad, v6 compressed)
    CIDR = 5  # key: canonical network "addr/len"

    @property
    def label(self) -> str:
        return self.name.lower()


class Mode(enum.StrEnum):
    ENFORCE = "enforce"  # a match blocks the request
    MONITOR = "monitor"  # a match is logged; the request passes


class Rule(NamedTuple):
    """One rule as parsed from one line of one list.

    ``key`` is canonical (what the index stores); ``text`` is the rule as
    written in the list (for provenance); ``line`` is 1-based.
    ``exception`` marks an allow rule inside a block list (AdBlock ``@@``).
    A NamedTuple rather than a dataclass: feeds have millions of rules, and
    a tuple is built several times faster and takes less memory.
    """

    kind: RuleKind
    key: str
    text: str
    line: int
    exception: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that did not become a rule, and why."""

    line: int
    text: str
    reason: str


@dataclass(slots=True)
class ParsedList:
    """What a parser made of one list: rules, plus every rejected line counted."""

    format: str
    rules: list[Rule] = field(default_factory=list)
    rejected_count: int = 0
    # reason -> count, for every rejected line
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    # a few samples (at most MAX_REJECTED_SAMPLES) to show a person
    rejected_samples: list[Rejected] = field(default_factory=list)
    # lines that are neither rules nor errors (blank, comments, localhost...)
    skipped: int = 0
    # the skips worth naming, by reason ("cosmetic", "header")
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def count(self, kind: RuleKind, *, exception: bool = False) -> int:
        return sum(1 for r in self.rules if r.kind is kind and r.exception is exception)


@dataclass(frozen=True, slots=True)
class ListSpec:
    """One configured list: where it comes from and how its matches are treated."""

    name: str
    path: str | None = None
    url: str | None = None
    format: str = "auto"
    category: str = "malware"
    mode: Mode = Mode.ENFORCE
    allow: bool = False  # an allowlist: its rules override block rules
    enabled: bool = True
    refresh: int = 86400  # seconds between refreshes of a URL source


class Match(NamedTuple):
    """Provenance of a matching rule (a NamedTuple: built on every hit)."""

    list: str
    rule: str
    line: int
    kind: RuleKind
    category: str
    mode: Mode
    key: str

    def as_dict(self) -> dict[str, object]:
        return {
            "list": self.list,
            "rule": self.rule,
            "line": self.line,
            "kind": self.kind.label,
            "category": self.category,
            "mode": self.mode.value,
        }
