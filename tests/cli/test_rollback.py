"""`jectguard rollback` sticks: the sources it rolled back are held until their feed publishes a
different body (or an operator releases them), identical rebuilds publish nothing, and `lists`,
the admin API and the dashboard say what is held and why.

The commands run as an operator runs them, against a real local feed server and real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.admin.app import AdminState, create_app
from proxy_addons.core.engine import Engine
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics
from tests.feedserver import FeedServer, feed_server, sources_toml

JECTGUARD = Path(sys.executable).with_name("jectguard")
TOKEN = "t" * 32


def domains(n: int, prefix: str = "bad") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def env(server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest):
    """Two feeds, A and B; A is the one that goes bad."""
    tag = str(abs(hash(request.node.name)) % 10**8)
    a, b = "a" + tag, "b" + tag
    server.feed(a, domains(100))
    server.feed(b, domains(100, prefix="other"))
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {a: "domains", b: "domains"}))
    return a, b, src, tmp_path / "cache"


def jg(*args: str, cache: Path, src: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(JECTGUARD), *args, "--sources", str(src), "--cache-dir", str(cache)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def blocked(host: str, cache: Path, src: Path) -> bool:
    r = jg("check", f"http://{host}/", cache=cache, src=src)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 1


def row(listing: str, name: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(name + " "))


def go_bad_and_roll_back(server: FeedServer, a: str, cache: Path, src: Path) -> str:
    assert jg("update", cache=cache, src=src).returncode == 0
    server.feeds[a].body = domains(100) + b"login.microsoftonline.com\n"  # the incident
    assert jg("update", cache=cache, src=src).returncode == 0
    assert blocked("login.microsoftonline.com", cache, src)
    r = jg("rollback", cache=cache, src=src)
    assert r.returncode == 0, r.stderr
    assert not blocked("login.microsoftonline.com", cache, src)
    return r.stdout


def test_rollback_survives_another_feed_changing(server: FeedServer, env) -> None:
    a, b, src, cache = env
    said = go_bad_and_roll_back(server, a, cache, src)
    server.feeds[b].body = domains(100, prefix="other") + b"fresh-threat.example\n"
    r = jg("update", cache=cache, src=src)
    # A is downloaded again (its validators describe the body rolled back) and held back.
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert any(line.startswith(b) and "updated" in line for line in r.stdout.splitlines())
    assert blocked("fresh-threat.example", cache, src)  # B's change is published...
    assert not blocked("login.microsoftonline.com", cache, src)  # ...without A's bad body
    listing = jg("lists", cache=cache, src=src).stdout
    assert "HELD (rollback)" in row(listing, a) and "held by a rollback since" in listing
    assert f"jectguard rollback --release {a}" in listing
    assert f"held: {a}" in said and f"held: {b}" not in said


def test_a_held_feed_serving_the_bad_body_stays_out_until_it_changes(
    server: FeedServer, env
) -> None:
    a, b, src, cache = env
    server.feeds[a].etag = False  # no validators: every fetch is a full 200
    go_bad_and_roll_back(server, a, cache, src)
    again = jg("update", cache=cache, src=src)
    assert again.returncode == 1 and "rollback" in again.stdout  # held back, and why
    assert not blocked("login.microsoftonline.com", cache, src)
    doc = json.loads(jg("lists", "--json", cache=cache, src=src).stdout)
    assert a in doc["in_force"]["holds"]
    # The feed publishes a different body: accepted, and the hold ends.
    server.feeds[a].body = domains(100) + b"real-threat.example\n"
    fixed = jg("update", cache=cache, src=src)
    assert fixed.returncode == 0, fixed.stdout
    assert blocked("real-threat.example", cache, src)
    assert not blocked("login.microsoftonline.com", cache, src)
    listing = jg("lists", cache=cache, src=src).stdout
    assert "HELD" not in row(listing, a)
    assert json.loads(jg("lists", "--json", cache=cache, src=src).stdout)["in_force"]["holds"] == {}


def test_identical_rebuilds_publish_nothing(server: FeedServer, env) -> None:
    a, b, src, cache = env
    server.feeds[a].etag = server.feeds[b].etag = False
    assert jg("update", cache=cache, src=src).returncode == 0
    server.feeds[a].body = domains(101)
    assert jg("update", cache=cache, src=src).returncode == 0
    before = jg("rollback", "--list", cache=cache, src=src).stdout
    for _ in range(4):  # more cycles than snapshots kept
        r = jg("update", cache=cache, src=src)
        assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout
        assert "same content" in r.stdout
    # Not one snapshot more: the ones before the change are still there to roll back to.
    assert jg("rollback", "--list", cache=cache, src=src).stdout == before


def test_release_accepts_the_feed_as_it_is(server: FeedServer, env) -> None:
    a, b, src, cache = env
    go_bad_and_roll_back(server, a, cache, src)
    bad = jg("rollback", "--release", "nope", cache=cache, src=src)
    assert bad.returncode == 2 and "not held" in bad.stderr
    r = jg("rollback", "--release", a, cache=cache, src=src)
    assert r.returncode == 0 and f"released: {a}" in r.stdout
    assert "HELD" not in row(jg("lists", cache=cache, src=src).stdout, a)
    # The feed still serves the body rolled back (with its ETag): now it is accepted.
    assert jg("update", cache=cache, src=src).returncode == 0
    assert blocked("login.microsoftonline.com", cache, src)


def test_lists_counts_only_snapshots_rollback_can_reach(server: FeedServer, env) -> None:
    a, b, src, cache = env
    for n in (100, 101, 102):
        server.feeds[a].body = domains(n)
        assert jg("update", cache=cache, src=src).returncode == 0

    def older_than_current() -> int:
        listing = jg("rollback", "--list", cache=cache, src=src).stdout.splitlines()
        snaps = [line for line in listing if line[2:].startswith("block-")]
        return len(snaps) - 1 - next(i for i, line in enumerate(snaps) if line.startswith("*"))

    kept = older_than_current()
    assert kept >= 2 and f"kept for rollback: {kept}" in jg("lists", cache=cache, src=src).stdout
    assert jg("rollback", cache=cache, src=src).returncode == 0
    # The snapshot rolled back from is kept, but it is newer: no rollback target.
    assert older_than_current() == kept - 1
    assert f"kept for rollback: {kept - 1}" in jg("lists", cache=cache, src=src).stdout


async def test_api_shows_and_releases_holds(server: FeedServer, env, aiohttp_client: Any) -> None:
    a, b, src, cache = env
    go_bad_and_roll_back(server, a, cache, src)
    state = AdminState(
        token=TOKEN, engine=lambda: None, events=EventLog(), metrics=Metrics(), cache_dir=cache
    )
    client = await aiohttp_client(create_app(state))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status = await (await client.get("/api/status", headers=auth)).json()
    hold = status["in_force"]["holds"][a]
    assert (
        hold["reason"].startswith("rolled back from block-")
        and status["in_force"]["rolled_back_from"]
    )
    lists = await (await client.get("/api/lists", headers=auth)).json()
    assert a in lists["in_force"]["holds"]
    r = await client.post("/api/holds/release", params={"name": "nope"}, headers=auth)
    assert r.status == 404
    assert (await client.post("/api/holds/release", params={"name": a})).status == 401
    r = await client.post("/api/holds/release", params={"name": a}, headers=auth)
    assert r.status == 200 and (await r.json())["released"] == [a]
    status = await (await client.get("/api/status", headers=auth)).json()
    assert status["in_force"]["holds"] == {}


async def test_api_list_counts_follow_the_snapshot_in_force(
    server: FeedServer, env, aiohttp_client: Any
) -> None:
    from proxy_addons.admin.app import lists_from_report
    from proxy_addons.lists.sources import load_sources
    from proxy_addons.lists.store import startup_engine

    a, b, src, cache = env
    assert jg("update", cache=cache, src=src).returncode == 0
    engine, report = startup_engine(load_sources(src).enabled(), cache)
    holder: dict[str, Engine] = {"engine": engine}
    state = AdminState(
        token=TOKEN,
        engine=lambda: holder["engine"],
        events=EventLog(),
        metrics=Metrics(),
        lists=lists_from_report(report, cache),
    )
    client = await aiohttp_client(create_app(state))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def rules() -> int:
        s = await (await client.get("/api/status", headers=auth)).json()
        return next(x["rules"] for x in s["lists"] if x["name"] == a)

    assert await rules() == 100
    server.feeds[a].body = domains(150)
    assert jg("update", cache=cache, src=src).returncode == 0
    assert await rules() == 150  # not the start-up count


def test_lists_counts_what_is_in_force_after_a_rollback(server: FeedServer, env) -> None:
    a, b, src, cache = env
    go_bad_and_roll_back(server, a, cache, src)
    # The last download had 101 rules; the snapshot in force has the 100 before it.
    assert "100 rules" in row(jg("lists", cache=cache, src=src).stdout, a)


def test_a_rolled_back_local_list_stays_out_until_it_is_edited(
    server: FeedServer, env, tmp_path: Path
) -> None:
    a, b, src, cache = env
    local = tmp_path / "local.txt"
    local.write_text("mine.example\n")
    src.write_text(
        src.read_text() + f'\n[[source]]\nname = "local"\npath = "{local}"\nformat = "domains"\n'
    )
    assert jg("update", cache=cache, src=src).returncode == 0
    local.write_text("mine.example\nlogin.microsoftonline.com\n")  # a bad edit
    assert jg("update", cache=cache, src=src).returncode == 0
    assert blocked("login.microsoftonline.com", cache, src)
    r = jg("rollback", cache=cache, src=src)
    assert r.returncode == 0
    server.feeds[b].body = domains(100, prefix="other") + b"fresh-threat.example\n"
    assert jg("update", cache=cache, src=src).returncode == 0
    assert blocked("fresh-threat.example", cache, src)
    assert not blocked("login.microsoftonline.com", cache, src)  # the file still has it
    assert blocked("mine.example", cache, src)
    assert "held: local" in r.stdout
    local.write_text("mine.example\nyours.example\n")  # the operator fixes the file
    assert jg("update", cache=cache, src=src).returncode == 0
    assert blocked("yours.example", cache, src)
    assert "HELD" not in row(jg("lists", cache=cache, src=src).stdout, "local")
