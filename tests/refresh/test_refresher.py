"""The refresher end to end against a local feed server: updates, every failure mode keeping
the last good data, restarts offline, crashes mid-write, schedules, and snapshot followers."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.core.engine import Engine
from proxy_addons.core.index import CompiledIndex
from proxy_addons.lists.files import feed_body_path
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore, load_engine, startup_engine
from proxy_addons.refresh.feeds import FetchPolicy, load_state
from proxy_addons.refresh.refresher import (
    FAILURE_RETRY_SECONDS,
    Follower,
    Refresher,
    next_run,
    watch_snapshot,
)
from tests.feedserver import FeedServer, feed_server, sources_toml

FAST = FetchPolicy(
    connect_timeout=2,
    read_timeout=0.5,
    total_timeout=3,
    attempts=2,
    backoff=0.01,
    retry_after_max=1,
)


def domains(n: int, prefix: str = "bad") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


class Slot:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.swaps = 0
        self.changed = asyncio.Event()

    def swap(self, new: Engine) -> Engine:
        old, self.engine = self.engine, new
        self.swaps += 1
        self.changed.set()
        return old


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def setup(server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest):
    """A sources file with one domains feed (unique per test) and a local allowlist."""
    name = "f" + str(abs(hash(request.node.name)) % 10**8)
    server.feed(name, domains(100))
    (tmp_path / "allow.txt").write_text("ok.bad1.example\n")
    extra = '[[source]]\nname = "allow"\npath = "allow.txt"\nkind = "allow"\n'
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}, extra=extra))
    cache = tmp_path / "cache"
    return name, src, cache


def make(src: Path, cache: Path, slot: Slot | None = None, **kw) -> Refresher:
    kw.setdefault("isolate", False)
    return Refresher(load_sources(src), cache, slot=slot, policy=FAST, **kw)


def blocked(engine: Engine, host: str) -> bool:
    return engine.check_url(f"http://{host}/").blocked


async def test_update_publishes_and_swaps(server: FeedServer, setup) -> None:
    name, src, cache = setup
    slot = Slot(Engine.from_lists([])[0])
    r = make(src, cache, slot)
    report = await r.refresh()
    assert report.ok and report.outcomes[name].status == "updated"
    assert report.snapshot and report.rules == 100
    assert blocked(slot.engine, "bad7.example") and not blocked(slot.engine, "ok.bad1.example")
    assert slot.engine.block.path == Path(report.snapshot)
    st = load_state(cache, r.url_specs[0])
    assert st.entries == {"domain": 100} and st.etag and st.last_success and st.next_run

    # Unchanged: a conditional GET, a 304, no new snapshot.
    again = await r.refresh()
    assert again.outcomes[name].status == "unchanged" and again.snapshot is None
    assert server.hits_for(name)[-1].status == 304

    # A new entry in the feed blocks after one refresh, without a restart.
    server.feeds[name].body = domains(100) + b"fresh-threat.example\n"
    assert not blocked(slot.engine, "fresh-threat.example")
    third = await r.refresh()
    assert third.outcomes[name].status == "updated"
    assert blocked(slot.engine, "fresh-threat.example")
    assert len(SnapshotStore(cache).list_snapshots()) == 2


FAILURES = {
    "http500": dict(status=500),
    "hang": dict(hang=3.0),
    "close_mid_body": dict(close_mid_body=True),
    "bad_gzip": dict(bad_gzip=True),
    "html_200": dict(body=b"<!DOCTYPE html><html><body>Sign in to Hotel WiFi</body></html>"),
    "html_content_type": dict(content_type="text/html"),
    "over_cap": dict(stream_forever=True),
    "shrinks": dict(body=domains(10)),
    "empty": dict(body=b"# nothing today\n"),
    "tld_com": dict(body=domains(100) + b"com\n"),
    "garbage": dict(body=b"foo bar baz\n" * 200),
    "canary": dict(body=domains(100) + b"google.com\n"),
    "retry_after_429": dict(fail=[(429, {"Retry-After": "7200"})]),
}


@pytest.mark.parametrize("mode", list(FAILURES))
async def test_every_failure_keeps_the_last_good_data(server: FeedServer, setup, mode: str) -> None:
    name, src, cache = setup
    slot = Slot(Engine.from_lists([])[0])
    policy = FAST
    if mode == "over_cap":
        policy = FetchPolicy(
            connect_timeout=2, read_timeout=2, total_timeout=10, attempts=1, max_bytes=64 * 1024
        )
    r = Refresher(load_sources(src), cache, slot=slot, policy=policy, isolate=False)
    assert (await r.refresh()).ok
    good_body = feed_body_path(cache, name).read_bytes()
    good_snapshot = SnapshotStore(cache).current_path()
    if mode == "over_cap":
        server.feeds[name].body = domains(100) + b"x.example\n"  # not streamed: must pass the cap
        assert (await r.refresh()).ok
        good_body = feed_body_path(cache, name).read_bytes()
        good_snapshot = SnapshotStore(cache).current_path()

    feed = server.feeds[name]
    for key, value in FAILURES[mode].items():
        setattr(feed, key, list(value) if isinstance(value, list) else value)
    t0 = time.monotonic()
    report = await r.refresh()
    assert time.monotonic() - t0 < 15
    outcome = report.outcomes[name]
    assert not report.ok and outcome.status in ("failed", "held_back"), outcome
    # The last good body, the snapshot in force and the engine are all unchanged.
    assert feed_body_path(cache, name).read_bytes() == good_body
    assert SnapshotStore(cache).current_path() == good_snapshot
    assert blocked(slot.engine, "bad42.example")
    assert not list((cache / "feeds").glob("*.part"))
    # The status says why.
    st = load_state(cache, r.url_specs[0])
    assert (st.held_back or st.last_error) == outcome.detail
    if outcome.status == "held_back":
        assert st.last_error is None and st.entries_total == 100 + (mode == "over_cap")
    if mode == "retry_after_429":
        assert st.not_before is not None and st.next_run >= st.not_before >= time.time() + 7000
    # A held-back feed is not remembered by its ETag: it is re-checked next time.
    if mode in ("shrinks", "tld_com"):
        assert st.etag != feed.tag()


async def test_force_overrides_only_the_shrink_guard(server: FeedServer, setup) -> None:
    name, src, cache = setup
    r = make(src, cache)
    await r.refresh()
    server.feeds[name].body = domains(10)
    assert (await r.refresh()).outcomes[name].status == "held_back"
    forced = await r.refresh(force=True)
    assert (
        forced.outcomes[name].status == "updated" and "overridden" in forced.outcomes[name].detail
    )
    server.feeds[name].body = b"1.2.3.0/24\n0.0.0.0/0\n"
    (src.parent / "sources.toml").write_text(
        src.read_text().replace('format = "domains"', 'format = "cidr"')
    )
    r2 = make(src, cache)
    assert (await r2.refresh(force=True)).outcomes[name].status == "held_back"


async def test_restart_offline_loads_the_cache(server: FeedServer, setup, tmp_path: Path) -> None:
    name, src, cache = setup
    await make(src, cache).refresh()
    # The network is down: the feed URL now points at a closed port.
    dead = src.read_text().replace(f"127.0.0.1:{server.port}", "127.0.0.1:9")
    src.write_text(dead)
    cfg = load_sources(src)
    t0 = time.monotonic()
    engine, report = startup_engine(cfg.enabled(), cache)
    assert time.monotonic() - t0 < 1.0
    assert blocked(engine, "bad3.example") and not blocked(engine, "ok.bad1.example")
    assert any(s.name == name and s.rules == 100 for s in report.lists)
    # And a refresh while offline keeps serving it.
    slot = Slot(engine)
    rep = await Refresher(cfg, cache, slot=slot, policy=FAST, isolate=False).refresh()
    assert rep.outcomes[name].status == "failed" and blocked(slot.engine, "bad3.example")


async def test_startup_without_snapshot_compiles_cached_bodies(server: FeedServer, setup) -> None:
    name, src, cache = setup
    await make(src, cache).refresh()
    for p in (cache / "snapshots").iterdir():
        p.unlink()
    engine, _ = startup_engine(load_sources(src).enabled(), cache)
    assert blocked(engine, "bad3.example")


async def test_isolated_worker_process(server: FeedServer, setup) -> None:
    name, src, cache = setup
    slot = Slot(Engine.from_lists([])[0])
    report = await make(src, cache, slot, isolate=True).refresh()
    assert report.ok and report.snapshot and blocked(slot.engine, "bad9.example")


async def test_lost_local_list_is_not_published(server: FeedServer, setup, tmp_path: Path) -> None:
    name, src, cache = setup
    local = tmp_path / "local.txt"
    local.write_text("local-threat.example\n")
    src.write_text(src.read_text() + '\n[[source]]\nname = "local"\npath = "local.txt"\n')
    r = make(src, cache)
    assert (await r.refresh()).ok
    before = SnapshotStore(cache).current_path()
    local.unlink()
    server.feeds[name].body = domains(101)
    report = await r.refresh()
    assert "local" in (report.not_published or "") and not report.ok
    assert SnapshotStore(cache).current_path() == before


def test_next_run_jitter_and_retry_after() -> None:
    from proxy_addons.core.model import ListSpec
    from proxy_addons.refresh.feeds import SourceState

    spec = ListSpec("s", url="http://x/", refresh=3600)
    runs = {next_run(spec, SourceState("s"), 1000.0, ok=True) for _ in range(50)}
    assert all(1000 + 3600 <= t <= 1000 + 3600 + 360 for t in runs) and len(runs) > 40
    fail = next_run(spec, SourceState("s"), 1000.0, ok=False)
    assert 1000 + FAILURE_RETRY_SECONDS <= fail <= 1000 + FAILURE_RETRY_SECONDS * 1.1
    assert next_run(spec, SourceState("s", not_before=99999.0), 1000.0, ok=False) == 99999.0


async def wait_for(slot: Slot, cond) -> None:
    """Wait (bounded) until an engine swap makes ``cond`` true."""
    async with asyncio.timeout(10):
        while True:
            slot.changed.clear()
            if cond():
                return
            await slot.changed.wait()


async def test_background_loop_and_follower(server: FeedServer, setup) -> None:
    name, src, cache = setup
    cfg = load_sources(src)
    proxy_slot = Slot(Engine.from_lists([])[0])
    refresher = Refresher(cfg, cache, policy=FAST, isolate=False, startup_spread=0, poll=0.05)
    task = asyncio.get_running_loop().create_task(refresher.run())
    watcher = asyncio.get_running_loop().create_task(
        watch_snapshot(cache, cfg.sources, proxy_slot, interval=0.05)
    )
    try:
        # The refresher fetches at start and publishes; the follower (another "process") swaps.
        await wait_for(proxy_slot, lambda: blocked(proxy_slot.engine, "bad5.example"))
        assert len(server.hits_for(name)) == 1
        # Scheduled next run in the future (interval 5 min + jitter): nothing more fetched.
        assert refresher.schedule[name] >= time.time() + 300
        server.feeds[name].body = domains(100) + b"late.example\n"
        refresher.refresh_soon(name)  # its turn comes
        await wait_for(proxy_slot, lambda: blocked(proxy_slot.engine, "late.example"))
        # Editing the allowlist swaps the allow index only; no new snapshot.
        n_snaps = len(SnapshotStore(cache).list_snapshots())
        block_before = proxy_slot.engine.block
        (src.parent / "allow.txt").write_text("late.example\n")
        await wait_for(proxy_slot, lambda: not blocked(proxy_slot.engine, "late.example"))
        assert proxy_slot.engine.block is block_before
        assert len(SnapshotStore(cache).list_snapshots()) == n_snaps
        assert len(server.hits_for(name)) == 2
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def test_local_list_edit_triggers_rebuild(server: FeedServer, setup) -> None:
    name, src, cache = setup
    local = src.parent / "local.txt"
    local.write_text("one.example\n")
    src.write_text(src.read_text() + '\n[[source]]\nname = "local"\npath = "local.txt"\n')
    slot = Slot(Engine.from_lists([])[0])
    refresher = Refresher(
        load_sources(src), cache, slot=slot, policy=FAST, isolate=False, startup_spread=0, poll=0.05
    )
    task = asyncio.get_running_loop().create_task(refresher.run())
    try:
        await wait_for(
            slot,
            lambda: blocked(slot.engine, "one.example") and blocked(slot.engine, "bad1.example"),
        )
        local.write_text("one.example\ntwo.example\n")
        await wait_for(slot, lambda: blocked(slot.engine, "two.example"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_follower_keeps_engine_on_corrupt_snapshot(server: FeedServer, setup) -> None:
    name, src, cache = setup
    cfg = load_sources(src)
    await make(src, cache).refresh()
    slot = Slot(Engine.from_lists([])[0])
    f = Follower(cache, cfg.sources, slot)
    await f.start()
    good = slot.engine
    assert blocked(good, "bad1.example")
    # Someone publishes a damaged file (a disk error): the follower refuses it.
    store = SnapshotStore(cache)
    path = store.current_path()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    store.pointer_path.write_bytes(store.pointer_path.read_bytes() + b" ")  # a pointer change
    assert not await f.sync()
    assert slot.engine is good


# -- crash safety ----------------------------------------------------------------

CRASH_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from proxy_addons.refresh.job import Candidate, CompileJob
    from proxy_addons.refresh.refresher import run_job, canary_names
    from proxy_addons.lists.sources import load_sources

    src, cache, a, b = sys.argv[1:5]
    cfg = load_sources(src)
    cache = Path(cache)
    (cache / "feeds").mkdir(parents=True, exist_ok=True)
    bodies = [Path(a).read_bytes(), Path(b).read_bytes()]
    i = 0
    print("ready", flush=True)
    while True:
        tmp = cache / "feeds" / f"crash.body.{i}.part"
        tmp.write_bytes(bodies[i % 2])
        run_job(CompileJob(
            str(cache), tuple(cfg.sources), candidates=(Candidate("crash", str(tmp)),),
            canaries=tuple(canary_names(cfg)), force=True,
        ))
        i += 1
    """
)


