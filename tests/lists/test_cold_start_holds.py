"""A rollback sticks through a cold start that cannot load the snapshot in force.

When the current snapshot does not load (damaged, late on a shared volume) and every
list is at hand, a process compiles the lists itself: it must compile them as the
refresher would publish them, with the record in force (holds, kept bodies), not the
plain files, or the body a rollback took out comes back into force (red team).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_addons.lists.sources import load_sources
from proxy_addons.lists.store import SnapshotStore, startup_engine

JECTGUARD = Path(sys.executable).with_name("jectguard")


def jg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JECTGUARD_RUNTIME_DIR": str(root / "runtime")}
    return subprocess.run(
        [
            str(JECTGUARD),
            *args,
            "--sources",
            str(root / "sources.toml"),
            "--cache-dir",
            str(root / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def verdict(root: Path, url: str) -> str:
    r = jg(root, "check", "--json", url)
    assert r.returncode in (0, 1), r.stderr
    return str(json.loads(r.stdout)["verdict"])


def damage_current(root: Path) -> None:
    current = SnapshotStore(root / "cache").current_path()
    assert current is not None
    fd = os.open(current, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff\xff\xff\xff", current.stat().st_size - 64)  # in place, in the body
    finally:
        os.close(fd)


@pytest.fixture
def rolled_back(tmp_path: Path) -> Path:
    (tmp_path / "sources.toml").write_text(
        '[[source]]\nname = "local"\npath = "local.txt"\nformat = "domains"\n'
    )
    (tmp_path / "local.txt").write_text("evil.example\n")
    assert jg(tmp_path, "update").returncode == 0
    # A bad edit (a real login host), published, then rolled back; the file still has it.
    (tmp_path / "local.txt").write_text("evil.example\ngoogle.test\n")
    assert jg(tmp_path, "update").returncode == 0
    assert verdict(tmp_path, "http://google.test/") == "block"
    r = jg(tmp_path, "rollback")
    assert r.returncode == 0, r.stderr
    assert verdict(tmp_path, "http://google.test/") == "pass"
    return tmp_path


def test_a_held_local_list_stays_rolled_back_when_the_snapshot_does_not_load(
    rolled_back: Path,
) -> None:
    damage_current(rolled_back)
    assert verdict(rolled_back, "http://google.test/") == "pass"  # came back before the fix
    assert verdict(rolled_back, "http://evil.example/") == "block"
    # The same in a proxy's start-up (what `jectguard run` serves until the file loads).
    os.environ["JECTGUARD_RUNTIME_DIR"] = str(rolled_back / "runtime")
    try:
        cfg = load_sources(rolled_back / "sources.toml")
        engine, _ = startup_engine(cfg.enabled(), rolled_back / "cache")
    finally:
        del os.environ["JECTGUARD_RUNTIME_DIR"]
    assert not engine.check_url("http://google.test/").blocked
    assert engine.check_url("http://evil.example/").blocked


def test_editing_the_held_list_still_ends_the_hold_at_a_cold_start(rolled_back: Path) -> None:
    (rolled_back / "local.txt").write_text("evil.example\nnew-bad.example\n")
    damage_current(rolled_back)
    assert verdict(rolled_back, "http://new-bad.example/") == "block"
    assert verdict(rolled_back, "http://google.test/") == "pass"


def test_a_kept_body_that_does_not_match_its_digest_is_not_compiled(rolled_back: Path) -> None:
    """The copy kept for a rollback is only used if its bytes are the ones its name says."""
    store = SnapshotStore(rolled_back / "cache")
    record = store.read_record()
    assert record is not None and "local" in record.holds
    hold = record.holds["local"]
    assert hold.restored is not None
    kept = store.body_path("local", hold.restored)
    os.chmod(kept, 0o644)
    kept.write_text("evil.example\ngoogle.test\n")  # changed under its name
    damage_current(rolled_back)
    r = jg(rolled_back, "check", "--json", "http://google.test/")
    assert json.loads(r.stdout)["verdict"] == "pass", r.stdout
