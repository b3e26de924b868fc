"""Client allow-list: connections from addresses outside the configured networks are closed.

"The client" is ``Client.peername``: behind a load balancer in ``jg_trusted_proxies``
the connection front (``limits.py``) has already replaced the balancer's address
with the one its PROXY protocol header names, before mitmproxy built the Client.
Name a client with :func:`client_address`, never by reading the socket.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from mitmproxy import connection, ctx, exceptions

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Sequence[str]) -> tuple[Network, ...]:
    """``["192.168.1.0/24", "10.0.0.5"]`` -> networks; ValueError names the bad entry."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {spec!r}") from None
    return tuple(out)


def client_address(client: connection.Client) -> str:
    """The client's IP address as text ("" when unknown); IPv4-mapped IPv6 as IPv4.

    The one way to name a client (allow-list, proceed grants, event ``client``
    fields): it is the real client's address behind a trusted load balancer.
    """
    peer = client.peername
    if not peer:
        return ""
    address = str(peer[0])
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


def client_allowed(address: str, networks: Sequence[Network]) -> bool:
    """Loopback is always allowed; otherwise the address must be in one of the networks."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    return any(ip in net for net in networks)


class ClientAllowList:
    """Closes client connections from outside ``jg_allow_clients`` (when it is set)."""

    name = "jectguard_clients"

    def __init__(self) -> None:
        self.networks: tuple[Network, ...] = ()

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_allow_clients",
            Sequence[str],
            [],
            "jectguard: client networks (CIDR) allowed to use the proxy; others are "
            "disconnected. Loopback is always allowed. Empty: no restriction.",
        )

    def configure(self, updated: set[str]) -> None:
        if "jg_allow_clients" in updated:
            try:
                self.networks = parse_networks(ctx.options.jg_allow_clients)
            except ValueError as exc:
                raise exceptions.OptionsError(f"jg_allow_clients: {exc}") from None

    def client_connected(self, client: connection.Client) -> None:
        if not self.networks or client.error:
            return
        addr = client_address(client)
        if not client_allowed(addr, self.networks):
            logger.warning("jectguard: client %s is not in jg_allow_clients; disconnected", addr)
            client.error = "Connection killed: client not in jg_allow_clients."
