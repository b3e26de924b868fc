"""The sightings ledger's costs: per request on the event loop, per flush, per hunt.

    python benchmarks/bench_ledger.py [--hosts 100000] [--rules 200000]

1. the addon's request hook (what the allowed path pays on the event loop), on a
   mitmproxy test flow, against the same call with the ledger off;
2. writing a batch of 10,000 distinct keys to SQLite (in the flush thread);
3. a retro-hunt: ``--hosts`` ledger hosts against a snapshot that adds
   ``--rules`` domain rules (1% of the hosts are among them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mitmproxy.test import taddons, tflow

from proxy_addons.addons.ledger import LedgerAddon
from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, ParsedList, Rule, RuleKind
from proxy_addons.core.retro import retro_matches
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.ledger import Ledger, SightingBatch
from proxy_addons.telemetry.metrics import Metrics


def _engine(hosts: list[str]) -> Engine:
    rules = [Rule(RuleKind.DOMAIN, h, h, i) for i, h in enumerate(hosts, 1)]
    return Engine.from_lists([(ListSpec("feed"), ParsedList("domains", rules))])[0]


def hook_cost(tmp: Path, n: int) -> None:
    for on in (True, False):
        addon = LedgerAddon(EngineHolder(_engine(["old.example"])), EventLog(), Metrics())
        with taddons.context(addon) as tctx:
            tctx.options.add_option("jg_cache_dir", str, str(tmp / f"c{on}"), "")
            tctx.configure(addon, jg_ledger=on)
            flows = [tflow.tflow() for _ in range(100)]
            for i, f in enumerate(flows):
                f.request.host = f"site{i}.example"
                f.metadata["proxyauth"] = ("alice", "pw")
            t0 = time.perf_counter()
            for i in range(n):
                addon.requestheaders(flows[i % 100])
            dt = time.perf_counter() - t0
            print(
                f"request hook, ledger {'on ' if on else 'off'}: {dt / n * 1e6:6.2f} us per request"
            )
            if addon.ledger is not None:
                addon.ledger.close()


def flush_cost(tmp: Path) -> None:
    led = Ledger(tmp / "flush.sqlite3")
    b = SightingBatch()
    now = time.time()
    for i in range(10_000):
        b.add(f"h{i}.example", f"10.0.{i % 250}.{i % 200}", "alice", now)
    rows = b.take()
    t0 = time.perf_counter()
    led.write(rows)
    t1 = time.perf_counter()
    led.write(rows)  # all updates this time
    t2 = time.perf_counter()
    print(f"flush of 10,000 keys to SQLite: {t1 - t0:.3f} s new, {t2 - t1:.3f} s upserted")
    led.close()


def hunt_cost(n_hosts: int, n_rules: int) -> None:
    old = _engine(["old.example"])
    listed = [f"bad{i}.example" for i in range(n_rules)]
    new = _engine(["old.example", *listed])
    hosts = [f"www.site{i}.example" for i in range(n_hosts - n_hosts // 100)]
    hosts += [f"cdn.bad{i}.example" for i in range(n_hosts // 100)]
    t0 = time.perf_counter()
    found = retro_matches(old, new, hosts)
    dt = time.perf_counter() - t0
    print(f"retro-hunt: {n_hosts:,} hosts vs {n_rules:,} added rules: {dt:.2f} s, "
          f"{len(found):,} hits")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=100_000)
    ap.add_argument("--rules", type=int, default=200_000)
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jg-bench-ledger-") as d:
        hook_cost(Path(d), args.calls)
        flush_cost(Path(d))
    hunt_cost(args.hosts, args.rules)


if __name__ == "__main__":
    main()
