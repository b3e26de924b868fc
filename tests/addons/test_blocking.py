"""The blocking and client addons, hook by hook, with mitmproxy's test helpers."""

from __future__ import annotations

import html
import json
import re
import warnings
from dataclasses import dataclass

import pytest

with warnings.catch_warnings():
    # ldap3 (imported by mitmproxy's proxyauth) trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import connection, exceptions, http, tls
from mitmproxy.proxy import context as proxy_context
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import ClientAllowList, EngineHolder, Jectguard, make_addons
from proxy_addons.addons.addresses import Addresses
from proxy_addons.addons.blocking import METADATA_KEY, Blocking
from proxy_addons.addons.proceed import PROCEED_PATH
from proxy_addons.addons.tunnels import Tunnels
from proxy_addons.blockpage import HEADER_NAME
from proxy_addons.core.engine import Engine
from proxy_addons.core.guard import PoisonGuard
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind


@dataclass(frozen=True, slots=True)
class _NoGuard(PoisonGuard):
    """Accept loopback rules: the tests need a listed address that is local."""

    def check(self, rule: Rule, *, allow: bool = False) -> str | None:
        return None


def _rules(*items: tuple[RuleKind, str]) -> ParsedList:
    return ParsedList("test", [Rule(k, key, key, i + 1) for i, (k, key) in enumerate(items)])


def make_engine() -> Engine:
    engine, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="malware", category="malware"),
                _rules(
                    (RuleKind.DOMAIN, "evil.test"),
                    (RuleKind.URL, "good.test/bad/"),
                    (RuleKind.URL, "good.test/%FF/"),
                    (RuleKind.IP, "198.51.100.7"),
                    (RuleKind.CIDR, "203.0.113.0/24"),
                    (RuleKind.CIDR, "127.0.0.0/31"),
                ),
            ),
            (ListSpec(name="watch", mode=Mode.MONITOR), _rules((RuleKind.DOMAIN, "watch.test"))),
            (ListSpec(name="allow", allow=True), _rules((RuleKind.EXACT, "ok.evil.test"))),
        ],
        guard=_NoGuard(),
    )
    return engine


@pytest.fixture
def addon() -> Blocking:
    return Blocking(EngineHolder(make_engine()))


