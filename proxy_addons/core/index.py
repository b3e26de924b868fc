"""The compiled rule index and its snapshot file.

Compiling turns parsed lists into one immutable, memory-mappable byte image:

    header | directory | hash table | kinds | list ids | lines | key offsets | text offsets
           | keys | texts | metadata (JSON)

* The **hash table** is a sorted array of 64-bit slots plus a directory. A
  slot is an xxh3-64 hash of the key (seeded by the key's namespace) whose low
  bits are replaced by the record id; the directory maps the top bits of a
  hash to the run of slots sharing them (about one). Several records may share
  a key (a domain in two lists; a domain rule and a URL-host marker).
* **Records** are columns (kind, list id, line, key and text offsets), so
  building is a few C-speed array operations and a lookup reads only what it
  needs. A fingerprint hit is confirmed by comparing the stored key, so there
  are no false positives.
* The **metadata** names the lists (name, category, mode) and the CIDR prefix
  lengths present, and carries compile statistics.

The file is versioned and checksummed (xxh3-64 over header and body). Loading
maps it read-only, so several proxy processes share one copy in the page cache,
and a lookup touches only the few pages it probes.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Buffer, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import and_, itemgetter, or_, rshift
from pathlib import Path
from typing import Any, Final

import xxhash

from .canon import CanonicalURL, host_kind, url_host_expressions, url_path_expressions
from .errors import SnapshotError
from .guard import PoisonGuard
from .model import ListSpec, Match, Mode, ParsedList, Rule, RuleKind

if sys.byteorder != "little":  # the table is mapped as native 64-bit integers
    raise ImportError("jectguard snapshots need a little-endian machine")

MAGIC: Final = b"JGSNAP\x00\x03"
FORMAT_VERSION: Final = 3
# At most 2**28 directory buckets (1 GiB of directory); a bucket per rule below that.
MAX_DIR_BITS: Final = 28
_MASK64: Final = (1 << 64) - 1
# Indexes up to this many records are also held as a dict (built at load, < 10 ms).
SMALL_INDEX_RECORDS: Final = 5000
# Read the file in chunks of this size to verify its checksum without mapping it all.
CHECKSUM_CHUNK: Final = 8 * 1024 * 1024
# Largest snapshot we agree to load (guards against a bogus header).
MAX_SNAPSHOT_BYTES: Final = 8 * 1024**3
# Rule texts longer than this are cut (provenance only; keys are never cut).
MAX_TEXT_BYTES: Final = 1024

# Key namespaces: the hash seed keeps equal strings of different meaning apart.
NS_HOST: Final = 1  # domain / exact-host / IP rules and URL-host markers, keyed by host
NS_URL: Final = 2  # URL rules, keyed by "host/path[?query]"
NS_NET: Final = 3  # CIDR rules, keyed by "network/len"

_NONE: Final[list[int]] = []  # shared empty result; never mutated
_NAMESPACE: Final = {
    RuleKind.DOMAIN: NS_HOST,
    RuleKind.EXACT: NS_HOST,
    RuleKind.IP: NS_HOST,
    RuleKind.URL: NS_URL,
    RuleKind.CIDR: NS_NET,
}
# A record kind that is not a rule: "some URL rule has this host".
URLHOST: Final = 0
_MARKER_LIST: Final = 0xFFFF

# Sections, in file order. Each is (offset, length) in the header.
SECTIONS: Final = (
    "dir",
    "table",
    "kinds",
    "lists",
    "lines",
    "key_offs",
    "text_offs",
    "keys",
    "texts",
    "meta",
)
_HEAD: Final = struct.Struct("<8sIIQQQII")  # magic, version, header size, body len, body xxh3,
#                                            dir_bits, rid_bits, records
_SECTION: Final = struct.Struct("<QQ")
HEADER_SIZE: Final = 256
_HEADER_XXH_AT: Final = HEADER_SIZE - 8


@dataclass(frozen=True, slots=True)
class ListInfo:
    """What the index knows of one source list."""

    name: str
    category: str
    mode: Mode
    allow: bool


@dataclass(slots=True)
class CompileStats:
    rules: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    refused: list[dict[str, object]] = field(default_factory=list)  # poison guard samples
    refused_count: int = 0
    exceptions: int = 0
    seconds: float = 0.0


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC while building millions of acyclic objects.

    Each generation-2 pass walks every live object; with a million rules alive
    that turns a linear build into a quadratic one. Nothing built here has cycles.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_KEY: Final = itemgetter(1)
_TEXT: Final = itemgetter(2)
_LINE: Final = itemgetter(3)
_EXCEPTION: Final = itemgetter(4)


def _by_kind(rules: list[Rule]) -> dict[RuleKind, list[Rule]]:
    kinds = set(map(itemgetter(0), rules))
    if len(kinds) <= 1:  # the usual case: one list, one kind of rule
        return {k: rules for k in kinds}
    out: dict[RuleKind, list[Rule]] = {k: [] for k in kinds}
    for rule in rules:
        out[rule.kind].append(rule)
    return out


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _build_image(
    ns: list[int],
    kinds: array[int],
    list_ids: array[int],
    lines: array[int],
    keys: list[bytes],
    texts: list[bytes],
    meta: dict[str, object],
) -> SnapshotImage:
    n = len(keys)
    rid_bits = max(1, n.bit_length())
    dir_bits = max(4, min(MAX_DIR_BITS, n.bit_length()))
    shift = 64 - dir_bits
    # Slot value: the hash with its low rid_bits replaced by the record id. Sorting
    # the values sorts by hash; the directory maps the top dir_bits of a hash to
    # the run of slots that share them (about one each). All of it runs in C.
    keep = _MASK64 ^ ((1 << rid_bits) - 1)
    table = list(
        map(or_, map(and_, map(xxhash.xxh3_64_intdigest, keys, ns), repeat(keep)), range(n))
    )
    table.sort()
    counts = Counter(map(rshift, table, repeat(shift)))
    directory = array("I", [0])
    directory.extend(accumulate(map(counts.__getitem__, range(1 << dir_bits))))
    key_offs = array("Q", [0])
    key_offs.extend(accumulate(map(len, keys)))
    text_offs = array("Q", [0])
    text_offs.extend(accumulate(map(len, texts)))
    # Arrays are written through the buffer protocol: no copies of big sections.
    parts: dict[str, Buffer] = {
        "dir": directory,
        "table": array("Q", table),
        "kinds": kinds,
        "lists": list_ids,
        "lines": lines,
        "key_offs": key_offs,
        "text_offs": text_offs,
        "keys": b"".join(keys),
        "texts": b"".join(texts),
        "meta": json.dumps(meta, separators=(",", ":")).encode(),
    }
    chunks: list[Buffer] = []
    sections: list[tuple[int, int]] = []
    pos = HEADER_SIZE
    digest = xxhash.xxh3_64()
    for name in SECTIONS:
        data = memoryview(parts[name]).cast("B")
        sections.append((pos, len(data)))
        pad = b"\x00" * (_align8(len(data)) - len(data))
        chunks += (data, pad)
        digest.update(data)
        digest.update(pad)
        pos += len(data) + len(pad)
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        HEADER_SIZE,
        pos - HEADER_SIZE,
        digest.intdigest(),
        dir_bits,
        rid_bits,
        n,
    )
    head += b"".join(_SECTION.pack(*s) for s in sections)
    head = head.ljust(_HEADER_XXH_AT, b"\x00")
    head += struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    return SnapshotImage([head, *chunks], pos)


class SnapshotImage:
    """A compiled snapshot held as its sections, to write out or load in memory."""

    __slots__ = ("chunks", "size")

    def __init__(self, chunks: list[Buffer], size: int) -> None:
        self.chunks = chunks
        self.size = size

    def __len__(self) -> int:
        return self.size

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: temp file in the same folder, fsync, rename."""
        return write_snapshot(path, self.chunks)