def test_cache_survives_sigkill_mid_write(server: FeedServer, tmp_path: Path) -> None:
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {"crash": "domains"}))
    cache = tmp_path / "cache"
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(domains(20_000, "a"))
    b.write_bytes(domains(30_000, "b"))
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    rng = random.Random(4)
    kills = mid_write = 0
    # Kill at random moments until at least two kills landed mid-write (a temp
    # body or snapshot was left behind), at most 15 times.
    while kills < 15 and (mid_write < 2 or kills < 4):
        with subprocess.Popen(
            [sys.executable, str(script), str(src), str(cache), str(a), str(b)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as proc:
            try:
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
                if kills == 0:  # let one snapshot complete first
                    deadline = time.monotonic() + 30
                    while not (cache / "snapshots" / "current").exists():
                        assert time.monotonic() < deadline, "child never published"
                        time.sleep(0.01)
                time.sleep(rng.uniform(0.05, 1.0))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        kills += 1
        leftovers = [*(cache / "feeds").glob("*.part"), *(cache / "snapshots").glob("*.tmp")]
        mid_write += bool(leftovers)
        for p in leftovers:
            p.unlink()
        body = feed_body_path(cache, "crash")
        if body.exists():
            assert body.read_bytes() in (a.read_bytes(), b.read_bytes())
        store = SnapshotStore(cache)
        if store.read_pointer() is not None:
            idx = store.load_current()  # verifies the checksum: never half a snapshot
            assert idx.rule_count in (20_000, 30_000)
            idx.close()
    assert mid_write >= 2, f"only {mid_write} of {kills} kills landed mid-write"
    assert SnapshotStore(cache).read_pointer() is not None, "no snapshot completed"
    # Restart: the cache loads and serves.
    engine, _ = startup_engine(load_sources(src).enabled(), cache)
    assert blocked(engine, "a5.example") or blocked(engine, "b5.example")
    json.loads((cache / "snapshots" / "current").read_text())
    CompiledIndex.load(SnapshotStore(cache).current_path()).close()
    load_engine(load_sources(src).sources, cache)


async def test_snapshot_of_another_format_version_is_rebuilt(server: FeedServer, setup) -> None:
    name, src, cache = setup
    r = make(src, cache)
    await r.refresh()
    assert not r.snapshot_stale()
    path = SnapshotStore(cache).current_path()
    data = bytearray(path.read_bytes())
    data[7] ^= 0x0F  # the format version byte of the magic
    path.write_bytes(bytes(data))
    assert r.snapshot_stale()  # an upgrade: the loop rebuilds from the cached bodies
    report = await r.refresh([], rebuild=True)
    assert report.snapshot and SnapshotStore(cache).load_current().rule_count == 100
