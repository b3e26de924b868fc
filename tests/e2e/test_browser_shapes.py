"""URL shapes and assembled URLs that Chromium loads from a blocked origin, stripped.

The unit cases are in tests/core/test_htmlscan_shapes.py. Here, for a sample of each
class, a control proxy with stripping off shows that Chromium really requests the
attacker (an address on the test's IP list, whose request the blocking addon
refuses) from the page as served, and the real ``jectguard run`` removes the element
first: no request for the attacker, the page's own script still runs, and a
``strip`` event with ``removed: true``.

- URL shapes the WHATWG parser resolves: backslashes, a tab inside the host,
  a percent-encoded host, an IPv4 address as one hex number, a newline inside the
  host in a JavaScript string;
- URLs that JavaScript assembles from literals: a concatenation across a comment,
  a template literal with a literal substitution, ``[...].join('.')``,
  ``String.fromCharCode``, ``atob``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .browsing import (
    OWN,
    control_then_stripped,
    page_html,
    serve_pages,
)
from .conftest import ATTACKER_IP, ByteCounter, Proxy


@dataclass(frozen=True)
class Target:
    ip: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}/{self.path}"


def _image(src_expression: str) -> str:
    return f"<script>new Image().src = {src_expression};</script>"


def _tab_in_host(t: Target) -> str:
    return f'<script src="http://{t.ip[0]}&#9;{t.ip[1:]}:{t.port}/{t.path}"></script>'


def _percent_host(t: Target) -> str:
    return f'<iframe src="http://%{ord(t.ip[0]):02x}{t.ip[1:]}:{t.port}/{t.path}"></iframe>'


def _hex_ip(t: Target) -> str:
    number = hex(int(ipaddress.IPv4Address(t.ip)))
    return (
        "<script>var s = document.createElement('script');"
        f"s.src = 'http://{number}:{t.port}/{t.path}'; document.head.appendChild(s);</script>"
    )


def _char_codes(text: str) -> str:
    return ", ".join(str(ord(c)) for c in text)


SHAPES: dict[str, Callable[[Target], str]] = {
    "backslashes": lambda t: f'<script src="http:\\\\{t.ip}:{t.port}\\{t.path}"></script>',
    "tab-in-host": _tab_in_host,
    "percent-host": _percent_host,
    "hex-ip": _hex_ip,
    "newline-in-host": lambda t: _image(f"'http://{t.ip[0]}\\n{t.ip[1:]}:{t.port}/{t.path}'"),
    "comment-concat": lambda t: _image(f"'ht' + /* x */ 'tp://{t.ip}:{t.port}/{t.path}'"),
    "template-join": lambda t: _image(
        "`http://${[" + ", ".join(f"'{p}'" for p in t.ip.split(".")) + "].join('.')}"
        f":{t.port}/{t.path}`"
    ),
    "from-char-code": lambda t: _image(
        f"'http://' + String.fromCharCode({_char_codes(t.ip)}) + ':{t.port}/{t.path}'"
    ),
    "atob": lambda t: _image(f"atob('{base64.b64encode(t.url.encode()).decode()}')"),
}


@dataclass
class Site:
    port: int = 0
    target: Target | None = None

    def body(self, name: str) -> bytes:
        assert self.target is not None
        return page_html("Shop", OWN + SHAPES[name](self.target)).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site()
    with serve_pages(
        tmp_path_factory, "shapes", lambda name: s.body(name) if name in SHAPES else None
    ) as served:
        s.port = served.port
        yield s


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_chromium_loads_is_stripped(
    browser: Any, proxy: Proxy, proxy_nostrip: Proxy,
    site: Site, attacker: ByteCounter, name: str,
) -> None:  # fmt: skip
    assert ATTACKER_IP is not None
    site.target = Target(ATTACKER_IP, attacker.port, f"{name}.js")
    url = f"http://good.test:{site.port}/{name}"
    # The control (stripping off) asks for the attacker; jectguard strips first.
    control_then_stripped(browser, proxy, proxy_nostrip, attacker, url, site.target.url)
