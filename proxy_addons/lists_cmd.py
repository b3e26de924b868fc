"""``jectguard lists``: every configured source, its state and its rules in force."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import load_sources
from .loading import default_cache_dir

EXIT_OK = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document (times as Unix seconds)")


def ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    d = now - t
    future = d < 0
    d = abs(d)
    if d < 90:
        text = f"{d:.0f}s"
    elif d < 5400:
        text = f"{d / 60:.0f}m"
    elif d < 172800:
        text = f"{d / 3600:.1f}h"
    else:
        text = f"{d / 86400:.0f}d"
    return f"in {text}" if future else f"{text} ago"


# How each health (refresher.Health) reads in the table.
HEALTH_LABELS = {
    "ok": "ok",
    "held": "HELD (rollback)",
    "held_back": "HELD BACK",
    "failed": "FAILED",
    "failed_no_data": "FAILED, no data",
    "not_fetched": "not fetched",
    "local": "local",
    "disabled": "disabled",
}


def _status(doc: dict[str, Any]) -> str:
    return HEALTH_LABELS.get(str(doc["health"]), str(doc["health"]))


def _entries(doc: dict[str, Any]) -> str:
    """The rules in force (the record), by kind when the last download says how they split."""
    by_kind = doc.get("entries") or {}
    n = doc.get("rules_in_snapshot")
    if by_kind and (n is None or sum(by_kind.values()) == n):
        return ", ".join(f"{k} {c}" for k, c in by_kind.items())
    return f"{n} rules" if n is not None else "-"


def _iso(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def main(args: argparse.Namespace) -> int:
    from .refresher import status_document

    cfg = load_sources(args.sources)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    status = status_document(cfg, cache)
    docs = status["sources"]
    record = status["in_force"]
    if args.json:
        print(json.dumps({**status, "snapshot": record}, indent=1))
        return EXIT_OK
    now = time.time()
    rows = [("SOURCE", "KIND", "STATUS", "ENTRIES", "LAST ATTEMPT", "LAST SUCCESS", "NEXT RUN")]
    for d in docs:
        rows.append((
            d["name"], d["kind"], _status(d), _entries(d),
            ago(d.get("last_attempt"), now) if "last_attempt" in d else "-",
            ago(d.get("last_success"), now) if "last_success" in d else "-",
            ago(d.get("next_run"), now) if d.get("next_run") else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    details = []
    for d in docs:
        lines = []
        if d.get("hold"):
            lines.append(f"held by a rollback since {_iso(d['hold']['since'])} "
                         f"({d['hold']['reason']}): its rolled-back body is refused until the feed "
                         f"publishes another; `jectguard rollback --release {d['name']}` ends it")
        if d.get("held_back"):
            lines.append(f"held back: {d['held_back']}")
        if d.get("last_error"):
            lines.append(f"last error: {d['last_error']}")
        if d.get("etag") or d.get("last_modified"):
            lines.append(f"ETag {d.get('etag') or '-'}  Last-Modified {d.get('last_modified') or '-'}")
        if d.get("source"):
            lines.append(f"from {d['source']}")
        if lines:
            details.append(f"{d['name']}:\n" + "\n".join("  " + x for x in lines))
    if details:
        print()
        print("\n".join(details))
    print()
    if record:
        rolled = (f" (rolled back from {record['rolled_back_from']})"
                  if record.get("rolled_back_from") else "")
        rules = record["rules"] if record.get("rules") is not None else "?"
        print(f"snapshot in force: {record['snapshot']}{rolled}, "
              f"{rules} block rules, published {_iso(record.get('published_at'))}")
        if record.get("repaired"):
            print(f"repaired: {record['repaired']}")
        print(f"kept for rollback: {status['rollback_targets']}   cache: {cache}")
    else:
        print(f"no snapshot published yet (run `jectguard update`)   cache: {cache}")
    return EXIT_OK
