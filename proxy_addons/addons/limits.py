"""Who a client is, how many connections it may hold, and how long it may dawdle.

mitmproxy has one per-connection limit of its own, ``tcp_timeout`` (600 s of no
traffic either way), which is what ends idle tunnels. It has no deadline for a
request head (a client dribbling one header a minute holds its connection for
ever) and no cap per client. This addon adds them, and reads the PROXY protocol
header a trusted load balancer puts before each connection.

- **The front** (``handle_stream`` of every proxy server instance, wrapped when
  mitmproxy creates it and before it listens): reads the PROXY header from
  ``jg_trusted_proxies`` peers (required from them, never read from anyone
  else), so mitmproxy's ``Client.peername`` is the real client everywhere (the
  allow-list, proceed grants, event ``client`` fields, mitmproxy's own log);
  then refuses a connection over ``jg_max_client_connections`` for that client.
- **Deadlines** (hooks): a complete request head within ``jg_header_timeout``
  of connecting (or of a CONNECT being answered), the next one within
  ``jg_idle_timeout`` of a response. Raw tunnels and WebSockets are left to
  ``tcp_timeout``. A timer is a ``call_later`` handle, not a task: one per
  connection waiting for a head, cancelled when the head arrives.
- **Out of descriptors**: asyncio logs each failed ``accept()`` with a traceback
  every second per listening socket for as long as the shortage lasts; a
  filter turns those into one line per :data:`SHORTAGE_LOG_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import layers, mode_specs

from proxy_addons.core import proxyproto

from .clients import Network, parse_networks

logger = logging.getLogger(__name__)

# A balancer sends its header at once; a peer that does not is not a working balancer.
PROXY_HEADER_TIMEOUT: Final = 5.0
# One line per this many seconds for each kind of refusal (slow, over the cap, no fds).
SHORTAGE_LOG_INTERVAL: Final = 10.0
_SHORTAGE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# mitmproxy's loop exception handler logs here; asyncio's default handler to "asyncio".
_ACCEPT_LOGGERS: Final = ("mitmproxy.master", "asyncio")

StreamHandler = Callable[..., Awaitable[None]]


class Throttle:
    """At most one log line per interval for each key; the lines say how many were held back."""

    def __init__(
        self, interval: float = SHORTAGE_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def allow(self, key: str) -> int | None:
        """None: stay quiet; else log now, and this many were held back since the last line."""
        now = self.clock()
        if key in self._last and now - self._last[key] < self.interval:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class DescriptorShortageFilter(logging.Filter):
    """Turns the per-second ``accept()`` EMFILE/ENFILE tracebacks into a rare short warning."""

    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, OSError) and exc.errno in _SHORTAGE_ERRNOS):
            return True
        held = self.throttle.allow("descriptors")
        if held is None:
            return False
        record.msg = (
            "jectguard: out of file descriptors or memory (%s): new connections wait until "
            "some close; %d more such errors in the last %.0f s. Raise the open-file limit "
            "(ulimit -n) or lower jg_max_client_connections."
        )
        record.args = (exc.strerror or exc, held, self.throttle.interval)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _ip_key(address: str) -> str:
    """One key per client address: an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(_ip_key(address))
    except ValueError:
        return False
    return any(ip in net for net in networks)


async def read_proxy_header(reader: asyncio.StreamReader) -> proxyproto.ProxyHeader:
    """Reads exactly one PROXY header off the stream: the client's bytes after it stay there."""
    prefix = await reader.readexactly(proxyproto.PREFIX_LENGTH)
    if proxyproto.header_kind(prefix) is proxyproto.HeaderKind.V1:
        rest = await reader.readuntil(b"\n")  # bounded by the reader's limit, then by parse_v1
        return proxyproto.parse_v1(prefix + rest)
    head = prefix + await reader.readexactly(proxyproto.V2_HEAD_LENGTH - len(prefix))
    payload = await reader.readexactly(proxyproto.v2_payload_length(head))
    return proxyproto.parse_v2(head + payload)


