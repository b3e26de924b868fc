"""The poison guard: rules that would block far too much are refused, never applied.

A feed that suddenly lists ``com``, ``github.io`` or ``0.0.0.0/0`` is broken or
hostile; applying it would take every user offline. Such rules are refused and
reported with a reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cache
from itertools import compress, repeat
from operator import itemgetter, not_
from typing import Final

from publicsuffixlist import PublicSuffixList

from .model import Rule, RuleKind

# Widest networks a list may block: a /8 is 16M IPv4 addresses already.
MIN_PREFIX_V4: Final = 8
MIN_PREFIX_V6: Final = 32


_LOOPBACK: Final = "unspecified or loopback address"
# Blocking these would cut the proxy and its host off from themselves.
_NEVER_NETS: Final = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("0.0.0.0/32"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("::/128"),
)


# Private, link-local, shared (CGNAT) and reserved space: a network rule this wide
# in it cuts a company or home network off from itself through the resolved-address
# check (FireHOL level1 lists 10.0.0.0/8 and friends, for inbound firewalls).
# A narrower rule (one compromised internal subnet or host) still applies.
_LOCAL_NETS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
        "224.0.0.0/4", "240.0.0.0/4", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip
MIN_PREFIX_LOCAL_V4: Final = 17  # /16 is a whole home range (192.168.0.0/16)
MIN_PREFIX_LOCAL_V6: Final = 48


@cache
def _psl() -> tuple[PublicSuffixList, frozenset[str], frozenset[str]]:
    psl = PublicSuffixList()
    suffixes: frozenset[str] = psl._publicsuffix  # read-only; used as a pre-filter
    wild_parents = frozenset(s[2:] for s in suffixes if s.startswith("*."))
    return psl, suffixes, wild_parents


@dataclass(frozen=True, slots=True)
class PoisonGuard:
    """Decides whether a rule is too broad to apply."""

    min_prefix_v4: int = MIN_PREFIX_V4
    min_prefix_v6: int = MIN_PREFIX_V6

    @classmethod
    def default(cls) -> PoisonGuard:
        return cls()

    def check(self, rule: Rule, *, allow: bool = False) -> str | None:
        """None when the rule may be applied, else the reason it is refused.

        ``allow``: the rule allows (an allow list, an ``@@`` exception). Allowing a
        whole private network is what an operator does to keep internal servers
        reachable, so the private-network floor does not apply to it.
        """
        kind = rule.kind
        if kind is RuleKind.DOMAIN or kind is RuleKind.EXACT:
            return self.host_reason(rule.key)
        if kind is RuleKind.URL:
            host, _, path = rule.key.partition("/")
            if ":" in host or host[-1:].isdigit():
                return self._check_ip(host)
            return self.host_reason(host)
        if kind is RuleKind.IP:
            return self._check_ip(rule.key)
        if kind is RuleKind.CIDR:
            net = ipaddress.ip_network(rule.key, strict=False)
            floor = self.min_prefix_v4 if net.version == 4 else self.min_prefix_v6
            if net.prefixlen < floor:
                return f"network wider than /{floor}"
            if net.num_addresses == 1:
                return self._check_ip(str(net.network_address))
            if any(net.overlaps(n) for n in _NEVER_NETS if n.version == net.version):
                return "covers loopback or unspecified addresses"
            local_floor = MIN_PREFIX_LOCAL_V4 if net.version == 4 else MIN_PREFIX_LOCAL_V6
            if (
                not allow
                and net.prefixlen < local_floor
                and any(net.overlaps(n) for n in _LOCAL_NETS if n.version == net.version)
            ):
                return f"private or reserved network wider than /{local_floor}"
            return None
        return None

    @staticmethod
    def refused_hosts(hosts: list[str]) -> dict[str, str]:
        """The hosts in a (large) list that must be refused, with reasons.

        Runs as C-level iterator pipelines over the list in order (a million
        hosts in about 0.2 s); ``is_public`` has the final word on candidates.
        """
        psl, suffixes, wild_parents = _psl()
        candidates = set(suffixes.intersection(hosts))
        candidates.update(compress(hosts, map(not_, map(str.__contains__, hosts, repeat(".")))))
        candidates.update(compress(hosts, map(str.__contains__, hosts, repeat("xn--"))))
        parents = map(itemgetter(2), map(str.partition, hosts, repeat(".")))
        candidates.update(compress(hosts, map(wild_parents.__contains__, parents)))
        out = {h: "blocks everything" for h in candidates if h in ("", "*", ".")}
        out.update((h, "public suffix") for h in candidates if h not in out and psl.is_public(h))
        return out

    def refused_url_hosts(self, hosts: set[str]) -> dict[str, str]:
        """The hosts of URL rules that must be refused (public suffixes, loopback IPs)."""
        names = [h for h in hosts if ":" not in h and not h[-1:].isdigit()]
        out = self.refused_hosts(names) if names else {}
        for h in hosts:
            if ":" in h:
                reason = self._check_ip(h)
            elif h[-1:].isdigit():  # a canonical dotted quad: no need to parse it
                reason = _LOOPBACK if h.startswith("127.") or h == "0.0.0.0" else None
            else:
                continue
            if reason is not None:
                out[h] = reason
        return out

    @staticmethod
    def host_reason(host: str) -> str | None:
        if not host or host in ("*", "."):
            return "blocks everything"
        if is_public_suffix(host):
            return "public suffix"
        return None

    @staticmethod
    def _check_ip(text: str) -> str | None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        if ip.is_unspecified or ip.is_loopback:
            return _LOOPBACK
        return None


def is_public_suffix(host: str) -> bool:
    """True for ``com``, ``co.uk``, ``github.io``: names under which anyone can register."""
    psl, suffixes, wild_parents = _psl()
    # Pre-filter with two set lookups; the library has the final word (exceptions, IDN).
    if (
        host in suffixes
        or host.partition(".")[2] in wild_parents
        or "." not in host
        or "xn--" in host
    ):
        return bool(psl.is_public(host))
    return False
