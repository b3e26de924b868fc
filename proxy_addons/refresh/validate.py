"""Never break, never poison: the checks a refreshed feed must pass before it replaces
its last good version.

Pure: bytes and metadata in, a :class:`Validation` out; nothing here touches a
socket or a file. A failed check *holds the source back*: its last good data
stays in force and the reason is shown in its status.

Checks, in order:

1. an HTML page served with 200 (captive portal, login wall, error page);
2. the format parse, which refuses a list whose entries are mostly rejected
   and rejects implausible entries (a bare number such as ``106``) line by line;
3. the poison guard's worst cases: a rule that blocks everything, a whole
   top-level or ICANN public suffix (``com``, ``co.uk``), a network wider than
   the guard allows. Milder refusals (a private suffix such as ``duckdns.org``,
   loopback) only drop that rule at compile time and are counted;
4. canaries: a host, domain or IP rule that would block a never-block host
   (the feed hosts, the proxy's own names, top sites). URL rules with a path
   on those hosts are legitimate (URLhaus lists single files on github.com);
   a URL rule on the host's root blocks the whole host and counts as a hit;
5. the size guard: a list whose *distinct* rules suddenly fall below half of
   its usual size (or to nothing), or grow to more than
   ``GROWTH_MAX_FACTOR`` times it, is held back unless forced. "Usual" is
   measured against the counts accepted before (:class:`SizeBaseline`) so
   that one spike does not move it: a feed returning to its usual size after
   a spike is accepted, and duplicated lines never count.
"""

from __future__ import annotations

import ipaddress
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from operator import itemgetter
from typing import Final
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

from proxy_addons.core.canon import canonical_host
from proxy_addons.core.errors import CanonError, ListFormatError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.guard import PoisonGuard
from proxy_addons.core.model import ParsedList, RuleKind
from proxy_addons.lists.inforce import ListRecord

# Names that must keep working whatever a feed says: mitmproxy's certificate
# page (served by the proxy itself) and a few top sites, used even when the
# sources file declares no canaries.
DEFAULT_CANARIES: Final = (
    "mitm.it",
    "google.com",
    "www.google.com",
    "youtube.com",
    "microsoft.com",
    "apple.com",
    "amazon.com",
    "wikipedia.org",
    "cloudflare.com",
)
# Bytes at the start of a body searched for an HTML document.
HTML_SNIFF_BYTES: Final = 1024
# Below this many entries a list is exempt from the "lost more than half" rule:
# small C2 lists (Feodo "recommended" has a few dozen IPs) swing by half in a day.
SHRINK_MIN_BASE: Final = 50
SHRINK_MAX_LOSS: Final = 0.5
# A list that grows to more than this many times its usual size is held back: feeds
# grow by campaigns (URLhaus doubles on a busy day), not by orders of magnitude; a
# sudden million rules is a broken export or a poisoned mirror.
GROWTH_MAX_FACTOR: Final = 4
# Growth by fewer rules than this is never held: a 30-IP C2 list may triple in a day,
# and a few hundred extra exact rules cannot do much harm.
GROWTH_MIN_ADDED: Final = 1000
# Accepted distinct counts remembered per list (the baseline's memory): the median of
# this many is not moved by one or two spikes.
SIZE_HISTORY: Final = 5
MAX_REASON_SAMPLES: Final = 3
_HTML_TAGS: Final = (b"<html", b"<head", b"<body", b"<title", b"<meta")
_KIND: Final = itemgetter(0)
_KEY: Final = itemgetter(1)
_EXCEPTION: Final = itemgetter(4)


@dataclass(frozen=True, slots=True)
class Validation:
    """The outcome for one body: accepted, or held back and why."""

    accepted: bool
    reason: str | None = None  # why it is held back
    parsed: ParsedList | None = None
    entries: dict[str, int] = field(default_factory=dict)  # by rule kind (+ "exception")
    rejected: int = 0  # lines the parser rejected
    refused: int = 0  # rules the poison guard will drop at compile time
    forced: bool = False  # accepted only because the size guard was overridden
    distinct: int = 0  # distinct rules (kind, key, exception): what the size guard counts

    @property
    def total(self) -> int:
        return sum(self.entries.values())


