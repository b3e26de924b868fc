"""A real browser on the block page, a clean page and the admin dashboard.

Headless Debian Chromium (``/usr/bin/chromium``, driven by ``playwright``; nothing is
downloaded) goes through ``jectguard run`` (interception on, a known admin token):

- a blocked ``http://`` and an intercepted ``https://`` URL show the block page with the
  URL, list, rule, category and a request id, and no script can run on it (its CSP);
- a clean page from a local origin renders and runs its own scripts;
- the dashboard, opened directly on the admin port, takes the token, lists the test
  lists, shows the block that just happened (same request id as the page), draws the
  chart, answers the check box (``block`` with the rule, ``pass``), stays signed in
  across a reload (session storage) and rejects a wrong token without showing data.

Screenshots go to ``test-artifacts/``. Skipped only when Chromium or playwright is
missing; with ``CI`` or ``JG_REQUIRE_BROWSER`` set, that is a failure instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import ARTIFACTS, NAV_TIMEOUT_MS, Proxy, free_port, serve_app, start_proxy

# How long a dashboard element may take to appear (it fetches the API after sign-in).
UI_TIMEOUT_MS = 10_000
ADMIN_TOKEN = "jg-dash-e2e-token-0123456789abcdef"
WRONG_TOKEN = "jg-dash-e2e-wrong-token-000000000"  # long enough for the input's minlength

BLOCKED_HTTP = "http://evil.test/jg-dash/http-case?x=1"
BLOCKED_HTTPS = "https://evil.test/jg-dash/https-case"

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Clean page</title>
<script src="/app.js"></script>
</head><body>
<h1>A clean page</h1>
<p id="inline">inline script did not run</p>
<p id="ext">external script did not run</p>
<script>document.getElementById("inline").textContent = "inline script ran";</script>
</body></html>
"""
APP_JS = (
    'window.addEventListener("DOMContentLoaded", () => {'
    ' document.getElementById("ext").textContent = "external script ran"; });'
)


# -- the clean origin -------------------------------------------------------------


@dataclass
class Site:
    port: int = 0
    tls_port: int = 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A clean origin (HTTP and HTTPS on 127.0.0.1): a page and its own script."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    async def app_js(request: web.Request) -> web.Response:
        return web.Response(text=APP_JS, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/app.js", app_js)
    s = Site()
    with serve_app(app, tmp_path_factory.mktemp("jg_dash_site"), "jg-dash-site") as served:
        s.port, s.tls_port = served.port, served.tls_port
        yield s


# -- the proxy and its admin port ----------------------------------------------------


@dataclass
class Admin:
    proxy: Proxy
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Admin]:
    """``jectguard run`` with interception, a known admin token and a known admin port."""
    tmp = tmp_path_factory.mktemp("jg_dash_proxy")
    token_file = tmp / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    p = start_proxy(
        tmp,
        "--sources",
        str(lists_dir / "sources.toml"),
        "--set",
        "ssl_insecure=true",  # tests only: the origin's certificate is self-signed
        "--admin-contact",
        "it@example.org",
        "--admin-port",
        str(port),  # after start_proxy's own: the last one wins
        "--admin-token-file",
        str(token_file),
    )
    try:
        yield Admin(p, port)
    finally:
        p.stop()


# -- the browser ----------------------------------------------------------------------


@pytest.fixture
def proxied(browser: Any, admin: Admin) -> Iterator[Any]:
    """A page whose traffic goes through the proxy."""
    context = browser.new_context(
        proxy={"server": admin.proxy.url},
        ignore_https_errors=True,  # tests only: the proxy's CA is a throwaway
    )
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        yield page
    finally:
        context.close()


@pytest.fixture
def direct(browser: Any) -> Iterator[Any]:
    """A fresh context without a proxy (and with empty session storage) for the dashboard."""
    context = browser.new_context()
    try:
        yield context
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# -- the block page -------------------------------------------------------------------


@dataclass
class BlockPage:
    status: int
    csp: str
    fields: dict[str, str]
    scripts: int
    injected_script_ran: bool


def open_block_page(page: Any, url: str, shot: str) -> BlockPage:
    response = page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    assert response is not None
    screenshot(page, shot)
    terms = page.locator("dl dt").all_inner_texts()
    values = page.locator("dl dd").all_inner_texts()
    # A script element added now must be refused by the page's CSP (no 'unsafe-inline').
    ran = page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__jgRan = true'; document.body.appendChild(s);"
        " return window.__jgRan === true; }"
    )
    return BlockPage(
        status=response.status,
        csp=response.headers.get("content-security-policy", ""),
        fields=dict(zip(terms, values, strict=True)),
        scripts=page.evaluate("() => document.scripts.length"),
        injected_script_ran=ran,
    )


def check_block_page(page: Any, b: BlockPage, url: str) -> None:
    from playwright.sync_api import expect

    assert b.status == 403
    expect(page.get_by_role("heading", name="This site was blocked")).to_be_visible()
    assert b.fields["Blocked address"] == url
    assert b.fields["List"] == "e2e-domains"
    assert b.fields["Rule"].startswith("evil.test")
    assert b.fields["Category"] == "malware"
    assert re.fullmatch(r"[0-9a-f]{12}", b.fields["Request ID"]), b.fields
    # The id is also in the text a person is asked to quote, and visible.
    expect(page.get_by_text(b.fields["Request ID"]).first).to_be_visible()
    # No scripts: none on the page, and the CSP refuses any that gets added.
    assert "default-src 'none'" in b.csp and "script-src" not in b.csp
    assert b.scripts == 1  # only the one this test just appended...
    assert b.injected_script_ran is False  # ...which the CSP refused to run


