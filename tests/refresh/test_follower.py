"""The follower keeps a process on the published snapshot: retries, lag, damage, repair.

Real files in a real store, a clock the test moves; the rules served are
checked through the engine in the slot. The same behaviours through a real
``jectguard run`` are in test_snapshot_live.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.admin.app import AdminState, create_app
from proxy_addons.core.engine import Engine
from proxy_addons.lists.health import (
    SnapshotEvent,
    SnapshotFault,
    SnapshotHealth,
    SnapshotState,
)
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore
from proxy_addons.refresh.job import CompileJob
from proxy_addons.refresh.refresher import (
    FULL_VERIFY_SECONDS,
    RETRY_MAX_SECONDS,
    Follower,
    run_job,
)
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

SOURCES = '[[source]]\nname = "local"\npath = "block.txt"\nformat = "domains"\n'


class Slot:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def swap(self, new: Engine) -> Engine:
        old, self.engine = self.engine, new
        return old


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def overwrite(path: Path, data: bytes) -> None:
    """Write in place (same inode), as rsync --inplace or a network volume's client does."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def blocked(slot: Slot, host: str) -> bool:
    return slot.engine.check_url(f"http://{host}/").blocked


def publish(root: Path, hosts: str) -> Path:
    (root / "block.txt").write_text(hosts)
    cfg = load_sources(root / "sources.toml")
    out = run_job(CompileJob(str(root / "cache"), tuple(cfg.sources), rebuild=True))
    assert out.snapshot, out
    return Path(out.snapshot)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JECTGUARD_RUNTIME_DIR", str(tmp_path / "runtime"))
    (tmp_path / "sources.toml").write_text(SOURCES)
    publish(tmp_path, "one.example\n")
    return tmp_path


def follower(root: Path, **kw: Any) -> tuple[Follower, Slot, Clock, list[SnapshotEvent]]:
    clock = Clock()
    events: list[SnapshotEvent] = []
    slot = Slot(Engine.from_lists([])[0])
    f = Follower(
        root / "cache",
        load_sources(root / "sources.toml").sources,
        slot,
        clock=clock,
        on_event=events.append,
        **kw,
    )
    return f, slot, clock, events


async def test_a_pointer_published_before_its_file_is_retried_with_backoff(root: Path) -> None:
    f, slot, clock, events = follower(root)
    await f.start()
    assert blocked(slot, "one.example") and f.health.state is SnapshotState.CURRENT
    new = publish(root, "one.example\ntwo.example\n")
    away = new.with_name("away")
    os.replace(new, away)  # the pointer arrived, its file not yet
    started = clock.now
    assert not await f.sync()
    h = f.health
    assert h.state is SnapshotState.STALE and h.pointer == new.name and h.attempts == 1
    assert h.serving != new.name and blocked(slot, "one.example")
    assert [e.fault for e in events] == [SnapshotFault.LOAD_FAILED]
    # Tries come ever further apart, up to RETRY_MAX_SECONDS; the lag keeps growing.
    delays = []
    for _ in range(8):
        assert f.health.next_retry is not None
        delays.append(f.health.next_retry - clock.now)
        clock.now = f.health.next_retry - 0.5
        await f.sync()  # not yet: the attempt count stays
        assert f.health.attempts == len(delays)
        clock.now += 0.5
        await f.sync()
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert max(delays) == RETRY_MAX_SECONDS
    assert f.health.behind_seconds(clock.now) == clock.now - started
    assert len(events) == 1  # one fault, however many tries
    # The file arrives: the next poll loads it at once, backoff or not.
    os.replace(away, new)
    clock.now += 1
    assert await f.sync()
    assert blocked(slot, "two.example")
    assert f.health.state is SnapshotState.CURRENT and f.health.behind_seconds(clock.now) == 0
    assert f.health.serving == new.name


@pytest.mark.parametrize("damage", ["remove", "garbage"])
async def test_a_pointer_removed_or_unreadable_is_reported_and_followed_again(
    root: Path, damage: str
) -> None:
    f, slot, clock, events = follower(root)
    await f.start()
    pointer = SnapshotStore(root / "cache").pointer_path
    saved = pointer.read_bytes()
    if damage == "remove":
        pointer.unlink()
    else:
        pointer.write_bytes(b"{not json")
    clock.now += 2
    assert not await f.sync()
    assert f.health.state is SnapshotState.STALE and "pointer" in (f.health.reason or "")
    assert blocked(slot, "one.example")
    assert [e.fault for e in events] == [SnapshotFault.LOAD_FAILED]
    pointer.write_bytes(saved)
    clock.now += 2
    await f.sync()
    assert f.health.state is SnapshotState.CURRENT, f.health
    assert blocked(slot, "one.example")


