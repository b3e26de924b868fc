"""The snapshot store: publish, current pointer, rollback, pruning, refusing corrupt snapshots."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from proxy_addons.core.engine import split_exceptions
from proxy_addons.core.errors import SnapshotError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.index import HEADER_SIZE, compile_index
from proxy_addons.core.model import ListSpec
from proxy_addons.store import (
    NoSnapshot,
    SnapshotStore,
    list_inputs,
    load_engine,
    sources_fingerprint,
)


def _image(*hosts: str, name: str = "feed"):
    parsed = parse_list("\n".join(hosts).encode(), "domains", name=name)
    image, _ = compile_index([(ListSpec(name), parsed)])
    return image


def test_publish_then_load_current(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(NoSnapshot):
        store.load_current()
    path = store.publish(_image("evil.example"), info={"fingerprint": "x"})
    assert path.parent == tmp_path / "snapshots"
    assert path.name.startswith("block-") and path.suffix == ".jgs"
    assert store.current_path() == path
    assert store.read_pointer()["fingerprint"] == "x"
    assert (
        path.stat().st_mode & 0o777 == 0o644 and store.pointer_path.stat().st_mode & 0o777 == 0o644
    )
    idx = store.load_current()
    assert idx.rule_count == 1
    idx.close()


def test_keeps_previous_few_and_rolls_back(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    paths = [store.publish(_image(f"v{i}.example"), info={"rules": i}) for i in range(5)]
    snaps = store.list_snapshots()
    assert [s.path for s in snaps] == paths[::-1][:3]  # current + 2 previous
    assert snaps[0].current
    assert store.rollback().target == paths[3]
    assert store.current_path() == paths[3]
    assert store.read_pointer()["rolled_back_from"] == paths[4].name
    assert store.read_pointer()["rules"] == 3  # the rolled-back-to snapshot's own record
    assert store.rollback().target == paths[2]
    with pytest.raises(SnapshotError, match="cannot go back"):
        store.rollback()
    # A new publish after a rollback keeps the rolled-back-to snapshot too.
    new = store.publish(_image("v9.example"))
    assert store.current_path() == new
    assert len(list(store.dir.glob("*.info.json"))) == len(store.list_snapshots())


def test_rollback_refuses_corrupt_target(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    old = store.publish(_image("old.example"))
    store.publish(_image("new.example"))
    data = bytearray(old.read_bytes())
    data[HEADER_SIZE + 10] ^= 0xFF
    old.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        store.rollback()
    assert store.current_path() != old  # still the good one


@pytest.mark.parametrize("damage", ["flip", "truncate", "version", "missing", "pointer"])
def test_corrupt_current_is_refused(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path)
    path = store.publish(_image("evil.example"))
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "version":
        data = bytearray(path.read_bytes())
        data[7] = 0x03
        path.write_bytes(bytes(data))
    elif damage == "missing":
        path.unlink()
    else:
        store.pointer_path.write_text("{not json")
    with pytest.raises(SnapshotError):
        store.load_current()


def test_pointer_never_leaves_the_store(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.publish(_image("evil.example"))
    doc = store.read_pointer()
    doc["snapshot"] = "../../etc/passwd"
    store.pointer_path.write_text(json.dumps(doc))
    assert store.current_path() == store.dir / "passwd"


def test_stale_temp_files_are_pruned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.dir.mkdir(parents=True)
    stale = store.dir / "block-x.jgs.abc.tmp"
    fresh = store.dir / "block-y.jgs.def.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    os.utime(stale, (1, 1))
    store.publish(_image("a.example"))
    assert not stale.exists() and fresh.exists()


def test_load_engine_compiles_allow_in_memory(tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("ok.evil.example\n")
    block_spec = ListSpec("feed", url="http://127.0.0.1:1/feed")
    allow_spec = ListSpec("allow", path=str(allow), allow=True, category="allow")
    specs = [block_spec, allow_spec]
    parsed = parse_list(b"||evil.example^\n@@||exc.evil.example^\n", "adblock", name="feed")
    block, exceptions = split_exceptions([(block_spec, parsed)])
    image, _ = compile_index(block)
    store = SnapshotStore(tmp_path)
    snap = store.publish(
        image, exceptions=exceptions, info={"fingerprint": sources_fingerprint(specs)}
    )
    before = snap.stat().st_mtime_ns

    engine, pointer = load_engine(specs, tmp_path, require_fingerprint=True)
    assert engine.check_url("http://www.evil.example/").blocked
    assert engine.check_url("http://ok.evil.example/").action.value == "allow"
    assert engine.check_url("http://exc.evil.example/").action.value == "allow"
    # Changing the allowlist changes the engine without touching the snapshot.
    allow.write_text("www.evil.example\n")
    engine2, _ = load_engine(specs, tmp_path)
    assert engine2.check_url("http://www.evil.example/").action.value == "allow"
    assert engine2.check_url("http://ok.evil.example/").blocked
    assert snap.stat().st_mtime_ns == before and len(store.list_snapshots()) == 1
    # Built from other sources: refused when the caller requires a match.
    with pytest.raises(SnapshotError, match="other sources"):
        load_engine(
            [*specs, ListSpec("other", url="http://x.example/")], tmp_path, require_fingerprint=True
        )


def test_fingerprint_and_inputs(tmp_path: Path) -> None:
    f = tmp_path / "l.txt"
    f.write_text("a.example\n")
    specs = [
        ListSpec("l", path=str(f)),
        ListSpec("u", url="http://x/"),
        ListSpec("a", path=str(f), allow=True),
    ]
    inputs = list_inputs(specs, tmp_path)
    assert set(inputs) == {"l", "u"} and inputs["u"] is None and inputs["l"][1] == 10
    fp = sources_fingerprint(specs)
    assert fp == sources_fingerprint(list(reversed(specs)))
    assert fp != sources_fingerprint(specs[:1])


def test_bodies_are_kept_with_their_snapshots_and_pruned_with_them(tmp_path: Path) -> None:
    from dataclasses import replace

    from proxy_addons.inforce import InForce, ListRecord

    store = SnapshotStore(tmp_path, keep=1)
    body = tmp_path / "feeds" / "feed.body"
    body.parent.mkdir()
    digests = []
    for i in range(4):
        data = f"v{i}.example\n".encode()
        (tmp_path / "new.part").write_bytes(data)
        os.replace(tmp_path / "new.part", body)  # as a feed body is committed
        digest = hashlib.sha256(data).hexdigest()
        digests.append(digest)
        record = InForce("", lists={"feed": ListRecord("feed", 1, digest, (1,), fetched=True)})
        store.publish(_image(f"v{i}.example"), record=replace(record), bodies={"feed": body})
    kept = sorted(p.name for p in store.dir.glob("body-*"))
    # current + 1 previous snapshot: their two bodies, no more
    assert kept == sorted(store.body_path("feed", d).name for d in digests[2:])
    assert store.body_path("feed", digests[2]).read_bytes() == b"v2.example\n"


def test_a_failed_publish_leaves_no_half_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy_addons import store as store_mod

    store = SnapshotStore(tmp_path)
    first = store.publish(_image("a.example"))

    def full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write", full)
    with pytest.raises(store_mod.StoreWriteError, match="No space left on device.*free some space"):
        store.publish(_image("b.example"))
    assert store.current_path() == first
    assert [s.path for s in store.list_snapshots()] == [first]  # no rollback slot taken


def test_verify_current_rereads_only_a_changed_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.publish(_image("a.example"))
    assert store.verify_current() is None
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 10] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode
        f.write(bytes(data))
    problem = store.verify_current()
    assert problem is not None and "checksum" in problem


def test_a_hostile_record_cannot_reach_outside_the_store(tmp_path: Path) -> None:
    # The pointer is data: names and digests in it never become paths out of the store.
    outside = tmp_path / "victim"
    outside.write_text("keep me")
    store = SnapshotStore(tmp_path)
    store.publish(_image("a.example"))
    store.publish(_image("b.example"))
    doc = store.read_pointer()
    doc["lists"] = {
        "../victim": {"rules": 1, "digest": "0" * 64, "fetched": True},
        "feed": {"rules": 1, "digest": "../../victim", "fetched": True},
    }
    store.pointer_path.write_text(json.dumps(doc))
    result = store.rollback()
    assert outside.read_text() == "keep me"
    assert [h.name for h in result.held] == ["feed"]  # a digest is only ever compared
    store.publish(_image("c.example"))  # prunes with the hostile record in force
    assert outside.read_text() == "keep me"
    store.pointer_path.write_text('{"snapshot": "x.jgs", "lists": [1, 2]}')
    assert store.read_record() is None and store.release(None) == []
