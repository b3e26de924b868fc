"""The ledger addon: records who reached which host, and hunts back when new rules arrive.

Every request the proxy handles (allowed or not: HTTP requests, CONNECT
targets, SNI names, the resolved server address) adds one sighting to an
in-memory batch on the event loop (one dict update); a task writes the batch
to the ledger from a worker thread every ``FLUSH_SECONDS`` (sooner when it
holds ``FLUSH_KEYS`` keys). When the engine in force is swapped, the hosts in
the ledger are matched against the rules the new snapshot adds, in a thread;
each new hit is stored, written as a ``retro-hit`` event and counted.

The user is the name mitmproxy's ``proxyauth`` stored on the flow
(``flow.metadata["proxyauth"] = (user, password)``); the password is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import server_hooks

from proxy_addons.core.engine import Engine
from proxy_addons.core.retro import retro_matches
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.ledger import (
    DEFAULT_DAYS,
    FLUSH_KEYS,
    FLUSH_SECONDS,
    PRUNE_SECONDS,
    Ledger,
    LedgerError,
    RetroHit,
    SightingBatch,
    hit_rows,
    ledger_target,
)
from proxy_addons.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

HUNT_CHOICES: Final = ("auto", "on", "off")
# How long done() waits for the last flush.
STOP_TIMEOUT: Final = 5.0


def flow_user(flow: http.HTTPFlow) -> str | None:
    """The user mitmproxy's proxyauth authenticated for this flow (never the password)."""
    auth = flow.metadata.get("proxyauth")
    if isinstance(auth, tuple | list) and auth and isinstance(auth[0], str):
        user = auth[0]
        # shown in terminals and tables: control characters are escaped, never passed on
        return user if user.isprintable() else user.encode("unicode_escape").decode("ascii")
    return None


def _peer(conn: connection.Connection | None) -> str | None:
    peer = conn.peername if conn is not None else None
    return str(peer[0]) if peer else None


def _host(name: str | None) -> str | None:
    """The host as recorded; None for no name or one no DNS name or address can be (a
    client picks SNI and Host: control characters would reach a terminal via ``hunt``)."""
    if not name or not name.isprintable() or " " in name:
        return None
    return name.strip("[]").rstrip(".").lower() or None


