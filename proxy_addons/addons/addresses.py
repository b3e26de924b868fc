"""Addresses: a server connection goes to exactly the address that was checked.

A name is resolved once, here; every address it resolves to is checked against
the IP/CIDR lists and the destination policy (``refuses``), and mitmproxy then
connects to the first of those addresses, not to the name. A resolver that
answers differently each time (DNS rebinding) cannot slip a listed address in
between check and connect. The pin lasts only for the connect: once the socket
is open the server's address is the name again, so SNI, the Host header and
mitmproxy's connection reuse all still see the name.

A listed address is found before the request goes anywhere: at ``CONNECT``
(the block page is then served inside the tunnel, as for a blocked host) and at
each plain-HTTP request (the block page replaces the response). A checked
resolution is reused for ``RESOLVE_CACHE_SECONDS``: the address connected to is
always one that was checked, so the cache changes freshness, never safety.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs, server_hooks

from proxy_addons.blockpage import new_request_id, printable
from proxy_addons.core.authority import request_url
from proxy_addons.core.embedding import parse_nat64_prefix
from proxy_addons.core.engine import Action, Engine, Verdict
from proxy_addons.core.resolution import RefusePredicate, Resolution, judge, refuses_internal

from .blocking import METADATA_KEY, Blocking

logger = logging.getLogger(__name__)

Answer = Callable[[http.HTTPFlow, Resolution], None]

# A resolver slower than this fails the connection (never a fall back to mitmproxy's own lookup).
RESOLVE_TIMEOUT_SECONDS: Final = 10.0
# How long a checked resolution is reused (requests on one page share it).
RESOLVE_CACHE_SECONDS: Final = 10.0
MAX_CACHED_NAMES: Final = 4096
# Pins whose connect never reported back (cancelled while queued): dropped oldest first.
MAX_PENDING_PINS: Final = 4096


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # for the log and mitmproxy's error
    verdict: Verdict | None  # a list verdict (block page), or None (destination policy)
    address: str


def _client_ip(client: connection.Client) -> str:
    peer = client.peername
    return str(peer[0]) if peer else ""


class Addresses:
    """Resolves, checks and pins server addresses; refuses listed and internal ones."""

    name = "jectguard_addresses"

    def __init__(
        self, blocking: Blocking, *, refuses: RefusePredicate | None = refuses_internal
    ) -> None:
        self.blocking = blocking
        # The destination policy, applied to every resolved address (in `_judge`, the one
        # call site); None: no policy, only the lists.
        self.refuses = refuses
        self._cache: OrderedDict[tuple[str, int], Resolution] = OrderedDict()
        self._ip_rules: tuple[Engine | None, bool] = (None, True)
        self._pinned: dict[str, connection.Address] = {}  # server id -> the name's address

    # -- options -----------------------------------------------------------------

    def load(self, loader: object) -> None:
        loader.add_option(  # type: ignore[attr-defined]
            "jg_nat64_prefixes",
            Sequence[str],
            [],
            "jectguard: this network's NAT64 prefixes (RFC 6052 lengths, e.g. "
            "2001:db8:64::/96): an IPv6 address inside one is also checked as the IPv4 "
            "address it carries (64:ff9b::/96, 64:ff9b:1::/48, 6to4 and Teredo always are).",
        )

    def configure(self, updated: set[str]) -> None:
        if "jg_nat64_prefixes" in updated:
            prefixes = []
            for item in ctx.options.jg_nat64_prefixes:
                try:
                    prefixes.append(parse_nat64_prefix(item))
                except ValueError as exc:
                    raise exceptions.OptionsError(f"jg_nat64_prefixes: {exc}") from None
            # Process-wide: every engine (and every refresh) checks the same network.
            Engine.nat64 = tuple(prefixes)

    # -- when to look -----------------------------------------------------------

    def _has_ip_rules(self, engine: Engine) -> bool:
        cached, answer = self._ip_rules
        if cached is engine:
            return answer
        by_kind = getattr(engine.block, "meta", {}).get("by_kind")
        answer = not isinstance(by_kind, dict) or bool(by_kind.get("ip") or by_kind.get("cidr"))
        self._ip_rules = (engine, answer)
        return answer

    def _active(self, client: connection.Client) -> Engine | None:
        """The engine to check with, or None when nothing about addresses is checked."""
        if isinstance(client.proxy_mode, mode_specs.UpstreamMode):
            return None  # the upstream proxy resolves the name, not us
        engine = self.blocking.holder.engine
        lists = self.blocking.check_resolved and self._has_ip_rules(engine)
        if not lists and self.refuses is None:
            return None
        return engine

    # -- resolving and checking ---------------------------------------------------

    def _cached(self, host: str, port: int, engine: Engine) -> Resolution | None:
        key = (host, port)
        found = self._cache.get(key)
        if found is None or found.expires < time.monotonic():
            return None
        if found.engine is not engine:  # lists were refreshed: same addresses, new verdicts
            found = self._judge(found.addresses, engine, found.expires, found.error)
            self._cache[key] = found
        return found

    async def _resolution(self, host: str, port: int, engine: Engine) -> Resolution:
        found = self._cached(host, port, engine)
        if found is not None:
            return found
        addresses, error = await self._resolve(host, port)
        found = self._judge(addresses, engine, time.monotonic() + RESOLVE_CACHE_SECONDS, error)
        if error is None:
            self._cache[(host, port)] = found
            if len(self._cache) > MAX_CACHED_NAMES:
                self._cache.popitem(last=False)
        return found

    def _judge(
        self, addresses: tuple[str, ...], engine: Engine, expires: float, error: str | None
    ) -> Resolution:
        lists = self.blocking.check_resolved and self._has_ip_rules(engine)
        return judge(
            addresses, engine, expires=expires, lists=lists, refuses=self.refuses, error=error
        )

    @staticmethod
    async def _resolve(host: str, port: int) -> tuple[tuple[str, ...], str | None]:
        """The addresses a connection to ``host`` may use (the IP itself for an IP)."""
        try:
            return (str(ipaddress.ip_address(host.partition("%")[0])),), None
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
            )
        except TimeoutError:
            return (), f"resolving {host} took longer than {RESOLVE_TIMEOUT_SECONDS:g}s"
        except (OSError, UnicodeError, ValueError) as exc:
            return (), f"cannot resolve {host}: {exc}"
        out: list[str] = []
        for info in infos:
            addr = str(info[4][0]).partition("%")[0]
            if addr not in out:
                out.append(addr)
        if not out:
            return (), f"{host} has no address"
        return tuple(out), None

    def _refusal(
        self, found: Resolution, host: str, client: connection.Client, *, log_monitor: bool
    ) -> Refusal | None:
        """Whether to refuse a connection to ``host`` (logged here), or None."""
        blocking = self.blocking
        if found.internal is not None:
            # The destination policy protects the proxy's host: it applies in every mode.
            logger.info(
                "jectguard: refused connection to %s: %s (stage address, client %s)",
                printable(host),
                found.internal,
                _client_ip(client),
            )
            return Refusal(f"{found.internal}, which no client may reach", None, "")
        for v in found.listed:
            what = f"{host} at" if v.input != host else "address"
            if v.action is Action.BLOCK and blocking.enforce:
                if blocking._granted(client, v):
                    if log_monitor:
                        blocking._log(
                            v,
                            f"allowed by proceed-anyway grant: {what}",
                            "address",
                            client,
                            new_request_id(),
                        )
                    continue
                m = v.match
                return Refusal(
                    f"{host} resolves to {v.input}, which is blocked "
                    f"(list {m.list if m else '-'}, rule {m.rule if m else '-'})",
                    v,
                    v.input,
                )
            if log_monitor:
                blocking._log(
                    v,
                    f"monitor: would refuse connection to {what}",
                    "address",
                    client,
                    new_request_id(),
                )
        return None

    # -- before the request or tunnel goes anywhere ------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Plain HTTP: a listed address gets the block page instead of mitmproxy's 502."""
        return self._check(flow, self._answer)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """CONNECT: a listed address is refused like a blocked host, before the tunnel opens."""
        return self._check(flow, self._answer_connect)

    def _check(self, flow: http.HTTPFlow, answer: Answer) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        engine = self._active(flow.client_conn)
        if engine is None:
            return None
        req = flow.request
        found = self._cached(req.host, req.port, engine)
        if found is not None:  # the common case: no await, no task
            answer(flow, found)
            return None
        return self._check_resolved(flow, engine, answer)

    async def _check_resolved(self, flow: http.HTTPFlow, engine: Engine, answer: Answer) -> None:
        req = flow.request
        found = await self._resolution(req.host, req.port, engine)
        if flow.response is None and flow.live:
            answer(flow, found)

    def _answer(self, flow: http.HTTPFlow, found: Resolution) -> None:
        if not found.listed and found.internal is None:
            return
        client = flow.client_conn
        refusal = self._refusal(found, flow.request.host, client, log_monitor=False)
        if refusal is None:
            return
        if refusal.verdict is None:
            self._refuse_destination(flow, refusal.reason)
            return
        req = flow.request
        url = request_url(req.scheme, req.host, req.port, req.path)
        self.blocking._apply(flow, refusal.verdict, "address", url)

    @staticmethod
    def _refuse_destination(flow: http.HTTPFlow, reason: str) -> None:
        # The destination policy's own answer (the full policy brings its page).
        flow.metadata[METADATA_KEY] = {"action": "block", "stage": "address"}
        flow.response = http.Response.make(
            403,
            f"jectguard: refused: {reason}\n".encode(),
            {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"},
        )

    def _answer_connect(self, flow: http.HTTPFlow, found: Resolution) -> None:
        if not found.listed and found.internal is None:
            return
        req = flow.request
        client = flow.client_conn
        refusal = self._refusal(found, req.host, client, log_monitor=False)
        if refusal is None:
            return
        scheme = "https" if req.port != 80 else "http"
        url = request_url(scheme, req.host, req.port, "/")
        blocking = self.blocking
        v = refusal.verdict
        if v is None:
            self._refuse_destination(flow, refusal.reason)
            return
        blocking.refused[client.id] = (v, "address", url)
        if blocking.intercept and isinstance(client.proxy_mode, mode_specs.RegularMode):
            # As for a blocked host: the tunnel opens to the proxy only and the
            # block page is served inside it (Blocking.requestheaders reads `refused`).
            blocking._log(
                v,
                "blocked (tunnel kept local for the block page)",
                "address",
                client,
                new_request_id(),
            )
            flow.metadata[METADATA_KEY] = {
                "action": "block",
                "stage": "address",
                "deferred": True,
                "verdict": v.as_dict(),
            }
            now = time.time()
            flow.response = http.Response(
                req.data.http_version,
                200,
                b"Connection established",
                http.Headers(),
                b"",
                None,
                now,
                now,
            )
            return
        blocking._apply(flow, v, "address", url)

    # -- the connection itself ---------------------------------------------------

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        if server.error or not server.address:
            return
        blocking = self.blocking
        refused = blocking.refused.get(client.id)
        if refused is not None and blocking.enforce:
            v, stage, url = refused
            m = v.match
            server.error = (
                f"jectguard: {printable(url)} is blocked ({stage}; list {m.list if m else '-'}); "
                "no connection was made"
            )
            return
        engine = self._active(client)
        if engine is None:
            return  # nothing to check: mitmproxy resolves and connects as usual
        host, port = str(server.address[0]), int(server.address[1])
        found = await self._resolution(host, port, engine)
        if found.error is not None:
            # Never leave the name to mitmproxy's own lookup: it may answer differently.
            server.error = f"jectguard: {found.error}; no connection was made"
            return
        refusal = self._refusal(found, host, client, log_monitor=True)
        if refusal is not None:
            rid = new_request_id()
            if refusal.verdict is not None:
                blocking._log(
                    refusal.verdict, f"refused connection to {host} at", "address", client, rid
                )
            server.error = (
                f"jectguard: {printable(refusal.reason)} (id {rid}); no connection was made"
            )
            return
        pin = found.addresses[0]
        if pin != host:
            if len(self._pinned) >= MAX_PENDING_PINS:
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[server.id] = server.address
            server.address = (pin, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def _unpin(self, server: connection.Server) -> None:
        name = self._pinned.pop(server.id, None)
        if name is not None:
            # The socket is open (or failed): give the connection its name back, for SNI,
            # connection reuse and logs. mitmproxy forbids changing the address of an
            # open connection because it would not reconnect; this one is the same peer.
            object.__setattr__(server, "address", name)


__all__ = ["Addresses", "RefusePredicate", "refuses_internal"]
