# One module on purpose (~820 lines): the aiohttp app is one route table over one typed
# state; the handlers are small and read best beside the table.
"""The admin API and dashboard: a small aiohttp application on its own (loopback) port.

:func:`create_app` builds the application from an :class:`AdminState`; the
``jectguard_admin`` addon embeds it in mitmproxy's event loop. No mitmproxy
import here: the app is tested on its own with pytest-aiohttp.

Every route except ``/healthz``, ``/readyz``, ``/proxy.pac`` and the
dashboard's static shell (which holds no data) needs ``Authorization: Bearer
<token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import inspect
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from proxy_addons import __version__
from proxy_addons.core.engine import Engine
from proxy_addons.lists.health import SnapshotHealth, SnapshotState
from proxy_addons.lists.layout import CacheLayout
from proxy_addons.telemetry.events import EVENT_KINDS, EventLog, rfc3339
from proxy_addons.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy_addons.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

TOKEN_ENV: Final = "JECTGUARD_ADMIN_TOKEN"
# A shorter token is guessable; the generated ones are 43 characters.
MIN_TOKEN_LENGTH: Final = 16
# Longest token file read (a token is one short line).
MAX_TOKEN_FILE_BYTES: Final = 4096
# Longest URL /api/check accepts (below aiohttp's 8190-byte request line; real URLs are shorter).
MAX_CHECK_URL: Final = 4096
MAX_EVENTS_LIMIT: Final = 1000
DEFAULT_EVENTS_LIMIT: Final = 100
# The dashboard's chart covers at most this many minutes.
MAX_TIMELINE_MINUTES: Final = 24 * 60
STATIC_FILES: Final = {
    "dashboard.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# A host name safe to write into the PAC file's JavaScript string.
_PAC_HOST_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")

# A refresh trigger only starts a refresh (the refresher runs it); it answers at once.
REFRESH_TRIGGER_TIMEOUT: Final = 5.0
# What a refresh trigger answers: True when a refresh started, False when one is already
# running, None when this process has no refresher (yet).
RefreshTrigger = Callable[[], bool | None | Awaitable[bool | None]]


class CampaignControl(Protocol):
    """The campaign addon, as the admin routes use it."""

    def listing(self) -> dict[str, Any]: ...

    async def clear(self, host: str) -> bool: ...


class TokenError(Exception):
    """The admin token could not be read or stored."""


@dataclass(frozen=True, slots=True)
class AdminToken:
    """The token and where it came from (``file``, ``env``, ``stored`` or ``generated``)."""

    token: str = field(repr=False)
    source: str
    path: Path | None = None


def _read_token(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise TokenError(f"{path}: no such file") from None
    except OSError as exc:
        raise TokenError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenError(f"{path}: too large for a token file")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenError(f"{path}: not UTF-8 text") from None
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise TokenError(
            f"{path}: the token must be one line of at least {MIN_TOKEN_LENGTH} "
            "printable characters without spaces"
        )
    if stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "jectguard: admin token file %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return token


def load_or_create_token(
    token_file: str | Path | None,
    data_dir: Path,
    env: Mapping[str, str] | None = None,
) -> AdminToken:
    """The admin token: from ``token_file``, else the environment, else ``<data_dir>/admin-token``.

    The stored token is generated on first start with 0600 permissions and reused
    afterwards. TokenError says what is wrong.
    """
    if token_file:
        path = Path(token_file).expanduser()
        return AdminToken(_read_token(path), "file", path)
    env = os.environ if env is None else env
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        if len(from_env) < MIN_TOKEN_LENGTH or not from_env.isprintable() or " " in from_env:
            raise TokenError(
                f"{TOKEN_ENV}: the token must be at least {MIN_TOKEN_LENGTH} printable "
                "characters without spaces"
            )
        return AdminToken(from_env, "env")
    path = CacheLayout(data_dir).admin_token
    if path.exists():
        return AdminToken(_read_token(path), "stored", path)
    token = secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it just now: use that one
        return AdminToken(_read_token(path), "stored", path)
    except OSError as exc:
        raise TokenError(f"{path}: cannot create: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return AdminToken(token, "generated", path)


def token_matches(given: str, expected: str) -> bool:
    """Compare tokens in constant time."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_LOOPBACK_ADDRESSES: Final = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class AdminHosts:
    """The Host header values the admin server answers to (DNS rebinding defence).

    A page on ``http://attacker.example/`` whose name the attacker re-points at
    this server reaches it with ``Host: attacker.example``: names must be listed.
    An IP literal cannot be re-pointed, but the listen address is the one to
    accept; on a wildcard listen address every address of the host is, so any
    literal is. No Host at all comes from scripts and health checks (HAProxy's
    HTTP/1.0 checks), never from a browser, and is accepted.
    """

    names: frozenset[str] = _LOOPBACK_NAMES
    addresses: frozenset[str] = _LOOPBACK_ADDRESSES
    any_address: bool = False

    @classmethod
    def for_listener(cls, listen_host: str, extra_names: tuple[str, ...] = ()) -> AdminHosts:
        names = set(_LOOPBACK_NAMES) | {_canonical_name(n) for n in extra_names}
        addresses = set(_LOOPBACK_ADDRESSES)
        try:
            ip = ipaddress.ip_address(listen_host.strip("[]"))
        except ValueError:
            names.add(_canonical_name(listen_host))  # bound by name: that name
            return cls(frozenset(names), frozenset(addresses))
        addresses.add(str(ip))
        return cls(frozenset(names), frozenset(addresses), any_address=ip.is_unspecified)

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return True
        host = _host_of(host_header)
        if host is None:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return _canonical_name(host) in self.names
        return self.any_address or str(ip) in self.addresses

    def describe(self) -> str:
        return ", ".join(sorted(self.names | self.addresses)) + (
            " and any address of this host" if self.any_address else ""
        )


