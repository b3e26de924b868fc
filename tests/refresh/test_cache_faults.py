"""A damaged snapshot in force is rebuilt and reported; a full or read-only cache is a message
with exit code 2, never a traceback, and never changes what is in force.

Real files and real commands against a local feed server; the full and read-only caches are
real tmpfs mounts (the test needs root to mount them and is skipped, saying so, without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.core.index import HEADER_SIZE
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore, load_engine
from proxy_addons.refresh.feeds import FetchPolicy
from proxy_addons.refresh.refresher import Refresher
from proxy_addons.telemetry.events import EventLog, report_refresh_outcomes
from tests.feedserver import FeedServer, feed_server, sources_toml

JECTGUARD = Path(sys.executable).with_name("jectguard")
FAST = FetchPolicy(
    connect_timeout=2,
    read_timeout=0.5,
    total_timeout=3,
    attempts=1,
    backoff=0.01,
    retry_after_max=1,
)


def domains(n: int, prefix: str = "bad") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


def setup_feed(server: FeedServer, root: Path) -> tuple[str, Path, Path]:
    name = "c" + uuid.uuid4().hex[:8]
    server.feed(name, domains(100))
    src = root / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}))
    return name, src, root / "cache"


def jg(*args: str, cache: Path, src: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(JECTGUARD), *args, "--sources", str(src), "--cache-dir", str(cache)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def damage(path: Path, how: str) -> None:
    if how == "flip":  # in place, as a sidecar copying with --inplace or bit rot would
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 40)
            byte = f.read(1)
            f.seek(HEADER_SIZE + 40)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "zero":
        with open(path, "r+b") as f:
            f.write(b"\0" * path.stat().st_size)
    else:
        path.unlink()


# -- a damaged snapshot in force -------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate", "zero", "missing"])
def test_update_repairs_a_damaged_snapshot_in_force(
    server: FeedServer, tmp_path: Path, how: str
) -> None:
    name, src, cache = setup_feed(server, tmp_path)
    assert jg("update", cache=cache, src=src).returncode == 0
    store = SnapshotStore(cache)
    bad = store.current_path()
    assert bad is not None
    damage(bad, how)
    r = jg("update", cache=cache, src=src)  # the feed answers 304: nothing new to fetch
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repaired" in r.stdout and "nothing changed" not in r.stdout
    assert store.current_path() != bad
    engine, _ = load_engine(load_sources(src).sources, cache)  # verifies the checksum
    assert engine.check_url("http://bad42.example/").blocked
    listing = jg("lists", cache=cache, src=src).stdout
    assert f"repaired: {bad.name} could not be served" in listing


async def test_the_refresher_notices_a_damaged_snapshot_and_reports_it(
    server: FeedServer, tmp_path: Path
) -> None:
    name, src, cache = setup_feed(server, tmp_path)
    events = EventLog()
    r = Refresher(
        load_sources(src),
        cache,
        policy=FAST,
        isolate=False,
        on_report=lambda rep: report_refresh_outcomes(events, None, rep),
    )
    await r.refresh()
    assert not r.snapshot_stale()
    current = SnapshotStore(cache).current_path()
    assert current is not None
    damage(current, "flip")
    assert r.snapshot_stale()  # what the refresher's loop asks before "nothing to do"
    report = await r.refresh([], rebuild=True)
    assert report.snapshot and report.repaired and "checksum" in report.repaired
    assert not r.snapshot_stale()
    assert any("snapshot repaired" in (e.get("reason") or "") for e in events.recent(10, ["error"]))
    assert r.status()["in_force"]["repaired"] == report.repaired


# -- a full or read-only cache ----------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs to fill or make read-only (needs root): {r.stderr.strip()}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


def test_full_disk_is_a_message_and_keeps_the_snapshot(server: FeedServer, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        name, src, cache = setup_feed(server, tmp_path)
        cache = mnt / "cache"
        server.feeds[name].body = domains(8000)
        assert jg("update", cache=cache, src=src).returncode == 0
        server.feeds[name].body = domains(8001)
        assert jg("update", cache=cache, src=src).returncode == 0
        before = SnapshotStore(cache).current_path()
        server.feeds[name].body = body = domains(8000) + domains(60, prefix="new")
        # Room for the download and the small state files, not for the snapshot
        # (about 1.4 times the body).
        filler = mnt / "filler"
        st = os.statvfs(mnt)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - len(body) - 32 * 1024)
        finally:
            os.close(fd)
        r = jg("update", cache=cache, src=src)
        no_traceback(r)
        assert r.returncode == 2 and "No space left on device" in r.stderr, r.stdout + r.stderr
        assert "free some space" in r.stderr
        assert SnapshotStore(cache).current_path() == before
        assert jg("check", "http://bad8000.example/", cache=cache, src=src).returncode == 1
        assert jg("check", "http://new5.example/", cache=cache, src=src).returncode == 0
        doc = json.loads(jg("lists", "--json", cache=cache, src=src).stdout)
        src_doc = next(d for d in doc["sources"] if d["name"] == name)
        # Not "fine": the source says its new list could not be published.
        assert src_doc["health"] == "failed" and "No space left" in src_doc["last_error"]
        # Rolling back on a full disk still works: it writes one small file after putting
        # back (by link) the earlier body, which frees the new one's pages.
        st = os.statvfs(mnt)
        fd = os.open(filler, os.O_WRONLY)
        try:
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, filler.stat().st_size, st.f_bavail * st.f_frsize)
        finally:
            os.close(fd)
        assert os.statvfs(mnt).f_bavail == 0
        rb = jg("rollback", cache=cache, src=src)
        no_traceback(rb)
        assert rb.returncode == 0, rb.stdout + rb.stderr
        assert SnapshotStore(cache).current_path() != before
        assert jg("check", "http://bad8000.example/", cache=cache, src=src).returncode == 0


def test_read_only_cache_is_a_message(server: FeedServer, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        name, src, cache = setup_feed(server, tmp_path)
        cache = mnt / "cache"
        assert jg("update", cache=cache, src=src).returncode == 0
        server.feeds[name].body = domains(101)
        assert jg("update", cache=cache, src=src).returncode == 0
        before = SnapshotStore(cache).current_path()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        server.feeds[name].body = domains(102)
        for args in (("update",), ("rollback",)):
            r = jg(*args, cache=cache, src=src)
            no_traceback(r)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert "Read-only file system" in r.stderr, (args, r.stderr)
        assert SnapshotStore(cache).current_path() == before


def test_a_repaired_snapshot_is_no_rollback_target(server: FeedServer, tmp_path: Path) -> None:
    name, src, cache = setup_feed(server, tmp_path)
    assert jg("update", cache=cache, src=src).returncode == 0
    bad = SnapshotStore(cache).current_path()
    assert bad is not None
    damage(bad, "flip")
    assert jg("update", cache=cache, src=src).returncode == 0
    assert not bad.exists()
    assert "kept for rollback: 0" in jg("lists", cache=cache, src=src).stdout
