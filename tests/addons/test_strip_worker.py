"""Scanning in worker processes: big pages stripped there, a dead or hung worker fails closed.

Real worker processes throughout (``python -m proxy_addons.addons.strip_worker``);
the last tests run a real ``jectguard run`` in front of a local origin. No timing
assertions: the speed targets live in ``benchmarks/bench_stall.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mitmproxy import http

from proxy_addons.addons import EngineHolder
from proxy_addons.addons.strip import INLINE_SCAN_BYTES, ScanJob, Strip, decodes_over
from proxy_addons.addons.strip_worker import (
    ScanError,
    ScanFailed,
    ScanPool,
    WorkerConfig,
    frame,
)
from proxy_addons.core.htmlscan import BodyTooLarge
from proxy_addons.core.model import ListSpec, RuleKind
from tests.addons.test_strip import (
    CLEAN,
    findings,
    injected,
    make_engine,
    response_flow,
    skipped,
    strip_context,
    through,
)
from tests.e2e.conftest import serve_app, start_proxy

# Inline script text well past the inline limit: the page goes to a worker.
BIG_STATE = (
    "<script>window.__STATE__ = ["
    + ",".join(
        f'{{"id": {i}, "img": "https://cdn.example/img/{i}.jpg", "t": "lorem ipsum dolor"}}'
        for i in range(INLINE_SCAN_BYTES // 40)
    )
    + "];</script>"
)
BIG = CLEAN.replace("<p>", BIG_STATE + "<p>")
assert len(BIG) > 2 * INLINE_SCAN_BYTES


def _pool(addon: Strip) -> ScanPool:
    assert addon._pool is not None
    return addon._pool


async def _until(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition()`` on the loop (the worker pipes need it to run) until true."""
    try:
        async with asyncio.timeout(60):
            while not condition():  # noqa: ASYNC110 - pool state has no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def addon() -> AsyncIterator[Strip]:
    strip = Strip(EngineHolder(make_engine()))
    yield strip
    await strip.done()  # also when the test failed: no worker outlives its test


# -- the worker path strips as the loop does --------------------------------------------


@pytest.mark.parametrize("coding", ["identity", "gzip"])
async def test_big_page_stripped_in_a_worker(addon: Strip, coding: str) -> None:
    raw = injected(BIG).encode()
    headers = [("ETag", '"v1"')]
    if coding == "gzip":
        raw = gzip.compress(raw)
        headers.append(("Content-Encoding", "gzip"))
    f = response_flow(raw, headers)
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False, jg_strip_workers=1)
        await through(addon, f)
        assert _pool(addon).scans == 1  # the worker did it, not the loop
        await addon.done()
    assert f.response is not None
    body = f.response.raw_content or b""
    assert (gzip.decompress(body) if coding == "gzip" else body) == BIG.encode()
    assert f.response.headers["etag"] == 'W/"v1"'
    assert int(f.response.headers["content-length"]) == len(body)
    assert [x["element"] for x in findings(f)] == ["script"]


async def test_small_compressed_body_that_inflates_past_the_limit_goes_to_a_worker(
    addon: Strip,
) -> None:
    """A guess from the compressed size would scan a zip of megabytes on the event loop."""
    page = injected(CLEAN.replace("<p>", "<p>" + "a" * (4 * INLINE_SCAN_BYTES)))
    raw = gzip.compress(page.encode(), 9)
    assert len(raw) * 8 < INLINE_SCAN_BYTES  # the old estimate kept this on the loop
    assert decodes_over(raw, "gzip", INLINE_SCAN_BYTES)
    assert decodes_over(raw, "x-unknown, gzip", INLINE_SCAN_BYTES)  # Firefox's reading
    assert not decodes_over(gzip.compress(CLEAN.encode()), "gzip", INLINE_SCAN_BYTES)
    f = response_flow(raw, [("Content-Encoding", "gzip")])
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1)
        await through(addon, f)
        assert _pool(addon).scans == 1
        await addon.done()
    assert b"dot.php" not in gzip.decompress(f.response.raw_content or b"")  # type: ignore[union-attr]


async def test_big_clean_page_untouched_and_remembered(addon: Strip) -> None:
    raw = BIG.encode()
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1)
        first = await through(addon, response_flow(raw, [("ETag", '"v1"')]))
        second = await through(addon, response_flow(raw, [("ETag", '"v1"')]))
        assert _pool(addon).scans == 1  # the second load was answered by digest
        bad = await through(addon, response_flow(injected(BIG).encode()))
        assert _pool(addon).scans == 2  # other bytes: scanned
        await addon.done()
    for f in (first, second):
        assert f.response is not None and f.response.raw_content == raw
        assert f.response.headers["etag"] == '"v1"' and not findings(f)
    assert b"dot.php" not in (bad.response.raw_content or b"")  # type: ignore[union-attr]


