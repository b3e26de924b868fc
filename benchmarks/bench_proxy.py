"""The allowed path through the real proxy: plain mitmdump vs block_list vs jectguard.

    python benchmarks/bench_proxy.py [--seconds 8] [--clients 32] [--small] [--data DIR]
                                     [--compare TREE]

Everything runs on loopback: a tiny origin (separate process, keep-alive, 2-byte
bodies), the proxy under test (separate process), and an asyncio load generator
with ``--clients`` concurrent keep-alive connections, each sending requests back
to back for ``--seconds``. Printed per configuration: requests/s, p50/p99
latency, and the proxy's CPU time per request.

Configurations:
  HTTP:     mitmdump | mitmdump + block_list with 1,000 entries | jectguard run
            (with the synthetic lists from gen_lists.py, 1.11M rules by default),
            plus jectguard answering blocked requests (CPU per blocked request).
  --compare TREE adds jectguard run from another checkout (e.g. ``git worktree add
  /tmp/old df36b6e``), so "before" is measured beside "now" on the same machine.
  Configurations run one after another, --rounds times, and each reports its best
  round: other load on the machine only ever makes a configuration look slower.
  CONNECT:  mitmdump --ignore-hosts '.*' | jectguard run --no-intercept: each
            client opens a tunnel, does TLS with the origin through it, then sends
            keep-alive requests inside it; tunnel set-up time is reported too.
Loads are bounded (time and connection count) and stay on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import free_port, stop, wait_port  # noqa: E402
from _procs import start as start_process  # noqa: E402

BIN = Path(sys.executable).parent
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
MAX_CLIENTS = 256


# -- origin (runs in its own process) ---------------------------------------------


async def _origin_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve_origin(port: int, tls_port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    a = await asyncio.start_server(_origin_conn, "127.0.0.1", port, backlog=1024)
    b = await asyncio.start_server(_origin_conn, "127.0.0.1", tls_port, ssl=ctx, backlog=1024)
    async with a, b:
        await asyncio.gather(a.serve_forever(), b.serve_forever())


def make_cert(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    c, k = directory / "origin.pem", directory / "origin.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


# -- processes ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    setup: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


# -- load -----------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def http_load(proxy_port: int, url: str, clients: int, seconds: float, r: Result) -> None:
    host = url.split("/")[2]
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                r.latencies.append(time.perf_counter() - t0)
                r.requests += 1
                r.statuses[status] = r.statuses.get(status, 0) + 1
        except (ConnectionError, asyncio.IncompleteReadError):
            r.errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    r.seconds = time.perf_counter() - t0


async def connect_load(
    proxy_port: int, origin_tls_port: int, cert: Path, clients: int, seconds: float, r: Result
) -> None:
    ctx = ssl.create_default_context(cafile=str(cert))
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        try:
            writer.write(f"CONNECT 127.0.0.1:{origin_tls_port} HTTP/1.1\r\n\r\n".encode())
            status = await _read_response(reader)
            if status != 200:
                r.errors += 1
                return
            await writer.start_tls(ctx, server_hostname="127.0.0.1")
            r.setup.append(time.perf_counter() - t0)
            while time.perf_counter() < deadline:
                t1 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                r.latencies.append(time.perf_counter() - t1)
                r.requests += 1
                r.statuses[status] = r.statuses.get(status, 0) + 1
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            r.errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    r.seconds = time.perf_counter() - t0


# -- configurations ---------------------------------------------------------------------


def start(cmd: list[str], log: Path, port: int, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start a proxy; ``tree`` is the checkout whose ``proxy_addons`` it runs (``-m`` takes
    the working directory first, then PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree != ROOT else None
    t0 = time.monotonic()
    proc = start_process(cmd, log, port, cwd=tree, env=env)
    print(
        f"  started {Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} "
        f"in {time.monotonic() - t0:.1f}s",
        flush=True,
    )
    return proc


QUIET = ["--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]


def mitmdump_cmd(port: int, confdir: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "mitmdump"),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        *QUIET,
        *extra,
    ]


# The origin is on loopback, on a random port: open it as for a local service.
LOCAL_ORIGIN = ["--allow-destination", "127.0.0.0/8", "--connect-ports", "1-65535"]


def jectguard_cmd(
    port: int, confdir: Path, lists: list[Path], *extra: str, tree: Path = ROOT
) -> list[str]:
    args = [a for p in lists for a in ("--blocklist", str(p))]
    # A checkout from before the destination policy (--compare) has no such flags.
    cli = [tree / "proxy_addons" / "cli" / "run.py", tree / "proxy_addons" / "run.py"]
    local = (
        LOCAL_ORIGIN
        if any(p.exists() and "--allow-destination" in p.read_text() for p in cli)
        else []
    )
    # The admin server runs (as it does for users) on a port of its own: two proxies of
    # one run, or another user's, must not meet on the default 8090.
    admin = [] if "--admin-port" in extra else ["--admin-port", str(free_port())]
    # its own cache (the sightings ledger lives there), never the user's
    return [
        sys.executable,
        "-m",
        "proxy_addons.cli",
        "run",
        "--listen-port",
        str(port),
        "--confdir",
        str(confdir),
        "--cache-dir",
        str(confdir / "jg-cache"),
        *args,
        *QUIET,
        *local,
        *admin,
        *extra,
    ]


def write_block_list_config(confdir: Path, n: int) -> None:
    confdir.mkdir(parents=True, exist_ok=True)
    lines = ["block_list:"] + [f"  - '/~d blocked{i}\\.example/403'" for i in range(n)]
    (confdir / "config.yaml").write_text("\n".join(lines) + "\n")


def measure_http(
    proc: subprocess.Popen[bytes], name: str, port: int, url: str, args: argparse.Namespace
) -> Result:
    clients = min(args.clients, MAX_CLIENTS)
    asyncio.run(http_load(port, url, clients, 1.0, Result("warmup")))
    r = Result(name)
    c0 = cpu_seconds(proc.pid)
    asyncio.run(http_load(port, url, clients, args.seconds, r))
    r.cpu = cpu_seconds(proc.pid) - c0
    return r


def measure_connect(
    proc: subprocess.Popen[bytes],
    name: str,
    port: int,
    tls_port: int,
    cert: Path,
    args: argparse.Namespace,
) -> Result:
    clients = min(args.clients, MAX_CLIENTS)
    asyncio.run(connect_load(port, tls_port, cert, clients, 1.0, Result("warmup")))
    r = Result(name)
    c0 = cpu_seconds(proc.pid)
    asyncio.run(connect_load(port, tls_port, cert, clients, args.seconds, r))
    r.cpu = cpu_seconds(proc.pid) - c0
    return r


def _commit(tree: Path) -> str:
    """The short commit a checkout is at (for the configuration's name)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return tree.name
    return out.stdout.strip()


def best_of(runs: dict[str, list[Result]]) -> list[Result]:
    """Per configuration, the round with the highest throughput (the least disturbed one)."""
    return [max(rs, key=lambda r: r.rps) for rs in runs.values()]


def report(results: list[Result], base: Result) -> None:
    print(
        f"\n{'configuration':<44}{'req/s':>9}{'vs plain':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99 x':>7}{'CPU us/req':>11}{'errors':>7}"
    )
    for r in results:
        cpu_per = r.cpu / r.requests * 1e6 if r.requests else float("nan")
        print(
            f"{r.name:<44}{r.rps:>9.0f}{r.rps / base.rps:>9.0%}{r.pct(50):>9.2f}"
            f"{r.pct(99):>9.2f}{r.pct(99) / base.pct(99):>7.2f}{cpu_per:>11.0f}{r.errors:>7}"
        )
        if r.setup:
            print(f"{'':<44}tunnel set-up p50 {statistics.median(r.setup) * 1000:.1f} ms")
        other = {k: v for k, v in r.statuses.items() if k not in (200, 403)}
        if other:
            print(f"{'':<44}unexpected statuses: {other}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    ap.add_argument(
        "--clients", type=int, default=32, help=f"concurrent connections (<= {MAX_CLIENTS})"
    )
    ap.add_argument("--data", type=Path, default=HERE / "data", help="gen_lists.py output")
    ap.add_argument("--small", action="store_true", help="use the small lists (quick check)")
    ap.add_argument("--only", choices=("http", "connect"), default=None)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the configurations this many times; report each one's best",
    )
    ap.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="TREE",
        help="also run jectguard from another checkout (a git worktree of an older "
        "commit) in the same rounds: before and after, side by side",
    )
    ap.add_argument(
        "--serve-origin",
        nargs=4,
        metavar=("PORT", "TLS_PORT", "CERT", "KEY"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()
    if args.serve_origin:
        port, tls_port, cert, key = args.serve_origin
        asyncio.run(serve_origin(int(port), int(tls_port), cert, key))
        return 0

    prefix = "small_" if args.small else ""
    lists = [args.data / f"{prefix}{n}.txt" for n in ("domains", "urls", "cidrs")]
    if not all(p.exists() for p in lists):
        print(f"generating lists in {args.data} ...", flush=True)
        subprocess.run(
            [sys.executable, str(HERE / "gen_lists.py"), "--out", str(args.data)], check=True
        )
    blocked_host = next(
        line.split()[-1]
        for line in lists[0].read_text().splitlines()
        if line.startswith("0.0.0.0 ")
    )

    with tempfile.TemporaryDirectory(prefix="jg-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cert, key = make_cert(tmp)
        oport, otls = free_port(), free_port()
        origin = subprocess.Popen(
            [sys.executable, __file__, "--serve-origin", str(oport), str(otls), str(cert), str(key)]
        )
        try:
            wait_port(oport, origin, tmp / "none", timeout=10)
            url = f"http://127.0.0.1:{oport}/"
            print(
                f"origin on 127.0.0.1:{oport} (TLS {otls}); {args.clients} clients, "
                f"{args.seconds:.0f}s per run; lists: {', '.join(p.name for p in lists)}"
            )
            if args.only in (None, "http"):
                write_block_list_config(tmp / "c2", 1000)
                configs = [
                    ("HTTP  mitmdump", mitmdump_cmd, tmp / "c1", url),
                    ("HTTP  mitmdump + block_list (1,000 entries)", mitmdump_cmd, tmp / "c2", url),
                    ("HTTP  jectguard (allowed)", None, tmp / "c3", url),
                    # the same without the sightings ledger: what the ledger costs
                    (
                        "HTTP  jectguard (allowed, jg_ledger=false)",
                        lambda port, confdir: jectguard_cmd(
                            port, confdir, lists, "--set", "jg_ledger=false", "--admin-port", "0"
                        ),
                        tmp / "c4",
                        url,
                    ),
                    (
                        "HTTP  jectguard (blocked, 403 from proxy)",
                        None,
                        tmp / "c3",
                        f"http://{blocked_host}/x.js",
                    ),
                ]
                if args.compare is not None:
                    other = args.compare.resolve()
                    configs.insert(
                        3,
                        (
                            f"HTTP  jectguard at {_commit(other)} (allowed)",
                            lambda port, confdir: jectguard_cmd(port, confdir, lists, tree=other),
                            tmp / "c5",
                            url,
                        ),
                    )
                procs: list[tuple[str, subprocess.Popen[bytes], int, str]] = []
                try:
                    jg: tuple[subprocess.Popen[bytes], int] | None = None
                    for name, maker, confdir, target in configs:
                        if maker is None and jg is not None:
                            procs.append((name, jg[0], jg[1], target))
                            continue
                        port = free_port()
                        cmd = (
                            maker(port, confdir)
                            if maker is not None
                            else jectguard_cmd(port, confdir, lists)
                        )
                        tree = ROOT
                        if args.compare is not None and " at " in name:
                            tree = args.compare.resolve()
                        proc = start(cmd, tmp / f"{len(procs)}.log", port, tree)
                        if maker is None:
                            jg = (proc, port)
                        procs.append((name, proc, port, target))
                    runs: dict[str, list[Result]] = {n: [] for n, *_ in procs}
                    for _ in range(args.rounds):
                        for name, proc, port, target in procs:
                            runs[name].append(measure_http(proc, name, port, target, args))
                finally:
                    for _, proc, _, _ in procs:
                        stop(proc)
                report(best_of(runs), best_of(runs)[0])
            if args.only in (None, "connect"):
                p1, p2 = free_port(), free_port()
                a = start(mitmdump_cmd(p1, tmp / "c1", "--ignore-hosts", ".*"), tmp / "t1.log", p1)
                b = None
                try:
                    b = start(
                        jectguard_cmd(p2, tmp / "c3", lists, "--no-intercept"), tmp / "t2.log", p2
                    )
                    runs = {
                        "CONNECT mitmdump --ignore-hosts '.*'": [],
                        "CONNECT jectguard --no-intercept": [],
                    }
                    for _ in range(args.rounds):
                        for (name, rs), proc, port in zip(
                            runs.items(), (a, b), (p1, p2), strict=True
                        ):
                            rs.append(measure_connect(proc, name, port, otls, cert, args))
                finally:
                    stop(a)
                    if b is not None:
                        stop(b)
                report(best_of(runs), best_of(runs)[0])
        finally:
            stop(origin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
