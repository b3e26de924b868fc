"""Fetching feeds over HTTP (aiohttp), and each source's state on disk.

One conditional GET per source per run, retried with exponential backoff and
jitter; ``Retry-After`` on 429/503 is honoured. The body is streamed to a temp
file beside the cached one (never held whole in memory, aborted as soon as it
passes the size cap) and only replaces the last good body after validation
(:func:`commit_body`: fsync, rename). Downloads use their own session with
``trust_env=False`` and no proxy, so they never pass through jectguard itself.

Per source, ``<cache>/feeds/<name>.body`` is the last good body and
``<cache>/feeds/<name>.state.json`` its :class:`SourceState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Final

import aiohttp

from . import __version__
from .core.model import ListSpec
from .loading import feed_body_path
from .store import atomic_write, fsync_dir

log = logging.getLogger(__name__)

USER_AGENT: Final = f"jectguard/{__version__} (+https://github.com/jectguard)"
# Decompressed bytes a feed may have; the largest public threat lists are ~50 MB.
MAX_FEED_BYTES: Final = 256 * 1024 * 1024
# Body bytes gathered before one write to the temp file (in a worker thread).
SPOOL_CHUNK: Final = 1024 * 1024
STATE_SUFFIX: Final = ".state.json"
# A temp body untouched this long was left by a crash, not a download in progress.
STALE_PARTIAL_SECONDS: Final = 3600

Progress = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Timeouts, limits and retry behaviour of one fetch."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # silence in the middle of a body
    total_timeout: float = 300.0
    max_bytes: int = MAX_FEED_BYTES
    attempts: int = 3
    backoff: float = 2.0  # first retry waits about this long, then doubles
    backoff_max: float = 60.0
    # A longer Retry-After ends this run; the next run is scheduled after it.
    retry_after_max: float = 120.0


DEFAULT_POLICY: Final = FetchPolicy()


@dataclass(slots=True)
class SourceState:
    """What is known about one URL source; kept as JSON beside its body."""

    name: str
    url: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None  # last 200-and-accepted or 304
    last_change: float | None = None  # last time a new body was accepted
    etag: str | None = None  # of the last accepted body
    last_modified: str | None = None
    entries: dict[str, int] = field(default_factory=dict)  # by rule kind
    entries_total: int | None = None
    rejected: int = 0
    refused: int = 0
    bytes: int | None = None
    held_back: str | None = None
    last_error: str | None = None
    next_run: float | None = None
    not_before: float | None = None  # from Retry-After
    failures: int = 0  # consecutive

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, name: str, data: bytes) -> SourceState:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        known = {f.name for f in fields(cls)}
        doc = {k: v for k, v in doc.items() if k in known}
        doc["name"] = name
        return cls(**doc)


def state_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / "feeds" / f"{name}{STATE_SUFFIX}"


def load_state(cache_dir: Path, spec: ListSpec) -> SourceState:
    """The saved state of a source; a fresh one if missing or unreadable."""
    try:
        st = SourceState.from_json(spec.name, state_path(cache_dir, spec.name).read_bytes())
    except FileNotFoundError:
        st = SourceState(spec.name)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("feed %s: state file unreadable (%s); starting afresh", spec.name, exc)
        st = SourceState(spec.name)
    if st.url != spec.url:  # another URL now: its validators mean nothing
        st.etag = st.last_modified = None
        st.url = spec.url
    return st


def save_state(cache_dir: Path, state: SourceState) -> None:
    atomic_write(state_path(cache_dir, state.name), state.to_json())


def commit_body(cache_dir: Path, name: str, tmp: Path) -> Path:
    """Make a validated temp body the last good one (it was fsynced when written)."""
    dest = feed_body_path(cache_dir, name)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# -- fetching -----------------------------------------------------------------


class FetchError(Exception):
    """One attempt failed; ``retry`` says whether another attempt may help."""

    def __init__(
        self, message: str, *, retry: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


@dataclass(slots=True)
class FetchResult:
    """What one fetch run produced."""

    status: str  # "new" | "not_modified" | "failed"
    tmp: Path | None = None  # the candidate body (status "new"); caller commits or discards
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    bytes: int = 0
    error: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    attempts: int = 0


def make_session(policy: FetchPolicy) -> aiohttp.ClientSession:
    """A session that ignores proxy environment variables: feeds never go through jectguard."""
    timeout = aiohttp.ClientTimeout(
        total=policy.total_timeout,
        connect=policy.connect_timeout,
        sock_connect=policy.connect_timeout,
        sock_read=policy.read_timeout,
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        connector=aiohttp.TCPConnector(limit_per_host=2),
        raise_for_status=False,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(policy: FetchPolicy, attempt: int) -> float:
    """Exponential backoff with jitter before retry number ``attempt`` (1-based)."""
    cap = min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)


async def fetch(
    session: aiohttp.ClientSession,
    spec: ListSpec,
    state: SourceState,
    cache_dir: Path,
    policy: FetchPolicy = DEFAULT_POLICY,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> FetchResult:
    """Fetch one URL source with retries; never raises for network or server trouble."""
    assert spec.url is not None
    result = FetchResult("failed")
    for attempt in range(1, policy.attempts + 1):
        result.attempts = attempt
        try:
            return await _fetch_once(session, spec, state, cache_dir, policy, result, progress)
        except FetchError as exc:
            result.error, result.retry_after = str(exc), exc.retry_after
            retry = exc.retry
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result.error = _describe(exc, policy)
            retry = True
        if not retry or attempt == policy.attempts:
            break
        if result.retry_after is not None:
            if result.retry_after > policy.retry_after_max:
                break  # the scheduler waits that long before the next run
            delay = result.retry_after
        else:
            delay = backoff_delay(policy, attempt)
        log.info("feed %s: %s; retrying in %.1fs", spec.name, result.error, delay)
        if progress:
            progress(spec.name, "retry", {"error": result.error, "delay": delay})
        await sleep(delay)
    result.status = "failed"
    return result


def _describe(exc: BaseException, policy: FetchPolicy) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out (connect {policy.connect_timeout:g}s, read {policy.read_timeout:g}s, total {policy.total_timeout:g}s)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"body broken off or undecodable: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _fetch_once(
    session: aiohttp.ClientSession,
    spec: ListSpec,
    state: SourceState,
    cache_dir: Path,
    policy: FetchPolicy,
    result: FetchResult,
    progress: Progress | None,
) -> FetchResult:
    assert spec.url is not None
    headers = {}
    if feed_body_path(cache_dir, spec.name).exists():  # a 304 needs a body to keep
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
    async with session.get(spec.url, headers=headers, proxy=None) as resp:
        if resp.status == 304 and headers:
            result.status = "not_modified"
            result.etag = resp.headers.get("ETag", state.etag)
            result.last_modified = resp.headers.get("Last-Modified", state.last_modified)
            result.error = None
            return result
        if resp.status != 200:
            retry_after = None
            if resp.status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise FetchError(
                f"HTTP {resp.status} {resp.reason or ''}".rstrip(),
                retry=resp.status >= 500 or resp.status in (408, 429),
                retry_after=retry_after,
            )
        declared = resp.content_length if not resp.headers.get("Content-Encoding") else None
        if declared is not None and declared > policy.max_bytes:
            raise FetchError(
                f"body of {declared} bytes is over the {policy.max_bytes}-byte cap", retry=False
            )
        tmp = await _spool(resp, spec.name, cache_dir, policy, progress)
        result.status = "new"
        result.tmp = tmp
        result.bytes = tmp.stat().st_size
        result.content_type = resp.headers.get("Content-Type")
        result.etag = resp.headers.get("ETag")
        result.last_modified = resp.headers.get("Last-Modified")
        result.error = None
        return result


async def _spool(
    resp: aiohttp.ClientResponse,
    name: str,
    cache_dir: Path,
    policy: FetchPolicy,
    progress: Progress | None,
) -> Path:
    """Stream the (decompressed) body to a temp file in the feeds folder, fsynced."""
    folder = cache_dir / "feeds"
    f, tmp = await asyncio.to_thread(_open_temp, folder, name)
    try:
        size = 0
        buf = bytearray()
        total = resp.content_length
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchError(
                    f"body over the {policy.max_bytes}-byte cap (aborted while downloading)",
                    retry=False,
                )
            buf += chunk
            if len(buf) >= SPOOL_CHUNK:
                await asyncio.to_thread(f.write, bytes(buf))
                buf.clear()
                if progress:
                    progress(name, "bytes", {"bytes": size, "total": total})
        await asyncio.to_thread(_finish, f, bytes(buf))
        if progress:
            progress(name, "bytes", {"bytes": size, "total": total})
    except BaseException:
        await asyncio.to_thread(_abandon, f, tmp)
        raise
    return tmp


def _open_temp(folder: Path, name: str) -> tuple[IO[bytes], Path]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{name}.body.", suffix=".part", dir=folder)
    return os.fdopen(fd, "wb"), Path(path)


def _finish(f: IO[bytes], rest: bytes) -> None:
    with f:
        f.write(rest)
        f.flush()
        os.fsync(f.fileno())


def _abandon(f: IO[bytes], tmp: Path) -> None:
    with contextlib.suppress(OSError):
        f.close()
    discard(tmp)


def clean_partials(cache_dir: Path, older_than: float = STALE_PARTIAL_SECONDS) -> None:
    """Remove temp bodies left by a crash (not those another process is writing now)."""
    now = time.time()
    for p in (cache_dir / "feeds").glob("*.part"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= older_than:
                p.unlink()
