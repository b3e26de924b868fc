"""Latency through the real proxy while a 1.11M-rule refresh happens.

    python benchmarks/bench_refresh.py [--rate 200] [--before 10] [--data DIR] [--in-thread]

Everything runs on loopback:

* one helper process serves the feeds (the synthetic lists from gen_lists.py:
  1M hosts-format domains, 100k URLs, 10k CIDRs), another a tiny origin (as on a
  network, a 30 MB download does not delay the origin's answers);
* the proxy is mitmdump with jectguard's addons (blocking + the refresh addon in
  the ``refresh`` role), started from a snapshot published by ``jectguard update``;
* the load generator sends allowed requests through the proxy at a fixed rate
  (open loop: latency counts from each request's scheduled time, so a stall
  shows up in every request queued behind it), at most 64 in flight.

After ``--before`` seconds the feeds change (1,000 new domains) and the proxy
is told to refresh now (SIGUSR1): it downloads 1.11M rules, validates them,
compiles in a worker process (or a thread with ``--in-thread``, to show why it
is not), publishes, loads and swaps. "during" is from that signal until the
proxy serves the new snapshot, plus one second. Printed: p50/p99/max and the
requests over 100 ms, before and during. Targets: p99 during <= 2x p99 before,
no request over 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _procs import free_port  # noqa: E402

BIN = Path(sys.executable).parent
MAX_IN_FLIGHT = 64
STALL_MS = 100.0

PROXY_SCRIPT = """
import asyncio, os, signal
from pathlib import Path
from proxy_addons.addons import EngineHolder, make_addons
from proxy_addons.addons.refresh import Refresh
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import startup_engine

_cfg = load_sources(os.environ["JG_BENCH_SOURCES"])
_engine, _ = startup_engine(_cfg.enabled(), Path(os.environ["JG_BENCH_CACHE"]))
_holder = EngineHolder(_engine)
# The refresh addon make_addons already holds: a second one would be a second
# refresher on the same cache (two compiles racing each other).
_addons = make_addons(_holder)
_refresh = next(a for a in _addons if isinstance(a, Refresh))


class RefreshOnSignal:
    name = "bench_refresh_trigger"

    async def running(self):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.go)

    def go(self):
        r = _refresh.refresher
        if os.environ.get("JG_BENCH_IN_THREAD"):
            r.isolate = False
        r.refresh_soon()


class StallWatch:
    # With JG_BENCH_WATCHDOG=1: when the event loop stops ticking for 50 ms, print
    # what every thread was doing (the loop's own callback, or a thread holding the GIL).

    name = "bench_stall_watch"

    async def running(self):
        if not os.environ.get("JG_BENCH_WATCHDOG"):
            return
        import sys, threading, time, traceback
        loop = asyncio.get_running_loop()
        main = threading.get_ident()
        last = [time.perf_counter()]

        def tick():
            last[0] = time.perf_counter()
            loop.call_later(0.005, tick)

        def watch():
            reported = 0.0
            while True:
                time.sleep(0.01)
                late = time.perf_counter() - last[0]
                if late > float(os.environ.get("JG_BENCH_WATCHDOG_MS", "50")) / 1000 and last[0] != reported:
                    reported = last[0]
                    frames = sys._current_frames()
                    out = [f"STALL loop late {late * 1000:.0f} ms"]
                    for ident, frame in frames.items():
                        if ident == threading.get_ident():
                            continue
                        tag = "LOOP" if ident == main else f"thread {ident}"
                        out.append(f"-- {tag}:\\n" + "".join(traceback.format_stack(frame)[-12:]))
                    # Frames keep their locals alive (a snapshot's memoryviews): drop them now.
                    del frames, frame
                    with open(os.environ["JG_BENCH_WATCHDOG"], "a") as f:
                        f.write(f"{time.time():.3f} " + "\\n".join(out) + "\\n")

        tick()
        threading.Thread(target=watch, daemon=True).start()


addons = [*_addons, RefreshOnSignal(), StallWatch()]
"""


# -- helper process: feeds and origin -------------------------------------------------


def _serve(data: Path | None, conn: mp.connection.Connection) -> None:
    """The feed server (``data``) or the origin (``None``): separate processes, as on a
    real network, so the 30 MB feed downloads do not delay the origin's answers."""
    if data is None:
        feeds: dict[str, bytes] = {}
        extra = b""
    else:
        feeds = {
            "domains": (data / "domains.txt").read_bytes(),
            "urls": (data / "urls.txt").read_bytes(),
            "cidrs": (data / "cidrs.txt").read_bytes(),
        }
        extra = b"".join(b"0.0.0.0 fresh%d.bench-new.example\n" % i for i in range(1000))

    async def feed(request: web.Request) -> web.Response:
        body = feeds.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        tag = f'"{len(body)}"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(body=body, headers={"ETag": tag, "Content-Type": "text/plain"})

    async def switch(request: web.Request) -> web.Response:
        feeds["domains"] += extra
        return web.Response(text="ok")

    async def origin(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/feed/{name}", feed)
        app.router.add_post("/switch", switch)
        app.router.add_get("/{tail:.*}", origin)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


# -- load ---------------------------------------------------------------------------


async def drive(
    proxy: str, origin: str, rate: float, stop: asyncio.Event, out: list[tuple[float, float]]
) -> None:
    """Send requests at ``rate``/s until ``stop``; record (scheduled time, latency ms)."""
    sem = asyncio.Semaphore(MAX_IN_FLIGHT)
    conn = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=conn, trust_env=False) as session:
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, due: float) -> None:
            async with sem, session.get(f"{origin}/page/{i}", proxy=proxy) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            out.append((due, (time.perf_counter() - due) * 1000))

        t0 = time.perf_counter()
        i = 0
        while not stop.is_set():
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.get_running_loop().create_task(one(i, due))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)