@dataclass(frozen=True, slots=True)
class SizeBaseline:
    """What a list's size is measured against: the distinct counts accepted before.

    A shrink is measured against the *smaller* of the last count and the median
    of the history, growth against the *larger*: a change is held back only when
    it is sudden compared with both what is in force and the list's usual size.
    So a spike (accepted by force, or small enough to pass) does not lock in: the
    median stays at the usual size and the return to it is accepted; and a
    gradual legitimate change is not held because the median lags behind it.
    """

    history: tuple[int, ...] = ()  # oldest first; the last one is in force

    @classmethod
    def of(cls, history: Iterable[int] | None) -> SizeBaseline:
        return cls(tuple(int(n) for n in history or ())[-SIZE_HISTORY:])

    @classmethod
    def of_record(cls, record: ListRecord) -> SizeBaseline:
        """The baseline of a list in force (its history, else its one count)."""
        return cls.of(record.history or (record.rules,))

    def after(self, accepted: int) -> SizeBaseline:
        """The baseline once ``accepted`` distinct rules are in force."""
        return SizeBaseline((*self.history, accepted)[-SIZE_HISTORY:])

    @property
    def known(self) -> bool:
        return bool(self.history)

    def usual(self) -> int:
        return int(statistics.median_low(self.history))

    def check(self, total: int) -> str | None:
        """Why ``total`` distinct rules is a sudden change, or None."""
        if not self.history:
            return None
        last, usual = self.history[-1], self.usual()
        low, high = min(last, usual), max(last, usual)
        if total == 0 and high > 0:
            return f"became empty (had {last} entries)"
        if low >= SHRINK_MIN_BASE and total < low * (1 - SHRINK_MAX_LOSS):
            what = "of what is in force" if low == last else f"of its usual size; {last} in force"
            return f"shrank from {low} to {total} entries (lost more than half {what})"
        if total > high * GROWTH_MAX_FACTOR and total - high >= GROWTH_MIN_ADDED:
            what = "its usual size" if high == usual else "what is in force"
            return f"grew from {high} to {total} entries (more than {GROWTH_MAX_FACTOR}x {what})"
        return None


@cache
def _icann() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


class Canaries:
    """Hosts (and IPs) no host/domain/IP rule may block."""

    __slots__ = ("hosts", "suffixes", "ips")

    def __init__(self, names: Iterable[str]) -> None:
        hosts: set[str] = set()
        ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for name in names:
            try:
                h = canonical_host(name)
            except CanonError:
                continue
            try:
                ips.add(ipaddress.ip_address(h.strip("[]")))
            except ValueError:
                hosts.add(h)
        self.hosts = frozenset(hosts)
        # A DOMAIN rule blocks a canary when it is the canary or one of its parents.
        self.suffixes = frozenset(
            ".".join(parts[i:])
            for h in hosts
            for parts in [h.split(".")]
            for i in range(len(parts))
        )
        self.ips = frozenset(ips)

    @classmethod
    def build(
        cls,
        never_block: Iterable[str] = (),
        feed_urls: Iterable[str | None] = (),
        own_names: Iterable[str] = (),
    ) -> Canaries:
        """Canaries from the sources file, the feed hosts and the proxy's own names."""
        feed_hosts = [urlsplit(u).hostname or "" for u in feed_urls if u]
        return cls([*DEFAULT_CANARIES, *never_block, *feed_hosts, *own_names])

    def hits(self, parsed: ParsedList) -> list[str]:
        """Rules that would block a canary, as "rule (line n) blocks host"."""
        out: list[str] = []
        for r in parsed.rules:
            if r.exception:
                continue
            kind, key = r.kind, r.key
            hit: str | None = None
            if kind is RuleKind.DOMAIN or kind is RuleKind.URL:
                if kind is RuleKind.URL:
                    host, _, path = key.partition("/")
                    if path:  # a file on the host: legitimate in URL feeds
                        continue
                    key = host
                if key in self.suffixes:
                    hit = next(h for h in sorted(self.hosts) if h == key or h.endswith("." + key))
            elif kind is RuleKind.EXACT:
                hit = key if key in self.hosts else None
            elif self.ips and kind in (RuleKind.IP, RuleKind.CIDR):
                net = ipaddress.ip_network(key, strict=False)
                hit = next((str(ip) for ip in self.ips if ip in net), None)
            if hit is not None:
                out.append(f"{r.text!r} (line {r.line}) blocks {hit}")
                if len(out) >= MAX_REASON_SAMPLES:
                    break
        return out