@pytest.fixture(scope="module")
def http_block(browser: Any, admin: Admin) -> dict[str, str]:
    """The HTTP block the dashboard must then show (the fields of its block page)."""
    context = browser.new_context(proxy={"server": admin.proxy.url})
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        b = open_block_page(page, BLOCKED_HTTP, "dash-block-http.png")
        check_block_page(page, b, BLOCKED_HTTP)
        return b.fields
    finally:
        context.close()


def test_block_page_over_http(http_block: dict[str, str]) -> None:
    # The checks ran in the fixture (the dashboard test needs the same block); this
    # test reports them under their own name.
    assert http_block["Blocked address"] == BLOCKED_HTTP


def test_block_page_over_intercepted_https(proxied: Any) -> None:
    b = open_block_page(proxied, BLOCKED_HTTPS, "dash-block-https.png")
    assert proxied.url == BLOCKED_HTTPS  # the browser shows the https:// address itself
    check_block_page(proxied, b, BLOCKED_HTTPS)


# -- a clean page -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_clean_page_renders_through_the_proxy(proxied: Any, site: Site, scheme: str) -> None:
    from playwright.sync_api import expect

    port = site.port if scheme == "http" else site.tls_port
    response = proxied.goto(f"{scheme}://good.test:{port}/page", wait_until="load")
    assert response is not None and response.status == 200
    expect(proxied.locator("#inline")).to_have_text("inline script ran")
    expect(proxied.locator("#ext")).to_have_text("external script ran")
    assert "X-Jectguard-Block".lower() not in response.headers
    screenshot(proxied, f"dash-clean-{scheme}.png")


# -- the dashboard ------------------------------------------------------------------------


def sign_in(page: Any, token: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#login")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.locator("#token").fill(token)
    page.locator("#login-form button[type=submit]").click()


def check_url(page: Any, url: str) -> dict[str, str]:
    """Use the "check a URL" box; the answer as {term: value}."""
    from playwright.sync_api import expect

    result = page.locator("#check-result")
    page.locator("#check-url").fill(url)
    page.locator("#check-form button[type=submit]").click()
    expect(result.locator("dd").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(result).to_contain_text(url.split("//", 1)[-1].split("/", 1)[0])  # this answer
    terms = result.locator("dt").all_inner_texts()
    values = result.locator("dd").all_inner_texts()
    return dict(zip(terms, values, strict=True))


def test_dashboard(direct: Any, admin: Admin, http_block: dict[str, str]) -> None:
    from playwright.sync_api import expect

    page = direct.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda m: (
            problems.append(f"console: {m.text}") if "Content Security Policy" in m.text else None
        ),
    )
    page.goto(admin.url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    sign_in(page, ADMIN_TOKEN)

    expect(page.locator("#panels")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#summary")).to_contain_text("ready")

    # The lists table names every test list, with its category.
    lists = page.locator("#lists tbody tr")
    for name in ("e2e-domains", "e2e-urls", "e2e-ips", "e2e-watch", "e2e-allow"):
        expect(lists.filter(has_text=name)).to_have_count(1)
    expect(lists.filter(has_text="e2e-domains")).to_contain_text("malware")

    # The block the browser just saw, found by the request id on its block page.
    row = page.locator("#events tbody tr").filter(has_text=http_block["Request ID"])
    expect(row).to_have_count(1)
    expect(row).to_contain_text("block")
    expect(row).to_contain_text("http://evil.test/jg-dash/http-case")
    expect(row).to_contain_text("e2e-domains: evil.test")

    # The chart is an SVG with a bar for the blocks of the last minutes.
    expect(page.locator("#chart svg")).to_have_count(1)
    expect(page.locator("#chart svg rect.bar-block").first).to_be_attached()

    blocked = check_url(page, "http://evil.test/some/path")
    assert blocked["verdict"] == "block"
    assert blocked["rule"] == "evil.test" and blocked["list"] == "e2e-domains"
    assert blocked["category"] == "malware"
    clean = check_url(page, "http://good.test/fine")
    assert clean["verdict"] == "pass"
    assert "rule" not in clean
    screenshot(page, "dash-dashboard.png")

    # Signed in for the rest of the tab's life: a reload does not ask again.
    page.reload(wait_until="load")
    expect(page.locator("#panels")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#lists tbody tr").filter(has_text="e2e-domains")).to_have_count(1)
    assert problems == []


def test_dashboard_rejects_a_wrong_token(direct: Any, admin: Admin) -> None:
    from playwright.sync_api import expect

    page = direct.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(admin.url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    sign_in(page, WRONG_TOKEN)
    expect(page.locator("#login-error")).to_contain_text("token was rejected")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#panels")).to_be_hidden()
    expect(page.locator("#lists tbody tr")).to_have_count(0)
    expect(page.locator("#events tbody tr")).to_have_count(0)
    assert page.evaluate("() => sessionStorage.length") == 0  # the bad token is not kept
    screenshot(page, "dash-wrong-token.png")
