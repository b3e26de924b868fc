"""The size guard: distinct rules, sudden growth held like sudden shrinkage, a baseline a spike
does not move, and a guard that survives losing a feed's state file.

Driven through the refresher against a real local feed server (tests/feedserver.py), with the
bodies, state files and snapshots on disk; the table at the top pins the guard's arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.lists.files import feed_body_path
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore, load_engine
from proxy_addons.refresh.feeds import FetchPolicy, load_state, state_path
from proxy_addons.refresh.refresher import Refresher
from proxy_addons.refresh.validate import validate_body
from tests.feedserver import FeedServer, feed_server, sources_toml

FAST = FetchPolicy(
    connect_timeout=2,
    read_timeout=0.5,
    total_timeout=3,
    attempts=1,
    backoff=0.01,
    retry_after_max=1,
)


def domains(n: int, prefix: str = "bad", start: int = 0) -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(start, start + n)).encode()


@pytest.mark.parametrize(
    ("history", "total", "held"),
    [
        ((200,), 201, False),
        ((200,), 700, False),  # under GROWTH_MAX_FACTOR
        ((200,), 5000, True),  # 25x: a broken export
        ((200,), 1_000_000, True),
        ((30,), 900, False),  # small lists may triple: fewer than GROWTH_MIN_ADDED rules added
        ((1000,), 499, True),
        ((1000,), 600, False),
        ((1000,), 0, True),
        ((200, 200, 200, 200, 50_000), 210, False),  # back to usual after a (forced) spike
        ((200, 200, 200, 200, 50_000), 50_100, False),  # the spike, grown a little: not sudden
        ((200, 200, 50_000), 5000, False),  # between the two: neither a shrink nor a growth
        ((1000, 1000, 700, 500), 300, False),  # gradual shrink: half of what is in force, no more
        ((1000, 1000, 1000, 1000), 400, True),
        ((), 1_000_000, False),  # a new list has nothing to compare with
    ],
)
def test_size_baseline_table(history: tuple[int, ...], total: int, held: bool) -> None:
    from proxy_addons.refresh.validate import SizeBaseline

    reason = SizeBaseline.of(history).check(total)
    assert (reason is not None) is held, reason


def test_duplicate_lines_are_not_entries() -> None:
    body = domains(200) * 50  # 10,000 lines, 200 rules
    v = validate_body(body, fmt="domains", previous_total=200)
    assert v.accepted and v.entries == {"domain": 200} and v.total == 200


def test_a_list_padded_with_duplicates_is_not_growth_and_its_return_is_not_shrinkage() -> None:
    # Counted by lines, 200 -> 10,000 -> 200 would be held on the way back.
    from proxy_addons.refresh.validate import SizeBaseline

    baseline = SizeBaseline.of([200])
    padded = validate_body(domains(200) * 50, fmt="domains", baseline=baseline)
    assert padded.accepted and padded.distinct == 200
    back = validate_body(domains(200), fmt="domains", baseline=baseline.after(padded.distinct))
    assert back.accepted


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def feed(server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest):
    name = "g" + str(abs(hash(request.node.name)) % 10**8)
    server.feed(name, domains(200))
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}))
    return name, src, tmp_path / "cache"


def make(src: Path, cache: Path) -> Refresher:
    return Refresher(load_sources(src), cache, policy=FAST, isolate=False)


def blocks(cache: Path, src: Path, host: str) -> bool:
    engine, _ = load_engine(load_sources(src).sources, cache)
    return engine.check_url(f"http://{host}/").blocked


async def test_sudden_growth_is_held_back_and_says_why(server: FeedServer, feed) -> None:
    name, src, cache = feed
    assert (await make(src, cache).refresh()).outcomes[name].status == "updated"
    server.feeds[name].body = domains(200) + domains(20_000, prefix="fp")
    r = make(src, cache)
    report = await r.refresh()
    out = report.outcomes[name]
    assert out.status == "held_back" and "grew from 200 to 20200" in (out.detail or "")
    assert report.snapshot is None and not blocks(cache, src, "fp7.example")
    assert blocks(cache, src, "bad7.example")  # the last good list stays in force
    status = {d["name"]: d for d in r.status()["sources"]}[name]
    assert status["health"] == "held_back" and "grew from 200" in status["held_back"]


async def test_a_forced_spike_does_not_lock_in(server: FeedServer, feed) -> None:
    name, src, cache = feed
    for extra in range(3):  # a few normal days: 200, 201, 202 rules
        server.feeds[name].body = domains(200 + extra)
        assert (await make(src, cache).refresh()).outcomes[name].status == "updated"
    server.feeds[name].body = domains(202) + domains(20_000, prefix="fp")
    forced = await make(src, cache).refresh(force=True)
    assert forced.outcomes[name].status == "updated" and blocks(cache, src, "fp7.example")
    # The feed returns to its usual size: accepted without --force, the spike's rules go.
    server.feeds[name].body = domains(203)
    back = await make(src, cache).refresh()
    assert back.outcomes[name].status == "updated", back.outcomes[name].detail
    assert not blocks(cache, src, "fp7.example") and blocks(cache, src, "bad202.example")


async def test_an_accepted_spike_does_not_lock_in(server: FeedServer, feed) -> None:
    # A spike small enough to pass the growth guard (3.5x) must not become the baseline
    # that holds the normal list back.
    name, src, cache = feed
    server.feeds[name].body = domains(1000)
    assert (await make(src, cache).refresh()).outcomes[name].status == "updated"
    server.feeds[name].body = domains(1000) + domains(2500, prefix="fp")
    assert (await make(src, cache).refresh()).outcomes[name].status == "updated"
    server.feeds[name].body = domains(1000)
    back = await make(src, cache).refresh()
    assert back.outcomes[name].status == "updated", back.outcomes[name].detail
    assert not blocks(cache, src, "fp7.example")


async def test_duplicates_do_not_count_in_the_state(server: FeedServer, feed) -> None:
    name, src, cache = feed
    server.feeds[name].body = domains(200) * 20
    await make(src, cache).refresh()
    st = load_state(cache, load_sources(src).sources[0])
    assert st.entries_total == 200
    assert SnapshotStore(cache).read_pointer()["lists"][name]["rules"] == 200


@pytest.mark.parametrize("lost", ["state", "state+body"])
async def test_losing_the_state_file_keeps_the_shrink_guard(
    server: FeedServer, feed, lost: str
) -> None:
    name, src, cache = feed
    server.feeds[name].body = domains(1000)
    await make(src, cache).refresh()
    state_path(cache, name).unlink()
    if lost == "state+body":
        feed_body_path(cache, name).unlink()
    server.feeds[name].body = domains(10)
    report = await make(src, cache).refresh()
    out = report.outcomes[name]
    # Measured against the counts recorded with the snapshot in force.
    assert out.status == "held_back" and "shrank from 1000 to 10" in (out.detail or "")
    assert blocks(cache, src, "bad999.example")


async def test_a_snapshot_from_before_the_size_history_still_guards(
    server: FeedServer, feed
) -> None:
    # A cache written by an earlier jectguard records per-list counts as plain numbers.
    name, src, cache = feed
    server.feeds[name].body = domains(1000)
    await make(src, cache).refresh()
    store = SnapshotStore(cache)
    pointer = store.read_pointer()
    pointer["lists"] = {name: 1000}
    for key in ("holds", "content"):
        pointer.pop(key, None)
    store.pointer_path.write_text(json.dumps(pointer))
    state_path(cache, name).unlink()
    server.feeds[name].body = domains(10)
    out = (await make(src, cache).refresh()).outcomes[name]
    assert out.status == "held_back" and "shrank from 1000 to 10" in (out.detail or "")
