"""The scanner's fast searches find everything the slow regular expressions found.

Issue 17: a page with megabytes of inline script was slow because ``re`` tried
patterns that start with a class or a lookbehind at every character. The fast
forms (a literal anchor, then a check) must never miss a match the old form
made: an attacker controls the text, including case tricks (``İ``, ``ſ``, the
Kelvin sign) and adjacent quotes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_addons.core.canon import CanonError, canonicalize_url
from proxy_addons.core.htmlscan import (
    _JS_ESCAPE,
    _URL_REF,
    Scanner,
    _host_literals,
    _join_literals,
    _js_escape,
    _resolve,
    _undo_escapes,
    _url_scheme,
)
from proxy_addons.core.prefilter import fold_ascii_case, required_literals
from proxy_addons.core.signatures import match_signature, parse_signatures

ROOT = Path(__file__).resolve().parents[2]
SIGNATURES = parse_signatures((ROOT / "blocklists" / "signatures.toml").read_text())

# The forms the scanner used before issue 17's speed work (each tried at every position).
OLD_URL_REF = re.compile(
    r"(?:(?<![A-Za-z0-9+.-])(?:https?|ftp|wss?):)?//"
    r"(\[[0-9A-Fa-f:.]+\]|[\w~%-]+(?:[.\u3002\uff0e\uff61][\w~%-]+)*[.\u3002\uff0e\uff61]?)"
    r"(?::\d{1,5})?"
    r"""[^\s"'<>\\`(){}|^]*"""
)
OLD_LITERAL_REF = re.compile(
    r"""(["'`])([A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63})+)\.?\1"""
)

# Characters that steer the patterns: schemes, slashes, dots, quotes, case tricks.
URLISH = st.text(
    alphabet=st.sampled_from(list("htpsfwHTP:/.\\-+ a0x\"'`[]:9\u3002\u0130\u017f\u212a\n")),
    max_size=60,
)


def old_url_refs(text: str) -> list[str]:
    return [
        "http:" + m.group() if m.group().startswith("//") else m.group()
        for m in OLD_URL_REF.finditer(text)
    ]


def new_url_refs(text: str) -> list[str]:
    return [_url_scheme(text, m.start()) + m.group() for m in _URL_REF.finditer(text)]


@settings(max_examples=3000, deadline=None)
@given(URLISH)
def test_url_references_are_the_old_ones(text: str) -> None:
    assert new_url_refs(text) == old_url_refs(text)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("x='https://evil.example/a'", "https://evil.example/a"),
        ("x='ftp://evil.example/a'", "ftp://evil.example/a"),
        ("x='wss://evil.example/a'", "wss://evil.example/a"),
        ("x='ws://evil.example/a'", "ws://evil.example/a"),
        ("x='xhttps://evil.example/a'", "http://evil.example/a"),  # not a scheme
        ("x='HTTPS://evil.example/a'", "http://evil.example/a"),
        ("https://evil.example", "https://evil.example"),  # at the very start
        ("x='//evil.example/'", "http://evil.example/"),
    ],
)
def test_url_reference_schemes(text: str, ref: str) -> None:
    assert new_url_refs(text) == [ref]


LITERALISH = st.text(alphabet=st.sampled_from(list("ab0-.\"'` x=;\\\n")), max_size=60)


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@settings(max_examples=3000, deadline=None)
@given(LITERALISH)
def test_host_literals_include_the_old_ones_in_order(text: str) -> None:
    old = [m.group(2) for m in OLD_LITERAL_REF.finditer(text)]
    assert is_subsequence(old, list(_host_literals(text)))


def test_host_literals_shapes() -> None:
    text = 'a="evil.example";b=\'x.y.z.\';c=`1.2.3.4`;d="no";e="a.b\'";f="dup.com""x.org"'
    assert list(_host_literals(text)) == ["evil.example", "x.y.z", "1.2.3.4", "dup.com", "x.org"]
    long_label = '"' + "a" * 64 + '.com"'
    assert list(_host_literals(long_label)) == []  # (the old regex: the same)
    many = '"' + "a." * 300 + 'com"'
    assert list(_host_literals(many)) == [m.group(2) for m in OLD_LITERAL_REF.finditer(many)]


ESCAPISH = st.lists(
    st.sampled_from(
        ["\\", "\\", "u003c", "u003C", "u003e", "u0026", "x", "u", "{", "}", "0", "1", "7",
         "8", "a", "F", '"', "'", "/", "n", "r", "t", "\n", "\r", "\u2028", "\x00", "\xe9", " "]
    ),
    max_size=40,
).map("".join)  # fmt: skip


@settings(max_examples=5000, deadline=None)
@given(ESCAPISH)
def test_escapes_are_undone_as_before(text: str) -> None:
    assert _undo_escapes(text) == _JS_ESCAPE.sub(_js_escape, text)


@pytest.mark.parametrize(
    ("text", "undone"),
    [
        ('\\x3cscript src=\\"\\/\\/evil.example\\/\\">', '<script src="//evil.example/">'),
        ("\\u0064ocument\\u{77}rite", "documentwrite"),
        ("\\\\u0041", "\\u0041"),  # an escaped backslash, then plain text
        ("\\101\\0\\8", "A\x008"),
        ("\\u{1234567}", "\ufffd"),  # past U+10FFFF: a SyntaxError in JS, nothing runs
        ("\\u{00000041}", "A"),  # any number of digits, as JS reads them
        ("\\561", ".1"),  # a legacy octal escape from 4-7 is two digits at most
        ("\\3770", "\xff0"),  # from 0-3, three
        ("end\\", "end\\"),
        ("\\\\\\", "\\\\"),
    ],
)
def test_escapes(text: str, undone: str) -> None:
    assert _undo_escapes(text) == undone == _JS_ESCAPE.sub(_js_escape, text)


