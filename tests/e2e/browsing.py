"""What the real-browser tests share: pages served by name, Chromium through a proxy, and
the control that shows an attack works before the test shows jectguard stops it.

The control matters: a test that only shows "no request for the attacker" would pass
if the page were simply broken. Each attack is first loaded through the same proxy with
stripping off (``proxy_nostrip``, in conftest), and Chromium must ask for the attacker
there; only then is the absence of that request through ``jectguard run`` evidence.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from .conftest import NAV_TIMEOUT_MS, ByteCounter, Proxy, Served, serve_app

# After "load": time for a late request toward the attacker (absence needs a window).
SETTLE_SECONDS = 0.5
EVENT_TIMEOUT = 10.0
# How long the control page may take to ask for the attacker.
CONTROL_TIMEOUT = 5.0
# A page's own script: it must still run once the injected one is gone.
OWN = (
    '<p id="own">own script did not run</p>\n'
    "<script>document.getElementById('own').textContent = 'own script ran';</script>\n"
)


def page_html(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body>\n{body}\n</body></html>\n"
    )


@contextlib.contextmanager
def serve_pages(
    tmp_path_factory: pytest.TempPathFactory, name: str, body: Callable[[str], bytes | None]
) -> Iterator[Served]:
    """Serve ``/{page}`` as ``body(page)`` (None: 404), HTML, never cached; HTTP and HTTPS."""

    async def page(request: web.Request) -> web.Response:
        data = body(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    app = web.Application()
    app.router.add_get("/{name}", page)
    with serve_app(app, tmp_path_factory.mktemp(name), name) as served:
        yield served


def get(proxy_port: int, url: str) -> bytes:
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


def strip_events(proxy: Proxy, url: str) -> list[dict[str, Any]]:
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


def wait_for_strip_events(proxy: Proxy, url: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while time.monotonic() < deadline:
        found = strip_events(proxy, url)
        if found:
            return found
        time.sleep(0.05)
    return []


def open_page(browser: Any, proxy: Proxy, url: str) -> tuple[Any, Any]:
    """A new Chromium context through ``proxy`` with ``url`` loaded: (context, page)."""
    context = browser.new_context(proxy={"server": proxy.url}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(NAV_TIMEOUT_MS)
    page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    return context, page


def attacker_requests(proxy: Proxy, attacker_url: str) -> list[str]:
    """Proxy log lines showing a request for the attacker (its ip:port is unique per test).

    Log lines, not block events: events carry the canonical URL, which drops the port.
    Strip events name the URL too, as the removed element's: those are not requests.
    """
    where = attacker_url.split("/")[2]
    return [
        line for line in proxy.output().splitlines()
        if where in line and '"event":"strip"' not in line
    ]  # fmt: skip


def control_then_stripped(
    browser: Any,
    proxy: Proxy,
    proxy_nostrip: Proxy,
    attacker: ByteCounter,
    url: str,
    attacker_url: str,
) -> str:
    """Chromium asks for the attacker through ``proxy_nostrip``, never through ``proxy``
    (and the page's own script still runs there); returns the stripped page's HTML."""
    context, page = open_page(browser, proxy_nostrip, url)
    try:
        assert page.inner_text("#own") == "own script ran"
        deadline = time.monotonic() + CONTROL_TIMEOUT
        while not attacker_requests(proxy_nostrip, attacker_url):
            assert time.monotonic() < deadline, "the control page never requested the attacker"
            time.sleep(0.05)
    finally:
        context.close()
    context, page = open_page(browser, proxy, url)
    try:
        assert page.inner_text("#own") == "own script ran"
        time.sleep(SETTLE_SECONDS)
        html: str = page.content()
    finally:
        context.close()
    assert attacker_requests(proxy, attacker_url) == []
    assert attacker.connections == 0
    events = wait_for_strip_events(proxy, url)
    assert any(e["removed"] is True for e in events), events
    return html
