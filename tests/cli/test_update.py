"""`jectguard update`, `lists`, `rollback` and `check` as a user runs them, against a local
feed server; and a real mitmproxy process running our addons that picks up new entries
without a restart, keeps serving through broken feeds, and restarts offline from its cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.addons.blockpage import HEADER_NAME
from tests.feedserver import FeedServer, feed_server, sources_toml
from tests.ports import free_port as _free_port

JECTGUARD = Path(sys.executable).with_name("jectguard")


def domains(n: int, prefix: str = "bad") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def env(server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest):
    name = "u" + str(abs(hash(request.node.name)) % 10**8)
    server.feed(name, domains(100))
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}))
    return name, src, tmp_path / "cache"


def jg(*args: str, cache: Path, src: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(JECTGUARD), *args, "--sources", str(src), "--cache-dir", str(cache)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_update_check_lists(server: FeedServer, env) -> None:
    name, src, cache = env
    r = jg("update", cache=cache, src=src)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{name}" in r.stdout and "updated" in r.stdout and "snapshot block-" in r.stdout
    c = jg("check", "http://bad12.example/x", "--json", cache=cache, src=src)
    assert c.returncode == 1 and json.loads(c.stdout)["list"] == name

    lst = jg("lists", cache=cache, src=src)
    assert lst.returncode == 0
    row = next(line for line in lst.stdout.splitlines() if line.startswith(name))
    assert " ok " in row and "domain 100" in row and "in " in row  # next run in the future
    assert "ETag" in lst.stdout and "snapshot in force" in lst.stdout
    doc = json.loads(jg("lists", "--json", cache=cache, src=src).stdout)
    src_doc = next(d for d in doc["sources"] if d["name"] == name)
    for key in (
        "last_attempt",
        "last_success",
        "entries",
        "etag",
        "last_modified",
        "held_back",
        "last_error",
        "next_run",
    ):
        assert key in src_doc
    assert src_doc["entries"] == {"domain": 100} and doc["snapshot"]["rules"] == 100

    # Unchanged feed: exit 0, nothing republished.
    again = jg("update", cache=cache, src=src)
    assert (
        again.returncode == 0 and "unchanged" in again.stdout and "nothing changed" in again.stdout
    )


def test_held_back_and_failed_exit_nonzero_and_keep_data(server: FeedServer, env) -> None:
    name, src, cache = env
    assert jg("update", cache=cache, src=src).returncode == 0
    server.feeds[name].body = domains(10)  # lost 90%
    r = jg("update", cache=cache, src=src)
    assert r.returncode == 1 and "HELD BACK" in r.stdout and "shrank" in r.stdout
    assert jg("check", "http://bad77.example/", cache=cache, src=src).returncode == 1
    lst = jg("lists", cache=cache, src=src).stdout
    assert "HELD BACK" in lst and "held back: shrank from 100 to 10" in lst
    forced = jg("update", "--force", cache=cache, src=src)
    assert forced.returncode == 0 and "overridden" in forced.stdout
    assert jg("check", "http://bad77.example/", cache=cache, src=src).returncode == 0

    server.feeds[name].status = 500
    failed = jg("update", cache=cache, src=src)
    assert failed.returncode == 1 and "FAILED" in failed.stdout and "HTTP 500" in failed.stdout
    assert jg("check", "http://bad7.example/", cache=cache, src=src).returncode == 1
    assert "last error: HTTP 500" in jg("lists", cache=cache, src=src).stdout
    server.feeds[name].status = 200


def test_rollback(server: FeedServer, env) -> None:
    name, src, cache = env
    assert jg("update", cache=cache, src=src).returncode == 0
    server.feeds[name].body = domains(100) + b"mistake.example\n"
    assert jg("update", cache=cache, src=src).returncode == 0
    listing = jg("rollback", "--list", cache=cache, src=src).stdout
    assert listing.count("block-") == 2 and listing.startswith("* ")
    r = jg("rollback", cache=cache, src=src)
    assert r.returncode == 0 and "now in force" in r.stdout and "100 block rules" in r.stdout
    assert "rolled back from" in jg("lists", cache=cache, src=src).stdout
    again = jg("rollback", cache=cache, src=src)
    assert again.returncode == 2 and "cannot go back" in again.stderr


def test_bad_input(env) -> None:
    name, src, cache = env
    r = jg("update", "--source", "nope", cache=cache, src=src)
    assert r.returncode == 2 and "nope" in r.stderr
    r = subprocess.run(
        [str(JECTGUARD), "update", "--blocklist", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2


# -- the real proxy ------------------------------------------------------------------


class Proxy:
    def __init__(self, tmp: Path, src: Path, cache: Path, role: str = "refresh") -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.log = tmp / f"proxy-{self.port}.log"
        env = dict(os.environ)
        # the real command, as an operator runs a refresher and its replicas
        cmd = [
            str(JECTGUARD),
            "run",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(self.port),
            "--confdir",
            str(tmp / "confdir"),
            "--refresh-role",
            role,
            "--sources",
            str(src),
            "--cache-dir",
            str(cache),
            "--admin-port",
            "0",  # several proxies on one host: no admin port clash
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() - t0 < 30, self.log.read_text()
                time.sleep(0.05)
        self.started_in = time.monotonic() - t0

    def blocked(self, host: str) -> bool:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{self.port}"})
        )
        try:
            with opener.open(f"http://{host}/", timeout=10) as resp:
                return resp.headers.get(HEADER_NAME) is not None
        except urllib.error.HTTPError as exc:
            return exc.headers.get(HEADER_NAME) is not None

    def wait_blocked(self, host: str, want: bool = True, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.blocked(host) is not want:
            assert time.monotonic() < deadline, (
                f"{host} blocked={not want} after {timeout}s\n" + self.log.read_text()
            )
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
def test_real_proxy_refreshes_without_restart(server: FeedServer, env, tmp_path: Path) -> None:
    name, src, cache = env
    proxy = Proxy(tmp_path / "p1", src, cache)
    watcher = None
    try:
        # Empty cache: the proxy's own refresher fetches at start, compiles, swaps.
        proxy.wait_blocked("bad3.example")
        assert not proxy.blocked("fresh-threat.example")
        # A second proxy process in the watch role follows the same snapshots.
        watcher = Proxy(tmp_path / "p2", src, cache, role="watch")
        watcher.wait_blocked("bad3.example")
        fetches = len(server.hits_for(name))
        # The feed gains an entry; `jectguard update` publishes; both proxies swap, no restart.
        server.feeds[name].body = domains(100) + b"fresh-threat.example\n"
        assert jg("update", cache=cache, src=src).returncode == 0
        proxy.wait_blocked("fresh-threat.example")
        watcher.wait_blocked("fresh-threat.example")
        assert len(server.hits_for(name)) == fetches + 1  # the watcher downloaded nothing
        # A broken feed (an HTML page with 200): held back, both keep serving the last good data.
        server.feeds[name].body = b"<!doctype html><html><body>Login</body></html>"
        assert jg("update", cache=cache, src=src).returncode == 1
        assert proxy.blocked("fresh-threat.example") and watcher.blocked("bad3.example")
        assert proxy.proc.poll() is None and watcher.proc.poll() is None
        assert " ERROR" not in proxy.log.read_text()
    finally:
        proxy.stop()
        if watcher is not None:
            watcher.stop()
    # Restart with the network down (the feed URL points at a closed port): serves from cache.
    src.write_text(src.read_text().replace(f"127.0.0.1:{server.port}", "127.0.0.1:9"))
    offline = Proxy(tmp_path / "p3", src, cache)
    try:
        assert offline.blocked("fresh-threat.example") and offline.blocked("bad99.example")
        assert offline.started_in < 10 and offline.proc.poll() is None
    finally:
        offline.stop()
