"""The ``jectguard`` command line: one module per command, each ``add_arguments`` + ``main``.

This module only dispatches: it builds the parser from :data:`COMMANDS`, applies
the settings file, runs the command and turns a :class:`JectguardError` into a
message and an exit code (:class:`~proxy_addons.cli.common.Exit`: 0 success, 1
the command found what it reports, 2 bad input or configuration, 3 an internal
or environment failure). Command modules import mitmproxy only inside ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from proxy_addons import __version__
from proxy_addons.cli.common import Exit, add_list_arguments, engine_from_args
from proxy_addons.core.errors import JectguardError


class Command(NamedTuple):
    name: str
    module: str  # has add_arguments(parser) and main(args) -> int
    help: str
    lists: bool = True  # takes --blocklist/--allowlist/--sources/--cache-dir


# Adding a command: a module in this package, and one row here.
COMMANDS: tuple[Command, ...] = (
    Command("check", "proxy_addons.cli.check", "is this URL blocked, and why?"),
    Command("inspect", "proxy_addons.cli.inspect", "show what a list file parses to", lists=False),
    Command("run", "proxy_addons.cli.run", "run the proxy (default 127.0.0.1:8080)"),
    Command("strip", "proxy_addons.cli.strip", "strip injected scripts from an HTML file"),
    Command("update", "proxy_addons.cli.update", "refresh the feeds now and publish a snapshot"),
    Command(
        "lists", "proxy_addons.cli.lists", "show every source: state, entries, errors, next run"
    ),
    Command("rollback", "proxy_addons.cli.rollback", "put the previous snapshot back in force"),
    Command("hunt", "proxy_addons.cli.hunt", "find injection campaigns in recorded page views"),
)


def _lazy(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        fn: Callable[[argparse.Namespace], int] = importlib.import_module(module).main
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
    for cmd in COMMANDS:
        # Every command ships with the package: a module that fails to import is a broken
        # install, reported as such (never a command silently missing from --help).
        mod = importlib.import_module(cmd.module)
        p = sub.add_parser(cmd.name, help=cmd.help)
        if cmd.lists:
            add_list_arguments(p)
        mod.add_arguments(p)
        p.set_defaults(func=_lazy(cmd.module))
    return parser


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
        return Exit.INPUT
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except JectguardError as exc:
        print(f"jectguard: {exc}", file=sys.stderr)
        return Exit.INPUT if exc.hint == "input" else Exit.INTERNAL
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        return Exit.OK


__all__ = ["COMMANDS", "Command", "ConfigError", "build_parser", "engine_from_args", "main"]
