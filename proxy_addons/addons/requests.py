"""The request side of the blocking addon: every host a request names, and redirects.

A server routes a request by its request line (RFC 9112 3.2.2) or by its Host header
(nginx's ``$host``), an HTTP/2 server by ``:authority``, a TLS front by the SNI. So a
request is checked on each of those that differs from the URL the proxy forwards, and
any one block blocks it; any one unreadable name refuses it (400), never passes it.
Responses are checked where a browser navigates on its own: ``Location`` on a redirect
and the ``Refresh`` header, joined to the request URL as a browser joins them (WHATWG).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from proxy_addons.core.authority import request_url
from proxy_addons.core.engine import Action, Verdict
from proxy_addons.core.targets import join_target, refresh_target, routed_name

from .decide import (
    Act,
    Decision,
    Stage,
    decide,
    log_decision,
    new_request_id,
    refuse_destination,
    refuse_upgrade,
    respond,
    worst,
)
from .proceed import PROCEED_HOST

if TYPE_CHECKING:
    from proxy_addons.addons.blockpage import ProceedForm
    from proxy_addons.core.destinations import DestinationPolicy
    from proxy_addons.lists.holder import EngineHolder

    from .decide import PageSettings

METADATA_KEY: Final = "jectguard"
# The redirect response held back while its (small) body is read, then swapped for the page.
PENDING_KEY: Final = "jectguard_pending"
REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})
# Our own answers, which no response check must touch.
_OWN_ACTIONS: Final = frozenset({"block", "error", "proceed-granted", "proceed-form"})

# What a refused connection remembers: the verdict, the stage and the URL shown.
Refusal = tuple[Verdict, str, str]


def client_ip(client: connection.Client) -> str:
    peer = client.peername
    return str(peer[0]) if peer else ""


class RequestChecks:
    """Request and response hooks; mixed into :class:`~.blocking.Blocking`."""

    holder: EngineHolder
    enforce: bool
    policy: DestinationPolicy
    pages: PageSettings
    refused: dict[str, Refusal]

    if TYPE_CHECKING:  # provided by Blocking and ProceedSite

        def _granted(self, client: connection.Client, v: Verdict) -> bool: ...

        def _proceed_form(self, d: Decision, client: connection.Client) -> ProceedForm | None: ...

        def _proceed_site(self, flow: http.HTTPFlow) -> None: ...

    # -- the decision for one request -----------------------------------------

    def _decide(self, stage: Stage, v: Verdict, url: str, client: connection.Client) -> Decision:
        return decide(
            stage, v, url, enforce=self.enforce, granted=lambda v: self._granted(client, v)
        )

    def _check_name(
        self, stage: Stage, name: str, scheme: str, path: str, client: connection.Client
    ) -> list[Decision]:
        """A name the request carries, checked with the request's path (URL rules apply)."""
        engine = self.holder.engine
        path = path if path.startswith("/") else "/"
        url = f"{scheme}://{name}{path}"
        v = engine.check_url(url)
        out = [self._decide(stage, v, url, client)]
        if v.action is Action.ERROR:
            # Unreadable, so refused; a server would still route it by its name part:
            # when that name is listed, the page names the list instead of "unreadable".
            routed = routed_name(name)
            if routed:
                v2 = engine.check_url(f"{scheme}://{routed}{path}")
                if v2.action is Action.BLOCK:
                    out.append(self._decide(stage, v2, v2.input, client))
        return out

    def check_request(self, flow: http.HTTPFlow) -> Decision:
        """Decide on every host a request names: URL, authority, Host, SNI, refused tunnel."""
        req, client = flow.request, flow.client_conn
        engine = self.holder.engine
        host, port, scheme, path = req.host, req.port, req.scheme, req.path
        url = request_url(scheme, host, port, path)
        v = engine.check_url(url)
        d = self._decide(Stage.REQUEST, v, url, client)
        checks = [d]
        if v.action is Action.ERROR:
            hv = engine.check_host(host)
            if hv.action is Action.BLOCK:
                checks.append(self._decide(Stage.REQUEST, hv, url, client))
        elif (
            v.canonical is not None
            # only addresses and localhost names can be internal (names resolve later)
            and (v.canonical.host_kind != "domain" or v.canonical.host.endswith("localhost"))
            # reverse mode's destination is the operator's; every other mode's is the client's
            and not isinstance(client.proxy_mode, mode_specs.ReverseMode)
        ):
            why = self.policy.refuses_host(v.canonical.host)
            if why is not None:
                what = f"{v.canonical.host} is {why}"
                checks.append(refuse_destination(Stage.DESTINATION, url, what))
        if path and path != "*" and not path.startswith("/"):
            # HTTP/1's absolute-form is read into host and path by mitmproxy, but an
            # HTTP/2 ``:path`` is kept as sent: one like ``https://blocked/x`` names a
            # host some servers route on (Go parses it as a URL) that the URL above
            # never shows. Refuse any target that is not origin-form (or ``*``).
            bad = Verdict(Action.ERROR, path, error="request target is not origin-form")
            checks.append(self._decide(Stage.REQUEST, bad, url, client))
        # Names that differ from the URL's host (cheap string tests keep the common case fast).
        hostport = f"{host}:{port}"
        raw_authority = req.data.authority
        authority = raw_authority.decode("utf-8", "surrogateescape") if raw_authority else ""
        if authority and authority != host and authority != hostport:
            checks += self._check_name(Stage.AUTHORITY, authority, scheme, path, client)
        host_headers = req.headers.get_all("host")
        if len(host_headers) > 1:
            bad = Verdict(Action.ERROR, ", ".join(host_headers), error="more than one Host header")
            checks.append(self._decide(Stage.HOST_HEADER, bad, url, client))
        for hh in host_headers:
            if hh and hh != host and hh != hostport and hh != authority:
                checks += self._check_name(Stage.HOST_HEADER, hh, scheme, path, client)
        sni = client.sni
        if sni and sni != host:
            checks.append(self._decide(Stage.SNI, engine.check_host(sni), url, client))
        refusal = self.refused.get(client.id)
        if refusal is not None:
            carried = self._refusal_decision(refusal, client)
            if carried.action is Act.PROCEED:
                # A grant made since the tunnel was refused covers its host: let the
                # tunnel reach it (server_connect refuses a refused client's connects).
                del self.refused[client.id]
            checks.append(carried)
        return d if len(checks) == 1 else worst(checks)

    def _refusal_decision(self, refusal: Refusal, client: connection.Client) -> Decision:
        """The decision a refused tunnel (CONNECT target, SNI) carries over to its requests."""
        v, stage, url = refusal
        return self._decide(Stage(stage), v, url, client)

    def _apply(self, flow: http.HTTPFlow, d: Decision, seconds: float | None = None) -> None:
        """Record a decision (and the time it took) on the flow, log it, answer a refusal."""
        if d.action is Act.PASS:
            flow.metadata[METADATA_KEY] = (
                {"action": "pass"} if seconds is None else {"action": "pass", "seconds": seconds}
            )
            return
        rid = new_request_id()
        client = flow.client_conn
        meta = d.as_dict(rid)
        if seconds is not None:
            meta["seconds"] = seconds  # jectguard_verdict_seconds (the observe addon)
        flow.metadata[METADATA_KEY] = meta
        log_decision(d, client_ip(client), rid)
        if d.refuses:
            h = flow.request.headers
            flow.response = respond(
                d,
                rid,
                self.pages,
                sec_fetch_dest=h.get("sec-fetch-dest"),
                accept=h.get("accept"),
                proceed=self._proceed_form(d, client),
            )

    # -- hooks --------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.host == PROCEED_HOST:
            self._proceed_site(flow)  # the proxy's own origin: answered, never forwarded
            return
        t0 = time.perf_counter()
        d = self.check_request(flow)
        self._apply(flow, d, time.perf_counter() - t0)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or flow.error or not flow.live:
            return
        meta = flow.metadata.get(METADATA_KEY)
        if meta and meta.get("action") in _OWN_ACTIONS:
            return
        # Every value: which of several a browser follows is not ours to guess.
        targets = resp.headers.get_all("location") if resp.status_code in REDIRECT_CODES else []
        for refresh in resp.headers.get_all("refresh"):
            t = refresh_target(refresh)
            if t is not None:
                targets.append(t)
        if not targets:
            return
        req, client = flow.request, flow.client_conn
        base = request_url(req.scheme, req.host, req.port, req.path)
        engine = self.holder.engine
        checks = []
        for t in targets:
            joined = join_target(base, t)
            if joined is not None:
                checks.append(
                    self._decide(Stage.REDIRECT, engine.check_url(joined), joined, client)
                )
        if not checks:
            return
        d = worst(checks)
        if d.action is Act.PASS or d.action is Act.ALLOW:
            return
        self._apply(flow, d)
        if flow.response is not resp:
            # Swap in the page once the (small) redirect body is read; don't stream it on.
            flow.metadata[PENDING_KEY] = flow.response
            flow.response = resp
            resp.stream = False

    def response(self, flow: http.HTTPFlow) -> None:
        pending = flow.metadata.pop(PENDING_KEY, None)
        if pending is not None:
            flow.response = pending
        resp = flow.response
        # mitmproxy marks the upgrades it reads as WebSocket (``flow.websocket``) before
        # this hook; any other 101 would become a raw relay nobody checks.
        if resp is not None and resp.status_code == 101 and flow.websocket is None:
            req = flow.request
            url = request_url(req.scheme, req.host, req.port, req.path)
            self._apply(flow, refuse_upgrade(url, resp.headers.get("upgrade", "")))
            if flow.response is not None:
                # The server has switched protocols on its side: this connection is done.
                flow.response.headers["connection"] = "close"


__all__ = [
    "METADATA_KEY",
    "REDIRECT_CODES",
    "Refusal",
    "RequestChecks",
    "client_ip",
    "join_target",
    "refresh_target",
    "request_url",
    "routed_name",
]
