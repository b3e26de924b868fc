"""Fault injection against the refresh pipeline (issue 12, items 1, 5, 6, 7, 9, 13): a feed
server that cuts streams at any byte, drips, redirects inward, asks us to wait, or dates its
list in the future; and what killed runs leave in the cache.

Each test drives the real refresher (or the real fetcher) against tests/feedserver.py on
loopback, with real files in a temp cache.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.admin.app import fetch_plan
from proxy_addons.core.codings import CodingError, decode_all
from proxy_addons.core.engine import Engine
from proxy_addons.core.errors import SourceConfigError
from proxy_addons.core.model import ListSpec
from proxy_addons.lists.files import feed_body_path
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore, load_engine
from proxy_addons.refresh.feeds import (
    MAX_RETRY_AFTER,
    FetchPolicy,
    Reach,
    SourceState,
    clean_partials,
    conditional_headers,
    discard,
    fetch,
    is_public_address,
    load_state,
    parse_retry_after,
    tidy_feed_dir,
    usable_last_modified,
)
from proxy_addons.refresh.refresher import Refresher, source_status
from tests.feedserver import FeedServer, encode, feed_server, sources_toml

FAST = FetchPolicy(connect_timeout=2, read_timeout=1, total_timeout=4, attempts=1, backoff=0.01)
# A policy that calls 127.0.0.2 public, so a feed there stands for one on the internet.
PUBLIC_ALT = FetchPolicy(
    connect_timeout=2,
    read_timeout=1,
    total_timeout=4,
    attempts=2,
    backoff=0.01,
    is_public=lambda ip: ip == "127.0.0.2" or is_public_address(ip),
)
PHISH = b"login.microsoftonline.com.phish-kit.example\n"


def listing(n: int = 400) -> bytes:
    """A domains list whose cut points fall mid-line, with the issue's trap line in the middle."""
    half = n // 2
    head = b"".join(b"bad%d.example\n" % i for i in range(half))
    tail = b"".join(b"bad%d.example\n" % i for i in range(half, n))
    return head + PHISH + tail


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


def write_sources(tmp_path: Path, server: FeedServer, feeds: dict[str, str], **kw: object) -> Path:
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, feeds, **kw))  # type: ignore[arg-type]
    return src


def blocked(engine: Engine, host: str) -> bool:
    return engine.check_url(f"http://{host}/").blocked


def unique(request: pytest.FixtureRequest, prefix: str) -> str:
    return prefix + str(abs(hash(request.node.name)) % 10**8)


# -- item 1: a cut body is never the list -------------------------------------------


async def test_truncated_gzip_keeps_the_last_good_list(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The issue's case, at many cut points: a gzip stream cut and served with a matching
    Content-Length (a "complete" transfer) must fail, and the login host stays unblocked."""
    name = unique(request, "gz")
    good = listing()
    server.feed(name, good, encoding="gzip", etag=False)
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).ok
    body_before = feed_body_path(cache, name).read_bytes()
    snap_before = SnapshotStore(cache).current_path()
    full = encode(good, "gzip")
    # Property-style: cuts spread over the whole stream, including the trailer bytes.
    cuts = sorted({*range(10, len(full), max(1, len(full) // 24)), len(full) - 1, len(full) - 4})
    for cut in cuts:
        server.feeds[name].cut_at = cut
        report = await r.refresh()
        assert report.outcomes[name].status == "failed", (cut, report.outcomes[name])
        assert feed_body_path(cache, name).read_bytes() == body_before, cut
        assert SnapshotStore(cache).current_path() == snap_before, cut
        assert "incomplete" in (load_state(cache, r.url_specs[0]).last_error or ""), cut
    assert not list((cache / "feeds").glob("*.part"))


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "br", "zstd", None])
@pytest.mark.parametrize("how", ["length", "close", "chunked", "eof"])
async def test_every_cut_of_every_coding_fails(
    server: FeedServer, tmp_path: Path, coding: str | None, how: str
) -> None:
    """Every layer must prove it ended: transfer (length, chunked terminator) and coding."""
    name = f"cut-{coding}-{how}"
    body = listing(300)
    full = encode(body, coding) if coding else body
    spec = ListSpec(name, url=server.url(name), format="domains")
    step = max(1, len(full) // 12)
    for cut in sorted({*range(0, len(full), step), len(full) - 1}):
        if coding is None and how == "length":
            continue  # a plain body of the length announced *is* whole: nothing to tell
        server.feed(name, body, encoding=coding, cut_at=cut, cut_how=how, etag=False)
        r = await fetch(spec, SourceState(name), tmp_path, FAST)
        assert r.status == "failed", (cut, len(full), r.error)
    # The uncut answer passes when its framing proves its end; close-delimited never does.
    server.feed(name, body, encoding=coding, cut_at=len(full), cut_how=how, etag=False)
    r = await fetch(spec, SourceState(name), tmp_path, FAST)
    if how in ("length", "close"):
        assert r.status == "new" and r.tmp is not None and r.tmp.read_bytes() == body, r.error
    else:
        # chunked without its terminator, or a connection close: not proven whole.
        assert r.status == "failed", r.error
    discard(r.tmp)
    assert not list((tmp_path / "feeds").glob("*.part"))


async def test_plain_body_ended_by_closing_is_refused(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No length, no chunking: a list cut mid-line looks whole, so none is taken that way."""
    name = unique(request, "eof")
    good = listing()
    server.feed(name, good, etag=False)
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).ok
    cut = good.index(PHISH) + len(b"login.microsoftonline.com")
    server.feeds[name].cut_at, server.feeds[name].cut_how = cut, "eof"
    report = await r.refresh()
    assert report.outcomes[name].status == "failed"
    assert "closing the connection" in (report.outcomes[name].detail or "")