def _canonical_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _host_of(host_header: str) -> str | None:
    """The host of a Host header (no port, no brackets); None when it is malformed."""
    value = host_header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not re.fullmatch(r":\d{1,5}", value[end + 1 :])):
            return None
        return value[1:end]
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not port.isdigit() or ":" in host:
        return None
    return host or None


@dataclass(slots=True)
class AdminState:
    """Everything the admin routes read; the providers are plugged in by the addons."""

    token: str = field(repr=False)
    engine: Callable[[], Engine | None]
    events: EventLog
    metrics: Metrics
    # "host:port" the proxy listens on (for the PAC file); host may be empty or a wildcard
    proxy_address: Callable[[], tuple[str, int] | None] = lambda: None
    # per-list details (rule counts, sources) to merge with what the engine knows
    lists: Callable[[], list[dict[str, Any]]] | None = None
    # the refresher's per-source status (JSON-ready), and a trigger for "refresh now"
    refresh_status: Callable[[], Any] | None = None
    refresh_trigger: RefreshTrigger | None = None
    # Host header values answered to; anything else is 421 (DNS rebinding)
    hosts: AdminHosts = field(default_factory=AdminHosts)
    # how the snapshot served relates to the store (stale, damaged), from the follower
    snapshot_health: Callable[[], SnapshotHealth | None] | None = None
    # the campaign detector's findings and list (None: not loaded in this process)
    campaigns: CampaignControl | None = None
    # retro-hunt hits found since a time (blocking: run in a thread), from the ledger addon
    retro_hits: Callable[[float], list[dict[str, Any]]] | None = None
    # the cache whose snapshot store holds the record of what is in force (and the holds)
    cache_dir: Path | None = None
    version: str = __version__
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time


STATE: Final = web.AppKey("state", AdminState)
STATIC: Final = web.AppKey("static", dict)
PUBLIC_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/proxy.pac", "/", "/static/dashboard.css", "/static/dashboard.js"}
)


# -- helpers ----------------------------------------------------------------


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, default=str),
        status=status,
        content_type="application/json",
        headers=headers or None,
    )


def _bad_request(message: str) -> web.Response:
    return _json({"error": message}, status=400)