def looks_like_html(data: bytes, content_type: str | None = None) -> bool:
    """True for an HTML page: a text/html answer, or ``<html``/``<!doctype html`` near the start."""
    if content_type and content_type.split(";", 1)[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    ):
        return True
    head = data[:HTML_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return True
    # No list format has lines starting with "<": a page whose doctype was dropped.
    return any(line.lstrip().startswith(_HTML_TAGS) for line in head.splitlines())


def poison(parsed: ParsedList) -> tuple[list[str], int]:
    """(catastrophic rules that hold the list back, count of rules the guard will drop)."""
    guard = PoisonGuard.default()
    hosts = [
        r.key
        for r in parsed.rules
        if r.kind in (RuleKind.DOMAIN, RuleKind.EXACT) and not r.exception
    ]
    refused_hosts = guard.refused_hosts(hosts)
    worst: list[str] = []
    refused = len(refused_hosts)
    for host, reason in refused_hosts.items():
        if reason == "blocks everything" or _icann().is_public(host):
            worst.append(f"{host!r} ({reason})")
    for r in parsed.rules:
        if r.exception or r.kind in (RuleKind.DOMAIN, RuleKind.EXACT):
            continue
        why = guard.check(r)
        if why is None:
            continue
        refused += 1
        if r.kind is RuleKind.CIDR and why.startswith("network wider"):
            worst.append(f"{r.text!r} (line {r.line}: {why})")
    return worst, refused


def entry_counts(parsed: ParsedList) -> dict[str, int]:
    """Distinct rules by kind (``exception`` for ``@@`` rules): a line written twice is one rule.

    Sets of the keys the parser already made, one per kind: no new object per rule
    (a million-rule feed is counted in a fraction of a second and ~30 MB).
    """
    rules = parsed.rules
    kinds = set(map(_KIND, rules))
    if len(kinds) == 1 and not any(map(_EXCEPTION, rules)):  # the usual feed: at C speed
        return {RuleKind(kinds.pop()).label: len(set(map(_KEY, rules)))}
    keys: dict[str, set[str]] = {}
    for r in rules:
        keys.setdefault("exception" if r.exception else r.kind.label, set()).add(r.key)
    return {label: len(k) for label, k in sorted(keys.items())}


def distinct_count(parsed: ParsedList) -> int:
    return sum(entry_counts(parsed).values())


def validate_body(
    data: bytes,
    *,
    fmt: str = "auto",
    name: str = "list",
    content_type: str | None = None,
    previous_total: int | None = None,
    baseline: SizeBaseline | None = None,
    canaries: Canaries | None = None,
    force: bool = False,
) -> Validation:
    """Decide whether ``data`` may replace the last good version of a source.

    ``baseline`` holds the distinct counts accepted before; ``previous_total``
    (the count of the last good version) stands in when there is none.
    ``force`` overrides the size guard only; the other checks always apply.
    """
    if looks_like_html(data, content_type):
        ct = f" (Content-Type {content_type})" if content_type else ""
        return Validation(False, f"HTML page instead of a list{ct}: captive portal or error page?")
    try:
        parsed = parse_list(data, fmt, name=name)
    except ListFormatError as exc:
        return Validation(False, f"format: {exc}")
    entries = entry_counts(parsed)
    worst, refused = poison(parsed)

    def outcome(reason: str | None, *, forced: bool = False) -> Validation:
        return Validation(
            reason is None,
            reason,
            parsed=parsed,
            entries=entries,
            rejected=parsed.rejected_count,
            refused=refused,
            forced=forced,
            distinct=sum(entries.values()),
        )

    if worst:
        return outcome(f"poison guard: {', '.join(worst[:MAX_REASON_SAMPLES])}")
    hits = (canaries or Canaries.build()).hits(parsed)
    if hits:
        return outcome(f"canary: {'; '.join(hits)}")
    if baseline is None or not baseline.known:
        baseline = SizeBaseline.of([previous_total] if previous_total is not None else ())
    sudden = baseline.check(sum(entries.values()))
    if sudden is not None and not force:
        return outcome(f"{sudden} (use --force to accept)")
    return outcome(None, forced=sudden is not None)
