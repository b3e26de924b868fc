"""The refresh addon: keeps the engine current in the background, without restarts.

``jg_refresh_role``:

- ``refresh``: this process fetches the feeds on their schedule, publishes
  snapshots and swaps its engine (one per deployment);
- ``watch``: this process only follows the snapshots another process
  publishes (every other proxy process of a multi-process deployment);
- ``off``: the engine stays as started (tests, ``--blocklist`` files).

The work runs as one owned task started in ``running()`` and cancelled in
``done()``; the logic lives in :mod:`proxy_addons.refresh.refresher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from mitmproxy import ctx, exceptions

from proxy_addons.core.errors import SourceConfigError
from proxy_addons.lists.health import SnapshotEvent
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.lists.layout import cache_dir_from
from proxy_addons.lists.sources import SourcesConfig, load_sources
from proxy_addons.refresh.refresher import Refresher, RefreshReport, watch_snapshot

log = logging.getLogger(__name__)

ROLES: Final = ("refresh", "watch", "off")
# How long done() waits for the task to clean up (a worker process is killed).
STOP_TIMEOUT: Final = 5.0


class Refresh:
    name = "jectguard_refresh"

    def __init__(
        self,
        holder: EngineHolder,
        on_report: Callable[[RefreshReport], None] | None = None,
        on_snapshot_event: Callable[[SnapshotEvent], object] | None = None,
    ) -> None:
        self.holder = holder
        self.on_report = on_report
        self.on_snapshot_event = on_snapshot_event
        self.task: asyncio.Task[None] | None = None
        self.refresher: Refresher | None = None
        self._settings: tuple[str, SourcesConfig, Path] | None = None
        self._running = False

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_refresh_role",
            str,
            "off",
            "jectguard: 'refresh' fetches feeds on their schedule and publishes snapshots; "
            "'watch' follows the snapshots another process publishes; 'off' keeps the lists "
            "as started.",
            choices=ROLES,
        )
        loader.add_option(
            "jg_sources",
            str,
            "",
            "jectguard: the sources file (empty: the shipped blocklists/sources.toml).",
        )
        loader.add_option(
            "jg_cache_dir",
            str,
            "",
            "jectguard: where feeds and snapshots are kept (empty: $JECTGUARD_CACHE_DIR "
            "or a per-user data directory).",
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {"jg_refresh_role", "jg_sources", "jg_cache_dir"}:
            return
        o = ctx.options
        if o.jg_refresh_role not in ROLES:
            raise exceptions.OptionsError(
                f"jg_refresh_role: must be one of {', '.join(ROLES)}, got {o.jg_refresh_role!r}"
            )
        try:
            cfg = load_sources(o.jg_sources or None)
        except SourceConfigError as exc:
            raise exceptions.OptionsError(f"jg_sources: {exc}") from None
        cache = cache_dir_from(o.jg_cache_dir)
        self._settings = (o.jg_refresh_role, cfg, cache)
        if self._running:
            self._start()

    async def running(self) -> None:
        self._running = True
        self._start()

    def _start(self) -> None:
        self._cancel()
        # The cancelled refresher must not answer trigger()/status() for a later role.
        self.refresher = None
        if self._settings is None:
            return
        role, cfg, cache = self._settings
        # A factory, not a coroutine: a task cancelled before its first step must not
        # leave a never-awaited coroutine behind.
        work: Callable[[], Coroutine[Any, Any, None]]
        if role == "refresh":
            refresher = self.refresher = Refresher(
                cfg, cache, slot=self.holder, on_report=self.on_report
            )
            # The refresher owns the store: it may write a damaged snapshot back.
            follower = refresher.follower
            follower.repair = True
            follower.on_health, follower.on_event = self.holder.set_health, self.on_snapshot_event
            work = refresher.run
        elif role == "watch":
            work = functools.partial(
                watch_snapshot,
                cache,
                cfg.sources,
                self.holder,
                on_health=self.holder.set_health,
                on_event=self.on_snapshot_event,
            )
        else:
            return
        log.info("jectguard: %s role, cache %s", role, cache)
        self.task = asyncio.get_running_loop().create_task(
            self._guarded(work, role), name=f"jectguard-{role}"
        )

    @staticmethod
    async def _guarded(work: Callable[[], Coroutine[Any, Any, None]], role: str) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never ERROR: mitmproxy exits on it during start-up
            log.warning(
                "jectguard: %s stopped (%s: %s); serving the lists in force",
                role,
                type(exc).__name__,
                exc,
            )

    def _cancel(self) -> asyncio.Task[None] | None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        return task

    def trigger(self) -> bool | None:
        """For the admin API: None when this process does not refresh; else True (never
        busy: feeds are fetched independently, see Refresher.trigger)."""
        return None if self.refresher is None else self.refresher.trigger()

    def status(self) -> dict[str, Any] | None:
        return None if self.refresher is None else self.refresher.status()

    async def done(self) -> None:
        self._running = False
        task = self._cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, STOP_TIMEOUT)
