"""The campaign detector's own process: page views in, findings out.

The proxy's event loop only puts a :class:`PageView` (the raw body, cut at a
cap, still content-encoded) on a bounded queue and never waits; this process
decodes it (``core.codings.decode_body``, bounded like the stripper's), reads
its references and feeds the detector. Findings go back on a second queue as
``CampaignFinding.as_dict()``; clearances and the stop come on a third.

The detector's state is written as JSON to ``state_path`` every
``save_every`` seconds and at the stop, and read back at start: a restart
keeps the baseline and the hosts being watched. A file that does not load is
set aside (``.bad``) and the detector starts afresh, with a note.

At the stop, the pages still queued are read first, and the findings they raise are
sent before the process ends (the proxy reads them in its ``done``). The process ends
on its own when the proxy that started it is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from proxy_addons.core.campaign import (
    DEFAULT_MAX_HOSTS,
    DEFAULT_MIN_SITES,
    DEFAULT_WARMUP_SECONDS,
    DEFAULT_WARMUP_VIEWS,
    DEFAULT_WINDOW,
    MAX_PAGE_BYTES,
    CampaignDetector,
    references,
)

log = logging.getLogger(__name__)

# How long one wait for a page view lasts before the control queue and the clock
# are looked at again.
POLL_SECONDS: Final = 0.25
# The longest a state file may be (200 000 hosts with their sites fit easily).
MAX_STATE_BYTES: Final = 512 * 1024 * 1024
# The detector's niceness: last in the CPU queue, behind the proxy and its scan workers
# (nice +10). It reads what pages were served, for the lists of later requests: nothing
# waits for it. Measured: at nice 0 it took ~30% of a CPU beside the scan worker of a
# 5 MB page on 2 CPUs, and the page's scan waited for it. A full queue drops pages
# (counted in the metrics) rather than slowing the proxy.
NICENESS: Final = 19


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's tuning (the ``jg_campaign_*`` options)."""

    window: float = DEFAULT_WINDOW
    min_sites: int = DEFAULT_MIN_SITES
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS
    warmup_views: int = DEFAULT_WARMUP_VIEWS
    max_hosts: int = DEFAULT_MAX_HOSTS

    def detector(self, state: object = None) -> CampaignDetector:
        if state is None:
            return CampaignDetector(**asdict(self))
        return CampaignDetector.from_state(state, **asdict(self))


@dataclass(frozen=True, slots=True)
class PageView:
    """One HTML page the proxy served, as the event loop hands it over."""

    time: float
    client: str
    url: str
    content_type: str | None
    content_encoding: str
    body: bytes  # raw (still content-encoded), at most the cap


@dataclass(frozen=True, slots=True)
class Clear:
    """An operator cleared ``host`` at ``time``."""

    host: str
    time: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Save the state and end."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something the proxy should log (the worker has no log of its own to show)."""

    text: str


@dataclass(frozen=True, slots=True)
class Found:
    """A finding, as ``CampaignFinding.as_dict()``."""

    finding: dict[str, Any]


def load_detector(
    settings: DetectorSettings, path: Path | None
) -> tuple[CampaignDetector, str | None]:
    """The detector from ``path`` (or a fresh one) and a note when the file was set aside."""
    if path is None:
        return settings.detector(), None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return settings.detector(), None
    except OSError as exc:
        return settings.detector(), f"campaign state {path} not read: {exc.strerror or exc}"
    try:
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        return settings.detector(json.loads(data)), None
    except (ValueError, TypeError, RecursionError) as exc:
        bad = path.with_name(path.name + ".bad")
        with contextlib.suppress(OSError):
            os.replace(path, bad)
        return settings.detector(), f"campaign state {path} set aside as {bad.name}: {exc}"


def save_detector(det: CampaignDetector, path: Path) -> None:
    from proxy_addons.lists.campaign import write_json_atomic

    write_json_atomic(path, det.to_state())


def observe_view(det: CampaignDetector, view: PageView) -> list[dict[str, Any]]:
    """Decode one page view and feed it to the detector; the findings it raised."""
    from proxy_addons.core.codings import UndecodableBody, decode_body
    from proxy_addons.core.htmlscan import BodyTooLarge

    try:
        body = decode_body(view.body, view.content_encoding, MAX_PAGE_BYTES)
    except (BodyTooLarge, UndecodableBody):
        return []
    refs = references(body, view.content_type, view.url)
    return [
        {**f.as_dict(), "clients": f.clients}
        for f in det.observe(view.time, view.url, refs, view.client or None)
    ]


def serve(
    views: Any,
    control: Any,
    out: Any,
    settings: DetectorSettings,
    state_path: str | None,
    save_every: float,
    parent_pid: int,
) -> None:
    """The process's main loop (a ``multiprocessing`` target)."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS - os.nice(0))
    # Imported now, not on the first page (the decoders, and the scanner's limit error).
    from proxy_addons.core import codings, htmlscan  # noqa: F401

    path = Path(state_path) if state_path else None
    lock = _lock_state(path) if path is not None else None
    if path is not None and lock is None:
        out.put(Note(f"another proxy process keeps the campaign state in {path}; this "
                     "one keeps its own in memory only"))  # fmt: skip
        path = None
    try:
        _serve(views, control, out, settings, path, save_every, parent_pid)
    finally:
        if lock is not None:
            lock.close()


def _serve(
    views: Any,
    control: Any,
    out: Any,
    settings: DetectorSettings,
    path: Path | None,
    save_every: float,
    parent_pid: int,
) -> None:
    det, note = load_detector(settings, path)
    if note:
        out.put(Note(note))
    last_save = time.monotonic()
    dirty = False
    while True:
        stop = False
        while True:
            try:
                msg = control.get_nowait()
            except queue.Empty:
                break
            if isinstance(msg, Clear):
                det.clear(msg.host, msg.time)
                dirty = True
            elif isinstance(msg, Stop):
                stop = True
        if stop or os.getppid() != parent_pid:
            break
        try:
            view = views.get(timeout=POLL_SECONDS)
        except queue.Empty:
            view = None
        if isinstance(view, PageView):
            try:
                for finding in observe_view(det, view):
                    out.put(Found(finding))
            except Exception as exc:  # one odd page must not end detection
                out.put(Note(f"campaign detector skipped {view.url[:200]}: "
                             f"{type(exc).__name__}: {exc}"))  # fmt: skip
            dirty = True
        if path is not None and dirty and time.monotonic() - last_save >= save_every:
            _save(det, path, out)
            last_save, dirty = time.monotonic(), False
    # The pages already queued are read before the state is saved (the queue is bounded:
    # this ends); their findings go out too, and the proxy reads them before it ends.
    while True:
        try:
            view = views.get_nowait()
        except (queue.Empty, OSError, ValueError):
            break
        if isinstance(view, PageView):
            with contextlib.suppress(Exception):
                for finding in observe_view(det, view):
                    out.put(Found(finding))
    if path is not None:
        _save(det, path, out)


def _lock_state(path: Path) -> IO[str] | None:
    """Take the state file for this loop: the open lock file (closing it, or the process
    ending however it ends, lets it go), or None when another process holds it."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held on purpose
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _save(det: CampaignDetector, path: Path, out: Any) -> None:
    try:
        save_detector(det, path)
    except OSError as exc:
        out.put(Note(f"campaign state not saved to {path}: {exc.strerror or exc}"))


__all__ = ["Clear", "DetectorSettings", "Found", "Note", "PageView", "Stop", "serve"]
