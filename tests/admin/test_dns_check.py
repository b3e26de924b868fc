"""A bare DNS name through `/api/check?name=` and `jectguard check`: what DNS mode answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.core.dnspolicy import (
    BlockAnswer,
    LogBudget,
    NameServer,
    RateLimiter,
    parse_block_answer,
    parse_name_server,
)

JECTGUARD = Path(sys.executable).with_name("jectguard")


def test_check_command_says_what_dns_answers(tmp_path: Path) -> None:
    block = tmp_path / "block.txt"
    block.write_text("evil.example\nhttp://shared.example/malware.exe\nhttp://whole.example/\n")
    res = subprocess.run(
        [str(JECTGUARD), "check", "--json", "--blocklist", str(block),
         "evil.example", "shared.example", "http://evil.example/x", "whole.example"],
        capture_output=True, text=True, timeout=60,
        env={"JECTGUARD_CACHE_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    # shared.example: one file on a shared host never blocks the name; whole.example: a
    # URL rule for "/" covers every path of the host, so it is a rule for the whole host.
    assert [r.get("dns") for r in rows] == ["block", "pass", None, "block"], res.stderr
    assert rows[1]["verdict"] == "pass"


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    from tests.admin import test_app

    state = test_app.state.__wrapped__(test_app.make_engine())  # type: ignore[attr-defined]
    from proxy_addons.admin.app import create_app

    return await aiohttp_client(create_app(state))


async def test_api_check_name(client: Any) -> None:
    from tests.admin.test_app import AUTH

    r = await client.get("/api/check", params={"name": "www.evil.test"}, headers=AUTH)
    body = await r.json()
    assert r.status == 200 and body["dns"] is True and body["verdict"] == "block"
    r = await client.get("/api/check", params={"name": "good.test"}, headers=AUTH)
    assert (await r.json())["verdict"] == "pass"  # good.test/bad/ is a URL rule: not a name rule
    for bad in ("", "a\nb", "x" * 5000):
        r = await client.get("/api/check", params={"name": bad}, headers=AUTH)
        assert r.status == 400


# -- the pure policy ---------------------------------------------------------------


def test_block_answer_parsing() -> None:
    assert parse_block_answer(" NXDOMAIN ") is BlockAnswer.NXDOMAIN
    with pytest.raises(ValueError, match="zero, nxdomain, refused"):
        parse_block_answer("sinkhole")


@pytest.mark.parametrize(
    "spec, want",
    [
        ("1.1.1.1", NameServer("1.1.1.1", 53)),
        ("127.0.0.1:5353", NameServer("127.0.0.1", 5353)),
        ("::1", NameServer("::1", 53)),
        ("[2001:db8::1]:5353", NameServer("2001:db8::1", 5353)),
    ],
)
def test_name_servers(spec: str, want: NameServer) -> None:
    assert parse_name_server(spec) == want


@pytest.mark.parametrize(
    "spec", ["dns.example", "1.1.1.1:0", "1.1.1.1:99999", "[::1", "[::1]x", ""]
)
def test_bad_name_servers(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_name_server(spec)


def test_rate_limiter_bursts_refills_and_stays_bounded() -> None:
    rl = RateLimiter(10, max_clients=100)
    assert sum(rl.allow("a", 0.0) for _ in range(100)) == 40  # a burst of 4x the rate
    assert not rl.allow("a", 0.0)
    assert rl.allow("b", 0.0)  # another client is not affected
    assert sum(rl.allow("a", 1.0) for _ in range(100)) == 10  # one second refills 10
    for i in range(1000):
        rl.allow(f"spoofed-{i}", 2.0)
    assert len(rl) == 100
    assert all(RateLimiter(0).allow("x", 0.0) for _ in range(10_000))


def test_log_budget() -> None:
    b = LogBudget(per_minute=3)
    assert [b.take(0.0)[0] for _ in range(5)] == [True, True, True, False, False]
    assert b.take(60.0) == (True, 2)  # the next minute says how many were held back
