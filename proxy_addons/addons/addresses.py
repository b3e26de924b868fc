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

URL rules written for an address (``http://192.0.2.2/bins/x``, URLhaus' usual shape)
are checked here too, when a list has any: each request again, with its host replaced
by every address it may be sent to (a name that resolves there, nip.io-style, reaches
the same files). Which connection carries a request is chosen after the last hook, so
the candidates are all of them: the addresses of this client's open connections to the
name, and the resolution a new connection will use. That resolution is kept for the
client's connection to the name (``_checked``) and ``server_connect`` pins from it,
never from a fresher one that no request was checked against.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs, server_hooks

from proxy_addons.addons.blockpage import printable
from proxy_addons.core.authority import request_url
from proxy_addons.core.canon import canonicalize_url
from proxy_addons.core.embedding import parse_nat64_prefix
from proxy_addons.core.engine import Action, Engine, Verdict
from proxy_addons.core.errors import CanonError
from proxy_addons.core.resolution import RefusePredicate, Resolution, judge

from .blocking import Blocking
from .decide import (
    Act,
    Decision,
    Stage,
    log_decision,
    new_request_id,
    refuse_destination,
    worst,
)
from .requests import METADATA_KEY, client_ip

logger = logging.getLogger(__name__)

Answer = Callable[[http.HTTPFlow, Resolution], None]

# A resolver slower than this fails the connection (never a fall back to mitmproxy's own lookup).
RESOLVE_TIMEOUT_SECONDS: Final = 10.0
# How long a checked resolution is reused (requests on one page share it).
RESOLVE_CACHE_SECONDS: Final = 10.0
MAX_CACHED_NAMES: Final = 4096
# Pins whose connect never reported back (cancelled while queued): dropped oldest first.
MAX_PENDING_PINS: Final = 4096


class Addresses:
    """Resolves, checks and pins server addresses; refuses listed and internal ones."""

    name = "jectguard_addresses"

    def __init__(
        self,
        blocking: Blocking,
        *,
        refuses: RefusePredicate | None,
        on_refusal: Callable[[str, Decision, str, str], None] | None = None,
    ) -> None:
        self.blocking = blocking
        # (server connection id, decision, request id, host name) of each refused
        # connection: the observe addon's event, handed over typed.
        self.on_refusal = on_refusal
        # The destination policy, applied to every resolved address (in `_judge`, the one
        # call site); None: no policy, only the lists. ``make_addons`` passes a function
        # that reads ``Blocking.policy`` at each use, so `configure` changes apply.
        self.refuses = refuses
        self._cache: OrderedDict[tuple[str, int], Resolution] = OrderedDict()
        self._ip_rules: tuple[Engine | None, bool] = (None, True)
        self._pinned: dict[str, connection.Address] = {}  # server id -> the name's address
        # Per client, per (name, port): the resolution its requests were checked against
        # while some URL rule names an address (new connections pin from it), and the
        # address of each open connection (server id -> address).
        self._checked: dict[str, dict[connection.Address, Resolution]] = {}
        self._peers: dict[str, dict[connection.Address, dict[str, str]]] = {}

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
        if updated & {"jg_allow_destination", "jg_connect_ports", "jg_check_resolved"}:
            self._cache.clear()  # verdicts under the old policy must not outlive it
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
        """Rules that an address can match: IP and CIDR rules, URL rules on an address."""
        cached, answer = self._ip_rules
        if cached is engine:
            return answer
        # Every image this format version loads records its rules by kind.
        by_kind = engine.block.by_kind
        answer = bool(by_kind.get("ip") or by_kind.get("cidr"))
        answer = answer or engine.url_rules_on_addresses
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

    def _decision(self, found: Resolution, url: str, client: connection.Client) -> Decision | None:
        """The decision on a resolution for this client (None: nothing listed or refused)."""
        checks: list[Decision] = []
        # The destination policy guards the proxy's host: a block in every mode; a
        # reverse proxy's destination is the operator's, not the client's.
        if found.internal is not None and not isinstance(client.proxy_mode, mode_specs.ReverseMode):
            checks.append(refuse_destination(Stage.DESTINATION, url, found.internal))
        # A grant never unlocks an address rule (decide), whatever name led here.
        checks += [self.blocking._decide(Stage.ADDRESS, v, url, client) for v in found.listed]
        return worst(checks) if checks else None

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
        req = flow.request
        url = request_url(req.scheme, req.host, req.port, req.path)
        d = self._decision(found, url, flow.client_conn)
        if d is not None and d.refuses:  # monitor and grants are logged at server_connect
            self.blocking._apply(flow, d)
            return
        if found.engine is not None and found.engine.url_rules_on_addresses:
            self._check_at_addresses(flow, url, found, found.engine)

    def _check_at_addresses(
        self, flow: http.HTTPFlow, url: str, found: Resolution, engine: Engine
    ) -> None:
        """The request's URL at every address it may be sent to, against URL rules."""
        if not self.blocking.check_resolved:
            return
        req, client = flow.request, flow.client_conn
        key = (req.host, req.port)
        checked = self._checked.setdefault(client.id, {})
        kept = checked.get(key)
        if kept is None or kept.error is not None:
            # The first request to this name on this connection (or the last lookup
            # failed): new connections for it pin from this resolution from now on.
            checked[key] = kept = found
        candidates = [*kept.addresses, *self._peers.get(client.id, {}).get(key, {}).values()]
        if found is not kept:
            candidates += found.addresses
        # Most addresses have no URL rule: one probe each, before building anything.
        addresses = [a for a in dict.fromkeys(candidates) if engine.url_rules_at(a)]
        if not addresses:
            return
        try:
            cu = canonicalize_url(url)
        except CanonError:
            return  # refused already: the request check reads the same URL
        verdicts: list[Verdict] = []
        for addr in addresses:
            if addr == cu.host:
                continue  # the URL itself was checked at this address already
            v = engine.check_at_address(cu, addr)
            if v.action is not Action.PASS and v.action is not Action.ALLOW:
                verdicts.append(v._replace(input=url))
        if not verdicts:
            return
        d = worst(self.blocking._decide(Stage.ADDRESS, v, url, client) for v in verdicts)
        meta = flow.metadata.get(METADATA_KEY)
        if d.refuses or not meta or meta.get("action") == Act.PASS.value:
            # a refusal answers; a monitor or a grant is recorded where nothing else was
            self.blocking._apply(flow, d)

    def _answer_connect(self, flow: http.HTTPFlow, found: Resolution) -> None:
        req = flow.request
        url = request_url("https" if req.port != 80 else "http", req.host, req.port, "/")
        d = self._decision(found, url, flow.client_conn)
        if d is not None and d.refuses:
            # As for a blocked host: a list's block keeps the tunnel local for the page.
            self.blocking.answer_connect(flow, d)

    # -- the connection itself ---------------------------------------------------

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        if server.error or not server.address:
            return
        refused = self.blocking.refused.get(client.id)
        if refused is not None:
            # Only refusing decisions are kept there (a block, an unreadable name), so
            # this holds in every mode: monitor never relays what it could not read.
            v, stage, url = refused
            m = v.match
            what = "cannot be read" if v.action is Action.ERROR else "is blocked"
            server.error = (
                f"jectguard: {printable(url)} {what} ({stage}; list {m.list if m else '-'}); "
                "no connection was made"
            )
            return
        engine = self._active(client)
        if engine is None:
            return  # nothing to check: mitmproxy resolves and connects as usual
        host, port = str(server.address[0]), int(server.address[1])
        found = self._checked.get(client.id, {}).get((host, port))
        if found is None:
            found = await self._resolution(host, port, engine)
        elif found.engine is not engine:  # refreshed lists: the same addresses, new verdicts
            found = self._judge(found.addresses, engine, found.expires, found.error)
        if found.error is not None:
            # Never leave the name to mitmproxy's own lookup: it may answer differently.
            server.error = f"jectguard: {found.error}; no connection was made"
            return
        d = self._decision(found, request_url("tcp", host, port, "/"), client)
        if d is not None:
            rid = new_request_id()
            log_decision(d, client_ip(client), rid, f" (connection to {printable(host)})")
            if d.refuses:
                server.error = f"jectguard: {self._why(d, host, rid)}; no connection was made"
                if self.on_refusal is not None:
                    self.on_refusal(server.id, d, rid, host)
                return
        pin = found.addresses[0]
        # Always (a dict entry a connection): lists that name addresses may arrive later.
        self._peers.setdefault(client.id, {}).setdefault((host, port), {})[server.id] = pin
        if pin != host:
            if len(self._pinned) >= MAX_PENDING_PINS:
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[server.id] = server.address
            server.address = (pin, port)

    @staticmethod
    def _why(d: Decision, host: str, rid: str) -> str:
        """The refusal as mitmproxy's error text, for people (observe gets the decision)."""
        v = d.checked
        if v is None or v.match is None:
            return f"{printable(d.reason or 'refused')} (id {rid})"
        m = v.match
        return (
            f"{printable(host)} resolves to {v.input}, which is blocked "
            f"(list {m.list}, rule {m.rule}, id {rid})"
        )

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)
        self._forget_peer(data.client, data.server)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._forget_peer(data.client, data.server)

    def client_disconnected(self, client: connection.Client) -> None:
        self._checked.pop(client.id, None)
        self._peers.pop(client.id, None)

    def _forget_peer(self, client: connection.Client, server: connection.Server) -> None:
        conns = self._peers.get(client.id)
        if conns is None or not server.address:
            return
        key = (str(server.address[0]), int(server.address[1]))
        peers = conns.get(key)
        if peers is not None:
            peers.pop(server.id, None)
            if not peers:
                del conns[key]

    def _unpin(self, server: connection.Server) -> None:
        name = self._pinned.pop(server.id, None)
        if name is not None:
            # The socket is open (or failed): give the connection its name back, for SNI,
            # connection reuse and logs. mitmproxy forbids changing the address of an
            # open connection because it would not reconnect; this one is the same peer.
            object.__setattr__(server, "address", name)


__all__ = ["Addresses", "RefusePredicate"]
