"""The feed fetcher against a local feed server: conditional GET, gzip, timeouts, caps, retries."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from proxy_addons.core.model import ListSpec
from proxy_addons.lists.files import feed_body_path
from proxy_addons.refresh import feeds
from proxy_addons.refresh.feeds import (
    DEFAULT_POLICY,
    USER_AGENT,
    FetchPolicy,
    SourceState,
    backoff_delay,
    clean_partials,
    commit_body,
    fetch,
    load_state,
    parse_retry_after,
    save_state,
    state_path,
)
from tests.feedserver import FeedServer, feed_server

FAST = FetchPolicy(
    connect_timeout=2,
    read_timeout=0.5,
    total_timeout=3,
    attempts=3,
    backoff=0.01,
    retry_after_max=2,
)
BODY = b"".join(b"bad%d.example\n" % i for i in range(100))


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def session() -> None:
    """Each fetch makes its own session now (its resolver depends on the feed's URL)."""
    return None


@pytest.fixture(autouse=True)
def release_temp_bodies() -> Iterator[None]:
    """Fetched bodies a test neither commits nor discards are released after it."""
    yield
    for tmp in list(feeds._HELD):
        feeds.discard(tmp)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def _spec(server: FeedServer, name: str) -> ListSpec:
    return ListSpec(name, url=server.url(name), format="domains")


async def _get(server, session, tmp_path, name, state=None, policy=FAST, sleep=None):
    spec = _spec(server, name)
    state = state or SourceState(name)
    kw = {"sleep": sleep} if sleep is not None else {}
    return await fetch(spec, state, tmp_path, policy, **kw)


async def test_fetch_then_304(server: FeedServer, session, tmp_path: Path) -> None:
    server.feed("cond", BODY, last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    r = await _get(server, session, tmp_path, "cond")
    assert r.status == "new" and r.tmp is not None and r.tmp.read_bytes() == BODY
    assert r.etag and r.last_modified == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert server.hits_for("cond")[-1].headers["User-Agent"] == USER_AGENT
    commit_body(tmp_path, "cond", r.tmp)
    assert feed_body_path(tmp_path, "cond").read_bytes() == BODY
    state = SourceState("cond", etag=r.etag, last_modified=r.last_modified, body_sha256=r.sha256)
    r2 = await _get(server, session, tmp_path, "cond", state)
    assert r2.status == "not_modified" and r2.tmp is None
    sent = server.hits_for("cond")[-1].headers
    assert sent["If-None-Match"] == r.etag and sent["If-Modified-Since"] == r.last_modified


async def test_no_conditional_get_without_a_body(
    server: FeedServer, session, tmp_path: Path
) -> None:
    server.feed("nobody", BODY)
    state = SourceState("nobody", etag=server.feeds["nobody"].tag())
    r = await _get(server, session, tmp_path, "nobody", state)
    assert r.status == "new"  # the cached body is gone: a 304 would leave us with nothing
    assert "If-None-Match" not in server.hits_for("nobody")[-1].headers


async def test_gzip_is_decoded(server: FeedServer, session, tmp_path: Path) -> None:
    server.feed("gz", BODY, gzip=True)
    r = await _get(server, session, tmp_path, "gz")
    assert r.status == "new" and r.tmp.read_bytes() == BODY
    assert "gzip" in server.hits_for("gz")[-1].headers["Accept-Encoding"]


@pytest.mark.parametrize(
    ("name", "kw", "expect"),
    [
        ("e500", {"status": 500}, "HTTP 500"),
        ("hang", {"hang": 5.0}, "timed out"),
        ("mid", {"close_mid_body": True}, "broken off"),
        ("badgz", {"bad_gzip": True}, "undecodable"),
    ],
)
async def test_failures_are_retried_then_reported(
    server: FeedServer, session, tmp_path: Path, name: str, kw: dict, expect: str
) -> None:
    server.feed(name, BODY, **kw)
    sleeps = Sleeps()
    t0 = time.monotonic()
    r = await _get(server, session, tmp_path, name, sleep=sleeps)
    assert r.status == "failed" and expect in (r.error or ""), r.error
    assert r.attempts == FAST.attempts and len(sleeps.delays) == FAST.attempts - 1
    assert len(server.hits_for(name)) == FAST.attempts
    assert time.monotonic() - t0 < 10
    assert not list((tmp_path / "feeds").glob("*.part"))  # nothing half-written left behind


async def test_404_is_not_retried(server: FeedServer, session, tmp_path: Path) -> None:
    r = await _get(server, session, tmp_path, "missing-feed", sleep=Sleeps())
    assert r.status == "failed" and r.attempts == 1 and "404" in r.error


async def test_transient_500_then_success(server: FeedServer, session, tmp_path: Path) -> None:
    server.feed("flaky", BODY, fail=[(500, {}), (502, {})])
    sleeps = Sleeps()
    r = await _get(server, session, tmp_path, "flaky", sleep=sleeps)
    assert r.status == "new" and r.attempts == 3 and len(sleeps.delays) == 2


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_respected(
    server: FeedServer, session, tmp_path: Path, status: int
) -> None:
    name = f"ra{status}"
    server.feed(name, BODY, fail=[(status, {"Retry-After": "1"})])
    sleeps = Sleeps()
    r = await _get(server, session, tmp_path, name, sleep=sleeps)
    assert r.status == "new" and sleeps.delays == [1.0]


async def test_long_retry_after_ends_the_run(server: FeedServer, session, tmp_path: Path) -> None:
    server.feed("ralong", BODY, fail=[(429, {"Retry-After": "3600"})])
    sleeps = Sleeps()
    r = await _get(server, session, tmp_path, "ralong", sleep=sleeps)
    assert r.status == "failed" and r.retry_after == 3600 and sleeps.delays == []
    assert len(server.hits_for("ralong")) == 1


async def test_body_over_the_cap_is_aborted_while_streaming(
    server: FeedServer, session, tmp_path: Path
) -> None:
    server.feed("huge", stream_forever=True)
    cap = 2 * 1024 * 1024
    policy = FetchPolicy(
        connect_timeout=2, read_timeout=2, total_timeout=10, attempts=3, max_bytes=cap
    )
    before = server.streamed
    r = await _get(server, session, tmp_path, "huge", policy=policy, sleep=Sleeps())
    assert r.status == "failed" and "cap" in r.error and r.attempts == 1
    assert server.streamed - before < 50 * cap  # the download stopped; it was not read to the end
    assert not list((tmp_path / "feeds").glob("*.part"))


async def test_declared_length_over_the_cap(server: FeedServer, session, tmp_path: Path) -> None:
    server.feed("big", BODY * 100)
    policy = FetchPolicy(connect_timeout=2, read_timeout=2, total_timeout=5, max_bytes=1000)
    r = await _get(server, session, tmp_path, "big", policy=policy, sleep=Sleeps())
    assert r.status == "failed" and "cap" in r.error


async def test_session_ignores_proxy_environment(
    server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy variable pointing at a dead port: a session honouring it would fail.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    server.feed("direct", BODY)
    r = await _get(server, None, tmp_path, "direct")
    assert r.status == "new"


def test_state_round_trip(tmp_path: Path) -> None:
    spec = ListSpec("s", url="http://127.0.0.1:1/s")
    st = load_state(tmp_path, spec)
    assert st.url == spec.url and st.last_attempt is None
    st.etag, st.entries, st.held_back = '"x"', {"domain": 3}, "shrank"
    save_state(tmp_path, st)
    again = load_state(tmp_path, spec)
    assert again == st
    # A changed URL forgets the validators; a corrupt file starts afresh.
    assert load_state(tmp_path, ListSpec("s", url="http://127.0.0.1:1/t")).etag is None
    state_path(tmp_path, "s").write_text("{broken")
    assert load_state(tmp_path, spec) == SourceState("s", url=spec.url)


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 60) == 60
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    p = FetchPolicy(backoff=2, backoff_max=10)
    for attempt, cap in [(1, 2), (2, 4), (3, 8), (4, 10), (9, 10)]:
        d = backoff_delay(p, attempt)
        assert cap / 2 <= d <= cap


def test_clean_partials(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    old, new = feeds / "a.body.1.part", feeds / "b.body.2.part"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    clean_partials(tmp_path)
    assert not old.exists() and new.exists()


async def test_a_body_is_read_no_faster_than_the_policys_rate(
    server: FeedServer, session, tmp_path: Path
) -> None:
    # Paced so a fast download does not take the proxy's event loop in bursts: 1.5 MB
    # at 3 MB/s cannot arrive in less than 0.5 s, and arrives whole.
    body = b"".join(b"paced%07d.example\n" % i for i in range(1_500_000 // 22))
    server.feed("paced", body)
    policy = replace(FAST, max_rate=3_000_000, read_timeout=5, total_timeout=20)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await _get(server, session, tmp_path, "paced", policy=policy)
    elapsed = loop.time() - t0
    assert r.status == "new" and r.tmp is not None and r.tmp.read_bytes() == body
    assert elapsed >= len(body) / 3_000_000 - 0.1  # 64 KB chunks: the last one's time is not waited
    assert DEFAULT_POLICY.max_rate > 0  # the proxy's own fetches are paced
