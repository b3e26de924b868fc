"""A fetch's life in the refresher: in progress until its task ends (not a loop turn longer),
and however it ends, its source gets its next turn.

CI once saw ``status()`` call a source "fetching" after its task had ended, and a test
that looped ``while r._fetching: await gather(...)`` hang. asyncio runs a task's done
callbacks a loop turn after the task ends, and the refresher unregistered a fetch in
one; in that turn the ended fetch was still "in progress", and a ``gather`` of a task
that has ended returns without yielding (Python 3.12), so a loop on it never let the
callback run. These tests open that turn on purpose: ``on_report`` (the addon's event
hook) runs as the fetch's last step, and a ``call_soon`` from it runs after the task has
ended but before its done callbacks. mitmproxy runs the refresher with eager tasks (a
task's first step runs inside ``create_task``), so the tests do too where it matters.

Each test drives the real refresher against tests/feedserver.py on loopback, with real
files in a temp cache; the background-loop tests run ``Refresher.run`` on a clock the
test moves, so "when due" needs no waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.admin.app import fetch_plan
from proxy_addons.lists.sources import load_sources
from proxy_addons.refresh.feeds import FetchPolicy, load_state
from proxy_addons.refresh.refresher import FAILURE_RETRY_SECONDS, Refresher, RefreshReport
from tests.feedserver import FeedServer, feed_server, sources_toml

# Patient enough for a feed that holds its answer back (hang) longer than a test needs.
FAST = FetchPolicy(connect_timeout=2, read_timeout=10, total_timeout=20, attempts=1, backoff=0.01)
BODY = b"one.example\ntwo.example\n"


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


def unique(request: pytest.FixtureRequest, prefix: str) -> str:
    return prefix + str(abs(hash(request.node.name)) % 10**8)


def write_sources(tmp_path: Path, server: FeedServer, name: str) -> Path:
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}))
    return src


class Tasks:
    """The loop's task factory while installed: plain or eager (as mitmproxy runs), and a
    record of every task made, so a test can find the refresher's fetch tasks by name."""

    def __init__(self, *, eager: bool) -> None:
        self.eager = eager
        self.made: list[asyncio.Task[Any]] = []

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, eager_start=self.eager, **kw)
        self.made.append(task)
        return task

    @contextlib.contextmanager
    def installed(self) -> Iterator[Tasks]:
        loop = asyncio.get_running_loop()
        before = loop.get_task_factory()
        loop.set_task_factory(self)
        try:
            yield self
        finally:
            loop.set_task_factory(before)

    def fetches(self, name: str) -> list[asyncio.Task[Any]]:
        # Named after the factory returns (create_task sets it), so looked up here.
        return [t for t in self.made if t.get_name() == f"jectguard-fetch-{name}"]


def fetching(r: Refresher, name: str) -> bool:
    return bool(fetch_plan(r.status())[name]["fetching"])


