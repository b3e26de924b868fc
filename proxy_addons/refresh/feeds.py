# One module on purpose (~750 lines): one fetch of one feed, its validators and its
# state file; the streaming, decoding and commit steps share the temp-file protocol.
"""Fetching feeds over HTTP (aiohttp), and each source's state on disk.

One conditional GET per source per run, retried with exponential backoff and
jitter, all within one deadline per source (``FetchPolicy.total_timeout``: a
server dripping a byte a second is cut there, not after every attempt's own
timeout). ``Retry-After`` on 429/503 is honoured, capped at
:data:`MAX_RETRY_AFTER`. The body is streamed to a temp file beside the cached
one (never held whole in memory, aborted as soon as it passes the size cap)
and only replaces the last good body after validation (:func:`commit_body`:
fsync, rename). Downloads use their own session with ``trust_env=False`` and
no proxy, so they never pass through jectguard itself.

A download counts only when it proves it is whole (a cut list is another list:
the lines after the cut are lost and the last line becomes a different host):

- the transfer: ``Content-Length`` met, or the chunked terminator received; a
  body delimited only by the connection closing is refused, since a cut one
  looks the same;
- every content coding: stream end and checksum (:mod:`.core.codings`; we
  decode ourselves, aiohttp does not check a gzip trailer);
- compressed *files* (a ``.gz`` list served as such) are not decompressed:
  the list parser refuses them.

Redirects are followed by hand: at most ``max_redirects`` hops, http(s) only,
never from https down to http, never a loop; a feed whose configured URL is
public never reaches a loopback, private or link-local address on any hop
(IP literals are checked here, names by the session's resolver as each
connection is made, so a public name resolving to 127.0.0.1 is refused too).
Refusals and 4xx answers other than 408/429 are *permanent*: not retried now,
and the scheduler waits the source's normal interval.

Validators (``ETag``, ``Last-Modified``) are stored with the SHA-256 of the
body they validate and sent only while that very body is the one on disk; a
``Last-Modified`` after the response's ``Date`` or after our clock is treated
as absent (replayed, it would get 304 forever).

Per source, ``<cache>/feeds/<name>.body`` is the last good body and
``<cache>/feeds/<name>.state.json`` its :class:`SourceState`. Temp bodies
(``<name>.body.*.part``) are written 0644 like every file in the cache (a proxy
may run as another user) and locked (``flock``) by their writer until they are
committed or discarded, so :func:`clean_partials` removes exactly the ones a
killed run left.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import email.utils
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from proxy_addons import __version__
from proxy_addons.core.codings import ACCEPT_ENCODING, CodingError, decoder_for
from proxy_addons.core.model import ListSpec
from proxy_addons.lists.files import feed_body_path
from proxy_addons.lists.layout import CacheLayout
from proxy_addons.lists.store import FILE_MODE, atomic_write, fsync_dir
from proxy_addons.refresh.outcome import Fetch

log = logging.getLogger(__name__)

USER_AGENT: Final = f"jectguard/{__version__} (+https://github.com/jectguard)"
# Decompressed bytes a feed may have; the largest public threat lists are ~50 MB.
MAX_FEED_BYTES: Final = 256 * 1024 * 1024
# Pacing sleeps only when a body is this far ahead of its rate (seconds).
PACE_MIN_SLEEP: Final = 0.002
# Body bytes gathered before one write to the temp file (in a worker thread).
SPOOL_CHUNK: Final = 1024 * 1024
# A temp body this young may belong to a writer that has not locked it yet.
PARTIAL_GRACE_SECONDS: Final = 60.0
# A server may ask us to wait (Retry-After), but not to stop a feed for days.
MAX_RETRY_AFTER: Final = 6 * 3600
# Clocks differ; a Last-Modified this far ahead of ours is still taken as "now".
CLOCK_SKEW: Final = 300.0
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# 4xx answers worth trying again soon: the server said "later", not "never".
TRANSIENT_4XX: Final = frozenset({408, 429})

Progress = Callable[[str, str, dict[str, Any]], None]


def is_public_address(ip: str) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local...)."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            ip.split("%", 1)[0]
        )
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one reaches that IPv4 address.
        inner = addr.ipv4_mapped or addr.sixtofour
        if inner is None and addr in _NAT64:
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            addr = inner
    return addr.is_global and not addr.is_multicast


_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Timeouts, limits and retry behaviour of one fetch."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # silence in the middle of a body
    total_timeout: float = 300.0  # the whole fetch of one source: every attempt and wait
    max_bytes: int = MAX_FEED_BYTES
    attempts: int = 3
    backoff: float = 2.0  # first retry waits about this long, then doubles
    backoff_max: float = 60.0
    # A longer Retry-After ends this run; the next run is scheduled after it.
    retry_after_max: float = 120.0
    max_redirects: int = 5
    # A body is read at most this fast (bytes/s; 0: as fast as it comes). The download
    # shares the proxy's event loop with every request: at loopback or LAN speed a
    # 25 MB feed took the loop in bursts and raised the proxy's p99 latency ~3x for
    # that second (bench_refresh.py); paced, it costs the loop a little at a time. A
    # feed at the 256 MB cap still arrives in ~16 s, well inside ``total_timeout``.
    max_rate: int = 16 * 1024 * 1024
    # Which addresses count as public (tests widen it to reach a local server).
    is_public: Callable[[str], bool] = is_public_address


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
    body_sha256: str | None = None  # the body the validators above belong to
    entries: dict[str, int] = field(default_factory=dict)  # by rule kind
    entries_total: int | None = None
    rejected: int = 0
    refused: int = 0
    bytes: int | None = None
    held_back: str | None = None
    last_error: str | None = None
    permanent_error: bool = False  # the last failure will not pass by retrying soon
    next_run: float | None = None
    not_before: float | None = None  # from Retry-After
    failures: int = 0  # consecutive

    def to_json(self) -> builtins.bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, name: str, data: builtins.bytes) -> SourceState:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        known = {f.name for f in fields(cls)}
        doc = {k: v for k, v in doc.items() if k in known}
        doc["name"] = name
        return cls(**doc)


def state_path(cache_dir: Path, name: str) -> Path:
    return CacheLayout(cache_dir).feed_state(name)


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
        st.etag = st.last_modified = st.body_sha256 = None
        st.url = spec.url
    return st


def save_state(cache_dir: Path, state: SourceState) -> None:
    atomic_write(state_path(cache_dir, state.name), state.to_json())


def commit_body(cache_dir: Path, name: str, tmp: Path) -> Path:
    """Make a validated temp body the last good one (it was fsynced when written)."""
    dest = feed_body_path(cache_dir, name)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    _release(tmp)
    return dest


# Temp bodies this process writes, open and flock-ed until committed or discarded.
_HELD: dict[Path, IO[bytes]] = {}


def discard(tmp: Path | None) -> None:
    """Remove a temp body (if it was not committed) and release its lock."""
    if tmp is None:
        return
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _release(tmp)


def _release(tmp: Path) -> None:
    """Close a temp body this process wrote (which drops its lock)."""
    f = _HELD.pop(tmp, None)
    if f is not None:
        with contextlib.suppress(OSError):
            f.close()


def body_digest(path: Path) -> str | None:
    """SHA-256 of a file, None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(SPOOL_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


# -- validators ---------------------------------------------------------------


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp()


def usable_last_modified(value: str | None, *, now: float, date: str | None = None) -> str | None:
    """A Last-Modified worth replaying, else None.

    One after the response's ``Date`` (the server's own clock: RFC 9110 forbids
    it) or after ours is from the future; replayed as If-Modified-Since it
    would get 304 until that date, so it is treated as absent.
    """
    when = _http_date(value)
    if when is None:
        return None
    server_now = _http_date(date)
    if server_now is not None and when > server_now:
        return None
    if when > now + CLOCK_SKEW:
        return None
    return value


def conditional_headers(cache_dir: Path, state: SourceState, now: float) -> dict[str, str]:
    """If-None-Match / If-Modified-Since, only for the very body on disk they were stored with."""
    if not (state.etag or state.last_modified) or state.body_sha256 is None:
        return {}
    if body_digest(feed_body_path(cache_dir, state.name)) != state.body_sha256:
        return {}  # another body (or none): a 304 would keep a body they do not describe
    headers = {}
    if state.etag:
        headers["If-None-Match"] = state.etag
    lm = usable_last_modified(state.last_modified, now=now)
    if lm:
        headers["If-Modified-Since"] = lm
    return headers


# -- where a feed may go ----------------------------------------------------------


class Reach(StrEnum):
    """Which addresses a feed's requests may connect to."""

    PUBLIC = "public"  # global addresses only, on every hop
    INTERNAL = "internal"  # the configured URL itself is internal: anything


def url_reach(url: str, *, internal: bool = False, policy: FetchPolicy = DEFAULT_POLICY) -> Reach:
    """INTERNAL when the configured URL is internal: a non-public IP literal, localhost, or
    a source marked ``internal = true`` (a corporate feed server by name)."""
    if internal:
        return Reach.INTERNAL
    host = (URL(url).host or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return Reach.INTERNAL
    if _is_ip(host) and not policy.is_public(host):
        return Reach.INTERNAL
    return Reach.PUBLIC


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AddressRefused(OSError):
    """A feed of public reach would connect to a non-public address."""


class GuardedResolver(AbstractResolver):
    """Resolves names, refusing any that resolves to a non-public address.

    The check runs as each connection is made (the session keeps no DNS cache),
    so what is checked is what is connected to.
    """

    def __init__(self, is_public: Callable[[str], bool]) -> None:
        self.inner = ThreadedResolver()
        self.is_public = is_public

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        for r in found:
            if not self.is_public(r["host"]):
                # Refuse the name, not just that address: a name mixing both is a trick.
                raise AddressRefused(
                    f"{host} resolves to {r['host']}, not a public address, and this "
                    "feed's URL is public (set internal = true on an internal feed)"
                )
        return found

    async def close(self) -> None:
        await self.inner.close()


# -- fetching -----------------------------------------------------------------


class FetchError(Exception):
    """One attempt failed; ``retry`` says whether another attempt may help now,
    ``permanent`` that waiting a short while will not help either."""

    def __init__(
        self,
        message: str,
        *,
        retry: bool = True,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry = retry and not permanent
        self.retry_after = retry_after
        self.permanent = permanent


@dataclass(slots=True)
class FetchResult:
    """What one fetch run produced."""

    status: Fetch
    tmp: Path | None = None  # the candidate body (status "new"); caller commits or discards
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None  # of the decoded body (status "new")
    bytes: int = 0
    error: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    permanent: bool = False  # the failure will not pass by retrying soon
    attempts: int = 0


def make_session(policy: FetchPolicy, reach: Reach = Reach.PUBLIC) -> aiohttp.ClientSession:
    """A session for one source: no proxy environment (feeds never go through jectguard),
    no automatic decompression (we check every stream's end), no DNS cache (each
    connection's address is checked), and for a public feed a resolver that refuses
    non-public addresses."""
    timeout = aiohttp.ClientTimeout(
        total=policy.total_timeout,
        connect=policy.connect_timeout,
        sock_connect=policy.connect_timeout,
        sock_read=policy.read_timeout,
    )
    resolver = GuardedResolver(policy.is_public) if reach is Reach.PUBLIC else None
    return aiohttp.ClientSession(
        timeout=timeout,
        trust_env=False,
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        connector=aiohttp.TCPConnector(limit_per_host=2, use_dns_cache=False, resolver=resolver),
        raise_for_status=False,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER))
    when = _http_date(value)
    if when is None:
        return None
    wait = when - (time.time() if now is None else now)
    return min(max(0.0, wait), float(MAX_RETRY_AFTER))


def backoff_delay(policy: FetchPolicy, attempt: int) -> float:
    """Exponential backoff with jitter before retry number ``attempt`` (1-based)."""
    cap = min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1))
    return float(cap / 2 + random.uniform(0, cap / 2))


