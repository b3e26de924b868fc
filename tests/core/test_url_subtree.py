"""URL rules match their whole subtree at any depth, and every spelling IIS or Tomcat
maps to the same file (issue 11, item 8). Paths keep their letter case."""

from __future__ import annotations

import pytest

from proxy_addons.core.canon import canonicalize_url, url_match_paths, url_path_expressions
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec

RULES = """\
http://evil.example/a/b/c/d/
http://evil.example/x/
http://evil.example/mal
http://evil.example/p/q/r/s/t/u/file.exe
http://iis.example/scripts/dot.php
"""


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_lists([(ListSpec(name="t"), parse_list(RULES, "urls"))])[0]


@pytest.mark.parametrize(
    "url, want",
    [
        # the subtree of a rule, at any depth (Safe Browsing stops at 4 prefixes)
        ("http://evil.example/a/b/c/d/x", Action.BLOCK),
        ("http://evil.example/a/b/c/d/e/f/g/h/i/j/k", Action.BLOCK),
        ("http://evil.example/p/q/r/s/t/u/file.exe?x=1", Action.BLOCK),
        ("http://evil.example/p/q/r/s/t/u/file.exe/path-info", Action.BLOCK),
        ("http://evil.example/a/b/c/", Action.PASS),  # above the rule
        # a rule without its slash covers its directory, never a longer name
        ("http://evil.example/mal/x.exe", Action.BLOCK),
        ("http://evil.example/malware", Action.PASS),
        # Tomcat drops ;parameters; IIS drops trailing dots and spaces, reads \\ as /
        ("http://evil.example/x;jsessionid=1/a", Action.BLOCK),
        ("http://evil.example/x./a", Action.BLOCK),
        ("http://evil.example/x%20/a", Action.BLOCK),
        ("http://iis.example/safe/..%5cscripts/dot.php", Action.BLOCK),
        ("http://iis.example/scripts%5cdot.php", Action.BLOCK),
        ("http://iis.example/scripts/dot.php.", Action.BLOCK),
        ("http://iis.example/scripts/dot.php;x=1", Action.BLOCK),
        ("http://iis.example/scripts/dot.php%20", Action.BLOCK),
        # letter case is kept: paths match as written (see README, rule semantics)
        ("http://evil.example/X/", Action.PASS),
    ],
)
def test_rule_subtrees_and_same_file_spellings(engine: Engine, url: str, want: Action) -> None:
    assert engine.check_url(url).action is want


def test_safe_browsing_expressions_are_unchanged() -> None:
    cu = canonicalize_url("http://a.b.c/1/2/3/4/5/6.html")
    assert len(url_path_expressions(cu)) <= 6  # Google's list, for its own examples
    paths = url_match_paths(cu)
    assert paths[: len(url_path_expressions(cu))] == url_path_expressions(cu)
    assert "/1/2/3/4/5/" in paths and "/1/2/3/4/5" in paths


def test_probes_are_bounded_on_hostile_paths() -> None:
    cu = canonicalize_url("http://a.example/" + "a/" * 5000)
    assert len(url_match_paths(cu)) < 4 * 256 + 10


def test_case_insensitive_paths_are_an_option() -> None:
    rules = "http://iis.example/Scripts/Dot.php\nhttp://iis.example/mal/\n"
    e = Engine.from_lists([(ListSpec(name="t"), parse_list(rules, "urls"))])[0]
    urls = ["http://iis.example/scripts/dot.php", "http://iis.example/SCRIPTS/DOT.PHP?x=1",
            "http://iis.example/MAL/x.exe", "http://iis.example/Mal./X.exe"]  # fmt: skip
    assert [e.check_url(u).action for u in urls] == [Action.PASS] * 4  # as written: default
    try:
        Engine.fold_case = True
        verdicts = [e.check_url(u) for u in urls]
        assert [v.action for v in verdicts] == [Action.BLOCK] * 4
        assert (
            verdicts[0].match is not None
            and verdicts[0].match.rule == "http://iis.example/Scripts/Dot.php"
        )
        assert e.check_url("http://iis.example/other/").action is Action.PASS
    finally:
        Engine.fold_case = False
    # folded entries are no rules of their own: counts are unchanged
    assert e.block.meta["rules"] == 2


def test_the_option_turns_case_folding_on(engine: Engine) -> None:
    from mitmproxy.test import taddons

    from proxy_addons.addons.blocking import Blocking
    from proxy_addons.lists.holder import EngineHolder

    addon = Blocking(EngineHolder(engine))
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, jg_url_case_insensitive=True)
            assert engine.check_url("http://evil.example/X/1").action is Action.BLOCK
            tctx.configure(addon, jg_url_case_insensitive=False)
            assert engine.check_url("http://evil.example/X/1").action is Action.PASS
    finally:
        Engine.fold_case = False
