"""From configured lists to parsed ones, and to an engine: the I/O around the core.

:func:`parse_lists` is the one loop every engine is built through. Where each list's
bytes come from is a *source resolver*'s answer (:data:`SourceResolver`): its own
file or its cached feed body (:func:`files_resolver`, for ``build_engine``, a cold
start, the allow lists), or what the refresher's worker decides (a download just
validated, a body kept with a snapshot, the body a rollback restored). The parsed
lists then go to ``core.engine.compile_block``, whoever compiles them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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
    path: Path | None = None  # the file its bytes came from (a snapshot keeps it)
    digest: str | None = None  # sha256 of those bytes
    distinct: int | None = None  # distinct rules, when counted (``parse_lists(count=...)``)


@dataclass(slots=True)
class LoadReport:
    lists: list[ListStatus] = field(default_factory=list)
    block_stats: CompileStats | None = None
    allow_stats: CompileStats | None = None


@dataclass(frozen=True, slots=True)
class ListBody:
    """The bytes a resolver found for one list, or the list it already parsed from them."""

    path: Path  # the file the bytes are (or were) read from
    digest: str  # sha256 of the bytes
    data: bytes | None = None  # None when ``parsed`` is given
    parsed: ParsedList | None = None  # parsed already (a download validated just now)
    distinct: int | None = None  # known already (the record in force has this digest)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No bytes for this list: why (None when that is no error, e.g. not fetched yet)."""

    error: str | None


# Where one list's bytes come from: the spec's file, the cached feed body, a body kept
# with a snapshot, a rolled-back body under a hold, a download just validated. May
# raise ListFileError (reported as the list's error).
SourceResolver = Callable[[ListSpec], ListBody | Unavailable]


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


def read_body(path: Path) -> ListBody:
    """A list file's bytes and their digest (ListFileError when it cannot be read)."""
    data = read_list_file(path)
    return ListBody(path, hashlib.sha256(data).hexdigest(), data)


def spec_for_file(path: str | Path, *, allow: bool, fmt: str = "auto") -> ListSpec:
    p = Path(path)
    return ListSpec(
        name=p.name,
        path=str(p),
        format=fmt,
        category="allow" if allow else "local",
        allow=allow,
    )


def source_of(spec: ListSpec, cache_dir: Path) -> Path:
    """The file a configured list is read from: its own, or its cached feed body."""
    return Path(spec.path) if spec.path is not None else feed_body_path(cache_dir, spec.name)


def files_resolver(cache_dir: Path | None) -> SourceResolver:
    """The plain resolver: a list's own file, or the last good body of a feed."""
    cache = cache_dir or default_cache_dir()

    def resolve(spec: ListSpec) -> ListBody | Unavailable:
        path = source_of(spec, cache)
        if spec.path is None and not path.exists():
            return Unavailable("not fetched yet")
        return read_body(path)

    return resolve


def parse_body(
    spec: ListSpec, found: ListBody, count: Callable[[ParsedList], int] | None = None
) -> tuple[ParsedList, ListStatus]:
    """Parse the bytes a resolver found for ``spec`` (ListFormatError when refused)."""
    parsed = found.parsed
    if parsed is None:
        assert found.data is not None
        parsed = parse_list(found.data, spec.format, name=spec.name)
    distinct = found.distinct
    if distinct is None and count is not None:
        distinct = count(parsed)
    status = ListStatus(
        spec.name,
        spec.path or spec.url or "",
        True,
        len(parsed.rules),
        parsed.rejected_count,
        parsed.format,
        path=found.path,
        digest=found.digest,
        distinct=distinct,
    )
    return parsed, status


def parse_lists(
    specs: Sequence[ListSpec],
    cache_dir: Path | None,
    *,
    strict: bool = False,
    allow: bool | None = None,
    resolve: SourceResolver | None = None,
    count: Callable[[ParsedList], int] | None = None,
) -> tuple[list[tuple[ListSpec, ParsedList]], list[ListStatus]]:
    """Parse every enabled list (only allow or only block lists when ``allow`` says so).

    The one loop from configured lists to parsed ones, for every engine: ``resolve``
    says where each list's bytes come from (default: its file, or its cached feed
    body; the refresher's worker passes its own), ``count`` counts distinct rules
    into each status where the resolver did not know them. With ``strict`` any
    unreadable or refused list raises (command-line files); otherwise it is
    reported in its status (a refused one with the file it was read from) and
    skipped, and the others still load.
    """
    resolve = resolve or files_resolver(cache_dir)
    parsed: list[tuple[ListSpec, ParsedList]] = []
    statuses: list[ListStatus] = []
    for spec in specs:
        if not spec.enabled or (allow is not None and spec.allow is not allow):
            continue
        where = spec.path or spec.url or ""
        result: ParsedList | None = None
        try:
            found = resolve(spec)
        except ListFileError as exc:
            if strict:
                raise
            found = Unavailable(str(exc))
        if isinstance(found, Unavailable):
            status = ListStatus(spec.name, where, False, error=found.error)
        else:
            try:
                with paused_gc():
                    result, status = parse_body(spec, found, count)
            except ListFormatError as exc:
                if strict:
                    raise
                status = ListStatus(spec.name, where, False, error=f"{found.path}: {exc}")
        del found  # a feed's bytes (up to MAX_LIST_BYTES) go before the next list is read
        statuses.append(status)
        if result is not None:
            parsed.append((spec, result))
    return parsed, statuses


def build_engine(
    specs: Sequence[ListSpec],
    *,
    cache_dir: Path | None = None,
    strict: bool = False,
    resolve: SourceResolver | None = None,
) -> tuple[Engine, LoadReport]:
    """Parse and compile the given lists in memory (no snapshot: files, tests, a cold start)."""
    parsed, statuses = parse_lists(specs, cache_dir, strict=strict, resolve=resolve)
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