async def fetch(
    spec: ListSpec,
    state: SourceState,
    cache_dir: Path,
    policy: FetchPolicy = DEFAULT_POLICY,
    *,
    internal: bool = False,
    progress: Progress | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> FetchResult:
    """Fetch one URL source with retries, within its deadline; never raises for network or server trouble."""
    assert spec.url is not None
    result = FetchResult(Fetch.FAILED)
    reach = url_reach(spec.url, internal=internal, policy=policy)
    headers = await asyncio.to_thread(conditional_headers, cache_dir, state, clock())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.total_timeout
    try:
        async with asyncio.timeout_at(deadline), make_session(policy, reach) as session:
            for attempt in range(1, policy.attempts + 1):
                result.attempts = attempt
                try:
                    return await _fetch_once(
                        session,
                        spec,
                        reach,
                        headers,
                        state,
                        cache_dir,
                        policy,
                        result,
                        progress,
                        clock,
                    )
                except FetchError as exc:
                    result.error, result.retry_after = str(exc), exc.retry_after
                    result.permanent = exc.permanent
                    retry = exc.retry
                except aiohttp.InvalidURL as exc:  # e.g. a redirect to http://2130706433/
                    result.error = f"refused: invalid URL {exc}"
                    result.permanent, retry = True, False
                except aiohttp.ClientConnectorError as exc:
                    refused = exc.os_error if isinstance(exc.os_error, AddressRefused) else None
                    result.error = f"refused: {refused}" if refused else _describe(exc, policy)
                    result.permanent = refused is not None
                    retry = refused is None
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
                if loop.time() + delay >= deadline:
                    break
                log.info("feed %s: %s; retrying in %.1fs", spec.name, result.error, delay)
                if progress:
                    progress(spec.name, "retry", {"error": result.error, "delay": delay})
                await sleep(delay)
    except TimeoutError:
        last = f" (last: {result.error})" if result.error else ""
        result.error = f"no complete answer within the {policy.total_timeout:g}s deadline{last}"
        result.permanent = False
    result.status = Fetch.FAILED
    if result.permanent:
        result.error = f"{result.error} (permanent: next try at the regular interval)"
    return result


def _describe(exc: BaseException, policy: FetchPolicy) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out (connect {policy.connect_timeout:g}s, read {policy.read_timeout:g}s)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"body broken off: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _next_hop(url: URL, location: str | None, status: int, seen: set[str]) -> URL:
    if not location:
        raise FetchError(f"HTTP {status} redirect without a Location", permanent=True)
    try:
        nxt = url.join(URL(location)).with_fragment(None)
    except (ValueError, TypeError):
        raise FetchError(
            f"HTTP {status} redirect to an invalid URL {location!r}", permanent=True
        ) from None
    if str(nxt) in seen:
        raise FetchError(f"redirect loop back to {nxt}", permanent=True)
    seen.add(str(nxt))
    return nxt


def _check_hop(url: URL, first: URL, reach: Reach, policy: FetchPolicy) -> None:
    """Refuse a hop the feed's configured URL does not allow (before connecting)."""
    if url.scheme not in ("http", "https"):
        raise FetchError(f"redirect to a {url.scheme or 'schemeless'}: URL refused", permanent=True)
    if first.scheme == "https" and url.scheme == "http":
        raise FetchError(f"redirect from https down to {url} refused", permanent=True)
    host = (url.host or "").rstrip(".")
    if not host:
        raise FetchError(f"redirect to {url} (no host) refused", permanent=True)
    if reach is Reach.PUBLIC and _is_ip(host) and not policy.is_public(host):
        raise FetchError(
            f"redirect to {host} refused: not a public address, and this feed's URL is public",
            permanent=True,
        )


async def _fetch_once(
    session: aiohttp.ClientSession,
    spec: ListSpec,
    reach: Reach,
    headers: dict[str, str],
    state: SourceState,
    cache_dir: Path,
    policy: FetchPolicy,
    result: FetchResult,
    progress: Progress | None,
    clock: Callable[[], float],
) -> FetchResult:
    assert spec.url is not None
    first = url = URL(spec.url)
    seen = {str(url)}
    for _hop in range(policy.max_redirects + 1):
        _check_hop(url, first, reach, policy)
        async with session.get(url, headers=headers, proxy=None, allow_redirects=False) as resp:
            if resp.status in REDIRECT_STATUSES:
                url = _next_hop(url, resp.headers.get("Location"), resp.status, seen)
                continue
            return await _answer(
                resp, spec, headers, state, cache_dir, policy, result, progress, clock
            )
    raise FetchError(f"more than {policy.max_redirects} redirects", permanent=True)


async def _answer(
    resp: aiohttp.ClientResponse,
    spec: ListSpec,
    headers: dict[str, str],
    state: SourceState,
    cache_dir: Path,
    policy: FetchPolicy,
    result: FetchResult,
    progress: Progress | None,
    clock: Callable[[], float],
) -> FetchResult:
    now = clock()
    date = resp.headers.get("Date")
    if resp.status == 304 and headers:
        result.status = Fetch.NOT_MODIFIED
        result.etag = resp.headers.get("ETag", state.etag)
        lm = resp.headers.get("Last-Modified", state.last_modified)
        result.last_modified = usable_last_modified(lm, now=now, date=date)
        result.error = None
        return result
    if resp.status != 200:
        retry_after = None
        if resp.status in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), now)
        raise FetchError(
            f"HTTP {resp.status} {resp.reason or ''}".rstrip(),
            retry=resp.status >= 500 or resp.status in TRANSIENT_4XX,
            retry_after=retry_after,
            permanent=400 <= resp.status < 500 and resp.status not in TRANSIENT_4XX,
        )
    chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
    declared = None if chunked else resp.content_length
    if declared is None and not chunked:
        raise FetchError(
            "the server ended the body only by closing the connection (no Content-Length, "
            "not chunked): a cut body would look whole",
            retry=False,
        )
    if declared is not None and declared > policy.max_bytes:
        raise FetchError(
            f"body of {declared} bytes is over the {policy.max_bytes}-byte cap", retry=False
        )
    try:
        decoder = decoder_for(resp.headers.get("Content-Encoding"))
    except CodingError as exc:
        raise FetchError(str(exc), retry=False) from None
    tmp, size, digest = await _spool(
        resp, spec.name, cache_dir, policy, progress, decoder, declared
    )
    result.status = Fetch.NEW
    result.tmp = tmp
    result.bytes = size
    result.sha256 = digest
    result.content_type = resp.headers.get("Content-Type")
    result.etag = resp.headers.get("ETag")
    result.last_modified = usable_last_modified(
        resp.headers.get("Last-Modified"), now=now, date=date
    )
    result.error = None
    return result


