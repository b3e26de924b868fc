"""The compiled rule index and its snapshot file.

Compiling turns parsed lists into one immutable, memory-mappable byte image:

    header | hash table | records | string blob | metadata (JSON)

* The **hash table** is open addressing with linear probing over 64-bit slots.
  A slot holds ``fingerprint << rid_bits | (record id + 1)``; 0 is empty. The
  slot index is the low bits of an xxh3-64 hash of the key (seeded by the key's
  namespace), the fingerprint its high bits. Several records may share a key
  (a domain in two lists; a domain rule and a URL-host marker): they sit in the
  same probe chain.
* A **record** (16 bytes) says which rule: kind, flags, list id, line number,
  and offsets of the canonical key and the rule text in the blob. A fingerprint
  hit is confirmed by comparing the stored key, so there are no false positives.
* The **metadata** names the lists (name, category, mode) and the CIDR prefix
  lengths present, and carries compile statistics.

The file is versioned and checksummed (xxh3-64 over header and body). Loading
maps it read-only, so several proxy processes share one copy in the page cache,
and a lookup touches only the few pages it probes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import xxhash

from .canon import CanonicalURL, host_kind, url_host_expressions, url_path_expressions
from .errors import SnapshotError
from .guard import PoisonGuard
from .model import ListSpec, Match, Mode, ParsedList, Rule, RuleKind

if sys.byteorder != "little":  # the table is mapped as native 64-bit integers
    raise ImportError("jectguard snapshots need a little-endian machine")

MAGIC: Final = b"JGSNAP\x00\x01"
FORMAT_VERSION: Final = 1
# Fraction of table slots in use; lower means shorter probe chains, more memory.
MAX_LOAD_FACTOR: Final = 0.6
# Read the file in chunks of this size to verify its checksum without mapping it all.
CHECKSUM_CHUNK: Final = 8 * 1024 * 1024
# Largest snapshot we agree to load (guards against a bogus header).
MAX_SNAPSHOT_BYTES: Final = 8 * 1024**3

# Key namespaces: the hash seed keeps equal strings of different meaning apart.
NS_HOST: Final = 1  # domain / exact-host / IP rules and URL-host markers, keyed by host
NS_URL: Final = 2  # URL rules, keyed by "host/path[?query]"
NS_NET: Final = 3  # CIDR rules, keyed by "network/len"

# A record kind that is not a rule: "some URL rule has this host".
URLHOST: Final = 0
_NO_TEXT: Final = 0xFFFFFFFF  # the rule text equals its key
_FLAG_EXCEPTION: Final = 1

_HEADER: Final = struct.Struct("<8sIIQQQIIQQQQQQQ")  # see _pack_header
_RECORD: Final = struct.Struct("<BBHIII")
_STRLEN: Final = struct.Struct("<H")
HEADER_SIZE: Final = 128


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


def _hash(seed: int, key: bytes) -> int:
    return xxhash.xxh3_64_intdigest(key, seed)


class _Builder:
    """Accumulates records and builds the byte image."""

    def __init__(self) -> None:
        self.hashes: list[int] = []
        self.records = bytearray()
        self.blob = bytearray(b"\x00")  # offset 0 is never a string
        self._strings: dict[bytes, int] = {}

    def _string(self, data: bytes) -> int:
        off = self._strings.get(data)
        if off is None:
            data = data[:0xFFFF]
            off = len(self.blob)
            self.blob += _STRLEN.pack(len(data))
            self.blob += data
            if len(self._strings) < 4096:  # dedupe only the hot few (list names, short texts)
                self._strings[data] = off
        return off

    def add(
        self, ns: int, kind: int, key: str, text: str, list_id: int, line: int, flags: int
    ) -> None:
        kb = key.encode()
        key_off = len(self.blob)
        self.blob += _STRLEN.pack(len(kb))
        self.blob += kb
        text_off = _NO_TEXT if text == key else self._string(text.encode("utf-8", "replace"))
        self.records += _RECORD.pack(kind, flags, list_id, line, key_off, text_off)
        self.hashes.append(_hash(ns, kb))

    def image(self, meta: dict[str, object]) -> bytes:
        n = len(self.hashes)
        if len(self.blob) >= _NO_TEXT:
            raise SnapshotError("string blob over 4 GiB")
        slots = 16
        while slots * MAX_LOAD_FACTOR < n:
            slots *= 2
        mask = slots - 1
        rid_bits = (n + 1).bit_length()
        table = [0] * slots
        for rid, h in enumerate(self.hashes):
            i = h & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = ((h >> rid_bits) << rid_bits) | (rid + 1)
        table_bytes = array("Q", table).tobytes()
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
        table_off = HEADER_SIZE
        records_off = table_off + len(table_bytes)
        blob_off = records_off + len(self.records)
        meta_off = blob_off + len(self.blob)
        body = b"".join((table_bytes, bytes(self.records), bytes(self.blob), meta_bytes))
        fields = (
            MAGIC,
            FORMAT_VERSION,
            HEADER_SIZE,
            len(body),
            xxhash.xxh3_64_intdigest(body),
            slots,
            rid_bits,
            n,
            table_off,
            records_off,
            blob_off,
            len(self.blob),
            meta_off,
            len(meta_bytes),
            0,
        )
        header = _HEADER.pack(*fields)
        header = header[:-8] + struct.pack("<Q", xxhash.xxh3_64_intdigest(header[:-8]))
        return header.ljust(HEADER_SIZE, b"\x00") + body


def compile_index(
    lists: Sequence[tuple[ListSpec, ParsedList]],
    *,
    guard: PoisonGuard | None = None,
    built_at: float | None = None,
) -> tuple[bytes, CompileStats]:
    """Compile parsed lists into a snapshot image; rules the guard refuses are counted."""
    t0 = time.perf_counter()
    guard = guard or PoisonGuard.default()
    stats = CompileStats()
    b = _Builder()
    url_hosts: set[str] = set()
    v4: set[int] = set()
    v6: set[int] = set()
    infos = []
    for list_id, (spec, parsed) in enumerate(lists):
        infos.append(
            {
                "name": spec.name,
                "category": spec.category,
                "mode": spec.mode.value,
                "allow": spec.allow,
            }
        )
        for rule in parsed.rules:
            reason = guard.check(rule)
            if reason is not None:
                stats.refused_count += 1
                if len(stats.refused) < 20:
                    stats.refused.append(
                        {"list": spec.name, "line": rule.line, "rule": rule.text, "reason": reason}
                    )
                continue
            flags = _FLAG_EXCEPTION if rule.exception else 0
            stats.exceptions += rule.exception
            _add_rule(b, rule, list_id, flags, url_hosts, v4, v6)
            stats.rules += 1
            k = rule.kind.label
            stats.by_kind[k] = stats.by_kind.get(k, 0) + 1
    for host in sorted(url_hosts):
        b.add(NS_HOST, URLHOST, host, host, 0xFFFF, 0, 0)
    meta = {
        "lists": infos,
        "v4_prefixes": sorted(v4, reverse=True),
        "v6_prefixes": sorted(v6, reverse=True),
        "built_at": built_at if built_at is not None else time.time(),
        "rules": stats.rules,
        "by_kind": stats.by_kind,
        "refused_count": stats.refused_count,
        "refused": stats.refused,
    }
    image = b.image(meta)
    stats.seconds = time.perf_counter() - t0
    return image, stats


def _add_rule(
    b: _Builder,
    rule: Rule,
    list_id: int,
    flags: int,
    url_hosts: set[str],
    v4: set[int],
    v6: set[int],
) -> None:
    kind = rule.kind
    if kind is RuleKind.DOMAIN or kind is RuleKind.EXACT or kind is RuleKind.IP:
        b.add(NS_HOST, kind, rule.key, rule.text, list_id, rule.line, flags)
    elif kind is RuleKind.URL:
        host = rule.key.partition("/")[0]
        url_hosts.add(host)
        b.add(NS_URL, kind, rule.key, rule.text, list_id, rule.line, flags)
    elif kind is RuleKind.CIDR:
        addr, _, plen = rule.key.partition("/")
        (v6 if ":" in addr else v4).add(int(plen))
        b.add(NS_NET, kind, rule.key, rule.text, list_id, rule.line, flags)


class CompiledIndex:
    """An immutable, memory-mapped rule index. Lookups never allocate much."""

    __slots__ = (
        "_buf",
        "_mm",
        "_table",
        "_mask",
        "_rid_bits",
        "_rid_mask",
        "_records_off",
        "_blob_off",
        "_lists",
        "meta",
        "size_bytes",
        "path",
        "__weakref__",
    )

    def __init__(
        self, buf: bytes | mmap.mmap, *, path: Path | None = None, verify: bool = True
    ) -> None:
        self._mm = buf if isinstance(buf, mmap.mmap) else None
        self.path = path
        self.size_bytes = len(buf)
        h = _read_header(buf)
        if verify and not isinstance(buf, mmap.mmap):
            _check_body(buf, h)
        slots, rid_bits, n = h["slots"], h["rid_bits"], h["n"]
        self._buf = memoryview(buf)
        self._table = self._buf[h["table_off"] : h["table_off"] + slots * 8].cast("Q")
        self._mask = slots - 1
        self._rid_bits = rid_bits
        self._rid_mask = (1 << rid_bits) - 1
        self._records_off = h["records_off"]
        self._blob_off = h["blob_off"]
        try:
            meta = json.loads(bytes(self._buf[h["meta_off"] : h["meta_off"] + h["meta_len"]]))
            self._lists = [
                ListInfo(d["name"], d["category"], Mode(d["mode"]), bool(d["allow"]))
                for d in meta["lists"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"snapshot metadata unreadable: {exc}") from None
        self.meta: dict[str, object] = meta
        if len(self._lists) > 0xFFFF or n > self._rid_mask:
            raise SnapshotError("snapshot header inconsistent")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompiledIndex:
        """Map a snapshot file after verifying its version and checksum; SnapshotError if bad."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_SIZE:
                    raise SnapshotError(f"{path}: truncated snapshot ({size} bytes)")
                head = f.read(HEADER_SIZE)
                h = _read_header(head)
                if HEADER_SIZE + h["body_len"] != size:
                    raise SnapshotError(
                        f"{path}: truncated or padded snapshot ({size} bytes, header says "
                        f"{HEADER_SIZE + h['body_len']})"
                    )
                digest = xxhash.xxh3_64()
                chunk = bytearray(CHECKSUM_CHUNK)
                view = memoryview(chunk)
                while n := f.readinto(chunk):
                    digest.update(view[:n])
                if digest.intdigest() != h["body_xxh"]:
                    raise SnapshotError(f"{path}: checksum mismatch (corrupt snapshot)")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise SnapshotError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from None
        return cls(mm, path=path, verify=False)

    # -- introspection ----------------------------------------------------

    @property
    def lists(self) -> list[ListInfo]:
        return list(self._lists)

    @property
    def rule_count(self) -> int:
        return int(self.meta.get("rules", 0))  # type: ignore[call-overload]

    def close(self) -> None:
        """Release the mapping (only when no lookup can still be running)."""
        self._table.release()
        self._buf.release()
        if self._mm is not None:
            self._mm.close()

    # -- lookups ----------------------------------------------------------

    def _find(self, ns: int, key: bytes) -> list[tuple[int, int, int, int, int, int]]:
        """All records whose key equals ``key`` in namespace ``ns``."""
        h = xxhash.xxh3_64_intdigest(key, ns)
        table = self._table
        mask = self._mask
        rb = self._rid_bits
        fp = h >> rb
        i = h & mask
        out: list[tuple[int, int, int, int, int, int]] = []
        while True:
            v = table[i]
            if not v:
                return out
            if v >> rb == fp:
                rec = _RECORD.unpack_from(
                    self._buf, self._records_off + ((v & self._rid_mask) - 1) * 16
                )
                if self._string(rec[4]) == key:
                    out.append(rec)
            i = (i + 1) & mask

    def _string(self, off: int) -> bytes:
        off += self._blob_off
        (n,) = _STRLEN.unpack_from(self._buf, off)
        return bytes(self._buf[off + 2 : off + 2 + n])

    def _match(self, rec: tuple[int, int, int, int, int, int]) -> Match:
        kind, _flags, list_id, line, key_off, text_off = rec
        info = self._lists[list_id]
        key = self._string(key_off).decode()
        text = key if text_off == _NO_TEXT else self._string(text_off).decode("utf-8", "replace")
        return Match(
            list=info.name,
            rule=text,
            line=line,
            kind=RuleKind(kind),
            category=info.category,
            mode=info.mode,
            key=key,
        )

    def _pick(
        self, found: Iterable[tuple[int, int, int, int, int, int]], best: Match | None
    ) -> tuple[Match | None, bool]:
        """Keep the first enforce match (or the first monitor one); True when final."""
        for rec in found:
            if self._lists[rec[2]].mode is Mode.ENFORCE:
                return self._match(rec), True
            if best is None:
                best = self._match(rec)
        return best, False

    def match_url(self, cu: CanonicalURL) -> Match | None:
        """The rule that matches this canonical URL, enforce rules first, or None."""
        best, final = self._match_host(cu.host, cu.host_kind)
        if final:
            return best
        hosts = self._url_hosts(cu)
        if hosts:
            paths = url_path_expressions(cu)
            for host in hosts:
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
        best, final = self._match_host(host, kind)
        if final:
            return best
        for h in url_host_expressions_for(host, kind):
            if any(r[0] == URLHOST for r in self._find(NS_HOST, h.encode())):
                found = self._find(NS_URL, (h + "/").encode())
                if found:
                    best, final = self._pick(found, best)
                    if final:
                        return best
        return best

    def _match_host(self, host: str, kind: str) -> tuple[Match | None, bool]:
        best: Match | None = None
        if kind == "domain":
            hb = host.encode()
            first = True
            while True:
                found = self._find(NS_HOST, hb)
                for rec in found:
                    k = rec[0]
                    if k == RuleKind.DOMAIN or (k == RuleKind.EXACT and first):
                        best, final = self._pick((rec,), best)
                        if final:
                            return best, True
                i = hb.find(b".")
                if i < 0:
                    return best, False
                hb = hb[i + 1 :]
                first = False
        found = [r for r in self._find(NS_HOST, host.encode()) if r[0] != URLHOST]
        best, final = self._pick(found, best)
        if final:
            return best, True
        return self._match_cidr(host, kind, best)

    def _match_cidr(self, host: str, kind: str, best: Match | None) -> tuple[Match | None, bool]:
        prefixes = self.meta["v4_prefixes" if kind == "ipv4" else "v6_prefixes"]
        if not prefixes:
            return best, False
        ip = ipaddress.ip_address(host)
        n = int(ip)
        bits = ip.max_prefixlen
        cls = ipaddress.IPv4Address if kind == "ipv4" else ipaddress.IPv6Address
        for plen in prefixes:  # type: ignore[attr-defined]
            net = n >> (bits - plen) << (bits - plen)
            found = self._find(NS_NET, f"{cls(net).compressed}/{plen}".encode())
            if found:
                best, final = self._pick(found, best)
                if final:
                    return best, True
        return best, False

    def _url_hosts(self, cu: CanonicalURL) -> list[str]:
        """Host expressions of this URL that carry URL rules (usually none)."""
        out = []
        for h in url_host_expressions(cu):
            for rec in self._find(NS_HOST, h.encode()):
                if rec[0] == URLHOST:
                    out.append(h)
                    break
        return out


