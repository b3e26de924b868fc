"""Event handlers (``onerror=``...) remembered across scans: a clean verdict is reused only
under everything it depends on (the handler's bytes, the document's encoding, the page
URL and the bases in force), and the remembered pass finds what the full search finds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.htmlscan import (
    _HANDLER_AFTER,
    _HANDLER_LOW,
    _HANDLER_UPPER_HITS,
    _HANDLER_VALUE,
    Finding,
    Scanner,
    _candidates,
    _handler_values,
    _Judge,
)

from .test_htmlscan import SIGNATURES, blocker

EVIL_BASE = '<base href="http://evil.test/">'
# Loads a path on the document's base: clean on any page, unless the base is blocked.
IMPORT = "<img src=x onerror=\"import('/m.js')\">"
# Writes a script element with a relative URL: what it loads depends on the page URL.
WRITE = "<img src=x onerror=\"document.write('<script src=x.js></scr' + 'ipt>')\">"
BAD_PAGE = "http://cdn.test/bad/page.html"  # (blocker prefix http://cdn.test/bad/)
GOOD_PAGE = "http://cdn.test/good/page.html"
PAGE = "http://site.test/dir/page.html"


def scanner(**kw: object) -> Scanner:
    return Scanner(blocker({"evil.test"}, ("http://cdn.test/bad/",)), SIGNATURES, **kw)  # type: ignore[arg-type]


def removed(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return [(f.element, f.evidence) for f in findings if f.removed]


# (page URL, body, expected removed findings): pairs of pages that share a handler's
# bytes and differ in what decides its verdict.
CASES = {
    "clean, no base": (PAGE, f"<p>{IMPORT}</p>", []),
    "blocked base": (PAGE, f"{EVIL_BASE}<p>{IMPORT}</p>", [("img", "onerror: import")]),
    "good page URL": (GOOD_PAGE, f"<p>{WRITE}</p>", []),
    "bad page URL": (BAD_PAGE, f"<p>{WRITE}</p>", [("img", "onerror: write")]),
    # A srcdoc document's base is its container's (Chromium, the HTML standard).
    "srcdoc, no base": (
        PAGE,
        f'<iframe srcdoc="{IMPORT.replace(chr(34), "&quot;")}"></iframe>',
        [],
    ),
    # On the base's own page the base is no other origin (the page loaded from it).
    "srcdoc, base is the page": (
        "http://evil.test/",
        f'{EVIL_BASE}<iframe srcdoc="{IMPORT.replace(chr(34), "&quot;")}"></iframe>',
        [],
    ),
    "srcdoc under a blocked base": (
        PAGE,
        f'{EVIL_BASE}<iframe srcdoc="{IMPORT.replace(chr(34), "&quot;")}"></iframe>',
        [("iframe", "onerror: import")],
    ),
}


def test_a_srcdoc_documents_own_base_decides_what_its_elements_load() -> None:
    srcdoc = "<base href=//evil.test/><script src=/x.js></script>"
    for body in (f'<iframe srcdoc="{srcdoc}"></iframe>', f"<iframe srcdoc='{srcdoc}'>x</iframe>"):
        for fast_path in (True, False):
            found = scanner(fast_path=fast_path).scan(body.encode(), PAGE, "text/html")
            assert [(f.element, f.url, f.removed) for f in found] == [
                ("iframe", "http://evil.test/x.js", True)
            ]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cache_entries", [0, 20000])
def test_each_page_is_judged_alone(name: str, cache_entries: int) -> None:
    page, body, expected = CASES[name]
    findings = scanner(cache_entries=cache_entries).scan(body.encode(), page, "text/html")
    assert removed(findings) == expected


@pytest.mark.parametrize("reverse", [False, True])
def test_a_remembered_verdict_is_not_reused_where_it_does_not_hold(reverse: bool) -> None:
    # One scanner sees every page, clean ones first or last, each twice over: a verdict
    # remembered from one page must not decide another that shares the handler.
    warm = scanner()
    order = sorted(CASES, reverse=reverse)
    for name in order + order:
        page, body, expected = CASES[name]
        assert removed(warm.scan(body.encode(), page, "text/html")) == expected, name


def test_a_blocked_handler_is_stripped_on_a_warm_scanner() -> None:
    warm = scanner()
    clean = f"<p>{IMPORT}</p>".encode()
    assert warm.strip(clean, PAGE, "text/html") == (clean, [])
    injected = f"{EVIL_BASE}<p>{IMPORT}</p>".encode()
    for _ in range(2):
        out, findings = warm.strip(injected, PAGE, "text/html")
        assert b"onerror" not in out and [f.element for f in findings] == ["img"]


def test_the_encoding_is_part_of_what_is_remembered() -> None:
    # The same bytes: "\x81\x42" is Shift_JIS's ideographic full stop, a dot to the URL
    # parser ("evil.test"), and no dot in windows-1252. Judged clean in one encoding,
    # the value must be judged again in the other.
    body = b"<img src=x onerror=\"location='http://evil\x81\x42test/'\">"
    for _ in range(2):
        warm = scanner()
        assert warm.scan(body, PAGE, "text/html; charset=windows-1252") == []
        found = warm.scan(body, PAGE, "text/html; charset=shift_jis")
        assert removed(found) == [("img", "onerror: location")]


# ---- the remembered pass finds what the full search finds

_HOSTS = ["evil.test", "ok.test"]
_PIECES = [
    "<img src=x onerror=\"location='http://{h}/'\">", "<img src=x ONERROR=\"import('/m.js')\">",
    "<img src=x OnError='fetch(\"//{h}/c\")'>", "<img src=x oNload=location='//{h}/'>",
    "<svg onload=\"alert('{h}')\">", "<button onclick=\"cart.add(1)\">", "<a onclick=''>",
    "<img/src/onerror=import('/m.js')>", '<img src="x"onerror="document.write(\'<script src=y.js>\')">',
    "<base href=http://{h}/>", "<BASE HREF='//{h}/'>", "<script>", "</script>", "<!--", "-->",
    "<iframe srcdoc=\"<img src=x onerror=&quot;import('/m.js')&quot;>\">", "<div title=\"", "\">",
    "<p>on text=1</p>", " onmouseover= ", "<img onerror=\"location='http://{h}/'", "<textarea>",
    "</textarea>", "<img src=x onerror=\"location='http://&#x7b;h&#x7d;.{h}/'\">",
]  # fmt: skip
_PAGES = [PAGE, BAD_PAGE, GOOD_PAGE, "https://evil.test/"]
_FILLER = "<p class=filler>some ordinary text, consectetur</p>\n" * 240


@st.composite
def _doc(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_HOSTS)), max_size=12)
    )
    return "".join(piece.format(h=host) for piece, host in parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_doc(), st.sampled_from(_PAGES), st.booleans())
def test_the_remembered_pass_agrees_with_the_full_search(doc: str, page: str, large: bool) -> None:
    body = ("<p>x</p>" + (_FILLER if large else "") + doc).encode()
    warm = scanner()
    for _ in range(2):  # cold, then warm
        judge = _Judge(warm, page)
        doc_ = warm._prepare(body, "text/html")
        assert doc_ is not None
        candidates = _candidates(doc_.buf)
        bases = warm._handler_bases(doc_, judge, (page,), candidates)
        full = warm._handler_findings(doc_, judge, bases, candidates)
        assert warm._handlers(doc_, judge, (page,), candidates) == full


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_doc(), st.sampled_from(_PAGES)), min_size=2, max_size=5))
def test_warm_scans_agree_with_cold_ones(pages: list[tuple[str, str]]) -> None:
    warm = scanner()
    for doc, page in pages + pages[::-1]:
        body = doc.encode()
        cold = scanner(cache_entries=0)
        assert warm.scan(body, page, "text/html") == cold.scan(body, page, "text/html")


def test_what_is_remembered_is_bounded() -> None:
    # Every page URL is its own context: a crawl must not grow the memory for ever.
    warm = scanner(cache_entries=10)
    for i in range(100):
        body = f'<button onclick="cart.add({i})">x</button>'.encode()
        assert warm.scan(body, f"http://shop.test/p/{i}", "text/html") == []
        sizes = [len(known) for known in warm._caches.clean_handlers.values()]
        assert len(sizes) + sum(sizes) <= 10
    long = "x" * 2000  # judged on every scan, never remembered
    warm.scan(f'<button onclick="a({long})">x</button>'.encode(), PAGE, "text/html")
    assert not any(long.encode() in v for s in warm._caches.clean_handlers.values() for v in s)


_BEFORE = [" ", "\t", "\n", "\f", "\r", '"', "'", "/", "x", "<img", "=", ""]
_ON = ["on", "On", "oN", "ON", "o", "n", "O", "N", "onon", ""]
_NAME = ["error", "LOAD", "x", "", "click1"]
_VALUE = ['"x()"', "'y()'", "z()", '"', "'", "", ">", " ", "&quot;a&quot;"]


@st.composite
def _handlerish(draw: st.DrawFn) -> str:
    # Handlers and near misses: every byte before a name, every case of "on", names,
    # white space around "=", quoted, unquoted, unterminated and missing values.
    pieces = [_BEFORE, _ON, _NAME, [" ", "", "\t"], ["=", ""], [" ", ""], _VALUE]
    return "".join(draw(st.sampled_from(p)) for p in pieces)


def _reference_values(buf: bytes) -> set[bytes]:
    # By definition: every "on...=" (any case) after a byte that may precede an
    # attribute's name, and the value _HANDLER_VALUE reads after it.
    low = buf.lower()
    out = set()
    for p in range(1, len(buf)):
        m = _HANDLER_LOW.match(low, p)
        if m is not None and buf[p - 1] in _HANDLER_AFTER:
            value = _HANDLER_VALUE.match(buf, m.end())
            out.add(value.group(1) if value else b"")
    return out


@settings(max_examples=1000, deadline=None)
@given(st.lists(_handlerish(), max_size=12), st.integers(0, 3))
def test_handler_values_are_every_handlers_value(pieces: list[str], crowd: int) -> None:
    # ``crowd`` puts many an "O" and "N" first: past _HANDLER_UPPER_HITS the regex reads on.
    body = ("ON N O " * (crowd * _HANDLER_UPPER_HITS // 2) + "".join(pieces)).encode()
    assert _handler_values(body) == _reference_values(body)
