"""Reading list files from disk and building an engine from them (the I/O around the core)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from proxy_addons.core.engine import Engine
from proxy_addons.core.errors import JectguardError, ListFormatError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.gcpause import paused_gc
from proxy_addons.core.index import CompileStats
from proxy_addons.core.model import ListSpec, ParsedList
from proxy_addons.lists.layout import CacheLayout, default_cache_dir

# A list file bigger than this is refused before reading (real feeds are < 200 MB).
MAX_LIST_BYTES: Final = 512 * 1024 * 1024


class ListFileError(JectguardError):
    """A list file named on the command line is missing or unreadable."""


def feed_body_path(cache_dir: Path, name: str) -> Path:
    """Where the last good body of a URL source is kept."""
    return CacheLayout(cache_dir).feed_body(name)


@dataclass(slots=True)
class ListStatus:
    """What loading one list produced."""

    name: str
    source: str
    loaded: bool
    rules: int = 0
    rejected: int = 0
    format: str | None = None
    error: str | None = None


@dataclass(slots=True)
class LoadReport:
    lists: list[ListStatus] = field(default_factory=list)
    block_stats: CompileStats | None = None
    allow_stats: CompileStats | None = None


def read_list_file(path: str | Path) -> bytes:
    """Read a list file; ListFileError with a clear message when it cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_LIST_BYTES:
            raise ListFileError(f"{p}: {size} bytes is over the {MAX_LIST_BYTES}-byte limit")
        return p.read_bytes()
    except FileNotFoundError:
        raise ListFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ListFileError(f"{p}: is a directory, not a list file") from None
    except OSError as exc:
        raise ListFileError(f"{p}: cannot read: {exc.strerror or exc}") from None


def spec_for_file(path: str | Path, *, allow: bool, fmt: str = "auto") -> ListSpec:
    p = Path(path)
    return ListSpec(
        name=p.name,
        path=str(p),
        format=fmt,
        category="allow" if allow else "local",
        allow=allow,
    )


def parse_spec(spec: ListSpec, cache_dir: Path | None) -> tuple[ParsedList | None, ListStatus]:
    """Parse one configured list from its file or its cached feed body."""
    if spec.path is not None:
        source = spec.path
        data = read_list_file(spec.path)
    else:
        assert spec.url is not None
        source = spec.url
        body = feed_body_path(cache_dir or default_cache_dir(), spec.name)
        if not body.exists():
            return None, ListStatus(spec.name, source, False, error="not fetched yet")
        data = read_list_file(body)
    parsed = parse_list(data, spec.format, name=spec.name)
    return parsed, ListStatus(
        spec.name, source, True, len(parsed.rules), parsed.rejected_count, parsed.format
    )


def parse_lists(
    specs: Sequence[ListSpec],
    cache_dir: Path | None,
    *,
    strict: bool = False,
    allow: bool | None = None,
) -> tuple[list[tuple[ListSpec, ParsedList]], list[ListStatus]]:
    """Parse every enabled list (only allow or only block lists when ``allow`` says so).

    The one loop from configured lists to parsed ones: with ``strict`` any
    unreadable or refused list raises (command-line files); otherwise it is
    reported in its status and skipped, and the others still load.
    """
    parsed: list[tuple[ListSpec, ParsedList]] = []
    statuses: list[ListStatus] = []
    for spec in specs:
        if not spec.enabled or (allow is not None and spec.allow is not allow):
            continue
        try:
            with paused_gc():
                result, status = parse_spec(spec, cache_dir)
        except (ListFileError, ListFormatError) as exc:
            if strict:
                raise
            status = ListStatus(spec.name, spec.path or spec.url or "", False, error=str(exc))
            result = None
        statuses.append(status)
        if result is not None:
            parsed.append((spec, result))
    return parsed, statuses


def build_engine(
    specs: Sequence[ListSpec],
    *,
    cache_dir: Path | None = None,
    strict: bool = False,
) -> tuple[Engine, LoadReport]:
    """Parse and compile the given lists in memory (no snapshot: files, tests, a cold start)."""
    parsed, statuses = parse_lists(specs, cache_dir, strict=strict)
    report = LoadReport(lists=statuses)
    engine, report.block_stats, report.allow_stats = Engine.from_lists(parsed)
    return engine, report


def specs_from_files(
    blocklists: Sequence[str | Path], allowlists: Sequence[str | Path], fmt: str = "auto"
) -> list[ListSpec]:
    """ListSpecs for files named with --blocklist/--allowlist (names made unique)."""
    specs: list[ListSpec] = []
    seen: dict[str, int] = {}
    for paths, allow in ((blocklists, False), (allowlists, True)):
        for path in paths:
            spec = spec_for_file(path, allow=allow, fmt=fmt if not allow else "auto")
            n = seen.get(spec.name, 0)
            seen[spec.name] = n + 1
            if n:
                spec = replace(spec, name=f"{spec.name}#{n + 1}")
            specs.append(spec)
    return specs
