"""``Engine.listed_url``, the scanner's question, must answer exactly as ``check_url`` does.

It skips the full parse for a URL whose host is a plain name no block rule is keyed by:
a security shortcut, so it is tested as a class.

* Whenever ``plain_url_name`` names a host, the WHATWG parse (``canonicalize_url``)
  names the same host, or refuses the URL: over generated text built from the
  characters that change what a browser reads as the host (userinfo, backslashes,
  tabs, escapes, IDNA-mapped characters, numeric labels, ports, spaces...), and over
  every URL in the canonicalization and verdict tables.
* ``listed_url`` and ``check_url`` agree on every URL of the verdict table, on a table
  of hostile spellings of listed names, and on generated URLs around them, with block,
  monitor, URL-rule, campaign (extra) and allow lists in play.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy_addons.core.canon import (
    MAX_HOST_LENGTH,
    MAX_URL_LENGTH,
    canonicalize_url,
    url_rule_key,
    url_scheme,
)
from proxy_addons.core.engine import UNCHECKABLE, Action, Engine, plain_url_name
from proxy_addons.core.errors import CanonError, URLTooLong
from proxy_addons.core.formats import parse_list
from proxy_addons.core.index import (
    CompiledIndex,
    _remembered_probes,
    compile_index,
    host_probes,
)
from proxy_addons.core.model import ListSpec, Match, Mode, ParsedList

from .test_engine import build_lists

DATA = Path(__file__).parent.parent / "data"
CANON_INPUTS = [c["input"] for c in json.loads((DATA / "canon_cases.json").read_text("utf-8"))]
VERDICT_URLS = [
    c["input"]
    for c in json.loads((DATA / "verdict_cases.json").read_text("utf-8"))["cases"]
    if c["check"] == "url"
]
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BLOCK = """\
evil.test
bad.example.org
||ads.tracker.test^
http://cdn.test/mal/x.js
http://a.b.c.d.e.f.g.test/deep/
http://files.test/get.php?id=7
192.0.2.1
198.51.100.0/24
"""
MONITOR = "watch.test\nhttp://cdn.test/watched/\n"
CAMPAIGN = "camp.test\n"
ALLOW = "@@||good.evil.test^\n"


def slow(engine: Engine, url: str) -> Match | None:
    """What ``blocked_by`` answered before the shortcut: the full check (and a URL too
    long to check, with a scheme that names a host, is refused as the proxy refuses it)."""
    try:
        canonicalize_url(url)
    except URLTooLong:
        return UNCHECKABLE if url_scheme(url) in ("http", "https", "ws", "wss", "ftp") else None
    except CanonError:
        pass
    v = engine.check_url(url)
    return v.match if v.listed else None


def _lists() -> list[tuple[ListSpec, ParsedList]]:
    return [
        (ListSpec(name="block", category="malware"), parse_list(BLOCK, name="block", fmt="auto")),
        (
            ListSpec(name="watch", category="malware", mode=Mode.MONITOR),
            parse_list(MONITOR, name="watch", fmt="auto"),
        ),
        (
            ListSpec(name="allow", category="allow", allow=True),
            parse_list(ALLOW, name="allow", fmt="auto"),
        ),
    ]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    base, _, _ = Engine.from_lists(_lists())
    spec = ListSpec(name="campaign", category="campaign")
    image, _ = compile_index([(spec, parse_list(CAMPAIGN, name="campaign", fmt="auto"))])
    eng = base.with_extra(CompiledIndex(image))
    yield eng
    base.close()


@pytest.fixture(scope="module")
def table_engine() -> Iterator[Engine]:
    eng, _, _ = Engine.from_lists(build_lists())
    yield eng
    eng.close()


# -- the host read without parsing is the parser's host ----------------------

_HOST_CHARS = "abzAZ09x-.:@\\/?#%\t\n\r [] \u00ad\u3002\uff45\u0131\u00df"
_SCHEMES = [
    "http://",
    "https://",
    "HTTP://",
    "hTtPs://",
    "http:",
    "http:/",
    "http:\\\\",
    " http://",
]
_TAILS = ["", "/", "/x.js", "?q", "#f", ":80/", ":/", ":99999/", ":8@evil.test/", "\\x", "\t/", " "]

hostish = st.text(_HOST_CHARS, min_size=1, max_size=24)


@given(st.sampled_from(_SCHEMES), hostish, st.sampled_from(_TAILS))
@MANY
@example("http://", "0x7f.1", "/")
@example("http://", "evil.test", ".")
@example("http://", "good.test:pw@evil.test", "/")
@example("http://", "1.2.3.4x", "/")
@example("http://", "xn--abc.test", "/")
@example("http://", "a.b.0x", "/")
def test_a_plain_name_is_the_parsers_host(scheme: str, host: str, tail: str) -> None:
    check_same_host(scheme + host + tail)


@pytest.mark.parametrize("url", CANON_INPUTS + VERDICT_URLS)
def test_a_plain_name_is_the_parsers_host_on_the_tables(url: str) -> None:
    check_same_host(url)


def check_same_host(url: str) -> None:
    name = plain_url_name(url)
    if name is None:
        return
    try:
        cu = canonicalize_url(url)
    except CanonError:
        return  # the browser loads nothing: no host to disagree on
    assert (cu.host, cu.host_kind) == (name, "domain"), url


def test_plain_names_are_common_urls() -> None:
    """The shortcut is taken for what pages hold by the thousand (else it tests nothing)."""
    for url in (
        "https://cdn3.example.com/img/4/5.jpg",
        "http://WWW.Example.COM:8080/a?b#c",
        "https://xn--80ak6aa92e.com/",
        "http://localhost",
    ):
        assert plain_url_name(url) == canonicalize_url(url).host
    for url in (
        "http://good.test@evil.test/",
        "http://evil\u00ad.test/",
        "http://%65vil.test/",
        "http://192.0.2.1/",
        "http://0x7f.1/",
        "http://evil.test./",
        "http:\\\\evil.test\\x",
        " http://evil.test/",
        "http://ev\til.test/",
        "//evil.test/",
    ):
        assert plain_url_name(url) is None, url


# -- the shortcut answers as the full check ------------------------------------

HOSTILE = [
    "http://evil.test/x.js",
    "http://EVIL.TEST/x.js",
    "http://sub.evil.test:8080/x?y#z",
    "http://good.evil.test/",  # allowed
    "http://notevil.test/",
    "http://evil.test.other/",
    "https://www.bad.example.org/",
    "http://example.org/",
    "http://ads.tracker.test/p",
    "http://cdn.test/mal/x.js",
    "http://cdn.test/mal/x.js?v=1",
    "http://CDN.test/MAL/x.js",
    "http://cdn.test/mal/%78.js",
    "http://cdn.test/mal/./x.js",
    "http://cdn.test/ok.js",
    "http://cdn.test/watched/a.js",  # monitor
    "http://watch.test/",
    "http://z.a.b.c.d.e.f.g.test/deep/x",
    "http://a.b.c.d.e.f.g.test/deep/x",
    "http://files.test/get.php?id=7&x=1",
    "http://files.test/get.php?x=1",
    "http://camp.test/c.js",  # the campaign list (extra index)
    "http://sub.camp.test/c.js",
    "http://good.test@evil.test/",
    "http://evil.test@good.test/",
    "http://evil\u00ad.test/",
    "http://ev\til.test/",
    "http://%65vil.test/",
    "http:\\\\evil.test\\x.js",
    "http:evil.test/x",
    "http://evil\u3002test/",
    "http://\uff45vil.test/",
    "http://192.0.2.1/",
    "http://3221225985/",
    "http://0xc0.0.2.1/",
    "http://198.51.100.7/",
    "http://[::ffff:192.0.2.1]/",
    "http://[64:ff9b::c000:201]/",
    "http://evil.test./",
    "http://clean.test/",
    "https://cdn1.example.com/img/1/2.jpg",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_listed_url_answers_as_the_full_check(engine: Engine, url: str) -> None:
    assert engine.listed_url(url) == slow(engine, url)


def test_the_hostile_table_blocks_something(engine: Engine) -> None:
    """The table above is not all passes: the comparison has teeth."""
    listed = [u for u in HOSTILE if slow(engine, u) is not None]
    assert len(listed) >= 20, listed
    fast = [u for u in listed if plain_url_name(u) is not None]
    assert len(fast) >= 10, fast  # listed plain names go the full way


@pytest.mark.parametrize("url", VERDICT_URLS)
def test_listed_url_answers_as_the_full_check_on_the_verdict_table(
    table_engine: Engine, url: str
) -> None:
    assert table_engine.listed_url(url) == slow(table_engine, url)


_NAMES = ["evil.test", "bad.example.org", "cdn.test", "camp.test", "watch.test", "files.test"]
_NAMES += ["a.b.c.d.e.f.g.test", "ads.tracker.test", "good.evil.test", "example.org", "clean.test"]
_PATHS = ["/", "/mal/x.js", "/MAL/X.JS", "/deep/", "/get.php?id=7", "/watched/", "/x?y#z", ""]


@given(
    st.sampled_from(["http://", "https://", "HTTP://"]),
    st.lists(st.sampled_from(["www", "sub", "x-1", "EVIL", "a"]), max_size=3),
    st.sampled_from(_NAMES),
    st.sampled_from(["", ":80", ":8443", ":", "."]),
    st.sampled_from(_PATHS),
)
@MANY
def test_listed_url_answers_as_the_full_check_generated(
    engine: Engine, scheme: str, subs: list[str], name: str, port: str, path: str
) -> None:
    url = scheme + ".".join([*subs, name]) + port + path
    assert engine.listed_url(url) == slow(engine, url)


def test_a_name_remembered_quiet_is_asked_again_of_a_new_campaign_list(engine: Engine) -> None:
    """The remembered answers belong to one engine: a new extra index is asked afresh."""
    url = "http://newcamp.test/x.js"
    assert engine.listed_url(url) is None  # remembered: no record under newcamp.test
    spec = ListSpec(name="campaign", category="campaign")
    image, _ = compile_index([(spec, parse_list("newcamp.test\n", name="campaign", fmt="auto"))])
    updated = engine.with_extra(CompiledIndex(image))
    m = updated.listed_url(url)
    assert m is not None and m.list == "campaign"


# -- long names and URLs: bounded work, and nothing too long to check passes ------------

LONG_NAME = "a." * 30_000 + "evil.test"  # 60 KB: a URL on it is under the URL cap


def test_a_long_name_is_probed_in_bounded_work(engine: Engine) -> None:
    """Only parents that fit a DNS name can be keys: a 30,000-label name is one hash of
    the name and at most 127 parents (it was 30,000 suffixes, ~900 MB of strings)."""
    probes = host_probes(LONG_NAME, "domain")
    assert probes[0][0] == LONG_NAME and len(probes) <= 128
    assert all(len(h) <= MAX_HOST_LENGTH for h, _ in probes[1:])
    assert probes[-2][0] == "evil.test" and probes[-1][0] == "test"
    url = f"http://{LONG_NAME}/x.js"
    assert len(url) < MAX_URL_LENGTH
    m = engine.listed_url(url)
    assert m is not None and m.rule == "evil.test" and m == slow(engine, url)
    assert engine.check_url(url).action is Action.BLOCK


def test_long_names_are_not_remembered() -> None:
    """A remembered answer holds every parent: long names would pile up (~33 KB each)."""
    before = _remembered_probes.cache_info().currsize
    for i in range(200):
        host_probes(f"n{i}." + "b." * 120 + "test", "domain")
        host_probes(f"n{i}" + "c" * 300 + ".test", "domain")
    assert _remembered_probes.cache_info().currsize == before
    assert host_probes("www.example.com", "domain") is host_probes("www.example.com", "domain")


@pytest.mark.parametrize(
    ("url", "uncheckable"),
    [
        ("http://clean.test/?" + "q" * MAX_URL_LENGTH, True),
        ("HTTPS://clean.test/" + "p" * MAX_URL_LENGTH, True),
        (" \t ht\ttp://clean.test/" + "p" * MAX_URL_LENGTH, True),
        ("wss://clean.test/" + "p" * MAX_URL_LENGTH, True),
        # 30,000 characters, 270,000 once encoded (as sent, and as every path probe is)
        ("https://clean.test/" + "\u20ac" * 30_000, True),
        ("https://clean.test/?q=" + "\u20ac" * 30_000, True),
        ("data:text/javascript;base64," + "QUFB" * (MAX_URL_LENGTH // 4), False),
        ("javascript:void(0)//" + "x" * MAX_URL_LENGTH, False),
        ("blob:http://clean.test/" + "x" * MAX_URL_LENGTH, False),
    ],
)
def test_a_url_too_long_to_check_is_refused_when_it_names_a_host(
    engine: Engine, url: str, uncheckable: bool
) -> None:
    """The proxy refuses a request it cannot check (an error never passes): the scanner
    answers the same, so what would load such a URL goes too; a data: URL loads nothing."""
    assert engine.check_url(url).action is Action.ERROR
    assert engine.listed_url(url) == (UNCHECKABLE if uncheckable else None)


def test_a_url_rule_on_a_name_longer_than_dns_allows_is_refused() -> None:
    long_host = ".".join(c * 60 for c in "vwxyz") + ".test"
    assert len(long_host) > MAX_HOST_LENGTH
    with pytest.raises(CanonError, match="longer than"):
        url_rule_key(f"http://{long_host}/mal.js")
    parsed = parse_list(f"http://{long_host}/mal.js\nhttp://ok.test/mal.js\n", fmt="urls")
    assert [r.key for r in parsed.rules] == ["ok.test/mal.js"]


@pytest.mark.parametrize(
    "url",
    [
        "https://clean.test/frame.html#R" + "x" * MAX_URL_LENGTH,
        "https://evil.test/frame.html#R" + "x" * MAX_URL_LENGTH,
        "https://clean.test/a#" + "#" * MAX_URL_LENGTH,
    ],
)
def test_a_url_long_only_for_its_fragment_is_checked_without_it(engine: Engine, url: str) -> None:
    """The fragment is never sent (an embed's state in "#R..." can be long): the URL the
    server gets is what is checked, as the proxy checks the request."""
    head = url.partition("#")[0]
    assert engine.check_url(url).action is engine.check_url(head).action is not Action.ERROR
    assert engine.listed_url(url) == engine.listed_url(head) == slow(engine, head)


def test_trailing_dots_and_spaces_are_stripped_as_before() -> None:
    """A server drops a file name's trailing dots and spaces (the rule's other spelling):
    now linear in their number, the same answer as the one-at-a-time loop."""
    from proxy_addons.core.canon import _strip_dots_spaces

    def one_at_a_time(seg: str) -> str:
        while seg.endswith((".", "%20")):
            seg = seg[:-1] if seg.endswith(".") else seg[:-3]
        return seg

    parts = [".", "%20", "%2", "0", "a", "%", "2", "20", "."]
    import itertools

    for n in range(6):
        for combo in itertools.product(parts, repeat=n):
            seg = "".join(combo)
            assert _strip_dots_spaces(seg) == one_at_a_time(seg), seg
    long = "x" + "%20." * 16_000 + "." * 1000
    assert _strip_dots_spaces(long) == "x"
