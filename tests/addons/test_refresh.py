"""The refresh addon in mitmproxy's test context: roles, options, one owned task, swaps."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import exceptions
from mitmproxy.test import taddons

from proxy_addons.addons import EngineHolder, make_addons
from proxy_addons.addons.refresh import Refresh
from proxy_addons.core.engine import Engine
from proxy_addons.lists.sources import load_sources
from proxy_addons.refresh.feeds import FetchPolicy
from proxy_addons.refresh.refresher import Refresher
from tests.feedserver import FeedServer, feed_server, sources_toml

BODY = b"".join(b"bad%d.example\n" % i for i in range(50))


class SwapWatch(EngineHolder):
    __slots__ = ("changed",)

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.changed = asyncio.Event()

    def swap(self, new: Engine) -> Engine:
        old = super().swap(new)
        self.changed.set()
        return old


async def until(holder: SwapWatch, host: str) -> None:
    async with asyncio.timeout(20):
        while True:
            holder.changed.clear()
            if holder.engine.check_url(f"http://{host}/").blocked:
                return
            await holder.changed.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


@pytest.fixture
def sources(server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    name = "a" + str(abs(hash(request.node.name)) % 10**8)
    server.feed(name, BODY)
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {name: "domains"}))
    return name, src


def empty_holder() -> SwapWatch:
    return SwapWatch(Engine.from_lists([])[0])


async def test_loads_next_to_mitmproxy_and_our_addons() -> None:
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        holder = EngineHolder(Engine.from_lists([])[0])
        tctx.master.addons.add(*make_addons(holder))  # make_addons includes Refresh
        assert tctx.master.addons.get("jectguard_refresh") is not None
        assert tctx.options.jg_refresh_role == "off"


async def test_off_starts_nothing(sources, tmp_path: Path) -> None:
    addon = Refresh(empty_holder())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_sources=str(sources[1]), jg_cache_dir=str(tmp_path / "c"))
        await addon.running()
        assert addon.task is None
        await addon.done()


async def test_bad_options(tmp_path: Path) -> None:
    addon = Refresh(empty_holder())
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jg_sources"):
            tctx.configure(addon, jg_sources=str(tmp_path / "missing.toml"))
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, jg_refresh_role="sometimes")


async def test_refresh_role_fetches_publishes_and_swaps(
    server: FeedServer, sources, tmp_path: Path
) -> None:
    name, src = sources
    holder = empty_holder()
    addon = Refresh(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, jg_refresh_role="refresh", jg_sources=str(src), jg_cache_dir=str(tmp_path / "c")
        )
        await addon.running()
        task = addon.task
        assert task is not None and not task.done()
        await until(holder, "bad3.example")  # fetched at start, compiled in a worker, swapped
        assert holder.engine.block.path is not None  # served from the published snapshot
        server.feeds[name].body = BODY + b"new-threat.example\n"
        assert addon.refresher is not None
        addon.refresher.refresh_soon(name)
        await until(holder, "new-threat.example")  # a new entry blocks, no restart
        await addon.done()
        assert task.done() and addon.task is None


async def test_watch_role_follows_another_publisher(
    server: FeedServer, sources, tmp_path: Path
) -> None:
    name, src = sources
    cache = tmp_path / "c"
    holder = empty_holder()
    addon = Refresh(holder)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, jg_refresh_role="watch", jg_sources=str(src), jg_cache_dir=str(cache))
        await addon.running()
        assert addon.task is not None
        # The refresher of the deployment (another process in real life) publishes.
        policy = FetchPolicy(connect_timeout=2, read_timeout=2, total_timeout=5)
        await Refresher(load_sources(src), cache, policy=policy, isolate=False).refresh()
        await until(holder, "bad7.example")
        assert len(server.hits_for(name)) == 1  # the watcher downloaded nothing
        await addon.done()


async def test_changing_role_restarts_the_task(sources, tmp_path: Path) -> None:
    addon = Refresh(empty_holder())
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, jg_refresh_role="watch", jg_sources=str(sources[1]), jg_cache_dir=str(tmp_path)
        )
        await addon.running()
        first = addon.task
        tctx.configure(addon, jg_refresh_role="off")
        assert addon.task is None and first is not None
        await asyncio.gather(first, return_exceptions=True)
        assert first.cancelled()
        await addon.done()


@pytest.mark.parametrize("to", ["watch", "off"])
async def test_leaving_the_refresh_role_drops_the_refresher(
    sources, tmp_path: Path, to: str
) -> None:
    # The admin API asks this addon to refresh: once this process no longer refreshes it
    # must answer "not here" (None), not "started" from a refresher whose task was cancelled.
    addon = Refresh(empty_holder())
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, jg_refresh_role="refresh", jg_sources=str(sources[1]), jg_cache_dir=str(tmp_path)
        )
        await addon.running()
        assert addon.trigger() is True and addon.status() is not None
        first = addon.task
        tctx.configure(addon, jg_refresh_role=to)
        await asyncio.gather(first, return_exceptions=True)
        assert addon.refresher is None
        assert addon.trigger() is None and addon.status() is None
        await addon.done()
