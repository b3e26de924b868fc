"""Memory cost of serving one snapshot from N processes, by how the bytes are held.

    .venv/bin/python benchmarks/bench_snapshot_memory.py [--workers 4] [--lookups 200000]

Compiles the 1.11M-rule synthetic set (gen_lists.py, as bench_engine.py) into
one snapshot file, then for each way of holding it starts N worker processes
that load it and run lookups (half hits), and reads every worker's
``/proc/<pid>/smaps_rollup`` while all N are alive. PSS splits each shared
page among the processes that map it, so the sum of PSS is what the N
processes really cost together; "private" is what each costs alone.

- ``shared-map``: map the published file itself (what jectguard did before
  the private copy; a truncation of that file kills every worker with SIGBUS);
- ``private-copy``: a verified copy in a folder only this user writes, named
  by checksum, mapped read-only (what jectguard does now): shared like the
  above, and immune to changes of the published file;
- ``memory``: the verified bytes read into each process (the fallback when
  no private folder is usable);
- ``map-private``: ``MAP_PRIVATE`` of the published file, for comparison: it
  shares pages like ``shared-map`` but still dies of SIGBUS on truncation.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
METHODS = ("shared-map", "private-copy", "memory", "map-private")


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def worker(method: str, snapshot: Path, copy_dir: Path, queries: Path, lookups: int) -> None:
    from proxy_addons.core.engine import Engine
    from proxy_addons.core.index import CompiledIndex

    before = smaps_rollup(os.getpid())
    t0 = time.perf_counter()
    if method == "private-copy":
        index = CompiledIndex.load(snapshot, copy_dir=copy_dir)
    elif method == "memory":
        index = CompiledIndex.load(snapshot)
    else:
        f = open(snapshot, "rb")  # noqa: SIM115 - held for the mapping's lifetime
        flags = mmap.MAP_SHARED if method == "shared-map" else mmap.MAP_PRIVATE
        index = CompiledIndex(
            mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ), verify=False
        )
    load_ms = (time.perf_counter() - t0) * 1000
    engine = Engine(index, Engine.empty_allow())
    qs = queries.read_text().split()
    hits = 0
    for i in range(lookups):
        hits += engine.check_url(qs[i % len(qs)]).blocked
    print(json.dumps({"load_ms": load_ms, "hits": hits, "before": before}), flush=True)
    sys.stdin.read()  # stay alive until the parent has measured every worker


def run(
    method: str, n: int, snapshot: Path, copy_dir: Path, queries: Path, lookups: int
) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                method,
                "--snapshot",
                str(snapshot),
                "--copy-dir",
                str(copy_dir),
                "--queries",
                str(queries),
                "--lookups",
                str(lookups),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        first = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        rolls = [smaps_rollup(p.pid) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait()
    mb = 1024.0
    return {
        "pss_total_mb": sum(
            r["Pss"] - f["before"]["Pss"] for r, f in zip(rolls, first, strict=True)
        )
        / mb,
        "rss_each_mb": max(r["Rss"] - f["before"]["Rss"] for r, f in zip(rolls, first, strict=True))
        / mb,
        "private_each_mb": max(
            (r["Private_Clean"] + r["Private_Dirty"])
            - (f["before"]["Private_Clean"] + f["before"]["Private_Dirty"])
            for r, f in zip(rolls, first, strict=True)
        )
        / mb,
        "load_ms": max(f["load_ms"] for f in first),
    }


def load_timings(snapshot: Path, copy_dir: Path) -> dict[str, float]:
    """Milliseconds (best of 5) of each load path and of the follower's re-verification."""
    from proxy_addons.core.index import CompiledIndex, check_published

    def best(fn: object) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append((time.perf_counter() - t0) * 1000)
        return min(times)

    def first_copy() -> None:
        for p in copy_dir.glob("*"):
            p.unlink()
        CompiledIndex.load(snapshot, copy_dir=copy_dir).close()

    copy_dir.mkdir(mode=0o700)
    out = {
        "make private copy": best(first_copy),
        "adopt private copy": best(lambda: CompiledIndex.load(snapshot, copy_dir=copy_dir).close()),
        "read into memory": best(lambda: CompiledIndex.load(snapshot).close()),
    }
    origin = CompiledIndex.load(snapshot).origin
    assert origin is not None
    out["re-verify: stat"] = best(lambda: check_published(origin, origin.identity))
    out["re-verify: checksum"] = best(lambda: check_published(origin, origin.identity, full=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--worker", choices=METHODS)
    ap.add_argument("--snapshot", type=Path)
    ap.add_argument("--copy-dir", type=Path)
    ap.add_argument("--queries", type=Path)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.snapshot, args.copy_dir, args.queries, args.lookups)
        return
    from bench_engine import ensure_data, lists_in

    from proxy_addons.core.formats import parse_list
    from proxy_addons.core.index import compile_index
    from proxy_addons.core.model import ListSpec

    ensure_data(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "block.jgs"
        lists = [
            (ListSpec(p.stem), parse_list(p.read_bytes(), "auto", name=p.stem))
            for p in lists_in(args.data, False)
        ]
        image, stats = compile_index(lists)
        image.write(snapshot)
        del image, lists
        size_mb = snapshot.stat().st_size / 1024**2
        copy_dir = Path(tmp) / "copies"
        copy_dir.mkdir(mode=0o700)
        print(
            f"snapshot: {stats.rules} rules, {size_mb:.1f} MB; {args.workers} workers, "
            f"{args.lookups} lookups each"
        )
        timings = load_timings(snapshot, Path(tmp) / "timing-copies")
        print("load, one process (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        print(
            f"{'method':<14}{'PSS sum MB':>12}{'RSS each MB':>13}{'private each MB':>17}{'load ms':>9}"
        )
        for method in METHODS:
            r = run(
                method, args.workers, snapshot, copy_dir, args.data / "queries.txt", args.lookups
            )
            print(
                f"{method:<14}{r['pss_total_mb']:>12.1f}{r['rss_each_mb']:>13.1f}"
                f"{r['private_each_mb']:>17.1f}{r['load_ms']:>9.0f}"
            )
        copies = sum(p.stat().st_size for p in copy_dir.glob("*.jgs")) / 1024**2
        print(f"private copies on disk: {copies:.1f} MB (one per snapshot, whatever N)")


if __name__ == "__main__":
    main()