def compile_index(
    lists: Sequence[tuple[ListSpec, ParsedList]],
    *,
    guard: PoisonGuard | None = None,
    built_at: float | None = None,
) -> tuple[SnapshotImage, CompileStats]:
    """Compile parsed lists into a snapshot image; rules the guard refuses are counted."""
    with paused_gc():
        return _compile(lists, guard or PoisonGuard.default(), built_at)


def _compile(
    lists: Sequence[tuple[ListSpec, ParsedList]], guard: PoisonGuard, built_at: float | None
) -> tuple[SnapshotImage, CompileStats]:
    t0 = time.perf_counter()
    stats = CompileStats()
    ns: list[int] = []
    kinds = array("B")
    list_ids = array("H")
    lines = array("I")
    keys: list[bytes] = []
    texts: list[bytes] = []
    url_hosts: set[str] = set()
    v4: set[int] = set()
    v6: set[int] = set()
    infos = []
    by_kind = [0] * 6
    if len(lists) >= _MARKER_LIST:
        raise ValueError(f"at most {_MARKER_LIST - 1} lists")
    for list_id, (spec, parsed) in enumerate(lists):
        infos.append(
            {
                "name": spec.name,
                "category": spec.category,
                "mode": spec.mode.value,
                "allow": spec.allow,
            }
        )
        buckets = _by_kind(parsed.rules)
        hosts = buckets.get(RuleKind.DOMAIN, []) + buckets.get(RuleKind.EXACT, [])
        # Hosts are most of any feed: guard them in bulk; the rest one by one.
        refused_hosts = guard.refused_hosts(list(map(_KEY, hosts))) if hosts else {}
        for kind, rules in buckets.items():
            if kind is RuleKind.DOMAIN or kind is RuleKind.EXACT:
                reasons = [refused_hosts.get(r.key) for r in rules] if refused_hosts else None
            else:
                reasons = [guard.check(r) for r in rules]
            if reasons is not None and any(reasons):
                kept = []
                for rule, reason in zip(rules, reasons, strict=True):
                    if reason is None:
                        kept.append(rule)
                        continue
                    stats.refused_count += 1
                    if len(stats.refused) < 20:
                        stats.refused.append(
                            {
                                "list": spec.name,
                                "line": rule.line,
                                "rule": rule.text,
                                "reason": reason,
                            }
                        )
                rules = kept
            rule_keys = list(map(_KEY, rules))
            if kind is RuleKind.URL:
                url_hosts.update(k.partition("/")[0] for k in rule_keys)
            elif kind is RuleKind.CIDR:
                for k in rule_keys:
                    addr, _, plen = k.partition("/")
                    (v6 if ":" in addr else v4).add(int(plen))
            n = len(rules)
            by_kind[kind] += n
            ns.extend(repeat(_NAMESPACE[kind], n))
            kinds.extend(repeat(kind, n))
            list_ids.extend(repeat(list_id, n))
            lines.extend(map(_LINE, rules))
            keys.extend(map(str.encode, rule_keys))
            texts.extend(
                [
                    b"" if t == k else t.encode("utf-8", "replace")[:MAX_TEXT_BYTES]
                    for k, t in zip(rule_keys, map(_TEXT, rules), strict=True)
                ]
            )
            stats.exceptions += sum(map(_EXCEPTION, rules))
    for host in sorted(url_hosts):
        ns.append(NS_HOST)
        kinds.append(URLHOST)
        list_ids.append(_MARKER_LIST)
        lines.append(0)
        keys.append(host.encode())
        texts.append(b"")
    stats.rules = sum(by_kind)
    stats.by_kind = {RuleKind(k).label: n for k, n in enumerate(by_kind) if n}
    meta = {
        "format": FORMAT_VERSION,
        "lists": infos,
        "v4_prefixes": sorted(v4, reverse=True),
        "v6_prefixes": sorted(v6, reverse=True),
        "built_at": built_at if built_at is not None else time.time(),
        "rules": stats.rules,
        "by_kind": stats.by_kind,
        "refused_count": stats.refused_count,
        "refused": stats.refused,
    }
    image = _build_image(ns, kinds, list_ids, lines, keys, texts, meta)
    stats.seconds = time.perf_counter() - t0
    return image, stats