async def _spool(
    resp: aiohttp.ClientResponse,
    name: str,
    cache_dir: Path,
    policy: FetchPolicy,
    progress: Progress | None,
    decoder: Any,
    declared: int | None,
) -> tuple[Path, int, str]:
    """Stream the body, decoded, to a locked temp file in the feeds folder, fsynced; it must
    prove it is whole (transfer length and every coding's end) or nothing is kept."""
    folder = CacheLayout(cache_dir).feeds
    f, tmp = await asyncio.to_thread(_open_temp, folder, name)
    try:
        size = raw = 0
        digest = hashlib.sha256()
        buf = bytearray()
        total = resp.content_length
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            raw += len(chunk)
            if raw > policy.max_bytes:
                raise FetchError(
                    f"body over the {policy.max_bytes}-byte cap (aborted while downloading)",
                    retry=False,
                )
            try:
                for piece in decoder.feed(chunk):
                    size += len(piece)
                    if size > policy.max_bytes:
                        raise FetchError(
                            f"body over the {policy.max_bytes}-byte cap (aborted while downloading)",
                            retry=False,
                        )
                    digest.update(piece)
                    buf += piece
            except CodingError as exc:
                raise FetchError(f"body undecodable: {exc}") from None
            if len(buf) >= SPOOL_CHUNK:
                await asyncio.to_thread(f.write, bytes(buf))
                buf.clear()
                if progress:
                    progress(name, "bytes", {"bytes": raw, "total": total})
            if policy.max_rate > 0:
                # Paced by the larger of the bytes received and the bytes decoded: a
                # compressed feed's work in the loop is its decoded size.
                ahead = max(raw, size) / policy.max_rate - (loop.time() - started)
                if ahead > PACE_MIN_SLEEP:  # (a small body is never made to wait)
                    await asyncio.sleep(ahead)
        # aiohttp raises when a connection ends before the length or the chunked
        # terminator; the count is checked again here so no parser path can slip.
        if declared is not None and raw != declared:
            raise FetchError(f"body cut short: {raw} of {declared} bytes")
        try:
            decoder.finish()
        except CodingError as exc:
            raise FetchError(f"body incomplete: {exc}") from None
        await asyncio.to_thread(_finish, f, bytes(buf))
        if progress:
            progress(name, "bytes", {"bytes": raw, "total": total})
    except BaseException:
        await asyncio.to_thread(discard, tmp)
        raise
    return tmp, size, digest.hexdigest()