async def until(cond: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait (bounded) until ``cond`` holds, letting the loop turn in between."""
    try:
        async with asyncio.timeout(seconds):
            # noqa: ASYNC110 - the server thread's hits and the refresher's state: no event
            while not cond():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {seconds} s: {what}") from None


def right_after_each_fetch(act: Callable[[], None]) -> Callable[[RefreshReport], None]:
    """An on_report hook that runs ``act`` once the fetch's task has ended, in the loop
    turn before its done callbacks run (on_report is the task's last step)."""
    loop = asyncio.get_running_loop()

    def on_report(report: RefreshReport) -> None:
        loop.call_soon(act)

    return on_report


# -- the turn after a fetch ends -------------------------------------------------------


@pytest.mark.parametrize("eager", [False, True], ids=["tasks", "eager-tasks"])
async def test_an_ended_fetch_is_not_shown_as_fetching(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest, eager: bool
) -> None:
    name = unique(request, "ended")
    server.feed(name, BODY)
    seen: list[bool] = []
    tasks = Tasks(eager=eager)
    r = Refresher(
        load_sources(write_sources(tmp_path, server, name)),
        tmp_path / "cache",
        policy=FAST,
        isolate=False,
        on_report=right_after_each_fetch(lambda: seen.append(fetching(r, name))),
    )
    with tasks.installed():
        report = await r.refresh()
    assert report.outcomes[name].status == "updated"
    (task,) = tasks.fetches(name)
    assert task.done()
    # The turn after it ended: status (the admin API's) no longer calls it fetching.
    assert seen == [False]


async def test_a_refresh_asked_as_a_fetch_ends_fetches_again(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A refresh asked for once a fetch has ended is a new fetch, not that fetch's outcome
    (the feed may have changed since it was read)."""
    name = unique(request, "again")
    server.feed(name, BODY)
    later: list[asyncio.Task[RefreshReport]] = []

    def ask() -> None:
        if not later:  # once: the second fetch reports too
            later.append(asyncio.get_running_loop().create_task(r.refresh()))

    r = Refresher(
        load_sources(write_sources(tmp_path, server, name)),
        tmp_path / "cache",
        policy=FAST,
        isolate=False,
        on_report=right_after_each_fetch(ask),
    )
    with Tasks(eager=True).installed():  # mitmproxy's: the refresh starts inside ask()
        first = await r.refresh()
        assert later, "the hook did not run"
        second = await asyncio.wait_for(later[0], 10)
    assert second.outcomes[name] is not first.outcomes[name]
    assert [h.status for h in server.hits_for(name)] == [200, 304]
    assert second.outcomes[name].status == "unchanged"


# -- the background loop: every ended fetch leads to the next -----------------------------


class Clock:
    """The refresher's clock, moved by the test; counts its readings (loop turns read it)."""

    def __init__(self) -> None:
        self.now = time.time()
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def loop_refresher(tmp_path: Path, server: FeedServer, name: str, clock: Clock) -> Refresher:
    return Refresher(
        load_sources(write_sources(tmp_path, server, name)),
        tmp_path / "cache",
        policy=FAST,
        isolate=False,
        startup_spread=0,
        poll=0.01,
        clock=clock,
    )


@contextlib.asynccontextmanager
async def running(r: Refresher) -> Any:
    task = asyncio.get_running_loop().create_task(r.run(), name="test-refresher")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_background_loop_fetches_a_source_again_each_time_it_is_due(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "loop")
    server.feed(name, BODY)
    clock = Clock()
    r = loop_refresher(tmp_path, server, name, clock)

    def hits() -> int:
        return len(server.hits_for(name))

    def fetched(n: int) -> Callable[[], bool]:
        return lambda: hits() == n and not fetching(r, name)

    tasks = Tasks(eager=True)
    with tasks.installed():
        async with running(r):
            for n in (1, 2, 3):
                await until(fetched(n), f"fetch {n}")
                assert r.schedule[name] > clock.now, "due again at once"
                clock.now = r.schedule[name]  # its next turn comes
            await until(fetched(4), "fetch 4")

            # The server asks us to wait an hour: the loop waits, however often it turns
            # and however often the admin API asks.
            server.feeds[name].fail = [(429, {"Retry-After": "3600"})]
            clock.now = r.schedule[name]
            await until(fetched(5), "the 429")
            not_before = clock.now + 3600
            assert r.schedule[name] >= not_before

            def started() -> int:
                return len(tasks.fetches(name))

            async def ask_while_deferred() -> None:
                before = started()
                assert r.trigger() is True
                await until(lambda: started() == before + 1 and not fetching(r, name), "deferral")
                assert r.schedule[name] >= not_before
                reads = clock.reads
                await until(lambda: clock.reads > reads + 20, "loop turns")
                assert started() == before + 1, "a deferred source fetched again and again"

            for _ in range(3):
                await ask_while_deferred()
            assert hits() == 5
            clock.now = not_before + 1  # the wait is over: fetched again
            await until(fetched(6), "the fetch after the wait")
    assert [h.status for h in server.hits_for(name)] == [200, 304, 304, 304, 429, 304]
    assert load_state(tmp_path / "cache", r.url_specs[0]).last_error is None


async def test_a_cancelled_refresh_does_not_end_the_loops_fetch(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A refresh() that joins the fetch in progress and is then cancelled stops waiting;
    the fetch goes on and its outcome is recorded (it was not that caller's alone)."""
    name = unique(request, "shared")
    server.feed(name, BODY, hang=2.0)
    clock = Clock()
    r = loop_refresher(tmp_path, server, name, clock)
    with Tasks(eager=True).installed():
        async with running(r):
            await until(lambda: fetching(r, name) and len(server.hits_for(name)) == 1, "fetching")
            caller = asyncio.get_running_loop().create_task(r.refresh())
            await asyncio.sleep(0)
            caller.cancel()
            await asyncio.gather(caller, return_exceptions=True)
            assert caller.cancelled()
            await until(lambda: not fetching(r, name), "the fetch's end")
    state = load_state(tmp_path / "cache", r.url_specs[0])
    assert state.last_success is not None and state.entries_total == 2
    assert r.schedule[name] >= clock.now + 300  # its normal turn (refresh 5m)
    assert len(server.hits_for(name)) == 1


async def test_a_fetch_that_is_cancelled_gets_its_turn_again(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """However a fetch ends (here cancelled mid-download), the loop fetches it again when
    due, not an hour later (the turn the loop parks it at while it runs)."""
    name = unique(request, "cancel")
    server.feed(name, BODY, hang=30.0)
    clock = Clock()
    r = loop_refresher(tmp_path, server, name, clock)
    tasks = Tasks(eager=True)
    with tasks.installed():
        async with running(r):
            await until(lambda: fetching(r, name) and len(server.hits_for(name)) == 1, "fetching")
            (fetch,) = tasks.fetches(name)
            fetch.cancel()
            await until(lambda: not fetching(r, name), "the fetch's end")
            assert clock.now < r.schedule[name] <= clock.now + FAILURE_RETRY_SECONDS
            server.feeds[name].hang = 0.0
            clock.now = r.schedule[name]
            await until(lambda: len(server.hits_for(name)) == 2 and not fetching(r, name), "again")
    assert load_state(tmp_path / "cache", r.url_specs[0]).last_success is not None


async def test_asking_for_a_name_that_is_no_source_leaves_the_loop_idle(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """refresh_soon() with a name that is not a URL source (a typo, a local list, a source
    since removed) must not leave a due turn that nothing takes: the loop would wake at its
    shortest wait (50 ms) for ever, re-reading the store each time."""
    name = unique(request, "idle")
    server.feed(name, BODY)
    clock = Clock()
    r = Refresher(
        load_sources(write_sources(tmp_path, server, name)),
        tmp_path / "cache",
        policy=FAST,
        isolate=False,
        startup_spread=0,
        poll=60.0,
        clock=clock,
    )
    async with running(r):
        await until(lambda: len(server.hits_for(name)) == 1 and not fetching(r, name), "fetch")
        await until(lambda: not r.status()["rebuild"]["running"], "the rebuild")
        r.refresh_soon("no-such-source")
        await asyncio.sleep(0.05)  # the one turn the request wakes
        reads = clock.reads
        await asyncio.sleep(1.0)  # a busy loop turns ~20 times here; an idle one not at all
        turns = (clock.reads - reads) // 2
    assert turns <= 2, f"the loop turned {turns} times with nothing due"
    assert r.schedule[name] > clock.now
