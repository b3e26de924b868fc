"""The dashboard shows what a rollback holds, from the same record `jectguard lists` reads.

A cache is prepared as an operator would (``jectguard update`` from a local feed server, a bad
update, ``jectguard rollback``), then ``jectguard run`` serves it and headless Debian Chromium
signs in to the dashboard.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.feedserver import FeedServer, feed_server, sources_toml

from .conftest import NAV_TIMEOUT_MS, free_port, start_proxy
from .test_dashboard_browser import sign_in

JECTGUARD = Path(sys.executable).with_name("jectguard")
TOKEN = "jg-holds-e2e-token-0123456789abcdef"
UI_TIMEOUT_MS = 10_000


def domains(n: int) -> bytes:
    return "".join(f"bad{i}.example\n" for i in range(n)).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with feed_server() as s:
        yield s


def jg(*args: str, cache: Path, src: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(JECTGUARD), *args, "--sources", str(src), "--cache-dir", str(cache)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_dashboard_shows_a_held_source(browser: Any, server: FeedServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server.feed("holdfeed", domains(100))
    src = tmp_path / "sources.toml"
    src.write_text(sources_toml(server, {"holdfeed": "domains"}))
    cache = tmp_path / "cache"  # where start_proxy points the proxy
    assert jg("update", cache=cache, src=src).returncode == 0
    server.feeds["holdfeed"].body = domains(100) + b"login.microsoftonline.com\n"
    assert jg("update", cache=cache, src=src).returncode == 0
    assert jg("rollback", cache=cache, src=src).returncode == 0
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proxy = start_proxy(
        tmp_path,
        "--sources",
        str(src),
        "--refresh-role",
        "watch",
        "--admin-port",
        str(port),
        "--admin-token-file",
        str(token_file),
    )
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=NAV_TIMEOUT_MS)
        sign_in(page, TOKEN)
        row = page.locator("#lists tbody tr").filter(has_text="holdfeed")
        expect(row).to_contain_text("held (rollback)")
        expect(row).to_contain_text("rolled back from block-")
        box = page.locator("#in-force")
        expect(box).to_contain_text("Held: holdfeed")
        expect(box).to_contain_text("jectguard rollback --release holdfeed")
        expect(box).to_contain_text("Rolled back from block-")
    finally:
        context.close()
        proxy.stop()
