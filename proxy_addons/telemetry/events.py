"""The event stream: one JSON line per block, monitor hit, override, strip, held-back refresh or error.

Lines go to stdout or a file (appended, flushed per line) so a SIEM can take
them as they are; a bounded ring buffer keeps the recent ones for the admin
API, and per-minute counts feed the dashboard's chart. Human-readable
start-up and error messages are not events: they go to the log.

Pure Python: no mitmproxy, no aiohttp.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TextIO

from proxy_addons.core.canon import scalar_text
from proxy_addons.refresh.outcome import Outcome, Result

logger = logging.getLogger(__name__)

EVENT_KINDS: Final = (
    "block", "monitor", "allow-override", "strip", "refresh-held", "error", "dns-block",
    "campaign",
    "retro-hit",
)  # fmt: skip
# Enough for the dashboard's "recent events" and an operator's quick look; bounded memory.
DEFAULT_CAPACITY: Final = 1000
# The chart shows the last few hours; per-minute buckets beyond that are dropped.
DEFAULT_TIMELINE_MINUTES: Final = 6 * 60
# A field longer than this is cut (a 64 KB URL must not make a 64 KB log line).
MAX_FIELD_CHARS: Final = 2048
# Nested extra fields deeper than this are replaced (no runaway recursion on odd input).
MAX_DEPTH: Final = 4
# Keys never written, whatever a caller passes in (compared lower-case, '-' and '_' alike).
SECRET_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "token",
        "admin_token",
        "access_token",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "proceed_secret",
        "x_api_key",
        "x_auth_token",
    }
)
CORE_FIELDS: Final = (
    "time",
    "event",
    "client",
    "method",
    "url",
    "verdict",
    "list",
    "rule",
    "category",
    "request_id",
)


def rfc3339(ts: float) -> str:
    """``2025-01-01T12:00:00.123Z`` (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_secret_key(key: str) -> bool:
    return key.lower().replace("-", "_") in SECRET_KEYS


def _cut(s: str) -> str:
    s = scalar_text(s)  # a byte a client sent that was not UTF-8 would stop the line
    return s if len(s) <= MAX_FIELD_CHARS else s[:MAX_FIELD_CHARS] + "…"


def redact_url(url: str, *, drop_query: bool) -> str:
    """Remove any ``user:password@`` and, with ``drop_query``, the query and fragment."""
    scheme_end = url.find("://")
    if scheme_end != -1:
        start = scheme_end + 3
        end = len(url)
        for ch in "/?#":
            i = url.find(ch, start)
            if i != -1:
                end = min(end, i)
        at = url.rfind("@", start, end)
        if at != -1:
            url = url[:start] + url[at + 1 :]
    if drop_query:
        for ch in "?#":
            i = url.find(ch)
            if i != -1:
                url = url[:i]
    return url


def _clean(value: object, depth: int = 0) -> object:
    """A JSON-safe copy with secret keys removed and long strings cut."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _cut(value)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {
            _cut(str(k)): _clean(v, depth + 1)
            for k, v in value.items()
            if not _is_secret_key(str(k))
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    return _cut(str(value))


def open_sink(spec: str) -> tuple[TextIO | None, bool]:
    """``"-"``: stdout; ``""``: no stream; else a file opened for appending, line-buffered.

    Returns the stream and whether the caller owns it (and must close it).
    OSError propagates (the caller turns it into an option error).
    """
    if spec == "":
        return None, False
    if spec == "-":
        return sys.stdout, False
    return open(spec, "a", buffering=1, encoding="utf-8"), True  # noqa: SIM115 - owned by EventLog


class EventLog:
    """Writes events as JSON lines and remembers the recent ones.

    Thread-safe: the proxy emits from its event loop, a refresher may emit from
    a worker thread.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        timeline_minutes: int = DEFAULT_TIMELINE_MINUTES,
        drop_query: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or timeline_minutes < 1:
            raise ValueError("capacity and timeline_minutes must be at least 1")
        self.drop_query = drop_query
        self.timeline_minutes = timeline_minutes
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: collections.deque[dict[str, object]] = collections.deque(maxlen=capacity)
        # minute number (epoch seconds // 60) -> event kind -> count
        self._minutes: dict[int, collections.Counter[str]] = {}
        self._totals: collections.Counter[str] = collections.Counter()
        self._pruned_at = -1
        self._sink: TextIO | None = None
        self._owns_sink = False
        self._write_failed = False

    # -- the stream ---------------------------------------------------------

    def set_sink(self, sink: TextIO | None, *, owned: bool = False) -> None:
        """Write to ``sink`` from now on (closing a previous stream this log owned)."""
        with self._lock:
            old, old_owned = self._sink, self._owns_sink
            self._sink, self._owns_sink, self._write_failed = sink, owned, False
        if old is not None and old_owned and old is not sink:
            old.close()

    def close(self) -> None:
        self.set_sink(None)

    # -- events -------------------------------------------------------------

    def emit(
        self,
        event: str,
        *,
        client: str | None = None,
        method: str | None = None,
        url: str | None = None,
        verdict: str | None = None,
        list: str | None = None,  # shadows the builtin: it is the field's name in the stream
        rule: str | None = None,
        category: str | None = None,
        request_id: str | None = None,
        **extra: object,
    ) -> dict[str, object]:
        """Record one event; returns the record as written (secrets removed)."""
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event!r}")
        now = self._clock()
        record: dict[str, object] = {
            "time": rfc3339(now),
            "event": event,
            "client": client,
            "method": method,
            "url": _cut(redact_url(url, drop_query=self.drop_query)) if url else url,
            "verdict": verdict,
            "list": list,
            "rule": rule,
            "category": category,
            "request_id": request_id,
        }
        for key, value in extra.items():
            if key in record or _is_secret_key(key):
                continue
            if isinstance(value, str) and key.endswith("url"):
                value = redact_url(value, drop_query=self.drop_query)
            record[key] = _clean(value)
        for key in ("client", "method", "verdict", "list", "rule", "category", "request_id"):
            v = record[key]
            if isinstance(v, str):
                record[key] = _cut(v)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        minute = int(now // 60)
        with self._lock:
            self._recent.append(record)
            self._totals[event] += 1
            self._minutes.setdefault(minute, collections.Counter())[event] += 1
            self._prune(minute)
            sink = self._sink
            if sink is not None:
                try:
                    sink.write(line + "\n")
                    sink.flush()
                except (OSError, ValueError) as exc:
                    if not self._write_failed:  # say it once, not once per event
                        self._write_failed = True
                        logger.warning("jectguard: cannot write the event stream: %s", exc)
        return record

    def _prune(self, minute: int) -> None:
        if minute == self._pruned_at:
            return  # once per minute is enough
        self._pruned_at = minute
        oldest = minute - self.timeline_minutes
        for m in [m for m in self._minutes if m <= oldest]:
            del self._minutes[m]

    # -- reading ------------------------------------------------------------

    def recent(
        self, limit: int = 100, kinds: Iterable[str] | None = None
    ) -> list[dict[str, object]]:
        """The most recent events, newest first."""
        wanted = frozenset(kinds) if kinds is not None else None
        out: list[dict[str, object]] = []
        with self._lock:
            for record in reversed(self._recent):
                if len(out) >= limit:
                    break
                if wanted is None or record["event"] in wanted:
                    out.append(dict(record))
        return out

    def totals(self) -> dict[str, int]:
        """Events of each kind since start."""
        with self._lock:
            return {kind: self._totals.get(kind, 0) for kind in EVENT_KINDS}

    def timeline(self, minutes: int | None = None) -> dict[str, Any]:
        """Per-minute counts of each kind over the last ``minutes``, oldest first.

        ``{"start": <epoch seconds of the first minute>, "step": 60,
        "series": {"block": [...], "strip": [...], ...}}``; every series has
        one number per minute, the current minute last.
        """
        span = min(minutes or self.timeline_minutes, self.timeline_minutes)
        now_minute = int(self._clock() // 60)
        first = now_minute - span + 1
        series = {kind: [0] * span for kind in EVENT_KINDS}
        with self._lock:
            for minute, counts in self._minutes.items():
                if first <= minute <= now_minute:
                    for kind, n in counts.items():
                        series[kind][minute - first] += n
        return {"start": first * 60, "step": 60, "series": series}


class RefreshCounter(Protocol):
    def record_refresh(self, source: str, result: str) -> None: ...


def report_refresh(
    events: EventLog | None,
    metrics: RefreshCounter | None,
    source: str,
    result: str,
    reason: str | None = None,
    *,
    entries: int | None = None,
) -> None:
    """What the refresher calls after each source: count it; a held-back or failed one is an event.

    ``result`` is ``success``, ``failure`` or ``held_back`` (:class:`~proxy_addons.refresh.outcome.Result`).
    """
    if metrics is not None:
        metrics.record_refresh(source, result)
    if events is None or result == Result.SUCCESS:
        return
    kind = "refresh-held" if result == Result.HELD_BACK else "error"
    events.emit(kind, list=source, source=source, reason=reason, result=result, entries=entries)


def report_refresh_outcomes(
    events: EventLog | None, metrics: RefreshCounter | None, report: Any
) -> None:
    """Events and counts for a ``proxy_addons.refresh.refresher.RefreshReport`` (its ``on_report``)."""
    for outcome in getattr(report, "outcomes", {}).values():
        result = Outcome(outcome.status).result
        if result is not None:
            report_refresh(
                events, metrics, outcome.name, result, outcome.detail, entries=outcome.entries
            )
    not_published = getattr(report, "not_published", None)
    if not_published and events is not None:
        events.emit("error", reason=f"snapshot not published: {not_published}")
    repaired = getattr(report, "repaired", None)
    if repaired and events is not None:
        events.emit("error", reason=f"snapshot repaired: {repaired}")


__all__ = [
    "report_refresh",
    "report_refresh_outcomes",
    "CORE_FIELDS",
    "DEFAULT_CAPACITY",
    "EVENT_KINDS",
    "EventLog",
    "open_sink",
    "redact_url",
    "rfc3339",
]