def test_strict_decoders_reject_trailing_garbage_and_bad_checksums() -> None:
    body = listing(200)
    for coding in ("gzip", "deflate", "zstd", "br"):
        raw = encode(body, coding)
        assert decode_all(raw, coding, piece=1000) == body
        with pytest.raises(CodingError):
            decode_all(raw + b"\0junk", coding)
        with pytest.raises(CodingError):
            decode_all(raw[:-3], coding)
    gz = bytearray(encode(body, "gzip"))
    gz[-6] ^= 0xFF  # the CRC-32 of the trailer
    with pytest.raises(CodingError, match="corrupt"):
        decode_all(bytes(gz), "gzip")
    with pytest.raises(CodingError, match="unsupported"):
        decode_all(body, "compress")
    with pytest.raises(CodingError, match="stacked"):
        decode_all(body, "gzip, gzip, gzip")


# -- item 5: validators ------------------------------------------------------------------


async def test_future_last_modified_does_not_freeze_the_feed(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "lm")
    server.feed(name, listing(), etag=False, last_modified="Fri, 01 Jan 2100 00:00:00 GMT")
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).outcomes[name].status == "updated"
    assert load_state(cache, r.url_specs[0]).last_modified is None  # not kept: from the future
    # The server's clock is fixed and the list changes: we must see it, not a 304 forever.
    feed = server.feeds[name]
    feed.body = listing() + b"fresh-threat.example\n"
    feed.last_modified = "Sat, 05 Dec 2026 00:00:00 GMT"
    report = await r.refresh()
    assert report.outcomes[name].status == "updated", report.outcomes[name]
    assert "If-Modified-Since" not in server.hits_for(name)[-1].headers
    eng, _ = load_engine(load_sources(src).enabled(), cache)
    assert blocked(eng, "fresh-threat.example")


def test_last_modified_after_the_response_date_is_absent() -> None:
    now = 1_800_000_000.0
    date = "Fri, 15 Jan 2027 08:00:00 GMT"
    assert usable_last_modified("Fri, 15 Jan 2027 07:00:00 GMT", now=now, date=date)
    assert usable_last_modified("Fri, 15 Jan 2027 09:00:00 GMT", now=now, date=date) is None
    assert usable_last_modified("Fri, 01 Jan 2100 00:00:00 GMT", now=now) is None
    assert usable_last_modified("yesterday", now=now) is None


