"""Retro-hunt through a real ``jectguard run``: visit a host, then a snapshot lists it.

A watch-role proxy (a scale-out replica) with ``proxyauth`` serves a published
snapshot; an authenticated client visits ``good.test``; a new snapshot that
lists it is published; the proxy must write a ``retro-hit`` event naming the
client and the user, and ``jectguard hunt retro`` / ``hunt host`` must say the
same from the ledger. Once with the SQLite ledger in the cache directory, once
with a real PostgreSQL server (the scale profile's shared ledger).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ATTACKER_IP,
    HOSTS,
    LOCAL_DESTINATIONS,
    ROOT,
    ByteCounter,
    Proxy,
    free_port,
    proxy_command,
    wait_for_port,
)
from tests.lists.test_snapshot_live import SOURCES, publish
from tests.pgserver import postgres_url

WAIT = 30.0  # watch poll (2 s) + ledger flush (2 s) + the hunt, on a loaded machine
USER, PASSWORD = "alice", "s3cret-pw"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from proxy_addons.cli import main; sys.exit(main())",
         *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def _wait(what: str, proxy: Proxy, cond: Callable[[], object]) -> object:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proxy.alive(), proxy.output()
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {WAIT}s\n{proxy.output()[-3000:]}")


def _get(proxy: Proxy, url: str, *, auth: tuple[str, str] | None, timeout: float = 10) -> int:
    proxy_url = f"http://{auth[0]}:{auth[1]}@127.0.0.1:{proxy.port}" if auth else proxy.url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _run_proxy(
    tmp_path: Path, ledger_url: str, sources: str = SOURCES, files: dict[str, str] | None = None
) -> Iterator[tuple[Proxy, Path]]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "sources.toml").write_text(sources)
    (lists / "block.txt").write_text("evil.test\n" + "".join(f"f{i}.example\n" for i in range(500)))
    for name, text in (files or {}).items():
        (lists / name).write_text(text)
    cache = tmp_path / "cache"
    publish(lists, cache)
    port = free_port()
    log = tmp_path / "proxy.log"
    cmd = [
        *proxy_command(), "run", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--confdir", str(tmp_path / "confdir"), "--cache-dir", str(cache), "--admin-port", "0",
        "--sources", str(lists / "sources.toml"), "--refresh-role", "watch",
        "--events-file", str(tmp_path / "events.jsonl"),
        "--set", f"proxyauth={USER}:{PASSWORD}",
        *LOCAL_DESTINATIONS,  # the origins are on loopback and this host's own address
        *(["--set", f"jg_ledger_url={ledger_url}", "--set", "jg_ledger_hunt=on"] if ledger_url else []),
    ]  # fmt: skip
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
        yield proxy, lists
    finally:
        proxy.stop(signal.SIGTERM)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    with postgres_url() as url:
        yield url


def test_a_host_reached_before_it_was_listed_is_reported_with_client_and_user(
    tmp_path: Path, ledger_url: str
) -> None:
    gen = _run_proxy(tmp_path, ledger_url)
    proxy, lists = next(gen)
    try:
        cache = tmp_path / "cache"
        where = ["--ledger-url", ledger_url] if ledger_url else ["--cache-dir", str(cache)]
        # Without credentials the proxy answers 407 and goes nowhere: no sighting.
        assert _get(proxy, "http://cdn.test/x", auth=None) == 407
        # Reached while on no list (nothing listens there: a 502, still a request handled).
        assert _get(proxy, "http://good.test/page?q=secret-query", auth=(USER, PASSWORD)) != 403

        def seen() -> list[dict[str, object]]:
            r = _cli("hunt", "host", "good.test", "--json", *where)
            return [json.loads(x) for x in r.stdout.splitlines()] if r.returncode == 0 else []

        [row] = _wait("the visit in the ledger", proxy, seen)  # type: ignore[misc]
        assert row["host"] == "good.test" and row["client"] == "127.0.0.1"
        assert row["user"] == USER and row["count"] == 1
        assert _cli("hunt", "host", "cdn.test", "--json", *where).stdout == ""

        # A new snapshot lists good.test: the proxy follows it and hunts back.
        with (lists / "block.txt").open("a") as f:
            f.write("good.test\n")
        publish(lists, cache)
        events = tmp_path / "events.jsonl"

        def retro() -> list[dict[str, object]]:
            if not events.exists():
                return []
            docs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
            return [d for d in docs if d["event"] == "retro-hit"]

        [hit] = _wait("a retro-hit event", proxy, retro)  # type: ignore[misc]
        assert hit["host"] == "good.test" and hit["list"] == "live-block"
        assert hit["category"] == "malware" and hit["rule"] == "good.test"
        assert hit["users"] == [USER]
        [who] = hit["clients"]
        assert who["client"] == "127.0.0.1" and who["user"] == USER and who["count"] == 1

        r = _cli("hunt", "retro", "--json", "--since", "1", *where)
        assert r.returncode == 0, r.stderr
        [doc] = [json.loads(x) for x in r.stdout.splitlines()]
        assert doc["host"] == "good.test" and doc["users"] == [USER]
        assert doc["clients"][0]["client"] == "127.0.0.1"

        # Now blocked, and the block event names the user too.
        assert _get(proxy, "http://good.test/again", auth=(USER, PASSWORD)) == 403

        def block() -> list[dict[str, object]]:
            docs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
            return [d for d in docs if d["event"] == "block" and d.get("host") == "good.test"]

        [blocked] = _wait("a block event", proxy, block)  # type: ignore[misc]
        assert blocked["user"] == USER
        # Hosts only: the ledger and the events never hold the password, a path or a query.
        assert PASSWORD not in events.read_text()
        if not ledger_url:
            raw = b"".join(p.read_bytes() for p in cache.glob("ledger.sqlite3*"))
            assert PASSWORD.encode() not in raw and b"secret-query" not in raw
            assert b"/page" not in raw
    finally:
        gen.close()


CIDR_SOURCES = (
    SOURCES
    + """
