"""URL rules with a query, and the file a server serves for a path without its extension.

A query rule matches a URL whose path is one of the rule path's spellings (as for any
URL rule: subtree, Tomcat ``;params``, IIS trailing dots and spaces, ``%5c``, case with
the option) and whose query holds every ``name=value`` parameter of the rule's, in any
order, after the same canonicalization; extra and repeated parameters do not defeat it
(issue 11, items 6-8; red team 2, finding 6). A rule whose last segment has an
extension also matches that segment without it, as Apache's MultiViews serves it
(finding 3); never with another extension. Allow rules match as written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.canon import path_stems, query_params, url_rule_alternates
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.errors import SnapshotError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.index import CompiledIndex, compile_index
from proxy_addons.core.model import ListSpec

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULES = """\
http://good.test/dl.php?id=7
https://drive.google.com/uc?export=download&id=X
http://good2.test/dl/payload.exe
http://good2.test/pkg/tool.tar.gz
http://good2.test/.hidden
"""


def engine_of(rules: str, allow: str = "") -> Engine:
    lists = [(ListSpec(name="block"), parse_list(rules, "urls"))]
    if allow:
        lists.append((ListSpec(name="allow", allow=True), parse_list(allow, "urls")))
    return Engine.from_lists(lists)[0]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return engine_of(RULES)


@pytest.fixture
def fold_case() -> Iterator[None]:
    Engine.fold_case = True
    try:
        yield
    finally:
        Engine.fold_case = False


@pytest.mark.parametrize(
    "url",
    [
        # the red team's query spellings (finding 6), each passed before
        "http://good.test/dl.php?id=7",
        "http://good.test:18200/dl.php?id=7&",
        "http://good.test/dl.php?id=7&utm=1",
        "http://good.test/dl.php?utm=1&id=7",
        "http://good.test/dl.php?id=7&id=7",
        "http://good.test/dl.php?&&id=7&&",
        "http://good.test/dl.php?x=1;id=7",
        "http://good.test/dl.php?i%64=%37",
        "http://good.test/dl.php?id=7#frag",
        "http://good.test/dl.php?%20id=7",  # PHP drops a name's leading spaces
        "http://good.test/dl.php?+id=7",
        # the same-file path spellings every other URL rule gets
        "http://good.test/dl.php;jsessionid=1?id=7",
        "http://good.test/dl.php.?id=7",
        "http://good.test/dl.php%20?id=7",
        "http://good.test/dl.php/?id=7",
        "http://good.test/dl.php/path/info?id=7",
        "http://good.test/x/..%5cdl.php?id=7",
        "http://good.test//dl.php?id=7",
        # Google Drive's real download link, reordered and with its confirm step
        "https://drive.google.com/uc?id=X&export=download",
        "https://drive.google.com/uc?id=X&export=download&confirm=t",
        "https://drive.google.com/uc?confirm=t&id=X&authuser=0&export=download",
        # MultiViews: the file without its extension (finding 3), and path info after it
        "http://good2.test/dl/payload",
        "http://good2.test/dl/payload/x",
        "http://good2.test/dl/payload.exe",
        "http://good2.test/pkg/tool.tar",
        "http://good2.test/pkg/tool",
        # and a query rule without its extension
        "http://good.test/dl?id=7&a=b",
    ],
)
def test_spellings_of_a_rule_are_blocked(engine: Engine, url: str) -> None:
    v = engine.check_url(url)
    assert v.action is Action.BLOCK, url
    assert v.match is not None and v.match.list == "block"


@pytest.mark.parametrize(
    "url",
    [
        "http://good.test/dl.php",  # the rule's parameter is missing
        "http://good.test/dl.php?id=70",
        "http://good.test/dl.php?id=8&xid=7",
        "http://good.test/dl.php?ID=7",  # letter case is kept by default
        "http://good.test/DL.php?id=7",
        "http://good.test/other.php?id=7",
        "https://drive.google.com/uc?id=X",  # one of the rule's two parameters
        "https://drive.google.com/uc?export=download&id=Y",
        # under MultiViews another extension is another file; so is a longer name
        "http://good2.test/dl/payload.html",
        "http://good2.test/dl/payload.exe.txt",
        "http://good2.test/dl/payloads",
        "http://good2.test/dl/",
        "http://good2.test/pkg/tool.zip",
        "http://good2.test/",  # ".hidden" has no stem
    ],
)
def test_other_files_and_queries_pass(engine: Engine, url: str) -> None:
    assert engine.check_url(url).action is Action.PASS, url


def test_case_insensitive_option_covers_query_rules_and_stems(
    engine: Engine, fold_case: None
) -> None:
    for url in (
        "http://good.test/DL.PHP?ID=7&utm=1",
        "http://good.test/Dl.php.?id=7",
        "http://good2.test/DL/PAYLOAD",
    ):
        v = engine.check_url(url)
        assert v.action is Action.BLOCK, url
        assert v.match is not None and v.match.rule in RULES  # the rule as written
    assert engine.check_url("http://good.test/DL.PHP?ID=8").action is Action.PASS


def test_the_matched_rule_is_reported_as_written(engine: Engine) -> None:
    v = engine.check_url("https://drive.google.com/uc?confirm=t&id=X&export=download")
    assert v.match is not None
    assert v.match.rule == "https://drive.google.com/uc?export=download&id=X"
    assert v.match.line == 2 and v.match.kind.label == "url"


def test_allow_rules_match_as_written() -> None:
    """An exception is never widened: it would open more than its author meant."""
    e = engine_of(
        "http://good.test/\n",
        allow="http://good.test/ok.php?id=1\nhttp://good.test/setup.exe\n",
    )
    assert e.check_url("http://good.test/ok.php?id=1").action is Action.ALLOW
    assert e.check_url("http://good.test/ok.php?id=1&x=2").action is Action.BLOCK
    assert e.check_url("http://good.test/setup").action is Action.BLOCK
    assert e.allow.meta["url_alternates"] == 0


def test_markers_are_not_rules() -> None:
    e = engine_of(RULES)
    assert e.block.meta["rules"] == 5
    assert e.block.meta["url_alternates"] > 0
    n = len(e.block.key_hashes)
    assert sum(e.block.record_at(i) is not None for i in range(n)) == 5 * 2  # rule + folded


def test_a_snapshot_of_the_previous_format_is_refused() -> None:
    img, _ = compile_index([(ListSpec(name="t"), parse_list(RULES, "urls"))])
    data = bytearray(img.to_bytes())
    data[7] = 6  # the version byte of the magic
    struct.pack_into("<I", data, 8, 6)
    with pytest.raises(SnapshotError, match="format version 6"):
        CompiledIndex(bytes(data))


def test_pure_helpers() -> None:
    assert query_params("b=2&a=1&&a=1;c") == {"a=1", "b=2", "c"}
    assert query_params("q=a+b") == query_params("q=a%20b")
    assert query_params(None) == frozenset() == query_params("")
    assert query_params("%20a.b%20c=1.2") == {"a_b_c=1.2"}  # PHP's names; values as they are
    assert path_stems("/d/a.tar.gz") == ["/d/a.tar", "/d/a"]
    assert path_stems("/d/.hidden") == [] and path_stems("/d/") == [] and path_stems("/a.b/c") == []
    assert url_rule_alternates("h/d/x.php?id=1") == [("h/d/x.php", "?id=1"), ("h/d/x", ".php?id=1")]
    assert url_rule_alternates("h/d/x") == []


# -- properties ---------------------------------------------------------------

_NAME = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
_VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=0, max_size=6)
_PARAM = st.tuples(_NAME, _VALUE).map(lambda nv: f"{nv[0]}={nv[1]}")
_SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_EXT = st.sampled_from(["", ".php", ".exe", ".tar.gz", ".m"])


def _escape_some(text: str, pick: int) -> str:
    """Percent-encode one letter or digit: the same text once canonicalized."""
    alnum = [i for i, c in enumerate(text) if c.isalnum()]
    if not alnum:
        return text
    i = alnum[pick % len(alnum)]
    return f"{text[:i]}%{ord(text[i]):02X}{text[i + 1 :]}"


_RESPELL = st.sampled_from(
    ["as is", ";jsessionid=1", ".", "%20", "/", "/path/info", "stem", "//", "%5c"]
)


def _respell(path: str, how: str) -> str:
    head, _, last = path.rpartition("/")
    if how == "stem":
        stems = path_stems(path)
        return stems[-1] if stems else path
    if how == "//":
        return "/" + path
    if how == "%5c":
        return f"{head}/x/..%5c{last}"  # IIS reads \\ as /
    return path if how == "as is" else path + how


@FAST
@given(
    dirs=st.lists(_SEGMENT, min_size=0, max_size=3),
    name=_SEGMENT,
    ext=_EXT,
    rule_params=st.lists(_PARAM, min_size=1, max_size=3, unique_by=lambda p: p.split("=")[0]),
    extra=st.lists(_PARAM, max_size=3),
    data=st.data(),
)
def test_any_respelling_of_a_query_rule_is_blocked(
    dirs: list[str],
    name: str,
    ext: str,
    rule_params: list[str],
    extra: list[str],
    data: st.DataObject,
) -> None:
    path = "/" + "/".join([*dirs, name + ext])
    rule = f"http://rule.test{path}?{'&'.join(rule_params)}"
    e = engine_of(rule + "\n")
    params = data.draw(st.permutations(rule_params + extra + data.draw(st.lists(
        st.sampled_from(rule_params), max_size=2))))  # fmt: skip
    params = [_escape_some(p, data.draw(st.integers(0, 20))) for p in params]
    sep = data.draw(st.sampled_from(["&", "&&"]))
    tail = data.draw(st.sampled_from(["", "&", "#frag"]))
    respelled = _respell(path, data.draw(_RESPELL))
    url = f"http://rule.test{respelled}?{sep.join(params)}{tail}"
    v = e.check_url(url)
    assert v.action is Action.BLOCK, (rule, url)
    assert v.match is not None and v.match.rule == rule


@FAST
@given(
    path=st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s) + ".php"),
    rule_params=st.lists(_PARAM, min_size=1, max_size=3, unique_by=lambda p: p.split("=")[0]),
    extra=st.lists(_PARAM, max_size=3),
    drop=st.integers(0, 2),
)
def test_a_url_without_one_of_the_rule_parameters_passes(
    path: str, rule_params: list[str], extra: list[str], drop: int
) -> None:
    rule = f"http://rule.test{path}?{'&'.join(rule_params)}"
    missing = rule_params[drop % len(rule_params)]
    kept = [p for p in rule_params if p != missing] + [p for p in extra if p != missing]
    url = f"http://rule.test{path}?{'&'.join(kept)}"
    assert engine_of(rule + "\n").check_url(url).action is Action.PASS, (rule, url)


@FAST
@given(
    path=st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s) + ".aspx"),
    rule_params=st.lists(_PARAM, min_size=1, max_size=3, unique_by=lambda p: p.split("=")[0]),
    extra=st.lists(_PARAM, max_size=2),
    flips=st.lists(st.booleans(), min_size=64, max_size=64),
    stem=st.booleans(),
)
def test_with_the_option_any_letter_case_is_blocked(
    path: str, rule_params: list[str], extra: list[str], flips: list[bool], stem: bool
) -> None:
    rule = f"http://rule.test{path}?{'&'.join(rule_params)}"
    e = engine_of(rule + "\n")
    target = (path_stems(path)[-1] if stem else path) + "?" + "&".join([*extra, *rule_params])
    flipped = "".join(c.swapcase() if flips[i % len(flips)] else c for i, c in enumerate(target))
    Engine.fold_case = True
    try:
        v = e.check_url("http://rule.test" + flipped)
    finally:
        Engine.fold_case = False
    assert v.action is Action.BLOCK, (rule, flipped)
    assert v.match is not None and v.match.rule == rule
