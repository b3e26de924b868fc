"""The blocking and client addons, hook by hook, with mitmproxy's test helpers."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
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
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import ClientAllowList, EngineHolder, Jectguard, make_addons
from proxy_addons.addons.addresses import Addresses
from proxy_addons.addons.blocking import METADATA_KEY, Blocking
from proxy_addons.addons.blockpage import HEADER_NAME
from proxy_addons.addons.proceed import PROCEED_HOST
from proxy_addons.addons.tunnels import Tunnels
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
        tctx.master.addons.add(
            Jectguard(ours)
        )  # as `jectguard run` does; raises on a duplicate name
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


@pytest.mark.parametrize(
    ("name", "headers", "ctype", "snippet"), BODY_CASES, ids=[c[0] for c in BODY_CASES]
)
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
        assert f.response is not None and f.response.status_code == 403
        assert metadata(f)["action"] == "block" and metadata(f)["stage"] == "authority"
        assert metadata(f)["verdict"]["rule"] == "evil.test"


async def test_http2_unreadable_authority_refused(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("https://example.test/")
        f.request.http_version = "HTTP/2.0"
        f.request.authority = "exa mple.test"
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 400
        assert metadata(f)["action"] == "error" and metadata(f)["stage"] == "authority"


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
    r = http.Request(
        host,
        port,
        b"CONNECT",
        b"",
        f"{host}:{port}".encode(),
        b"",
        b"HTTP/1.1",
        http.Headers(),
        b"",
        None,
        0,
        0,
    )
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
        await Addresses(addon, refuses=None).server_connect(
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
    hello.extensions = [] if sni is None else [(0, b"")]  # type: ignore[attr-defined]
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


PROCEED = f"http://{PROCEED_HOST}/"
CLICK = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-User": "?1"}
SUBMIT = {**CLICK, "Sec-Fetch-Site": "same-origin", "Origin": f"http://{PROCEED_HOST}"}


def _confirmation_page(addon: Blocking, block: http.HTTPFlow) -> http.HTTPFlow:
    """The person follows the block page's link: a page on the proxy's own origin."""
    link = _form_fields(block.response.content)  # type: ignore[union-attr]
    page = req(
        PROCEED + "?" + urllib.parse.urlencode(link), {**CLICK, "Sec-Fetch-Site": "cross-site"}
    )
    page.client_conn = block.client_conn
    addon.requestheaders(page)
    return page


def _post(
    addon: Blocking, client: connection.Client, fields: dict[str, str], headers: dict[str, str]
) -> http.HTTPFlow:
    f = req(PROCEED, headers, method="POST")
    f.client_conn = client
    f.request.urlencoded_form = fields  # type: ignore[assignment]
    addon.requestheaders(f)
    addon.request(f)
    return f


async def test_proceed_anyway_round_trip(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True, jg_proceed_minutes=5)
        f = req("http://evil.test/page?x=1", NAV)
        addon.requestheaders(f)
        body = f.response.content  # type: ignore[union-attr]
        assert b"Continue anyway?" in body
        # the blocked site's origin gets no token: only a link to the proxy's origin
        assert _form_fields(body) == {"host": "evil.test", "return": "http://evil.test/page?x=1"}
        assert f'method="get" action="{PROCEED}"'.encode() in body

        page = _confirmation_page(addon, f)
        assert page.response is not None and page.response.status_code == 200
        assert "frame-ancestors 'none'" in page.response.headers["Content-Security-Policy"]
        assert "Access-Control-Allow-Origin" not in page.response.headers
        assert page.response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        token = _form_fields(page.response.content)
        assert {"host", "exp", "sig", "return"} <= set(token)

        forged = _post(addon, f.client_conn, {**token, "sig": "A" * 43}, SUBMIT)
        assert forged.response.status_code == 403  # type: ignore[union-attr]
        other_client = tflow.tclient_conn()
        other_client.peername = ("10.9.9.9", 5555)
        assert _post(addon, other_client, token, SUBMIT).response.status_code == 403  # type: ignore[union-attr]

        ok = _post(addon, f.client_conn, token, SUBMIT)
        assert ok.response.status_code == 303  # type: ignore[union-attr]
        assert ok.response.headers["Location"] == "http://evil.test/page?x=1"  # type: ignore[union-attr]
        assert metadata(ok)["action"] == "proceed-granted"

        again = req("http://evil.test/page", NAV)
        again.client_conn = f.client_conn
        addon.requestheaders(again)
        assert again.response is None and metadata(again)["action"] == "proceed"
        stranger = req("http://evil.test/page", NAV)
        stranger.client_conn.peername = ("10.9.9.9", 5555)
        addon.requestheaders(stranger)
        assert stranger.response is not None


# What a script on the compromised page can send toward the proceed origin.
FORGED_SUBMITS = [
    (
        "fetch",
        {
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Dest": "empty",
            "Sec-Fetch-Site": "cross-site",
            "Origin": "http://evil.test",
        },
    ),
    (
        "no-cors-fetch",
        {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "cross-site"},
    ),
    (
        "auto-submitted-form",
        {
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
            "Sec-Fetch-Site": "cross-site",
            "Origin": "http://evil.test",
        },
    ),
    ("form-in-a-frame", {**SUBMIT, "Sec-Fetch-Dest": "iframe"}),
    ("no-click", {k: v for k, v in SUBMIT.items() if k != "Sec-Fetch-User"}),
    ("other-origin", {"Origin": "http://evil.test"}),
]


@pytest.mark.parametrize(("name", "headers"), FORGED_SUBMITS, ids=[c[0] for c in FORGED_SUBMITS])
async def test_proceed_grant_needs_a_click_on_the_proxy_origin(
    addon: Blocking, name: str, headers: dict[str, str]
) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True)
        f = req("http://evil.test/page", NAV)
        addon.requestheaders(f)
        token = _form_fields(_confirmation_page(addon, f).response.content)  # type: ignore[union-attr]
        forged = _post(addon, f.client_conn, token, headers)
        assert forged.response.status_code == 403, name  # type: ignore[union-attr]
        assert not addon.signer.grants  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
        {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    ],
)
async def test_proceed_page_is_never_served_to_a_fetch_or_a_frame(
    addon: Blocking, headers: dict[str, str]
) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True)
        f = req(PROCEED + "?host=evil.test&return=http%3A%2F%2Fevil.test%2F", headers)
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert b"sig" not in f.response.content


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.test; script-src * 'unsafe-inline'/",
        "javascript:alert(1)",
        "not a url",
        "http://example.test/",
        "http://198.51.100.7/",
    ],
)
async def test_proceed_page_only_for_a_blocked_url_of_that_host(
    addon: Blocking, target: str
) -> None:
    """The return URL goes into the page's CSP and the final redirect: free text never does."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True)
        q = urllib.parse.urlencode({"host": "evil.test", "return": target})
        f = req(PROCEED + "?" + q, CLICK)
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert "script-src" not in f.response.headers.get("Content-Security-Policy", "")