async def test_engine_swap_reconfigures_the_workers() -> None:
    holder = EngineHolder(make_engine())
    addon = Strip(holder)
    page = injected(BIG).replace("attacker.test", "newly-bad.test").encode()
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1)
        first = await through(addon, response_flow(page))
        assert first.response is not None and first.response.raw_content == page
        holder.swap(make_engine("attacker.test", "newly-bad.test"))
        second = await through(addon, response_flow(page))  # same bytes: not the cached answer
        await addon.done()
    assert b"dot.php" not in (second.response.raw_content or b"")  # type: ignore[union-attr]


async def test_too_large_in_the_worker_passes_as_documented(addon: Strip) -> None:
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1, jg_strip_max_bytes=INLINE_SCAN_BYTES + 10)
        f = await through(addon, response_flow(BIG.encode(), length=False))
        await addon.done()
    assert f.response is not None and f.response.status_code == 200
    assert "too large" in (skipped(f) or "")


# -- failures fail closed; the pool comes back ---------------------------------------------


def _refused(f: http.HTTPFlow) -> bool:
    return (
        f.response is not None
        and f.response.status_code == 502
        and f.response.headers.get("x-jectguard-refused") == "scan-failed"
        and b"dot.php" not in (f.response.raw_content or b"")
        and "refused (502)" in (skipped(f) or "")
    )


async def test_killed_worker_fails_closed_and_is_replaced(addon: Strip) -> None:
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1)
        addon.running()
        pool = _pool(addon)
        await _until(lambda: pool.pids, "the worker to start")
        (pid,) = pool.pids
        os.kill(pid, signal.SIGSTOP)  # it cannot answer before it dies
        try:
            f = response_flow(injected(BIG).encode())
            addon.responseheaders(f)
            pending = addon.response(f)
            assert pending is not None
            task = asyncio.ensure_future(pending)
            await _until(lambda: not pool._idle, "the scan to be handed out")
        finally:
            os.kill(pid, signal.SIGKILL)
        await task
        assert _refused(f), f.response
        assert any(w in (skipped(f) or "") for w in ("exited", "died", "did not answer"))
        # The proxy goes on: the next big page is scanned by a new worker.
        after = await through(addon, response_flow(injected(BIG).encode()))
        assert after.response is not None and after.response.status_code == 200
        assert b"dot.php" not in (after.response.raw_content or b"")
        assert pool.pids and pool.pids != [pid]
        await addon.done()


async def test_hung_worker_times_out_fails_closed_and_is_replaced(addon: Strip) -> None:
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_workers=1, jg_strip_timeout=1)
        addon.running()
        pool = _pool(addon)
        await _until(lambda: pool.pids, "the worker to start")
        (pid,) = pool.pids
        os.kill(pid, signal.SIGSTOP)
        try:
            f = await through(addon, response_flow(injected(BIG).encode()))
        finally:
            with contextlib.suppress(ProcessLookupError):  # the pool has killed it
                os.kill(pid, signal.SIGCONT)
        assert _refused(f) and "did not answer" in (skipped(f) or "")
        tctx.configure(addon, jg_strip_timeout=60)
        after = await through(addon, response_flow(injected(BIG).encode()))
        assert after.response is not None and after.response.status_code == 200
        assert b"dot.php" not in (after.response.raw_content or b"")
        await addon.done()


async def test_dead_worker_in_monitor_mode_passes_and_says_so(addon: Strip) -> None:
    from proxy_addons.addons.blocking import Blocking

    with strip_context(addon) as tctx:
        tctx.master.addons.add(Blocking(addon.holder))
        tctx.configure(addon, jg_strip_workers=1, jg_strip_timeout=1, jg_mode="monitor")
        addon.running()
        pool = _pool(addon)
        await _until(lambda: pool.pids, "the worker to start")
        (pid,) = pool.pids
        os.kill(pid, signal.SIGSTOP)
        try:
            f = await through(addon, response_flow(injected(BIG).encode()))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await addon.done()
    assert f.response is not None and f.response.status_code == 200
    assert "not scanned" in (skipped(f) or "") and "monitor" in (skipped(f) or "")


def _job(raw: bytes) -> ScanJob:
    return ScanJob(raw, "", "text/html", "http://shop.test/", True, True, 10 * 1024 * 1024)


