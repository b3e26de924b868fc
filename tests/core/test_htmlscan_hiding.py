"""Markup that hides later elements from a scanner but not from a browser.

A red team listed the constructs that a scanner with its own idea of HTML reads
differently from a browser, so that an active element after them is missed (or one
inside them is invented): ``<script`` inside a comment, ``<title>``, ``<textarea>``,
``<style>``, ``<xmp>``, ``<noscript>``, ``<template>``, SVG/MathML foreign content,
CDATA, ``<!--`` inside a script, ``</script`` variants (``</SCRIPT >``,
``</script/x>``), attribute values holding ``>``, unterminated comments,
``<plaintext>``. Documents are assembled from exactly those pieces around numbered
active elements and compared with two HTML5 parsers:

- Lexbor (selectolax), the reference of ``test_htmlscan_differential``: the same
  agreement rule (exact, or nothing missed where the scanner reads two ways);
- html5lib, an independent implementation of the same tokenizer and tree builder:
  every element it builds (with scripting on and off) is among the scanner's, by
  name, URL attributes and script text. (html5lib predates 2025's "customizable
  select", so where the two parsers disagree the scanner must cover both.)
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import html5lib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.utils.conventions import not_set

sys.path.insert(0, str(Path(__file__).parent))
from _reference import COMPARED, Key, key, scanner_keys  # noqa: E402
from test_htmlscan_differential import _agree  # noqa: E402

from proxy_addons.core.htmlscan import parse_elements  # noqa: E402

_XHTML = "{http://www.w3.org/1999/xhtml}"
_SVG = "{http://www.w3.org/2000/svg}"
_XLINK = "{http://www.w3.org/1999/xlink}"


def _direct_text(el: Any) -> str:
    return (el.text or "") + "".join(child.tail or "" for child in el)


def html5lib_keys(doc: str) -> Counter[Key]:
    """Elements html5lib builds with scripting on or off (a max-union multiset)."""
    total: Counter[Key] = Counter()
    for scripting in (True, False):
        parser = html5lib.HTMLParser(namespaceHTMLElements=True)
        tree = parser.parse(doc, scripting=scripting)
        found: Counter[Key] = Counter()
        for el in tree.iter():
            tag = el.tag if isinstance(el.tag, str) else ""
            if tag.startswith(_XHTML):
                name = tag[len(_XHTML) :]
            elif tag == _SVG + "script":
                name = "script"
            else:
                continue
            if name not in COMPARED:
                continue
            attrs = {
                (k.replace(_XLINK, "xlink:") if isinstance(k, str) else str(k)): v
                for k, v in el.attrib.items()
            }
            found[key(name, attrs, _direct_text(el) if name == "script" else None)] += 1
        total |= found
    return total


def _covers_html5lib(doc: str) -> None:
    elements = parse_elements(doc.encode("utf-8"), "text/html; charset=utf-8")
    everything = scanner_keys(
        elements, include=("", "noscript", "foreign-end", "select", "ignored", "budget")
    )
    missed = html5lib_keys(doc) - everything
    assert not missed, f"missed {dict(missed)} in {doc!r}"


# The constructs that hide (or seem to hide) what follows them.
HIDERS = [
    "<!--", "-->", "--!>", "<!-->", "<!--->", "<!-- -- >", "<title>", "</title>", "<textarea>",
    "</textarea>", "<style>", "</style>", "<xmp>", "</xmp>", "<noscript>", "</noscript>",
    "<template>", "</template>", "<svg>", "</svg>", "<math>", "</math>", "<![CDATA[", "]]>",
    "<script>", "</script>", "</SCRIPT >", "</script/x>", "</script x='>'>", "</script\n>",
    "<script><!--", "<!--<script>", "<div title='>'>", '<p title=">">', "<a href='x>y'>",
    '<img alt="<script src=hidden>">', "<plaintext>", "<noembed>", "</noembed>",
    "<noframes>", "</noframes>", "<iframe>", "</iframe>", "<foreignObject>", "</foreignObject>",
    "<mtext>", "<desc>", "<annotation-xml encoding=text/html>", "<select>", "</select>",
    "<table>", "<td>", "<p>", "</p>", "<br>", "<b>", "<font color=red>", "<?x ",  "<!x ",
    "</ x", ">", "'", '"', "-", "--", "<", "</", "x", " ", "\n",
]  # fmt: skip
ACTIVE = [
    "<script src=s{i}></script>",
    "<script>t{i}</script>",
    "<script>t{i}<!--<script>u{i}</script>-->v{i}</script>",
    "<iframe src=f{i}></iframe>",
    "<object data=o{i}></object>",
    "<embed src=e{i}>",
    "<meta http-equiv=refresh content='0;url=m{i}'>",
    "<base href=b{i}>",
    "<svg><script href=h{i}>w{i}</script></svg>",
]


@st.composite
def _documents(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for i in range(draw(st.integers(1, 24))):
        if draw(st.integers(0, 2)) == 0:
            parts.append(draw(st.sampled_from(ACTIVE)).format(i=i))
        else:
            parts.append(draw(st.sampled_from(HIDERS)))
    return "".join(parts)


EXAMPLES = [
    "<!--<script src=s0></script>--><script src=s1></script>",
    "<title><script src=s0></title><script src=s1></script>",
    "<textarea><script src=s0></script></textarea><iframe src=f1></iframe>",
    "<style></style ><script src=s0></script>",
    "<xmp><script src=s0></script></XMP><script src=s1></script>",
    "<noscript><script src=s0></script></noscript>",
    "<template><script src=s0></script></template>",
    "<svg><style><script href=h0>w0</script></style></svg><script src=s1></script>",
    "<math><mtext><script src=s0></script></mtext></math>",
    "<svg><![CDATA[<script src=s0>]]></svg><script src=s1></script>",
    "<script><!--<script>x</script>--></script><script src=s1></script>",
    "<script>a</SCRIPT ><script src=s1></script>",
    "<script>a</script/x><script src=s1></script>",
    "<div title='>'><script src=s0></script>",
    "<!-- unterminated <script src=s0></script>",
    "<plaintext><script src=s0></script>",
    "<select><script src=s0></script><style><script src=s1></script></style></select>",
    "<table><td><svg><desc><script src=s0></script></desc></svg>",
    # Found by this test: older parsers ignore <svg>/<math> inside <select> (the
    # <script> is HTML and loads); customizable select enters foreign content.
    "<select><math><script src=s1></script>",
    "<select><svg><script href=h1>w1</script></svg></select><script src=s2></script>",
    # html5lib (before 2022's change of the standard) does not leave SVG at </p>: the
    # script after it is an SVG script whose text has no comment.
    "<svg></p><script>t1<!--<script>u1</script>-->v1</script>",
    # With scripting off, a <noscript> inside an integration point is the current
    # node: "<![CDATA[" is a bogus comment there, and the script after it is real.
    "<svg><foreignObject><noscript><![CDATA[<script src=s1></script><script src=s2></script>",
]


@pytest.mark.parametrize("doc", EXAMPLES)
def test_hiding_constructs_agree_with_both_parsers(doc: str) -> None:
    _agree(doc)
    _covers_html5lib(doc)


# The same documents on every run (JG_EXPLORE=1 draws new ones; each find goes into
# EXAMPLES and tests/data/html/hostile.txt).
@settings(
    max_examples=600,
    deadline=None,
    derandomize=not os.environ.get("JG_EXPLORE"),
    database=None if not os.environ.get("JG_EXPLORE") else not_set,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_documents())
@example("<script><!--<script>t0</script>--><script src=s1></script>")
def test_generated_hiding_documents_agree_with_both_parsers(doc: str) -> None:
    _agree(doc)
    _covers_html5lib(doc)


@pytest.mark.parametrize(
    "body",
    [
        b"<select><option>a<math><script src=//evil.test/x.js></script></select>",
        b"<svg><foreignObject><noscript><![CDATA[<b></b><script src=//evil.test/x.js></script>",
        b"<svg></p><script>location='//evil.test/'<!--<script>x</script>--></script>",
    ],
    ids=["select-math", "noscript-cdata", "p-in-svg"],
)
def test_elements_a_reading_builds_are_stripped(body: bytes) -> None:
    from test_htmlscan_shapes import IS_BLOCKED

    from proxy_addons.core.htmlscan import Scanner

    for fast_path in (True, False):
        scanner = Scanner(IS_BLOCKED, fast_path=fast_path)  # type: ignore[arg-type]
        out, findings = scanner.strip(body, "https://page.example/", "text/html", comment=False)
        assert b"evil.test" not in out, findings
