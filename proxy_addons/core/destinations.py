"""Where a client may send the proxy: destinations refused whatever the lists say.

A proxy at an egress is also a door into the proxy host and its network. As Squid
does by default (``to_localhost``, ``Safe_ports``/``SSL_ports``), jectguard refuses
loopback, unspecified, link-local and cloud-metadata addresses and the proxy host's
own addresses, and tunnels (``CONNECT``) to any port but 443. An operator opens
networks with ``--allow-destination CIDR`` and ports with ``--connect-ports SPEC``.

Pure: values in, a reason (or None) out. Parse functions raise ``ValueError``.
The caller gathers the host's own addresses (:func:`proxy_addons.addons.requests`
does) and checks the addresses a name resolves to at connect time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The highest TCP port.
MAX_PORT: Final = 65535
# Default CONNECT ports: HTTPS only, as Squid's SSL_ports.
DEFAULT_CONNECT_PORTS: Final = "443"

# Refused networks and the reason a person reads. Order matters only for the reason.
_REFUSED: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("169.254.169.254/32", "a cloud metadata address"),
        ("fd00:ec2::254/128", "a cloud metadata address"),
        ("100.100.100.200/32", "a cloud metadata address"),  # Alibaba Cloud
        ("168.63.129.16/32", "a cloud metadata address"),  # Azure wire server
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("0.0.0.0/8", "an unspecified address"),  # Linux routes 0.0.0.0 to this host
        ("::/128", "an unspecified address"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
    )
)
# IPv6 forms that carry an IPv4 address a connection may end up at.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")
_V4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")


def parse_network(text: str) -> IPNetwork:
    """A CIDR network (``10.0.0.0/8``, ``::1``, ``[::1]/128``); host bits are cleared."""
    spec = text.strip()
    if spec.startswith("["):
        addr, _, rest = spec[1:].partition("]")
        spec = addr + rest
    if not spec:
        raise ValueError("empty network")
    try:
        return ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text[:80]!r}") from None


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """Ports and ranges: ``443``, ``443,8443``, ``1-65535``. Raises ``ValueError``."""
    out: list[tuple[int, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in port list {text[:80]!r}")
        low, sep, high = item.partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise ValueError(f"not a port or port range: {item[:40]!r}")
        a, b = int(low), int(high) if sep else int(low)
        if not 1 <= a <= b <= MAX_PORT:
            raise ValueError(f"port range out of 1-{MAX_PORT} or reversed: {item[:40]!r}")
        out.append((a, b))
    return tuple(out)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible)."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which destinations and CONNECT ports a client may use.

    ``allowed`` networks are opened by the operator and win over every refusal;
    ``own`` are the proxy host's own addresses.
    """

    allowed: tuple[IPNetwork, ...] = ()
    own: frozenset[IPAddress] = frozenset()
    connect_ports: tuple[tuple[int, int], ...] = ((443, 443),)

    @classmethod
    def from_specs(
        cls, allow: Iterable[str], connect_ports: Iterable[str], own: Iterable[str] = ()
    ) -> DestinationPolicy:
        """Build from option values; raises ``ValueError`` naming the bad item."""
        ports: tuple[tuple[int, int], ...] = ()
        for spec in connect_ports:
            ports += parse_ports(spec)
        own_ips: set[IPAddress] = set()
        for text in own:
            try:
                own_ips.add(ipaddress.ip_address(text.partition("%")[0]))
            except ValueError:
                continue  # an odd interface entry is not the operator's mistake
        return cls(
            allowed=tuple(parse_network(a) for a in allow),
            own=frozenset(own_ips),
            connect_ports=ports or parse_ports(DEFAULT_CONNECT_PORTS),
        )

    def refuses(self, address: str | IPAddress) -> str | None:
        """Why a connection to this IP address is refused, or None when it may go."""
        try:
            ip = (
                address
                if not isinstance(address, str)
                else ipaddress.ip_address(address.strip("[]").partition("%")[0])
            )
        except ValueError:
            return None  # not an IP address: a name, checked by refuses_host
        if self._allowed(ip):
            return None
        reason = self._refused(ip)
        if reason is None:
            v4 = embedded_ipv4(ip)
            if v4 is not None and not self._allowed(v4):
                reason = self._refused(v4)
        return reason

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allowed)

    def _refused(self, ip: IPAddress) -> str | None:
        if ip in self.own:
            return "an address of the proxy host itself"
        for net, reason in _REFUSED:
            if ip.version == net.version and ip in net:
                return reason
        return None

    def refuses_host(self, host: str) -> str | None:
        """Like :meth:`refuses` for a canonical host: also ``localhost`` and ``*.localhost``.

        RFC 6761 says resolvers answer every ``localhost`` name with loopback,
        so no lookup is needed to refuse them.
        """
        if host == "localhost" or host.endswith(".localhost"):
            return None if self._opens_loopback() else "a loopback name (localhost)"
        if host[-1:].isdigit() or ":" in host:
            return self.refuses(host)
        return None

    def _opens_loopback(self) -> bool:
        return self._allowed(ipaddress.IPv4Address("127.0.0.1")) or self._allowed(
            ipaddress.IPv6Address("::1")
        )

    def connect_port_allowed(self, port: int) -> bool:
        return any(a <= port <= b for a, b in self.connect_ports)


__all__ = [
    "DEFAULT_CONNECT_PORTS",
    "DestinationPolicy",
    "embedded_ipv4",
    "parse_network",
    "parse_ports",
]