def req(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> http.HTTPFlow:
    r = http.Request.make(method, url, b"", headers or {})
    f = tflow.tflow(req=r)
    f.client_conn.sni = None
    return f


def metadata(f: http.HTTPFlow) -> dict[str, object]:
    return f.metadata[METADATA_KEY]


NAV = {"Sec-Fetch-Dest": "document", "Accept": "text/html"}


# -- no clashes with mitmproxy's own addons and options ------------------------


async def test_loads_next_to_mitmproxy_default_addons() -> None:
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        ours = make_addons(EngineHolder(make_engine()))
        tctx.master.addons.add(Jectguard(ours))  # as `jectguard run` does; raises on a duplicate name
        names = [a.name for a in ours]  # type: ignore[attr-defined]
        assert names[:2] == ["jectguard_clients", "jectguard_block"]  # clients checked first
        assert tctx.master.addons.get("jectguard_block") is ours[1]  # children are found by name
        assert all(n.startswith("jectguard_") for n in names) and len(set(names)) == len(names)
        assert tctx.master.addons.get("blocklist") is not None  # mitmproxy's own, untouched
        assert tctx.master.addons.get("block") is not None
        keys = tctx.options.keys()
        jg = [k for k in keys if k.startswith("jg_")]
        assert "jg_mode" in jg and "jg_allow_clients" in jg
        assert "block_list" in tctx.options  # mitmproxy's option still there


async def test_configure_rejects_bad_values(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jg_mode"):
            tctx.configure(addon, jg_mode="block")
        with pytest.raises(exceptions.OptionsError, match="jg_report_url"):
            tctx.configure(addon, jg_report_url="javascript:alert(1)")
        with pytest.raises(exceptions.OptionsError, match="jg_proceed_minutes"):
            tctx.configure(addon, jg_proceed_minutes=0)
        with pytest.raises(exceptions.OptionsError, match="jg_proceed_secret"):
            tctx.configure(addon, jg_proceed_anyway=True, jg_proceed_secret="short")
        with pytest.raises(exceptions.OptionsError, match="jg_admin_contact"):
            tctx.configure(addon, jg_admin_contact="a\nb")
        tctx.configure(addon, jg_report_url="https://example.org/report", jg_mode="monitor")
        assert addon.report_url == "https://example.org/report" and not addon.enforce


async def test_clients_option_validated() -> None:
    a = ClientAllowList()
    with (
        taddons.context(a) as tctx,
        pytest.raises(exceptions.OptionsError, match="jg_allow_clients"),
    ):
        tctx.configure(a, jg_allow_clients=["10.0.0.0/33"])


# -- requests ------------------------------------------------------------------

BODY_CASES = [
    ("navigation", NAV, "text/html", b"suspected malicious"),
    ("navigation-no-fetch-metadata", {"Accept": "text/html,*/*;q=0.8"}, "text/html", b"<html"),
    ("script", {"Sec-Fetch-Dest": "script", "Accept": "*/*"}, "text/plain", b""),
    ("image", {"Sec-Fetch-Dest": "image"}, "text/plain", b""),
    ("iframe", {"Sec-Fetch-Dest": "iframe", "Accept": "text/html"}, "text/plain", b""),
    ("fetch", {"Sec-Fetch-Dest": "empty", "Accept": "application/json"}, "text/plain", b""),
    ("api", {"Accept": "application/json"}, "application/json", b'"list": "malware"'),
    ("curl", {"Accept": "*/*"}, "text/plain", b"Blocked by jectguard"),
    ("no-accept", {}, "text/plain", b"List: malware"),
]


@pytest.mark.parametrize(("name", "headers", "ctype", "snippet"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
async def test_blocked_request_body_kinds(
    addon: Blocking, name: str, headers: dict[str, str], ctype: str, snippet: bytes
) -> None:
    with taddons.context(addon):
        f = req("http://evil.test/x", headers)
        addon.requestheaders(f)
        assert f.response is not None
        assert f.response.status_code == 403
        assert f.response.headers["Cache-Control"] == "no-store"
        assert f.response.headers["Content-Type"].startswith(ctype)
        assert "list=malware" in f.response.headers[HEADER_NAME]
        assert snippet in f.response.content if snippet else f.response.content == b""
        assert metadata(f)["action"] == "block"


async def test_json_body_has_page_fields(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_admin_contact="it@example.org")
        f = req("http://EVIL.test./a?b=1", {"Accept": "application/json"})
        addon.requestheaders(f)
        doc = json.loads(f.response.content)  # type: ignore[union-attr]
        assert doc["list"] == "malware" and doc["rule"] == "evil.test"
        assert doc["category"] == "malware" and doc["admin_contact"] == "it@example.org"
        assert re.fullmatch(r"[0-9a-f]{12}", doc["request_id"])
        assert doc["request_id"] == metadata(f)["request_id"]


async def test_block_page_off_gives_text(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_block_page=False)
        f = req("http://evil.test/", NAV)
        addon.requestheaders(f)
        assert f.response.headers["Content-Type"].startswith("text/plain")  # type: ignore[union-attr]


ALLOWED = [
    "http://example.test/",
    "http://good.test/fine/path",
    "http://ok.evil.test/",  # allowlisted: wins over the block rule
    "http://198.51.100.8/",
]


@pytest.mark.parametrize("url", ALLOWED)
async def test_allowed_request_untouched(addon: Blocking, url: str) -> None:
    with taddons.context(addon):
        f = req(url)
        addon.requestheaders(f)
        assert f.response is None
        assert metadata(f)["action"] in ("pass", "allow")


BLOCKED = [
    ("domain", "http://evil.test/"),
    ("subdomain", "http://a.b.evil.test/"),
    ("url-prefix", "http://good.test/bad/thing.js"),
    ("ip", "http://198.51.100.7/dot.php"),
    ("cidr", "http://203.0.113.9:8080/"),
    ("case", "http://EvIl.TeSt/"),
    ("trailing-dot", "http://evil.test./"),
    ("decimal-ipv4", "http://3325256711/"),
    ("hex-ipv4", "http://0xC6336407/"),
    ("octal-ipv4", "http://0306.063.0144.07/"),
    ("userinfo", "http://user:pw@evil.test/"),
    ("percent-path", "http://good.test/%62ad/thing.js"),
    ("websocket", "ws://evil.test/socket"),
    ("https", "https://evil.test/"),
]


@pytest.mark.parametrize(("name", "url"), BLOCKED, ids=[b[0] for b in BLOCKED])
async def test_blocked_urls(addon: Blocking, name: str, url: str) -> None:
    with taddons.context(addon):
        f = req(url)
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403, name


async def test_host_header_mismatch_blocks(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://example.test/")
        f.request.headers["Host"] = "evil.test"
        addon.requestheaders(f)
        assert f.response is not None
        assert metadata(f)["stage"] == "host-header"


async def test_http2_authority_checked(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("https://example.test/")
        f.request.http_version = "HTTP/2.0"
        f.request.authority = "evil.test"
        addon.requestheaders(f)
        assert f.response is not None


async def test_sni_mismatch_blocks_request(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("https://example.test/")
        f.client_conn.sni = "cdn.evil.test"
        addon.requestheaders(f)
        assert f.response is not None and metadata(f)["stage"] == "sni"


async def test_websocket_handshake_blocked(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req(
            "http://evil.test/ws",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
        )
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403


async def test_monitor_modes_let_request_pass(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        f = req("http://watch.test/")  # a monitor-mode list
        addon.requestheaders(f)
        assert f.response is None and metadata(f)["action"] == "monitor"
        tctx.configure(addon, jg_mode="monitor")  # global monitor
        f = req("http://evil.test/")
        addon.requestheaders(f)
        assert f.response is None and metadata(f)["action"] == "monitor"


async def test_guards_skip_answered_and_dead_flows(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://evil.test/")
        f.response = http.Response.make(407)
        addon.requestheaders(f)
        assert f.response.status_code == 407
        f = req("http://evil.test/")
        f.live = False
        addon.requestheaders(f)
        assert f.response is None


async def test_html_escapes_url(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req('http://evil.test/"><script>alert(1)</script>', NAV)
        addon.requestheaders(f)
        body = f.response.content  # type: ignore[union-attr]
        assert b"<script>" not in body
        assert b"script-src" not in f.response.headers["Content-Security-Policy"].encode()  # type: ignore[union-attr]


# -- redirects -----------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["http://evil.test/x", "//evil.test/x", "http://198.51.100.7/", "/bad/y"]
)
async def test_redirect_to_blocked_url_replaced(addon: Blocking, location: str) -> None:
    with taddons.context(addon):
        f = req("http://good.test/start", NAV)
        addon.requestheaders(f)
        f.response = http.Response.make(302, b"moved", {"Location": location})
        addon.responseheaders(f)
        assert f.response.status_code == 302  # body still being read
        addon.response(f)
        assert f.response.status_code == 403
        assert metadata(f)["stage"] == "redirect"
        assert b"suspected malicious" in f.response.content


async def test_redirect_with_a_raw_byte_matches_the_percent_rule(addon: Blocking) -> None:
    """Header bytes that are not UTF-8 reach the addon as lone surrogates (mitmproxy's
    "surrogateescape"); the engine must read them as the bytes they were."""
    with taddons.context(addon):
        f = req("http://good.test/start", NAV)
        addon.requestheaders(f)
        f.response = http.Response.make(302, b"moved")
        f.response.headers = http.Headers([(b"location", b"http://good.test/\xff/x.js")])
        addon.responseheaders(f)
        addon.response(f)
        assert f.response.status_code == 403
        assert "rule=good.test/%FF/" in f.response.headers[HEADER_NAME]


async def test_redirect_to_allowed_url_kept(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://good.test/start")
        f.response = http.Response.make(301, b"", {"Location": "/fine"})
        addon.responseheaders(f)
        addon.response(f)
        assert f.response.status_code == 301


# -- CONNECT, TLS, server connections -----------------------------------------


def connect_flow(host: str, port: int = 443, mode: str = "regular") -> http.HTTPFlow:
    r = http.Request(host, port, b"CONNECT", b"", f"{host}:{port}".encode(), b"", b"HTTP/1.1",
                     http.Headers(), b"", None, 0, 0)
    f = tflow.tflow(req=r)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    return f


async def test_connect_blocked_without_interception(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_intercept=False)
        f = connect_flow("EVIL.test.")
        addon.http_connect(f)
        assert f.response is not None and f.response.status_code == 403
        assert "list=malware" in f.response.headers[HEADER_NAME]
        assert b"Blocked by jectguard" in f.response.content


async def test_connect_blocked_with_interception_keeps_tunnel_local(addon: Blocking) -> None:
    with taddons.context(addon):
        f = connect_flow("evil.test")
        addon.http_connect(f)
        assert f.response is not None and f.response.status_code == 200
        assert f.client_conn.id in addon.refused
        # no connection to the origin, ever
        server = connection.Server(address=("evil.test", 443))
        await Addresses(addon).server_connect(
            server_hooks.ServerConnectionHookData(server, f.client_conn)
        )
        assert server.error and "blocked" in server.error
        # the request inside the tunnel gets the page, even with an innocent Host header
        inner = req("https://evil.test/", NAV)
        inner.client_conn = f.client_conn
        addon.requestheaders(inner)
        assert inner.response is not None and b"suspected malicious" in inner.response.content
        addon.client_disconnected(f.client_conn)
        assert f.client_conn.id not in addon.refused


async def test_connect_blocked_in_upstream_mode_is_403(addon: Blocking) -> None:
    with taddons.context(addon):
        f = connect_flow("evil.test", mode="upstream:http://127.0.0.1:3128")
        addon.http_connect(f)
        assert f.response is not None and f.response.status_code == 403


async def test_connect_allowed(addon: Blocking) -> None:
    with taddons.context(addon):
        f = connect_flow("example.test")
        addon.http_connect(f)
        assert f.response is None and metadata(f)["action"] == "pass"


def clienthello(sni: str | None, client: connection.Client) -> tls.ClientHelloData:
    ctx = proxy_context.Context(client, taddons.context().options)

    class _Hello:
        pass

    hello = _Hello()
    hello.sni = sni  # type: ignore[attr-defined]
    return tls.ClientHelloData(ctx, hello)  # type: ignore[arg-type]


async def test_sni_blocked_with_interception(addon: Blocking) -> None:
    with taddons.context(addon):
        client = tflow.tclient_conn()
        data = clienthello("www.evil.test", client)
        data.establish_server_tls_first = True
        addon.tls_clienthello(data)
        assert not data.establish_server_tls_first and not data.ignore_connection
        assert client.id in addon.refused and client.id not in addon.fail_tls


async def test_sni_blocked_without_interception_fails_tls(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_intercept=False)
        client = tflow.tclient_conn()
        data = clienthello("evil.test", client)
        addon.tls_clienthello(data)
        assert not data.ignore_connection and client.id in addon.fail_tls
        start = tls.TlsData(client, data.context)
        start.ssl_conn = object()  # type: ignore[assignment]
        Tunnels(addon).tls_start_client(start)
        assert start.ssl_conn is None


async def test_sni_allowed_without_interception_passes_through(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_intercept=False)
        data = clienthello("example.test", tflow.tclient_conn())
        addon.tls_clienthello(data)
        assert data.ignore_connection


# -- proceed anyway ------------------------------------------------------------


def _form_fields(body: bytes) -> dict[str, str]:
    found = re.findall(r'name="([^"]+)" value="([^"]*)"', body.decode())
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def test_proceed_anyway_round_trip(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True, jg_proceed_minutes=5)
        f = req("http://evil.test/page?x=1", NAV)
        addon.requestheaders(f)
        body = f.response.content  # type: ignore[union-attr]
        assert b"Continue anyway?" in body
        fields = _form_fields(body)
        assert fields["host"] == "evil.test" and fields["return"] == "http://evil.test/page?x=1"

        # forged signature from a page: refused
        forged = req(f"http://evil.test{PROCEED_PATH}", {}, method="POST")
        forged.client_conn = f.client_conn
        forged.request.urlencoded_form = {**fields, "sig": "A" * 43}  # type: ignore[assignment]
        addon.requestheaders(forged)
        addon.request(forged)
        assert forged.response.status_code == 403  # type: ignore[union-attr]

        # another client replaying the token: refused
        other = req(f"http://evil.test{PROCEED_PATH}", {}, method="POST")
        other.client_conn.peername = ("10.9.9.9", 5555)
        other.request.urlencoded_form = fields  # type: ignore[assignment]
        addon.requestheaders(other)
        addon.request(other)
        assert other.response.status_code == 403  # type: ignore[union-attr]

        # the real thing
        ok = req(f"http://evil.test{PROCEED_PATH}", {}, method="POST")
        ok.client_conn = f.client_conn
        ok.request.urlencoded_form = fields  # type: ignore[assignment]
        addon.requestheaders(ok)
        assert ok.response is None
        addon.request(ok)
        assert ok.response.status_code == 303  # type: ignore[union-attr]
        assert ok.response.headers["Location"] == "http://evil.test/page?x=1"  # type: ignore[union-attr]

        again = req("http://evil.test/page", NAV)
        again.client_conn = f.client_conn
        addon.requestheaders(again)
        assert again.response is None and metadata(again)["action"] == "proceed"
        # only for that client
        stranger = req("http://evil.test/page", NAV)
        stranger.client_conn.peername = ("10.9.9.9", 5555)
        addon.requestheaders(stranger)
        assert stranger.response is not None


async def test_proceed_off_by_default(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://evil.test/", NAV)
        addon.requestheaders(f)
        assert b"Continue anyway" not in f.response.content  # type: ignore[union-attr]
        p = req(f"http://evil.test{PROCEED_PATH}", {}, method="POST")
        addon.requestheaders(p)
        assert p.response is not None and p.response.status_code == 403


# -- client allow-list ---------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("192.168.1.20", True), ("10.0.0.1", False),
     ("::ffff:192.168.1.7", True), ("8.8.8.8", False)],
)
async def test_client_allow_list(peer: str, allowed: bool) -> None:
    a = ClientAllowList()
    with taddons.context(a) as tctx:
        tctx.configure(a, jg_allow_clients=["192.168.1.0/24"])
        client = tflow.tclient_conn()
        client.peername = (peer, 50000)
        a.client_connected(client)
        assert (client.error is None) is allowed


async def test_client_allow_list_empty_allows_all() -> None:
    a = ClientAllowList()
    with taddons.context(a) as tctx:
        tctx.configure(a)
        client = tflow.tclient_conn()
        client.peername = ("8.8.8.8", 1)
        a.client_connected(client)
        assert client.error is None
