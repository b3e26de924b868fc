"""Metrics: a private registry, parseable text, counters that move."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.telemetry.metrics import LATENCY_BUCKETS, Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def engine() -> Engine:
    rules = ParsedList(
        "t",
        [
            Rule(RuleKind.DOMAIN, "evil.test", "evil.test", 1),
            Rule(RuleKind.URL, "good.test/bad", "good.test/bad", 2),
        ],
    )
    watch = ParsedList("t", [Rule(RuleKind.DOMAIN, "watch.test", "watch.test", 1)])
    e, _, _ = Engine.from_lists(
        [
            (ListSpec(name="mal", category="malware"), rules),
            (ListSpec(name="watch", category="phishing", mode=Mode.MONITOR), watch),
        ]
    )
    return e


def test_registry_is_private() -> None:
    m = Metrics()
    m.record_block("a", "b")
    assert (
        REGISTRY.get_sample_value(
            "jectguard_requests_blocked_total", {"list": "a", "category": "b"}
        )
        is None
    )
    assert value(m, "jectguard_requests_blocked_total", list="a", category="b") == 1
    Metrics()  # a second instance does not clash (no duplicate registration)


def test_observe_verdict_moves_checked_blocked_monitor_and_latency(engine: Engine) -> None:
    m = Metrics()
    m.observe_verdict(engine.check_url("http://evil.test/x"), 4e-6)
    m.observe_verdict(engine.check_url("http://watch.test/"), 2e-5)
    m.observe_verdict(engine.check_url("http://fine.test/").as_dict(), 1e-6)
    assert value(m, "jectguard_requests_checked_total", verdict="block") == 1
    assert value(m, "jectguard_requests_checked_total", verdict="monitor") == 1
    assert value(m, "jectguard_requests_checked_total", verdict="pass") == 1
    assert value(m, "jectguard_requests_blocked_total", list="mal", category="malware") == 1
    assert value(m, "jectguard_monitor_hits_total", list="watch", category="phishing") == 1
    assert value(m, "jectguard_verdict_seconds_count") == 3
    assert value(m, "jectguard_verdict_seconds_bucket", le="5e-06") == 2


def test_latency_buckets_are_microsecond_scale() -> None:
    assert LATENCY_BUCKETS[0] <= 1e-6 and sorted(LATENCY_BUCKETS) == list(LATENCY_BUCKETS)


def test_strip_refresh_and_error_counters() -> None:
    m = Metrics()
    m.record_strip("mal", "malware", 3)
    m.record_strip("mal", "malware", 0)
    m.record_refresh("urlhaus", "success")
    m.record_refresh("urlhaus", "held_back")
    m.record_refresh("urlhaus", "failure")
    m.record_override("mal", "allowlist")
    m.record_error("canonicalize")
    assert value(m, "jectguard_elements_stripped_total", list="mal", category="malware") == 3
    for result in ("success", "held_back", "failure"):
        assert value(m, "jectguard_refreshes_total", source="urlhaus", result=result) == 1
    assert value(m, "jectguard_allow_overrides_total", list="mal", reason="allowlist") == 1
    assert value(m, "jectguard_errors_total", kind="canonicalize") == 1
    with pytest.raises(ValueError):
        m.record_refresh("urlhaus", "ok")


def test_rules_and_snapshot_age_come_from_the_engine_in_force(engine: Engine) -> None:
    now = [engine.block.meta["built_at"] + 42.0]
    holder = {"engine": engine}
    m = Metrics(lambda: holder["engine"].block.meta, clock=lambda: now[0])
    assert value(m, "jectguard_rules", kind="domain") == 2
    assert value(m, "jectguard_rules", kind="url") == 1
    assert value(m, "jectguard_snapshot_age_seconds") == pytest.approx(42.0)
    now[0] += 10
    assert value(m, "jectguard_snapshot_age_seconds") == pytest.approx(52.0)


def test_no_engine_no_age() -> None:
    m = Metrics()
    assert ("jectguard_snapshot_age_seconds", ()) not in samples(m)
