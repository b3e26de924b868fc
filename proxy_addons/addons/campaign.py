"""The campaign addon: every HTML page the proxy serves feeds the campaign detector.

The detector (``core/campaign.py``) and the page reading it needs run in one
process of their own (``addons/campaign_worker.py``): the event loop only puts the
page's raw body (cut at ``jg_campaign_max_bytes``, after the stripper has had
it) on a bounded queue and never waits; a full queue drops the page and counts
it (``jectguard_campaign_pages{result="dropped"}``). One owned task reads the
findings back and turns each into a ``campaign`` event and a metric; with
``jg_campaign_action=enforce`` the host also goes on the local ``campaign``
list (``lists/campaign.py``), which blocks and strips like any list.

The list file is polled (every ``LIST_POLL_SECONDS``): a host cleared through
``jectguard lists --clear-campaign``, the admin API or another proxy process
is unblocked here too, and its clearance reaches this process's detector.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from mitmproxy import ctx, exceptions, http

from proxy_addons.addons import campaign_worker as worker
from proxy_addons.core.campaign import (
    DAY,
    DEFAULT_MAX_HOSTS,
    DEFAULT_MIN_SITES,
    DEFAULT_WARMUP_SECONDS,
    DEFAULT_WARMUP_VIEWS,
    DEFAULT_WINDOW,
)
from proxy_addons.core.canon import scalar_text
from proxy_addons.core.charset import is_html
from proxy_addons.core.errors import CanonError
from proxy_addons.lists.campaign import (
    CATEGORY,
    LIST_NAME,
    CampaignFiles,
    CampaignList,
    CampaignListError,
    Listed,
    canonical_campaign_host,
    compile_list,
    list_version,
    read_list,
    update_list,
)
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog, rfc3339
from proxy_addons.telemetry.metrics import Metrics

from .clients import client_address
from .strip import NO_STRIP_STATUSES, html_plan

logger = logging.getLogger(__name__)

ACTIONS: Final = ("monitor", "enforce")
# Pages waiting for the detector; a burst beyond this is dropped (and counted), never
# waited for. With the body cap below, at most 64 MiB are held.
DEFAULT_QUEUE: Final = 64
# The head of a page read for references: pages are rarely bigger, and a footer written
# after </html> of a bigger page is past what the stripper's log policy shows anyway.
DEFAULT_MAX_BYTES: Final = 1024 * 1024
# How often findings are collected, the list file looked at, and the state saved (a full
# table of 200,000 hosts is ~35 MB of JSON and seconds of the worker's CPU to write).
COLLECT_SECONDS: Final = 0.2
LIST_POLL_SECONDS: Final = 2.0
DEFAULT_SAVE_SECONDS: Final = 300
# Hosts listed automatically in one hour at most: beyond, findings are reported only (a
# flood of findings is an attack on the detector, not a flood of campaigns).
MAX_LISTED_PER_HOUR: Final = 20
# Distinct clients that must meet a host before enforce mode lists it (see _held_back).
DEFAULT_ENFORCE_MIN_CLIENTS: Final = 2
# A worker that died is started again no sooner than this.
RESTART_SECONDS: Final = 30.0
STOP_TIMEOUT: Final = 5.0


class Campaign:
    """Feeds HTML pages to the campaign detector's process; reports and lists its findings."""

    name = "jectguard_campaign"

    def __init__(
        self,
        holder: EngineHolder,
        events: EventLog,
        metrics: Metrics,
        *,
        cache_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.holder = holder
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self._cache_dir = cache_dir
        self.files: CampaignFiles | None = None
        self.enabled = True
        self.action = "monitor"
        self.max_bytes = DEFAULT_MAX_BYTES
        self.settings = worker.DetectorSettings()
        self.queue_size = DEFAULT_QUEUE
        self.save_seconds: float = DEFAULT_SAVE_SECONDS
        self._proc: Any = None
        self._views: Any = None
        self._control: Any = None
        self._out: Any = None
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()
        self._running = False
        # the list file last read (False: none read yet)
        self._list_seen: tuple[int, int, int] | None | bool = False
        self._list = CampaignList()
        self._cleared_sent: dict[str, float] = {}
        self.enforce_min_clients = DEFAULT_ENFORCE_MIN_CLIENTS
        self._listed_at: collections.deque[float] = collections.deque()  # monotonic times

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_campaign",
            bool,
            True,
            "jectguard: detect injection campaigns (a new host referenced from many unrelated "
            "sites in injected positions) in the HTML pages the proxy serves.",
        )
        loader.add_option(
            "jg_campaign_action",
            str,
            "monitor",
            "jectguard: 'monitor' reports a campaign (event, dashboard); 'enforce' also puts "
            "its host on the local 'campaign' list, which blocks and strips it.",
            choices=ACTIONS,
        )
        loader.add_option(
            "jg_campaign_enforce_min_clients",
            int,
            DEFAULT_ENFORCE_MIN_CLIENTS,
            "jectguard: in enforce mode, distinct clients that must meet a flagged host before "
            "it is listed (blocked); fewer: reported only. 1 trusts every client (a single "
            "infected client could then get any new host blocked).",
        )
        loader.add_option(
            "jg_campaign_min_sites",
            int,
            DEFAULT_MIN_SITES,
            "jectguard: unrelated sites (registrable domains) that must carry a host in an "
            "injected position before it is flagged.",
        )
        loader.add_option(
            "jg_campaign_window",
            int,
            int(DEFAULT_WINDOW),
            "jectguard: seconds a host counts as new after it is first seen (and a cleared "
            "host is not flagged again).",
        )
        loader.add_option(
            "jg_campaign_warmup_seconds",
            int,
            int(DEFAULT_WARMUP_SECONDS),
            "jectguard: seconds the detector learns this deployment's baseline before any "
            "host counts as new.",
        )
        loader.add_option(
            "jg_campaign_warmup_views",
            int,
            DEFAULT_WARMUP_VIEWS,
            "jectguard: ...and at least this many page views.",
        )
        loader.add_option(
            "jg_campaign_max_hosts",
            int,
            DEFAULT_MAX_HOSTS,
            "jectguard: hosts the detector tracks (least recently seen forgotten first).",
        )
        loader.add_option(
            "jg_campaign_queue",
            int,
            DEFAULT_QUEUE,
            "jectguard: pages waiting for the detector; more are dropped (and counted).",
        )
        loader.add_option(
            "jg_campaign_max_bytes",
            int,
            DEFAULT_MAX_BYTES,
            "jectguard: bytes of each HTML page (as sent, before decoding) handed to the detector.",
        )
        loader.add_option(
            "jg_campaign_save_seconds",
            int,
            DEFAULT_SAVE_SECONDS,
            "jectguard: how often the detector's state is written to the cache directory.",
        )

    def configure(self, updated: set[str]) -> None:
        if not any(u.startswith("jg_campaign") or u == "jg_cache_dir" for u in updated):
            return
        o = ctx.options
        if o.jg_campaign_action not in ACTIONS:
            raise exceptions.OptionsError(
                f"jg_campaign_action: must be one of {', '.join(ACTIONS)}, "
                f"got {o.jg_campaign_action!r}"
            )
        checks = {
            "jg_campaign_min_sites": (2, 64),
            "jg_campaign_enforce_min_clients": (1, 16),
            "jg_campaign_window": (60, 365 * int(DAY)),
            "jg_campaign_warmup_seconds": (0, 365 * int(DAY)),
            "jg_campaign_warmup_views": (0, 10**9),
            "jg_campaign_max_hosts": (100, 10_000_000),
            "jg_campaign_queue": (1, 10_000),
            "jg_campaign_max_bytes": (1024, 64 * 1024 * 1024),
            "jg_campaign_save_seconds": (1, 86_400),
        }
        for name, (low, high) in checks.items():
            value = getattr(o, name)
            if not low <= value <= high:
                raise exceptions.OptionsError(
                    f"{name}: must be between {low} and {high}, got {value}"
                )
        settings = worker.DetectorSettings(
            window=float(o.jg_campaign_window),
            min_sites=o.jg_campaign_min_sites,
            warmup_seconds=float(o.jg_campaign_warmup_seconds),
            warmup_views=o.jg_campaign_warmup_views,
            max_hosts=o.jg_campaign_max_hosts,
        )
        files = CampaignFiles.under(self._cache_dir or _cache_dir_option())
        restart = (
            settings != self.settings
            or files != self.files
            or o.jg_campaign_queue != self.queue_size
            or o.jg_campaign_save_seconds != self.save_seconds
            or o.jg_campaign != self.enabled
        )
        self.settings, self.files = settings, files
        self.enabled = o.jg_campaign
        self.action = o.jg_campaign_action
        self.enforce_min_clients = o.jg_campaign_enforce_min_clients
        self.max_bytes = o.jg_campaign_max_bytes
        self.queue_size = o.jg_campaign_queue
        self.save_seconds = float(o.jg_campaign_save_seconds)
        if self._running and restart:
            # Stopping the process waits for it: never here, on the event loop.
            self._restart_task = asyncio.get_running_loop().create_task(
                self._restart(), name="jectguard-campaign-restart"
            )

    async def _restart(self) -> None:
        """The worker again with the settings now in force (its state carries over).

        One restart at a time: two quick option changes must not leave two workers."""
        async with self._restart_lock:
            await asyncio.to_thread(self._stop_worker, close=False)
            await self._collect()
            self._close_queues()
            self._list_seen = False
            if self.enabled and self._running:
                self._start_worker()

    # -- lifetime -----------------------------------------------------------

    async def running(self) -> None:
        if self._running:
            return
        if self.files is None:  # no option changed since load: configure() never ran
            self.configure({"jg_campaign"})
        self._running = True
        if self.enabled:
            self._start_worker()
        await self._sync_list()  # a host listed before a restart is blocked from the start
        self._task = asyncio.get_running_loop().create_task(
            self._collect_forever(), name="jectguard-campaign"
        )

    async def done(self) -> None:
        self._running = False
        restart, self._restart_task = self._restart_task, None
        if restart is not None:
            with contextlib.suppress(Exception):
                await restart
        async with self._restart_lock:  # an earlier restart still running
            pass
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._stop_worker, close=False)
        await self._collect()  # what the worker found while it stopped
        self._close_queues()

    def _start_worker(self) -> None:
        assert self.files is not None
        mp = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._views = mp.Queue(self.queue_size)
        self._control, self._out = mp.Queue(), mp.Queue()
        self._proc = mp.Process(
            target=worker.serve,
            args=(self._views, self._control, self._out, self.settings,
                  str(self.files.state_path), self.save_seconds, os.getpid()),
            name="jectguard-campaign", daemon=True,
        )  # fmt: skip
        self.files.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._proc.start()
        self._started_at = time.monotonic()
        self._cleared_sent = {}  # the new process hears every clearance again
        logger.info("jectguard: campaign detector started (pid %s)", self._proc.pid)

    def _stop_worker(self, *, close: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                self._control.put(worker.Stop())
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.terminate()
                proc.join(STOP_TIMEOUT)
        if close:
            self._close_queues()

    def _close_queues(self) -> None:
        for q in (self._views, self._control, self._out):
            if q is None:
                continue
            with contextlib.suppress(Exception):
                q.cancel_join_thread()  # pages still queued are not worth a hang
                q.close()
        self._views = self._control = self._out = None

    # -- the hook -------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if (
            not self.enabled or self._views is None or resp is None or flow.error
            or not flow.live or resp.stream or resp.status_code in NO_STRIP_STATUSES
            or flow.request.method == "HEAD"
        ):  # fmt: skip
            return
        if html_plan(resp.headers) is None:
            return
        raw = resp.raw_content
        if not raw:
            return
        content_type = resp.headers.get("content-type")
        content_encoding = resp.headers.get("content-encoding", "")
        if not content_encoding.strip(", \t") and not is_html(raw, content_type):
            # The stripper's first decision, on the bytes as sent: a text/plain or
            # unlabelled body that does not sniff as HTML is shown as text, so it
            # references nothing. Not queued: the queue costs the event loop ~50 us
            # of CPU a page (pickling, the feeder thread) and the detector its parse.
            return
        view = worker.PageView(
            time=self.clock(),
            client=_client_of(flow),
            url=scalar_text(flow.request.pretty_url),
            content_type=content_type,
            content_encoding=content_encoding,
            body=raw[: self.max_bytes],
        )
        try:
            self._views.put_nowait(view)
        except queue.Full:
            self.metrics.record_campaign_page("dropped")
            return
        self.metrics.record_campaign_page("queued")

    # -- findings, the list ------------------------------------------------------

    async def _collect_forever(self) -> None:
        next_list = 0.0
        while True:
            try:
                await self._collect()
                if time.monotonic() >= next_list:
                    next_list = time.monotonic() + LIST_POLL_SECONDS
                    await self._sync_list()
                    self._check_worker()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never end detection for the process lifetime
                logger.warning("jectguard: campaign collection failed: %s: %s",
                               type(exc).__name__, exc)  # fmt: skip
            await asyncio.sleep(COLLECT_SECONDS)

    async def _collect(self) -> None:
        while self._out is not None:
            try:
                msg = self._out.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError, ValueError):
                return  # the worker died mid-message: _check_worker starts a new one
            if isinstance(msg, worker.Note):
                logger.warning("jectguard: %s", msg.text)
            elif isinstance(msg, worker.Found):
                await self.report(msg.finding)

    async def report(self, finding: dict[str, Any]) -> None:
        """One finding: an event and a metric; in enforce mode, the host goes on the list."""
        try:
            entry = Listed.from_finding(finding)
        except ValueError as exc:
            logger.warning("jectguard: campaign finding ignored: %s", exc)
            return
        if entry.host in self._list.cleared and (
            entry.flagged_at - self._list.cleared[entry.host] < self.settings.window
        ):
            return  # cleared by an operator; the detector has not heard of it yet
        held = self._held_back(finding) if self.action == "enforce" else None
        enforce = self.action == "enforce" and held is None
        if enforce and self.files is not None:
            files = self.files
            await asyncio.to_thread(update_list, files, lambda lst: lst.add(entry))
            self._listed_at.append(time.monotonic())
            await self._sync_list()
        action = "enforce" if enforce else "monitor"
        self.metrics.record_campaign_finding(action)
        self.events.emit(
            "campaign",
            verdict="block" if enforce else "monitor",
            list=LIST_NAME if enforce else None,
            rule=entry.host if enforce else None,
            category=CATEGORY,
            host=entry.host,
            first_seen=rfc3339(entry.first_seen),
            flagged_at=rfc3339(entry.flagged_at),
            sites=list(entry.sites),
            pages=entry.pages,
            score=round(entry.score, 2),
            evidence=list(entry.evidence),
            clients=finding.get("clients"),
            action=action,
            held_back=held,
        )
        logger.warning(
            "jectguard: campaign: %s referenced from %d unrelated sites in injected positions%s",
            entry.host,
            len(entry.sites),
            " (blocked: on the campaign list)"
            if enforce
            else f" (not listed: {held})"
            if held
            else "",
        )

    def _held_back(self, finding: dict[str, Any]) -> str | None:
        """Why an enforce-mode finding is only reported, or None to list it.

        Clients may run malware, and malware can fetch pages of its own making through
        the proxy: three cheap domains whose pages reference a host after ``</html>`` are
        enough to flag it. Listing (blocking for everyone) therefore needs the host met
        by several distinct clients, and at most MAX_LISTED_PER_HOUR hosts an hour.
        """
        clients = finding.get("clients")
        n = clients if isinstance(clients, int) and not isinstance(clients, bool) else 0
        if n < self.enforce_min_clients:
            return (f"met by {n} distinct client(s), fewer than jg_campaign_enforce_min_clients "
                    f"({self.enforce_min_clients})")  # fmt: skip
        hour_ago = time.monotonic() - 3600
        while self._listed_at and self._listed_at[0] < hour_ago:
            self._listed_at.popleft()
        if len(self._listed_at) >= MAX_LISTED_PER_HOUR:
            return f"{MAX_LISTED_PER_HOUR} hosts listed in the last hour already"
        return None

    async def _sync_list(self) -> None:
        """Read the list file when it changed: the block index in force, clearances to the
        detector."""
        if self.files is None:
            return
        files = self.files
        seen = await asyncio.to_thread(list_version, files)
        if seen == self._list_seen:
            return
        try:
            lst = await asyncio.to_thread(read_list, files)
        except CampaignListError as exc:
            logger.warning("jectguard: campaign list not read (the last one stays): %s", exc)
            self._list_seen = seen
            return
        index = await asyncio.to_thread(compile_list, lst)
        self._list, self._list_seen = lst, seen
        self.holder.set_extra(index)
        for host, at in lst.cleared.items():
            if self._cleared_sent.get(host) != at and self._control is not None:
                self._control.put(worker.Clear(host, at))
                self._cleared_sent[host] = at

    def _check_worker(self) -> None:
        proc = self._proc
        if proc is None or proc.is_alive():
            return
        if time.monotonic() - self._started_at < RESTART_SECONDS:
            return
        logger.warning("jectguard: campaign detector exited (%s); starting it again", proc.exitcode)
        self.metrics.record_error("campaign-worker")
        self._stop_worker()
        self._start_worker()
        self._list_seen = False

    # -- what the admin API and the dashboard call ----------------------------------

    def listing(self) -> dict[str, Any]:
        """The action, the listed hosts with their evidence, the recent findings."""
        return {
            "enabled": self.enabled,
            "action": self.action,
            "listed": [
                {
                    **e.as_dict(),
                    "first_seen": rfc3339(e.first_seen),
                    "flagged_at": rfc3339(e.flagged_at),
                }
                for e in reversed(self._list.hosts.values())
            ],  # fmt: skip
            "findings": self.events.recent(100, ["campaign"]),
            "cleared": {h: rfc3339(t) for h, t in self._list.cleared.items()},
        }

    async def clear(self, host: str) -> bool:
        """Unblock ``host`` and keep the detector from flagging it again for its window;
        True if it was listed. ValueError for a host that is not one."""
        try:
            canon = canonical_campaign_host(host)
        except CanonError as exc:
            raise ValueError(str(exc)) from None
        if self.files is None:
            raise ValueError("campaign detection is not configured")
        now = self.clock()
        files = self.files

        def change(lst: CampaignList) -> bool:
            return lst.clear(canon, now)

        was: bool = await asyncio.to_thread(update_list, files, change)
        await self._sync_list()
        return was


def _client_of(flow: http.HTTPFlow) -> str:
    """Who met the page: the proxyauth user when there is one (behind NAT or a load
    balancer, addresses are shared), else the address. Only ever counted, as a hash."""
    auth = flow.metadata.get("proxyauth")
    if isinstance(auth, tuple | list) and auth and isinstance(auth[0], str) and auth[0]:
        return "user:" + auth[0]
    return client_address(flow.client_conn)


def _cache_dir_option() -> Path:
    from proxy_addons.lists.layout import cache_dir_from

    o = ctx.options
    cache = o.jg_cache_dir if "jg_cache_dir" in o else ""
    return cache_dir_from(cache)


__all__ = ["Campaign"]
