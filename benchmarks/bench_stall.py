"""Does scanning a big page stall other connections? ``jectguard run`` vs plain mitmdump, one run.

    python benchmarks/bench_stall.py [--rounds 3] [--loads 2] [--quick] [--no-strip] [--scan-only]

One origin (its own process) serves pages with megabytes of inline script, the
shape of a server-rendered app's state:

  js 1.3 MB / js 5 MB      ``<script>window.__STATE__ = {...}</script>`` (JavaScript: judged
                           by its text), new bytes on every load (no cache can help)
  json 1.3 MB / json 5 MB  ``<script id="__NEXT_DATA__" type="application/json">``, new bytes
  js 5 MB, new URLs        every load names 8,400 image URLs never seen before (same hosts)
  js 5 MB, repeated        the same bytes every load (a site's shell served to every client)

and a small page (2 KB HTML). For each proxy in turn (a real ``jectguard run`` with
stripping on, and plain ``mitmdump`` with no addons), one client loads the big pages
one after another while a second client sends small requests back to back over
keep-alive, then loads them alone; the proxies alternate for ``--rounds`` rounds.
Printed: the small requests' p50/p99/max latency while big pages were in flight, for
both proxies and the difference; each big page's median load time and the time
jectguard adds, with the small requests running (the proxy's own CPU saturated: the
scan worker competes with it) and alone; and each page's scan in this process (CPU
time, cold and warm verdict caches: the worker's work, robust to machine load).
Timings through the proxies depend on the machine's load: state it with each figure.

Issue 17's targets: no small request waits more than 50 ms longer because a big
page is scanned; a page with 5 MB of inline script adds at most 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _procs import free_port, start, stop  # noqa: E402
from bench_strip_proxy import QUIET, jectguard_cmd  # noqa: E402

REQUEST_TIMEOUT = 60.0
SMALL = (
    b"<!doctype html><html><head><meta charset=utf-8><title>small</title>"
    b'<script src="/static/app.js"></script></head><body><h1>Small</h1>'
    + b"<p>lorem ipsum dolor sit amet</p>" * 50
    + b"<script>window.ok = 1;</script></body></html>"
)
BIG = {
    # name: (kind, bytes of state, what changes each load: "bytes" (a nonce in every
    # item's slug), "urls" (a nonce in every image URL: none was judged before), "")
    "js 1.3 MB": ("js", 1_300_000, "bytes"),
    "js 5 MB": ("js", 5_000_000, "bytes"),
    "json 1.3 MB": ("json", 1_300_000, "bytes"),
    "json 5 MB": ("json", 5_000_000, "bytes"),
    "js 5 MB, new URLs": ("js", 5_000_000, "urls"),
    "js 5 MB, repeated": ("js", 5_000_000, ""),
}
QUICK = ("js 1.3 MB", "js 5 MB", "js 5 MB, new URLs", "js 5 MB, repeated")


def renewed(body: bytes, change: str, nonce: int) -> bytes:
    """``body`` as served once more: new bytes, or new URLs, or the same (see ``BIG``)."""
    if change == "bytes":
        return body.replace(b'"slug": "post-', b'"slug": "n%d-post-' % nonce)
    if change == "urls":
        return body.replace(b"/img/", b"/img/n%d-" % nonce)
    return body


def app_state(size: int, seed: int = 1) -> bytes:
    """JSON app state: posts with image URLs, author links and text (~9k URLs per 5 MB)."""
    rnd = random.Random(seed)
    items: list[str] = []
    n = 0
    for i in itertools.count():
        item = json.dumps(
            {
                "id": i,
                "slug": f"post-{i}-{rnd.randrange(10**6)}",
                "title": "lorem ipsum dolor sit amet",
                "image": f"https://cdn{i % 7}.example.com/img/{i}/{rnd.randrange(10**9)}.jpg",
                "author": {"name": "A. Writer", "href": f"/authors/{i % 500}"},
                "body": "lorem ipsum dolor sit amet consectetur " * 10,
            }
        )
        items.append(item)
        n += len(item) + 1
        if n >= size:
            break
    return b'{"props":{"pageProps":{"items":[' + ",".join(items).encode() + b"]}}}"


def escaped_state(size: int, seed: int = 1) -> bytes:
    """App state as Rails, PHP or Next.js embed it: quotes, newlines, slashes and "<"
    escaped in every item (~270k escapes per 5 MB: the text is read raw and decoded)."""
    rnd = random.Random(seed)
    items: list[str] = []
    n = 0
    for i in itertools.count():
        item = json.dumps(
            {
                "id": i,
                "title": 'He said "lorem" & <b>ipsum</b>',
                "image": f"https://cdn{i % 7}.example.com/img/{i}/{rnd.randrange(10**9)}.jpg",
                "html": f'<p class="x">lorem ipsum dolor</p>\n<a href="/p/{i}">more</a>',
                "body": "lorem ipsum dolor sit amet consectetur\n" * 8,
            }
        )
        item = item.replace("<", "\\u003c").replace("/", "\\/")
        items.append(item)
        n += len(item) + 1
        if n >= size:
            break
    return ("[" + ",".join(items) + "]").encode()


def big_page(kind: str, state: bytes) -> bytes:
    if kind == "json":
        script = b'<script id="__NEXT_DATA__" type="application/json">' + state + b"</script>"
    else:
        script = b"<script>window.__STATE__ = " + state + b";</script>"
    return (
        b"<!doctype html><html><head><meta charset=utf-8><title>app</title></head>"
        b'<body><div id="root"><h1>App</h1></div>' + script + b"</body></html>"
    )


def _response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


async def serve_origin(port: int) -> None:
    pages = {name: big_page(kind, app_state(size)) for name, (kind, size, _) in BIG.items()}
    paths = {f"/big{i}".encode(): name for i, name in enumerate(BIG)}
    counter = itertools.count()

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                path = b"/" + target.split(b"/", 3)[-1] if target.startswith(b"http") else target
                name = paths.get(path)
                if name is None:
                    writer.write(_response(SMALL))
                else:
                    body = renewed(pages[name], BIG[name][2], next(counter))
                    writer.write(_response(body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", port, backlog=64)
    async with server:
        await server.serve_forever()


class Client:
    """One keep-alive HTTP/1.1 connection to a proxy, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def get(self, url: str) -> tuple[float, int, bytes]:
        host = url.split("/")[2]
        t0 = time.perf_counter()
        self.sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self._recv()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return time.perf_counter() - t0, status, body

    def _recv(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("proxy closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def phase(
    port: int, base: str, names: list[str], loads: int, *, with_small: bool = True
) -> tuple[list[float], dict[str, list[float]]]:
    """Big pages loaded one after another while small requests run back to back
    (``with_small``; without, the big pages alone: what a page costs on a proxy
    that is not also saturated by a client hammering it)."""
    small: list[float] = []
    stop_small = threading.Event()
    started = threading.Event()

    def small_client() -> None:
        c = Client(port)
        try:
            c.get(base + "/small")
            started.set()
            while not stop_small.is_set():
                t, status, _ = c.get(base + "/small")
                assert status == 200, status
                small.append(t)
        finally:
            c.close()

    t = threading.Thread(target=small_client, daemon=True)
    if with_small:
        t.start()
        started.wait(REQUEST_TIMEOUT)
    big: dict[str, list[float]] = {n: [] for n in names}
    c = Client(port)
    try:
        for _ in range(loads):
            for n in names:
                elapsed, status, body = c.get(f"{base}/big{list(BIG).index(n)}")
                assert status == 200 and len(body) > 1_000_000, (n, status, body[:200])
                big[n].append(elapsed)
    finally:
        stop_small.set()
        if with_small:
            t.join(REQUEST_TIMEOUT)
        c.close()
    return small, big


def scan_times(names: list[str], blocklist: str, repeats: int = 5) -> None:
    """Each big page scanned in this process (the worker's work, without the proxy):
    CPU time, new bytes every scan; "cold" with a new Scanner each time (no URL
    verdict remembered: URLs the worker never saw), "warm" with one Scanner."""
    from proxy_addons.core.engine import Engine, blocked_by
    from proxy_addons.core.formats import parse_list
    from proxy_addons.core.htmlscan import Scanner
    from proxy_addons.core.model import ListSpec
    from proxy_addons.lists.signatures import DEFAULT_SIGNATURES, read_signatures

    engine, _, _ = Engine.from_lists(
        [(ListSpec(name="bench", category="malware"), parse_list(blocklist, name="bench"))]
    )
    _, signatures = read_signatures(str(DEFAULT_SIGNATURES))
    nonce = itertools.count()
    print(f"{'scan in one process, CPU (ms)':28s} | {'cold':>9s} {'warm':>9s}  (best of {repeats})")
    for n in names:
        kind, size, change = BIG[n]
        page = big_page(kind, app_state(size))
        warm = Scanner(blocked_by(engine), signatures)
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        for _ in range(repeats + 1):  # (the first warms the warm scanner)
            for label in ("cold", "warm"):
                scanner = warm if label == "warm" else Scanner(blocked_by(engine), signatures)
                body = renewed(page, change, next(nonce))
                t0 = time.process_time()
                found = scanner.scan(body, "http://127.0.0.1/big", "text/html; charset=utf-8")
                times[label].append(time.process_time() - t0)
                assert found == [], found
        print(f"{n:28s} | {ms(min(times['cold']))}  {ms(min(times['warm'][1:]))}")
    # Serialized state with escapes everywhere (read twice: raw and decoded).
    for size in (1_300_000, 5_000_000):
        page = big_page("js", escaped_state(size))
        best = {"cold": float("inf"), "warm": float("inf")}
        warm = Scanner(blocked_by(engine), signatures)
        for r in range(repeats + 1):
            for label in ("cold", "warm"):
                scanner = warm if label == "warm" else Scanner(blocked_by(engine), signatures)
                body = page.replace(b'"id": ', b'"id": %d' % next(nonce), 1)
                t0 = time.process_time()
                scanner.scan(body, "http://127.0.0.1/big", "text/html; charset=utf-8")
                if r or label == "cold":
                    best[label] = min(best[label], time.process_time() - t0)
        label = f"js {size / 1e6:.1f} MB, escaped"
        print(f"{label:28s} | {ms(best['cold'])}  {ms(best['warm'])}")
    # The worst case for a body scanned on the event loop (INLINE_SCAN_BYTES): script
    # text dense with URLs none of which was judged before.
    for size in (32 * 1024, 256 * 1024):
        best = float("inf")
        for _ in range(repeats):
            urls = []
            while sum(map(len, urls)) < size:
                i = next(nonce)
                urls.append(f'"https://cdn{i % 13}.example{i % 5}.com/a/{i}/app.{i * 7919}.js",')
            body = f"<html><script>var u=[{''.join(urls)}];</script></html>".encode()
            scanner = Scanner(blocked_by(engine), signatures)
            t0 = time.process_time()
            scanner.scan(body, "http://127.0.0.1/dense", "text/html")
            best = min(best, time.process_time() - t0)
        label = f"{size // 1024} KB, {len(urls)} new URLs"
        print(f"{label:28s} | {ms(best)}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", type=int, default=2, help="loads of each big page per phase")
    parser.add_argument("--workers", type=int, default=2, help="jg_strip_workers")
    parser.add_argument("--quick", action="store_true", help="js pages only, one round")
    parser.add_argument(
        "--set", action="append", default=[], metavar="OPTION=VALUE", dest="sets",
        help="another option for jectguard run (repeatable), e.g. jg_campaign=false",
    )  # fmt: skip
    parser.add_argument(
        "--no-strip", action="store_true",
        help="jectguard with jg_strip=false: what the proxy adds without any scan",
    )  # fmt: skip
    parser.add_argument(
        "--scan-only", action="store_true",
        help="only scan the big pages in this process (CPU time: robust to machine load)",
    )  # fmt: skip
    parser.add_argument("--serve-origin", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        asyncio.run(serve_origin(args.serve_origin))
        return
    names = list(QUICK if args.quick else BIG)
    rounds = 1 if args.quick else args.rounds
    blocklist = "".join(f"bad{i}.example\n" for i in range(10_000))
    if args.scan_only:
        scan_times(names, blocklist)
        return

    with tempfile.TemporaryDirectory(prefix="jg_stall_bench_") as t:
        tmp = Path(t)
        (tmp / "block.txt").write_text(blocklist)
        oport = free_port()
        procs = []
        try:
            procs.append(
                start(
                    [sys.executable, __file__, "--serve-origin", str(oport)],
                    tmp / "origin.log",
                    oport,
                )
            )
            ports: dict[str, int] = {}
            jport = free_port()
            (tmp / "jg").mkdir()
            cmd = jectguard_cmd(jport, tmp / "jg", tmp / "block.txt", not args.no_strip)
            cmd += ["--set", f"jg_strip_workers={args.workers}"]
            cmd += [a for o in args.sets for a in ("--set", o)]
            procs.append(start(cmd, tmp / "jg" / "proxy.log", jport))
            ports["jectguard"] = jport
            mport = free_port()
            mitmdump = [
                sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
                "--listen-host", "127.0.0.1", "--listen-port", str(mport),
                "--set", f"confdir={tmp / 'mitm'}", *QUIET,
            ]  # fmt: skip
            procs.append(start(mitmdump, tmp / "mitmdump.log", mport))
            ports["mitmdump"] = mport
            base = f"http://127.0.0.1:{oport}"
            small: dict[str, list[float]] = {p: [] for p in ports}
            big: dict[str, dict[str, list[float]]] = {p: {n: [] for n in names} for p in ports}
            alone: dict[str, dict[str, list[float]]] = {p: {n: [] for n in names} for p in ports}
            for port in ports.values():  # warm-up: workers started, the repeated page seen once
                phase(port, base, names, 1)
            for r in range(rounds):
                order = list(ports) if r % 2 == 0 else list(reversed(ports))
                for p in order:
                    s, b = phase(ports[p], base, names, args.loads)
                    small[p] += s
                    _, a = phase(ports[p], base, names, args.loads, with_small=False)
                    for n in names:
                        big[p][n] += b[n]
                        alone[p][n] += a[n]
        finally:
            for proc in reversed(procs):
                stop(proc)

    print(
        f"{rounds} round(s) x {args.loads} load(s) of each big page per proxy; small requests "
        f"(2 KB HTML) back to back meanwhile; jg_strip_workers={args.workers}"
        + "".join(f", {o}" for o in args.sets)
        + (", jg_strip=false" if args.no_strip else "")
    )
    print(f"{'small requests (ms)':28s} | {'n':>6s} {'p50':>8s} {'p99':>8s} {'max':>8s}")
    for p in ("mitmdump", "jectguard"):
        xs = small[p]
        print(f"{p:28s} | {len(xs):6d} {ms(pct(xs, 0.5))} {ms(pct(xs, 0.99))} {ms(max(xs))}")
    j, m = small["jectguard"], small["mitmdump"]
    print(
        f"{'added by jectguard':28s} | {'':6s} {ms(pct(j, 0.5) - pct(m, 0.5))} "
        f"{ms(pct(j, 0.99) - pct(m, 0.99))} {ms(max(j) - max(m))}"
    )
    for title, loads in (("with small requests", big), ("alone", alone)):
        print()
        print(
            f"{'big page load, median (ms)':28s} | {'mitmdump':>9s} {'jectguard':>9s} "
            f"{'added':>8s}  ({title})"
        )
        for n in names:
            mm, jj = (
                statistics.median(loads["mitmdump"][n]),
                statistics.median(loads["jectguard"][n]),
            )
            print(f"{n:28s} | {ms(mm)}  {ms(jj)} {ms(jj - mm)}")
    if not args.no_strip:
        print()
        scan_times(names, blocklist)


if __name__ == "__main__":
    main()