class LedgerAddon:
    name = "jectguard_ledger"

    def __init__(
        self, holder: EngineHolder, events: EventLog, metrics: Metrics,
        *, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.holder = holder
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.batch = SightingBatch()
        self.ledger: Ledger | None = None
        self.days = DEFAULT_DAYS
        self.hunt = True
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._base: Engine | None = None  # the engine last hunted against
        self._pending = False
        # client connection id -> (CONNECT host, user): SNI and server addresses in a
        # tunnel belong to the user who opened it.
        self._conns: dict[str, tuple[str | None, str | None]] = {}
        self._last_prune = 0.0
        self._target = ""
        self._down = False
        holder.on_swap.append(self._swapped)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_ledger",
            bool,
            True,
            "jectguard: keep the sightings ledger (who reached which host, per day; hosts "
            "only) for retro-hunts. Personal data: see docs/retrohunt.md.",
        )
        loader.add_option(
            "jg_ledger_days",
            int,
            DEFAULT_DAYS,
            "jectguard: days of sightings the ledger keeps.",
        )
        loader.add_option(
            "jg_ledger_url",
            str,
            "",
            "jectguard: the ledger database: empty for SQLite in the cache directory, or "
            "postgresql://... shared by every replica.",
        )
        loader.add_option(
            "jg_ledger_hunt",
            str,
            "auto",
            "jectguard: look newly listed hosts up in the ledger when a snapshot comes into "
            "force: 'auto' does unless this is a watch-role replica of a shared PostgreSQL "
            "ledger (the refresher hunts for all).",
            choices=HUNT_CHOICES,
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "jg_ledger_days" in updated and o.jg_ledger_days < 1:
            raise exceptions.OptionsError(
                f"jg_ledger_days: must be 1 or more, got {o.jg_ledger_days}"
            )
        url = o.jg_ledger_url
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise exceptions.OptionsError(
                "jg_ledger_url: must be empty (SQLite) or a postgresql:// URL"
            )
        self.days = o.jg_ledger_days
        role = getattr(o, "jg_refresh_role", "off")
        self.hunt = o.jg_ledger_hunt == "on" or (
            o.jg_ledger_hunt == "auto" and not (url and role == "watch")
        )
        if not o.jg_ledger:
            target = ""
        else:
            cache_opt = getattr(o, "jg_cache_dir", "")  # the refresh addon's option
            cache = cache_dir_from(cache_opt)
            target = ledger_target(url, cache)
        if target != self._target:
            self._target = target
            old, self.ledger = self.ledger, None
            if old is not None:
                old.close()
            # SQLite is a local file: opened now, so a bad path is reported at start. A
            # database server is reached from the background task (never the event loop).
            # Either is retried while it cannot be had: the ledger is an audit record, not
            # the block path, so a read-only cache volume or a database outage never stops
            # the proxy (a WARNING says so; the batch keeps, bounded, what it can).
            self._down = False
            if target and not url:
                try:
                    self.ledger = Ledger(target)
                except LedgerError as exc:
                    log.warning("jectguard: ledger: %s (retrying; sightings are held)", exc)
                    self._down = True

    # -- sightings (the event loop's cost: a dict update each) -----------------

    def _see(self, host: str | None, client: str | None, user: str | None) -> None:
        if not self._target or host is None:
            return
        self.batch.add(host, client, user, self.clock())
        if len(self.batch) >= FLUSH_KEYS:
            self._wake.set()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._target or (flow.response is not None and flow.response.status_code == 407):
            return  # off, or not authenticated: the proxy went nowhere
        host, user = _host(flow.request.host), flow_user(flow)
        self._conns[flow.client_conn.id] = (host, user)
        self._see(host, _peer(flow.client_conn), user)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self._target or (flow.response is not None and flow.response.status_code == 407):
            return
        user = flow_user(flow)
        if user is not None and flow.client_conn.id not in self._conns:
            # the server connection that follows (plain HTTP: no CONNECT) is this user's
            self._conns[flow.client_conn.id] = (None, user)
        self._see(_host(flow.request.host), _peer(flow.client_conn), user)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        sni = _host(data.client_hello.sni)
        client = data.context.client
        host, user = self._conns.get(client.id, (None, None))
        if sni is not None and sni != host:  # the CONNECT target was counted already
            self._see(sni, _peer(client), user)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        addr = _peer(data.server)
        if addr is not None:
            self._see(
                _host(addr), _peer(data.client), self._conns.get(data.client.id, (None, None))[1]
            )

    def client_disconnected(self, client: connection.Client) -> None:
        self._conns.pop(client.id, None)

    # -- snapshots ------------------------------------------------------------

    def _swapped(self, old: Engine, new: Engine) -> None:
        if not self.hunt or not self._target:
            return
        if self._base is None:
            self._base = old  # kept alive (not closed) until the hunt has read it
        self._pending = True
        self._wake.set()

    # -- the background task --------------------------------------------------

    async def running(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="jectguard-ledger")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            self._wake.clear()
            try:
                if self.ledger is None and self._target:
                    await self._connect()
                await self.flush()
                if self._pending:
                    await self.retro_hunt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bad flush must not end the ledger for good
                log.warning("jectguard: ledger: %s: %s", type(exc).__name__, exc)
                ledger = self.ledger
                if ledger is not None and ledger.postgres:  # reconnect on the next round
                    self.ledger = None
                    with contextlib.suppress(Exception):
                        ledger.close()

    async def _connect(self) -> None:
        target = self._target
        try:
            ledger = await asyncio.to_thread(Ledger, target)
        except LedgerError as exc:
            if not self._down:  # once per outage, not every round
                log.warning("jectguard: ledger: %s (retrying; sightings are held)", exc)
            self._down = True
            return
        if target != self._target:  # reconfigured meanwhile
            ledger.close()
            return
        if self._down:
            log.info("jectguard: ledger: connected again")
        self.ledger, self._down = ledger, False

    async def flush(self) -> None:
        """Write the batch from a thread; prune old days at most hourly."""
        if self.batch.dropped:
            log.warning("jectguard: ledger: %d sightings dropped (batch full)", self.batch.dropped)
            self.metrics.record_error("ledger-dropped")
            self.batch.dropped = 0
        ledger = self.ledger
        if ledger is None:
            if not self._target:
                self.batch.take()
            return
        rows = self.batch.take()
        if rows:
            try:
                await asyncio.to_thread(ledger.write, rows)
            except BaseException:
                self.batch.restore(rows)  # written next time (what fits)
                raise
        now = self.clock()
        if now - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = now
            await asyncio.to_thread(ledger.prune, self.days, now)

    async def retro_hunt(self) -> list[RetroHit]:
        """Match the ledger's hosts against the rules added since the last hunt."""
        ledger, base, new = self.ledger, self._base, self.holder.engine
        if ledger is None:
            return []  # hunted once the ledger is back
        self._pending, self._base = False, None
        if base is None or base.block is new.block:
            return []
        now = self.clock()
        hits = await asyncio.to_thread(_hunt, ledger, base, new, now)
        for hit in hits:
            self.metrics.record_retro_hit(hit.list, hit.category)
            doc = hit.as_dict()
            self.events.emit(
                "retro-hit", list=hit.list, rule=hit.rule, category=hit.category,
                host=hit.host, kind=hit.kind, mode=hit.mode, found_at=doc["found_at"],
                clients=doc["clients"], users=doc["users"],
            )  # fmt: skip
        if hits:
            log.info("jectguard: retro-hunt: %d host(s) reached before they were listed", len(hits))
        return hits

    async def done(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), STOP_TIMEOUT)
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
            self._target = ""

    def recent_hits(self, since: float) -> list[dict[str, object]]:
        """For the admin API (call from a thread)."""
        return [] if self.ledger is None else [h.as_dict() for h in self.ledger.hits(since)]


def _hunt(ledger: Ledger, old: Engine, new: Engine, now: float) -> list[RetroHit]:
    """Worker-thread half of the retro-hunt: match, store, and read who reached each new hit."""
    matches = retro_matches(old, new, ledger.hosts())
    if not matches:
        return []
    fresh = ledger.record_hits(hit_rows(matches), now)
    out = []
    for i in fresh:
        m = matches[i]
        out.append(
            RetroHit(
                m.host,
                m.match.rule,
                m.match.list,
                m.match.category,
                m.match.kind.label,
                m.match.mode.value,
                now,
                tuple(ledger.sightings(m.host, before=now)),
            )  # fmt: skip
        )
    return out


__all__ = ["LedgerAddon", "flow_user"]
