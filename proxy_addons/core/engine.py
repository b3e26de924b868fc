"""The engine: a big block index plus a small allow index, answering with verdicts.

The block index is compiled from the (possibly huge) feeds; the allow index
from allowlists and ``@@`` exception rules. They are separate so that editing
the small allowlist never rebuilds the big index. A third, optional small
block index (``extra``: lists the proxy writes itself, such as the campaign
list) is consulted when the big one has no match, so it too changes without a
rebuild. An :class:`Engine` is immutable: a refresh builds a new one and its
users swap one reference.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Final, NamedTuple

from .canon import (
    MAX_HOST_LENGTH,
    MAX_URL_LENGTH,
    CanonicalURL,
    canonical_host,
    canonicalize_url,
    has_hosted_scheme,
    host_kind,
)
from .embedding import carried_ipv4
from .errors import CanonError, URLTooLong
from .guard import PoisonGuard
from .index import CompiledIndex, CompileStats, SnapshotImage, compile_index, host_probes
from .model import ListSpec, Match, Mode, ParsedList, RuleKind


class Action(enum.StrEnum):
    BLOCK = "block"  # an enforce rule matched
    MONITOR = "monitor"  # only monitor-mode rules matched: log, let it pass
    ALLOW = "allow"  # an allowlist entry matched (and wins over any block rule)
    PASS = "pass"  # nothing matched
    ERROR = "error"  # the input could not be canonicalized


class Verdict(NamedTuple):
    """The answer for one URL or host, with provenance.

    A NamedTuple: one is built per request, and a tuple builds fastest.
    """

    action: Action
    input: str
    canonical: CanonicalURL | None = None
    host: str | None = None
    match: Match | None = None  # the deciding rule (block, monitor or allow)
    overridden: Match | None = None  # the block rule an allow entry overrode
    error: str | None = None

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    @property
    def listed(self) -> bool:
        """A block rule matched: enforced (block) or only reported (monitor).

        The one "block or monitor" test: whatever reports a listed host (the
        scanner, DNS mode, resolved addresses) asks this, then the mode decides.
        """
        return self.action is Action.BLOCK or self.action is Action.MONITOR

    def as_dict(self) -> dict[str, object]:
        m = self.match
        return {
            "url": self.input,
            "canonical_url": self.canonical.url if self.canonical else None,
            "host": self.host,
            "verdict": self.action.value,
            "list": m.list if m else None,
            "rule": m.rule if m else None,
            "line": m.line if m else None,
            "kind": m.kind.label if m else None,
            "category": m.category if m else None,
            "mode": m.mode.value if m else None,
            "overridden": self.overridden.as_dict() if self.overridden else None,
            "error": self.error,
        }


def split_exceptions(
    lists: Sequence[tuple[ListSpec, ParsedList]],
) -> tuple[list[tuple[ListSpec, ParsedList]], list[tuple[ListSpec, ParsedList]]]:
    """Split configured lists into block lists and allow lists.

    ``@@`` exception rules inside a block list become allow rules of their own list;
    a monitor-mode list's are dropped: a list on trial only reports, and its exceptions
    would otherwise unblock what enforcing lists block (an allow match wins).
    """
    block: list[tuple[ListSpec, ParsedList]] = []
    allow: list[tuple[ListSpec, ParsedList]] = []
    for spec, parsed in lists:
        if spec.allow:
            allow.append((spec, parsed))
            continue
        exc = [r for r in parsed.rules if r.exception]
        if exc:
            rules = [r for r in parsed.rules if not r.exception]
            block.append((spec, ParsedList(parsed.format, rules)))
            if spec.mode is not Mode.MONITOR:
                allow.append((replace(spec, allow=True), ParsedList(parsed.format, exc)))
        else:
            block.append((spec, parsed))
    return block, allow


@dataclass(frozen=True, slots=True)
class CompiledBlock:
    """One compile of configured lists: the block image, and what goes to the allow index."""

    image: SnapshotImage
    stats: CompileStats
    # The allow lists given, then each block list's ``@@`` exceptions as a list of its
    # own (the order ``lists/store.compile_allow`` uses for a snapshot's engine too):
    # the small allow index is compiled from these where the engine is assembled.
    allow: tuple[tuple[ListSpec, ParsedList], ...]
    # Those exceptions alone: published beside a snapshot, which holds no allow list.
    exceptions: tuple[tuple[ListSpec, ParsedList], ...]


def compile_block(
    lists: Sequence[tuple[ListSpec, ParsedList]], *, guard: PoisonGuard | None = None
) -> CompiledBlock:
    """Compile the block index of parsed lists: the one compile behind every engine.

    ``Engine.from_lists`` (files, tests, a cold start) and the refresher's worker
    (which publishes the image as a snapshot) both come here, so a list compiles
    to the same rules whichever way it is loaded.
    """
    block, allow = split_exceptions(lists)
    given = {id(parsed) for spec, parsed in lists if spec.allow}
    allow_lists = tuple(item for item in allow if id(item[1]) in given)
    exceptions = tuple(item for item in allow if id(item[1]) not in given)
    image, stats = compile_index(block, guard=guard)
    return CompiledBlock(image, stats, allow_lists + exceptions, exceptions)


def allow_index(
    allow: Sequence[tuple[ListSpec, ParsedList]], *, guard: PoisonGuard | None = None
) -> tuple[CompiledIndex, CompileStats]:
    """The small allow index of allow lists and exceptions (``CompiledBlock.allow``), in memory."""
    img, stats = compile_index(allow, guard=guard)
    return CompiledIndex(img), stats


# Which verdict wins when an IPv6 address and the IPv4 it carries disagree.
_RANK: Final = {
    Action.PASS: 0,
    Action.ALLOW: 1,
    Action.MONITOR: 2,
    Action.BLOCK: 3,
    Action.ERROR: 4,
}


def blocked_by(engine: Engine) -> Callable[[str], Match | None]:
    """The scanner's ``is_blocked`` for one engine: the block or monitor match, else None.

    One mapping for the strip addon, its scan workers and ``jectguard strip``.
    """
    return engine.listed_url


# An absolute http(s) URL whose host is written as a plain ASCII name: labels of letters,
# digits and hyphens, none empty, the last one starting with a letter, then at most a port,
# then the end of the authority. For such text the WHATWG parser's host is that name in
# lower case, or the URL does not parse (a bad punycode label, a port out of range): there
# is no space to strip, no tab or newline to remove, no userinfo, backslash, escape or
# character IDNA maps, and the last label is no number (WHATWG reads a host whose last
# label is a number as an IPv4 address). Any other text takes the full parse.
_PLAIN_NAME_URL: Final = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://((?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*)(?::[0-9]*)?(?=[/?#]|\Z)"
)
# Names remembered as "no block rule is keyed by it or a parent" (per engine; at most
# 253 characters each: ~5 MB at worst).
QUIET_NAMES_MAX: Final = 16_384
# What ``listed_url`` answers for a URL too long to check (see there).
UNCHECKABLE: Final = Match(
    list="jectguard",
    rule=f"URL longer than {MAX_URL_LENGTH} characters (encoded): cannot be checked",
    line=0,
    kind=RuleKind.URL,
    category="uncheckable",
    mode=Mode.ENFORCE,
    key="",
)


def plain_url_name(url: str) -> str | None:
    """The host of ``url`` when its text names it plainly (see ``_PLAIN_NAME_URL``), else None."""
    m = _PLAIN_NAME_URL.match(url)
    return None if m is None else m.group(1).lower()


class Engine:
    """Answers "is this blocked, and why?" for URLs, hosts and IP addresses."""

    __slots__ = ("block", "allow", "extra", "_quiet")

    # NAT64 prefixes configured by the operator (``jg_nat64_prefixes``), besides the
    # well-known ones: process-wide, as a translator is a property of the network.
    nat64: ClassVar[tuple[ipaddress.IPv6Network, ...]] = ()
    # Paths match rules in any letter case (``jg_url_case_insensitive``; IIS does so).
    fold_case: ClassVar[bool] = False

    def __init__(
        self, block: CompiledIndex, allow: CompiledIndex, extra: CompiledIndex | None = None
    ) -> None:
        self.block = block
        self.allow = allow
        self.extra = extra  # small block lists of the proxy's own (None: none)
        self._quiet: dict[str, bool] = {}  # name -> no block record under it (listed_url)

    @classmethod
    def from_lists(
        cls,
        lists: Sequence[tuple[ListSpec, ParsedList]],
        *,
        guard: PoisonGuard | None = None,
    ) -> tuple[Engine, CompileStats, CompileStats]:
        """Compile everything in memory (small lists, tests, ``check --blocklist``)."""
        built = compile_block(lists, guard=guard)
        allow, astats = allow_index(built.allow, guard=guard)
        return cls(CompiledIndex(built.image), allow), built.stats, astats

    @staticmethod
    def empty_allow() -> CompiledIndex:
        return allow_index([])[0]

    # -- checks -------------------------------------------------------------

    def check_url(self, url: str) -> Verdict:
        """Verdict for a URL as a browser would request it."""
        try:
            cu = canonicalize_url(url)
        except CanonError as exc:
            return Verdict(Action.ERROR, url, error=str(exc))
        return self.check_canonical(cu, url)

    def listed_url(self, url: str) -> Match | None:
        """The block or monitor match of ``check_url(url)``, else None: the scanner's question.

        A page's script can name thousands of URLs; most are on hosts no rule mentions.
        Every block rule and marker is keyed by a host (a URL on a name is matched only
        through its name and parent domains, see ``CompiledIndex.match_url``), so when
        neither block index holds a record under the URL's name or any parent, no rule
        can match, whatever the path: that is one probe per label, remembered per name,
        instead of a full parse. Only for text whose host is certain without parsing
        (``plain_url_name``); anything else, and every name with a record, is checked in
        full. The allow index is not asked: it only ever turns a block into a pass.

        A URL too long to check (``MAX_URL_LENGTH`` as sent: encoded, without its
        fragment) with a scheme that names a host is answered with :data:`UNCHECKABLE`:
        the proxy refuses such a request (an error never passes), so whatever would
        load it goes too.
        """
        # (Short enough that no encoding can take it past the cap: at most 9 bytes a
        # character, "€" being %E2%82%AC; a longer URL is parsed, and may be uncheckable.)
        name = plain_url_name(url) if len(url) <= MAX_URL_LENGTH // 9 else None
        if name is not None:
            quiet = self._quiet.get(name)
            if quiet is None:
                probes = host_probes(name, "domain")
                quiet = not self.block.holds_any(probes) and (
                    self.extra is None or not self.extra.holds_any(probes)
                )
                if len(name) <= MAX_HOST_LENGTH:  # (a longer name is never a key, nor kept)
                    if len(self._quiet) >= QUIET_NAMES_MAX:
                        self._quiet.clear()
                    self._quiet[name] = quiet
            if quiet:
                return None
        try:
            cu = canonicalize_url(url)
        except URLTooLong:
            return UNCHECKABLE if has_hosted_scheme(url) else None
        except CanonError:
            return None  # no request a browser makes (the proxy refuses any it gets)
        v = self.check_canonical(cu, url)
        return v.match if v.listed else None

    def check_canonical(self, cu: CanonicalURL, original: str | None = None) -> Verdict:
        probes = host_probes(cu.host, cu.host_kind)  # hashed once, asked of both indexes
        blocked = self.block.match_url(cu, probes, fold_case=self.fold_case)  # allow: as written
        if self.extra is not None and (blocked is None or blocked.mode is Mode.MONITOR):
            # the proxy's own lists (campaign) enforce where a feed only monitors
            blocked = self.extra.match_url(cu, probes, fold_case=self.fold_case) or blocked
        allowed = None if self.allow.empty else self.allow.match_url(cu, probes)
        v = self._decide(
            original if original is not None else cu.url, cu, cu.host, blocked, allowed
        )
        if cu.host_kind == "ipv6" and (v.action is Action.PASS or v.action is Action.MONITOR):
            # An IPv6 address that carries an IPv4 one (6to4, NAT64, Teredo) reaches it.
            for v4 in carried_ipv4(ipaddress.IPv6Address(cu.host), self.nat64):
                v2 = self.check_canonical(cu._replace(host=str(v4), host_kind="ipv4"), v.input)
                if _RANK[v2.action] > _RANK[v.action]:
                    v = v2
        return v

    @property
    def url_rules_on_addresses(self) -> bool:
        """Whether a block URL rule names an IP address (see :meth:`check_at_address`)."""
        return self.block.url_rules_on_addresses or (
            self.extra is not None and self.extra.url_rules_on_addresses
        )

    def url_rules_at(self, address: str) -> bool:
        """Whether a block URL rule names this address (or the IPv4 address it carries).

        One hash probe an index: cheap enough to ask before building anything.
        """
        try:
            addr = canonical_host(address)
        except CanonError:
            return True  # let check_at_address say why
        hosts = [addr]
        if ":" in addr:
            hosts += map(str, carried_ipv4(ipaddress.IPv6Address(addr), self.nat64))
        indexes = (self.block,) if self.extra is None else (self.block, self.extra)
        return any(ix.has_url_rules_on(h) for ix in indexes for h in hosts)

    def check_at_address(self, cu: CanonicalURL, address: str) -> Verdict:
        """Verdict for a request as the server at ``address`` receives it.

        A name that resolves to an address reaches the files a rule written for that
        address names (``http://192.0.2.2/bins/x`` for ``http://any-name/bins/x``, as
        nip.io-style wildcard DNS makes it): the proxy checks each request again with
        the host replaced by the address it connects to. Only the proxy can: ``check``
        does not resolve names.
        """
        try:
            addr = canonical_host(address)
        except CanonError as exc:
            return Verdict(Action.ERROR, address, error=str(exc))
        at = cu._replace(host=addr, host_kind=host_kind(addr))
        # The address's own IP and CIDR rules were checked with the resolution: unless a
        # URL rule names it, there is nothing to add.
        if not self.url_rules_at(addr):
            return Verdict(Action.PASS, at.url, at, addr)
        return self.check_canonical(at)

    def check_host(self, host: str) -> Verdict:
        """Verdict for a bare host (CONNECT target, SNI, resolved IP): whole-host rules only."""
        try:
            canon = canonical_host(host)
        except CanonError as exc:
            return Verdict(Action.ERROR, host, error=str(exc))
        probes = host_probes(canon, host_kind(canon))
        blocked = self.block.match_host(canon, probes)
        if self.extra is not None and (blocked is None or blocked.mode is Mode.MONITOR):
            blocked = self.extra.match_host(canon, probes) or blocked
        allowed = None if self.allow.empty else self.allow.match_host(canon, probes)
        v = self._decide(host, None, canon, blocked, allowed)
        if ":" in canon and (v.action is Action.PASS or v.action is Action.MONITOR):
            for v4 in carried_ipv4(ipaddress.IPv6Address(canon), self.nat64):
                v2 = self.check_host(str(v4))
                if _RANK[v2.action] > _RANK[v.action]:
                    v = v2._replace(input=host)
        return v

    @staticmethod
    def _decide(
        original: str,
        cu: CanonicalURL | None,
        host: str,
        blocked: Match | None,
        allowed: Match | None,
    ) -> Verdict:
        if allowed is not None:
            return Verdict(Action.ALLOW, original, cu, host, allowed, overridden=blocked)
        if blocked is None:
            return Verdict(Action.PASS, original, cu, host)
        action = Action.BLOCK if blocked.mode is Mode.ENFORCE else Action.MONITOR
        return Verdict(action, original, cu, host, blocked)

    def with_allow(self, allow: CompiledIndex) -> Engine:
        """A new engine sharing this block index, with another allow index."""
        return Engine(self.block, allow, self.extra)

    def with_extra(self, extra: CompiledIndex | None) -> Engine:
        """A new engine sharing both indexes, with another extra block index."""
        return Engine(self.block, self.allow, extra)

    def close(self) -> None:
        self.block.close()
        self.allow.close()


__all__ = [
    "Action",
    "CompiledBlock",
    "Engine",
    "Verdict",
    "allow_index",
    "compile_block",
    "host_kind",
    "split_exceptions",
]