OLD_CONCAT = re.compile(r"""(["'`])\s*\+\s*(["'`])""")
CONCATISH = st.text(alphabet=st.sampled_from(list("+'\"` \t\n\u2028\xa0ab")), max_size=40)


@settings(max_examples=5000, deadline=None)
@given(CONCATISH)
def test_literal_joins_are_the_old_ones(text: str) -> None:
    assert _join_literals(text) == OLD_CONCAT.sub("", text)


@pytest.mark.parametrize(
    ("text", "joined"),
    [
        ("'<scr' + 'ipt src=' + \"//evil.example\"", "'<script src=//evil.example\""),
        ("'a'+'b'+'c'", "'abc'"),
        ("'+'+'", "+'"),
        ("x + 1 + 'a' +\n 'b'", "x + 1 + 'ab'"),
        ("no plus", "no plus"),
    ],
)
def test_literal_joins(text: str, joined: str) -> None:
    assert _join_literals(text) == joined == OLD_CONCAT.sub("", text)


# ---- signatures: a literal prefilter, sound under re.IGNORECASE


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"(?<![0-9.])217\.107\.218\.147(?![0-9])", {"217.107.218.147"}),
        (re.escape("nihaorr1.com/1.js"), {"nihaorr1.com/1.js"}),
        (r"\b(?:gumblar|martuz)\.cn\b", {"gumblar", "martuz"}),
        (r"(?i:EVAL)\(", {"eval"}),
        (r"x{0,3}abc", {"abc"}),
        (r"(?:ab)+cd", None),  # too short to rule anything out
        (r"a|bcd", None),
        (r"[a-z]+\.js", {".js"}),
        (r"[a-z]+\.j", None),
    ],
)
def test_required_literals(pattern: str, literals: set[str] | None) -> None:
    got = required_literals(pattern, re.IGNORECASE | re.DOTALL)
    assert (None if got is None else set(got)) == literals


# Patterns of the shapes signatures take; each is checked against random texts.
PATTERNS = [
    r"(?<![0-9.])217\.107\.218\.147(?![0-9])",
    re.escape("nihaorr1.com/1.js"),
    r"\b(?:gumblar|martuz)\.cn\b",
    r"lizamoon\.com/ur\.php",
    r"(?:skis|kiss)+",
    r"ev(?:a|i)l\(\w*\)",
]
FOLDY = st.text(
    alphabet=st.sampled_from(
        list("gumblarGUMBLARtzcnCN.\u0130\u0131\u017f\u212aKkSsIi ()eval217108/4")
    ),
    max_size=40,
)


@settings(max_examples=3000, deadline=None)
@given(FOLDY, st.sampled_from(PATTERNS))
def test_required_literals_are_sound(text: str, pattern: str) -> None:
    regex = re.compile(pattern, re.IGNORECASE | re.DOTALL)
    literals = required_literals(pattern, regex.flags)
    if literals is not None and regex.search(text) is not None:
        assert any(lit in fold_ascii_case(text) for lit in literals)


@pytest.mark.parametrize(
    "text",
    [
        "document.write('<script src=http://LİZAMOON.COM/ur.php></script>')",  # İ: i
        "var u = 'http://lizamoon.com/ur.php'.replace('ı','i')+'LIZAMOON.COM/UR.PHP'",
        "x = 'gumblar.\u212aN'",  # no: K is not c
        "x = 'GUMBLAR.CN'",
        "x = 'martuz.cn'",
        "x = 'nihaorr1.com/1.j\u017f'",  # ſ: s
        "x = '217.107.218.147'",
        "x = '1217.107.218.147'",
        "nothing here",
    ],
)
def test_scanner_signature_is_match_signature(text: str) -> None:
    scanner = Scanner(lambda url: None, SIGNATURES)
    for target in ("script", "url"):
        assert scanner._signature(text, target) == match_signature(SIGNATURES, text, target)


@settings(max_examples=2000, deadline=None)
@given(FOLDY)
def test_scanner_signature_is_match_signature_random(text: str) -> None:
    scanner = Scanner(lambda url: None, SIGNATURES)
    assert scanner._signature(text, "script") == match_signature(SIGNATURES, text, "script")


# ---- absolute references are asked as written (joined only for the finding)

HOSTISH = st.lists(
    st.sampled_from(
        list("aZ09-_~%.")
        + ["%2e", "%41", "xn--", "\u3002", "\uff0e", "\xe9", "0x7f", "127", "256", "[::1]",
           "[::ffff:1.2.3.4]", "@", ":", "EVIL", "example", "com", "\x01"]
    ),
    min_size=1,
    max_size=12,
).map("".join)  # fmt: skip
PATHISH = st.lists(
    st.sampled_from(
        list("/aZ.%?#&=;:@!$*,+-_~\x01\x7f") + ["..", "%2e%2e", "%2F", "\xe9", "//", "/./"]
    ),
    max_size=12,
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["", "http:", "https:", "ws:", "wss:", "ftp:", "xhttp:"]), HOSTISH, PATHISH)
def test_a_reference_canonicalizes_as_its_joined_url(scheme: str, host: str, path: str) -> None:
    """The engine canonicalizes what the scanner asks: asking the reference as written
    is asking its joined URL (WHATWG parsing is idempotent)."""
    text = f"'{scheme}//{host}{path}'"
    for m in _URL_REF.finditer(text):
        ref = _url_scheme(text, m.start()) + m.group()
        url = _resolve("http://page.example/a/b", ref)
        assert canon(ref) == (canon(url) if url is not None else "error"), (ref, url)


def canon(url: str) -> object:
    try:
        return canonicalize_url(url)
    except CanonError:
        return "error"
