"""The admin and observe addons, with mitmproxy's test helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
import warnings
from pathlib import Path

import aiohttp
import pytest

with warnings.catch_warnings():
    # ldap3 (imported by mitmproxy's proxyauth) trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow
from prometheus_client.parser import text_string_to_metric_families

from proxy_addons.addons import EngineHolder, make_addons
from proxy_addons.addons.admin import AdminServer, parse_admin_host
from proxy_addons.addons.blocking import METADATA_KEY, Blocking
from proxy_addons.addons.observe import STRIP_KEY, Observe
from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics
from tests.ports import free_port

TOKEN = "addon-test-token-0123456789"
SECRET = "s3cr3t-cookie-value"


def _rules(*keys: tuple[RuleKind, str]) -> ParsedList:
    return ParsedList("t", [Rule(k, v, v, i + 1) for i, (k, v) in enumerate(keys)])


def make_engine() -> Engine:
    engine, _, _ = Engine.from_lists(
        [
            (ListSpec(name="malware", category="malware"), _rules((RuleKind.DOMAIN, "evil.test"))),
            (
                ListSpec(name="watch", category="phishing", mode=Mode.MONITOR),
                _rules((RuleKind.DOMAIN, "watch.test")),
            ),
            (ListSpec(name="allow", allow=True), _rules((RuleKind.EXACT, "ok.evil.test"))),
        ]
    )
    return engine


def metric(m: Metrics, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def req(url: str, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    f = tflow.tflow(req=http.Request.make("GET", url, b"", headers or {}))
    f.client_conn.sni = None
    return f


@pytest.fixture
def holder() -> EngineHolder:
    return EngineHolder(make_engine())


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def admin(
    holder: EngineHolder,
    events: EventLog,
    metrics: Metrics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AdminServer:
    monkeypatch.delenv("JECTGUARD_ADMIN_TOKEN", raising=False)
    return AdminServer(holder, events, metrics, data_dir=tmp_path / "data")


# -- names and options ----------------------------------------------------------


async def test_loads_next_to_mitmproxy_default_addons(
    holder: EngineHolder, admin: AdminServer, events: EventLog, metrics: Metrics
) -> None:
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        ours = make_addons(holder)
        tctx.master.addons.add(*ours)  # raises on a duplicate addon name
        names = [a.name for a in ours]  # type: ignore[attr-defined]
        assert "jectguard_admin" in names
        assert names.index("jectguard_observe") > names.index("jectguard_block")
        for opt in (
            "jg_admin_host",
            "jg_admin_port",
            "jg_admin_token_file",
            "jg_events_file",
            "jg_events_drop_query",
        ):
            assert opt in tctx.options


async def test_admin_options_validated(admin: AdminServer) -> None:
    with taddons.context(admin) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jg_admin_host"):
            tctx.configure(admin, jg_admin_host="")
        with pytest.raises(exceptions.OptionsError, match="jg_admin_host"):
            tctx.configure(admin, jg_admin_host="not a host!")
        with pytest.raises(exceptions.OptionsError, match="jg_admin_port"):
            tctx.configure(admin, jg_admin_port=70000)
        with pytest.raises(exceptions.OptionsError, match="jg_admin_port"):
            tctx.configure(admin, jg_admin_port=-1)
        with pytest.raises(exceptions.OptionsError, match="jg_admin_token_file"):
            tctx.configure(admin, jg_admin_token_file="/nonexistent/jg-token")
        tctx.configure(admin, jg_admin_host="::1", jg_admin_port=0)
        assert admin.host == "::1" and admin.port == 0


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "[::1]", "localhost", "admin.corp.test", "0.0.0.0"]
)
def test_parse_admin_host_accepts(host: str) -> None:
    assert parse_admin_host(host)


async def test_token_generated_once_0600_in_data_dir(admin: AdminServer, tmp_path: Path) -> None:
    with taddons.context(admin) as tctx:
        tctx.configure(admin)
        assert admin.token is not None and admin.token.source == "generated"
        path = tmp_path / "data" / "admin-token"
        assert admin.token.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AdminServer(admin.holder, admin.events, admin.metrics, data_dir=tmp_path / "data")
    with taddons.context(again) as tctx:
        tctx.configure(again)
        assert again.token is not None and again.token.source == "stored"
        assert again.token.token == admin.token.token


async def test_token_file_option(admin: AdminServer, tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text(TOKEN)
    f.chmod(0o600)
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_token_file=str(f))
        assert admin.token is not None and admin.token.token == TOKEN


async def test_admin_off_creates_no_token(admin: AdminServer, tmp_path: Path) -> None:
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_port=0)
        await admin.running()
        assert admin.token is None and admin.runner is None
    assert not (tmp_path / "data" / "admin-token").exists()


async def test_running_without_any_option_change_still_starts(
    admin: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JECTGUARD_ADMIN_TOKEN", TOKEN)
    with taddons.context(admin) as tctx:
        with monkeypatch.context() as m:  # the option is set, but configure() never sees it
            m.setattr(admin, "configure", lambda updated: None)
            tctx.options.update(jg_admin_port=free_port())
        assert admin.token is None and admin.port == 0
        await asyncio.wait_for(admin.running(), 10)
        try:
            assert admin.runner is not None and admin.token is not None
            assert admin.token.source == "env"
        finally:
            await admin.done()


async def test_non_loopback_admin_host_warns(
    admin: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_host="0.0.0.0")
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reachable from the network" in r.getMessage() for r in warnings_)
    assert not any(admin.token.token in r.getMessage() for r in caplog.records)  # type: ignore[union-attr]


# -- server lifetime ---------------------------------------------------------------


async def test_server_starts_in_running_and_stops_in_done(
    admin: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_port=port)
        assert admin.token is not None
        await asyncio.wait_for(admin.running(), 10)
        assert admin.url() == f"http://127.0.0.1:{port}/"
        auth = {"Authorization": f"Bearer {admin.token.token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/api/status") as r:
                assert r.status == 401
            async with s.get(f"http://127.0.0.1:{port}/api/status", headers=auth) as r:
                assert (await r.json())["snapshot"]["rules"] == 2
            async with s.get(f"http://127.0.0.1:{port}/proxy.pac") as r:
                assert "PROXY " in await r.text()
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert str(admin.token.path) in logged and admin.token.token not in logged
        await asyncio.wait_for(admin.done(), 10)
        assert admin.url() is None
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                await s.get(f"http://127.0.0.1:{port}/healthz")
        await admin.done()  # twice is harmless


async def test_busy_port_logs_an_error(
    admin: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with taddons.context(admin) as tctx:
            tctx.configure(admin, jg_admin_port=port)
            await asyncio.wait_for(admin.running(), 10)
            assert admin.runner is None
            assert any(
                r.levelno == logging.ERROR and "admin API" in r.getMessage() for r in caplog.records
            )
            await admin.done()


async def test_port_zero_starts_nothing(admin: AdminServer) -> None:
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_port=0)
        await admin.running()
        assert admin.runner is None and admin.url() is None
        await admin.done()


# -- observe: decisions to events and metrics ---------------------------------------


@pytest.fixture
def pair(holder: EngineHolder, events: EventLog, metrics: Metrics) -> tuple[Blocking, Observe]:
    return Blocking(holder), Observe(events, metrics, holder)


async def test_blocked_flow_becomes_an_event_line_and_a_metric(
    pair: tuple[Blocking, Observe], events: EventLog, metrics: Metrics, tmp_path: Path
) -> None:
    blocking, observe = pair
    path = tmp_path / "events.jsonl"
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file=str(path))
        f = req(
            "http://evil.test/path?q=1",
            {"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"},
        )
        blocking.requestheaders(f)
        observe.requestheaders(f)
        # later hooks of the same flow do not repeat the event
        observe.response(f)
        lines = path.read_text().splitlines()
        assert len(lines) == 1
        ev = json.loads(lines[0])
        assert ev["event"] == "block" and ev["verdict"] == "block"
        assert ev["list"] == "malware" and ev["rule"] == "evil.test" and ev["category"] == "malware"
        assert ev["url"] == "http://evil.test/path?q=1"
        assert ev["method"] == "GET" and ev["client"] == "127.0.0.1"
        assert ev["request_id"] == f.metadata[METADATA_KEY]["request_id"]
        assert ev["time"].endswith("Z")
        assert SECRET not in path.read_text()
        assert (
            metric(metrics, "jectguard_requests_blocked_total", list="malware", category="malware")
            == 1
        )
        assert metric(metrics, "jectguard_requests_checked_total", verdict="block") == 1
        assert events.recent(1)[0]["request_id"] == ev["request_id"]
        observe.done()


async def test_drop_query_option(
    pair: tuple[Blocking, Observe], events: EventLog, tmp_path: Path
) -> None:
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="", jg_events_drop_query=True)
        f = req("http://evil.test/path?token=abc")
        blocking.requestheaders(f)
        observe.requestheaders(f)
        assert events.recent(1)[0]["url"] == "http://evil.test/path"


async def test_events_file_option_validated(pair: tuple[Blocking, Observe]) -> None:
    _, observe = pair
    with (
        taddons.context(observe) as tctx,
        pytest.raises(exceptions.OptionsError, match="jg_events_file"),
    ):
        tctx.configure(observe, jg_events_file="/nonexistent-jg-dir/events.jsonl")


@pytest.mark.parametrize(
    ("url", "kind", "metric_name", "labels"),
    [
        ("http://watch.test/", "monitor", "jectguard_monitor_hits_total", {"list": "watch"}),
        (
            "http://ok.evil.test/",
            "allow-override",
            "jectguard_allow_overrides_total",
            {"list": "malware", "reason": "allowlist"},
        ),
    ],
)
async def test_monitor_and_allow_override(
    pair: tuple[Blocking, Observe],
    events: EventLog,
    metrics: Metrics,
    url: str,
    kind: str,
    metric_name: str,
    labels: dict[str, str],
) -> None:
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = req(url)
        blocking.requestheaders(f)
        observe.requestheaders(f)
        assert f.response is None
        (ev,) = events.recent()
        assert ev["event"] == kind
        assert metric(metrics, metric_name, **labels) == 1


async def test_pass_is_counted_not_logged(
    pair: tuple[Blocking, Observe], events: EventLog, metrics: Metrics
) -> None:
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = req("http://fine.test/")
        blocking.requestheaders(f)
        observe.requestheaders(f)
        observe.responseheaders(f)
        assert events.recent() == []
        assert metric(metrics, "jectguard_requests_checked_total", verdict="pass") == 1


async def test_connect_block(pair: tuple[Blocking, Observe], events: EventLog) -> None:
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = tflow.tflow(req=http.Request.make("CONNECT", "http://evil.test:443/", b"", {}))
        f.request.authority = "evil.test:443"
        f.request.host, f.request.port = "evil.test", 443
        blocking.http_connect(f)
        observe.http_connect(f)
        # The tunnel is kept local for the block page: the event waits for it.
        assert events.recent() == []
        observe.client_disconnected(f.client_conn)  # no request came (CA not trusted)
        (ev,) = events.recent()
        assert ev["event"] == "block" and ev["stage"] == "connect" and ev["method"] == "CONNECT"
        observe.client_disconnected(f.client_conn)
        assert len(events.recent()) == 1


async def test_blocked_visit_through_a_local_tunnel_is_one_event(
    pair: tuple[Blocking, Observe], events: EventLog, metrics: Metrics
) -> None:
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        c = tflow.tflow(req=http.Request.make("CONNECT", "http://evil.test:443/", b"", {}))
        c.request.authority = "evil.test:443"
        c.request.host, c.request.port = "evil.test", 443
        blocking.http_connect(c)
        observe.http_connect(c)
        f = req("https://evil.test/page")
        f.client_conn = c.client_conn
        blocking.requestheaders(f)
        observe.requestheaders(f)
        observe.client_disconnected(c.client_conn)
        (ev,) = events.recent()
        assert ev["stage"] == "request" and ev["url"] == "https://evil.test/page"
        assert ev["request_id"] == f.metadata["jectguard"]["request_id"]
        assert (
            metric(metrics, "jectguard_requests_blocked_total", list="malware", category="malware")
            == 1
        )


async def test_an_error_text_alone_is_not_an_event(
    pair: tuple[Blocking, Observe], events: EventLog, metrics: Metrics
) -> None:
    # Observe reads decisions handed to it, never another addon's log text: a server (or
    # anything else) that produces an error reading like a refusal makes no block event.
    # The typed path is tests/addons/test_addresses.py::test_a_refused_connection_*.
    _, observe = pair
    with taddons.context(observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = req("http://innocent.test/")
        f.error = tflow.terr(
            "jectguard: innocent.test resolves to 203.0.113.9, which is blocked "
            "(list malware, rule 203.0.113.0/24, id 0123456789ab); no connection was made"
        )
        observe.error(f)
        assert events.recent() == []
        assert metric(metrics, "jectguard_requests_blocked_total", list="malware") == 0


async def test_strip_record_becomes_events_and_metrics(
    pair: tuple[Blocking, Observe], events: EventLog, metrics: Metrics
) -> None:
    _, observe = pair
    with taddons.context(observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = tflow.tflow(resp=True)
        f.metadata[STRIP_KEY] = {
            "findings": [
                {
                    "element": "script",
                    "url": "http://evil.test/x.js",
                    "reason": "blocked-src",
                    "rule": "evil.test",
                    "list": "malware",
                    "removed": True,
                },
                {
                    "element": "iframe",
                    "url": "http://watch.test/",
                    "reason": "blocked-src",
                    "rule": "watch.test",
                    "list": "watch",
                    "removed": False,
                },
            ]
        }
        observe.response(f)
        observe.response(f)
        evs = events.recent()
        assert [e["event"] for e in evs] == ["strip", "strip"]
        assert evs[1]["element"] == "script" and evs[1]["element_url"] == "http://evil.test/x.js"
        assert evs[1]["category"] == "malware" and evs[1]["removed"] is True
        assert (
            metric(metrics, "jectguard_elements_stripped_total", list="malware", category="malware")
            == 1
        )
        assert metric(metrics, "jectguard_elements_stripped_total", list="watch") == 0


async def test_verdict_time_measured_by_the_blocking_addon(
    pair: tuple[Blocking, Observe], metrics: Metrics
) -> None:
    # Nothing injected: the blocking addon times its own decision, observe records it once.
    blocking, observe = pair
    with taddons.context(blocking, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        for url in ("http://fine.test/", "http://evil.test/", "http://watch.test/"):
            f = req(url)
            blocking.requestheaders(f)
            observe.requestheaders(f)
            observe.response(f)
            seconds = f.metadata[METADATA_KEY]["seconds"]
            assert isinstance(seconds, float) and 0 < seconds < 60
        assert metric(metrics, "jectguard_verdict_seconds_count") == 3
        assert metric(metrics, "jectguard_verdict_seconds_sum") > 0


async def test_token_stored_in_jg_cache_dir_when_that_option_exists(
    holder: EngineHolder,
    events: EventLog,
    metrics: Metrics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from proxy_addons.addons.refresh import Refresh

    monkeypatch.delenv("JECTGUARD_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("JECTGUARD_CACHE_DIR", str(tmp_path / "env-cache"))
    a = AdminServer(holder, events, metrics)  # no data_dir: from the options
    with taddons.context(Refresh(holder), a) as tctx:
        tctx.configure(a, jg_cache_dir=str(tmp_path / "cache"))
        assert a.token is not None and a.token.path == tmp_path / "cache" / "admin-token"
    b = AdminServer(holder, events, metrics)
    with taddons.context(b) as tctx:
        tctx.configure(b)
        assert b.token is not None and b.token.path == tmp_path / "env-cache" / "admin-token"


async def test_admin_answers_only_its_own_host_names(admin: AdminServer) -> None:
    """DNS rebinding: a request naming another host is refused; jg_admin_hostnames adds names."""
    port = free_port()
    with taddons.context(admin) as tctx:
        tctx.configure(admin, jg_admin_port=port, jg_admin_hostnames=["jg.corp.example"])
        with pytest.raises(exceptions.OptionsError, match="jg_admin_hostnames"):
            tctx.configure(admin, jg_admin_hostnames=["not a name!"])
        await asyncio.wait_for(admin.running(), 10)
        url = f"http://127.0.0.1:{port}/proxy.pac"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async with s.get(url, headers={"Host": f"rebound.example:{port}"}) as r:
                    assert r.status == 421
                    assert "PROXY" not in await r.text()
                async with s.get(url, headers={"Host": f"jg.corp.example:{port}"}) as r:
                    assert r.status == 200
                async with s.get(url) as r:
                    assert r.status == 200
                tctx.configure(admin, jg_admin_hostnames=[])
                async with s.get(url, headers={"Host": f"jg.corp.example:{port}"}) as r:
                    assert r.status == 421
        finally:
            await asyncio.wait_for(admin.done(), 10)