def summary(lat: list[float]) -> str:
    if not lat:
        return "no requests"
    q = statistics.quantiles(lat, n=100, method="inclusive")
    over = sum(1 for x in lat if x > STALL_MS)
    return (
        f"n={len(lat):>6}  p50={q[49]:6.2f} ms  p99={q[98]:7.2f} ms  "
        f"max={max(lat):7.1f} ms  >{STALL_MS:.0f}ms: {over}"
    )


def swaps_logged(log: Path) -> int:
    """How many engine swaps the proxy has logged (the refresher logs each one)."""
    return log.read_text(errors="replace").count("now serving snapshot")


def run(args: argparse.Namespace) -> int:
    """Set up (sync: subprocesses), then measure (async), then tear down."""
    data = args.data
    if not (data / "domains.txt").exists():
        subprocess.run([sys.executable, str(HERE / "gen_lists.py"), "--out", str(data)], check=True)
    helpers: list[mp.process.BaseProcess] = []
    ports: list[int] = []
    for role in (data, None):  # the feed server, the origin
        parent, child = mp.Pipe()
        helper = mp.get_context("spawn").Process(target=_serve, args=(role, child), daemon=True)
        helper.start()
        helpers.append(helper)
        ports.append(parent.recv())
    base, origin = (f"http://127.0.0.1:{p}" for p in ports)
    work = Path(tempfile.mkdtemp(prefix="jg_refresh_bench_"))
    cache = work / "cache"
    src = work / "sources.toml"
    src.write_text(
        "".join(
            f'[[source]]\nname = "bench_{n}"\nurl = "{base}/feed/{n}"\nformat = "{f}"\nrefresh = "1d"\n'
            'min_interval = "0s"\n\n'  # the refresh below follows `update` at once
            for n, f in (("domains", "hosts"), ("urls", "urls"), ("cidrs", "cidr"))
        )
    )
    t = time.perf_counter()
    up = subprocess.run(
        [str(BIN / "jectguard"), "update", "--sources", str(src), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
    )
    print(f"initial `jectguard update`: {time.perf_counter() - t:.1f}s (exit {up.returncode})")
    if up.returncode != 0:
        print(up.stdout, up.stderr)
        for h in helpers:
            h.kill()
        return 1
    script = work / "proxy_script.py"
    script.write_text(PROXY_SCRIPT)
    pport = free_port()
    log = work / "proxy.log"
    env = {**os.environ, "JG_BENCH_SOURCES": str(src), "JG_BENCH_CACHE": str(cache)}
    if args.in_thread:
        env["JG_BENCH_IN_THREAD"] = "1"
    t = time.perf_counter()
    with log.open("wb") as f:
        proxy = subprocess.Popen(
            [
                str(BIN / "mitmdump"),
                "-s",
                str(script),
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(pport),
                "--set",
                f"confdir={work / 'confdir'}",
                "--set",
                "jg_refresh_role=refresh",
                "--set",
                f"jg_sources={src}",
                "--set",
                f"jg_cache_dir={cache}",
                "--set",
                "jg_admin_port=0",
                "--set",
                "termlog_verbosity=info",
                "--set",
                "flow_detail=0",
                # the origin is on loopback: open it as for a local service
                "--set",
                "jg_allow_destination=127.0.0.0/8",
                "--set",
                "jg_connect_ports=1-65535",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", pport), timeout=0.2).close()
                break
            except OSError:
                if proxy.poll() is not None or time.perf_counter() - t > 60:
                    print(log.read_text())
                    return 1
                time.sleep(0.02)
        print(
            f"proxy listening {time.perf_counter() - t:.2f}s after launch (1.11M rules from the snapshot)"
        )
        return asyncio.run(measure(args, base, origin, pport, proxy, log))
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        for h in helpers:
            h.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)  # ~130 MB of feeds and snapshots


async def loop_lag(stop: asyncio.Event, lags: list[tuple[float, float]]) -> None:
    """(time, ms late) of a 5 ms timer in this process: the generator's own stalls."""
    while not stop.is_set():
        due = time.perf_counter() + 0.005
        await asyncio.sleep(0.005)
        lags.append((due, (time.perf_counter() - due) * 1000))


async def measure(
    args: argparse.Namespace,
    base: str,
    origin: str,
    pport: int,
    proxy: subprocess.Popen[bytes],
    log: Path,
) -> int:
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    # The load generator's own pauses must not count as the proxy's: no cyclic GC
    # here while measuring, and its event-loop lag is printed beside the latencies.
    gc.freeze()
    gc.disable()
    lags: list[tuple[float, float]] = []
    monitor = asyncio.get_running_loop().create_task(loop_lag(stop, lags))
    load = asyncio.get_running_loop().create_task(
        drive(f"http://127.0.0.1:{pport}", origin, args.rate, stop, samples)
    )
    await asyncio.sleep(args.warmup)
    before_start = time.perf_counter()
    await asyncio.sleep(args.before)
    before_end = time.perf_counter()
    async with aiohttp.ClientSession(trust_env=False) as s, s.post(f"{base}/switch") as r:
        await r.read()
    served = await asyncio.to_thread(swaps_logged, log)
    proxy.send_signal(signal.SIGUSR1)
    trigger = time.perf_counter()
    trigger_wall = time.time()
    deadline = trigger + 120
    while await asyncio.to_thread(swaps_logged, log) <= served:
        if time.perf_counter() > deadline:
            print("refresh did not finish in 120 s; see " + str(log))
            break
        await asyncio.sleep(0.05)
    swapped = time.perf_counter()
    await asyncio.sleep(1.0)
    during_end = time.perf_counter()
    stop.set()
    await asyncio.wait_for(load, 30)
    await monitor
    gc.enable()
    before = [lat for due, lat in samples if before_start <= due < before_end]
    during = [lat for due, lat in samples if trigger <= due < during_end]
    print(
        f"refresh (download 1.11M rules, validate, compile in a {'thread' if args.in_thread else 'worker process'}, "
        f"publish, load, swap): {swapped - trigger:.1f}s"
    )
    print(
        f"load: {args.rate:.0f} req/s through the proxy, open loop, <= {MAX_IN_FLIGHT} in flight; CPUs: {os.cpu_count()}"
    )
    print(f"before: {summary(before)}")
    print(f"during: {summary(during)}")
    # Worst latency per second, from the start of "before": shows when stalls happen.
    worst: dict[int, float] = {}
    for due, lat in samples:
        if before_start <= due < during_end:
            sec = int(due - trigger + 1000) - 1000  # floor, relative to the signal
            worst[sec] = max(worst.get(sec, 0.0), lat)
    print(
        "worst ms per second (0 = refresh signal): "
        + " ".join(f"{s:+d}:{w:.0f}" for s, w in sorted(worst.items()))
    )
    per_sec: dict[int, list[float]] = {}
    for due, lat in samples:
        if before_start <= due < during_end:
            per_sec.setdefault(int(due - trigger + 1000) - 1000, []).append(lat)
    print(
        "p99 ms per second:                        "
        + " ".join(
            f"{s:+d}:{statistics.quantiles(v, n=100, method='inclusive')[98]:.0f}"
            for s, v in sorted(per_sec.items())
            if len(v) > 1
        )
    )
    own: dict[int, float] = {}
    for due, lag in lags:
        if before_start <= due < during_end:
            sec = int(due - trigger + 1000) - 1000
            own[sec] = max(own.get(sec, 0.0), lag)
    print(
        "load generator's own worst loop lag, ms:  "
        + " ".join(f"{s:+d}:{w:.0f}" for s, w in sorted(own.items()))
    )
    if before and during:
        qb = statistics.quantiles(before, n=100, method="inclusive")[98]
        qd = statistics.quantiles(during, n=100, method="inclusive")[98]
        stalls = sum(1 for x in during if x > STALL_MS)
        ok = qd <= 2 * qb and stalls == 0
        print(
            f"p99 during / before = {qd / qb:.2f} (target <= 2); requests over {STALL_MS:.0f} ms: {stalls}"
            f" -> {'PASS' if ok else 'FAIL'}"
        )
    if os.environ.get("JG_BENCH_WATCHDOG"):
        text = await asyncio.to_thread(
            Path(os.environ["JG_BENCH_WATCHDOG"]).read_text, errors="replace"
        )
        stalls_seen = text.split("STALL ")[1:]
        print(f"\nproxy event-loop stalls over 50 ms: {len(stalls_seen)}")
        for stamp, block in zip(text.split("STALL ")[:-1], stalls_seen, strict=True):
            # The loop thread's stack says what ran on the loop (or waited for the GIL).
            head, _, rest = block.partition("\n")
            at = float(stamp.rsplit("\n", 1)[-1].strip() or "nan") - trigger_wall
            head = f"{head} at {at:+.1f} s from the refresh signal"
            loop_stack = (
                rest.split("-- LOOP:", 1)[-1].split("\n-- thread", 1)[0]
                if "-- LOOP:" in rest
                else ""
            )
            print("STALL " + head + "\n" + loop_stack.rstrip()[-3000:])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    # The first seconds after launch are start-up (the strip workers, the campaign
    # detector and the first snapshot verification starting beside the proxy): not refresh.
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds after launch not measured")
    ap.add_argument(
        "--before", type=float, default=10.0, help="seconds measured before the refresh"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the work directory (feeds, cache, logs)"
    )
    ap.add_argument(
        "--in-thread", action="store_true", help="compile in a thread instead of a process"
    )
    return run(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
