"""``jectguard strip --url PAGE_URL [FILE|-]``: strip one HTML document the way the proxy would.

The stripped document goes to stdout as bytes (the input unchanged when there is
nothing to remove); each finding goes to stderr as one JSON line with
``element``, ``url``, ``reason``, ``rule``, ``list`` and ``removed`` (false for
findings only reported: monitor-mode lists, ``--after-html log``).

Exit codes: 0 nothing removed, 1 something removed, 2 bad input (unreadable file,
bad signatures file, document over the size limit).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from proxy_addons.cli.common import Exit
from proxy_addons.core.engine import blocked_by
from proxy_addons.core.htmlscan import AFTER_HTML_POLICIES, MAX_SCAN_BYTES, BodyTooLarge, Scanner
from proxy_addons.lists.signatures import DEFAULT_SIGNATURES, read_signatures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the HTML document ('-' or none: read stdin)",
    )
    p.add_argument(
        "--url",
        required=True,
        metavar="PAGE_URL",
        help="the URL the document was served from (relative URLs resolve against it)",
    )
    p.add_argument(
        "--content-type",
        default="text/html",
        metavar="TYPE",
        help="the response's Content-Type, charset included (default text/html: "
        "the charset then comes from a BOM, a <meta>, or the bytes)",
    )
    p.add_argument(
        "--after-html",
        choices=AFTER_HTML_POLICIES,
        default="log",
        help="active content after </html>: off, log (report, keep; default), strip",
    )
    p.add_argument(
        "--signatures",
        default=str(DEFAULT_SIGNATURES),
        metavar="FILE",
        help="injection signatures file ('' for none; default: the shipped set)",
    )
    p.add_argument(
        "--no-comment",
        action="store_true",
        help="remove elements without leaving an HTML comment in their place",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_SCAN_BYTES,
        metavar="N",
        help=f"largest document accepted (default {MAX_SCAN_BYTES})",
    )


def _fail(message: str) -> int:
    print(f"jectguard: {message}", file=sys.stderr)
    return Exit.INPUT


def _read(name: str, limit: int) -> bytes:
    """The whole document, never more than ``limit`` + 1 bytes."""
    if name == "-":
        return sys.stdin.buffer.read(limit + 1)
    with open(name, "rb") as f:
        return f.read(limit + 1)


def main(args: argparse.Namespace, stdout: BinaryIO | None = None) -> int:
    if args.max_bytes < 1:
        return _fail(f"--max-bytes must be positive, got {args.max_bytes}")
    if not args.url.startswith(("http://", "https://")):
        return _fail(f"--url must be an http(s) URL, got {args.url[:200]!r}")
    try:
        signatures = read_signatures(args.signatures)[1] if args.signatures else []
    except ValueError as exc:
        return _fail(f"--signatures: {exc}")
    try:
        body = _read(args.file, args.max_bytes)
    except OSError as exc:
        return _fail(f"{args.file}: {exc.strerror or exc}")

    from proxy_addons.cli.common import engine_from_args

    engine, _ = engine_from_args(args)
    try:
        scanner = Scanner(
            blocked_by(engine), signatures, after_html=args.after_html, max_bytes=args.max_bytes
        )
        try:
            new, findings = scanner.strip(
                body, args.url, args.content_type, comment=not args.no_comment
            )
        except BodyTooLarge:
            return _fail(f"{args.file}: larger than --max-bytes {args.max_bytes}")
    finally:
        engine.close()
    for f in findings:
        record = {
            "element": f.element,
            "url": f.url,
            "reason": f.reason,
            "rule": f.rule,
            "list": f.list,
            "removed": f.removed,
        }
        print(json.dumps(record, ensure_ascii=False), file=sys.stderr)
    out = stdout or sys.stdout.buffer
    out.write(new)
    out.flush()
    return Exit.FOUND if any(f.removed for f in findings) else Exit.OK
