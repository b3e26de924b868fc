"""The admin API against create_app(), with a real small engine."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy_addons.admin import app as admin
from proxy_addons.admin.app import (
    PUBLIC_PATHS,
    TOKEN_ENV,
    AdminState,
    TokenError,
    create_app,
    load_or_create_token,
    pac_file,
    pac_host,
)
from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODE = "/usr/bin/node"
PROTECTED = [
    ("GET", "/metrics"),
    ("GET", "/api/status"),
    ("GET", "/api/check?url=http://evil.test/"),
    ("POST", "/api/refresh"),
    ("GET", "/api/events"),
    ("GET", "/api/timeline"),
    ("GET", "/no-such-route"),
]


def _rules(*keys: tuple[RuleKind, str]) -> ParsedList:
    return ParsedList("t", [Rule(k, v, v, i + 1) for i, (k, v) in enumerate(keys)])


def make_engine() -> Engine:
    engine, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="malware", category="malware"),
                _rules((RuleKind.DOMAIN, "evil.test"), (RuleKind.URL, "good.test/bad/")),
            ),
            (
                ListSpec(name="watch", category="phishing", mode=Mode.MONITOR),
                _rules((RuleKind.DOMAIN, "watch.test")),
            ),
            (ListSpec(name="allow", allow=True), _rules((RuleKind.EXACT, "ok.evil.test"))),
        ]
    )
    return engine


class Refresher:
    def __init__(self) -> None:
        self.calls = 0
        self.busy = False

    async def trigger(self) -> bool:
        self.calls += 1
        if self.busy:
            return False
        self.busy = True
        return True

    def status(self) -> dict[str, Any]:
        return {"running": self.busy, "sources": [{"name": "malware", "last_success": "x"}]}


@pytest.fixture
def engine() -> Engine:
    return make_engine()


@pytest.fixture
def state(engine: Engine) -> AdminState:
    return AdminState(
        token=TOKEN,
        engine=lambda: engine,
        events=EventLog(),
        metrics=Metrics(lambda: engine.block.meta),
        proxy_address=lambda: ("127.0.0.1", 8080),
        lists=lambda: [{"name": "malware", "rules": 2, "source": "/lists/m.txt"}],
    )


@pytest.fixture
async def client(aiohttp_client: Any, state: AdminState) -> Any:
    return await aiohttp_client(create_app(state))


# -- auth -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
    ],
)
async def test_protected_routes_need_the_token(
    client: Any, method: str, path: str, headers: dict[str, str]
) -> None:
    r = await client.request(method, path, headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await r.json()


@pytest.mark.parametrize(("method", "path"), PROTECTED[:-1])
async def test_protected_routes_open_with_the_token(client: Any, method: str, path: str) -> None:
    r = await client.request(method, path, headers=AUTH)
    assert r.status not in (401, 403, 404, 500)


async def test_token_query_parameter_is_not_accepted(client: Any) -> None:
    r = await client.get(f"/api/status?token={TOKEN}")
    assert r.status == 401


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/proxy.pac", "/", "/static/dashboard.js", "/static/dashboard.css"],
)
async def test_public_routes_need_no_token(client: Any, path: str) -> None:
    assert path in PUBLIC_PATHS
    r = await client.get(path)
    assert r.status == 200


async def test_compare_is_constant_time(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    assert (await client.get("/api/status", headers=AUTH)).status == 200
    assert (await client.get("/api/status", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/api/status")).status == 401
    assert len(calls) == 3  # compared every time, even with no token sent
    assert all(b == TOKEN.encode() for _, b in calls)


def test_short_token_refused(state: AdminState) -> None:
    state.token = "short"
    with pytest.raises(ValueError):
        create_app(state)


# -- headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/healthz", "/", "/api/status", "/metrics", "/proxy.pac", "/nope"]
)
async def test_security_headers_everywhere(client: Any, path: str) -> None:
    r = await client.get(path, headers=AUTH)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "http" not in csp and "unsafe" not in csp
    if path != "/":
        assert r.headers["Cache-Control"] == "no-store"


# -- health ----------------------------------------------------------------


async def test_healthz_and_readyz(client: Any) -> None:
    assert (await (await client.get("/healthz")).json())["status"] == "ok"
    r = await client.get("/readyz")
    assert r.status == 200 and (await r.json())["rules"] == 3


async def test_readyz_without_index_is_503(aiohttp_client: Any, state: AdminState) -> None:
    state.engine = lambda: None
    c = await aiohttp_client(create_app(state))
    assert (await c.get("/readyz")).status == 503
    assert (await c.get("/healthz")).status == 200
    assert (await c.get("/api/check?url=http://a.test/", headers=AUTH)).status == 503
    body = await (await c.get("/api/status", headers=AUTH)).json()
    assert body["ready"] is False and body["snapshot"] is None


# -- metrics ---------------------------------------------------------------


async def test_metrics_parse_and_move_when_a_block_is_recorded(
    client: Any, state: AdminState, engine: Engine
) -> None:
    def blocked(text: str) -> float:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if (
                    s.name == "jectguard_requests_blocked_total"
                    and s.labels.get("list") == "malware"
                ):
                    return s.value
        return 0.0

    r = await client.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    before = await r.text()
    families = {f.name for f in text_string_to_metric_families(before)}
    assert {
        "jectguard_rules",
        "jectguard_snapshot_age_seconds",
        "jectguard_verdict_seconds",
    } <= families
    assert blocked(before) == 0
    state.metrics.observe_verdict(engine.check_url("http://evil.test/"), 5e-6)
    after = await (await client.get("/metrics", headers=AUTH)).text()
    assert blocked(after) == 1


# -- status, check, refresh, events ------------------------------------------


async def test_status(client: Any, state: AdminState) -> None:
    state.events.emit("block", url="http://evil.test/")
    r = await client.get("/api/status", headers=AUTH)
    s = await r.json()
    assert s["version"] and s["uptime_seconds"] >= 0 and s["ready"] is True
    assert s["proxy"] == "127.0.0.1:8080"
    assert s["snapshot"]["rules"] == 3 and s["snapshot"]["allow_rules"] == 1
    assert s["snapshot"]["age_seconds"] >= 0
    lists = {item["name"]: item for item in s["lists"]}
    assert lists["malware"]["rules"] == 2 and lists["malware"]["category"] == "malware"
    assert lists["watch"]["mode"] == "monitor" and lists["allow"]["allow"] is True
    assert s["refresh"] is None and s["refresh_available"] is False
    assert s["events"]["block"] == 1


async def test_status_shows_refresh_provider(aiohttp_client: Any, state: AdminState) -> None:
    rf = Refresher()
    state.refresh_status, state.refresh_trigger = rf.status, rf.trigger
    c = await aiohttp_client(create_app(state))
    s = await (await c.get("/api/status", headers=AUTH)).json()
    assert s["refresh"]["sources"][0]["name"] == "malware" and s["refresh_available"]


@pytest.mark.parametrize(
    ("url", "verdict", "list_"),
    [
        ("http://evil.test/x", "block", "malware"),
        ("http://good.test/other", "pass", None),
        ("http://good.test/bad/page", "block", "malware"),
        ("http://watch.test/", "monitor", "watch"),
        ("http://ok.evil.test/", "allow", "allow"),
        ("http://fine.test/", "pass", None),
    ],
)
async def test_check_matches_the_engine(
    client: Any, engine: Engine, url: str, verdict: str, list_: str | None
) -> None:
    r = await client.get("/api/check", params={"url": url}, headers=AUTH)
    body = await r.json()
    assert r.status == 200
    assert body == json.loads(json.dumps(engine.check_url(url).as_dict()))  # same as check --json
    assert body["verdict"] == verdict and body["list"] == list_


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?url=",
        "?url=%20%20",
        "?url=" + "a" * 5000,
        "?url=http://a.test/%0ax",
        "?url=%00",
        "?other=1",
    ],
)
async def test_check_rejects_garbage_with_400(client: Any, query: str) -> None:
    r = await client.get("/api/check" + query, headers=AUTH)
    assert r.status == 400
    assert "error" in await r.json()


async def test_check_unparseable_url_is_a_verdict_not_a_500(client: Any) -> None:
    r = await client.get("/api/check", params={"url": "http://[::1/x"}, headers=AUTH)
    assert r.status == 200 and (await r.json())["verdict"] == "error"


async def test_refresh_without_refresher_is_501(client: Any) -> None:
    assert (await client.post("/api/refresh", headers=AUTH)).status == 501


async def test_refresh_calls_the_provider(aiohttp_client: Any, state: AdminState) -> None:
    rf = Refresher()
    state.refresh_trigger = rf.trigger
    c = await aiohttp_client(create_app(state))
    r = await c.post("/api/refresh", headers=AUTH)
    assert r.status == 202 and (await r.json())["status"] == "started"
    r = await c.post("/api/refresh", headers=AUTH)
    assert r.status == 409
    assert rf.calls == 2
    assert (await c.get("/api/refresh", headers=AUTH)).status == 405


async def test_refresh_sync_provider(aiohttp_client: Any, state: AdminState) -> None:
    answer: list[bool | None] = [True]
    state.refresh_trigger = lambda: answer[0]
    c = await aiohttp_client(create_app(state))
    assert (await c.post("/api/refresh", headers=AUTH)).status == 202
    answer[0] = False
    assert (await c.post("/api/refresh", headers=AUTH)).status == 409
    answer[0] = None  # the refresher is not (yet) there
    assert (await c.post("/api/refresh", headers=AUTH)).status == 501


async def test_events_listed_newest_first_with_limit(client: Any, state: AdminState) -> None:
    for i in range(5):
        state.events.emit("block", url=f"http://evil.test/{i}", request_id=str(i))
    state.events.emit("strip", url="http://page.test/")
    body = await (await client.get("/api/events?limit=3", headers=AUTH)).json()
    assert [e["event"] for e in body["events"]] == ["strip", "block", "block"]
    body = await (await client.get("/api/events?kind=block", headers=AUTH)).json()
    assert [e["request_id"] for e in body["events"]] == ["4", "3", "2", "1", "0"]
    assert len((await (await client.get("/api/events", headers=AUTH)).json())["events"]) == 6


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=1001",
        "?limit=99999999999999",
        "?limit=1.5",
        "?kind=nope",
        "?limit=%00",
    ],
)
async def test_events_rejects_garbage_with_400(client: Any, query: str) -> None:
    r = await client.get("/api/events" + query, headers=AUTH)
    assert r.status == 400 and "error" in await r.json()


async def test_timeline(client: Any, state: AdminState) -> None:
    state.events.emit("block")
    tl = await (await client.get("/api/timeline?minutes=60", headers=AUTH)).json()
    assert len(tl["series"]["block"]) == 60 and tl["series"]["block"][-1] == 1
    assert (await client.get("/api/timeline?minutes=0", headers=AUTH)).status == 400


async def test_a_failing_provider_is_a_json_500(aiohttp_client: Any, state: AdminState) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    state.lists = broken
    c = await aiohttp_client(create_app(state))
    r = await c.get("/api/status", headers=AUTH)
    assert r.status == 500 and (await r.json()) == {"error": "internal error"}


# -- dashboard -------------------------------------------------------------


async def test_dashboard_shell_has_no_data_and_no_external_resources(
    client: Any, state: AdminState
) -> None:
    state.events.emit("block", url="http://evil.test/secret-path")
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        r = await client.get(path)
        text = await r.text()
        assert "evil.test" not in text and TOKEN not in text
        for bad in ("http://", "https://", "//cdn", "@import"):
            assert bad not in text.replace("http://www.w3.org/2000/svg", "").replace(
                "http://example.test", ""
            ), (path, bad)
    js = await (await client.get("/static/dashboard.js")).text()
    assert "innerHTML" not in js and "sessionStorage" in js and "eval(" not in js
    html = await (await client.get("/")).text()
    assert "<script>" not in html and " style=" not in html  # CSP: no inline script/style
    assert 'name="viewport"' in html


# -- PAC -------------------------------------------------------------------


async def test_pac_file_is_valid(client: Any) -> None:
    r = await client.get("/proxy.pac")
    assert r.headers["Content-Type"].startswith("application/x-ns-proxy-autoconfig")
    text = await r.text()
    assert "function FindProxyForURL(url, host)" in text
    assert '"PROXY 127.0.0.1:8080"' in text


@pytest.mark.parametrize(
    ("configured", "request_host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:8090", "127.0.0.1"),
        ("0.0.0.0", "proxy.corp.test:8090", "proxy.corp.test"),
        ("", "[2001:db8::1]:8090", "[2001:db8::1]"),
        ("::", "192.0.2.5", "192.0.2.5"),
        ("::1", None, "[::1]"),
        ("0.0.0.0", 'evil";alert(1);"', None),
        ("0.0.0.0", None, None),
        ("proxy.test", "x", "proxy.test"),
    ],
)
def test_pac_host(configured: str, request_host: str | None, expected: str | None) -> None:
    assert pac_host(configured, request_host) == expected


async def test_pac_unknown_address_is_503(aiohttp_client: Any, state: AdminState) -> None:
    state.proxy_address = lambda: None
    c = await aiohttp_client(create_app(state))
    assert (await c.get("/proxy.pac")).status == 503


@pytest.mark.skipif(not Path(NODE).exists(), reason="node not installed")
def test_pac_file_runs_in_node(tmp_path: Path) -> None:
    pac = pac_file("192.0.2.9", 3128)
    harness = (
        pac
        + """
