"""``jectguard update``: refresh every URL source now and publish a snapshot.

Exit codes: 0 every source updated, unchanged, or deferred (its minimum interval
or a server's Retry-After has not passed: the output says when it may be
fetched); 1 a source failed or was held back (its last good data stays in
force); 2 bad input (sources file, names) or a cache that cannot be written
(disk full, read-only): a message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from proxy_addons.cli.common import Exit
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.lists.sources import load_sources
from proxy_addons.refresh.outcome import Fetch, Outcome

BAR_WIDTH = 20
STATUS_LABELS: dict[str, str] = {
    Outcome.UPDATED: "updated",
    Outcome.UNCHANGED: "unchanged",
    Outcome.HELD_BACK: "HELD BACK",
    Outcome.FAILED: "FAILED",
    Outcome.DEFERRED: "deferred",
}
FETCH_LABELS: dict[str, str] = {
    Fetch.NEW: "downloaded, validating",
    Fetch.NOT_MODIFIED: "not modified (304)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="accept lists the size guard holds back (a feed that suddenly lost more than half "
        "its distinct entries, became empty, or grew to more than 4 times its usual size) "
        "and fetch even within a source's min_interval; the other checks still apply, and "
        "a server's Retry-After is always honoured",
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME",
        help="refresh only this source (repeatable; default: every enabled URL source)",
    )


class ProgressView:
    """One line per source, redrawn in place on a terminal; plain lines otherwise."""

    def __init__(self, names: list[str], out: TextIO, tty: bool) -> None:
        self.names = names
        self.out = out
        self.tty = tty
        self.width = max((len(n) for n in names), default=8)
        self.lines: dict[str, str] = {n: "waiting" for n in names}
        self.drawn = 0

    def __call__(self, name: str, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.lines[name] = "connecting"
        elif event == "bytes":
            self.lines[name] = _bar(info["bytes"], info.get("total"))
        elif event == "deferred":
            self.lines[name] = info["detail"]
        elif event == "retry":
            self.lines[name] = f"retrying in {info['delay']:.0f}s: {info['error']}"
        elif event == "fetched":
            status = info["status"]
            self.lines[name] = FETCH_LABELS.get(status, f"failed: {info.get('error')}")
        if self.tty:
            self.draw()
        elif event in ("fetched", "retry", "deferred"):
            print(f"{name:<{self.width}}  {self.lines[name]}", file=self.out, flush=True)

    def draw(self) -> None:
        cols = shutil.get_terminal_size((100, 20)).columns
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # back to the first line of the block
        for n in self.names:
            line = f"{n:<{self.width}}  {self.lines[n]}"[: cols - 1]
            self.out.write("\x1b[2K" + line + "\n")
        self.drawn = len(self.names)
        self.out.flush()


def _bar(done: int, total: int | None) -> str:
    size = _size(done)
    if not total:
        return f"downloading {size}"
    frac = min(1.0, done / total)
    fill = int(frac * BAR_WIDTH)
    return f"[{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {frac:4.0%} {size}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def main(args: argparse.Namespace) -> int:
    from proxy_addons.lists.store import StoreWriteError
    from proxy_addons.refresh.feeds import tidy_feed_dir
    from proxy_addons.refresh.refresher import Refresher

    if args.blocklist or args.allowlist:
        print(
            "jectguard update: works on the sources file (--sources), not on "
            "--blocklist/--allowlist files",
            file=sys.stderr,
        )
        return Exit.INPUT
    cfg = load_sources(args.sources)
    cache = cache_dir_from(args.cache_dir)
    refresher = Refresher(cfg, cache, isolate=False)
    names = [s.name for s in refresher.url_specs]
    unknown = [n for n in args.source if n not in names]
    if unknown:
        print(
            f"jectguard update: no enabled URL source named {', '.join(unknown)} "
            f"(known: {', '.join(names) or 'none'})",
            file=sys.stderr,
        )
        return Exit.INPUT
    chosen = args.source or names
    tidy_feed_dir(
        cache
    )  # temp bodies of killed runs (never a live fetch's: it holds a lock), modes
    view = ProgressView(chosen, sys.stdout, sys.stdout.isatty())
    try:
        report = asyncio.run(
            refresher.refresh(
                chosen, force=args.force, rebuild=refresher.snapshot_stale(), progress=view
            )
        )
    except OSError as exc:  # a state file or a download could not be written
        raise StoreWriteError.wrap(exc, "write", cache) from None
    width = view.width
    if view.tty:
        view.draw()
    print()
    for name in chosen:
        o = report.outcomes[name]
        print(f"{name:<{width}}  {STATUS_LABELS[o.status]:<10} {o.detail or ''}")
    for name, err in report.load_errors.items():
        print(f"{name:<{width}}  {'NOT LOADED':<10} {err}")
    if report.repaired:
        print(f"\nrepaired: {report.repaired}")
    if report.snapshot:
        print(
            f"\nsnapshot {Path(report.snapshot).name}: {report.rules} block rules"
            + (f", {report.refused} refused by the poison guard" if report.refused else "")
            + (f", compiled in {report.compile_seconds:.1f}s" if report.compile_seconds else "")
        )
        print("running proxies (refresh or watch role) switch to it within seconds")
    elif report.not_published:
        print(f"\n{report.not_published}")
    else:
        print("\nnothing changed; the snapshot in force stays")
    if report.publish_error:
        print(f"jectguard update: {report.publish_error}", file=sys.stderr)
        return Exit.INPUT
    return Exit.OK if report.ok else Exit.FOUND
