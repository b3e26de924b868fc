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
from proxy_addons.lists.store import (
    NoSnapshot,
    SnapshotStore,
    list_inputs,
    load_engine,
    prune_copies,
    snapshot_copy_dir,
    sources_fingerprint,
    startup_engine,
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

    from proxy_addons.lists.inforce import InForce, ListRecord

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
    from proxy_addons.lists import store as store_mod

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


# -- loading: a private copy, never the shared file -----------------------------


def test_load_current_serves_a_private_copy_in_a_folder_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JECTGUARD_RUNTIME_DIR", str(tmp_path / "run"))
    store = SnapshotStore(tmp_path / "cache")
    path = store.publish(_image("evil.example"))
    idx = store.load_current()
    assert idx.origin is not None and idx.origin.path == path
    copy = idx.origin.residence
    assert copy is not None and copy.parent == tmp_path / "run" / "snapshots"
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    path.write_bytes(b"")  # the shared file is emptied: what is served does not change
    assert idx.rule_count == 1 and idx.match_host("evil.example") is not None
    idx.close()


@pytest.mark.parametrize("bad", ["group-writable", "symlink", "file"])
def test_a_copy_folder_others_could_change_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    run = tmp_path / "run"
    if bad == "group-writable":
        run.mkdir()
        run.chmod(0o775)
    elif bad == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        run.symlink_to(tmp_path / "elsewhere")
    else:
        run.write_text("")
    monkeypatch.setenv("JECTGUARD_RUNTIME_DIR", str(run))
    assert snapshot_copy_dir() is None
    store = SnapshotStore(tmp_path / "cache")
    store.publish(_image("evil.example"))
    idx = store.load_current()  # read into memory instead
    assert idx.origin is not None and idx.origin.residence is None
    assert idx.match_host("evil.example") is not None
    idx.close()


def test_old_copies_are_pruned_but_not_the_one_in_use(tmp_path: Path) -> None:
    keep, old, fresh = (tmp_path / f"{n}.jgs" for n in ("keep", "old", "fresh"))
    for p in (keep, old, fresh):
        p.write_bytes(b"x")
    os.utime(old, (1, 1))
    os.utime(keep, (1, 1))
    prune_copies(tmp_path, keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.jgs", "keep.jgs"]


def test_restore_rewrites_only_a_damaged_current_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.publish(_image("evil.example"))
    good = path.read_bytes()
    idx = store.load_current()
    assert not store.restore(idx)  # intact: nothing to do
    inode = path.stat().st_ino
    os.truncate(path, HEADER_SIZE)
    assert store.restore(idx)
    assert path.read_bytes() == good and path.stat().st_ino != inode  # a new file, renamed in
    newer = store.publish(_image("evil.example", "other.example"))
    os.truncate(path, 0)
    assert not store.restore(idx)  # no longer current: not ours to rewrite
    assert store.current_path() == newer
    idx.close()


@pytest.mark.parametrize("damage", ["truncate", "zero", "missing"])
def test_a_start_while_the_current_snapshot_does_not_load_uses_the_previous_one(
    tmp_path: Path, damage: str
) -> None:
    """Not the local lists alone: a replica's cache may hold no feed bodies at all."""
    spec = ListSpec("feed", url="https://feeds.example/feed.txt", format="domains")
    info = {"fingerprint": sources_fingerprint([spec]), "lists": {"feed": 1}}
    store = SnapshotStore(tmp_path / "cache")
    store.publish(_image("old.example", name="feed"), info=info)
    current = store.publish(_image("new.example", name="feed"), info=info)
    if damage == "truncate":
        os.truncate(current, HEADER_SIZE)
    elif damage == "zero":
        current.write_bytes(bytes(current.stat().st_size))
    else:
        current.unlink()
    engine, report = startup_engine([spec], tmp_path / "cache")
    assert engine.check_url("http://old.example/").blocked
    assert report.lists[0].loaded and report.lists[0].rules == 1
    engine.close()


def test_a_start_never_falls_forward_to_what_was_rolled_back_from(tmp_path: Path) -> None:
    spec = ListSpec("feed", url="https://feeds.example/feed.txt", format="domains")
    info = {"fingerprint": sources_fingerprint([spec]), "lists": {"feed": 1}}
    store = SnapshotStore(tmp_path / "cache")
    first = store.publish(_image("old.example", name="feed"), info=info)
    store.publish(_image("bad.example", name="feed"), info=info)
    assert store.rollback().target == first
    os.truncate(first, 0)
    engine, _ = startup_engine([spec], tmp_path / "cache")
    assert not engine.check_url("http://bad.example/").blocked
    engine.close()


def test_a_start_with_every_list_at_hand_compiles_them(tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("local.example\n")
    spec = ListSpec("local", path=str(local), format="domains")
    info = {"fingerprint": sources_fingerprint([spec]), "lists": {"local": 1}}
    store = SnapshotStore(tmp_path / "cache")
    store.publish(_image("old.example", name="local"), info=info)
    current = store.publish(_image("local.example", name="local"), info=info)
    os.truncate(current, 0)
    engine, _ = startup_engine([spec], tmp_path / "cache")
    assert engine.check_url("http://local.example/").blocked
    assert not engine.check_url("http://old.example/").blocked
    engine.close()


def test_a_start_after_the_sources_changed_compiles_the_lists(tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("local.example\n")
    spec = ListSpec("local", path=str(local), format="domains")
    store = SnapshotStore(tmp_path / "cache")
    store.publish(_image("old.example", name="local"), info={"fingerprint": "other sources"})
    engine, _ = startup_engine([spec], tmp_path / "cache")
    assert engine.check_url("http://local.example/").blocked
    assert not engine.check_url("http://old.example/").blocked
    engine.close()


@pytest.mark.parametrize("fetched", [False, True])
def test_a_body_changed_since_it_was_compiled_is_not_kept_under_the_compiled_digest(
    tmp_path: Path, fetched: bool
) -> None:
    """The body kept for a rollback must be the bytes compiled: a local list saved while
    its snapshot compiled was archived under the old digest, and a rollback then brought
    the new (never published) rules into force (red team)."""
    from proxy_addons.lists.inforce import InForce, ListRecord

    store = SnapshotStore(tmp_path)
    compiled = b"evil.example\n"
    body = tmp_path / "local.txt"
    body.write_bytes(b"evil.example\ngoogle.test\n")  # saved after it was read
    digest = hashlib.sha256(compiled).hexdigest()
    record = InForce("", lists={"local": ListRecord("local", 1, digest, (1,), fetched)})
    store.publish(_image("evil.example"), record=record, bodies={"local": body})
    assert not store.body_path("local", digest).exists()
    body.write_bytes(compiled)  # the bytes compiled: kept
    record = InForce("", lists={"local": ListRecord("local", 1, digest, (1,), fetched)})
    store.publish(_image("evil.example", "x.example"), record=record, bodies={"local": body})
    assert store.body_path("local", digest).read_bytes() == compiled


def test_a_snapshot_carrying_a_monitor_lists_exceptions_does_not_apply_them(
    tmp_path: Path,
) -> None:
    """A snapshot published before monitor lists' exceptions were dropped (or before the list
    went on trial) still has them in its allow side: loading it must not apply them."""
    from proxy_addons.core.model import Mode

    block = parse_list(b"victim.test\n", "domains", name="feed")
    exc = parse_list(b"@@||victim.test^\n", "adblock", name="trial")
    trial = ListSpec("trial", category="ads", mode=Mode.MONITOR, path=str(tmp_path / "t.txt"))
    (tmp_path / "t.txt").write_text("@@||victim.test^\n")
    feed = ListSpec("feed", path=str(tmp_path / "f.txt"))
    (tmp_path / "f.txt").write_text("victim.test\n")
    store = SnapshotStore(tmp_path / "cache")
    image, _ = compile_index([(feed, block)])
    from dataclasses import replace

    store.publish(
        image,
        exceptions=[(replace(trial, allow=True), exc)],
        info={"fingerprint": sources_fingerprint([feed, trial])},
    )
    engine, _ = load_engine([feed, trial], tmp_path / "cache")
    assert engine.check_url("http://victim.test/").blocked