async def test_a_damaged_published_file_is_reported_once_and_the_rules_keep_serving(
    root: Path,
) -> None:
    f, slot, clock, events = follower(root)
    await f.start()
    current = SnapshotStore(root / "cache").current_path()
    assert current is not None
    good = current.read_bytes()
    overwrite(current, b"\0" * len(good))
    for _ in range(3):
        clock.now += 2
        assert not await f.sync()
        assert f.health.state is SnapshotState.DAMAGED
        assert blocked(slot, "one.example")
    assert [e.fault for e in events] == [SnapshotFault.CHANGED]
    assert current.read_bytes() != good  # a watcher never writes to the store
    current.write_bytes(good)  # a good copy is back
    clock.now += 2
    await f.sync()
    assert f.health.state is SnapshotState.CURRENT and f.health.damage is None
    current.unlink()
    clock.now += 2
    await f.sync()
    assert f.health.state is SnapshotState.DAMAGED and "missing" in (f.health.reason or "")
    assert dict(f.health.faults) == {SnapshotFault.CHANGED: 1, SnapshotFault.MISSING: 1}


async def test_the_refresher_writes_the_verified_bytes_back(root: Path) -> None:
    f, slot, clock, events = follower(root, repair=True)
    await f.start()
    current = SnapshotStore(root / "cache").current_path()
    assert current is not None
    good = current.read_bytes()
    os.truncate(current, 100)
    clock.now += 2
    await f.sync()
    assert [e.fault for e in events] == [SnapshotFault.CHANGED, SnapshotFault.REPAIRED]
    assert current.read_bytes() == good
    clock.now += 2
    await f.sync()
    assert f.health.state is SnapshotState.CURRENT


async def test_a_change_that_keeps_the_file_times_is_found_by_the_periodic_check(
    root: Path,
) -> None:
    f, slot, clock, events = follower(root)
    await f.start()
    current = SnapshotStore(root / "cache").current_path()
    assert current is not None
    st = current.stat()
    data = bytearray(current.read_bytes())
    data[len(data) // 2] ^= 0xFF
    overwrite(current, bytes(data))
    os.utime(current, ns=(st.st_atime_ns, st.st_mtime_ns))
    clock.now += 2
    await f.sync()
    assert f.health.state is SnapshotState.CURRENT  # a stat alone cannot tell
    clock.now += FULL_VERIFY_SECONDS
    await f.sync()
    assert f.health.state is SnapshotState.DAMAGED
    assert blocked(slot, "one.example")


async def test_readyz_says_stale_with_a_reason_and_stays_200(aiohttp_client: Any) -> None:
    engine = Engine.from_lists([])[0]
    health = SnapshotHealth(
        state=SnapshotState.STALE,
        serving="block-a.jgs",
        pointer="block-b.jgs",
        reason="the pointer names block-b.jgs, which does not load: missing",
        since=100.0,
        behind_since=100.0,
        attempts=3,
        faults=((SnapshotFault.LOAD_FAILED, 1),),
    )
    metrics = Metrics(lambda: engine.block.meta, clock=lambda: 160.0)
    metrics.set_health_provider(lambda: health)
    state = AdminState(
        token="t" * 40,
        engine=lambda: engine,
        events=EventLog(),
        metrics=metrics,
        snapshot_health=lambda: health,
        clock=lambda: 160.0,
    )
    c = await aiohttp_client(create_app(state))
    resp = await c.get("/readyz")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["status"] == "stale" and "block-b.jgs" in doc["reason"]
    assert doc["snapshot"]["behind_seconds"] == 60.0 and doc["snapshot"]["attempts"] == 3
    text = metrics.render().decode()
    assert "jectguard_snapshot_behind_seconds 60.0" in text
    assert 'jectguard_snapshot_state{state="stale"} 1.0' in text
    assert 'jectguard_snapshot_faults_total{kind="load_failed"} 1.0' in text