def _open_temp(folder: Path, name: str) -> tuple[IO[bytes], Path]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{name}.body.", suffix=".part", dir=folder)
    f = os.fdopen(fd, "wb")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; proxies may run as another user
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "being written": clean_partials keeps it
    except BaseException:
        f.close()
        os.unlink(path)
        raise
    _HELD[Path(path)] = f
    return f, Path(path)


def _finish(f: IO[bytes], rest: bytes) -> None:
    """Write the rest and fsync; the file stays open (and locked) until committed or discarded."""
    f.write(rest)
    f.flush()
    os.fsync(f.fileno())


def clean_partials(cache_dir: Path, grace: float = PARTIAL_GRACE_SECONDS) -> int:
    """Remove temp bodies left by killed runs; never one a live fetch holds (its lock says so)."""
    now = time.time()
    removed = 0
    for p in CacheLayout(cache_dir).feeds.glob("*.body.*.part"):
        try:
            if now - p.lstat().st_mtime < grace:
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live fetch (this process or another) is writing or validating it
        else:
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("jectguard: removed %d temp feed bodies left by an interrupted run", removed)
    return removed


def tidy_feed_dir(cache_dir: Path) -> None:
    """At every start: remove temp bodies left by killed runs, and give bodies an older
    version wrote 0600 the mode every cache file has (a proxy running as another user
    must read them, or it silently drops an allowlist)."""
    clean_partials(cache_dir)
    for body in CacheLayout(cache_dir).feeds.glob("*.body"):
        with contextlib.suppress(OSError):  # not ours, or gone: leave it
            st = body.lstat()
            if st.st_uid == os.geteuid() and (st.st_mode & 0o777) != FILE_MODE:
                body.chmod(FILE_MODE)
