"""``jectguard check URL...``: is this URL blocked, and why?

One verdict per URL (or per line of stdin): the list, rule, line and category that
decided it. A bare name also gets what DNS mode answers for it. Exit 1 when a URL
is blocked, 2 when one cannot be read (and none is blocked), else 0.

It decides as the proxy does: with the configured sources, the campaign list the
proxy's detector keeps in the same cache (``jg_campaign``, on by default), and the
proxy's engine settings given as options (``--url-case-insensitive``,
``--nat64-prefix``), so an answer here is the proxy's answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from proxy_addons.cli.common import Exit, engine_from_args
from proxy_addons.core.embedding import parse_nat64_prefix
from proxy_addons.core.engine import Action, Engine, Verdict
from proxy_addons.lists.campaign import CampaignFiles, CampaignListError, compile_list, read_list
from proxy_addons.lists.layout import cache_dir_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="*", metavar="URL", help="URLs to check ('-' or none: read stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per URL per line")
    p.add_argument(
        "--url-case-insensitive",
        action="store_true",
        help="match URL paths in any letter case, as the proxy's jg_url_case_insensitive does",
    )
    p.add_argument(
        "--nat64-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="this network's NAT64 prefix (repeatable), as the proxy's jg_nat64_prefixes: an "
        "IPv6 address inside one is also checked as the IPv4 address it carries",
    )
    p.add_argument(
        "--no-campaign",
        action="store_true",
        help="leave out the campaign list in the cache (as a proxy with jg_campaign=false)",
    )


def _print_verdict(v: Verdict, out: TextIO) -> None:
    m = v.match
    if v.action is Action.ERROR:
        print(f"error  {v.input}\n       {v.error}", file=out)
        return
    print(f"{v.action.value:<7}{v.input}", file=out)
    print(f"       canonical: {v.canonical.url if v.canonical else '-'}  host: {v.host}", file=out)
    if m is not None:
        print(
            f"       list: {m.list}  rule: {m.rule}  line: {m.line}  kind: {m.kind.label}"
            f"  category: {m.category}  mode: {m.mode.value}",
            file=out,
        )
    if v.overridden is not None:
        o = v.overridden
        print(f"       overrides: {o.list} line {o.line}: {o.rule}", file=out)


def is_bare_name(text: str) -> bool:
    """A host name or address with no scheme, path, query or fragment."""
    return bool(text) and not any(c in text for c in "/?#@ ")


def _with_campaign_list(engine: Engine, args: argparse.Namespace) -> Engine:
    """The engine with the campaign list the proxy keeps in this cache, when there is one."""
    if args.no_campaign or args.blocklist or args.allowlist:
        return engine  # lists named on the command line: exactly those
    files = CampaignFiles.under(cache_dir_from(args.cache_dir))
    if not files.list_path.exists():
        return engine
    try:
        lst = read_list(files)
    except (CampaignListError, OSError) as exc:
        # The proxy keeps the list it read last; this process has none to keep.
        print(f"jectguard: campaign list {files.list_path} not read: {exc}", file=sys.stderr)
        return engine
    return engine.with_extra(compile_list(lst))


def main(args: argparse.Namespace) -> int:
    try:
        nat64 = tuple(parse_nat64_prefix(p) for p in args.nat64_prefix)
    except ValueError as exc:
        print(f"jectguard: --nat64-prefix: {exc}", file=sys.stderr)
        return Exit.INPUT
    engine, _ = engine_from_args(args)
    engine = _with_campaign_list(engine, args)
    # Process-wide, as in the proxy: this process checks nothing else.
    Engine.fold_case = bool(getattr(args, "url_case_insensitive", False))
    Engine.nat64 = nat64
    urls = list(args.urls)
    if not urls or urls == ["-"]:
        urls = [line.strip() for line in sys.stdin if line.strip()]
    status = Exit.OK
    for url in urls:
        v = engine.check_url(url)
        # A bare name is also what a DNS client asks: say what DNS mode answers for it
        # (whole-host rules only; a URL rule never blocks a name).
        dns = engine.check_host(url) if is_bare_name(url) else None
        if args.json:
            doc = v.as_dict()
            if dns is not None:
                doc["dns"] = dns.action.value
            print(json.dumps(doc, ensure_ascii=False))
        else:
            _print_verdict(v, sys.stdout)
            if dns is not None:
                print(f"       dns: {dns.action.value}", file=sys.stdout)
        if v.action is Action.BLOCK:
            status = Exit.FOUND
        elif v.action is Action.ERROR and status == Exit.OK:
            status = Exit.INPUT
    return status
