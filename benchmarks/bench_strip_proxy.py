"""Added latency of HTML stripping through the real proxy: ``jg_strip`` on vs off, one run.

    python benchmarks/bench_strip_proxy.py [--rounds 15] [--requests 20] [--hosts 10000]

Two ``jectguard run`` processes with the same lists (a generated block list of
``--hosts`` domains plus the Download.Ject address), one with ``jg_strip=true``
and one with ``jg_strip=false``, in front of one origin (its own process, keep-alive)
serving a realistic 100 KB page with ~40 scripts (``bench_htmlscan.make_page``):

  clean            the same page every time (the scanner's caches are warm, as for a site's
                   templated pages)
  clean, unique    every script URL changes on every request (cold verdict caches)
  clean, gzip      the page gzip-encoded (decoded, scanned, left untouched)
  injected         the page plus the Download.Ject footer (found, removed, body replaced)

One client sends requests one after another over a keep-alive connection (latency,
not throughput); the two proxies take turns for ``--rounds`` rounds of
``--requests`` requests per page, so load spikes hit both alike. Printed per page:
the median and p90 request time for each proxy and the added median latency.
Issue 5's target: clean 100 KB page <= 2 ms added median latency.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import free_port, start, stop  # noqa: E402
from bench_htmlscan import DOWNLOAD_JECT_FOOTER, make_page  # noqa: E402

REQUEST_TIMEOUT = 10.0
QUIET = ["--set", "termlog_verbosity=warn"]
PAGES = {
    "clean": "/clean",
    "clean, unique script URLs": "/unique",
    "clean, gzip": "/gzip",
    "injected (stripped)": "/injected",
}


# -- origin (its own process) ----------------------------------------------------------


def _response(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (len(body), extra)
    ) + body


async def serve_origin(port: int) -> None:
    page = make_page(100_000, 40)
    fixed = {
        b"/clean": _response(page),
        b"/gzip": _response(gzip.compress(page, 6), b"Content-Encoding: gzip\r\n"),
        b"/injected": _response(page + DOWNLOAD_JECT_FOOTER),
    }
    counter = itertools.count()

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                path = b"/" + target.split(b"/", 3)[-1] if target.startswith(b"http") else target
                if path in fixed:
                    writer.write(fixed[path])
                else:  # /unique: new script URLs every time
                    n = b"%d" % next(counter)
                    writer.write(_response(page.replace(b"widget-", b"widget-" + n + b"-")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", port, backlog=64)
    async with server:
        await server.serve_forever()


# -- processes --------------------------------------------------------------------------


def jectguard_cmd(port: int, tmp: Path, blocklist: Path, strip: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxy_addons.cli",
        "run",
        "--listen-port",
        str(port),
        "--confdir",
        str(tmp / "confdir"),
        "--cache-dir",
        str(tmp / "cache"),
        "--admin-port",
        "0",
        "--events-file",
        "",
        "--blocklist",
        str(blocklist),
        *QUIET,
        "--set",
        f"jg_strip={'true' if strip else 'false'}",
        # the origin is on loopback, on a random port: open it as for a local service
        "--allow-destination",
        "127.0.0.0/8",
        "--connect-ports",
        "1-65535",
    ]


# -- client -----------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection to a proxy, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, url: str) -> tuple[float, bytes]:
        host = url.split("/")[2]
        t0 = time.perf_counter()
        self.sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return time.perf_counter() - t0, head + b"\r\n\r\n" + body

    def _recv(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("proxy closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20, help="per page, per proxy, per round")
    parser.add_argument("--hosts", type=int, default=10_000, help="domains in the block list")
    parser.add_argument("--serve-origin", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        asyncio.run(serve_origin(args.serve_origin))
        return

    with tempfile.TemporaryDirectory(prefix="jg_strip_bench_") as t:
        tmp = Path(t)
        blocklist = tmp / "block.txt"
        blocklist.write_text(
            "".join(f"bad{i}.example\n" for i in range(args.hosts)) + "217.107.218.147\n"
        )
        oport = free_port()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(
                start(
                    [sys.executable, __file__, "--serve-origin", str(oport)],
                    tmp / "origin.log",
                    oport,
                )
            )
            ports = {}
            for name, strip in (("strip on", True), ("strip off", False)):
                port = free_port()
                where = tmp / name.replace(" ", "_")
                where.mkdir()
                procs.append(
                    start(jectguard_cmd(port, where, blocklist, strip), where / "proxy.log", port)
                )
                ports[name] = port
            clients = {name: Client(port) for name, port in ports.items()}
            times: dict[tuple[str, str], list[float]] = {(n, p): [] for n in ports for p in PAGES}
            base = f"http://127.0.0.1:{oport}"
            # Warm-up (and a sanity check: the injected page is stripped only with strip on).
            for name, c in clients.items():
                for _ in range(5):
                    for path in PAGES.values():
                        c.get(base + path)
                _, resp = c.get(base + "/injected")
                assert (b"dot.php" in resp) == (name == "strip off"), name
            for _ in range(args.rounds):
                for page, path in PAGES.items():
                    for name, c in clients.items():
                        for _ in range(args.requests):
                            times[(name, page)].append(c.get(base + path)[0])
            for c in clients.values():
                c.close()
        finally:
            for p in reversed(procs):
                stop(p)

    n = args.rounds * args.requests
    print(
        f"100 KB page, ~40 scripts; {n} requests per page per proxy, one at a time, "
        f"keep-alive; block list of {args.hosts} domains"
    )
    print(f"{'page':28s} | {'strip off':>18s} | {'strip on':>18s} | {'added':>8s}")
    print(f"{'':28s} | {'median':>8s} {'p90':>9s} | {'median':>8s} {'p90':>9s} | {'median':>8s}")
    for page in PAGES:
        off, on = times[("strip off", page)], times[("strip on", page)]
        off_med, on_med = statistics.median(off), statistics.median(on)
        off_p90 = statistics.quantiles(off, n=10)[-1]
        on_p90 = statistics.quantiles(on, n=10)[-1]
        print(
            f"{page:28s} | {ms(off_med)}  {ms(off_p90)} | {ms(on_med)}  {ms(on_p90)} |"
            f" {ms(on_med - off_med)}   (ms)"
        )


if __name__ == "__main__":
    main()
