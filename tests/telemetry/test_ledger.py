"""The sightings ledger and the retro-hunt's rules-added diff.

The ledger tests run against SQLite and a real PostgreSQL server alike (the
same SQL, two dialects); the matching tests use engines compiled from lists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.core.retro import added_hashes, retro_matches
from proxy_addons.telemetry.ledger import Ledger, SightingBatch, day_of, hit_rows
from tests.pgserver import postgres_url

DAY = 86_400.0
T0 = 1_780_000_000.0  # a fixed instant (2026-05-28) so days are known


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    with postgres_url() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        led = Ledger(tmp_path / "ledger.sqlite3")
    else:
        url = request.getfixturevalue("pg")
        led = Ledger(url)
        with led._tx() as cur:  # a clean slate per test in the module's one server
            cur.execute("DELETE FROM sightings")
            cur.execute("DELETE FROM retro_hits")
    try:
        yield led
    finally:
        led.close()


def _batch(*sightings: tuple[str, str | None, str | None, float]) -> SightingBatch:
    b = SightingBatch()
    for host, client, user, t in sightings:
        b.add(host, client, user, t)
    return b


# -- the in-memory batch -------------------------------------------------------------


def test_batch_aggregates_per_day_host_client_and_user() -> None:
    b = _batch(
        ("evil.test", "10.0.0.1", "alice", T0),
        ("evil.test", "10.0.0.1", "alice", T0 + 5),
        ("evil.test", "10.0.0.1", "bob", T0 + 6),
        ("evil.test", "10.0.0.2", None, T0 + 7),
        ("evil.test", "10.0.0.1", "alice", T0 + DAY),  # the next day: a row of its own
    )
    rows = b.take()
    d0, d1 = day_of(T0), day_of(T0 + DAY)
    assert rows[(d0, "evil.test", "10.0.0.1", "alice")] == [T0, T0 + 5, 2]
    assert rows[(d0, "evil.test", "10.0.0.1", "bob")] == [T0 + 6, T0 + 6, 1]
    assert rows[(d0, "evil.test", "10.0.0.2", "")] == [T0 + 7, T0 + 7, 1]
    assert rows[(d1, "evil.test", "10.0.0.1", "alice")] == [T0 + DAY, T0 + DAY, 1]
    assert len(rows) == 4 and len(b) == 0


def test_batch_day_follows_a_clock_that_goes_back() -> None:
    b = _batch(("a.test", "c", None, T0 + DAY), ("a.test", "c", None, T0))
    assert {k[0] for k in b.take()} == {day_of(T0), day_of(T0 + DAY)}


def test_batch_is_bounded_and_counts_what_it_drops() -> None:
    b = SightingBatch(cap=3)
    for i in range(10):
        b.add(f"h{i}.test", "c", None, T0)
    b.add("h0.test", "c", None, T0 + 1)  # a key already held still counts
    rows = b.take()
    assert len(rows) == 3 and b.dropped == 7
    assert rows[(day_of(T0), "h0.test", "c", "")][2] == 2


# -- the database --------------------------------------------------------------------


def test_write_upserts_counts_and_times(ledger: Ledger) -> None:
    ledger.write(_batch(("evil.test", "10.0.0.1", "alice", T0 + 10)).take())
    ledger.write(
        _batch(
            ("evil.test", "10.0.0.1", "alice", T0 + 2), ("evil.test", "10.0.0.1", "alice", T0 + 50)
        ).take()
    )
    [s] = ledger.sightings("evil.test")
    assert (s.client, s.user, s.first, s.last, s.count) == ("10.0.0.1", "alice", T0 + 2, T0 + 50, 3)


def test_sightings_of_a_domain_include_subdomains_and_only_them(ledger: Ledger) -> None:
    ledger.write(
        _batch(
            ("e_il.test", "c1", None, T0),
            ("a.e_il.test", "c2", "bob", T0 + 1),
            ("evil.test", "c3", None, T0 + 2),  # '_' is no wildcard
            ("xe_il.test", "c4", None, T0 + 3),  # not a subdomain
            ("a.evil.test", "c5", None, T0 + 4),
        ).take()
    )
    got = {(s.host, s.client) for s in ledger.sightings("e_il.test", subdomains=True)}
    assert got == {("e_il.test", "c1"), ("a.e_il.test", "c2")}
    assert {s.host for s in ledger.sightings("e_il.test")} == {"e_il.test"}


def test_retention_deletes_old_days_only(ledger: Ledger) -> None:
    ledger.write(
        _batch(
            ("old.test", "c", None, T0 - 31 * DAY),
            ("edge.test", "c", None, T0 - 29 * DAY),
            ("new.test", "c", None, T0),
        ).take()
    )
    ledger.record_hits(
        [("old.test", "l", "old.test", "malware", "domain", "enforce")], T0 - 31 * DAY
    )
    ledger.prune(30, now=T0)
    assert sorted(ledger.hosts()) == ["edge.test", "new.test"]
    assert ledger.hits(0) == []


def test_a_hit_is_recorded_once(ledger: Ledger) -> None:
    row = ("evil.test", "feed", "evil.test", "malware", "domain", "enforce")
    assert ledger.record_hits([row], T0) == [0]
    assert ledger.record_hits([row], T0 + 5) == []
    ledger.write(
        _batch(
            ("evil.test", "10.0.0.1", "alice", T0 - 100), ("evil.test", "10.0.0.9", "eve", T0 + 100)
        ).take()
    )
    [hit] = ledger.hits(T0 - 1)
    assert hit.found_at == T0
    # who reached it before it was listed: not the later (blocked) visit
    assert [(s.client, s.user) for s in hit.sightings] == [("10.0.0.1", "alice")]
    assert hit.as_dict()["users"] == ["alice"]


def test_the_sqlite_ledger_is_wal_and_private(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    led.close()
    assert (tmp_path / "l.sqlite3").stat().st_mode & 0o077 == 0
    with sqlite3.connect(tmp_path / "l.sqlite3") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_writers_share_one_postgres_ledger(pg: str) -> None:
    a, b = Ledger(pg), Ledger(pg)
    try:
        with a._tx() as cur:
            cur.execute("DELETE FROM sightings")
        a.write(_batch(("shared.test", "10.0.0.1", "alice", T0)).take())
        b.write(_batch(("shared.test", "10.0.0.1", "alice", T0 + 9)).take())
        [s] = b.sightings("shared.test")
        assert (s.first, s.last, s.count) == (T0, T0 + 9, 2)
    finally:
        a.close()
        b.close()


# -- the rules-added diff and the matching -------------------------------------------


def _engine(*rules: Rule, allow: tuple[Rule, ...] = (), mode: Mode = Mode.ENFORCE) -> Engine:
    lists = [(ListSpec("feed", category="malware", mode=mode), ParsedList("domains", list(rules)))]
    if allow:
        lists.append((ListSpec("mine", allow=True), ParsedList("domains", list(allow))))
    return Engine.from_lists(lists)[0]


def _r(kind: RuleKind, key: str, text: str | None = None, line: int = 1) -> Rule:
    return Rule(kind, key, text or key, line)


OLD = _r(RuleKind.DOMAIN, "old.example")


def _hits(old: Engine, new: Engine, hosts: list[str]) -> dict[str, str]:
    return {m.host: m.match.rule for m in retro_matches(old, new, hosts)}


def test_added_hashes_is_the_set_difference() -> None:
    old = _engine(OLD)
    new = _engine(OLD, _r(RuleKind.DOMAIN, "new.example"))
    assert len(added_hashes(old.block, new.block)) == 1  # type: ignore[arg-type]
    assert len(added_hashes(new.block, new.block)) == 0  # type: ignore[arg-type]


def test_domain_rules_match_the_host_and_subdomains_exact_rules_the_host() -> None:
    old = _engine(OLD)
    new = _engine(OLD, _r(RuleKind.DOMAIN, "evil.example"), _r(RuleKind.EXACT, "exact.example"))
    hosts = ["evil.example", "a.b.evil.example", "notevil.example", "exact.example",
             "sub.exact.example", "old.example", "x.old.example"]  # fmt: skip
    assert _hits(old, new, hosts) == {
        "evil.example": "evil.example",
        "a.b.evil.example": "evil.example",
        "exact.example": "exact.example",
    }


def test_ip_and_cidr_rules_match_addresses() -> None:
    old = _engine(OLD)
    new = _engine(
        OLD, _r(RuleKind.IP, "217.107.218.147"), _r(RuleKind.CIDR, "203.0.113.0/24"),
        _r(RuleKind.CIDR, "2001:db8:bad::/48"),
    )  # fmt: skip
    hosts = ["217.107.218.147", "217.107.218.148", "203.0.113.9", "203.0.114.1",
             "2001:db8:bad::1", "2001:db8:bae::1"]  # fmt: skip
    got = _hits(old, new, hosts)
    assert got == {
        "217.107.218.147": "217.107.218.147",
        "203.0.113.9": "203.0.113.0/24",
        "2001:db8:bad::1": "2001:db8:bad::/48",
    }


def test_url_rules_match_their_host() -> None:
    old = _engine(OLD)
    new = _engine(
        OLD, _r(RuleKind.URL, "bad.example/x/payload.js", "http://bad.example/x/payload.js")
    )
    assert _hits(old, new, ["bad.example", "a.bad.example", "good.example"]) == {
        "bad.example": "http://bad.example/x/payload.js"
    }


def test_hosts_already_listed_or_allowed_are_no_retro_hits() -> None:
    old = _engine(_r(RuleKind.DOMAIN, "evil.example"))
    # a more specific rule for a host the old snapshot blocked already: not reached unseen
    new = _engine(
        _r(RuleKind.DOMAIN, "evil.example"), _r(RuleKind.EXACT, "cdn.evil.example"),
        _r(RuleKind.DOMAIN, "shared.example"),
        allow=(_r(RuleKind.DOMAIN, "ok.shared.example"),),
    )  # fmt: skip
    assert _hits(old, new, ["cdn.evil.example", "shared.example", "ok.shared.example"]) == {
        "shared.example": "shared.example"
    }


def test_monitor_lists_count_and_an_unchanged_block_index_is_free() -> None:
    old = _engine(OLD)
    new = _engine(OLD, _r(RuleKind.DOMAIN, "watch.example"), mode=Mode.MONITOR)
    [m] = retro_matches(old, new, ["watch.example"])
    assert m.match.mode is Mode.MONITOR
    assert hit_rows([m]) == [
        ("watch.example", "feed", "watch.example", "malware", "domain", "monitor")
    ]
    assert retro_matches(new, new, ["watch.example"]) == []


def test_odd_hosts_in_the_ledger_are_skipped() -> None:
    old = _engine(OLD)
    new = _engine(OLD, _r(RuleKind.DOMAIN, "evil.example"))
    assert _hits(old, new, ["", "..", "EVIL.example.", "a b", "x" * 300]) == {
        "evil.example": "evil.example"
    }


def test_added_hashes_matches_the_set_difference_on_random_tables() -> None:
    """The GIL-free difference equals numpy's setdiff1d, duplicates and edges included."""
    import numpy as np

    from proxy_addons.core import retro

    rng = np.random.default_rng(7)
    for n_old, n_new in [(0, 5), (5, 0), (1, 1), (1000, 1200), (50, 3000)]:
        pool = rng.integers(0, 2**64 - 1, size=400, dtype=np.uint64, endpoint=True)
        pool[:3] = [0, 2**64 - 1, 1]  # the edges of the hash space
        old = np.sort(rng.choice(pool, size=n_old))
        new = np.sort(rng.choice(pool, size=n_new))
        in_old = np.asarray(retro._in_sorted(old, new))
        assert in_old.tolist() == [x in set(old.tolist()) for x in new.tolist()]

        class _Tab:
            def __init__(self, a: np.ndarray) -> None:  # type: ignore[type-arg]
                self.key_hashes = memoryview(a.tobytes())

        got = retro.added_hashes(_Tab(old), _Tab(new))  # type: ignore[arg-type]
        assert np.asarray(got).tolist() == np.setdiff1d(new, old).tolist()