@dataclass(slots=True)
class _Waiting:
    """A client connection's open requests and the deadline for its next request head."""

    pending: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    tunnel: bool = False

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ConnectionLimits:
    """PROXY protocol from trusted balancers, a per-client connection cap, head and idle deadlines."""

    name = "jectguard_limits"

    def __init__(self) -> None:
        self.trusted: tuple[Network, ...] = ()
        self.cap = 0
        self.header_timeout = 0.0
        self.idle_timeout = 0.0
        self.open: Counter[str] = Counter()  # client address -> connections being served
        self.throttle = Throttle()
        self._waiting: dict[str, _Waiting] = {}
        self._proxyserver: Any = None
        self._filter = DescriptorShortageFilter(self.throttle)

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_trusted_proxies",
            Sequence[str],
            [],
            "jectguard: load balancers (CIDR) that put a PROXY protocol header (v1 or v2) "
            "before each connection, naming the real client. Connections from them must "
            "send one; from anyone else it is never read.",
        )
        loader.add_option(
            "jg_max_client_connections",
            int,
            256,
            "jectguard: connections one client address may hold open at once; more are "
            "closed at once (0: no cap).",
        )
        loader.add_option(
            "jg_header_timeout",
            int,
            30,
            "jectguard: seconds a client has to send a complete request head, from "
            "connecting or from a CONNECT being answered (0: off).",
        )
        loader.add_option(
            "jg_idle_timeout",
            int,
            60,
            "jectguard: seconds a keep-alive connection may wait for its next request "
            "after a response (0: off). Idle tunnels end after mitmproxy's tcp_timeout.",
        )
        for name in _ACCEPT_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        master = getattr(ctx, "master", None)
        ps = master.addons.get("proxyserver") if master is not None else None
        if ps is not None:
            self._proxyserver = ps
            ps.servers.changed.connect(self._wrap_servers)

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        try:
            self.trusted = parse_networks(o.jg_trusted_proxies)
        except ValueError as exc:
            raise exceptions.OptionsError(f"jg_trusted_proxies: {exc}") from None
        for name in ("jg_max_client_connections", "jg_header_timeout", "jg_idle_timeout"):
            if getattr(o, name) < 0:
                raise exceptions.OptionsError(f"{name}: must be 0 (off) or more")
        self.cap = o.jg_max_client_connections
        self.header_timeout, self.idle_timeout = o.jg_header_timeout, o.jg_idle_timeout

    def done(self) -> None:
        for name in _ACCEPT_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)
        for w in self._waiting.values():
            w.disarm()

    # -- the front: before mitmproxy sees the connection --------------------

    def _wrap_servers(self) -> None:
        """Called by mitmproxy with new server instances, before they start listening."""
        for instance in self._proxyserver.servers:
            if not getattr(instance, "_jg_front", False):
                original = instance.handle_stream
                instance.handle_stream = functools.partial(self.front, original)
                instance._jg_front = True

    async def front(self, original: StreamHandler, reader: Any, writer: Any = None) -> None:
        if not isinstance(writer, asyncio.StreamWriter):  # UDP, WireGuard, local redirector
            return await original(reader, writer)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if self.trusted and in_networks(address, self.trusted):
            relayed = await self._relayed_client(reader, writer, address)
            if relayed is None:
                writer.close()
                return None
            address = relayed[0]
        key = _ip_key(address)
        if self.cap and self.open[key] >= self.cap:
            self._log(
                "cap",
                "jectguard: client %s holds %d connections "
                "(jg_max_client_connections); closing a new one",
                address,
                self.cap,
            )
            writer.close()
            return None
        self.open[key] += 1
        try:
            await original(reader, writer)
        finally:
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]
        return None

    async def _relayed_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, balancer: str
    ) -> tuple[str, int] | None:
        """The client a trusted balancer names, made the connection's peer; None: refuse it."""
        try:
            async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                header = await read_proxy_header(reader)
        except (
            proxyproto.ProxyHeaderError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            OSError,
        ) as exc:
            self._log(
                "proxyproto",
                "jectguard: connection from load balancer %s refused: "
                "no valid PROXY protocol header (%s)",
                balancer,
                str(exc) or type(exc).__name__,
            )
            return None
        if header.source is None:  # the balancer's own connection (LOCAL, UNKNOWN)
            peer: tuple[str, int] = writer.get_extra_info("peername")[:2]
            return peer
        extra = getattr(writer.transport, "_extra", None)
        if not isinstance(extra, dict):  # pragma: no cover - asyncio's transports have it
            logger.error("jectguard: cannot record the PROXY protocol client address")
            return None
        # mitmproxy builds Client.peername from this: everything downstream names the client.
        extra["peername"] = header.source
        return header.source

    # -- deadlines ------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if client.error or client.transport_protocol != "tcp":
            return
        if isinstance(client.proxy_mode, mode_specs.DnsMode):  # queries, not request heads
            return
        w = self._waiting[client.id] = _Waiting()
        self._arm(client, w, self.header_timeout, "no complete request head")

    def client_disconnected(self, client: connection.Client) -> None:
        w = self._waiting.pop(client.id, None)
        if w is not None:
            w.disarm()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        w = self._waiting.get(flow.client_conn.id)
        if w is not None:
            w.disarm()
            w.pending.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        w = self._waiting.get(flow.client_conn.id)
        if w is not None:
            w.disarm()

    def http_connected(self, flow: http.HTTPFlow) -> None:
        """The tunnel's first request (after a TLS handshake, when intercepting) gets a deadline."""
        w = self._waiting.get(flow.client_conn.id)
        if w is not None and not w.pending:
            self._arm(flow.client_conn, w, self.header_timeout, "no complete request head")

    def next_layer(self, nextlayer: Any) -> None:
        if isinstance(nextlayer.layer, layers.TCPLayer | layers.UDPLayer):
            self._tunnel(nextlayer.context.client)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._tunnel(flow.client_conn)

    def _tunnel(self, client: connection.Client) -> None:
        """Raw bytes from here on: mitmproxy's tcp_timeout ends the connection when idle."""
        w = self._waiting.get(client.id)
        if w is not None:
            w.disarm()
            w.tunnel = True

    def _finished(self, flow: http.HTTPFlow) -> None:
        w = self._waiting.get(flow.client_conn.id)
        if w is None:
            return
        w.pending.discard(flow.id)
        if not w.pending and not w.tunnel and flow.client_conn.state:
            self._arm(flow.client_conn, w, self.idle_timeout, "idle after a response")

    def _arm(self, client: connection.Client, w: _Waiting, seconds: float, why: str) -> None:
        w.disarm()
        if seconds:
            w.timer = asyncio.get_running_loop().call_later(
                seconds, self._expire, client.id, why, seconds
            )

    def _expire(self, client_id: str, why: str, seconds: float) -> None:
        w = self._waiting.get(client_id)
        if w is None:
            return
        w.timer = None
        handler = self._proxyserver.connections.get(client_id) if self._proxyserver else None
        if handler is None:
            return
        peer = handler.client.peername
        self._log(
            "slow", "jectguard: closing %s: %s within %g s", peer[0] if peer else "?", why, seconds
        )
        io = handler.transports.get(handler.client)
        if io is not None and io.handler is not None:
            io.handler.cancel(why)
        elif io is not None and io.writer is not None:
            io.writer.close()

    def _log(self, key: str, msg: str, *args: object) -> None:
        held = self.throttle.allow(key)
        if held is not None:
            suffix = (
                f" ({held} more like it in the last {self.throttle.interval:.0f} s)" if held else ""
            )
            logger.warning(msg + suffix, *args)


__all__ = ["ConnectionLimits", "DescriptorShortageFilter", "Throttle", "read_proxy_header"]
