"""The connection side of the blocking addon: CONNECT targets and ports, and the SNI.

A CONNECT is checked by its target (lists and the destination policy) and port
before any byte goes anywhere. A list's block with interception keeps the tunnel
local, so the block page is served inside it (``refused``: server_connect opens
nothing for that client); a refused destination or port gets its 403 at once.
The SNI of a TLS ClientHello is checked the same way; an unreadable one fails closed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from mitmproxy import connection, http, tls
from mitmproxy.proxy import mode_specs

from proxy_addons.core.authority import url_host
from proxy_addons.core.engine import Action, Engine, Verdict

from .decide import (
    Act,
    Decision,
    PageSettings,
    Stage,
    log_decision,
    new_request_id,
    refuse_destination,
    respond,
    worst,
)
from .proceed import PROCEED_HOST
from .requests import METADATA_KEY, Refusal, client_ip

if TYPE_CHECKING:
    from proxy_addons.core.destinations import DestinationPolicy
    from proxy_addons.lists.holder import EngineHolder


# TLS extension 0 (RFC 6066): server_name.
_SERVER_NAME_EXTENSION: Final = 0


def server_name_verdict(engine: Engine, hello: tls.ClientHello) -> Verdict | None:
    """The SNI's verdict, or None when the ClientHello names no server.

    mitmproxy's ``ClientHello.sni`` is None both without the extension and when it
    cannot read it (two names, bytes that are not a host name); a server may still
    route by such a name, so an extension that is there but unreadable is an error.
    """
    if sum(t == _SERVER_NAME_EXTENSION for t, _ in hello.extensions) > 1:
        # RFC 8446 4.2 forbids it; mitmproxy reads the first, a TLS front may route
        # on the last (nginx's ssl_preread keeps overwriting): which one is unknowable.
        return Verdict(
            Action.ERROR, "(TLS server name)", error="more than one server_name extension"
        )
    if hello.sni:
        return engine.check_host(hello.sni)
    if any(t == _SERVER_NAME_EXTENSION for t, _ in hello.extensions):
        return Verdict(
            Action.ERROR, "(TLS server name)", error="the server_name extension cannot be read"
        )
    return None


class ConnectChecks:
    """CONNECT and TLS ClientHello hooks; mixed into :class:`~.blocking.Blocking`."""

    holder: EngineHolder
    intercept: bool
    policy: DestinationPolicy
    pages: PageSettings
    refused: dict[str, Refusal]
    fail_tls: set[str]

    if TYPE_CHECKING:  # provided by RequestChecks

        def _decide(
            self, stage: Stage, v: Verdict, url: str, client: connection.Client
        ) -> Decision: ...

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req, client = flow.request, flow.client_conn
        scheme = "https" if req.port != 80 else "http"
        host = f"[{req.host}]" if ":" in req.host else req.host
        url = f"{scheme}://{host}" + ("" if req.port in (80, 443) else f":{req.port}") + "/"
        if req.host == PROCEED_HOST and self.intercept:
            # The proceed site over HTTPS: the tunnel ends here, like a refused one.
            self.refused[client.id] = (Verdict(Action.PASS, req.host), "connect", url)
            flow.metadata[METADATA_KEY] = {"action": "proceed-form"}
            flow.response = self._established(flow)
            return
        v = self.holder.engine.check_host(req.host)
        checks = [self._decide(Stage.CONNECT, v, url, client)]
        if not isinstance(client.proxy_mode, mode_specs.ReverseMode):
            why = self.policy.refuses_host(v.host) if v.host else None
            if why is not None:
                checks.append(refuse_destination(Stage.DESTINATION, url, f"{v.host} is {why}"))
            if not self.policy.connect_port_allowed(req.port):
                why = f"CONNECT to port {req.port} is not allowed (--connect-ports)"
                checks.append(refuse_destination(Stage.CONNECT, url, why))
        self.answer_connect(flow, checks[0] if len(checks) == 1 else worst(checks))

    def answer_connect(self, flow: http.HTTPFlow, d: Decision) -> None:
        """Record a CONNECT's decision and answer it when it refuses (the addresses addon too)."""
        client = flow.client_conn
        if d.action is Act.PASS:
            flow.metadata[METADATA_KEY] = {"action": "pass"}
            return
        rid = new_request_id()
        flow.metadata[METADATA_KEY] = d.as_dict(rid)
        if not d.refuses:
            log_decision(d, client_ip(client), rid)
            return
        if (
            d.action is Act.BLOCK
            and d.checked is not None  # a list's block; a refused destination gets its 403 now
            and self.intercept
            and isinstance(client.proxy_mode, mode_specs.RegularMode)
        ):
            # Open the tunnel to ourselves only: the block page is served inside it,
            # and server_connect refuses any connection for this client.
            log_decision(d, client_ip(client), rid, " (tunnel kept local for the block page)")
            self.refused[client.id] = (d.checked, d.stage.value, d.url)
            # One visit, one event: the block page's request, or this CONNECT if
            # the client sends none (e.g. it does not trust the CA).
            flow.metadata[METADATA_KEY]["deferred"] = True
            flow.response = self._established(flow)
            return
        log_decision(d, client_ip(client), rid)
        flow.response = respond(d, rid, self.pages, sec_fetch_dest=None, accept=None)

    @staticmethod
    def _established(flow: http.HTTPFlow) -> http.Response:
        now = time.time()
        return http.Response(
            flow.request.data.http_version,
            200,
            b"Connection established",
            http.Headers(),
            b"",
            None,
            now,
            now,
        )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        v = None
        if client.id not in self.refused:
            v = server_name_verdict(self.holder.engine, data.client_hello)
        if v is not None:
            url = f"https://{url_host(data.client_hello.sni or v.input)}/"
            d = self._decide(Stage.SNI, v, url, client)
            if d.action is not Act.PASS and d.action is not Act.ALLOW:
                log_decision(d, client_ip(client), new_request_id())
            if d.refuses:  # a blocked or unreadable name: never reaches the origin
                self.refused[client.id] = (v, Stage.SNI.value, url)
        if client.id in self.refused:
            # Never open TLS toward the origin for a refused client.
            data.establish_server_tls_first = False
            data.ignore_connection = False
            if not self.intercept:
                self.fail_tls.add(client.id)
            return
        if not self.intercept:
            data.ignore_connection = True


__all__ = ["ConnectChecks"]
