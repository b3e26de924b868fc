"""The poison guard: rules that would block far too much are refused, never applied.

A feed that suddenly lists ``com``, ``github.io`` or ``0.0.0.0/0`` is broken or
hostile; applying it would take every user offline. Such rules are refused and
reported with a reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cache
from typing import Final

from publicsuffixlist import PublicSuffixList

from .model import Rule, RuleKind

# Widest networks a list may block: a /8 is 16M IPv4 addresses already.
MIN_PREFIX_V4: Final = 8
MIN_PREFIX_V6: Final = 32


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@dataclass(frozen=True, slots=True)
class PoisonGuard:
    """Decides whether a rule is too broad to apply."""

    min_prefix_v4: int = MIN_PREFIX_V4
    min_prefix_v6: int = MIN_PREFIX_V6

    @classmethod
    def default(cls) -> PoisonGuard:
        return cls()

    def check(self, rule: Rule) -> str | None:
        """None when the rule may be applied, else the reason it is refused."""
        kind = rule.kind
        if kind is RuleKind.DOMAIN or kind is RuleKind.EXACT:
            return self._check_host(rule.key)
        if kind is RuleKind.URL:
            host, _, path = rule.key.partition("/")
            if ":" in host or host[-1:].isdigit():
                return self._check_ip(host)
            return self._check_host(host)
        if kind is RuleKind.IP:
            return self._check_ip(rule.key)
        if kind is RuleKind.CIDR:
            net = ipaddress.ip_network(rule.key, strict=False)
            floor = self.min_prefix_v4 if net.version == 4 else self.min_prefix_v6
            if net.prefixlen < floor:
                return f"network wider than /{floor}"
            return self._check_ip(str(net.network_address)) if net.num_addresses == 1 else None
        return None

    @staticmethod
    def _check_host(host: str) -> str | None:
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
            return "unspecified or loopback address"
        return None


def is_public_suffix(host: str) -> bool:
    """True for ``com``, ``co.uk``, ``github.io``: names under which anyone can register."""
    psl = _psl()
    if "." not in host or "xn--" in host:
        return bool(psl.is_public(host))
    suffixes = psl._publicsuffix  # fast pre-filter; is_public has the final word
    parent = host.partition(".")[2]
    if host in suffixes or "*." + parent in suffixes or "*." + host in suffixes:
        return bool(psl.is_public(host))
    return False
