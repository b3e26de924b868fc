"""The event stream: JSON lines, redaction, ring buffer, per-minute timeline."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from proxy_addons.telemetry.events import (
    DEFAULT_CAPACITY,
    EVENT_KINDS,
    MAX_FIELD_CHARS,
    EventLog,
    open_sink,
    redact_url,
    report_refresh,
    rfc3339,
)

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SECRET = "s3cr3t-VALUE-never-logged"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_block_event_is_one_json_line_with_the_core_fields() -> None:
    buf = io.StringIO()
    log = EventLog(clock=Clock())
    log.set_sink(buf)
    log.emit(
        "block",
        client="192.0.2.1",
        method="GET",
        url="http://evil.test/x?a=1",
        verdict="block",
        list="malware",
        rule="evil.test",
        category="malware",
        request_id="abc123",
        stage="request",
    )
    (rec,) = lines(buf)
    assert buf.getvalue().count("\n") == 1
    assert RFC3339_UTC.fullmatch(str(rec["time"]))
    assert rec["time"] == "2023-11-14T22:13:20.000Z"
    assert rec["event"] == "block"
    assert rec["url"] == "http://evil.test/x?a=1"
    for key in ("client", "method", "verdict", "list", "rule", "category", "request_id"):
        assert rec[key] is not None
    assert rec["stage"] == "request"


def test_bytes_a_client_sent_that_were_not_utf8_do_not_stop_the_line() -> None:
    """mitmproxy hands such bytes over as lone surrogates; a UTF-8 stream cannot take them."""
    raw = io.BytesIO()
    sink = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    log = EventLog(clock=Clock())
    log.set_sink(sink)
    log.emit(
        "block",
        method="G\udcffT",
        url="http://good.test/\udcff/x.js",
        verdict="block",
        list="l",
        rule="good.test/%FF/",
        page_url="http://good.test/\udcfe",
    )
    (rec,) = [json.loads(line) for line in raw.getvalue().decode("utf-8").splitlines()]
    assert rec["url"] == "http://good.test/\ufffd/x.js" and rec["method"] == "G\ufffdT"
    assert rec["page_url"] == "http://good.test/\ufffd"
    assert json.dumps(log.recent(), ensure_ascii=False).encode("utf-8")  # the admin API's view


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        EventLog().emit("blocked")


def test_drop_query_removes_query_and_fragment_everywhere() -> None:
    log = EventLog(drop_query=True)
    rec = log.emit("strip", url="https://a.test/p?token=x#f", element_url="https://b.test/s.js?k=1")
    assert rec["url"] == "https://a.test/p"
    assert rec["element_url"] == "https://b.test/s.js"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@host.test/a?b", "http://host.test/a?b"),
        ("http://host.test/a@b", "http://host.test/a@b"),
        ("host.test:443", "host.test:443"),
        ("https://u@h.test", "https://h.test"),
    ],
)
def test_userinfo_is_always_removed(url: str, expected: str) -> None:
    assert redact_url(url, drop_query=False) == expected


def test_secrets_never_reach_the_stream() -> None:
    buf = io.StringIO()
    log = EventLog()
    log.set_sink(buf)
    log.emit(
        "block",
        url=f"http://user:{SECRET}@evil.test/",
        headers={
            "Authorization": f"Bearer {SECRET}",
            "Proxy-Authorization": f"Basic {SECRET}",
            "Cookie": f"sid={SECRET}",
            "Accept": "text/html",
        },
        token=SECRET,
        password=SECRET,
        nested={"deeper": {"set-cookie": SECRET, "ok": 1}},
    )
    text = buf.getvalue()
    assert SECRET not in text
    rec = json.loads(text)
    assert rec["headers"] == {"Accept": "text/html"}
    assert rec["nested"] == {"deeper": {"ok": 1}}
    assert "token" not in rec and "password" not in rec
    assert SECRET not in json.dumps(log.recent())


def test_long_fields_are_cut() -> None:
    rec = EventLog().emit("block", url="http://a.test/" + "x" * 100_000, rule="r" * 10_000)
    assert len(str(rec["url"])) <= MAX_FIELD_CHARS + 1
    assert len(str(rec["rule"])) <= MAX_FIELD_CHARS + 1


def test_ring_buffer_is_bounded_and_newest_first() -> None:
    log = EventLog(capacity=5)
    for i in range(12):
        log.emit("block" if i % 2 else "strip", request_id=str(i))
    recent = log.recent(100)
    assert [r["request_id"] for r in recent] == ["11", "10", "9", "8", "7"]
    assert [r["request_id"] for r in log.recent(2)] == ["11", "10"]
    assert [r["request_id"] for r in log.recent(10, ["strip"])] == ["10", "8"]
    assert log.totals()["block"] == 6 and log.totals()["strip"] == 6
    assert set(log.totals()) == set(EVENT_KINDS)
    assert DEFAULT_CAPACITY == 1000


def test_timeline_counts_per_minute_and_forgets_old_minutes() -> None:
    clock = Clock(60 * 1000)  # exactly on a minute boundary
    log = EventLog(clock=clock, timeline_minutes=10)
    log.emit("block")
    log.emit("block")
    clock.t += 60
    log.emit("strip")
    tl = log.timeline()
    assert tl["step"] == 60
    assert tl["start"] == 60 * (1001 - 9)
    assert len(tl["series"]["block"]) == 10
    assert tl["series"]["block"][-2:] == [2, 0]
    assert tl["series"]["strip"][-1] == 1
    assert log.timeline(3)["series"]["block"] == [0, 2, 0]
    clock.t += 60 * 30
    log.emit("monitor")
    tl = log.timeline()
    assert sum(tl["series"]["block"]) == 0 and tl["series"]["monitor"][-1] == 1
    assert len(log._minutes) == 1  # old buckets dropped, memory bounded


def test_file_sink_appends_line_buffered(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"old":1}\n')
    sink, owned = open_sink(str(path))
    assert owned
    log = EventLog()
    log.set_sink(sink, owned=True)
    log.emit("block", url="http://evil.test/")
    # visible before close: a SIEM tailing the file sees each event at once
    assert path.read_text().count("\n") == 2
    log.close()
    assert sink is not None and sink.closed
    assert json.loads(path.read_text().splitlines()[1])["event"] == "block"


def test_sink_specs() -> None:
    assert open_sink("") == (None, False)
    assert open_sink("-") == (sys.stdout, False)
    with pytest.raises(OSError):
        open_sink("/nonexistent-dir-jg/events.jsonl")


def test_write_failure_is_reported_once_not_raised(caplog) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    log = EventLog()
    log.set_sink(Broken())
    log.emit("block")
    log.emit("block")
    assert len(log.recent()) == 2
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_report_refresh_counts_and_emits() -> None:
    calls: list[tuple[str, str]] = []

    class M:
        def record_refresh(self, source: str, result: str) -> None:
            calls.append((source, result))

    log = EventLog()
    report_refresh(log, M(), "urlhaus", "success")
    report_refresh(log, M(), "urlhaus", "held_back", "shrank by 80%")
    report_refresh(log, M(), "openphish", "failure", "HTTP 500")
    assert calls == [("urlhaus", "success"), ("urlhaus", "held_back"), ("openphish", "failure")]
    kinds = [(r["event"], r["source"], r["reason"]) for r in log.recent()]
    assert kinds == [
        ("error", "openphish", "HTTP 500"),
        ("refresh-held", "urlhaus", "shrank by 80%"),
    ]


def test_rfc3339_is_utc() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_events_module_is_pure() -> None:
    code = (
        "import sys, proxy_addons.telemetry.events;"
        "bad = [m for m in ('mitmproxy', 'aiohttp') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ})


def test_report_refresh_outcomes_from_a_refresher_report() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Outcome:
        name: str
        status: str
        detail: str | None = None
        entries: int | None = None

    @dataclass
    class Report:
        outcomes: dict[str, Outcome] = field(default_factory=dict)
        not_published: str | None = None

    calls: list[tuple[str, str]] = []

    class M:
        def record_refresh(self, source: str, result: str) -> None:
            calls.append((source, result))

    log = EventLog()
    report = Report(
        {
            "a": Outcome("a", "updated", "10 entries", 10),
            "b": Outcome("b", "unchanged"),
            "c": Outcome("c", "held_back", "shrank", 3),
            "d": Outcome("d", "failed", "HTTP 500"),
        },
        not_published="compile failed",
    )
    from proxy_addons.telemetry.events import report_refresh_outcomes

    report_refresh_outcomes(log, M(), report)
    assert calls == [("a", "success"), ("b", "success"), ("c", "held_back"), ("d", "failure")]
    assert [(r["event"], r.get("source")) for r in log.recent()] == [
        ("error", None),
        ("error", "d"),
        ("refresh-held", "c"),
    ]
    assert log.recent()[2]["entries"] == 3


def test_one_refresh_vocabulary() -> None:
    # Every outcome the refresher reports maps to the metrics' result in one place, and
    # every result is a label the metrics accept (a new outcome cannot go uncounted).
    from proxy_addons.refresh.outcome import Outcome, Result
    from proxy_addons.telemetry.metrics import REFRESH_RESULTS, Metrics

    assert set(REFRESH_RESULTS) == set(Result)
    counted = {o for o in Outcome if o.result is not None}
    assert counted == set(Outcome) - {Outcome.DEFERRED}
    m = Metrics()
    for o in counted:
        assert o.result is not None
        m.record_refresh("s", o.result)
