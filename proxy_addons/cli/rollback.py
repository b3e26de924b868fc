"""``jectguard rollback``: put the previous compiled snapshot back in force, and keep it there.

Running proxies (refresh or watch role) switch within seconds. Every source
whose body differs between the two snapshots gets its earlier body back and is
*held*: the body rolled back is refused until the feed publishes a different
one, or an operator releases it (``--release NAME``, ``--release-all``, or
``POST /api/holds/release``). ``jectguard lists`` shows what is held and why.

Exit codes: 0 done; 2 nothing to roll back to, a corrupt target, an unknown
name, or a cache that cannot be written (disk full, read-only).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from proxy_addons.cli.common import Exit
from proxy_addons.core.errors import SnapshotError
from proxy_addons.lists.layout import cache_dir_from

if TYPE_CHECKING:
    from proxy_addons.lists.store import SnapshotStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps", type=int, default=1, metavar="N", help="go back N snapshots (default 1)"
    )
    p.add_argument(
        "--list", action="store_true", help="only list the kept snapshots and the sources held"
    )
    p.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="NAME",
        help="stop holding this source (repeatable): its feed's next body is "
        "accepted even if it is the one rolled back",
    )
    p.add_argument("--release-all", action="store_true", help="stop holding every source")


def main(args: argparse.Namespace) -> int:
    from proxy_addons.lists.sources import load_sources
    from proxy_addons.lists.store import SnapshotStore

    cache = cache_dir_from(args.cache_dir)
    store = SnapshotStore(cache)
    if args.list:
        snaps = store.list_snapshots()
        if not snaps:
            print(f"no snapshots in {store.dir}")
        for s in snaps:
            print(f"{'*' if s.current else ' '} {s.name}  {s.size / 1e6:.1f} MB")
        record = store.read_record()
        for hold in record.holds.values() if record else ():
            print(f"held: {hold.name} ({hold.reason})")
        return Exit.OK
    # An emergency action does not queue behind a rebuild (its worker runs at the lowest
    # CPU priority and holds the store lock until it publishes): the rebuild is stopped
    # and the refresher runs it again on what is in force then.
    stopped = store.stop_rebuild()
    if stopped is not None:
        print(f"stopped a rebuild in progress (pid {stopped}); it runs again afterwards")
    if args.release or args.release_all:
        return _release(store, None if args.release_all else args.release)
    cfg = load_sources(args.sources)
    try:
        result = store.rollback(args.steps, specs=cfg.sources)
    except SnapshotError as exc:
        print(f"jectguard rollback: {exc}", file=sys.stderr)
        return Exit.INPUT
    rules = result.record.rules
    print(
        f"now in force: {result.target.name}"
        + (f" ({rules} block rules)" if rules is not None else "")
    )
    for hold in result.held:
        print(
            f"held: {hold.name}: its rolled-back body is refused until the feed publishes "
            f"another (release with `jectguard rollback --release {hold.name}`)"
        )
    for note in result.notes:
        print(f"note: {note}")
    print("running proxies switch within seconds")
    return Exit.OK


def _release(store: SnapshotStore, names: list[str] | None) -> int:
    from proxy_addons.refresh.refresher import release_holds

    record = store.read_record()
    held = set(record.holds) if record else set()
    unknown = sorted(set(names or ()) - held)
    if unknown:
        print(
            f"jectguard rollback: not held: {', '.join(unknown)} "
            f"(held: {', '.join(sorted(held)) or 'none'})",
            file=sys.stderr,
        )
        return Exit.INPUT
    gone = release_holds(store.cache_dir, names)
    for hold in gone:
        print(
            f"released: {hold.name} (held since "
            f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(hold.since))}); "
            "its feed's next body is accepted"
        )
    if not gone:
        print("nothing was held")
    return Exit.OK
