"""What every command shares: one set of exit codes, the list arguments, the engine they name."""

from __future__ import annotations

import argparse
import enum

from proxy_addons.core.engine import Engine
from proxy_addons.lists.files import LoadReport, build_engine, specs_from_files
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import startup_engine


class Exit(enum.IntEnum):
    """jectguard's exit codes, the same for every command."""

    OK = 0
    # The command ran and found what it reports: ``check`` a blocked URL, ``strip`` an
    # element removed, ``update`` a source not updated.
    FOUND = 1
    # The caller's data or configuration: a missing list file, a refused list, a bad
    # option value, nothing to roll back to, a cache it cannot write
    # (``JectguardError.hint == "input"``).
    INPUT = 2
    # The environment or jectguard itself: an unreadable ledger, a damaged store
    # (``hint == "state"``/``"runtime"``).
    INTERNAL = 3
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    """--blocklist/--allowlist/--sources/--cache-dir, shared by every command but ``inspect``."""
    p.add_argument(
        "--blocklist",
        action="append",
        default=[],
        metavar="PATH",
        help="use this block list file instead of the configured sources (repeatable)",
    )
    p.add_argument(
        "--allowlist",
        action="append",
        default=[],
        metavar="PATH",
        help="use this allowlist file (repeatable); entries win over block rules",
    )
    p.add_argument(
        "--sources",
        metavar="FILE",
        default=None,
        help="sources file (default: the shipped blocklists/sources.toml)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="where fetched feeds and snapshots live (default: a per-user data directory)",
    )


def engine_from_args(args: argparse.Namespace) -> tuple[Engine, LoadReport]:
    """Build the engine the way every command does: files given, or configured sources."""
    cache = cache_dir_from(args.cache_dir)
    if args.blocklist or args.allowlist:
        specs = specs_from_files(args.blocklist, args.allowlist)
        return build_engine(specs, cache_dir=cache, strict=True)
    # The published snapshot, when it matches the sources; else the lists compiled here.
    cfg = load_sources(args.sources)
    return startup_engine(cfg.enabled(), cache)


__all__ = ["Exit", "add_list_arguments", "engine_from_args"]