async def test_validators_only_for_the_body_they_came_with(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A body replaced under the state (a rollback, a restore, damage) is never kept by a 304."""
    name = unique(request, "bind")
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).ok
    st = load_state(cache, r.url_specs[0])
    assert conditional_headers(cache, st, time.time())  # the body on disk is the one they describe
    feed_body_path(cache, name).write_bytes(b"other.example\n")
    assert conditional_headers(cache, st, time.time()) == {}
    report = await r.refresh()
    assert "If-None-Match" not in server.hits_for(name)[-1].headers
    assert report.outcomes[name].status == "updated"
    assert feed_body_path(cache, name).read_bytes() == listing()


# -- item 6: redirects -------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/secret",  # loopback literal
        "http://localhost:{port}/secret",  # a name resolving to loopback
        "http://[::ffff:127.0.0.1]:{port}/secret",  # IPv4-mapped IPv6
        "http://0.0.0.0:{port}/secret",
        "http://10.0.0.1:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://2130706433:{port}/secret",  # 127.0.0.1 as one number
        "http://127.1:{port}/secret",
    ],
)
async def test_public_feed_never_redirects_inward(
    server: FeedServer, tmp_path: Path, location: str
) -> None:
    server.feed("secret", b"internal-only.example\n")
    name = "pub-redirect"
    server.feed(name, redirect=location.format(port=server.port))
    before = len(server.hits_for("secret"))
    spec = ListSpec(name, url=server.alt_url(name), format="domains")
    r = await fetch(spec, SourceState(name), tmp_path, PUBLIC_ALT)
    assert r.status == "failed" and r.permanent, r.error
    assert "refused" in (r.error or "")
    assert len(server.hits_for("secret")) == before  # not one blind GET went inward
    assert len(server.hits_for(name)) >= 1 and r.attempts == 1  # and it was not retried


async def test_internal_feed_may_redirect_internally(server: FeedServer, tmp_path: Path) -> None:
    server.feed("moved-target", b"ok-target.example\n")
    server.feed("moved", redirect="/moved-target")
    spec = ListSpec("moved", url=server.url("moved"), format="domains")
    r = await fetch(spec, SourceState("moved"), tmp_path, PUBLIC_ALT)
    assert r.status == "new" and r.tmp is not None and r.tmp.read_bytes() == b"ok-target.example\n"
    discard(r.tmp)
    # A feed server on the internal network by name: `internal = true` in sources.toml.
    server.feed("corp", redirect=f"http://localhost:{server.port}/moved-target")
    corp = ListSpec("corp", url=server.alt_url("corp"), format="domains")
    refused = await fetch(corp, SourceState("corp"), tmp_path, PUBLIC_ALT)
    assert refused.status == "failed" and "internal = true" in (refused.error or "")
    allowed = await fetch(corp, SourceState("corp"), tmp_path, PUBLIC_ALT, internal=True)
    assert allowed.status == "new"
    discard(allowed.tmp)


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("file:///etc/passwd", "file"),
        ("ftp://127.0.0.2/list", "ftp"),
        ("/loop-a", "loop"),
        ("", "without a Location"),
    ],
)
async def test_bad_redirects_are_permanent(
    server: FeedServer, tmp_path: Path, location: str, why: str
) -> None:
    server.feed("loop-a", redirect="/loop-b")
    server.feed("loop-b", redirect="/loop-a")
    name = f"bad-{why.split()[0]}"
    server.feed(name, redirect=location)
    spec = ListSpec(name, url=server.url(name), format="domains")
    n = len(server.hits_for(name))
    r = await fetch(spec, SourceState(name), tmp_path, PUBLIC_ALT)
    assert r.status == "failed" and r.permanent and why in (r.error or ""), r.error
    assert len(server.hits_for(name)) == n + 1  # no retry of a permanent error


async def test_too_many_redirects(server: FeedServer, tmp_path: Path) -> None:
    for i in range(8):
        server.feed(f"hop{i}", redirect=f"/hop{i + 1}")
    server.feed("hop8", b"end.example\n")
    spec = ListSpec("hop0", url=server.url("hop0"), format="domains")
    r = await fetch(spec, SourceState("hop0"), tmp_path, PUBLIC_ALT)
    assert r.status == "failed" and "more than 5 redirects" in (r.error or "")


def test_https_feed_is_never_downgraded() -> None:
    from yarl import URL

    from proxy_addons.refresh.feeds import FetchError, _check_hop

    first = URL("https://feeds.example/list")
    with pytest.raises(FetchError, match="down to"):
        _check_hop(URL("http://feeds.example/list"), first, Reach.PUBLIC, PUBLIC_ALT)
    _check_hop(URL("https://cdn.example/list"), first, Reach.PUBLIC, PUBLIC_ALT)


async def test_permanent_errors_wait_the_normal_interval(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "gone")
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"}, refresh="6h")
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).ok
    server.feeds[name].status = 404
    t0 = time.time()
    report = await r.refresh()
    st = load_state(cache, r.url_specs[0])
    assert report.outcomes[name].status == "failed"
    assert st.permanent_error and "permanent" in (st.last_error or "")
    assert st.next_run is not None and st.next_run >= t0 + 6 * 3600
    # A transient one (500) is retried soon, as before.
    server.feeds[name].status = 500
    await r.refresh()
    st = load_state(cache, r.url_specs[0])
    assert not st.permanent_error and st.next_run is not None and st.next_run < t0 + 3600


def test_address_classes() -> None:
    for ip in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
        "fc00::1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "224.0.0.1",
    ):
        assert not is_public_address(ip), ip
    for ip in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(ip), ip


# -- item 7: feeds refresh independently ---------------------------------------------------


async def test_a_dripping_feed_delays_no_other(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    slow, quick = unique(request, "drip"), unique(request, "quick")
    # 2 KB at a byte per 0.2 s: each read is quick (under the read timeout), the whole is not.
    server.feed(slow, listing(150), drip=0.2)
    server.feed(quick, b"one.example\n")
    src = write_sources(tmp_path, server, {slow: "domains", quick: "domains"})
    cache = tmp_path / "cache"
    policy = FetchPolicy(
        connect_timeout=2, read_timeout=2, total_timeout=15, attempts=2, backoff=0.01
    )

    class Slot:
        def __init__(self) -> None:
            self.engine = Engine.from_lists([])[0]
            self.changed = asyncio.Event()

        def swap(self, new: Engine) -> Engine:
            old, self.engine = self.engine, new
            self.changed.set()
            return old

    slot = Slot()
    r = Refresher(
        load_sources(src),
        cache,
        slot=slot,
        policy=policy,
        isolate=False,
        startup_spread=0,
        poll=0.05,
    )
    task = asyncio.get_running_loop().create_task(r.run())
    try:
        async with asyncio.timeout(20):
            while not blocked(slot.engine, "one.example"):
                slot.changed.clear()
                await slot.changed.wait()
        # Published while the dripping feed is still being read.
        assert server.active.get(slow) == 1
        assert slow in r._fetching
        # A manual refresh meanwhile is accepted (no 409), for the others too.
        server.feeds[quick].body = b"one.example\ntwo.example\n"
        assert r.trigger() is True
        async with asyncio.timeout(20):
            while not blocked(slot.engine, "two.example"):
                slot.changed.clear()
                await slot.changed.wait()
        assert server.active.get(slow) == 1
        # The dripping feed is cut at its deadline (total time, not per read).
        async with asyncio.timeout(30):
            await asyncio.shield(r._fetching[slow])
        err = load_state(cache, next(s for s in r.url_specs if s.name == slow)).last_error or ""
        assert "deadline" in err, err
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not r._fetching
    assert not list((cache / "feeds").glob("*.part"))


async def test_rebuilds_are_coalesced(
    server: FeedServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One rebuild at a time; the changes that arrive while it runs are taken by one more."""
    import proxy_addons.refresh.refresher as refresher_mod
    from proxy_addons.refresh.job import CompileJob, CompileResult

    names = [unique(request, f"c{i}") for i in range(4)]
    for i, n in enumerate(names):
        # The first arrives at once; the others drip in while its rebuild runs (without
        # the drip, all four could arrive before the first rebuild starts: one rebuild).
        server.feed(n, b"feed%d.example\n" % i, drip=0.0 if i == 0 else 0.02)
    src = write_sources(tmp_path, server, dict.fromkeys(names, "domains"))
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    real = refresher_mod.run_rebuild
    jobs: list[list[str]] = []

    async def held_first(job: CompileJob, *, isolate: bool = True) -> CompileResult:
        jobs.append(sorted(c.name for c in job.candidates))
        if len(jobs) == 1:  # keep the first rebuild busy until every other change is queued
            async with asyncio.timeout(10):
                while len(jobs[0]) + len(r._builds) < 4:  # noqa: ASYNC110 - another task's progress
                    await asyncio.sleep(0.01)
        return await real(job, isolate=isolate)

    monkeypatch.setattr(refresher_mod, "run_rebuild", held_first)
    report = await r.refresh()
    assert report.ok and all(o.status == "updated" for o in report.outcomes.values())
    assert len(jobs) == 2 and jobs[1], jobs  # four changes, two rebuilds
    assert sorted(jobs[0] + jobs[1]) == sorted(names)
    assert len(SnapshotStore(cache).list_snapshots()) == 2
    eng, _ = load_engine(load_sources(src).enabled(), cache)
    assert all(blocked(eng, f"feed{i}.example") for i in range(4))


# -- item 9: Retry-After and minimum intervals hold for manual refreshes --------------------


async def test_min_interval_holds_for_manual_refreshes(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "mi")
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"}, refresh="1h", min_interval="30m")
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    assert (await r.refresh()).outcomes[name].status == "updated"
    hits = len(server.hits_for(name))
    again = await r.refresh()
    o = again.outcomes[name]
    assert o.status == "deferred" and "min_interval" in (o.detail or "") and again.ok
    assert len(server.hits_for(name)) == hits  # the feed was not asked
    status = {d["name"]: d for d in source_status(load_sources(src), cache)}[name]
    assert status["next_fetch_allowed"] >= time.time() + 25 * 60
    # --force takes responsibility for one extra fetch (documented).
    forced = await r.refresh(force=True)
    assert forced.outcomes[name].status == "unchanged" and len(server.hits_for(name)) == hits + 1


async def test_retry_after_holds_even_when_forced(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "ra")
    server.feed(name, listing(), fail=[(429, {"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})])
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    t0 = time.time()
    assert (await r.refresh()).outcomes[name].status == "failed"
    st = load_state(cache, r.url_specs[0])
    # An HTTP-date far off is capped: a server cannot stop a feed for decades.
    assert st.not_before is not None and t0 + 3600 < st.not_before <= time.time() + MAX_RETRY_AFTER
    hits = len(server.hits_for(name))
    for force in (False, True):
        o = (await r.refresh(force=force)).outcomes[name]
        assert o.status == "deferred" and "Retry-After" in (o.detail or ""), o
    assert len(server.hits_for(name)) == hits
    # The background loop, told to refresh now (the admin API), waits as well, and the
    # API's answer says until when and why.
    assert r.trigger() is True
    await r._tick()
    # _fetches(), not _fetching: a task that has just ended stays in _fetching until its
    # done callback runs, and a gather of it returns without yielding to let it (this
    # failed once in CI; tests/refresh/test_fetch_lifecycle.py holds the invariant).
    await asyncio.gather(*r._fetches().values())
    assert len(server.hits_for(name)) == hits and r.schedule[name] >= st.not_before
    plan = fetch_plan(r.status())[name]
    assert plan["next_fetch_allowed"] and "Retry-After" in plan["why"] and not plan["fetching"]
    await r._stop()  # the stale rebuild _tick started (no snapshot yet) ends with the test


def test_retry_after_parsing_is_capped() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now=0) == MAX_RETRY_AFTER
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=100) == 0
    assert parse_retry_after("-5") is None and parse_retry_after("soon") is None


def test_min_interval_config(tmp_path: Path) -> None:
    def cfg(body: str) -> Path:
        p = tmp_path / "s.toml"
        p.write_text(body)
        return p

    urlhaus = '[[source]]\nname = "u"\nurl = "https://urlhaus.abuse.ch/downloads/hostfile/"\nrefresh = "1h"\n'
    assert load_sources(cfg(urlhaus)).rules("u").min_interval == 300
    with pytest.raises(SourceConfigError, match="operator asks"):
        load_sources(cfg(urlhaus + 'min_interval = "1m"\n'))
    spamhaus = (
        '[[source]]\nname = "d"\nurl = "https://www.spamhaus.org/drop/drop.txt"\nrefresh = "12h"\n'
    )
    assert load_sources(cfg(spamhaus)).rules("d").min_interval == 3600
    with pytest.raises(SourceConfigError, match="under its min_interval"):
        load_sources(cfg(spamhaus.replace('"12h"', '"30m"')))
    internal = load_sources(
        cfg('[[source]]\nname = "c"\nurl = "https://feeds.corp.example/l"\ninternal = true\n')
    )
    assert internal.rules("c").internal and not load_sources(cfg(urlhaus)).rules("u").internal
    with pytest.raises(SourceConfigError, match="url sources only"):
        load_sources(cfg('[[source]]\nname = "p"\npath = "x.txt"\ninternal = true\n'))
    shipped = load_sources()
    for spec in shipped.sources:
        if spec.url:
            assert spec.refresh >= shipped.rules(spec.name).min_interval >= 300


# -- item 13 (part): temp files and modes ----------------------------------------------------


async def test_bodies_are_readable_by_another_user(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique(request, "mode")
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    r = Refresher(load_sources(src), cache, policy=FAST, isolate=False)
    report = await r.refresh()
    assert report.snapshot
    body_mode = stat.S_IMODE(os.stat(feed_body_path(cache, name)).st_mode)
    snap_mode = stat.S_IMODE(os.stat(report.snapshot).st_mode)
    assert body_mode == snap_mode == 0o644
    # A body an older version left 0600 is given the same mode at the next start.
    os.chmod(feed_body_path(cache, name), 0o600)
    tidy_feed_dir(cache)
    assert stat.S_IMODE(os.stat(feed_body_path(cache, name)).st_mode) == 0o644


def _old(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_partials_go_live_ones_stay(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    dead = feeds / "a.body.x1.part"  # a killed run's
    live = feeds / "b.body.x2.part"  # another process is still writing this one
    fresh = feeds / "c.body.x3.part"  # just created, not locked yet
    other = feeds / "notes.part"  # not ours
    for p in (dead, live, fresh, other):
        p.write_bytes(b"x")
    for p in (dead, live, other):
        _old(p, 2 * 3600)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time;f=open(sys.argv[1],'rb');fcntl.flock(f,fcntl.LOCK_EX);"
            "print('locked',flush=True);time.sleep(60)",
            str(live),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    with holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            assert clean_partials(tmp_path) == 1
            assert not dead.exists() and live.exists() and fresh.exists() and other.exists()
        finally:
            holder.kill()
            holder.wait(10)
    assert clean_partials(tmp_path) == 1 and not live.exists()


def test_update_cleans_partials_at_start(server: FeedServer, tmp_path: Path) -> None:
    name = "upd-clean"
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"})
    cache = tmp_path / "cache"
    (cache / "feeds").mkdir(parents=True)
    leftovers = [cache / "feeds" / f"{name}.body.k{i}.part" for i in range(16)]
    for p in leftovers:
        p.write_bytes(b"half a list\n")
        _old(p, 300)  # a killed run minutes ago (younger than the old one-hour rule)
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("jectguard")),
            "update",
            "--sources",
            str(src),
            "--cache-dir",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(p.exists() for p in leftovers)


async def test_a_fetch_holds_its_partial_until_done(
    server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """While a body waits for validation, a cleaner (another process starting) keeps it."""
    name = unique(request, "held")
    server.feed(name, listing())
    spec = ListSpec(name, url=server.url(name), format="domains")
    r = await fetch(spec, SourceState(name), tmp_path, FAST)
    assert r.status == "new" and r.tmp is not None
    _old(r.tmp, 3600)
    fd = os.open(r.tmp, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert clean_partials(tmp_path) == 0 and r.tmp.exists()
    assert stat.S_IMODE(r.tmp.stat().st_mode) == 0o644
    discard(r.tmp)
    assert not r.tmp.exists()


def test_kill_9_mid_fetch_leaves_a_partial_the_next_start_removes(
    server: FeedServer, tmp_path: Path
) -> None:
    """Real processes: a fetch killed with SIGKILL leaves its temp body; a run started
    while it was alive kept it (it was locked), the next start after its death removes it."""
    slow, other = "kill9-slow", "kill9-other"
    server.feed(slow, listing(300), drip=0.05, etag=False)
    server.feed(other, b"other.example\n")
    src = write_sources(tmp_path, server, {slow: "domains", other: "domains"})
    cache = tmp_path / "cache"
    exe = str(Path(sys.executable).with_name("jectguard"))

    def update(name: str) -> subprocess.CompletedProcess[str]:
        cmd = [exe, "update", "--source", name, "--sources", str(src), "--cache-dir", str(cache)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    cmd = [exe, "update", "--source", slow, "--sources", str(src), "--cache-dir", str(cache)]
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as a:
        try:
            deadline = time.monotonic() + 30
            while not (parts := list((cache / "feeds").glob(f"{slow}.body.*.part"))):
                assert a.poll() is None and time.monotonic() < deadline, "no temp body appeared"
                time.sleep(0.05)
            _old(parts[0], 2 * 3600)  # looks abandoned by age alone: only its lock says otherwise
            assert update(other).returncode == 0
            assert parts[0].exists()  # a live fetch's temp body is never removed
        finally:
            a.kill()
            a.wait(10)
    assert parts[0].exists()  # SIGKILL: nobody cleaned up
    server.feeds[slow].drip = 0.0
    assert update(other).returncode == 0
    assert not parts[0].exists()
    assert SnapshotStore(cache).current_path() is not None


def test_update_says_when_the_next_fetch_is_allowed(server: FeedServer, tmp_path: Path) -> None:
    name = "upd-polite"
    server.feed(name, listing())
    src = write_sources(tmp_path, server, {name: "domains"}, refresh="1h", min_interval="20m")
    cache = tmp_path / "cache"
    cmd = [str(Path(sys.executable).with_name("jectguard")), "update", "--sources", str(src)]
    cmd += ["--cache-dir", str(cache)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "updated" in first.stdout, first.stdout + first.stderr
    hits = len(server.hits_for(name))
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "deferred" in second.stdout and "next fetch allowed at" in second.stdout
    assert "min_interval 1200s" in second.stdout
    assert len(server.hits_for(name)) == hits
    forced = subprocess.run([*cmd, "--force"], capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0 and len(server.hits_for(name)) == hits + 1


async def test_api_refresh_is_never_busy(
    aiohttp_client: Any, server: FeedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """POST /api/refresh while a feed drips: accepted, and it says which feed is being fetched."""
    from proxy_addons.admin.app import AdminState, create_app
    from proxy_addons.telemetry.events import EventLog
    from proxy_addons.telemetry.metrics import Metrics

    slow, quick = unique(request, "apid"), unique(request, "apiq")
    server.feed(slow, listing(150), drip=0.2)
    server.feed(quick, b"q.example\n")
    src = write_sources(tmp_path, server, {slow: "domains", quick: "domains"})
    policy = FetchPolicy(connect_timeout=2, read_timeout=2, total_timeout=6, attempts=1)
    r = Refresher(
        load_sources(src),
        tmp_path / "cache",
        policy=policy,
        isolate=False,
        startup_spread=0,
        poll=0.05,
    )
    engine = Engine.from_lists([])[0]
    token = "test-token-0123456789abcdef"
    state = AdminState(
        token=token,
        engine=lambda: engine,
        events=EventLog(),
        metrics=Metrics(lambda: engine.block.meta),
        proxy_address=lambda: ("127.0.0.1", 8080),
        refresh_status=r.status,
        refresh_trigger=r.trigger,
    )
    client = await aiohttp_client(create_app(state))
    auth = {"Authorization": f"Bearer {token}"}
    task = asyncio.get_running_loop().create_task(r.run())
    try:
        async with asyncio.timeout(20):
            while not server.active.get(slow):  # noqa: ASYNC110 - the server thread's progress
                await asyncio.sleep(0.02)
        for _ in range(2):
            resp = await client.post("/api/refresh", headers=auth)
            assert resp.status == 202, await resp.text()
            doc = await resp.json()
            assert doc["status"] == "started" and doc["sources"][slow]["fetching"] is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
