"""A running ``jectguard run`` whose snapshot file is changed, removed or replaced under it.

A shared cache volume is not ours alone: a network file system removes or
replaces a file under a reader, a sidecar copies with ``rsync --inplace``,
someone truncates or zeroes it. Whatever happens to the published ``.jgs``,
the proxy process must stay up, keep blocking with the rules it verified,
say so on ``/readyz`` and ``/metrics``, and recover when a good copy is back.
A pointer that names a file not there yet must be retried until it loads.

Every check is a real request through the real proxy process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy_addons.core.index import HEADER_SIZE
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore
from proxy_addons.refresh.job import CompileJob
from proxy_addons.refresh.refresher import run_job
from tests.e2e.conftest import HOSTS, ROOT, Proxy, free_port, proxy_command, wait_for_port

TOKEN = "t" * 40
WAIT = 20.0  # the watch role polls every 2 s; a change shows within one or two polls

SOURCES = """
[[source]]
name = "live-block"
path = "block.txt"
format = "domains"
category = "malware"
"""


@dataclass
class Live:
    proxy: Proxy
    admin: int
    cache: Path
    lists: Path

    def get(self, url: str, *, via_proxy: bool = True) -> tuple[int, bytes]:
        handlers = [urllib.request.ProxyHandler({"http": self.proxy.url} if via_proxy else {})]
        opener = urllib.request.build_opener(*handlers)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:  # refused or dropped: the proxy is gone
            return 0, str(exc).encode()

    def blocked(self, host: str) -> bool:
        status, body = self.get(f"http://{host}/some/page")
        return status == 403 and b"jectguard" in body.lower()

    def readyz(self) -> dict[str, object]:
        status, body = self.get(f"http://127.0.0.1:{self.admin}/readyz", via_proxy=False)
        assert status == 200, body
        doc: dict[str, object] = json.loads(body)
        return doc

    def _metric_lines(self) -> list[str]:
        status, body = self.get(f"http://127.0.0.1:{self.admin}/metrics", via_proxy=False)
        assert status == 200
        return [ln for ln in body.decode().splitlines() if not ln.startswith("#")]

    def metric(self, name: str) -> float:
        """An unlabelled sample."""
        for line in self._metric_lines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        raise AssertionError(f"no metric {name}")

    def metric_labels(self, name: str) -> dict[str, float]:
        """A metric with one label: label value -> sample."""
        out = {}
        for line in self._metric_lines():
            key, _, value = line.rpartition(" ")
            if key.startswith(name + "{"):
                out[key.split('"')[1]] = float(value)
        return out

    def wait(self, what: str, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            assert self.proxy.alive(), (
                f"proxy died ({self.proxy.proc.returncode}):\n{self.proxy.output()}"
            )
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{what}: not within {WAIT}s; readyz {self.readyz()}\n{self.proxy.output()[-3000:]}"
        )


def publish(lists: Path, cache: Path) -> Path:
    """Compile the lists as they are now and publish them (what the refresher does)."""
    cfg = load_sources(lists / "sources.toml")
    out = run_job(CompileJob(str(cache), tuple(cfg.sources), rebuild=True))
    assert out.snapshot, out
    return Path(out.snapshot)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A watch-role proxy (a scale-out replica) on a published snapshot."""
    yield from start_live(tmp_path, "watch")


@pytest.fixture
def live_refresher(tmp_path: Path) -> Iterator[Live]:
    """A refresh-role proxy: the one process that writes the store."""
    yield from start_live(tmp_path, "refresh")


def start_live(tmp_path: Path, role: str) -> Iterator[Live]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "sources.toml").write_text(SOURCES)
    (lists / "block.txt").write_text(
        "evil.test\n" + "".join(f"filler{i}.example\n" for i in range(5000))
    )
    cache = tmp_path / "cache"
    publish(lists, cache)
    yield from launch(tmp_path, lists / "sources.toml", cache, role)


