"""The blocking addon: checks every way a client can reach a host, at the earliest hook.

- ``http_connect``: the CONNECT target, before any byte goes to it.
- ``tls_clienthello``: the SNI (transparent and reverse modes, domain fronting).
- ``requestheaders``: the request URL, the Host header (HTTP/1, HTTP/2, WebSocket
  handshakes), before any body is read or forwarded.
- ``responseheaders``: a redirect whose Location is blocked becomes the block page.
- tunnels' content and the addresses a server name resolves to are checked by
  ``tunnels.Tunnels`` and ``addresses.Addresses``.

Decisions are recorded in ``flow.metadata["jectguard"]``.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import mode_specs

from proxy_addons.blockpage import (
    HEADER_NAME,
    BlockInfo,
    ProceedForm,
    block_header,
    choose_kind,
    new_request_id,
    printable,
    render,
)
from proxy_addons.core.authority import request_url
from proxy_addons.core.canon import canonical_host, scalar_text
from proxy_addons.core.engine import Action, Engine, Verdict
from proxy_addons.core.errors import CanonError

from .holder import EngineHolder
from .proceed import MIN_SECRET_LENGTH, PROCEED_PATH, ProceedSigner, random_secret

logger = logging.getLogger(__name__)

METADATA_KEY: Final = "jectguard"
# Longest admin contact shown on a page (an email address or a URL).
MAX_CONTACT_LENGTH: Final = 200
# Largest proceed form body parsed (three short fields).
MAX_PROCEED_BODY: Final = 4096
REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})

# What a refused connection remembers: the verdict, where it was found, the URL shown.
Refusal = tuple[Verdict, str, str]


def _client_ip(client: connection.Client) -> str:
    peer = client.peername
    return str(peer[0]) if peer else ""


def _host_of(authority: str) -> str:
    """The host part of ``host[:port]`` (IPv6 in brackets)."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] or authority
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else authority


def _rank(v: Verdict) -> int:
    return 2 if v.action is Action.BLOCK else 1 if v.action is Action.MONITOR else 0