def url_host_expressions_for(host: str, kind: str) -> list[str]:
    """Safe Browsing host expressions for a bare host."""
    cu = CanonicalURL("http", host, kind, None, "/", None)  # type: ignore[arg-type]
    return url_host_expressions(cu)


def _read_header(buf: bytes | bytearray | mmap.mmap) -> dict[str, int]:
    if len(buf) < HEADER_SIZE:
        raise SnapshotError(f"truncated snapshot ({len(buf)} bytes)")
    raw = bytes(buf[: _HEADER.size])
    fields = _HEADER.unpack(raw)
    if fields[0] != MAGIC:
        raise SnapshotError("not a jectguard snapshot (bad magic)")
    if fields[1] != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot format version {fields[1]}, this jectguard reads {FORMAT_VERSION}"
        )
    if xxhash.xxh3_64_intdigest(raw[:-8]) != fields[-1]:
        raise SnapshotError("snapshot header checksum mismatch (corrupt snapshot)")
    (
        _,
        _,
        hsize,
        body_len,
        body_xxh,
        slots,
        rid_bits,
        n,
        table_off,
        records_off,
        blob_off,
        blob_len,
        meta_off,
        meta_len,
        _,
    ) = fields
    if (
        hsize != HEADER_SIZE
        or body_len > MAX_SNAPSHOT_BYTES
        or slots & (slots - 1)
        or not 0 < rid_bits < 40
        or table_off != HEADER_SIZE
        or records_off != table_off + slots * 8
        or blob_off != records_off + n * _RECORD.size
        or meta_off != blob_off + blob_len
        or meta_off + meta_len != HEADER_SIZE + body_len
    ):
        raise SnapshotError("snapshot header inconsistent (corrupt snapshot)")
    return {
        "body_len": body_len,
        "body_xxh": body_xxh,
        "slots": slots,
        "rid_bits": rid_bits,
        "n": n,
        "table_off": table_off,
        "records_off": records_off,
        "blob_off": blob_off,
        "meta_off": meta_off,
        "meta_len": meta_len,
    }


def _check_body(buf: bytes | bytearray, h: dict[str, int]) -> None:
    if len(buf) != HEADER_SIZE + h["body_len"]:
        raise SnapshotError("truncated or padded snapshot")
    if xxhash.xxh3_64_intdigest(memoryview(buf)[HEADER_SIZE:]) != h["body_xxh"]:
        raise SnapshotError("checksum mismatch (corrupt snapshot)")


def write_snapshot(path: str | os.PathLike[str], image: bytes) -> Path:
    """Write a snapshot atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
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