[[source]]
name = "live-nets"
path = "nets.txt"
format = "cidr"
category = "botnet"
"""
)


@pytest.mark.skipif(ATTACKER_IP is None, reason="no non-loopback address on this machine")
def test_a_resolved_address_is_found_by_a_new_cidr_rule(tmp_path: Path) -> None:
    """The ledger records the server address a name resolved to; a new network rule finds it."""
    assert ATTACKER_IP is not None
    server = ByteCounter(ATTACKER_IP)  # accepts and never answers: the connection is made
    gen = _run_proxy(tmp_path, "", CIDR_SOURCES, {"nets.txt": "198.51.100.0/24\n"})
    proxy, lists = next(gen)
    try:
        with contextlib.suppress(OSError):  # it never answers: the proxy connected, that counts
            _get(proxy, f"http://attacker.test:{server.port}/x", auth=(USER, PASSWORD), timeout=3)
        cache = tmp_path / "cache"

        def seen() -> list[dict[str, object]]:
            r = _cli("hunt", "host", ATTACKER_IP, "--json", "--cache-dir", str(cache))
            return [json.loads(x) for x in r.stdout.splitlines()] if r.returncode == 0 else []

        [row] = _wait("the address in the ledger", proxy, seen)  # type: ignore[misc]
        assert row["user"] == USER
        net = ".".join(ATTACKER_IP.split(".")[:3]) + ".0/24"
        (lists / "nets.txt").write_text(f"198.51.100.0/24\n{net}\n")
        publish(lists, cache)
        events = tmp_path / "events.jsonl"

        def retro() -> list[dict[str, object]]:
            if not events.exists():
                return []
            docs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
            return [d for d in docs if d["event"] == "retro-hit"]

        [hit] = _wait("a retro-hit event", proxy, retro)  # type: ignore[misc]
        assert (hit["host"], hit["rule"], hit["list"]) == (ATTACKER_IP, net, "live-nets")
        assert hit["kind"] == "cidr" and hit["users"] == [USER]
    finally:
        gen.close()
        server.close()
