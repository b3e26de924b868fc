"""What a server name resolved to, and what the lists and the destination policy say about it.

Pure: the addresses come in (the proxy resolves them), a :class:`Resolution`
goes out. The proxy connects only to an address a Resolution holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from .engine import Engine, Verdict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The destination policy: why an address must never be connected to, or None.
RefusePredicate = Callable[[IPAddress], str | None]


@dataclass(frozen=True, slots=True)
class Resolution:
    """One name's addresses and their verdicts, valid until ``expires``."""

    addresses: tuple[str, ...]  # in the resolver's order; empty: the name did not resolve
    expires: float
    engine: Engine | None  # the engine whose verdicts ``listed`` holds
    listed: tuple[Verdict, ...]  # block and monitor verdicts of the addresses
    internal: str | None  # why the destination policy refuses one of them
    error: str | None = None  # why the name did not resolve


def judge(
    addresses: tuple[str, ...],
    engine: Engine,
    *,
    expires: float,
    lists: bool,
    refuses: RefusePredicate | None,
    error: str | None = None,
) -> Resolution:
    """Check every address against the lists (when ``lists``) and the policy."""
    listed: list[Verdict] = []
    internal = None
    for addr in addresses:
        if refuses is not None and internal is None:
            why = refuses(ipaddress.ip_address(addr))
            if why is not None:
                internal = f"{addr} is {why}"
        if lists:
            v = engine.check_host(addr)
            if v.listed:
                listed.append(v)
    return Resolution(addresses, expires, engine, tuple(listed), internal, error)


__all__ = ["IPAddress", "RefusePredicate", "Resolution", "judge"]
