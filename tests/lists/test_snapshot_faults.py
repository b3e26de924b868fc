"""kill -9 of ``jectguard update`` at random moments: fetch, validate, compile, publish.

Each round changes the feed, starts the real command (its whole process
group, as a container runtime kills it) and kills it after a random delay
spread over a full run's length; some rounds are left to finish. After every
kill the store must be whole: the pointer parses and names a snapshot that
verifies, every snapshot file verifies, the snapshot in force is the one
before the kill or a newer one (never older: nothing in force is lost), it
blocks what every version of the feed lists, and the kept feed body is one
complete version of the feed. A proxy in the watch role follows the store
throughout: it stays up, keeps blocking, and ends on the last snapshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.core.engine import Engine
from proxy_addons.core.index import CompiledIndex
from proxy_addons.lists.files import feed_body_path
from proxy_addons.lists.store import SnapshotStore
from tests.feedserver import FeedServer, feed_server, sources_toml
from tests.lists.test_snapshot_live import Live, launch

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 14  # kills; every fourth round runs to completion instead
BUDGET = 30.0  # seconds for the loop (no round starts after it): the test stays near a minute
FEED = "crashfeed"
ALWAYS = "always-listed.test"  # .test: the proxy under test resolves none of these


def body(version: int) -> bytes:
    """Version ``version`` of the feed: a common part, and hosts of its own."""
    own = "".join(f"v{version}-{i}.test\n" for i in range(20_000))
    return f"{ALWAYS}\n{own}".encode()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


def update(src: Path, cache: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy_addons.cli",
            "update",
            "--sources",
            str(src),
            "--cache-dir",
            str(cache),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,  # its own process group: the kill reaches any worker too
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def check_store(cache: Path, versions: dict[str, int], in_force_before: str | None) -> str | None:
    """The invariants after a kill; returns the snapshot now in force."""
    store = SnapshotStore(cache)
    for p in sorted(store.dir.glob("block-*.jgs")):
        CompiledIndex.load(p).close()  # every published file is whole (SnapshotError if not)
    if store.pointer_path.exists():
        doc = json.loads(store.pointer_path.read_bytes())  # never half a pointer
        assert isinstance(doc, dict) and isinstance(doc["snapshot"], str)
    pointer = store.read_pointer()
    if pointer is None:
        assert in_force_before is None, "the pointer in force was lost"
        return None
    name = pointer["snapshot"]
    if in_force_before is not None:
        assert name >= in_force_before, f"went back from {in_force_before} to {name}"
    index = store.load_current()
    engine = Engine(index, Engine.empty_allow())
    assert engine.check_url(f"http://{ALWAYS}/").blocked, "a rule every version has is gone"
    version = versions.get(name)
    if version is not None:
        assert engine.check_url(f"http://v{version}-19999.test/").blocked
    index.close()
    kept = feed_body_path(cache, FEED)
    if kept.exists():
        data = kept.read_bytes()
        assert data.startswith(f"{ALWAYS}\n".encode()) and data.endswith(b"-19999.test\n"), (
            "the kept feed body is not one whole version"
        )
    return name


def test_kill_9_during_update_never_breaks_the_store(server: FeedServer, tmp_path: Path) -> None:
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {FEED: "domains"}))
    cache = tmp_path / "cache"
    rng = random.Random(12)
    server.feed(FEED, body(0))
    # One full run first: how long a run takes here, and a snapshot in force.
    started = time.monotonic()
    first = update(src, cache)
    assert first.wait(60) == 0, first.stderr.read() if first.stderr else ""
    full = time.monotonic() - started
    if first.stderr is not None:
        first.stderr.close()
    in_force = check_store(cache, {}, None)
    assert in_force is not None
    versions = {in_force: 0}
    watcher = launch(tmp_path / "watcher", src, cache, "watch")
    live = next(watcher)
    try:
        kill_loop(server, src, cache, rng, full, in_force, versions, live)
    finally:
        watcher.close()  # stops the proxy


def kill_loop(
    server: FeedServer,
    src: Path,
    cache: Path,
    rng: random.Random,
    full: float,
    in_force: str | None,
    versions: dict[str, int],
    live: Live,
) -> str | None:
    store = SnapshotStore(cache)
    feed = server.feeds[FEED]
    kills = leftovers = 0
    seen_temps: set[Path] = set()
    deadline = time.monotonic() + BUDGET
    for version in range(1, ROUNDS + 1):
        if time.monotonic() > deadline:
            break
        feed.body = body(version)
        # A hang now and then puts the kill inside the download.
        feed.hang = rng.choice((0.0, 0.0, 0.0, full / 2))
        before = {p.name for p in store.dir.glob("block-*.jgs")}
        proc = update(src, cache)
        if version % 4 == 0:
            assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
            if proc.stderr is not None:
                proc.stderr.close()
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(rng.uniform(0.05, full + feed.hang))
            kill_group(proc)
            kills += 1
        temps = {*store.dir.glob("*.tmp"), *(cache / "feeds").glob("*.part")}
        leftovers += bool(temps - seen_temps)  # this kill landed mid-write
        seen_temps |= temps
        new = {p.name for p in store.dir.glob("block-*.jgs")} - before
        for name in new:
            versions[name] = version
        in_force = check_store(cache, versions, in_force)
        assert live.proxy.alive() and live.blocked(ALWAYS), "the watching proxy stopped blocking"
        if version % 4 == 0:
            assert versions.get(in_force or "") == version, "a full run after kills did not publish"
    assert kills >= 5, f"only {kills} kills in the time budget"
    # After all that, a normal run still works and publishes the feed as it is now.
    feed.hang = 0.0
    feed.body = body(99)
    last = update(src, cache)
    assert last.wait(60) == 0, last.stderr.read() if last.stderr else ""
    if last.stderr is not None:
        last.stderr.close()
    newest = check_store(cache, {}, in_force)
    index = store.load_current()
    assert Engine(index, Engine.empty_allow()).check_url("http://v99-5.test/").blocked, newest
    index.close()
    live.wait("the watcher on the last snapshot", lambda: live.blocked("v99-5.test"))
    assert live.readyz()["status"] == "ready"
    print(f"{kills} kills, {leftovers} of them mid-write, full run {full:.1f}s")
    return newest
