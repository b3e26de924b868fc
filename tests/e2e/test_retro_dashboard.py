"""The dashboard's Retro-hunt panel in a real browser: hits shown as text, never markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy_addons.admin.app import AdminState, create_app
from proxy_addons.core.engine import Engine
from proxy_addons.core.model import ListSpec, ParsedList, Rule, RuleKind
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

from .conftest import NAV_TIMEOUT_MS, serve_app

TOKEN = "d" * 40
# A host and a user as traffic could carry them: the page must show them, not run them.
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
HITS = [{
    "event": "retro-hit", "host": "cdn.evil.example", "rule": "evil.example", "list": "urlhaus",
    "category": "malware", "kind": "domain", "mode": "enforce", "found_at": "2026-12-06T05:30:00Z",
    "clients": [{"host": "cdn.evil.example", "client": "10.0.0.7", "user": HOSTILE,
                 "first": "2026-12-04T09:12:00Z", "last": "2026-12-05T17:40:00Z", "count": 14}],
    "users": [HOSTILE],
}]  # fmt: skip


def test_retro_panel_lists_hits_as_text(browser: Any, tmp_path: Path) -> None:
    rules = [Rule(RuleKind.DOMAIN, "a.example", "a.example", 1)]
    engine = Engine.from_lists([(ListSpec("feed"), ParsedList("domains", rules))])[0]
    state = AdminState(token=TOKEN, engine=lambda: engine, events=EventLog(), metrics=Metrics(),
                       retro_hits=lambda since: HITS)  # fmt: skip
    with serve_app(create_app(state), tmp_path, "admin") as served:
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{served.port}/", timeout=NAV_TIMEOUT_MS)
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            page.wait_for_selector("#retro tbody td.url", timeout=NAV_TIMEOUT_MS)
            row = page.inner_text("#retro tbody tr")
            assert "cdn.evil.example" in row and "urlhaus: evil.example" in row
            assert "10.0.0.7" in row and "×14" in row and HOSTILE in row
            assert page.title() != "pwned" and page.query_selector("#retro img") is None
        finally:
            page.close()