def _config(**kw: object) -> WorkerConfig:
    args: dict[str, object] = {
        "engine": make_engine(),
        "signatures_text": "",
        "signatures_source": "test",
        "after_html": "log",
        "max_bytes": 10 * 1024 * 1024,
    }
    args.update(kw)
    return WorkerConfig(**args)  # type: ignore[arg-type]


# Fake workers: each breaks the protocol in one way after saying it is ready.
_READY = b"".join(bytes(p) for p in frame({"op": "ready"}))
_FAKES = {
    "exits": f"import sys; sys.stdout.buffer.write({_READY!r}); sys.stdout.flush()",
    "garbage": (
        f"import sys; sys.stdout.buffer.write({_READY!r} + b'\\xff' * 64); "
        "sys.stdout.flush(); sys.stdin.buffer.read()"
    ),
    "lies about the body": (
        "import sys, json, struct; o = sys.stdout.buffer; o.write("
        + repr(_READY)
        + "); o.flush(); "
        "h = json.dumps({'ok': True, 'findings': [], 'changed': True, 'blobs': []}).encode(); "
        "sys.stdin.buffer.read(1); o.write(struct.pack('<I', len(h)) + h); o.flush(); "
        "sys.stdin.buffer.read()"
    ),
    "never ready": "import sys; sys.stdin.buffer.read()",
}


@pytest.mark.parametrize("fake", sorted(_FAKES))
async def test_a_broken_worker_is_a_failed_scan(fake: str) -> None:
    pool = ScanPool(1, 2.0, startup_timeout=5.0, command=(sys.executable, "-c", _FAKES[fake]))
    try:
        with pytest.raises((ScanFailed, ScanError)):
            await pool.scan(_job(injected(BIG).encode()), _config())
    finally:
        await pool.close()


async def test_worker_errors_map_to_their_meaning() -> None:
    pool = ScanPool(1, 60.0)
    try:
        with pytest.raises(ScanError, match="no engine"):  # it could not build its scanner
            await pool.scan(_job(BIG.encode()), _config(signatures_text="[[signature]]\nx ="))
        with pytest.raises(BodyTooLarge):
            await pool.scan(_job(BIG.encode()), _config(max_bytes=1000))
        reply = await pool.scan(_job(injected(BIG).encode()), _config())
        assert reply.raw is not None and b"dot.php" not in reply.raw
        assert [f.element for f in reply.findings] == ["script"]
    finally:
        await pool.close()


# -- the real proxy ---------------------------------------------------------------------------


def _site() -> web.Application:
    big_injected = injected(BIG).encode()

    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = {"big": big_injected, "small": CLEAN.encode()}[name]
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/{name}", page)
    return app


