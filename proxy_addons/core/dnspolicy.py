"""DNS mode's pure parts: how a blocked name is answered, per-client rate limits,
and name-server addresses.

Pure: no sockets, no clock of its own (callers pass ``now``), so the policy is
tested without a network and reused by the addon and the CLI alike.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

# A blocked answer is cached this long by clients: short, so an allow-list entry or
# an unblocked feed takes effect within seconds (Pi-hole uses 2 s).
DEFAULT_BLOCK_TTL: Final = 10
# Per-client queries per second, and the burst a client may send at once (a browser
# opening a page asks for dozens of names; a flood asks for thousands).
DEFAULT_RATE: Final = 100
BURST_FACTOR: Final = 4
# Clients remembered by the rate limiter; the least recently seen is forgotten first,
# so a spoofed-source flood cannot grow memory without bound.
MAX_TRACKED_CLIENTS: Final = 65_536
DNS_PORT: Final = 53


class BlockAnswer(enum.StrEnum):
    """How a query for a blocked name is answered."""

    ZERO = "zero"  # 0.0.0.0 / :: for A/AAAA, NODATA for other types (Pi-hole's default)
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"


def parse_block_answer(value: str) -> BlockAnswer:
    """``zero``, ``nxdomain`` or ``refused``; raises ValueError otherwise."""
    try:
        return BlockAnswer(value.strip().lower())
    except ValueError:
        choices = ", ".join(a.value for a in BlockAnswer)
        raise ValueError(f"must be one of {choices}, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class NameServer:
    """An upstream name server: an address and a port."""

    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_name_server(spec: str) -> NameServer:
    """``1.1.1.1``, ``1.1.1.1:5353``, ``::1`` or ``[::1]:5353``; raises ValueError.

    Only IP addresses: resolving the resolver's own name would need a resolver.
    """
    text = spec.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad name server {spec!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], spec)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, spec)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad name server {spec!r}: not an IP address") from None
    return NameServer(str(addr), port)


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad name server {spec!r}: port must be 1-65535")
    return int(text)


class RateLimiter:
    """A token bucket per client: ``rate`` queries a second, bursts of ``rate * BURST_FACTOR``.

    ``rate`` 0 turns limiting off. Memory is bounded by ``max_clients``.
    """

    __slots__ = ("rate", "burst", "max_clients", "_buckets")

    def __init__(self, rate: int, *, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        if rate < 0:
            raise ValueError("rate must be 0 (off) or more")
        self.rate = rate
        self.burst = float(rate * BURST_FACTOR)
        self.max_clients = max_clients
        # client -> (tokens left, time of last refill)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float) -> bool:
        """Take one token for ``client``; False when its bucket is empty."""
        if not self.rate:
            return True
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class LogBudget:
    """At most ``per_minute`` lines a minute for one kind of message; counts the rest."""

    __slots__ = ("per_minute", "_minute", "_used", "suppressed")

    def __init__(self, per_minute: int = 10) -> None:
        self.per_minute = per_minute
        self._minute = -1
        self._used = 0
        self.suppressed = 0

    def take(self, now: float) -> tuple[bool, int]:
        """Whether a line may be written now, and how many were held back before it."""
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        if self._used >= self.per_minute:
            self.suppressed += 1
            return False, 0
        self._used += 1
        held, self.suppressed = self.suppressed, 0
        return True, held


__all__ = [
    "DEFAULT_BLOCK_TTL",
    "DEFAULT_RATE",
    "BlockAnswer",
    "LogBudget",
    "NameServer",
    "RateLimiter",
    "parse_block_answer",
    "parse_name_server",
]
