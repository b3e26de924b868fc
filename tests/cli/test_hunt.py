"""``jectguard hunt retro`` and ``jectguard hunt host`` over a real SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy_addons.cli import main
from proxy_addons.telemetry.ledger import LEDGER_FILE, Ledger, SightingBatch

NOW_ISH = 1_780_000_000.0


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    led = Ledger(tmp_path / LEDGER_FILE)
    b = SightingBatch()
    b.add("evil.example", "10.0.0.1", "alice", NOW_ISH)
    b.add("cdn.evil.example", "10.0.0.2", None, NOW_ISH + 1)
    b.add("notevil.example", "10.0.0.3", "bob", NOW_ISH + 2)
    b.add("203.0.113.5", "10.0.0.4", "eve", NOW_ISH + 3)
    led.write(b.take())
    rule = "evil.example\x1b[2J"  # rules come from feeds: a terminal must not obey them
    led.record_hits([("evil.example", "feed", rule, "malware", "domain", "enforce")], NOW_ISH + 10)
    led.close()
    return tmp_path


def test_host_lists_the_host_and_its_subdomains(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hunt", "host", "EVIL.example.", "--json", "--cache-dir", str(cache)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["host"], r["client"], r["user"]) for r in rows] == [
        ("evil.example", "10.0.0.1", "alice"),
        ("cdn.evil.example", "10.0.0.2", None),
    ]
    assert main(["hunt", "host", "203.0.113.5", "--cache-dir", str(cache)]) == 0
    assert "eve" in capsys.readouterr().out


def test_retro_lists_hits_with_who_and_escapes_control_characters(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --since counts back from now; the fixture's hit is older than a day: a long window
    assert main(["hunt", "retro", "--since", "3650", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "evil.example" in out and "alice" in out and "\x1b" not in out
    assert main(["hunt", "retro", "--since", "3650", "--json", "--cache-dir", str(cache)]) == 0
    [doc] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert doc["users"] == ["alice"] and doc["list"] == "feed"
    assert main(["hunt", "retro", "--since", "1", "--json", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out == ""


def test_exit_codes(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No ledger is the environment (3), as for every command; 1 means "found" elsewhere.
    assert main(["hunt", "retro", "--cache-dir", str(tmp_path / "none")]) == 3
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # reading never creates a ledger
    assert main(["hunt", "retro", "--since", "0", "--cache-dir", str(cache)]) == 2
    assert main(["hunt", "host", "not a host", "--cache-dir", str(cache)]) == 2
