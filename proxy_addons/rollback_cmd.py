"""``jectguard rollback``: put the previous compiled snapshot back in force.

Running proxies (refresh or watch role) switch within seconds. The rolled-back
snapshot stays in force until a refresh brings a changed feed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.errors import SnapshotError
from .loading import default_cache_dir

EXIT_OK = 0
EXIT_INPUT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1, metavar="N",
                   help="go back N snapshots (default 1)")
    p.add_argument("--list", action="store_true", help="only list the kept snapshots")


def main(args: argparse.Namespace) -> int:
    from .store import SnapshotStore

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    store = SnapshotStore(cache)
    if args.list:
        snaps = store.list_snapshots()
        if not snaps:
            print(f"no snapshots in {store.dir}")
        for s in snaps:
            print(f"{'*' if s.current else ' '} {s.name}  {s.size / 1e6:.1f} MB")
        return EXIT_OK
    try:
        target = store.rollback(args.steps)
    except SnapshotError as exc:
        print(f"jectguard rollback: {exc}", file=sys.stderr)
        return EXIT_INPUT
    info = store.snapshot_info(target)
    print(f"now in force: {target.name}"
          + (f" ({info['rules']} block rules)" if "rules" in info else ""))
    print("running proxies switch within seconds; the next changed feed replaces it")
    return EXIT_OK