def _unauthorized() -> web.Response:
    return _json(
        {"error": "a valid admin token is required (Authorization: Bearer <token>)"},
        status=401,
        **{"WWW-Authenticate": 'Bearer realm="jectguard admin"'},
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _load_static() -> dict[str, bytes]:
    root = importlib.resources.files("proxy_addons.admin").joinpath("static")
    return {name: root.joinpath(name).read_bytes() for name in STATIC_FILES}


# -- middleware and signals ---------------------------------------------------


@web.middleware
async def host_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A Host this server does not go by is a rebound name: answer nothing (every route)."""
    host = request.headers.get("Host")
    if not request.app[STATE].hosts.allows(host):
        return _json(
            {
                "error": "misdirected request: this admin server does not answer to that Host; "
                "add the name to jg_admin_hostnames if it is yours"
            },
            status=421,
        )
    return await handler(request)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    given = _bearer(request)
    # Compare even when no token was sent, so timing says nothing either way.
    ok = token_matches(given or "", request.app[STATE].token) and given is not None
    if not ok:
        return _unauthorized()
    return await handler(request)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors are JSON; an unexpected exception is a logged 500, never a traceback page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json(
            {"error": exc.reason},
            status=exc.status,
            **{k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("jectguard: admin API error on %s", request.path)
        return _json({"error": "internal error"}, status=500)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if request.path not in ("/", "/static/dashboard.css", "/static/dashboard.js"):
        response.headers["Cache-Control"] = "no-store"
    else:
        response.headers.setdefault("Cache-Control", "no-cache")


# -- routes -----------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    st = request.app[STATE]
    engine = st.engine()
    if engine is None:
        return _json({"status": "not ready", "reason": "no compiled index loaded"}, status=503)
    health = st.snapshot_health() if st.snapshot_health is not None else None
    if health is None or health.state is SnapshotState.CURRENT:
        return _json({"status": "ready", "rules": engine.block.rule_count})
    # Still 200: verified rules are enforced. A stale or damaged snapshot is usually
    # shared by every replica, so failing readiness would empty the whole pool.
    return _json(
        {
            "status": health.state.value,
            "reason": health.reason,
            "rules": engine.block.rule_count,
            "snapshot": health.as_dict(st.clock()),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def snapshot_info(engine: Engine, now: float) -> dict[str, Any]:
    """What the status shows of the compiled indexes in force."""
    block = engine.block
    built_at = block.built_at
    path = block.path
    return {
        "rules": block.rule_count,
        "allow_rules": engine.allow.rule_count,
        "by_kind": block.by_kind,
        "refused_by_guard": block.refused_count,
        "built_at": rfc3339(built_at) if built_at is not None else None,
        "age_seconds": round(now - built_at, 1) if built_at is not None else None,
        "path": str(path) if path else None,
        "size_bytes": engine.block.size_bytes,
    }


def lists_info(engine: Engine | None, extra: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The lists the engine knows, merged with per-list details from a provider (by name)."""
    out: dict[str, dict[str, Any]] = {}
    if engine is not None:
        for index in (engine.block, engine.allow, engine.extra):
            for info in index.lists if index is not None else ():
                out.setdefault(
                    info.name,
                    {
                        "name": info.name,
                        "category": info.category,
                        "mode": info.mode.value,
                        "allow": info.allow,
                    },
                )
    for item in extra or []:
        name = str(item.get("name", ""))
        if name:
            out.setdefault(name, {"name": name}).update(item)
    return list(out.values())


def lists_from_report(
    report: Any, cache_dir: Path | None = None, clock: Callable[[], float] = time.time
) -> Callable[[], list[dict[str, Any]]]:
    """A ``lists`` provider: the lists configured at start-up, counted from the record in force.

    Rule counts and holds come from the store's record of what is in force
    (read when asked), so they follow every publish and rollback; the start-up
    :class:`~proxy_addons.lists.files.LoadReport` only names the lists and says why
    one did not load. Ages are the modification times of the list files (or
    cached feed bodies): one ``stat`` per list.
    """
    from proxy_addons.lists.files import feed_body_path
    from proxy_addons.lists.store import SnapshotStore

    store = SnapshotStore(cache_dir) if cache_dir is not None else None

    def provider() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        now = clock()
        record = store.read_record() if store is not None else None
        for st in report.lists:
            item: dict[str, Any] = {
                "name": st.name,
                "source": st.source,
                "loaded": st.loaded,
                "rules": st.rules,
                "rejected": st.rejected,
                "format": st.format,
                "error": st.error,
            }
            if record is not None:
                lst = record.lists.get(st.name)
                if lst is not None:
                    item.update(loaded=True, rules=lst.rules, error=None)
                hold = record.holds.get(st.name)
                item["held"] = hold.reason if hold is not None else None
            is_url = st.source.startswith(("http://", "https://"))
            path = (
                feed_body_path(cache_dir, st.name)
                if is_url and cache_dir
                else (None if is_url else Path(st.source))
            )
            with contextlib.suppress(OSError):
                if path is not None:
                    item["age_seconds"] = round(now - path.stat().st_mtime, 1)
            out.append(item)
        return out

    return provider


def in_force_info(st: AdminState, engine: Engine | None) -> dict[str, Any] | None:
    """The store's record of what is in force, and whether this process serves it."""
    if st.cache_dir is None:
        return None
    from proxy_addons.lists.store import SnapshotStore

    record = SnapshotStore(st.cache_dir).read_record()
    if record is None:
        return None
    doc = record.as_dict()
    doc.pop("inputs", None)
    served = engine.block.path if engine is not None else None
    doc["serving"] = served is not None and served.name == record.snapshot
    return doc


async def status(request: web.Request) -> web.Response:
    st = request.app[STATE]
    now = st.clock()
    engine = st.engine()
    addr = st.proxy_address()
    refresh = st.refresh_status() if st.refresh_status is not None else None
    health = st.snapshot_health() if st.snapshot_health is not None else None
    return _json(
        {
            "version": st.version,
            "started_at": rfc3339(st.started_at),
            "uptime_seconds": round(now - st.started_at, 1),
            "ready": engine is not None,
            "proxy": f"{addr[0] or '*'}:{addr[1]}" if addr else None,
            "snapshot": snapshot_info(engine, now) if engine is not None else None,
            "snapshot_health": health.as_dict(now) if health is not None else None,
            "lists": lists_info(engine, st.lists() if st.lists is not None else None),
            "in_force": in_force_info(st, engine),
            "refresh": refresh,
            "refresh_available": st.refresh_trigger is not None,
            "events": st.events.totals(),
        }
    )


async def lists(request: web.Request) -> web.Response:
    st = request.app[STATE]
    engine = st.engine()
    refresh = st.refresh_status() if st.refresh_status is not None else None
    return _json(
        {
            "in_force": in_force_info(st, engine),
            "lists": lists_info(engine, st.lists() if st.lists is not None else None),
            "sources": refresh.get("sources") if isinstance(refresh, dict) else None,
        }
    )


async def release_holds(request: web.Request) -> web.Response:
    """Stop holding sources a rollback holds: ``?name=`` (repeatable) or ``?all=1``."""
    st = request.app[STATE]
    if st.cache_dir is None:
        return _json({"error": "no snapshot store in this process"}, status=501)
    from proxy_addons.lists.store import SnapshotStore, StoreWriteError
    from proxy_addons.refresh.refresher import release_holds

    names = request.query.getall("name", [])
    everything = request.query.get("all") in ("1", "true")
    if not names and not everything:
        return _bad_request("name the sources to release (?name=, repeatable) or give ?all=1")
    store = SnapshotStore(st.cache_dir)
    record = await asyncio.to_thread(store.read_record)
    held = set(record.holds) if record is not None else set()
    unknown = sorted(set(names) - held)
    if unknown:
        return _json({"error": f"not held: {', '.join(unknown)}", "held": sorted(held)}, status=404)
    try:
        gone = await asyncio.to_thread(release_holds, st.cache_dir, None if everything else names)
    except StoreWriteError as exc:
        return _json({"error": str(exc)}, status=507)
    return _json({"released": [h.name for h in gone]})


async def check(request: web.Request) -> web.Response:
    name = request.query.get("name")
    if name is not None:
        return _check_name(request, name.strip())
    url = request.query.get("url")
    if url is None or not url.strip():
        return _bad_request("give the URL to check as ?url= (or a DNS name as ?name=)")
    url = url.strip()
    if len(url) > MAX_CHECK_URL:
        return _bad_request(f"url is longer than {MAX_CHECK_URL} characters")
    if not url.isprintable():
        return _bad_request("url contains control characters")
    engine = request.app[STATE].engine()
    if engine is None:
        return _json({"error": "no compiled index loaded yet"}, status=503)
    return _json(engine.check_url(url).as_dict())


def _check_name(request: web.Request, name: str) -> web.Response:
    """What DNS mode answers for a bare name: whole-host rules only."""
    if not name or len(name) > MAX_CHECK_URL or not name.isprintable():
        return _bad_request("give a host name or address as ?name=")
    engine = request.app[STATE].engine()
    if engine is None:
        return _json({"error": "no compiled index loaded yet"}, status=503)
    return _json({**engine.check_host(name).as_dict(), "dns": True})


async def refresh(request: web.Request) -> web.Response:
    trigger = request.app[STATE].refresh_trigger
    started = trigger() if trigger is not None else None
    if inspect.isawaitable(started):
        try:
            started = await asyncio.wait_for(started, REFRESH_TRIGGER_TIMEOUT)
        except TimeoutError:
            return _json({"error": "the refresher did not answer in time"}, status=504)
    if started is None:
        return _json({"error": "no refresher in this process"}, status=501)
    if not started:
        return _json({"status": "running", "error": "a refresh is already running"}, status=409)
    body: dict[str, Any] = {"status": "started"}
    st = request.app[STATE]
    plan = fetch_plan(st.refresh_status() if st.refresh_status is not None else None)
    if plan:
        # Feeds are fetched one by one, never sooner than their min_interval or a
        # server's Retry-After: say when each may be.
        body["sources"] = plan
    return _json(body, status=202)


def fetch_plan(status: Any) -> dict[str, dict[str, Any]]:
    """Per URL source: being fetched now, or when its next fetch is allowed (None: now)."""
    docs = status.get("sources") if isinstance(status, dict) else status
    plan: dict[str, dict[str, Any]] = {}
    for doc in docs if isinstance(docs, list) else []:
        if isinstance(doc, dict) and "next_fetch_allowed" in doc:
            when = doc["next_fetch_allowed"]
            allowed = when if isinstance(when, int | float) and when > time.time() else None
            plan[str(doc.get("name"))] = {
                "fetching": bool(doc.get("fetching")),
                "next_fetch_allowed": rfc3339(allowed) if allowed else None,
                "why": doc.get("next_fetch_allowed_why") if allowed else None,
            }
    return plan


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 6:
        return None
    value = int(raw)
    return value if low <= value <= high else None


async def events(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", DEFAULT_EVENTS_LIMIT, 1, MAX_EVENTS_LIMIT)
    if limit is None:
        return _bad_request(f"limit must be a whole number from 1 to {MAX_EVENTS_LIMIT}")
    kinds = None
    raw = request.query.get("kind")
    if raw:
        kinds = raw.split(",")
        if not all(k in EVENT_KINDS for k in kinds):
            return _bad_request(f"kind must be among {', '.join(EVENT_KINDS)}")
    return _json({"events": request.app[STATE].events.recent(limit, kinds)})


async def retro(request: web.Request) -> web.Response:
    """Hosts reached before a new rule listed them, found in the last ``days`` (default 30)."""
    days = _int_param(request, "days", 30, 1, 3660)
    if days is None:
        return _bad_request("days must be a whole number from 1 to 3660")
    st = request.app[STATE]
    if st.retro_hits is None:
        return _json({"enabled": False, "hits": []})
    hits = await asyncio.to_thread(st.retro_hits, st.clock() - days * 86_400)
    return _json({"enabled": True, "hits": hits})


async def timeline(request: web.Request) -> web.Response:
    minutes = _int_param(request, "minutes", 180, 1, MAX_TIMELINE_MINUTES)
    if minutes is None:
        return _bad_request(f"minutes must be a whole number from 1 to {MAX_TIMELINE_MINUTES}")
    return _json(request.app[STATE].events.timeline(minutes))


# -- campaigns (the campaign addon) --------------------------------------------------


async def campaigns(request: web.Request) -> web.Response:
    control = request.app[STATE].campaigns
    if control is None:
        return _json({"error": "campaign detection is not loaded in this process"}, status=501)
    return _json(control.listing())


async def clear_campaign(request: web.Request) -> web.Response:
    control = request.app[STATE].campaigns
    if control is None:
        return _json({"error": "campaign detection is not loaded in this process"}, status=501)
    host = request.match_info["host"]
    if not host or len(host) > 253 or not host.isprintable():
        return _bad_request("give a host name or address")
    try:
        was_listed = await control.clear(host)
    except ValueError as exc:
        return _bad_request(f"not a host: {exc}")
    return _json({"cleared": host, "was_listed": was_listed})


_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::", "*"})


def pac_host(configured: str, request_host: str | None) -> str | None:
    """The proxy host to write in the PAC file, or None if no safe one is known.

    A wildcard listen address means "the address the client reached us at"
    (the Host header, validated: it ends up inside JavaScript).
    """
    host = configured.strip().strip("[]")
    if host in _WILDCARD_HOSTS:
        if not request_host:
            return None
        if request_host.startswith("["):
            host = request_host[1 : request_host.find("]")]
        elif request_host.count(":") == 1:
            host = request_host.rsplit(":", 1)[0]
        else:
            host = request_host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return host if _PAC_HOST_RE.fullmatch(host) else None


def pac_file(host: str, port: int) -> str:
    """A PAC file sending everything but local names and addresses through the proxy.

    An address goes DIRECT only when the host IS a loopback literal: the browser hands
    the PAC the URL's host canonicalized (``2130706433`` is ``127.0.0.1`` by then), so
    a whole-string dotted-quad test suffices, and a name such as ``127.evil.example``
    (anyone owning a domain can make one) still goes through the proxy.
    """
    proxy = f"PROXY {host}:{port}"
    return f"""\
// jectguard proxy auto-configuration
function FindProxyForURL(url, host) {{
  host = host.toLowerCase();
  if (isPlainHostName(host) ||
      host === "localhost" || dnsDomainIs(host, ".localhost") ||
      dnsDomainIs(host, ".local") ||
      host === "[::1]" || host === "::1" ||
      /^127\\.\\d{{1,3}}\\.\\d{{1,3}}\\.\\d{{1,3}}$/.test(host)) {{
    return "DIRECT";
  }}
  return "{proxy}";
}}
"""


async def proxy_pac(request: web.Request) -> web.Response:
    addr = request.app[STATE].proxy_address()
    if addr is None:
        return web.Response(status=503, text="proxy address not known yet\n")
    host = pac_host(addr[0], request.host)
    if host is None:
        return web.Response(status=503, text="proxy address not known\n")
    return web.Response(
        text=pac_file(host, addr[1]),
        content_type="application/x-ns-proxy-autoconfig",
    )


def _static(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=request.app[STATIC][name], content_type=STATIC_FILES[name], charset="utf-8"
        )

    handler.__name__ = f"static_{name.replace('.', '_')}"
    return handler


ROUTES: Final = [
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics),
    web.get("/api/status", status),
    web.get("/api/lists", lists),
    web.post("/api/holds/release", release_holds),
    web.get("/api/check", check),
    web.post("/api/refresh", refresh),
    web.get("/api/events", events),
    web.get("/api/timeline", timeline),
    web.get("/api/campaigns", campaigns),
    web.delete("/api/campaigns/{host}", clear_campaign),
    web.get("/api/retro", retro),
    web.get("/proxy.pac", proxy_pac),
    web.get("/", _static("dashboard.html")),
    web.get("/static/dashboard.css", _static("dashboard.css")),
    web.get("/static/dashboard.js", _static("dashboard.js")),
]


def create_app(state: AdminState) -> web.Application:
    """The admin application for ``state``."""
    if len(state.token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
    app = web.Application(
        middlewares=[error_middleware, host_middleware, auth_middleware],
        client_max_size=64 * 1024,
    )
    app[STATE] = state
    app[STATIC] = _load_static()
    app.add_routes(ROUTES)
    app.on_response_prepare.append(_security_headers)
    return app


__all__ = [
    "AdminHosts",
    "AdminState",
    "AdminToken",
    "CampaignControl",
    "PUBLIC_PATHS",
    "ROUTES",
    "STATE",
    "TOKEN_ENV",
    "TokenError",
    "create_app",
    "load_or_create_token",
    "pac_file",
    "lists_from_report",
    "token_matches",
]
