"""Prometheus metrics in a registry of their own (never the process-global one).

The addons call the ``record_*``/``observe_*`` methods; ``/metrics`` renders
:meth:`Metrics.render`. Labels are list names, categories, sources and rule
kinds: all bounded by the configuration, never by traffic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from proxy_addons.lists.health import SnapshotFault, SnapshotHealth, SnapshotState
from proxy_addons.refresh.outcome import Result

# Labelled series remembered per process (label values are bounded by the configuration;
# past this many, ``labels()`` is asked each time instead of growing the table).
MAX_CACHED_SERIES: Final = 4096
# A verdict takes microseconds; the top buckets catch a stalled loop.
LATENCY_BUCKETS: Final = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    5e-3,
    0.025,
    0.1,
)
REFRESH_RESULTS: Final = tuple(r.value for r in Result)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
NO_LABEL: Final = "-"

# What the snapshot collector reads: the block index's metadata (``by_kind``, ``built_at``).
MetaProvider = Callable[[], Mapping[str, Any] | None]
# ... and how that snapshot relates to the store (the follower's record).
HealthProvider = Callable[[], SnapshotHealth | None]


def _verdict_fields(verdict: Any) -> tuple[str, str, str]:
    """(action, list, category) of an engine Verdict or of its ``as_dict()``."""
    if isinstance(verdict, Mapping):
        return (
            str(verdict.get("verdict") or NO_LABEL),
            str(verdict.get("list") or NO_LABEL),
            str(verdict.get("category") or NO_LABEL),
        )
    m = verdict.match
    return (
        str(getattr(verdict.action, "value", verdict.action)),
        m.list if m else NO_LABEL,
        m.category if m else NO_LABEL,
    )


class _SnapshotCollector(Collector):
    """Rules by kind and snapshot age, read from the engine in force at scrape time."""

    def __init__(self, provider: MetaProvider, clock: Callable[[], float]) -> None:
        self.provider = provider
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        meta = self.provider() or {}
        rules = GaugeMetricFamily(
            "jectguard_rules", "Block rules in force, by kind.", labels=["kind"]
        )
        by_kind = meta.get("by_kind")
        if isinstance(by_kind, Mapping):
            for kind, n in sorted(by_kind.items()):
                rules.add_metric([str(kind)], float(n))
        yield rules
        built_at = meta.get("built_at")
        if isinstance(built_at, int | float):
            yield GaugeMetricFamily(
                "jectguard_snapshot_age_seconds",
                "Seconds since the block index in force was compiled.",
                value=max(0.0, self.clock() - float(built_at)),
            )


class _HealthCollector(Collector):
    """The follower's record of the snapshot served: state, lag behind the pointer, faults."""

    def __init__(self, provider: HealthProvider, clock: Callable[[], float]) -> None:
        self.provider = provider
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        health = self.provider()
        if health is None:
            return
        state = GaugeMetricFamily(
            "jectguard_snapshot_state",
            "1 for the state of the snapshot served: current, stale (the pointer names one "
            "that does not load yet) or damaged (its published file changed or vanished).",
            labels=["state"],
        )
        for s in SnapshotState:
            state.add_metric([s.value], 1.0 if health.state is s else 0.0)
        yield state
        yield GaugeMetricFamily(
            "jectguard_snapshot_behind_seconds",
            "Seconds the pointer has named a snapshot this process does not serve (0: in sync).",
            value=health.behind_seconds(self.clock()),
        )
        faults = CounterMetricFamily(
            "jectguard_snapshot_faults",
            "Snapshot faults met by this process, by kind (load_failed, changed, missing, "
            "repaired).",
            labels=["kind"],
        )
        counts = dict(health.faults)
        for f in SnapshotFault:
            faults.add_metric([f.value], float(counts.get(f, 0)))
        yield faults


