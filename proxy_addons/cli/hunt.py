"""``jectguard hunt``: find campaigns in recorded page views.

``jectguard hunt replay TRACE.jsonl [--json]`` runs the live proxy's campaign
detector over recorded page views, one JSON object a line: ``time`` (RFC 3339),
``client``, ``url`` (the page), ``content_type``, and ``body`` (the HTML text) or
``body_b64``. One line per finding: with ``--json`` a JSON object (``event``,
``host``, ``first_seen``, ``flagged_at``, ``sites``, ``pages``, ``score``,
``evidence``), else a readable summary. Exit 0 when it ran, 2 on bad input (the
line number is named).

``jectguard hunt retro [--since DAYS] [--json]`` lists the retro-hunt's hits: hosts
that clients reached before a snapshot listed them, stored in the ledger by the
proxy when the snapshot came into force, with who reached each and when.
``jectguard hunt host NAME [--json]`` answers who reached a host (and its
subdomains) and when. Both read the sightings ledger: the SQLite file in the
cache directory, or ``--ledger-url postgresql://...`` (default
``$JECTGUARD_LEDGER_URL``). Exit 3 when the ledger cannot be read (an environment
failure, as for every command).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from proxy_addons.cli.common import Exit
from proxy_addons.core.campaign import (
    DEFAULT_MIN_SITES,
    DEFAULT_WARMUP_SECONDS,
    DEFAULT_WARMUP_VIEWS,
    DEFAULT_WINDOW,
    CampaignDetector,
    CampaignFinding,
    references,
)
from proxy_addons.core.canon import canonical_host, host_kind
from proxy_addons.core.errors import CanonError, JectguardError
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.telemetry.ledger import Ledger, LedgerError, ledger_target, rfc3339, since_days


class TraceError(JectguardError):
    """A trace line is not a page view."""

    hint = "input"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hunt", required=True, metavar="WHAT")
    r = sub.add_parser("replay", help="run the campaign detector over recorded page views")
    r.add_argument(
        "trace", metavar="TRACE.jsonl", help="page views, one JSON object a line ('-': stdin)"
    )
    r.add_argument("--json", action="store_true", help="one JSON object per finding")
    r.add_argument(
        "--min-sites",
        type=int,
        default=DEFAULT_MIN_SITES,
        help=f"unrelated sites needed (default {DEFAULT_MIN_SITES})",
    )
    r.add_argument(
        "--window-days",
        type=float,
        default=DEFAULT_WINDOW / 86_400,
        help="a host first seen longer ago is established (default 7)",
    )
    r.add_argument(
        "--warmup-hours",
        type=float,
        default=DEFAULT_WARMUP_SECONDS / 3600,
        help="learn the baseline this long before any host counts as new (default 24)",
    )
    r.add_argument("--warmup-views", type=int, default=DEFAULT_WARMUP_VIEWS,
                   help=f"...and at least this many page views (default {DEFAULT_WARMUP_VIEWS})")  # fmt: skip
    r.set_defaults(hunt_main=main_replay)
    rr = sub.add_parser("retro", help="hosts reached before a new snapshot listed them")
    rr.add_argument("--since", type=float, default=30.0, metavar="DAYS",
                    help="hits found in the last DAYS days (default 30)")  # fmt: skip
    rr.set_defaults(hunt_main=main_retro)
    h = sub.add_parser("host", help="who reached a host (and its subdomains), and when")
    h.add_argument("name", metavar="NAME", help="a host name or IP address")
    h.set_defaults(hunt_main=main_host)
    for q in (rr, h):
        q.add_argument("--json", action="store_true", help="one JSON object a line")
        # also after the subcommand (its own dest: a subparser default would hide the parent's)
        q.add_argument("--cache-dir", dest="ledger_cache_dir", metavar="DIR",
                       help="the cache directory holding the SQLite ledger")  # fmt: skip
        q.add_argument("--ledger-url", default=os.environ.get("JECTGUARD_LEDGER_URL", ""),
                       help="postgresql://... (default: the SQLite ledger in the cache "
                       "directory, or $JECTGUARD_LEDGER_URL)")  # fmt: skip


def _time(value: object, n: int) -> float:
    if not isinstance(value, str):
        raise TraceError(f"line {n}: 'time' must be an RFC 3339 string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TraceError(f"line {n}: 'time' is not RFC 3339: {value[:40]!r}") from None
    if t.tzinfo is None:
        raise TraceError(f"line {n}: 'time' has no time zone: {value[:40]!r}")
    return t.timestamp()


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def read_view(line: str, n: int) -> tuple[float, str, str | None, bytes]:
    """One page view: (time, url, content type, body); raises TraceError."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        raise TraceError(f"line {n}: not JSON") from None
    if not isinstance(rec, dict):
        raise TraceError(f"line {n}: not a JSON object")
    url = rec.get("url")
    if not isinstance(url, str) or not url:
        raise TraceError(f"line {n}: 'url' missing")
    ctype = rec.get("content_type")
    if ctype is not None and not isinstance(ctype, str):
        raise TraceError(f"line {n}: 'content_type' must be a string")
    if isinstance(rec.get("body"), str):
        body = rec["body"].encode("utf-8", "surrogatepass")
    elif isinstance(rec.get("body_b64"), str):
        try:
            body = base64.b64decode(rec["body_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise TraceError(f"line {n}: 'body_b64' is not base64") from None
    else:
        raise TraceError(f"line {n}: needs 'body' or 'body_b64'")
    return _time(rec.get("time"), n), url, ctype, body


def _print(f: CampaignFinding, as_json: bool, out: IO[str]) -> None:
    doc: dict[str, Any] = f.as_dict()
    doc["first_seen"] = _rfc3339(f.first_seen)
    doc["flagged_at"] = _rfc3339(f.flagged_at)
    if as_json:
        print(json.dumps(doc, ensure_ascii=False), file=out, flush=True)
        return
    print(f"campaign {f.host}  score {doc['score']}  flagged {doc['flagged_at']}  "
          f"first seen {doc['first_seen']}", file=out)  # fmt: skip
    print(f"         sites: {', '.join(f.sites)}", file=out)
    for e in f.evidence:
        print(f"         {e}", file=out)


def main(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int] = args.hunt_main
    return run(args)


def _open_ledger(args: argparse.Namespace) -> Ledger | None:
    given = getattr(args, "ledger_cache_dir", None) or getattr(args, "cache_dir", None)
    cache = cache_dir_from(given)
    target = ledger_target(args.ledger_url, cache)
    if not args.ledger_url and not Path(target).is_file():
        print(f"jectguard: no ledger at {target} (is jg_ledger on?)", file=sys.stderr)
        return None
    try:
        return Ledger(target)
    except LedgerError as exc:
        print(f"jectguard: {exc}", file=sys.stderr)
        return None


def _safe(text: str) -> str:
    """Text for a terminal: rules come from feeds, hosts and users from traffic."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def main_retro(args: argparse.Namespace) -> int:
    """List the retro-hunt's hits found in the last ``--since`` days."""
    if not args.since > 0:
        print("jectguard: --since must be a positive number of days", file=sys.stderr)
        return Exit.INPUT
    ledger = _open_ledger(args)
    if ledger is None:
        return Exit.INTERNAL
    try:
        hits = ledger.hits(since_days(args.since))
    finally:
        ledger.close()
    for hit in hits:
        doc = hit.as_dict()
        if args.json:
            print(json.dumps(doc, ensure_ascii=False), flush=True)
            continue
        print(
            _safe(
                f"{doc['found_at']}  {hit.host}  listed by {hit.list} ({hit.category}): {hit.rule}"
            )
        )
        for s in hit.sightings:
            print(_safe(f"    {s.client or '-'}  user {s.user or '-'}  {s.count}x  "
                        f"{rfc3339(s.first)} .. {rfc3339(s.last)}"))  # fmt: skip
    if not hits and not args.json:
        print(f"no retro-hunt hits in the last {args.since:g} days")
    return Exit.OK


def main_host(args: argparse.Namespace) -> int:
    """Who reached a host (and its subdomains), and when."""
    try:
        host = canonical_host(args.name)
    except CanonError as exc:
        print(f"jectguard: {args.name!r}: {exc}", file=sys.stderr)
        return Exit.INPUT
    ledger = _open_ledger(args)
    if ledger is None:
        return Exit.INTERNAL
    try:
        rows = ledger.sightings(host, subdomains=host_kind(host) == "domain")
    finally:
        ledger.close()
    for s in rows:
        if args.json:
            print(json.dumps(s.as_dict(), ensure_ascii=False), flush=True)
        else:
            print(_safe(f"{s.host}  {s.client or '-'}  user {s.user or '-'}  {s.count}x  "
                        f"{rfc3339(s.first)} .. {rfc3339(s.last)}"))  # fmt: skip
    if not rows and not args.json:
        print(f"nobody reached {host} in the ledger's days")
    return Exit.OK


def main_replay(args: argparse.Namespace) -> int:
    det = CampaignDetector(
        window=args.window_days * 86_400,
        min_sites=args.min_sites,
        warmup_seconds=args.warmup_hours * 3600,
        warmup_views=args.warmup_views,
    )
    try:
        stream: IO[str] = (
            sys.stdin if args.trace == "-" else Path(args.trace).open(encoding="utf-8")  # noqa: SIM115
        )
    except OSError as exc:
        print(f"jectguard: {args.trace}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.INPUT
    try:
        with stream:
            for n, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                t, url, ctype, body = read_view(line, n)
                for f in det.observe(t, url, references(body, ctype, url)):
                    _print(f, args.json, sys.stdout)
    except TraceError as exc:
        print(f"jectguard: {args.trace}: {exc}", file=sys.stderr)
        return Exit.INPUT
    except UnicodeDecodeError as exc:
        print(f"jectguard: {args.trace}: not UTF-8 text ({exc.reason})", file=sys.stderr)
        return Exit.INPUT
    return Exit.OK
