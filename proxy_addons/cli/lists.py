"""``jectguard lists``: every configured source, its state and its rules in force.

Also the local ``campaign`` list (hosts the campaign detector flagged in enforce
mode, with their evidence); ``--clear-campaign HOST`` takes a host off it, and
every running proxy on this cache directory unblocks it within seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy_addons.cli.common import Exit
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.lists.sources import load_sources


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document (times as Unix seconds)")
    p.add_argument(
        "--clear-campaign",
        metavar="HOST",
        action="append",
        default=[],
        help="take HOST off the local campaign list (and keep the detector from flagging it "
        "again for its window); repeatable",
    )


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


def _clear_campaigns(cache: Path, hosts: list[str]) -> int:
    from proxy_addons.core.errors import CanonError
    from proxy_addons.lists.campaign import (
        CampaignFiles,
        CampaignList,
        canonical_campaign_host,
        update_list,
    )

    files = CampaignFiles.under(cache)
    try:
        canon = [canonical_campaign_host(h) for h in hosts]
    except CanonError as exc:
        print(f"jectguard: --clear-campaign: not a host: {exc}", file=sys.stderr)
        return Exit.INPUT
    now = time.time()
    for host in canon:

        def change(lst: CampaignList, host: str = host) -> bool:
            return lst.clear(host, now)

        was = update_list(files, change)
        print(f"campaign list: {host} {'cleared' if was else 'was not listed (clearance noted)'}")
    return Exit.OK


def _campaign_section(cache: Path, now: float) -> tuple[dict[str, Any], list[str]]:
    """The campaign list as JSON and as lines to print."""
    from proxy_addons.lists.campaign import CampaignFiles, CampaignListError, read_list

    files = CampaignFiles.under(cache)
    try:
        lst = read_list(files)
    except CampaignListError as exc:
        return {"error": str(exc)}, [f"campaign list: unreadable: {exc}"]
    doc = lst.as_dict()
    if not lst.hosts:
        return doc, [f"campaign list: empty   ({files.list_path})"]
    lines = [f"campaign list: {len(lst.hosts)} host(s) blocked   ({files.list_path})"]
    for e in reversed(lst.hosts.values()):
        lines.append(
            f"  {e.host}  flagged {ago(e.flagged_at, now)}  score {e.score:.1f}  "
            f"sites: {', '.join(e.sites[:8])}{' ...' if len(e.sites) > 8 else ''}"
        )
        lines.extend(f"      {line}" for line in e.evidence)
    lines.append("  clear one with: jectguard lists --clear-campaign HOST")
    return doc, lines


def main(args: argparse.Namespace) -> int:
    from proxy_addons.refresh.refresher import status_document

    cache = cache_dir_from(args.cache_dir)
    if args.clear_campaign:
        return _clear_campaigns(cache, args.clear_campaign)
    cfg = load_sources(args.sources)
    status = status_document(cfg, cache)
    docs = status["sources"]
    record = status["in_force"]
    campaign_doc, campaign_lines = _campaign_section(cache, time.time())
    if args.json:
        print(json.dumps({**status, "snapshot": record, "campaign": campaign_doc}, indent=1))
        return Exit.OK
    now = time.time()
    rows = [("SOURCE", "KIND", "STATUS", "ENTRIES", "LAST ATTEMPT", "LAST SUCCESS", "NEXT RUN")]
    for d in docs:
        rows.append(
            (
                d["name"],
                d["kind"],
                _status(d),
                _entries(d),
                ago(d.get("last_attempt"), now) if "last_attempt" in d else "-",
                ago(d.get("last_success"), now) if "last_success" in d else "-",
                ago(d.get("next_run"), now) if d.get("next_run") else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    details = []
    for d in docs:
        lines = []
        if d.get("hold"):
            lines.append(
                f"held by a rollback since {_iso(d['hold']['since'])} "
                f"({d['hold']['reason']}): its rolled-back body is refused until the feed "
                f"publishes another; `jectguard rollback --release {d['name']}` ends it"
            )
        if d.get("held_back"):
            lines.append(f"held back: {d['held_back']}")
        if d.get("last_error"):
            lines.append(f"last error: {d['last_error']}")
        if d.get("etag") or d.get("last_modified"):
            lines.append(
                f"ETag {d.get('etag') or '-'}  Last-Modified {d.get('last_modified') or '-'}"
            )
        if d.get("source"):
            lines.append(f"from {d['source']}")
        if lines:
            details.append(f"{d['name']}:\n" + "\n".join("  " + x for x in lines))
    if details:
        print()
        print("\n".join(details))
    print()
    if record:
        rolled = (
            f" (rolled back from {record['rolled_back_from']})"
            if record.get("rolled_back_from")
            else ""
        )
        rules = record["rules"] if record.get("rules") is not None else "?"
        print(
            f"snapshot in force: {record['snapshot']}{rolled}, "
            f"{rules} block rules, published {_iso(record.get('published_at'))}"
        )
        if record.get("repaired"):
            print(f"repaired: {record['repaired']}")
        print(f"kept for rollback: {status['rollback_targets']}   cache: {cache}")
    else:
        print(f"no snapshot published yet (run `jectguard update`)   cache: {cache}")
    print()
    print("\n".join(campaign_lines))
    return Exit.OK
