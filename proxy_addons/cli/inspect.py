"""``jectguard inspect FILE``: what a list file parses to (rules by kind, lines refused and why)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from proxy_addons.cli.common import Exit
from proxy_addons.core.formats import FORMATS, parse_list
from proxy_addons.core.model import RuleKind
from proxy_addons.lists.files import read_list_file

# The JSON keys and summary rows, by rule kind.
_KINDS = {
    "domains": RuleKind.DOMAIN,
    "exact_hosts": RuleKind.EXACT,
    "urls": RuleKind.URL,
    "ips": RuleKind.IP,
    "cidrs": RuleKind.CIDR,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    p.add_argument("--json", action="store_true", help="one JSON object")


def main(args: argparse.Namespace) -> int:
    data = read_list_file(args.file)
    parsed = parse_list(data, args.format, name=Path(args.file).name)
    if args.json:
        doc: dict[str, object] = {"file": args.file, "format": parsed.format}
        for key, kind in _KINDS.items():
            doc[key] = [r.key for r in parsed.rules if r.kind is kind and not r.exception]
        doc["exceptions"] = [r.key for r in parsed.rules if r.exception]
        doc["rejected"] = [
            {"line": r.line, "text": r.text, "reason": r.reason} for r in parsed.rejected_samples
        ]
        doc["rejected_count"] = parsed.rejected_count
        doc["rejected_by_reason"] = parsed.rejected_by_reason
        doc["skipped"] = parsed.skipped
        doc["skipped_by_reason"] = parsed.skipped_by_reason
        print(json.dumps(doc, ensure_ascii=False))
        return Exit.OK
    print(f"{args.file}: format {parsed.format}")
    for key, kind in _KINDS.items():
        print(f"  {key:<12} {parsed.count(kind)}")
    print(f"  {'exceptions':<12} {sum(1 for r in parsed.rules if r.exception)}")
    print(f"  {'skipped':<12} {parsed.skipped}")
    for reason, n in sorted(parsed.skipped_by_reason.items(), key=lambda kv: -kv[1]):
        print(f"    {n:>8}  {reason}")
    print(f"  {'rejected':<12} {parsed.rejected_count}")
    for reason, n in sorted(parsed.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        print(f"    {n:>8}  {reason}")
    for r in parsed.rejected_samples:
        print(f"    line {r.line}: {r.text!r} ({r.reason})")
    return Exit.OK
