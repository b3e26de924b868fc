"""The ledger addon's hooks, batching, failure handling and hunt, called directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from proxy_addons.addons.ledger import LedgerAddon
from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, ParsedList, Rule, RuleKind
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.ledger import LEDGER_FILE, Ledger
from proxy_addons.telemetry.metrics import Metrics


def _engine(*hosts: str) -> Engine:
    rules = [Rule(RuleKind.DOMAIN, h, h, i) for i, h in enumerate(hosts, 1)]
    return Engine.from_lists(
        [(ListSpec("feed", category="malware"), ParsedList("domains", rules))]
    )[0]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # never the user's own data directory, whatever a test forgets to configure
    monkeypatch.setenv("JECTGUARD_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def parts() -> tuple[EngineHolder, EventLog, Metrics]:
    return EngineHolder(_engine("old.example")), EventLog(), Metrics()


def _flow(host: str, user: str | None = "alice", client: str = "10.1.2.3") -> tflow.HTTPFlow:
    f = tflow.tflow()
    f.request.host = host
    f.client_conn.peername = (client, 50000)
    if user is not None:
        f.metadata["proxyauth"] = (user, "pw-never-stored")
    return f


def _metric(metrics: Metrics, name: str) -> float:
    return sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name)


async def test_hooks_record_hosts_clients_users_and_addresses(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics]
) -> None:
    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        tctx.configure(addon, jg_ledger=True)
        f = _flow("Visited.Example.")
        addon.http_connect(f)
        addon.requestheaders(f)
        denied = _flow("denied.example", user=None)
        denied.response = tflow.tresp(status_code=407)
        addon.requestheaders(denied)  # not authenticated: the proxy went nowhere
        server = connection.Server(address=("visited.example", 443))
        server.peername = ("198.51.100.9", 443)
        addon.server_connected(server_hooks.ServerConnectionHookData(server, f.client_conn))
        plain = _flow("plain.example", user="frank", client="10.1.2.4")  # no CONNECT
        addon.requestheaders(plain)
        srv = connection.Server(address=("plain.example", 80))
        srv.peername = ("198.51.100.10", 80)
        addon.server_connected(server_hooks.ServerConnectionHookData(srv, plain.client_conn))
        addon.requestheaders(_flow("evil\x1b]0;pwned\x07.example"))  # a terminal escape
        addon.requestheaders(_flow("ok.example", user="mallory\x1b[2J"))
        await addon.flush()
        led = Ledger(tmp_path / LEDGER_FILE)
        try:
            assert sorted(led.hosts()) == [
                "198.51.100.10", "198.51.100.9", "ok.example", "plain.example", "visited.example"
            ]  # fmt: skip
            assert led.sightings("198.51.100.10")[0].user == "frank"
            assert led.sightings("ok.example")[0].user == "mallory\\x1b[2J"
            [s] = led.sightings("visited.example")
            assert (s.client, s.user, s.count) == ("10.1.2.3", "alice", 2)
            [ip] = led.sightings("198.51.100.9")
            assert ip.user == "alice"  # the tunnel's user
        finally:
            led.close()
        await addon.done()
    files = await asyncio.to_thread(lambda: list(tmp_path.glob(LEDGER_FILE + "*")))
    raw = b"".join([await asyncio.to_thread(p.read_bytes) for p in files])
    assert b"pw-never-stored" not in raw


async def test_off_keeps_nothing(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics]
) -> None:
    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_ledger=False)
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path / "c"), "")
        addon.requestheaders(_flow("a.example"))
        await addon.flush()
        assert len(addon.batch) == 0 and addon.ledger is None
    assert not (tmp_path / "c").exists() and not (tmp_path / "default-cache").exists()


async def test_options_are_validated(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics], caplog: pytest.LogCaptureFixture
) -> None:
    from mitmproxy import exceptions

    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        with pytest.raises(exceptions.OptionsError, match="jg_ledger_days"):
            tctx.configure(addon, jg_ledger_days=0)
        with pytest.raises(exceptions.OptionsError, match="jg_ledger_url"):
            tctx.configure(addon, jg_ledger_url="mysql://x")
        # A ledger that cannot be opened (a read-only cache volume) never stops the proxy.
        (tmp_path / "blocked").write_text("a file where the folder should be")
        tctx.options.jg_cache_dir = str(tmp_path / "blocked")
        assert addon.ledger is None and addon._down
        assert "cannot open the ledger" in caplog.text


async def test_a_failed_write_keeps_the_rows_for_the_next_flush(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        tctx.configure(addon, jg_ledger=True)
        addon.requestheaders(_flow("kept.example"))
        assert addon.ledger is not None
        real = addon.ledger.write

        def disk_full(rows: object) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(addon.ledger, "write", disk_full)
        with pytest.raises(OSError):
            await addon.flush()
        addon.requestheaders(_flow("kept.example"))
        monkeypatch.setattr(addon.ledger, "write", real)
        await addon.flush()
        [s] = addon.ledger.sightings("kept.example")
        assert s.count == 2
        await addon.done()


async def test_an_unreachable_database_is_retried_and_never_stops_the_proxy(
    parts: tuple[EngineHolder, EventLog, Metrics], caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_ledger_url=f"postgresql://x@127.0.0.1:{port}/x")
        addon.requestheaders(_flow("held.example"))
        await addon._connect()
        assert addon.ledger is None and addon._down
        await addon.flush()
        assert len(addon.batch) == 1  # held for when it is back (bounded)
        assert "retrying" in caplog.text


async def test_a_swap_hunts_once_per_hit_with_an_event_and_a_metric(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics]
) -> None:
    holder, events, metrics = parts
    addon = LedgerAddon(holder, events, metrics)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        tctx.configure(addon, jg_ledger=True)
        addon.requestheaders(_flow("cdn.fresh.example", user="bob", client="10.9.9.9"))
        addon.requestheaders(_flow("innocent.example"))
        holder.swap(_engine("old.example", "fresh.example"))
        await addon.flush()
        [hit] = await addon.retro_hunt()
        assert (hit.host, hit.rule, hit.list) == ("cdn.fresh.example", "fresh.example", "feed")
        [ev] = events.recent(10, ["retro-hit"])
        assert ev["host"] == "cdn.fresh.example" and ev["users"] == ["bob"]
        assert ev["clients"][0]["client"] == "10.9.9.9"  # type: ignore[index]
        assert _metric(metrics, "jectguard_retro_hits_total") == 1
        # The same rule in force again (another snapshot): no second event.
        holder.swap(_engine("old.example"))
        holder.swap(_engine("old.example", "fresh.example"))
        assert await addon.retro_hunt() == []
        assert addon.recent_hits(0)[0]["host"] == "cdn.fresh.example"
        await addon.done()


async def test_the_background_task_flushes_and_hunts(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics]
) -> None:
    holder, events, metrics = parts
    addon = LedgerAddon(holder, events, metrics)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        tctx.configure(addon, jg_ledger=True)
        await addon.running()
        addon.requestheaders(_flow("late.example"))
        holder.swap(_engine("old.example", "late.example"))
        async with asyncio.timeout(20):
            while not events.recent(10, ["retro-hit"]):  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.05)
        await addon.done()
        assert addon.task is None


async def test_auto_hunt_leaves_a_shared_ledger_to_the_refresher(
    parts: tuple[EngineHolder, EventLog, Metrics],
) -> None:
    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_refresh_role", str, "watch", "")
        tctx.configure(addon, jg_ledger_url="postgresql://x@127.0.0.1:1/x")
        assert addon.hunt is False  # a replica: the refresher hunts for all
        tctx.configure(addon, jg_ledger_hunt="on")
        assert addon.hunt is True
        tctx.configure(addon, jg_ledger_hunt="auto", jg_refresh_role="refresh")
        assert addon.hunt is True
        tctx.configure(addon, jg_ledger_url="", jg_refresh_role="watch")
        assert addon.hunt is True  # SQLite is this machine's own: hits are stored once


def test_block_monitor_and_strip_events_name_the_user() -> None:
    from proxy_addons.addons.observe import STRIP_KEY, Observe

    events, metrics = EventLog(), Metrics()
    obs = Observe(events, metrics)
    verdict = {"verdict": "monitor", "url": "http://w.example/", "host": "w.example",
               "list": "watch", "rule": "w.example"}  # fmt: skip
    for action, rid in (("monitor", "m1"), ("block", "b1")):
        f = _flow("w.example", user="dana")
        f.metadata["jectguard"] = {"action": action, "request_id": rid, "verdict": verdict}
        obs.requestheaders(f)
    f = _flow("page.example", user="dana")
    f.response = tflow.tresp()
    f.metadata[STRIP_KEY] = {"findings": [{"list": "l", "rule": "r", "removed": True}]}
    obs.response(f)
    anonymous = _flow("w.example", user=None)
    anonymous.metadata["jectguard"] = {"action": "block", "request_id": "b2", "verdict": verdict}
    obs.requestheaders(anonymous)
    got = [(e["event"], e.get("user")) for e in events.recent(10)]
    assert sorted(got, key=str) == sorted(
        [("monitor", "dana"), ("block", "dana"), ("strip", "dana"), ("block", None)], key=str
    )
    assert "pw-never-stored" not in str(events.recent(10))


def _client_hello(sni: str) -> object:
    """A real ClientHello for ``sni`` (Python's own TLS stack), parsed by mitmproxy."""
    import ssl

    from mitmproxy.proxy.layers.tls import parse_client_hello

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return parse_client_hello(outgoing.read())


async def test_sni_is_recorded_unless_it_is_the_tunnels_target(
    tmp_path: Path, parts: tuple[EngineHolder, EventLog, Metrics]
) -> None:
    from mitmproxy import tls
    from mitmproxy.proxy.context import Context

    addon = LedgerAddon(*parts)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("jg_cache_dir", str, str(tmp_path), "")
        tctx.configure(addon, jg_ledger=True)
        f = _flow("tunnel.example", user="erin")
        addon.http_connect(f)
        ctx = Context(f.client_conn, tctx.options)
        for sni in ("tunnel.example", "other.example"):
            addon.tls_clienthello(tls.ClientHelloData(ctx, _client_hello(sni)))  # type: ignore[arg-type]
        await addon.flush()
        assert addon.ledger is not None
        assert sorted(addon.ledger.hosts()) == ["other.example", "tunnel.example"]
        assert addon.ledger.sightings("tunnel.example")[0].count == 1  # CONNECT only
        assert addon.ledger.sightings("other.example")[0].user == "erin"
        await addon.done()
