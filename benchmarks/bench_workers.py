"""Scaling of ``jectguard run --workers N`` under a C load generator (Debian's ``wrk``).

    python benchmarks/bench_workers.py [--workers 1,2] [--seconds 10] [--connections 64]
                                       [--threads 1] [--small]

A tiny origin (bench_proxy.py's, its own process) serves 2-byte responses; ``wrk``
sends absolute-form proxy requests (benchmarks/wrk_proxy.lua) over keep-alive
connections for ``--seconds``. For plain mitmdump (one process) and for jectguard
with each worker count (1.11M rules by default, the synthetic lists of
gen_lists.py) it prints requests/s, wrk's p50/p99, the proxy's CPU per request
(every worker summed) and the CPU time wrk and the origin used: on a 2-core
machine they take a share of the cores the workers would use, which caps the
scaling this machine can show.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _procs import STARTUP_TIMEOUT, free_port, stop, wait_port  # noqa: E402
from bench_proxy import (  # noqa: E402 - the benchmarks folder is not a package
    LOCAL_ORIGIN,
    QUIET,
    cpu_seconds,
    make_cert,
    mitmdump_cmd,
)

LUA = HERE / "wrk_proxy.lua"


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (the supervisor and its workers)."""
    total = cpu_seconds(pid)
    for child in psutil.Process(pid).children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def listeners(pid: int, port: int) -> int:
    n = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children()]:
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in p.net_connections(kind="tcp")
            ):
                n += 1
        except psutil.Error:
            pass
    return n


def run_wrk(port: int, target: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{args.seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "JG_TARGET": target}
    )
    ps = psutil.Process(proc.pid)
    cpu = 0.0
    while proc.poll() is None:
        try:
            t = ps.cpu_times()
            cpu = t.user + t.system
        except psutil.Error:
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    got = {k: float(v) for k, v in re.findall(r"JG (\S+) (\d+)", out)}
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": float(total.group(1)) if total else 0.0,
        "wrk_cpu": cpu,
        "wall": time.monotonic() - t0,
        **got,
        "socket_errors": 1.0 if errors else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker counts to measure (comma-separated)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves a core free)")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--small", action="store_true", help="1,000-rule lists (quick check)")
    ap.add_argument("--no-mitmdump", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    lists = [args.data / f"{n}.txt" for n in ("domains", "urls", "cidrs")]
    if not all(p.exists() for p in lists):
        subprocess.run(
            [sys.executable, str(HERE / "gen_lists.py"), "--out", str(args.data)], check=True
        )
    if args.small:
        small = Path(tempfile.mkdtemp(prefix="jg-small-"))
        for p in lists:
            (small / p.name).write_text("\n".join(p.read_text().splitlines()[:1000]) + "\n")
        lists = [small / p.name for p in lists]

    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s"
    )
    print(
        f"{'proxy':<28}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>11}"
        f"{'wrk CPU %':>10}{'origin CPU %':>13}{'non-2xx':>8}"
    )
    with tempfile.TemporaryDirectory(prefix="jg-wrk-") as tmpdir:
        tmp = Path(tmpdir)
        cert, key = make_cert(tmp)
        oport, otls = free_port(), free_port()
        origin = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bench_proxy.py"),
                "--serve-origin",
                str(oport),
                str(otls),
                str(cert),
                str(key),
            ]
        )
        target = f"http://127.0.0.1:{oport}/"
        configs: list[tuple[str, list[str], int]] = []
        port = free_port()
        if not args.no_mitmdump:
            configs.append(("mitmdump", mitmdump_cmd(port, tmp / "c0"), 1))
        for n in (int(x) for x in args.workers.split(",")):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "proxy_addons.cli",
                "run",
                "--listen-port",
                str(port),
                "--confdir",
                str(tmp / "c1"),
                "--cache-dir",
                str(tmp / "cache"),
                "--admin-port",
                "0",
                "--events-file",
                "",
                *[a for p in lists for a in ("--blocklist", str(p))],
                *QUIET,
                *LOCAL_ORIGIN,
                "--workers",
                str(n),
            ]
            configs.append((f"jectguard --workers {n}", cmd, n))
        try:
            wait_port(oport, origin, 10, tmp / "none")
            for name, cmd, n in configs:
                port = int(cmd[cmd.index("--listen-port") + 1])
                log = tmp / f"{name.replace(' ', '_')}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent
                    )
                try:
                    wait_port(port, proc, log, STARTUP_TIMEOUT)
                    deadline = time.monotonic() + STARTUP_TIMEOUT
                    while listeners(proc.pid, port) < n and time.monotonic() < deadline:
                        time.sleep(0.2)
                    args_warm = argparse.Namespace(**{**vars(args), "seconds": 2})
                    run_wrk(port, target, args_warm)
                    c0, o0 = tree_cpu(proc.pid), cpu_seconds(origin.pid)
                    r = run_wrk(port, target, args)
                    cpu, ocpu = tree_cpu(proc.pid) - c0, cpu_seconds(origin.pid) - o0
                finally:
                    stop(proc)
                per = cpu / r["requests"] * 1e6 if r["requests"] else float("nan")
                print(
                    f"{name:<28}{r['rps']:>9.0f}{r.get('p50_us', 0) / 1000:>8.2f}"
                    f"{r.get('p99_us', 0) / 1000:>8.2f}{per:>11.0f}"
                    f"{r['wrk_cpu'] / r['wall']:>10.0%}{ocpu / args.seconds:>13.0%}"
                    f"{r.get('non-2xx', 0):>8.0f}",
                    flush=True,
                )
        finally:
            stop(origin)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