function isPlainHostName(h) { return h.indexOf(".") < 0; }
function dnsDomainIs(h, d) { return h.length >= d.length && h.substring(h.length - d.length) === d; }
const cases = [["http://example.com/", "example.com"], ["http://localhost:3000/", "localhost"],
  ["http://127.0.0.1/", "127.0.0.1"], ["http://intranet/", "intranet"],
  ["http://printer.local/", "printer.local"], ["https://EVIL.test/", "EVIL.test"],
  ["http://[::1]/", "::1"], ["http://127.evil.test/", "127.evil.test"],
  ["http://127.0.0.1.evil.test/", "127.0.0.1.evil.test"], ["http://127.1.2.3/", "127.1.2.3"],
  ["http://127.0.0.1x/", "127.0.0.1x"], ["http://1270.0.0.1.test/", "1270.0.0.1.test"]];
console.log(JSON.stringify(cases.map(([u, h]) => FindProxyForURL(u, h))));
"""
    )
    script = tmp_path / "pac_test.js"
    script.write_text(harness)
    out = subprocess.run(
        [NODE, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(out.stdout) == [
        "PROXY 192.0.2.9:3128",
        "DIRECT",
        "DIRECT",
        "DIRECT",
        "DIRECT",
        "PROXY 192.0.2.9:3128",
        "DIRECT",
        # a NAME that starts like a loopback address is anyone's: through the proxy
        "PROXY 192.0.2.9:3128",
        "PROXY 192.0.2.9:3128",
        "DIRECT",
        "PROXY 192.0.2.9:3128",
        "PROXY 192.0.2.9:3128",
    ]


# -- token -----------------------------------------------------------------


def test_token_generated_0600_on_first_start_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = load_or_create_token(None, data, env={})
    assert first.source == "generated" and first.path == data / "admin-token"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.token) >= 40 and first.token not in repr(first)
    second = load_or_create_token(None, data, env={})
    assert second.source == "stored" and second.token == first.token


def test_token_generated_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        tok = load_or_create_token(None, tmp_path, env={})
    finally:
        os.umask(old)
    assert tok.path is not None and stat.S_IMODE(tok.path.stat().st_mode) == 0o600


def test_token_from_env_and_file(tmp_path: Path) -> None:
    tok = load_or_create_token(None, tmp_path, env={TOKEN_ENV: TOKEN})
    assert tok.source == "env" and tok.token == TOKEN and tok.path is None
    assert not (tmp_path / "admin-token").exists()
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    tok = load_or_create_token(f, tmp_path, env={TOKEN_ENV: "ignored-because-file-wins-xxxx"})
    assert tok.source == "file" and tok.token == TOKEN


@pytest.mark.parametrize("content", ["", "short", "has space in it 0123456789", "x" * 5000])
def test_bad_token_file_is_an_error(tmp_path: Path, content: str) -> None:
    f = tmp_path / "tok"
    f.write_text(content)
    with pytest.raises(TokenError):
        load_or_create_token(f, tmp_path, env={})


def test_missing_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="no such file"):
        load_or_create_token(tmp_path / "missing", tmp_path, env={})
    with pytest.raises(TokenError):
        load_or_create_token(None, tmp_path, env={TOKEN_ENV: "short"})


def test_readable_token_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "tok"
    f.write_text(TOKEN)
    f.chmod(0o644)
    load_or_create_token(f, tmp_path, env={})
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


def test_uncreatable_data_dir_is_an_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(TokenError, match="cannot create"):
            load_or_create_token(None, ro / "data", env={})
    finally:
        ro.chmod(0o700)


async def test_served_on_a_real_socket(state: AdminState) -> None:
    """AppRunner + TCPSite on a free loopback port, as the addon runs it."""
    import aiohttp

    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{port}/api/status", headers=AUTH) as r,
        ):
            assert r.status == 200
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


async def test_request_line_over_aiohttp_limit_is_400_not_500(client: Any) -> None:
    r = await client.get("/api/check?url=" + "a" * 9000, headers=AUTH)
    assert r.status == 400


def test_lists_from_report(tmp_path: Path) -> None:
    from proxy_addons.admin.app import lists_from_report
    from proxy_addons.lists.files import ListStatus, LoadReport, feed_body_path

    local = tmp_path / "local.txt"
    local.write_text("evil.test\n")
    os.utime(local, (1000.0, 1000.0))
    body = feed_body_path(tmp_path, "urlhaus")
    body.parent.mkdir(parents=True)
    body.write_text("x")
    os.utime(body, (1500.0, 1500.0))
    report = LoadReport(
        lists=[
            ListStatus("local", str(local), True, rules=1, format="domains"),
            ListStatus("urlhaus", "https://urlhaus.example/hosts.txt", True, rules=5),
            ListStatus("gone", "https://feed.example/x", False, error="not fetched yet"),
        ]
    )
    items = {i["name"]: i for i in lists_from_report(report, tmp_path, clock=lambda: 2000.0)()}
    assert items["local"]["age_seconds"] == 1000.0 and items["local"]["rules"] == 1
    assert items["urlhaus"]["age_seconds"] == 500.0
    assert items["gone"]["loaded"] is False and "age_seconds" not in items["gone"]


def test_admin_app_does_not_import_mitmproxy() -> None:
    import sys

    code = "import sys, proxy_addons.admin.app; assert 'mitmproxy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- Host header (DNS rebinding) ----------------------------------------------------

REBOUND_HOSTS = [
    "attacker.example",
    "attacker.example:8090",
    "localhost.attacker.example",
    "127.0.0.1.attacker.example",
    "127.0.0.1.",  # a name, not the address
    "10.1.2.3:8090",  # an address this server does not listen on
    "[::2]:8090",
    "localhost:80:80",
    "[::1",
    "user@localhost",
]


@pytest.mark.parametrize("host", REBOUND_HOSTS)
@pytest.mark.parametrize("path", ["/healthz", "/proxy.pac", "/", "/api/status", "/metrics"])
async def test_other_host_headers_are_refused(client: Any, host: str, path: str) -> None:
    """A page whose name was re-pointed at this server reads nothing, public routes included."""
    r = await client.get(path, headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
    assert r.status == 421
    assert "misdirected" in (await r.json())["error"]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1:8090", "localhost:8090", "LOCALHOST.", "[::1]:8090", ""],
)
async def test_own_host_headers_are_served(client: Any, host: str) -> None:
    r = await client.get("/healthz", headers={"Host": host})
    assert r.status == 200


def test_admin_hosts_for_listener() -> None:
    named = admin.AdminHosts.for_listener("127.0.0.1", ("jg.corp.example",))
    assert named.allows("jg.corp.example:8090") and named.allows("JG.corp.example.")
    assert not named.allows("other.corp.example")
    lan = admin.AdminHosts.for_listener("10.0.0.5")
    assert lan.allows("10.0.0.5:8090") and lan.allows("127.0.0.1")
    assert not lan.allows("10.0.0.6:8090")
    anywhere = admin.AdminHosts.for_listener("0.0.0.0")
    assert anywhere.allows("10.0.0.6:8090") and anywhere.allows("[fd00::1]:8090")
    assert not anywhere.allows("prometheus-target.example")  # names still must be listed
    by_name = admin.AdminHosts.for_listener("jectguard.lan")
    assert by_name.allows("jectguard.lan:8090") and not by_name.allows("10.0.0.5")
    assert admin.AdminHosts().allows(None)  # scripts and HTTP/1.0 health checks
