"""An operator's rollback never queues behind a rebuild.

The rebuild worker runs at the lowest CPU priority (SCHED_IDLE) and holds the store
lock from reading the record in force to publishing: on a saturated host (a malware
client can help saturate it) that is minutes. ``jectguard rollback`` stops it instead
(it unwinds and removes what it half-wrote) and the refresher runs it again later.
A worker frozen with SIGSTOP stands in for "no spare CPU".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy_addons.core.index import verify_file
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import LOCK, REBUILD_HOLDER, SnapshotStore
from proxy_addons.refresh.job import CompileJob
from proxy_addons.refresh.refresher import RefreshError, run_job, run_rebuild

JECTGUARD = Path(sys.executable).with_name("jectguard")
SOURCES = '[[source]]\nname = "local"\npath = "block.txt"\nformat = "domains"\n'


def _publish(root: Path, hosts: str) -> None:
    (root / "block.txt").write_text(hosts)
    cfg = load_sources(root / "sources.toml")
    out = run_job(CompileJob(str(root / "cache"), tuple(cfg.sources), rebuild=True))
    assert out.snapshot, out


def _lock_holder(store: SnapshotStore) -> dict[str, object] | None:
    try:
        return dict(json.loads((store.dir / LOCK).read_bytes()))
    except (OSError, ValueError):
        return None


async def _freeze_worker(store: SnapshotStore, running: asyncio.Future[object]) -> int:
    """Wait until a rebuild worker marks the store lock, then freeze it (SIGSTOP): a host
    with no spare CPU, where it would hold the lock indefinitely. Its pid."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not running.done():
        doc = await asyncio.to_thread(_lock_holder, store)
        if doc and doc.get("holder") == REBUILD_HOLDER:
            pid = int(str(doc["pid"]))
            os.kill(pid, signal.SIGSTOP)
            return pid
        await asyncio.sleep(0.002)
    raise AssertionError("the worker never marked the lock as a rebuild's")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JECTGUARD_RUNTIME_DIR", str(tmp_path / "runtime"))
    (tmp_path / "sources.toml").write_text(SOURCES)
    _publish(tmp_path, "first.example\n")
    # Big enough that the worker holds the lock while it parses: it is frozen there.
    _publish(tmp_path, "".join(f"h{i}.second.example\n" for i in range(300_000)))
    return tmp_path


async def test_rollback_stops_a_starved_rebuild_instead_of_waiting(root: Path) -> None:
    store = SnapshotStore(root / "cache")
    (root / "block.txt").write_text("".join(f"h{i}.third.example\n" for i in range(300_000)))
    cfg = load_sources(root / "sources.toml")
    job = CompileJob(str(root / "cache"), tuple(cfg.sources), rebuild=True)
    rebuild = asyncio.ensure_future(run_rebuild(job))
    pid = await _freeze_worker(store, rebuild)
    before = store.read_record()
    r = await asyncio.to_thread(
        subprocess.run,
        [
            str(JECTGUARD),
            "rollback",
            "--sources",
            str(root / "sources.toml"),
            "--cache-dir",
            str(root / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert f"stopped a rebuild in progress (pid {pid})" in r.stdout
    with pytest.raises(RefreshError, match="rebuild stopped"):
        await asyncio.wait_for(rebuild, 60)
    after = store.read_record()
    assert before is not None and after is not None and after.snapshot != before.snapshot
    # The stopped worker left no half-written snapshot behind: every file there is whole.
    for snap in store.list_snapshots():
        verify_file(snap.path)
    assert _lock_holder(store) is None  # the mark went with the lock


def test_nothing_is_stopped_when_no_rebuild_holds_the_lock(root: Path) -> None:
    store = SnapshotStore(root / "cache")
    assert store.stop_rebuild() is None
    # A process that holds the lock but is not a rebuild worker (here: this test, as
    # `jectguard update` would) is never signalled, even if the mark says rebuild.
    with store.locked(holder=REBUILD_HOLDER):
        assert store.stop_rebuild() is None  # its own pid
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from proxy_addons.lists.store import SnapshotStore, REBUILD_HOLDER\n"
            "s = SnapshotStore(__import__('pathlib').Path(sys.argv[1]))\n"
            "with s.locked(holder=REBUILD_HOLDER):\n"
            "    print('locked', flush=True); time.sleep(30)\n",
            str(root / "cache"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"locked"
        assert store.stop_rebuild() is None  # not the worker module: left alone
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()


async def test_status_says_how_long_a_rebuild_has_been_waiting(root: Path) -> None:
    """New rules stuck behind a busy host are visible: status carries the rebuild's age."""
    from proxy_addons.refresh.refresher import Refresher

    store = SnapshotStore(root / "cache")
    (root / "block.txt").write_text("".join(f"h{i}.fourth.example\n" for i in range(300_000)))
    r = Refresher(load_sources(root / "sources.toml"), root / "cache")
    assert r.status()["rebuild"] == {"running": False, "since": None, "seconds": None}
    build = asyncio.ensure_future(r._build(None, force=False, rebuild=True))
    pid = await _freeze_worker(store, build)
    try:
        await asyncio.sleep(0.3)
        status = r.status()["rebuild"]
        assert status["running"] is True and status["seconds"] >= 0.3
    finally:
        os.kill(pid, signal.SIGCONT)
    result = await asyncio.wait_for(build, 60)
    assert result.snapshot
    assert r.status()["rebuild"]["running"] is False