class CompiledIndex:
    """An immutable, memory-mapped rule index."""

    __slots__ = (
        "_buf",
        "_mm",
        "_dir",
        "_shift",
        "_table",
        "_rid_bits",
        "_rid_mask",
        "_kinds",
        "_list_ids",
        "_lines",
        "_key_offs",
        "_text_offs",
        "_keys",
        "_texts",
        "_lists",
        "_v4",
        "_v6",
        "_small",
        "meta",
        "size_bytes",
        "path",
        "__weakref__",
    )

    def __init__(
        self,
        buf: bytes | mmap.mmap | SnapshotImage,
        *,
        path: Path | None = None,
        verify: bool = True,
    ) -> None:
        if isinstance(buf, SnapshotImage):
            buf = buf.to_bytes()
        self._mm = buf if isinstance(buf, mmap.mmap) else None
        self.path = path
        self.size_bytes = len(buf)
        h = _read_header(buf)
        if verify:
            _check_body(buf, h)
        n = h["n"]
        self._buf = mv = memoryview(buf)
        sec = h["sections"]

        def view(name: str, fmt: str, count: int) -> memoryview:
            off, length = sec[name]
            if length != count * struct.calcsize(fmt):
                raise SnapshotError(f"snapshot section {name!r} has the wrong size")
            return mv[off : off + length].cast(fmt)

        self._dir = view("dir", "I", (1 << h["dir_bits"]) + 1)
        self._shift = 64 - h["dir_bits"]
        self._table = view("table", "Q", n)
        self._rid_bits = h["rid_bits"]
        self._rid_mask = (1 << h["rid_bits"]) - 1
        self._kinds = view("kinds", "B", n)
        self._list_ids = view("lists", "H", n)
        self._lines = view("lines", "I", n)
        self._key_offs = view("key_offs", "Q", n + 1)
        self._text_offs = view("text_offs", "Q", n + 1)
        self._keys = mv[sec["keys"][0] : sec["keys"][0] + sec["keys"][1]]
        self._texts = mv[sec["texts"][0] : sec["texts"][0] + sec["texts"][1]]
        if self._key_offs[n] != len(self._keys) or self._text_offs[n] != len(self._texts):
            raise SnapshotError("snapshot string sections inconsistent")
        try:
            off, length = sec["meta"]
            meta = json.loads(bytes(mv[off : off + length]))
            self._lists = tuple(
                ListInfo(d["name"], d["category"], Mode(d["mode"]), bool(d["allow"]))
                for d in meta["lists"]
            )
            self._v4 = tuple(int(p) for p in meta["v4_prefixes"])
            self._v6 = tuple(int(p) for p in meta["v6_prefixes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"snapshot metadata unreadable: {exc}") from None
        self.meta: dict[str, Any] = meta
        # Small indexes (allowlists) get a dict: one lookup instead of a probe.
        self._small: dict[tuple[int, bytes], list[int]] | None = None
        if n <= SMALL_INDEX_RECORDS:
            self._small = {}
            ns_of = {URLHOST: NS_HOST, **{int(k): v for k, v in _NAMESPACE.items()}}
            for rid in range(n):
                key = bytes(self._keys[self._key_offs[rid] : self._key_offs[rid + 1]])
                self._small.setdefault((ns_of[self._kinds[rid]], key), []).append(rid)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompiledIndex:
        """Map a snapshot file after checking version, size and checksum; SnapshotError if bad."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(HEADER_SIZE)
                h = _read_header(head)
                if HEADER_SIZE + h["body_len"] != size:
                    raise SnapshotError(
                        f"truncated or padded snapshot ({size} bytes, header says "
                        f"{HEADER_SIZE + h['body_len']})"
                    )
                # Verify by reading (not mapping) so the check does not pull the
                # whole file into this process's resident set.
                digest = xxhash.xxh3_64()
                chunk = bytearray(CHECKSUM_CHUNK)
                view = memoryview(chunk)
                while n := f.readinto(chunk):
                    digest.update(view[:n])
                if digest.intdigest() != h["body_xxh"]:
                    raise SnapshotError("checksum mismatch (corrupt snapshot)")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except SnapshotError as exc:
            raise SnapshotError(f"{path}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path}: cannot read snapshot: {exc}") from None
        return cls(mm, path=path, verify=False)

    # -- introspection ----------------------------------------------------

    @property
    def lists(self) -> tuple[ListInfo, ...]:
        return self._lists

    @property
    def rule_count(self) -> int:
        return int(self.meta.get("rules", 0))

    def close(self) -> None:
        """Release the mapping (only when no lookup can still be running)."""
        for v in (
            self._dir,
            self._table,
            self._kinds,
            self._list_ids,
            self._lines,
            self._key_offs,
            self._text_offs,
            self._keys,
            self._texts,
            self._buf,
        ):
            v.release()
        if self._mm is not None:
            self._mm.close()

    # -- lookups ----------------------------------------------------------

    def _find(self, ns: int, key: bytes) -> list[int]:
        """Record ids whose key equals ``key`` in namespace ``ns``."""
        if self._small is not None:
            return self._small.get((ns, key), _NONE)
        h = xxhash.xxh3_64_intdigest(key, ns)
        b = h >> self._shift
        lo = self._dir[b]
        hi = self._dir[b + 1]
        if lo == hi:
            return _NONE
        rb = self._rid_bits
        fp = h >> rb
        table = self._table
        out = _NONE
        for i in range(lo, hi):
            v = table[i]
            if v >> rb == fp:
                rid = v & self._rid_mask
                offs = self._key_offs
                if self._keys[offs[rid] : offs[rid + 1]] == key:
                    if out is _NONE:
                        out = []
                    out.append(rid)
        return out

    def _match(self, rid: int) -> Match:
        info = self._lists[self._list_ids[rid]]
        key = bytes(self._keys[self._key_offs[rid] : self._key_offs[rid + 1]]).decode()
        t0, t1 = self._text_offs[rid], self._text_offs[rid + 1]
        text = bytes(self._texts[t0:t1]).decode("utf-8", "replace") if t1 > t0 else key
        return Match(
            list=info.name,
            rule=text,
            line=self._lines[rid],
            kind=RuleKind(self._kinds[rid]),
            category=info.category,
            mode=info.mode,
            key=key,
        )

    def _pick(self, found: Iterable[int], best: Match | None) -> tuple[Match | None, bool]:
        """Keep the first enforce match (or the first monitor one); True when final."""
        for rid in found:
            if self._lists[self._list_ids[rid]].mode is Mode.ENFORCE:
                return self._match(rid), True
            if best is None:
                best = self._match(rid)
        return best, False

    def match_url(self, cu: CanonicalURL) -> Match | None:
        """The rule that matches this canonical URL, enforce rules first, or None."""
        best, final, url_hosts = self._match_host(cu.host, cu.host_kind, url_expressions=True)
        if final:
            return best
        if url_hosts:
            paths = url_path_expressions(cu)
            for host in url_host_expressions(cu):
                if host not in url_hosts:
                    continue
                for path in paths:
                    found = self._find(NS_URL, (host + path).encode())
                    if found:
                        best, final = self._pick(found, best)
                        if final:
                            return best
        return best

    def match_host(self, host: str) -> Match | None:
        """Rules that match every URL on ``host`` (a CONNECT target, an SNI name, an IP)."""
        kind = host_kind(host)
        best, final, url_hosts = self._match_host(host, kind, url_expressions=True)
        if final:
            return best
        for h in url_hosts:
            # A URL rule for the root path ("evil.example/") covers the whole host.
            found = self._find(NS_URL, (h + "/").encode())
            if found:
                best, final = self._pick(found, best)
                if final:
                    return best
        return best

    def _match_host(
        self, host: str, kind: str, *, url_expressions: bool
    ) -> tuple[Match | None, bool, set[str]]:
        """Host, IP and CIDR rules; also which host expressions carry URL rules."""
        best: Match | None = None
        url_hosts: set[str] = set()
        kinds = self._kinds
        if kind == "domain":
            hb = host.encode()
            first = True
            labels_left = hb.count(b".") + 1
            while True:
                for rid in self._find(NS_HOST, hb):
                    k = kinds[rid]
                    if k == URLHOST:
                        # Safe Browsing host expressions: the exact host and the last 5 labels
                        if first or labels_left <= 5:
                            url_hosts.add(hb.decode())
                    elif k == RuleKind.DOMAIN or (k == RuleKind.EXACT and first):
                        best, final = self._pick((rid,), best)
                        if final:
                            return best, True, url_hosts
                i = hb.find(b".")
                if i < 0:
                    return best, False, url_hosts
                hb = hb[i + 1 :]
                first = False
                labels_left -= 1
        found = []
        for rid in self._find(NS_HOST, host.encode()):
            if kinds[rid] == URLHOST:
                url_hosts.add(host)
            else:
                found.append(rid)
        best, final = self._pick(found, best)
        if final:
            return best, True, url_hosts
        best, final = self._match_cidr(host, kind, best)
        return best, final, url_hosts

    def _match_cidr(self, host: str, kind: str, best: Match | None) -> tuple[Match | None, bool]:
        prefixes = self._v4 if kind == "ipv4" else self._v6
        if not prefixes:
            return best, False
        ip = ipaddress.ip_address(host)
        n = int(ip)
        bits = ip.max_prefixlen
        cls = ipaddress.IPv4Address if kind == "ipv4" else ipaddress.IPv6Address
        for plen in prefixes:
            net = n >> (bits - plen) << (bits - plen)
            found = self._find(NS_NET, f"{cls(net).compressed}/{plen}".encode())
            if found:
                best, final = self._pick(found, best)
                if final:
                    return best, True
        return best, False


def _read_header(buf: bytes | bytearray | mmap.mmap) -> dict[str, Any]:
    if len(buf) < HEADER_SIZE:
        raise SnapshotError(f"truncated snapshot ({len(buf)} bytes)")
    raw = bytes(buf[:HEADER_SIZE])
    magic, version, hsize, body_len, body_xxh, dir_bits, rid_bits, n = _HEAD.unpack_from(raw)
    if magic[:6] != MAGIC[:6]:
        raise SnapshotError("not a jectguard snapshot (bad magic)")
    if version != FORMAT_VERSION or magic != MAGIC:
        raise SnapshotError(
            f"snapshot format version {version}; this jectguard reads {FORMAT_VERSION}"
        )
    if (
        xxhash.xxh3_64_intdigest(raw[:_HEADER_XXH_AT])
        != struct.unpack_from("<Q", raw, _HEADER_XXH_AT)[0]
    ):
        raise SnapshotError("header checksum mismatch (corrupt snapshot)")
    sections = {}
    pos = HEADER_SIZE
    for i, name in enumerate(SECTIONS):
        off, length = _SECTION.unpack_from(raw, _HEAD.size + i * _SECTION.size)
        if off != pos:
            raise SnapshotError("snapshot section table inconsistent (corrupt snapshot)")
        sections[name] = (off, length)
        pos = off + _align8(length)
    if (
        hsize != HEADER_SIZE
        or body_len > MAX_SNAPSHOT_BYTES
        or pos != HEADER_SIZE + body_len
        or not 4 <= dir_bits <= MAX_DIR_BITS
        or not 0 < rid_bits < 40
        or n >= (1 << rid_bits)
    ):
        raise SnapshotError("snapshot header inconsistent (corrupt snapshot)")
    return {
        "body_len": body_len,
        "body_xxh": body_xxh,
        "dir_bits": dir_bits,
        "rid_bits": rid_bits,
        "n": n,
        "sections": sections,
    }


def _check_body(buf: bytes | mmap.mmap, h: dict[str, Any]) -> None:
    if len(buf) != HEADER_SIZE + h["body_len"]:
        raise SnapshotError("truncated or padded snapshot")
    if xxhash.xxh3_64_intdigest(memoryview(buf)[HEADER_SIZE:]) != h["body_xxh"]:
        raise SnapshotError("checksum mismatch (corrupt snapshot)")


def write_snapshot(path: str | os.PathLike[str], image: Buffer | Sequence[Buffer]) -> Path:
    """Write a snapshot atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [image] if isinstance(image, bytes | bytearray | memoryview) else image
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
