"""The compiled index and its snapshot file: round trips, lookups, corruption."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_addons.core.canon import canonical_host, canonicalize_url, url_rule_key
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.errors import SnapshotError
from proxy_addons.core.index import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SECTIONS,
    CompiledIndex,
    check_published,
    compile_index,
    copy_name,
    verify_file,
    write_snapshot,
)
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind


def _rules() -> list[Rule]:
    return [
        Rule(RuleKind.DOMAIN, "evil.example", "EVIL.example.", 3),
        Rule(RuleKind.EXACT, "only.example", "=only.example", 4),
        Rule(RuleKind.IP, "217.107.218.147", "217.107.218.147", 5),
        Rule(RuleKind.CIDR, "198.51.100.0/24", "198.51.100.0/24 ; SBL1", 6),
        Rule(RuleKind.CIDR, "2001:db8:100::/48", "2001:db8:100::/48", 7),
        Rule(
            RuleKind.URL, url_rule_key("http://bad.example/mal/")[1], "http://bad.example/mal/", 8
        ),
    ]


def _compile(rules: list[Rule], *, mode: Mode = Mode.ENFORCE, pad: int = 0) -> CompiledIndex:
    # pad: filler rules, so that directory buckets are shared and lookups must tell them apart
    filler = [
        Rule(RuleKind.DOMAIN, f"f{i}.filler.example", f"f{i}.filler.example", 100 + i)
        for i in range(pad)
    ]
    image, _ = compile_index(
        [(ListSpec("feed", category="malware", mode=mode), ParsedList("domains", rules + filler))]
    )
    return CompiledIndex(image)


@pytest.fixture(params=[0, 20_000], ids=["small", "large"])
def index(request: pytest.FixtureRequest) -> CompiledIndex:
    return _compile(_rules(), pad=request.param)


def _m(idx: CompiledIndex, url: str) -> tuple[str, int, str] | None:
    m = idx.match_url(canonicalize_url(url))
    return None if m is None else (m.rule, m.line, m.kind.label)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://evil.example/", ("EVIL.example.", 3, "domain")),
        ("http://a.b.evil.example/x", ("EVIL.example.", 3, "domain")),
        ("http://notevil.example/", None),
        ("http://only.example/", ("=only.example", 4, "exact")),
        ("http://sub.only.example/", None),
        ("http://217.107.218.147/dot.php", ("217.107.218.147", 5, "ip")),
        ("http://198.51.100.200/", ("198.51.100.0/24 ; SBL1", 6, "cidr")),
        ("http://198.51.101.1/", None),
        ("http://[2001:db8:100:ffff::1]/", ("2001:db8:100::/48", 7, "cidr")),
        ("http://[2001:db8:101::1]/", None),
        ("http://bad.example/mal/x.exe?a=1", ("http://bad.example/mal/", 8, "url")),
        ("http://www.bad.example/mal/", ("http://bad.example/mal/", 8, "url")),
        ("http://bad.example/other", None),
        ("http://bad.example/", None),
    ],
)
def test_lookup(index: CompiledIndex, url: str, expected: tuple[str, int, str] | None) -> None:
    assert _m(index, url) == expected


def test_match_host_uses_host_wide_rules_only(index: CompiledIndex) -> None:
    assert index.match_host("x.evil.example") is not None
    assert index.match_host("198.51.100.9") is not None
    # a URL rule below the root does not make the whole host blocked
    assert index.match_host("bad.example") is None


def test_url_rule_for_root_covers_the_host() -> None:
    idx = _compile(
        [Rule(RuleKind.URL, url_rule_key("http://whole.example/")[1], "http://whole.example/", 1)]
    )
    assert idx.match_host("whole.example") is not None
    assert _m(idx, "http://whole.example/any/thing?x") is not None


def test_enforce_wins_over_monitor() -> None:
    rule = Rule(RuleKind.DOMAIN, "both.example", "both.example", 1)
    image, _ = compile_index(
        [
            (ListSpec("watch", mode=Mode.MONITOR), ParsedList("domains", [rule])),
            (ListSpec("block", mode=Mode.ENFORCE), ParsedList("domains", [rule._replace(line=9)])),
        ]
    )
    m = CompiledIndex(image).match_url(canonicalize_url("http://both.example/"))
    assert m is not None and (m.list, m.line, m.mode) == ("block", 9, Mode.ENFORCE)


def test_poison_guard_refuses_and_counts() -> None:
    rules = [
        Rule(RuleKind.DOMAIN, "com", "com", 1),
        Rule(RuleKind.DOMAIN, "github.io", "github.io", 2),
        Rule(RuleKind.CIDR, "0.0.0.0/0", "0.0.0.0/0", 3),
        Rule(RuleKind.CIDR, "10.0.0.0/7", "10.0.0.0/7", 4),
        Rule(RuleKind.IP, "127.0.0.1", "127.0.0.1", 5),
        Rule(RuleKind.DOMAIN, "ok.github.io", "ok.github.io", 6),
    ]
    image, stats = compile_index([(ListSpec("bad"), ParsedList("domains", rules))])
    assert stats.refused_count == 5
    assert {r["reason"] for r in stats.refused} >= {"public suffix", "network wider than /8"}
    idx = CompiledIndex(image)
    assert _m(idx, "http://anything.com/") is None
    assert _m(idx, "http://other.github.io/") is None
    assert _m(idx, "http://10.1.2.3/") is None
    assert _m(idx, "http://ok.github.io/") is not None


def test_private_networks_wide_rules_refused_narrow_ones_kept() -> None:
    """FireHOL level1 lists 10.0.0.0/8 (for inbound firewalls): blocking it at the egress
    would cut the network off from itself through the resolved-address check."""
    wide = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "224.0.0.0/3",
            "fc00::/7", "fe80::/10"]  # fmt: skip
    narrow = ["10.1.2.0/24", "192.168.7.0/24", "fd00:1:2:3::/64", "198.51.100.0/24"]
    rules = [Rule(RuleKind.CIDR, n, n, i + 1) for i, n in enumerate(wide + narrow)]
    rules.append(Rule(RuleKind.IP, "10.9.9.9", "10.9.9.9", 99))  # one compromised host
    image, stats = compile_index([(ListSpec("nets"), ParsedList("cidr", rules))])
    refused = {r["rule"]: r["reason"] for r in stats.refused}
    assert set(refused) == set(wide)
    assert refused["10.0.0.0/8"] == "private or reserved network wider than /17"
    idx = CompiledIndex(image)
    assert _m(idx, "http://10.200.0.1/") is None
    assert _m(idx, "http://10.1.2.3/") is not None
    assert _m(idx, "http://10.9.9.9/") is not None
    assert _m(idx, "http://192.168.7.20/") is not None


def test_allowing_a_whole_private_network_is_kept() -> None:
    """The natural "never block internal servers" allow list must not be refused."""
    block = ParsedList("cidr", [Rule(RuleKind.CIDR, "10.1.2.0/24", "10.1.2.0/24", 1)])
    allow = ParsedList("cidr", [Rule(RuleKind.CIDR, "10.0.0.0/8", "10.0.0.0/8", 1)])
    engine, block_stats, allow_stats = Engine.from_lists(
        [(ListSpec("feed"), block), (ListSpec("intranet", allow=True), allow)]
    )
    assert block_stats.refused_count == 0 and allow_stats.refused_count == 0
    assert engine.check_host("10.1.2.3").action is Action.ALLOW


# -- snapshot files ----------------------------------------------------------


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    image, _ = compile_index([(ListSpec("feed"), ParsedList("domains", _rules()))])
    return image.write(tmp_path / "block.jgs")


def test_snapshot_round_trip(snapshot: Path) -> None:
    verify_file(snapshot)  # intact: no error
    with pytest.raises(SnapshotError, match="cannot read"):
        verify_file(snapshot.with_name("missing.jgs"))
    idx = CompiledIndex.load(snapshot)
    assert idx.rule_count == len(_rules())
    assert _m(idx, "http://x.evil.example/") == ("EVIL.example.", 3, "domain")
    assert [li.name for li in idx.lists] == ["feed"]
    idx.close()


def _sections(data: bytes) -> dict[str, tuple[int, int]]:
    out = {}
    for i, name in enumerate(SECTIONS):
        out[name] = struct.unpack_from("<QQ", data, struct.calcsize("<8sIIQQII") + i * 16)
    return out


def test_every_flipped_byte_is_detected(snapshot: Path, tmp_path: Path) -> None:
    data = snapshot.read_bytes()
    offsets = {0, 8, 12, 20, HEADER_SIZE - 1, len(data) - 1}
    for off, length in _sections(data).values():
        if length:
            offsets |= {off, off + length // 2, off + length - 1}
    for off in sorted(offsets):
        bad = bytearray(data)
        bad[off] ^= 0x41
        path = write_snapshot(tmp_path / f"flip{off}.jgs", bytes(bad))
        with pytest.raises(SnapshotError):
            CompiledIndex.load(path)
        with pytest.raises(SnapshotError):
            CompiledIndex(bytes(bad))
        with pytest.raises(SnapshotError):  # the in-place check sees every flip too
            verify_file(path)


@pytest.mark.parametrize("keep", [0, 7, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 100, -1])
def test_truncated_snapshot_is_refused(snapshot: Path, tmp_path: Path, keep: int) -> None:
    data = snapshot.read_bytes()
    path = tmp_path / "cut.jgs"
    path.write_bytes(data[:keep])
    with pytest.raises(SnapshotError, match="truncated|not a jectguard|corrupt"):
        CompiledIndex.load(path)
    with pytest.raises(SnapshotError, match="truncated|not a jectguard|corrupt"):
        verify_file(path)


def test_padded_snapshot_is_refused(snapshot: Path) -> None:
    with open(snapshot, "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(SnapshotError, match="truncated or padded"):
        CompiledIndex.load(snapshot)
    with pytest.raises(SnapshotError, match="truncated or padded"):
        verify_file(snapshot)


def test_wrong_version_is_refused_with_a_clear_message(snapshot: Path) -> None:
    import xxhash

    data = bytearray(snapshot.read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    data[6:8] = b"\x00\x09"
    # re-seal the header so only the version is wrong
    struct.pack_into(
        "<Q", data, HEADER_SIZE - 8, xxhash.xxh3_64_intdigest(bytes(data[: HEADER_SIZE - 8]))
    )
    snapshot.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="version"):
        CompiledIndex.load(snapshot)


def test_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("evil.example\n" * 100)
    with pytest.raises(SnapshotError, match="bad magic"):
        CompiledIndex.load(path)
    with pytest.raises(SnapshotError, match="cannot read"):
        CompiledIndex.load(tmp_path / "missing.jgs")


def test_a_bad_snapshot_leaves_the_loaded_one_working(snapshot: Path, tmp_path: Path) -> None:
    good = CompiledIndex.load(snapshot)
    bad = tmp_path / "bad.jgs"
    bad.write_bytes(snapshot.read_bytes()[:-3])
    with pytest.raises(SnapshotError):
        CompiledIndex.load(bad)
    assert _m(good, "http://evil.example/") is not None


def test_write_is_atomic_and_leaves_no_temp_files(snapshot: Path) -> None:
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["block.jgs"]


# -- property: what goes in comes out ----------------------------------------

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12).filter(
    lambda s: not s.isdigit()
)
_domain = st.lists(_label, min_size=2, max_size=4).map(lambda ls: ".".join(ls) + ".example")


@settings(max_examples=40, deadline=None)
@given(st.lists(_domain, min_size=1, max_size=60, unique=True), _label)
def test_every_listed_domain_and_its_subdomains_match(domains: list[str], sub: str) -> None:
    rules = [Rule(RuleKind.DOMAIN, canonical_host(d), d, i + 1) for i, d in enumerate(domains)]
    idx = _compile(rules)
    for _i, d in enumerate(domains):
        m = idx.match_url(canonicalize_url(f"http://{sub}.{d.upper()}./p"))
        assert m is not None and m.key == canonical_host(d)
    listed = set(domains)
    probe = f"zz{sub}.unlisted.example"
    if not any(probe == d or probe.endswith("." + d) for d in listed):
        assert idx.match_url(canonicalize_url(f"http://{probe}/")) is None


# -- a snapshot changed under its reader --------------------------------------
# The published file lives in a shared folder; whatever happens to it after it
# was verified, the loaded index keeps answering with the verified rules.


def _zero(p: Path) -> None:
    with open(p, "r+b") as f:
        f.write(b"\x00" * p.stat().st_size)


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for i in range(HEADER_SIZE, len(data), 7):
        data[i] ^= 0xFF
    with open(p, "r+b") as f:  # in place, as rsync --inplace writes
        f.write(data)


def _truncate(p: Path) -> None:
    os.truncate(p, HEADER_SIZE)


@pytest.mark.parametrize("use_copy", [True, False], ids=["private-copy", "memory"])
@pytest.mark.parametrize(
    "damage", [_zero, _flip, _truncate, Path.unlink], ids=["zero", "flip", "truncate", "unlink"]
)
def test_a_loaded_index_never_reads_the_published_file_again(
    snapshot: Path, tmp_path: Path, use_copy: bool, damage: object
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    idx = CompiledIndex.load(snapshot, copy_dir=copies if use_copy else None)
    assert idx.origin is not None and idx.origin.path == snapshot
    if use_copy:
        assert idx.origin.residence == copies / copy_name(snapshot.read_bytes()[:HEADER_SIZE])
        assert not os.stat(idx.origin.residence).st_mode & 0o222  # never written again
    else:
        assert idx.origin.residence is None
    damage(snapshot)  # type: ignore[operator]
    assert _m(idx, "http://x.evil.example/") == ("EVIL.example.", 3, "domain")
    assert _m(idx, "http://bad.example/mal/x") is not None
    assert _m(idx, "http://good.example/") is None
    idx.close()


def test_processes_share_one_private_copy(snapshot: Path, tmp_path: Path) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    a = CompiledIndex.load(snapshot, copy_dir=copies)
    b = CompiledIndex.load(snapshot, copy_dir=copies)
    assert a.origin and b.origin and a.origin.residence == b.origin.residence
    assert [p.name for p in copies.iterdir()] == [a.origin.residence.name]  # type: ignore[union-attr]
    a.close()
    b.close()


def test_a_tampered_private_copy_is_replaced_not_served(snapshot: Path, tmp_path: Path) -> None:
    first = CompiledIndex.load(snapshot, copy_dir=tmp_path)
    assert first.origin and first.origin.residence
    copy = first.origin.residence
    first.close()
    copy.chmod(0o644)
    _zero(copy)
    idx = CompiledIndex.load(snapshot, copy_dir=tmp_path)
    assert _m(idx, "http://evil.example/") is not None
    assert copy.read_bytes() == snapshot.read_bytes()
    idx.close()


def test_a_damaged_published_file_is_refused_even_with_a_good_copy(
    snapshot: Path, tmp_path: Path
) -> None:
    CompiledIndex.load(snapshot, copy_dir=tmp_path).close()
    data = bytearray(snapshot.read_bytes())
    data[-1] ^= 0x01
    snapshot.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        CompiledIndex.load(snapshot, copy_dir=tmp_path)


def test_without_a_usable_copy_dir_the_snapshot_is_read_into_memory(
    snapshot: Path, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    idx = CompiledIndex.load(snapshot, copy_dir=not_a_dir)
    assert idx.origin is not None and idx.origin.residence is None
    _zero(snapshot)
    assert _m(idx, "http://evil.example/") is not None


def test_check_published_tells_each_change(snapshot: Path, tmp_path: Path) -> None:
    idx = CompiledIndex.load(snapshot)
    origin = idx.origin
    assert origin is not None
    known = origin.identity
    assert check_published(origin, known) is None  # a stat, nothing new
    assert check_published(origin, known, full=True) == (known, None)
    # replaced by an equal copy (rsync without --inplace): a new identity, no problem
    tmp = tmp_path / "equal.tmp"
    tmp.write_bytes(snapshot.read_bytes())
    os.replace(tmp, snapshot)
    result = check_published(origin, known)
    assert result is not None and result[0] != known and result[1] is None
    known = result[0]
    # changed in place with its times put back: only the periodic full check sees it
    st = snapshot.stat()
    _flip(snapshot)
    os.utime(snapshot, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check_published(origin, known) is None
    result = check_published(origin, known, full=True)
    assert result is not None and result[1] is not None and "checksum" in result[1]
    _truncate(snapshot)
    result = check_published(origin, known)
    assert result is not None and result[1] is not None and "bytes" in result[1]
    snapshot.unlink()
    assert check_published(origin, known) == (None, "missing: the file was removed")


def test_metadata_fields_are_typed_properties() -> None:
    before = time.time()
    idx = _compile(_rules() + [Rule(RuleKind.DOMAIN, "com", "com", 9)])  # refused: a suffix
    assert idx.built_at is not None and before - 1 <= idx.built_at <= time.time() + 1
    assert idx.by_kind == {"domain": 1, "exact": 1, "ip": 1, "cidr": 2, "url": 1}
    assert idx.refused_count == 1 and idx.rule_count == 6
    assert idx.v4_prefixes == (24,) and idx.v6_prefixes == (48,)
    empty = CompiledIndex(compile_index([])[0])
    assert empty.by_kind == {} and empty.refused_count == 0 and empty.v4_prefixes == ()
