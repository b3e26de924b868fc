"""Proceed anyway in a real browser: a person's two clicks work, a page's script cannot.

Headless Debian Chromium through ``jectguard run --set jg_proceed_anyway=true``.
A person clicks "Continue anyway" on the block page, then the button on the
proxy's own confirmation page, and lands on the site. A script on a compromised
page of a partly listed host (a URL rule, ``good.test/bad/``) tries what the review
found worked before: fetch the blocked URL and read its form, fetch the
confirmation page, post a form; it gets no token and no grant.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    NAV_TIMEOUT_MS,
    Origin,
    Proxy,
    _origin_app,
    raw_exchange,
    serve_app,
    start_proxy,
    status_of,
)

PROCEED = "proceed.jectguard.invalid"


@pytest.fixture(scope="module")
def proceed_proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("proceed"),
        "--sources",
        str(lists_dir / "sources.toml"),
        "--set",
        "ssl_insecure=true",
        "--set",
        "jg_proceed_anyway=true",
    )
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """An origin of this module's own: a granted person does reach evil.test here,
    which the session origin's "never saw a blocked host" check must not count."""
    o = Origin()
    with serve_app(_origin_app(o), tmp_path_factory.mktemp("proceed-origin"), "proceed") as s:
        o.port, o.tls_port, o.cert = s.port, s.tls_port, s.cert
        yield o


def _context(browser: Any, proxy: Proxy) -> Any:
    return browser.new_context(proxy={"server": proxy.url}, ignore_https_errors=True)


# A grant is per client and host: each scheme gets a host of its own.
@pytest.mark.parametrize(("scheme", "host"), [("http", "evil.test"), ("https", "www.evil.test")])
def test_a_person_proceeds_with_two_clicks(
    browser: Any, proceed_proxy: Proxy, origin: Origin, scheme: str, host: str
) -> None:
    port = origin.port if scheme == "http" else origin.tls_port
    url = f"{scheme}://{host}:{port}/page-{scheme}"
    context = _context(browser, proceed_proxy)
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        r = page.goto(url)
        assert r is not None and r.status == 403
        assert "sig" not in page.content()  # no token on the blocked site's origin
        page.click('button:has-text("Continue anyway")')
        page.wait_for_url(f"*://{PROCEED}/*")
        assert f"Continue to {host}" in page.content()
        page.click(f'button:has-text("Continue to {host}")')
        page.wait_for_url(url)
        assert f"origin ok {host}:{port} /page-{scheme}" in page.inner_text("body")
    finally:
        context.close()
    assert "proceed-anyway granted" in proceed_proxy.output()


FORGERY = """async ([blocked, proceed]) => {
  const out = {};
  const r = await fetch(blocked, {credentials: "include"});
  out.blockedStatus = r.status;
  out.blockedBody = await r.text();
  try {
    const c = await fetch(proceed + "?host=good.test&return=" + encodeURIComponent(blocked));
    out.cors = await c.text();
  } catch (e) { out.cors = "refused: " + e.name; }
  try {
    const o = await fetch(proceed + "?host=good.test&return=" + encodeURIComponent(blocked),
                          {mode: "no-cors"});
    out.opaque = o.type;  // an opaque response: nothing in it can be read
  } catch (e) { out.opaque = "refused: " + e.name; }
  try {
    const p = await fetch(proceed, {method: "POST", body: new URLSearchParams(
      {host: "good.test", exp: "9999999999", sig: "x", return: blocked})});
    out.post = p.status;
  } catch (e) { out.post = "refused: " + e.name; }
  return out;
}"""


def test_a_script_on_the_page_cannot_grant_itself(
    browser: Any, proceed_proxy: Proxy, origin: Origin
) -> None:
    base = f"http://good.test:{origin.port}"
    blocked = f"{base}/bad/payload.js"
    context = _context(browser, proceed_proxy)
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        page.goto(f"{base}/compromised")  # allowed: the rule covers /bad/ only
        out = page.evaluate(FORGERY, [blocked, f"http://{PROCEED}/"])
        assert out["blockedStatus"] == 403 and "sig" not in out["blockedBody"]
        assert out["cors"].startswith("refused")
        assert out["opaque"] == "opaque" or out["opaque"].startswith("refused")
        assert out["post"] != 303
        # and a form the script submits itself (a top-level navigation, but no click)
        page.evaluate(
            """(action) => { const f = document.createElement("form"); f.method = "post";
            f.action = action; for (const [k, v] of Object.entries({host: "good.test",
            exp: "9999999999", sig: "x"})) { const i = document.createElement("input");
            i.name = k; i.value = v; f.appendChild(i); } document.body.appendChild(f);
            f.submit(); }""",
            f"http://{PROCEED}/",
        )
        page.wait_for_url(f"*://{PROCEED}/*")
        assert "proceed anyway refused" in page.inner_text("body")
        r = page.goto(blocked)
        assert r is not None and r.status == 403  # still blocked: no grant was made
    finally:
        context.close()
    assert "may reach good.test" not in proceed_proxy.output()
    assert "refused proceed-anyway" in proceed_proxy.output()


def test_a_client_without_fetch_metadata_reads_no_token(
    proceed_proxy: Proxy, origin: Origin
) -> None:
    """Safari before 16.4 and Firefox before 90 send no Sec-Fetch-*: a page's fetch() with
    ``Accept: text/html`` got the whole block page, token included, on the page's origin."""
    blocked = f"http://good.test:{origin.port}/bad/x.js"
    resp = raw_exchange(
        proceed_proxy.port,
        f"GET {blocked} HTTP/1.1\r\nHost: good.test:{origin.port}\r\nAccept: text/html\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert status_of(resp) == 403 and b"Continue anyway" in resp
    assert b'name="sig"' not in resp and b'name="exp"' not in resp