def _get(proxy_url: str, url: str) -> tuple[int, bytes, dict[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url}))
    try:
        with opener.open(url, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _workers_of(pid: int) -> list[int]:
    """The proxy's scan workers (its children running strip_worker)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"strip_worker" in cmd:
            out.append(int(child))
    return out


def test_real_proxy_strips_big_pages_refuses_when_the_worker_hangs_and_keeps_serving(
    tmp_path: Path,
) -> None:
    block = tmp_path / "block.txt"
    block.write_text("attacker.test\n")
    (tmp_path / "origin").mkdir()
    with serve_app(_site(), tmp_path / "origin", "origin") as served:
        proxy = start_proxy(
            tmp_path / "proxy",
            "--blocklist",
            str(block),
            "--set",
            "jg_strip_workers=1",
            "--set",
            "jg_strip_timeout=3",
        )
        try:
            base = f"http://good.test:{served.port}"
            status, body, _ = _get(proxy.url, base + "/big")
            assert status == 200 and b"dot.php" not in body and b"__STATE__" in body, (
                body[:300],
                proxy.output()[-3000:],
            )
            workers: list[int] = []
            deadline = time.monotonic() + 30
            while not workers and time.monotonic() < deadline:
                workers = _workers_of(proxy.proc.pid)
            (pid,) = workers
            os.kill(pid, signal.SIGSTOP)
            small: list[int] = []
            stop = threading.Event()

            def small_requests() -> None:
                while not stop.is_set():
                    small.append(_get(proxy.url, base + "/small")[0])

            t = threading.Thread(target=small_requests)
            t.start()
            try:
                status, body, headers = _get(proxy.url, base + "/big")
            finally:
                stop.set()
                t.join(60)
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
            assert status == 502 and b"dot.php" not in body
            assert headers.get("X-Jectguard-Refused") == "scan-failed"
            assert small and set(small) == {200}  # served while the big page waited
            status, body, _ = _get(proxy.url, base + "/big")  # a new worker took over
            assert status == 200 and b"dot.php" not in body
            assert proxy.alive()
        finally:
            proxy.stop()
    assert "refused with 502" in proxy.output()


async def test_a_snapshot_file_replaced_under_its_path_is_not_used(tmp_path: Path) -> None:
    """The worker maps the proxy's snapshot by path; a file swapped in since holds other rules."""
    from proxy_addons.core.engine import Engine
    from proxy_addons.core.index import CompiledIndex, compile_index
    from tests.addons.test_strip import _NoGuard, _rules

    def image(host: str) -> Any:
        spec = ListSpec(name="malware", category="malware")
        img, _ = compile_index([(spec, _rules((RuleKind.DOMAIN, host)))], guard=_NoGuard())
        return img

    path = tmp_path / "current.snap"
    image("attacker.test").write(path)
    block = CompiledIndex.load(path)
    image("other.test").write(path)  # renamed over the path: the proxy keeps what it mapped
    engine = Engine(block, Engine.empty_allow())
    pool = ScanPool(1, 60.0)
    try:
        reply = await pool.scan(_job(injected(BIG).encode()), _config(engine=engine))
    finally:
        await pool.close()
    assert reply.raw is not None and b"dot.php" not in reply.raw  # judged by the proxy's rules


async def test_a_worker_judges_with_the_proxys_settings_and_campaign_list() -> None:
    """A worker is another process: it is told the engine's process-wide settings
    (``jg_url_case_insensitive``) and the proxy's own campaign list, so a page is
    judged there exactly as in the proxy (it was judged without them)."""
    from proxy_addons.core.engine import Engine
    from tests.addons.test_blocking import _rules

    base, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="malware", category="malware"),
                _rules((RuleKind.DOMAIN, "attacker.test"), (RuleKind.URL, "good.test/bad/")),
            )
        ]
    )
    own, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="jectguard-campaigns", category="campaign"),
                _rules((RuleKind.DOMAIN, "campaign.test")),
            )
        ]
    )
    engine = base.with_extra(own.block)
    page_campaign = injected(BIG).replace("attacker.test", "campaign.test")
    upper = BIG.replace("<p>", '<script src="http://good.test/BAD/x.js"></script><p>')
    pool = ScanPool(1, 60.0)
    try:
        found = (await pool.scan(_job(page_campaign.encode()), _config(engine=engine))).findings
        assert any(f.removed and "campaign.test" in (f.url or "") for f in found), found
        as_proxy = await pool.scan(_job(upper.encode()), _config(engine=engine, fold_case=True))
        assert any(f.removed for f in as_proxy.findings), as_proxy.findings
        default = await pool.scan(_job(upper.encode()), _config(engine=engine, fold_case=False))
        assert not any(f.removed for f in default.findings), default.findings
    finally:
        await pool.close()
        Engine.fold_case = False


async def test_a_worker_maps_the_proxys_private_copy_instead_of_its_own(tmp_path: Path) -> None:
    """A 1.11M-rule snapshot is 42 MB: each worker read it into memory of its own
    (+42 MB per worker, 2 per proxy process, unshared). It maps the verified copy the
    proxy serves from, so the pages are the page cache's, shared by every process."""
    from proxy_addons.core.engine import Engine
    from proxy_addons.core.index import CompiledIndex, compile_index
    from tests.addons.test_strip import _NoGuard, _rules

    spec = ListSpec(name="malware", category="malware")
    img, _ = compile_index([(spec, _rules((RuleKind.DOMAIN, "attacker.test")))], guard=_NoGuard())
    path = tmp_path / "published.jgs"
    img.write(path)
    copies = tmp_path / "copies"
    copies.mkdir(mode=0o700)
    block = CompiledIndex.load(path, copy_dir=copies)
    assert block.origin is not None and block.origin.residence is not None
    engine = Engine(block, Engine.empty_allow())
    pool = ScanPool(1, 60.0)
    try:
        reply = await pool.scan(_job(injected(BIG).encode()), _config(engine=engine))
        assert reply.raw is not None and b"dot.php" not in reply.raw  # judged by these rules
        (task,) = [t for t in pool._slots if t is not None]
        maps = await asyncio.to_thread(Path(f"/proc/{task.result().pid}/maps").read_text)
        assert os.fspath(block.origin.residence) in maps
        assert len(list(copies.glob("*.jgs"))) == 1  # the proxy's copy, adopted, not a second
    finally:
        await pool.close()