class Metrics:
    """jectguard's metrics; one instance per process, shared by the addons and the admin API."""

    def __init__(
        self, meta_provider: MetaProvider | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checked = Counter(
            "jectguard_requests_checked",
            "Requests and tunnels checked, by verdict.",
            ["verdict"],
            registry=r,
        )
        self.blocked = Counter(
            "jectguard_requests_blocked",
            "Requests and tunnels blocked, by list and category.",
            ["list", "category"],
            registry=r,
        )
        self.monitor_hits = Counter(
            "jectguard_monitor_hits",
            "Matches that would have blocked (monitor mode), by list and category.",
            ["list", "category"],
            registry=r,
        )
        self.overrides = Counter(
            "jectguard_allow_overrides",
            "Blocks overridden by an allowlist entry or a proceed-anyway grant, by list.",
            ["list", "reason"],
            registry=r,
        )
        self.stripped = Counter(
            "jectguard_elements_stripped",
            "Active elements removed from HTML responses, by list and category.",
            ["list", "category"],
            registry=r,
        )
        self.refreshes = Counter(
            "jectguard_refreshes",
            "Source refreshes by source and result (success, failure, held_back).",
            ["source", "result"],
            registry=r,
        )
        self.dns = Counter(
            "jectguard_dns_blocked",
            "DNS queries answered from the lists (block) or that would have been (monitor), "
            "by list and category.",
            ["action", "list", "category"],
            registry=r,
        )
        self.errors = Counter(
            "jectguard_errors",
            "Error events, by kind.",
            ["kind"],
            registry=r,
        )
        self.campaign_pages = Counter(
            "jectguard_campaign_pages",
            "HTML pages handed to the campaign detector (queued) or dropped because its "
            "queue was full (dropped).",
            ["result"],
            registry=r,
        )
        self.campaign_findings = Counter(
            "jectguard_campaign_findings",
            "Campaigns flagged, by action (monitor: reported; enforce: listed and blocked).",
            ["action"],
            registry=r,
        )
        self.retro_hits = Counter(
            "jectguard_retro_hits",
            "Hosts reached before a new rule listed them (retro-hunt), by list and category.",
            ["list", "category"],
            registry=r,
        )
        self.latency = Histogram(
            "jectguard_verdict_seconds",
            "Time to reach a verdict for one request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._series: dict[tuple[Counter, tuple[str, ...]], Any] = {}
        self._snapshot = _SnapshotCollector(meta_provider or (lambda: None), clock)
        r.register(self._snapshot)
        self._health = _HealthCollector(lambda: None, clock)
        r.register(self._health)
        # ``jectguard run --workers N``: prometheus_client keeps each worker's counters in
        # files of its own under this directory (it reads the variable when imported);
        # the exposition sums every worker's instead of showing this process's share.
        self._exposed = r
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._exposed = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._exposed, path=multiproc_dir)  # type: ignore[no-untyped-call]
            self._exposed.register(self._snapshot)
            self._exposed.register(self._health)

    def set_meta_provider(self, provider: MetaProvider) -> None:
        """Read rules and snapshot age from ``provider`` (the engine in force) from now on."""
        self._snapshot.provider = provider

    def set_health_provider(self, provider: HealthProvider) -> None:
        """Read the snapshot's state, lag and faults from ``provider`` from now on."""
        self._health.provider = provider

    def _labelled(self, counter: Counter, *labels: str) -> Any:
        """``counter.labels(*labels)``, remembered: every allowed request counts one.

        ``labels()`` validates and looks the series up under a lock each time (~1.5 us;
        a dict hit is ~0.05 us); it returns the same series object for the same values,
        so remembering it changes nothing but the cost.
        """
        key = (counter, labels)
        series = self._series.get(key)
        if series is None:
            series = counter.labels(*labels)
            if len(self._series) < MAX_CACHED_SERIES:
                self._series[key] = series
        return series

    # -- what the addons call -----------------------------------------------

    def observe_verdict(self, verdict: Any, seconds: float | None = None) -> None:
        """Count one checked request (a Verdict or its ``as_dict()``) and its latency."""
        action, lst, category = _verdict_fields(verdict)
        self._labelled(self.checked, action).inc()
        if action == "block":
            self._labelled(self.blocked, lst, category).inc()
        elif action == "monitor":
            self._labelled(self.monitor_hits, lst, category).inc()
        if seconds is not None and seconds >= 0:
            self.latency.observe(seconds)

    def record_checked(self, action: str) -> None:
        """Count a checked request that passed (no verdict record to hand)."""
        self._labelled(self.checked, action).inc()

    def record_block(self, list_name: str | None, category: str | None) -> None:
        self._labelled(self.blocked, list_name or NO_LABEL, category or NO_LABEL).inc()

    def record_monitor(self, list_name: str | None, category: str | None) -> None:
        self._labelled(self.monitor_hits, list_name or NO_LABEL, category or NO_LABEL).inc()

    def record_override(self, list_name: str | None, reason: str) -> None:
        self._labelled(self.overrides, list_name or NO_LABEL, reason).inc()

    def record_strip(self, list_name: str | None, category: str | None, count: int = 1) -> None:
        """Count ``count`` elements removed from a page because of ``list_name``."""
        if count > 0:
            self._labelled(self.stripped, list_name or NO_LABEL, category or NO_LABEL).inc(count)

    def record_refresh(self, source: str, result: str) -> None:
        """Count one refresh of ``source``: ``success``, ``failure`` or ``held_back``."""
        if result not in REFRESH_RESULTS:
            raise ValueError(f"refresh result must be one of {REFRESH_RESULTS}, got {result!r}")
        self._labelled(self.refreshes, source, result).inc()

    def record_dns(self, action: str, list_name: str | None, category: str | None) -> None:
        """Count one DNS query blocked (or, in monitor mode, that would have been)."""
        self._labelled(self.dns, action, list_name or NO_LABEL, category or NO_LABEL).inc()

    def record_campaign_page(self, result: str) -> None:
        """One HTML page ``queued`` for the campaign detector, or ``dropped``."""
        self._labelled(self.campaign_pages, result).inc()

    def record_campaign_finding(self, action: str) -> None:
        self._labelled(self.campaign_findings, action).inc()

    def record_retro_hit(self, list_name: str | None, category: str | None) -> None:
        self._labelled(self.retro_hits, list_name or NO_LABEL, category or NO_LABEL).inc()

    def record_error(self, kind: str) -> None:
        self._labelled(self.errors, kind).inc()

    # -- exposition ---------------------------------------------------------

    def add_collector(self, collector: Collector) -> None:
        """Expose ``collector``'s series on ``/metrics`` too (the per-worker series)."""
        self._exposed.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition (every worker's counters summed)."""
        return generate_latest(self._exposed)


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "REFRESH_RESULTS", "Metrics"]
