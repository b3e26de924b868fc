"""The engine against one table of rules and requests (tests/data/verdict_cases.json).

Rules are built as a list parser would: each rule's key is canonicalized with
the functions in ``canon`` (``canonical_host``, ``url_rule_key``,
``canonical_network``); the text is kept as written for provenance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.core.canon import canonical_host, canonical_network, url_rule_key
from proxy_addons.core.engine import Action, Engine, Verdict
from proxy_addons.core.index import CompileStats
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind

TABLE_PATH = Path(__file__).parent.parent / "data" / "verdict_cases.json"
TABLE: dict[str, Any] = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
CASE_KEYS = {
    "name",
    "check",
    "input",
    "verdict",
    "list",
    "rule",
    "line",
    "kind",
    "overridden",
    "note",
    "bug",
}


def rule_key(kind: RuleKind, text: str) -> str:
    """The canonical key a list parser stores for a rule written as ``text``."""
    if kind in (RuleKind.DOMAIN, RuleKind.EXACT, RuleKind.IP):
        return canonical_host(text)
    if kind is RuleKind.URL:
        return url_rule_key(text)[1]
    addr, plen, _ = canonical_network(text)
    return f"{addr}/{plen}"


def build_lists() -> list[tuple[ListSpec, ParsedList]]:
    out = []
    for spec in TABLE["lists"]:
        rules = []
        for r in spec["rules"]:
            kind = RuleKind[r["kind"].upper()]
            key = r.get("key") or rule_key(kind, r["rule"])
            rules.append(Rule(kind, key, r["rule"], r["line"], r["exception"]))
        out.append(
            (
                ListSpec(
                    name=spec["name"],
                    category=spec["category"],
                    mode=Mode(spec["mode"]),
                    allow=spec["allow"],
                ),
                ParsedList("test", rules),
            )
        )
    return out


@pytest.fixture(scope="module")
def compiled() -> Iterator[tuple[Engine, CompileStats, CompileStats]]:
    engine, bstats, astats = Engine.from_lists(build_lists())
    yield engine, bstats, astats
    engine.close()


@pytest.fixture(scope="module")
def engine(compiled: tuple[Engine, CompileStats, CompileStats]) -> Engine:
    return compiled[0]


def _params() -> list[Any]:
    out = []
    for case in TABLE["cases"]:
        marks = []
        if case["bug"]:
            marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {case['bug']}"))
        out.append(pytest.param(case, id=case["name"], marks=marks))
    return out


def _brief(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m[k] for k in ("list", "rule", "line", "kind")}


# -- the table itself ------------------------------------------------------


def test_table_is_clean() -> None:
    names = [c["name"] for c in TABLE["cases"]]
    assert len(names) == len(set(names))
    for case in TABLE["cases"]:
        assert set(case) == CASE_KEYS, case["name"]
        assert case["check"] in ("url", "host"), case["name"]
        Action(case["verdict"])
        has_match = case["verdict"] in ("block", "monitor", "allow")
        assert (case["list"] is not None) is has_match, case["name"]
        if case["overridden"] is not None:
            assert case["verdict"] == "allow", case["name"]
    list_names = [spec["name"] for spec in TABLE["lists"]]
    assert len(list_names) == len(set(list_names))
    for spec in TABLE["lists"]:
        lines = [r["line"] for r in spec["rules"]]
        assert len(lines) == len(set(lines)), spec["name"]
    # Every verdict kind and both checks are exercised.
    assert {c["verdict"] for c in TABLE["cases"]} == {a.value for a in Action}
    assert {c["check"] for c in TABLE["cases"]} == {"url", "host"}


# -- verdicts --------------------------------------------------------------


@pytest.mark.parametrize("case", _params())
def test_verdict(engine: Engine, case: dict[str, Any]) -> None:
    if case["check"] == "url":
        verdict = engine.check_url(case["input"])
    else:
        verdict = engine.check_host(case["input"])
    got = verdict.as_dict()
    assert got["verdict"] == case["verdict"]
    assert _brief(got if got["list"] is not None else None) == _brief(
        case if case["list"] is not None else None
    )
    assert _brief(got["overridden"]) == _brief(case["overridden"])  # type: ignore[arg-type]
    assert verdict.input == case["input"]
    if verdict.action is Action.ERROR:
        assert verdict.error and verdict.match is None
    else:
        assert verdict.error is None and verdict.host
        if case["check"] == "url":
            assert verdict.canonical is not None
            assert verdict.host == verdict.canonical.host


def test_verdict_provenance_fields(engine: Engine) -> None:
    v = engine.check_url("http://sub.evil.example/x")
    assert v.blocked and v.action is Action.BLOCK
    assert v.match is not None
    assert (v.match.category, v.match.mode, v.match.key) == (
        "malware",
        Mode.ENFORCE,
        "evil.example",
    )
    d = v.as_dict()
    assert d["canonical_url"] == "http://sub.evil.example/x"
    assert d["host"] == "sub.evil.example"
    assert d["category"] == "malware" and d["mode"] == "enforce"
    json.dumps(d)  # the record is plain JSON


def test_monitor_is_not_blocked(engine: Engine) -> None:
    v = engine.check_url("http://watch.example/")
    assert v.action is Action.MONITOR and not v.blocked
    assert v.match is not None and v.match.mode is Mode.MONITOR


def test_allow_verdict_is_not_blocked(engine: Engine) -> None:
    v = engine.check_url("http://ok.evil.example/")
    assert v.action is Action.ALLOW and not v.blocked
    assert v.overridden is not None and v.overridden.kind is RuleKind.DOMAIN


def test_check_canonical_matches_check_url(engine: Engine) -> None:
    from proxy_addons.core.canon import canonicalize_url

    for case in TABLE["cases"]:
        if case["check"] != "url" or case["verdict"] == "error" or case["bug"]:
            continue
        cu = canonicalize_url(case["input"])
        assert engine.check_canonical(cu).as_dict()["verdict"] == case["verdict"], case["name"]


# -- compile statistics and the poison guard -------------------------------


def _refused_rules() -> list[tuple[str, dict[str, Any]]]:
    return [(spec["name"], r) for spec in TABLE["lists"] for r in spec["rules"] if r["refused"]]


def test_poison_rules_are_refused_and_counted(
    compiled: tuple[Engine, CompileStats, CompileStats],
) -> None:
    _, bstats, astats = compiled
    refused = _refused_rules()
    assert bstats.refused_count + astats.refused_count == len(refused)
    samples = {(s["list"], s["line"]): s for s in bstats.refused + astats.refused}
    for list_name, r in refused:
        sample = samples[(list_name, r["line"])]
        assert sample["rule"] == r["rule"]
        assert sample["reason"] == r["refused"], r["rule"]


def test_compile_counts(compiled: tuple[Engine, CompileStats, CompileStats]) -> None:
    _, bstats, astats = compiled
    block_rules = [
        r
        for spec in TABLE["lists"]
        if not spec["allow"]
        for r in spec["rules"]
        if not r["exception"]
    ]
    allow_rules = [
        r for spec in TABLE["lists"] for r in spec["rules"] if spec["allow"] or r["exception"]
    ]
    assert bstats.rules == sum(1 for r in block_rules if not r["refused"])
    assert astats.rules == sum(1 for r in allow_rules if not r["refused"])
    assert astats.exceptions == sum(1 for r in allow_rules if r["exception"])
    assert bstats.exceptions == 0


@pytest.mark.parametrize(
    ("list_name", "r"), [pytest.param(n, r, id=r["rule"]) for n, r in _refused_rules()]
)
def test_refused_rule_alone_never_matches(list_name: str, r: dict[str, Any]) -> None:
    """Each poison rule on its own: refused, and the engine passes what it would have blocked."""
    kind = RuleKind[r["kind"].upper()]
    key = r.get("key") or rule_key(kind, r["rule"])
    engine, stats, _ = Engine.from_lists(
        [(ListSpec(name=list_name), ParsedList("test", [Rule(kind, key, r["rule"], r["line"])]))]
    )
    try:
        assert stats.refused_count == 1 and stats.rules == 0
        probe = {
            RuleKind.DOMAIN: f"victim.{key}" if key != "*" else "victim.example",
            RuleKind.EXACT: key,
            RuleKind.IP: key,
            RuleKind.URL: key.partition("/")[0],
            RuleKind.CIDR: key.partition("/")[0],
        }[kind]
        verdict: Verdict = engine.check_host(probe)
        assert verdict.action is Action.PASS, probe
    finally:
        engine.close()


def test_empty_engine_passes_everything() -> None:
    engine, stats, astats = Engine.from_lists([])
    try:
        assert stats.rules == 0 and astats.rules == 0
        assert engine.check_url("http://evil.example/").action is Action.PASS
        assert engine.check_host("evil.example").action is Action.PASS
    finally:
        engine.close()


def test_a_monitor_lists_exceptions_do_not_unblock_what_enforcing_lists_block() -> None:
    """A list on trial (mode = monitor) only reports: its ``@@`` exceptions went into the
    allow index and overrode every enforcing list's block of that host (red team)."""
    from proxy_addons.core.formats import parse_list

    enforce = parse_list(b"victim.test\n", "domains", name="feed")
    trial = parse_list(b"||tracker.test^\n@@||victim.test^\n", "adblock", name="trial")
    engine, _, _ = Engine.from_lists(
        [
            (ListSpec("feed", category="malware"), enforce),
            (ListSpec("trial", category="ads", mode=Mode.MONITOR), trial),
        ]
    )
    v = engine.check_url("http://victim.test/")
    assert v.action is Action.BLOCK and v.match is not None and v.match.list == "feed"
    assert engine.check_url("http://tracker.test/").action is Action.MONITOR
    # An enforcing list's own exceptions still allow, as before.
    enforcing_trial = ListSpec("trial", category="ads")
    engine, _, _ = Engine.from_lists(
        [(ListSpec("feed", category="malware"), enforce), (enforcing_trial, trial)]
    )
    assert engine.check_url("http://victim.test/").action is Action.ALLOW