async def test_blocked_site_origin_has_no_proceed_endpoint(addon: Blocking) -> None:
    """The old form target on the blocked host is just another blocked URL."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True)
        f = req("http://evil.test/.well-known/jectguard/proceed", {}, method="POST")
        addon.requestheaders(f)
        addon.request(f)
        assert f.response is not None and metadata(f)["action"] == "block"


async def test_grants_never_unlock_address_rules(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_proceed_anyway=True)
        f = req("http://198.51.100.7/x", NAV)
        addon.requestheaders(f)
        assert b"Continue anyway" not in f.response.content  # type: ignore[union-attr]
        page = req(PROCEED + "?host=198.51.100.7&return=http%3A%2F%2F198.51.100.7%2Fx", CLICK)
        addon.requestheaders(page)
        assert page.response.status_code == 403  # type: ignore[union-attr]
        # even a grant held for that address (or a name on it) does not open an IP rule
        addon.signer.grant("192.168.0.1", "198.51.100.7")  # type: ignore[union-attr]
        again = req("http://198.51.100.7/x", NAV)
        again.client_conn.peername = ("192.168.0.1", 1)
        addon.requestheaders(again)
        assert again.response is not None and metadata(again)["action"] == "block"


async def test_proceed_off_by_default(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://evil.test/", NAV)
        addon.requestheaders(f)
        assert b"Continue anyway" not in f.response.content  # type: ignore[union-attr]
        p = req(PROCEED, SUBMIT, method="POST")
        addon.requestheaders(p)
        assert p.response is not None and p.response.status_code == 404


# -- client allow-list ---------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("192.168.1.20", True),
        ("10.0.0.1", False),
        ("::ffff:192.168.1.7", True),
        ("8.8.8.8", False),
    ],
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


# -- hostile requests (issue 11) ---------------------------------------------------


def tunnel_req(
    target: str,
    authority: str,
    path: str = "/x",
    host: str | None = None,
    version: bytes = b"HTTP/1.1",
) -> http.HTTPFlow:
    """A request inside an intercepted tunnel to ``target`` (mitmproxy sets .host from it)."""
    headers = http.Headers([(b"Host", (host or target).encode())])
    r = http.Request(
        target,
        443,
        b"GET",
        b"https",
        authority.encode(),
        path.encode(),
        version,
        headers,
        b"",
        None,
        0,
        0,
    )
    f = tflow.tflow(req=r)
    f.client_conn.sni = target
    return f


@pytest.mark.parametrize(
    ("authority", "path", "stage"),
    [
        ("evil.test", "/x", "authority"),  # GET https://evil.test/x inside CONNECT example.test
        ("EVIL.test.:443", "/x", "authority"),
        ("good.test", "/bad/thing.js", "authority"),  # URL rules apply to the request line too
        ("user@evil.test", "/", "authority"),
    ],
)
async def test_absolute_form_target_in_a_tunnel_is_checked(
    addon: Blocking, authority: str, path: str, stage: str
) -> None:
    with taddons.context(addon):
        f = tunnel_req("example.test", authority, path)
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert metadata(f)["stage"] == stage


async def test_http2_authority_and_host_header_both_checked(addon: Blocking) -> None:
    with taddons.context(addon):
        f = tunnel_req("example.test", "example.test", host="evil.test", version=b"HTTP/2.0")
        addon.requestheaders(f)
        assert f.response is not None and metadata(f)["stage"] == "host-header"


# A Host header the URL parser refuses, which nginx and Apache still route by its name.
ROUTED_HOSTS = [
    "evil.test:abc",
    "evil.test:-1",
    "evil.test:80:80",
    "evil.test:",
    "EVIL.test.:99999",
    "evil.test:8o",
]


@pytest.mark.parametrize("value", ROUTED_HOSTS)
async def test_unreadable_host_header_routed_to_a_listed_name_is_blocked(
    addon: Blocking, value: str
) -> None:
    with taddons.context(addon):
        f = req("http://example.test/", NAV)
        f.request.headers["Host"] = value
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert "list=malware" in f.response.headers[HEADER_NAME]


@pytest.mark.parametrize(
    "value", ["example.test:abc", "example.test:80:80", "exa mple.test", "[::1", "good.test:x"]
)
async def test_unreadable_host_header_fails_closed(addon: Blocking, value: str) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_mode="monitor")  # an unreadable request is refused in any mode
        f = req("http://example.test/", {"Accept": "text/plain"})
        f.request.headers["Host"] = value
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 400
        assert b"Host header cannot be read" in f.response.content
        assert metadata(f)["action"] == "error" and metadata(f)["stage"] == "host-header"


async def test_unreadable_host_with_url_rule_path_is_blocked(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://example.test/bad/x.js")
        f.request.headers["Host"] = "good.test:abc"
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403


async def test_two_host_headers_fail_closed(addon: Blocking) -> None:
    with taddons.context(addon):
        f = req("http://example.test/")
        f.request.headers = http.Headers([(b"Host", b"example.test"), (b"Host", b"other.test")])
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 400


async def test_url_over_the_limit_is_refused_not_host_checked(addon: Blocking) -> None:
    """Old behaviour: a host-only check, so the URL rule good.test/bad/ was skipped."""
    with taddons.context(addon):
        f = req("http://good.test/bad/" + "a" * 70_000)
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 414
        assert metadata(f)["action"] == "error"


async def test_ipv6_literal_request_is_checked_not_refused(addon: Blocking) -> None:
    with taddons.context(addon):
        ok = req("http://[2001:db8::1]:8080/x")
        addon.requestheaders(ok)
        assert ok.response is None
        bad = req("http://[::ffff:198.51.100.7]/x")
        addon.requestheaders(bad)
        assert bad.response is not None and bad.response.status_code == 403


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (302, {"Location": "\\\\evil.test/x"}),
        (302, {"Location": "/\\evil.test/x"}),
        (301, {"Location": " //evil.test/x"}),
        (307, {"Location": "\t/\t/evil.test/x"}),
        (200, {"Refresh": "0; url=http://evil.test/"}),
        (200, {"Refresh": "5;URL='//evil.test/x'"}),
        (200, {"Refresh": '0, "/bad/y"'}),
        (200, {"Refresh": "1 \\\\evil.test\\x"}),
    ],
)
async def test_redirects_joined_as_a_browser_joins_them(
    addon: Blocking, status: int, headers: dict[str, str]
) -> None:
    with taddons.context(addon):
        f = req("http://good.test/start", NAV)
        addon.requestheaders(f)
        f.response = http.Response.make(status, b"body", headers)
        addon.responseheaders(f)
        addon.response(f)
        assert f.response.status_code == 403
        assert metadata(f)["stage"] == "redirect"


async def test_every_location_and_refresh_value_is_checked(addon: Blocking) -> None:
    for name in ("Location", "Refresh"):
        with taddons.context(addon):
            f = req("http://good.test/start", NAV)
            addon.requestheaders(f)
            f.response = http.Response.make(302, b"")
            first = "/fine" if name == "Location" else "0; url=/fine"
            last = "http://evil.test/" if name == "Location" else "0; url=http://evil.test/"
            f.response.headers = http.Headers(
                [(name.encode(), first.encode()), (name.encode(), last.encode())]
            )
            addon.responseheaders(f)
            addon.response(f)
            assert f.response.status_code == 403, name


@pytest.mark.parametrize("refresh", ["0", "5; url=/fine", "nonsense url=http://evil.test/"])
async def test_refresh_to_allowed_or_nothing_kept(addon: Blocking, refresh: str) -> None:
    with taddons.context(addon):
        f = req("http://good.test/start")
        f.response = http.Response.make(200, b"ok", {"Refresh": refresh})
        addon.responseheaders(f)
        addon.response(f)
        assert f.response.status_code == 200


INTERNAL = [
    # (127.0.0.0/31 is on the test list: these are past it, so the policy alone decides)
    ("loopback", "http://127.0.0.9:8000/"),
    ("loopback-decimal", "http://2130706441/"),
    ("loopback-short", "http://127.9/"),
    ("loopback-mapped", "http://[::ffff:127.0.0.9]/"),
    ("loopback-nat64", "http://[64:ff9b::7f00:9]/"),
    ("loopback-v6", "http://[::1]/"),
    ("unspecified", "http://0.0.0.0:22/"),
    ("unspecified-v6", "http://[::]/"),
    ("metadata", "http://169.254.169.254/latest/meta-data/"),
    ("metadata-v6", "http://[fd00:ec2::254]/"),
    ("link-local", "http://169.254.1.1/"),
    ("localhost", "http://localhost:8090/api"),
    ("dot-localhost", "http://admin.LOCALHOST./"),
]


@pytest.mark.parametrize(("name", "url"), INTERNAL, ids=[c[0] for c in INTERNAL])
async def test_internal_destinations_refused(addon: Blocking, name: str, url: str) -> None:
    with taddons.context(addon):
        f = req(url, {"Accept": "text/plain"})
        addon.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403, name
        assert metadata(f)["stage"] == "destination"
        assert b"Refused by jectguard" in f.response.content


async def test_allow_destination_opens_a_network(addon: Blocking) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_allow_destination=["127.0.0.0/8", "::1"])
        for url in ("http://127.0.0.9:8000/", "http://[::ffff:127.0.0.9]/", "http://localhost/"):
            f = req(url)
            addon.requestheaders(f)
            assert f.response is None, url
        f = req("http://169.254.169.254/")
        addon.requestheaders(f)
        assert f.response is not None
        with pytest.raises(exceptions.OptionsError, match="jg_allow_destination"):
            tctx.configure(addon, jg_allow_destination=["10.0.0.0/33"])
        with pytest.raises(exceptions.OptionsError, match="jg_connect_ports"):
            tctx.configure(addon, jg_connect_ports=["443,70000"])


async def test_own_address_refused(addon: Blocking) -> None:
    from tests.e2e.conftest import non_loopback_ip

    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback address")
    with taddons.context(addon) as tctx:
        tctx.configure(addon)  # mitmproxy configures every addon at start: own addresses read
        f = req(f"http://{ip}:8080/")
        addon.requestheaders(f)
        assert f.response is not None and b"proxy host itself" in f.response.content


@pytest.mark.parametrize(("port", "allowed"), [(443, True), (8443, False), (22, False)])
async def test_connect_ports(addon: Blocking, port: int, allowed: bool) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_intercept=False)
        f = connect_flow("example.test", port)
        addon.http_connect(f)
        assert (f.response is None) is allowed
        if not allowed:
            assert f.response.status_code == 403  # type: ignore[union-attr]
            assert b"port" in f.response.content  # type: ignore[union-attr]
        tctx.configure(addon, jg_connect_ports=["443,8000-9000", "22"])
        f = connect_flow("example.test", port)
        addon.http_connect(f)
        assert f.response is None


@pytest.mark.parametrize("host", ["127.0.0.9", "localhost", "169.254.169.254", "::1"])
@pytest.mark.parametrize("mode", ["enforce", "monitor"])
async def test_connect_to_internal_destination_refused_at_once(
    addon: Blocking, host: str, mode: str
) -> None:
    """A 403 to the CONNECT itself, in every mode: no tunnel, so nothing relies on
    later hooks (which let a monitor-mode tunnel through) to keep it closed."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_mode=mode)
        f = connect_flow(host)
        addon.http_connect(f)
        assert f.response is not None and f.response.status_code == 403
        assert b"Refused by jectguard" in f.response.content
        assert metadata(f)["stage"] == "destination"


async def test_unreadable_sni_fails_closed(addon: Blocking) -> None:
    with taddons.context(addon):
        client = tflow.tclient_conn()
        addon.tls_clienthello(clienthello("a" * 300 + ".test", client))
        assert client.id in addon.refused


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
@pytest.mark.parametrize("intercept", [True, False])
async def test_sni_extension_mitmproxy_cannot_read_fails_closed(
    addon: Blocking, mode: str, intercept: bool
) -> None:
    """A server_name mitmproxy reads as None (not a host name) is no SNI-less hello."""
    from .test_tunnels import client_hello

    hello = parse_client_hello(client_hello("exa%mple.test"))
    assert hello is not None and hello.sni is None and hello.extensions
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_mode=mode, jg_intercept=intercept)
        client = tflow.tclient_conn()
        data = tls.ClientHelloData(proxy_context.Context(client, tctx.options), hello)
        addon.tls_clienthello(data)
        assert client.id in addon.refused and not data.ignore_connection
        assert (client.id in addon.fail_tls) is not intercept
