"""The ``jectguard`` command line.

Exit codes: 0 success (for ``check``: nothing blocked), 1 a checked URL is
blocked, 2 bad input or configuration (a missing list file, a refused list),
3 an internal or environment failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import load_sources
from .core.engine import Action, Engine, Verdict
from .core.errors import JectguardError
from .core.formats import FORMATS, parse_list
from .core.model import RuleKind
from .loading import (
    LoadReport,
    build_engine,
    default_cache_dir,
    read_list_file,
    specs_from_files,
)

EXIT_OK = 0
EXIT_BLOCKED = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    """--blocklist/--allowlist/--sources/--cache-dir, shared by check, strip, run."""
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
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.blocklist or args.allowlist:
        specs = specs_from_files(args.blocklist, args.allowlist)
        return build_engine(specs, cache_dir=cache, strict=True)
    from .store import startup_engine  # the published snapshot, when it matches the sources

    cfg = load_sources(args.sources)
    return startup_engine(cfg.enabled(), cache)


def _print_verdict(v: Verdict, out: Any) -> None:
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


def cmd_check(args: argparse.Namespace) -> int:
    engine, _ = engine_from_args(args)
    # Process-wide, as in the proxy: this process checks nothing else.
    Engine.fold_case = bool(getattr(args, "url_case_insensitive", False))
    urls = list(args.urls)
    if not urls or urls == ["-"]:
        urls = [line.strip() for line in sys.stdin if line.strip()]
    status = EXIT_OK
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
            status = EXIT_BLOCKED
        elif v.action is Action.ERROR and status == EXIT_OK:
            status = EXIT_INPUT
    return status


def cmd_inspect(args: argparse.Namespace) -> int:
    data = read_list_file(args.file)
    parsed = parse_list(data, args.format, name=Path(args.file).name)
    kinds = {
        "domains": RuleKind.DOMAIN,
        "exact_hosts": RuleKind.EXACT,
        "urls": RuleKind.URL,
        "ips": RuleKind.IP,
        "cidrs": RuleKind.CIDR,
    }
    if args.json:
        doc: dict[str, object] = {"file": args.file, "format": parsed.format}
        for key, kind in kinds.items():
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
        return EXIT_OK
    print(f"{args.file}: format {parsed.format}")
    for key, kind in kinds.items():
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
    return EXIT_OK


def _lazy(module: str, attr: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        fn: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), attr)
        return fn(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jectguard",
        description="A malicious-URL blocklist proxy: block attack origins, strip injected scripts.",
    )
    parser.add_argument("--version", action="version", version=f"jectguard {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (TOML; default $JECTGUARD_CONFIG, else "
        "~/.config/jectguard/config.toml if present); command-line flags win",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="is this URL blocked, and why?")
    p.add_argument("urls", nargs="*", metavar="URL", help="URLs to check ('-' or none: read stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per URL per line")
    p.add_argument(
        "--url-case-insensitive",
        action="store_true",
        help="match URL paths in any letter case, as the proxy's jg_url_case_insensitive does",
    )
    add_list_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("inspect", help="show what a list file parses to")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_inspect)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    """Commands in their own modules; those modules import mitmproxy only inside main()."""
    import importlib

    for name, module, helptext in (
        ("run", "proxy_addons.run", "run the proxy (default 127.0.0.1:8080)"),
        ("strip", "proxy_addons.strip_cmd", "strip injected scripts from an HTML file"),
        ("update", "proxy_addons.update_cmd", "refresh the feeds now and publish a snapshot"),
        ("lists", "proxy_addons.lists_cmd", "show every source: state, entries, errors, next run"),
        ("rollback", "proxy_addons.rollback_cmd", "put the previous snapshot back in force"),
        ("hunt", "proxy_addons.hunt_cmd", "find injection campaigns in recorded page views"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        p = sub.add_parser(name, help=helptext)
        add_list_arguments(p)
        mod.add_arguments(p)
        p.set_defaults(func=_lazy(module, "main"))


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def config_path(argv: Sequence[str]) -> Path | None:
    """The settings file: --config, else $JECTGUARD_CONFIG, else the per-user one if present."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(list(argv))
    if known.config:
        return Path(known.config)
    if os.environ.get("JECTGUARD_CONFIG"):
        return Path(os.environ["JECTGUARD_CONFIG"])
    import platformdirs

    default = Path(platformdirs.user_config_dir("jectguard", appauthor=False)) / "config.toml"
    return default if default.is_file() else None


def apply_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Make the settings file's values the commands' defaults.

    Top-level keys apply to every command that has that setting (``sources``,
    ``cache_dir``); a ``[run]`` (``[check]``, ...) table to that command; its
    ``set`` table becomes ``--set NAME=VALUE`` options, before those on the
    command line. Keys are the long flags with ``_`` for ``-``.
    """
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    commands = _commands(parser)
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for name in data:
        if isinstance(data[name], dict) and name not in commands:
            raise ConfigError(f"{path}: [{name}] is not a jectguard command")
    for name, sub in commands.items():
        dests = {a.dest: a for a in sub._actions if a.dest != "help"}
        section = dict(data.get(name, {}))
        values: dict[str, object] = {k: v for k, v in shared.items() if k in dests}
        sets = section.pop("set", {})
        if not isinstance(sets, dict):
            raise ConfigError(f"{path}: [{name}.set] must be a table of option = value")
        for key, value in section.items():
            if key not in dests or key in ("func", "command"):
                known = ", ".join(sorted(d for d in dests if d not in ("func", "setoptions")))
                raise ConfigError(f"{path}: [{name}] has no setting {key!r} (known: {known})")
            values[key] = value
        if sets:
            if "setoptions" not in dests:
                raise ConfigError(f"{path}: [{name}] takes no mitmproxy options")
            values["setoptions"] = [f"{k}={_option_text(v)}" for k, v in sets.items()]
        sub.set_defaults(**values)
    unknown = set(shared) - {d for sub in commands.values() for a in sub._actions for d in [a.dest]}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level setting(s): {', '.join(sorted(unknown))}")


def _option_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class ConfigError(JectguardError):
    """The settings file is unreadable or names settings that do not exist."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        path = config_path(argv)
        if path is not None:
            apply_config(parser, path)
    except JectguardError as exc:
        print(f"jectguard: {exc}", file=sys.stderr)
        return EXIT_INPUT
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except JectguardError as exc:
        print(f"jectguard: {exc}", file=sys.stderr)
        return EXIT_INPUT if exc.hint == "input" else EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