def launch(tmp_path: Path, sources: Path, cache: Path, role: str) -> Iterator[Live]:
    """``jectguard run`` in ``role`` on ``cache``, with its admin API; always stopped."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port, admin = free_port(), free_port()
    log = tmp_path / "proxy.log"
    cmd = [
        *proxy_command(),
        "run",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--confdir",
        str(tmp_path / "confdir"),
        "--cache-dir",
        str(cache),
        "--admin-port",
        str(admin),
        "--admin-token-file",
        str(token_file),
        "--sources",
        str(sources),
        "--refresh-role",
        role,
        "--events-file",
        str(tmp_path / "events.jsonl"),
    ]
    env = {
        **os.environ,
        "JG_TEST_HOSTS": ",".join(f"{k}={v}" for k, v in HOSTS.items()),
        "JECTGUARD_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proxy = Proxy(proc, port, tmp_path / "confdir", log)
    try:
        wait_for_port(port, proc, log, 30.0)
        wait_for_port(admin, proc, log, 30.0)
        yield Live(proxy, admin, cache, sources.parent)
    finally:
        proxy.stop(signal.SIGTERM)


def _truncate(p: Path) -> None:
    os.truncate(p, HEADER_SIZE)  # a mapping of it would die of SIGBUS at the first lookup


def _zero(p: Path) -> None:
    with open(p, "r+b") as f:  # in place, same size: what a mapping would then serve
        f.write(b"\x00" * p.stat().st_size)


def _flip(p: Path) -> None:
    with open(p, "r+b") as f:
        size = p.stat().st_size
        for pos in range(HEADER_SIZE, size, max(1, size // 64)):
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0xFF]))


def _delete(p: Path) -> None:
    p.unlink()


def _replace(p: Path) -> None:
    tmp = p.with_name("other.tmp")
    tmp.write_bytes(os.urandom(p.stat().st_size))
    os.replace(tmp, p)  # rename over it: a new file under the same name


FAULTS = {
    "truncate": _truncate,
    "zero": _zero,
    "flip": _flip,
    "delete": _delete,
    "replace": _replace,
}


def test_snapshot_changed_under_a_running_proxy_never_crashes_it_nor_disarms_it(
    live: Live,
) -> None:
    assert live.blocked("evil.test")
    live.wait("in sync at start", lambda: live.readyz()["status"] == "ready")
    current = SnapshotStore(live.cache).current_path()
    assert current is not None
    good = current.read_bytes()
    saved = current.with_name("good-copy")
    shutil.copyfile(current, saved)
    for n, (name, fault) in enumerate(FAULTS.items(), 1):
        fault(current)
        # At once, before the proxy has noticed: still alive, still blocking.
        ok = live.blocked("evil.test")
        assert ok, f"{name}: not blocked (proxy exit code {live.proxy.proc.poll()}; -7 is SIGBUS)"
        live.wait(f"{name}: reported", lambda: live.readyz()["status"] == "damaged")
        doc = live.readyz()
        assert doc["reason"] and doc["snapshot"]["damage"], doc  # type: ignore[index]
        assert live.proxy.alive()
        assert live.blocked("evil.test"), f"{name}: blocking turned off"
        faults = sum(
            live.metric_labels("jectguard_snapshot_faults_total").get(k, 0.0)
            for k in ("changed", "missing")
        )
        assert faults >= n, f"{name}: fault not counted"
        assert live.metric_labels("jectguard_snapshot_state").get("damaged") == 1.0
        status = json.loads(
            live.get(f"http://127.0.0.1:{live.admin}/api/status", via_proxy=False)[1]
        )
        assert status["snapshot_health"]["state"] == "damaged", status
        # A good copy comes back (an operator, the next sync): the proxy is in sync again.
        tmp = current.with_name("restore.tmp")
        shutil.copyfile(saved, tmp)
        os.replace(tmp, current)
        live.wait(f"{name}: recovered", lambda: live.readyz()["status"] == "ready")
        assert live.blocked("evil.test")
    assert current.read_bytes() == good
    events = [
        json.loads(line) for line in (live.cache.parent / "events.jsonl").read_text().splitlines()
    ]
    snap_events = [e for e in events if e.get("source") == "snapshot"]
    assert {e["fault"] for e in snap_events} >= {"changed", "missing"}, events


def test_pointer_published_before_its_file_is_retried_until_it_loads(live: Live) -> None:
    assert live.blocked("evil.test")
    assert not live.blocked("late.test")
    # The refresher publishes the next snapshot elsewhere; a sidecar copies the
    # pointer into the proxy's store before the file it names.
    staging = live.cache.parent / "staging"
    shutil.copytree(live.cache, staging)
    (live.lists / "block.txt").write_text("evil.test\nlate.test\n")
    new = publish(live.lists, staging)
    store = SnapshotStore(live.cache)
    for side in sorted(new.parent.glob(new.stem + ".*.json")):
        shutil.copyfile(side, store.dir / side.name)
    tmp = store.dir / "pointer.tmp"
    shutil.copyfile(staging / "snapshots" / "current", tmp)
    os.replace(tmp, store.pointer_path)
    live.wait("stale reported", lambda: live.readyz()["status"] == "stale")
    doc = live.readyz()
    assert doc["snapshot"]["pointer"] == new.name, doc  # type: ignore[index]
    assert live.metric("jectguard_snapshot_behind_seconds") > 0
    assert live.blocked("evil.test") and not live.blocked("late.test")
    # Wait out a few tries, then the file arrives: the proxy catches up by itself.
    live.wait("retried", lambda: live.readyz()["snapshot"]["attempts"] >= 2)  # type: ignore[index]
    tmp = store.dir / "file.tmp"
    shutil.copyfile(new, tmp)
    os.replace(tmp, store.dir / new.name)
    live.wait("caught up", lambda: live.readyz()["status"] == "ready")
    assert live.blocked("late.test")
    assert live.metric("jectguard_snapshot_behind_seconds") == 0


def test_the_refresher_writes_a_damaged_current_snapshot_back(live_refresher: Live) -> None:
    live = live_refresher
    assert live.blocked("evil.test")
    current = SnapshotStore(live.cache).current_path()
    assert current is not None
    good = current.read_bytes()
    _truncate(current)
    assert live.blocked("evil.test")
    # It notices within a poll or two, rewrites the file from its verified copy
    # (a new file renamed over, never in place) and is in sync again.
    live.wait("repaired", lambda: current.read_bytes() == good)
    live.wait("in sync", lambda: live.readyz()["status"] == "ready")
    faults = live.metric_labels("jectguard_snapshot_faults_total")
    assert faults.get("changed") == 1.0 and faults.get("repaired") == 1.0, faults
    assert live.blocked("evil.test")