class Blocking:
    """Blocks requests, tunnels and connections toward listed hosts, URLs and addresses."""

    name = "jectguard_block"

    def __init__(self, holder: EngineHolder) -> None:
        self.holder = holder
        self.enforce = True
        self.intercept = True
        self.block_page = True
        self.check_resolved = True
        self.admin_contact = ""
        self.report_url = ""
        self.signer: ProceedSigner | None = None
        self._secret = random_secret()  # used when no jg_proceed_secret is set
        # client connection id -> why its tunnel/TLS was refused (never connect upstream)
        self.refused: dict[str, Refusal] = {}
        # client connection ids whose TLS handshake must fail (blocked SNI, no interception)
        self.fail_tls: set[str] = set()
        self._ip_rules: tuple[Engine | None, bool] = (None, True)

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_mode", str, "enforce",
            "jectguard: 'enforce' blocks matches; 'monitor' only logs them (every list).",
            choices=("enforce", "monitor"),
        )
        loader.add_option(
            "jg_intercept", bool, True,
            "jectguard: decrypt TLS to check full URLs and show block pages on HTTPS. "
            "When false, TLS is passed through untouched after the CONNECT/SNI check.",
        )
        loader.add_option(
            "jg_block_page", bool, True,
            "jectguard: answer blocked navigations with an HTML page (false: plain text).",
        )
        loader.add_option(
            "jg_admin_contact", str, "",
            "jectguard: who to contact about a block (email or URL), shown on block pages.",
        )
        loader.add_option(
            "jg_report_url", str, "",
            "jectguard: an http(s) URL where people can report a false positive.",
        )
        loader.add_option(
            "jg_check_resolved", bool, True,
            "jectguard: refuse server connections whose resolved address is on an IP/CIDR list.",
        )
        loader.add_option(
            "jg_proceed_anyway", bool, False,
            "jectguard: offer a signed, expiring, per-client 'proceed anyway' on block pages.",
        )
        loader.add_option(
            "jg_proceed_minutes", int, 15,
            "jectguard: how long a 'proceed anyway' grant lasts (1-1440 minutes).",
        )
        loader.add_option(
            "jg_proceed_secret", str, "",
            "jectguard: HMAC key for 'proceed anyway' tokens (at least 16 characters); "
            "empty: a random key per process.",
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if o.jg_mode not in ("enforce", "monitor"):
            raise exceptions.OptionsError(
                f"jg_mode: must be 'enforce' or 'monitor', got {o.jg_mode!r}"
            )
        contact = o.jg_admin_contact
        if len(contact) > MAX_CONTACT_LENGTH or not contact.isprintable():
            raise exceptions.OptionsError(
                f"jg_admin_contact: must be printable and at most {MAX_CONTACT_LENGTH} "
                f"characters, got {contact[:40]!r}"
            )
        report = o.jg_report_url
        if report:
            parts = urllib.parse.urlsplit(report)
            if parts.scheme not in ("http", "https") or not parts.netloc or not report.isprintable():
                raise exceptions.OptionsError(
                    f"jg_report_url: must be an http(s) URL, got {report[:80]!r}"
                )
        if not 1 <= o.jg_proceed_minutes <= 1440:
            raise exceptions.OptionsError(
                f"jg_proceed_minutes: must be between 1 and 1440, got {o.jg_proceed_minutes}"
            )
        secret = o.jg_proceed_secret
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise exceptions.OptionsError(
                f"jg_proceed_secret: must be at least {MIN_SECRET_LENGTH} characters"
            )
        self.enforce = o.jg_mode == "enforce"
        self.intercept = o.jg_intercept
        self.block_page = o.jg_block_page
        self.check_resolved = o.jg_check_resolved
        self.admin_contact = contact
        self.report_url = report
        if not o.jg_proceed_anyway:
            self.signer = None
        elif updated & {"jg_proceed_anyway", "jg_proceed_secret", "jg_proceed_minutes"}:
            key = secret.encode() if secret else self._secret
            self.signer = ProceedSigner.create(key, o.jg_proceed_minutes)

    # -- bookkeeping --------------------------------------------------------

    def client_disconnected(self, client: connection.Client) -> None:
        self.refused.pop(client.id, None)
        self.fail_tls.discard(client.id)

    def _has_ip_rules(self, engine: Engine) -> bool:
        cached, answer = self._ip_rules
        if cached is engine:
            return answer
        by_kind = getattr(engine.block, "meta", {}).get("by_kind")
        answer = not isinstance(by_kind, dict) or bool(by_kind.get("ip") or by_kind.get("cidr"))
        self._ip_rules = (engine, answer)
        return answer

    def _granted(self, client: connection.Client, v: Verdict) -> bool:
        return self.signer is not None and self.signer.granted(_client_ip(client), v.host)

    def _log(self, v: Verdict, what: str, stage: str, client: connection.Client, rid: str) -> None:
        m = v.match
        logger.info(
            "jectguard: %s %s (stage %s, list %s, rule %r, client %s, id %s)",
            what,
            printable(v.input[:500]),
            stage,
            m.list if m else "-",
            m.rule if m else "-",
            _client_ip(client),
            rid,
        )

    def _record(self, flow: http.HTTPFlow, v: Verdict, stage: str, action: str, rid: str) -> None:
        flow.metadata[METADATA_KEY] = {
            "action": action,
            "stage": stage,
            "request_id": rid,
            "verdict": v.as_dict(),
        }

    def _info(self, v: Verdict, url: str, stage: str, rid: str, client: connection.Client) -> BlockInfo:
        proceed = None
        if self.signer is not None and v.host and stage != "address":
            scheme = "https" if url.startswith(("https:", "wss:")) else "http"
            origin = self._origin_of(url, scheme, v.host)
            proceed = ProceedForm(
                action=origin + PROCEED_PATH,
                fields={
                    **self.signer.issue(_client_ip(client), v.host),
                    "return": scalar_text(url),
                },
                minutes=self.signer.minutes,
                host=v.host,
            )
        return BlockInfo.from_verdict(
            v,
            url=url,
            stage=stage,
            request_id=rid,
            admin_contact=self.admin_contact,
            report_url=self.report_url,
            proceed=proceed,
        )

    @staticmethod
    def _origin_of(url: str, scheme: str, host: str) -> str:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            port = None
        h = f"[{host}]" if ":" in host else host
        return f"{scheme}://{h}" + (f":{port}" if port else "")

    def _block_response(self, flow: http.HTTPFlow, info: BlockInfo) -> http.Response:
        req = flow.request
        kind = choose_kind(req.headers.get("sec-fetch-dest"), req.headers.get("accept"))
        if kind == "html" and not self.block_page:
            kind = "text"
        r = render(info, kind)
        return http.Response.make(
            r.status, r.body, [(k.encode(), v.encode()) for k, v in r.headers]
        )

    def _apply(self, flow: http.HTTPFlow, v: Verdict, stage: str, url: str) -> None:
        """Block, monitor or record a verdict for an HTTP request."""
        if v.action is Action.PASS:
            flow.metadata[METADATA_KEY] = {"action": "pass"}
            return
        rid = new_request_id()
        if v.action is not Action.BLOCK and v.action is not Action.MONITOR:
            self._record(flow, v, stage, v.action.value, rid)
            return
        client = flow.client_conn
        if v.action is Action.BLOCK and self._granted(client, v):
            self._record(flow, v, stage, "proceed", rid)
            self._log(v, "allowed by proceed-anyway grant", stage, client, rid)
            return
        if v.action is Action.MONITOR or not self.enforce:
            self._record(flow, v, stage, "monitor", rid)
            self._log(v, "monitor: would block", stage, client, rid)
            return
        self._record(flow, v, stage, "block", rid)
        self._log(v, "blocked", stage, client, rid)
        flow.response = self._block_response(flow, self._info(v, url, stage, rid, client))

    # -- HTTP ---------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        if self.signer is not None and req.path.startswith(PROCEED_PATH):
            req.stream = False  # the form is read whole in `request`, never forwarded
            flow.metadata[METADATA_KEY] = {"action": "proceed-form"}
            return
        engine = self.holder.engine
        # mitmproxy's Request.url leaves an IPv6 host bare: a URL no parser reads as that host.
        url = req.url if ":" not in req.host else request_url(req.scheme, req.host, req.port, req.path)
        v = engine.check_url(url)
        if v.action is Action.ERROR:
            # An unparseable URL (too long, odd path) still has a host: check that.
            v = engine.check_host(req.host)
        stage = "request"
        if v.action is not Action.BLOCK:
            host = req.host
            hh = req.host_header
            if hh and hh != host and hh != f"{host}:{req.port}":
                other = f"{req.scheme}://{hh}{req.path if req.path.startswith('/') else '/'}"
                v2 = engine.check_url(other)
                if v2.action is Action.ERROR:
                    v2 = engine.check_host(_host_of(hh))
                if _rank(v2) > _rank(v):
                    v, stage, url = v2, "host-header", other
            sni = flow.client_conn.sni
            if sni and sni != host and sni != hh and v.action is not Action.BLOCK:
                v2 = engine.check_host(sni)
                if _rank(v2) > _rank(v):
                    v, stage = v2, "sni"
            refusal = self.refused.get(flow.client_conn.id)
            if refusal is not None and v.action is not Action.BLOCK:
                v, stage, _ = refusal
        self._apply(flow, v, stage, url)

    def request(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(METADATA_KEY)
        if not meta or meta.get("action") != "proceed-form" or flow.response or not flow.live:
            return
        flow.response = self._proceed(flow)

    def _proceed(self, flow: http.HTTPFlow) -> http.Response:
        req = flow.request
        client = _client_ip(flow.client_conn)
        signer = self.signer
        headers = {"Cache-Control": "no-store", "Content-Type": "text/plain; charset=utf-8"}
        if signer is None or req.method != "POST" or len(req.raw_content or b"") > MAX_PROCEED_BODY:
            return http.Response.make(403, b"proceed anyway: not available\n", headers)
        fields = {k: v for k, v in req.urlencoded_form.items(multi=False)}
        host, reason = signer.verify(client, fields)
        try:
            request_host = canonical_host(req.host)
        except CanonError:
            request_host = None
        if host is None or host != request_host:
            logger.warning(
                "jectguard: refused proceed-anyway for %s from %s: %s",
                printable(req.host), client, reason or "token for another host",
            )
            return http.Response.make(403, f"proceed anyway refused: {reason or 'wrong host'}\n", headers)
        until = signer.grant(client, host)
        logger.warning(
            "jectguard: proceed-anyway granted: client %s may reach %s until %s",
            client, host, time.strftime("%H:%M:%S", time.localtime(until)),
        )
        target = fields.get("return", "/")
        try:
            same_host = canonical_host(urllib.parse.urlsplit(target).hostname or "") == host
        except (CanonError, ValueError):
            same_host = False
        location = target if same_host and target.isprintable() else "/"
        flow.metadata[METADATA_KEY] = {"action": "proceed-granted", "host": host}
        return http.Response.make(303, b"", {**headers, "Location": location})

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or flow.error or not flow.live or resp.status_code not in REDIRECT_CODES:
            return
        if flow.metadata.get(METADATA_KEY, {}).get("action") in ("block", "proceed-granted"):
            return  # our own response
        location = resp.headers.get("location")
        if not location:
            return
        try:
            target = urllib.parse.urljoin(flow.request.url, location.strip())
        except ValueError:
            return
        v = self.holder.engine.check_url(target)
        if v.action is not Action.BLOCK and v.action is not Action.MONITOR:
            return
        self._apply(flow, v, "redirect", target)
        if flow.metadata[METADATA_KEY].get("action") == "block":
            # Swap in the page once the (small) redirect body is read; don't stream it on.
            flow.metadata[METADATA_KEY]["pending"] = flow.response
            flow.response = resp
            resp.stream = False

    def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(METADATA_KEY)
        if meta and "pending" in meta:
            flow.response = meta.pop("pending")

    # -- CONNECT and TLS ----------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        v = self.holder.engine.check_host(req.host)
        if v.action is not Action.BLOCK:
            self._apply(flow, v, "connect", f"{req.host}:{req.port}")
            return
        client = flow.client_conn
        rid = new_request_id()
        if self._granted(client, v):
            self._record(flow, v, "connect", "proceed", rid)
            self._log(v, "allowed by proceed-anyway grant", "connect", client, rid)
            return
        if not self.enforce:
            self._record(flow, v, "connect", "monitor", rid)
            self._log(v, "monitor: would block", "connect", client, rid)
            return
        self._record(flow, v, "connect", "block", rid)
        scheme = "https" if req.port != 80 else "http"
        url = f"{scheme}://{req.host}" + ("" if req.port in (80, 443) else f":{req.port}") + "/"
        self.refused[client.id] = (v, "connect", url)
        if self.intercept and isinstance(client.proxy_mode, mode_specs.RegularMode):
            # Open the tunnel to ourselves only: the block page is served inside it,
            # and server_connect refuses any connection for this client.
            self._log(v, "blocked (tunnel kept local for the block page)", "connect", client, rid)
            # One visit, one event: the block page's request, or this CONNECT if
            # the client sends none (e.g. it does not trust the CA).
            flow.metadata[METADATA_KEY]["deferred"] = True
            now = time.time()
            flow.response = http.Response(
                req.data.http_version, 200, b"Connection established",
                http.Headers(), b"", None, now, now,
            )
            return
        self._log(v, "blocked", "connect", client, rid)
        info = self._info(v, url, "connect", rid, client)
        r = render(info, "text")
        flow.response = http.Response.make(
            403, r.body, [(k.encode(), val.encode()) for k, val in r.headers]
        )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        sni = data.client_hello.sni
        if sni and client.id not in self.refused:
            v = self.holder.engine.check_host(sni)
            if v.action is Action.BLOCK or v.action is Action.MONITOR:
                rid = new_request_id()
                if self._granted(client, v):
                    self._log(v, "allowed by proceed-anyway grant", "sni", client, rid)
                elif v.action is Action.MONITOR or not self.enforce:
                    self._log(v, "monitor: would block", "sni", client, rid)
                else:
                    self._log(v, "blocked", "sni", client, rid)
                    self.refused[client.id] = (v, "sni", f"https://{sni}/")
        if client.id in self.refused:
            # Never open TLS toward the origin for a refused client.
            data.establish_server_tls_first = False
            data.ignore_connection = False
            if not self.intercept:
                self.fail_tls.add(client.id)
            return
        if not self.intercept:
            data.ignore_connection = True


__all__ = ["HEADER_NAME", "METADATA_KEY", "Blocking", "block_header"]
