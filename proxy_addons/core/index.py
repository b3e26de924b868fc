# One module on purpose (~950 lines): the snapshot's binary format, its compiler and its
# reader must agree byte for byte; keeping them together keeps that agreement in one place.
"""The compiled rule index and its snapshot file.

Compiling turns parsed lists into one immutable, memory-mappable byte image:

    header | directory | hash table | kinds | list ids | lines | text offsets
           | texts | metadata (JSON)

* Every rule has a **key** (a canonical host, a Safe Browsing URL expression,
  a packed network) hashed with xxh3-64, seeded by the key's namespace.
* The **hash table** holds those 64-bit hashes sorted, and the record columns
  (kind, list, line, text) are stored in the same order, so a table position
  *is* the record id. The **directory** maps the top bits of a hash to the run
  of positions sharing them (about one). A lookup hashes the probe key, reads
  two directory entries and compares one or two 64-bit values: nothing else is
  touched unless it matches, and the key itself need not be stored (the caller
  has it). With 64-bit hashes a false match needs a collision, about one in
  10^19 per probe for a million rules.
* Besides rules, the table holds **markers** (records of a kind that is no
  rule): "some URL rule has this host" (so most URLs cost one probe), every URL
  rule again lower-cased, and a block URL rule's other spellings (a query rule
  at its bare path, any rule at its path's stems), each pointing back to its rule.
* The **metadata** names the lists (name, category, mode), the CIDR prefix
  lengths present, how many markers of each sort there are (lookups skip the
  probes for a sort that has none) and the compile statistics.

The file is versioned and checksummed (xxh3-64 over header and body).

Loading never maps the published file itself: a file in a shared folder can be
truncated (a mapping then dies of SIGBUS), overwritten in place (``rsync
--inplace``, a network volume's client) or removed under a reader, and a
mapping would serve whatever bytes it then holds. :meth:`CompiledIndex.load`
copies the file into a folder only this user writes (``copy_dir``), named by
its checksum and size, verifies the *copy* and maps that read-only; processes
of one user on one host share it in the page cache, and a lookup touches only
the few pages it probes. Without a usable ``copy_dir`` the verified bytes are
read into process memory. :func:`check_published` re-verifies the published
file cheaply (a ``stat``; the checksum only when it changed or when asked), so
a change is reported while the verified rules keep serving.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import json
import mmap
import os
import stat
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Buffer, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

import xxhash

from .canon import (
    MAX_HOST_LENGTH,
    CanonicalURL,
    host_kind,
    query_params,
    url_host_expressions,
    url_match_paths,
    url_rule_alternates,
)
from .errors import SnapshotError
from .gcpause import paused_gc
from .guard import PoisonGuard
from .model import ListSpec, Match, Mode, ParsedList, Rule, RuleKind

if sys.byteorder != "little":  # the table is mapped as native 64-bit integers
    raise ImportError("jectguard snapshots need a little-endian machine")

MAGIC: Final = b"JGSNAP\x00\x07"
FORMAT_VERSION: Final = 7
# At most 2**28 directory buckets (1 GiB of directory); about one per rule below that.
MAX_DIR_BITS: Final = 28
# Read the file in chunks of this size to verify its checksum without mapping it all.
CHECKSUM_CHUNK: Final = 1024 * 1024
# Largest snapshot we agree to load (guards against a bogus header).
MAX_SNAPSHOT_BYTES: Final = 8 * 1024**3
# Rule texts longer than this are cut (provenance only; matching never uses them).
MAX_TEXT_BYTES: Final = 1024

# Key namespaces: the hash seed keeps equal strings of different meaning apart.
NS_HOST: Final = 1  # domain / exact-host / IP rules and URL-host markers, keyed by host
NS_URL: Final = 2  # URL rules, keyed by "host/path[?query]"
NS_NET: Final = 3  # CIDR rules, keyed by packed (network, prefix length)
# Every URL rule again, keyed by its lower-cased expression: probed only when paths
# are matched without regard to letter case (``jg_url_case_insensitive``: IIS serves
# /MAL/X.EXE for /mal/x.exe). Same record columns, so provenance is the rule's own.
NS_URL_FOLDED: Final = 4
# Other spellings of a block rule's file (``url_rule_alternates``): a query rule at its
# bare path, any rule at each stem of its path (MultiViews). Keyed by "host/path", the
# record's text is the suffix that makes the rule's key again, so a hit is checked (the
# URL holds the rule's query parameters) and then resolved to the rule's own record.
# Allow lists get none: an exception matches as written, never more widely.
NS_URL_ALT: Final = 5
NS_URL_ALT_FOLDED: Final = 6  # the same, lower-cased (``jg_url_case_insensitive``)

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
# A record kind that is not a rule either: another spelling of a URL rule (NS_URL_ALT*).
URLALT: Final = 7
_MARKERS: Final = frozenset({URLHOST, URLALT})
_MARKER_LIST: Final = 0xFFFF

# Sections, in file order. Each is (offset, length) in the header.
SECTIONS: Final = (
    "dir",
    "table",
    "kinds",
    "lists",
    "lines",
    "text_offs",
    "texts",
    "meta",
)
_HEAD: Final = struct.Struct("<8sIIQQII")  # magic, version, header size, body length,
#                                          body xxh3-64, dir_bits, records
_SECTION: Final = struct.Struct("<QQ")
HEADER_SIZE: Final = 256
_HEADER_XXH_AT: Final = HEADER_SIZE - 8
_V4_MASKS: Final = tuple((0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF for p in range(33))
_V6_MASKS: Final = tuple(((1 << 128) - 1) ^ ((1 << (128 - p)) - 1) for p in range(129))


Probes = Sequence[tuple[str, int]]


# Hosts of at most this many labels (and no longer than a DNS name) have their probes
# remembered (most names have 2-4): an answer holds every suffix, so a long name must not
# be kept (8192 names of 127 labels would hold ~270 MB; of 10 labels, ~30 MB at most).
PROBES_CACHED_LABELS: Final = 10


def host_probes(host: str, kind: str) -> Probes:
    """The host (and for names, each parent domain) with its NS_HOST key hash, most specific first.

    No key is longer than a DNS name (``MAX_HOST_LENGTH``: list entries and URL rules
    with longer hosts are refused), so of a longer host's parents only those that fit
    are probed: the work and the answer stay bounded however long a page makes a name
    (a 60 KB name of 30,000 labels is one hash of the name and at most 127 parents).
    The host itself is always the first probe (exact-host rules are asked only of it).
    """
    if len(host) <= MAX_HOST_LENGTH and host.count(".") < PROBES_CACHED_LABELS:
        return _remembered_probes(host, kind)
    return _probes(host, kind)


@functools.lru_cache(maxsize=8192)
def _remembered_probes(host: str, kind: str) -> Probes:
    """``_probes``, remembered: a page's thousands of URLs name a few dozen hosts (a 5 MB
    app state: 8,400 URLs, ~13% of their cold judging time here). Shared, never changed."""
    return _probes(host, kind)


def _probes(host: str, kind: str) -> Probes:
    h64 = xxhash.xxh3_64_intdigest
    out = [(host, h64(host.encode(), NS_HOST))]
    if kind != "domain":
        return tuple(out)
    # The first parent short enough to be a key: it starts after a dot at or past here.
    i = host.find(".", max(0, len(host) - MAX_HOST_LENGTH - 1))
    while i >= 0:
        host = host[i + 1 :]
        out.append((host, h64(host.encode(), NS_HOST)))
        i = host.find(".")
    return tuple(out)


def net_key(addr: int, plen: int, version: int) -> bytes:
    """The packed key of a network: address and prefix length, big-endian."""
    return ((addr << 8) | plen).to_bytes(5 if version == 4 else 17, "big")


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


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file as ``stat`` saw it: a change of any field means it must be verified again."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class SnapshotOrigin:
    """Where a loaded index came from, and where the bytes it serves live."""

    path: Path  # the published file that was verified
    identity: FileIdentity  # that file when it was verified
    header: bytes  # its header, which carries the body's checksum
    residence: Path | None  # the private copy mapped, or None: read into process memory


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
    import numpy as np  # build-time only: lookups read the arrays through memoryview

    n = len(keys)
    # about two records a bucket: a short scan, and half the directory of one a bucket
    dir_bits = max(4, min(MAX_DIR_BITS, n.bit_length() - 1))
    # Hash every key, sort record ids by hash, lay every column out in that order,
    # and count how many hashes share each top-dir_bits prefix for the directory.
    hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, keys, ns), dtype=np.uint64, count=n)
    order = np.argsort(hashes, kind="stable")
    table = hashes[order]
    del hashes
    counts = np.bincount(
        (table >> np.uint64(64 - dir_bits)).astype(np.intp), minlength=1 << dir_bits
    )
    directory = np.zeros((1 << dir_bits) + 1, dtype=np.uint32)
    np.cumsum(counts, out=directory[1:])
    # Texts in record order too: one offset per record (the next one ends it).
    ordered_texts = list(map(texts.__getitem__, order.tolist()))
    text_offs = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(np.fromiter(map(len, ordered_texts), dtype=np.uint64, count=n), out=text_offs[1:])
    if int(text_offs[-1]) > 0xFFFFFFFF:
        raise SnapshotError("rule texts over 4 GiB")
    parts: dict[str, Buffer] = {
        "dir": directory,
        "table": table,
        "kinds": np.frombuffer(kinds, dtype=np.uint8)[order],
        "lists": np.frombuffer(list_ids, dtype=np.uint16)[order],
        "lines": np.frombuffer(lines, dtype=np.uint32)[order],
        "text_offs": text_offs.astype(np.uint32),
        "texts": b"".join(ordered_texts),
        "meta": json.dumps(meta, separators=(",", ":")).encode(),
    }
    # Arrays are written through the buffer protocol: no copies of big sections.
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
        MAGIC, FORMAT_VERSION, HEADER_SIZE, pos - HEADER_SIZE, digest.intdigest(), dir_bits, n
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
    folded: list[tuple[int, list[Rule], list[str]]] = []
    alternates: list[tuple[int, int, str, str]] = []  # list id, line, "host/path", suffix
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
            elif kind is RuleKind.URL:
                # URL feeds repeat hosts (URLhaus: many files per host): guard each host once.
                url_hosts_of = [k.partition("/")[0] for k in map(_KEY, rules)]
                bad = guard.refused_url_hosts(set(url_hosts_of))
                reasons = [bad.get(h) for h in url_hosts_of] if bad else None
            else:
                reasons = [guard.check(r, allow=spec.allow or r.exception) for r in rules]
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
            if kind is RuleKind.CIDR:
                for k in rule_keys:
                    net = ipaddress.ip_network(k, strict=False)
                    (v6 if net.version == 6 else v4).add(net.prefixlen)
                    keys.append(net_key(int(net.network_address), net.prefixlen, net.version))
            else:
                if kind is RuleKind.URL:
                    url_hosts.update(k.partition("/")[0] for k in rule_keys)
                keys.extend(map(str.encode, rule_keys))
            n = len(rules)
            if kind is RuleKind.URL:
                folded.append((list_id, rules, rule_keys))
                if not spec.allow:
                    for rule, k in zip(rules, rule_keys, strict=True):
                        if "?" in k or "." in k[k.rfind("/") :]:  # cheap test first
                            for probe, suffix in url_rule_alternates(k):
                                alternates.append((list_id, rule.line, probe, suffix))
            by_kind[kind] += n
            ns.extend(repeat(_NAMESPACE[kind], n))
            kinds.extend(repeat(kind, n))
            list_ids.extend(repeat(list_id, n))
            lines.extend(map(_LINE, rules))
            texts.extend(
                [
                    b"" if t == k else t.encode("utf-8", "replace")[:MAX_TEXT_BYTES]
                    for k, t in zip(rule_keys, map(_TEXT, rules), strict=True)
                ]
            )
            stats.exceptions += sum(map(_EXCEPTION, rules))
    for list_id, rules, rule_keys in folded:  # not rules of their own: not counted
        n = len(rules)
        ns.extend(repeat(NS_URL_FOLDED, n))
        kinds.extend(repeat(RuleKind.URL, n))
        list_ids.extend(repeat(list_id, n))
        lines.extend(map(_LINE, rules))
        keys.extend(k.lower().encode() for k in rule_keys)
        texts.extend(t.encode("utf-8", "replace")[:MAX_TEXT_BYTES] for t in map(_TEXT, rules))
    for folding in (False, True):  # markers, not rules: not counted either
        ns.extend(repeat(NS_URL_ALT_FOLDED if folding else NS_URL_ALT, len(alternates)))
        kinds.extend(repeat(URLALT, len(alternates)))
        for list_id, line, probe, suffix in alternates:
            list_ids.append(list_id)
            lines.append(line)
            keys.append((probe.lower() if folding else probe).encode())
            texts.append(suffix.encode("utf-8", "surrogateescape"))
    m = len(url_hosts)
    ns.extend(repeat(NS_HOST, m))
    kinds.extend(repeat(URLHOST, m))
    list_ids.extend(repeat(_MARKER_LIST, m))
    lines.extend(repeat(0, m))
    keys.extend(map(str.encode, sorted(url_hosts)))
    texts.extend(repeat(b"", m))
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
        # Lookups skip the other-spellings probes when there are none.
        "url_alternates": len(alternates),
        # URL rules on an IP address: the proxy also checks each request at the address it
        # connects to (a name that resolves there reaches the same files).
        "url_ip_hosts": sum(1 for h in url_hosts if host_kind(h) != "domain"),
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
        "_kinds",
        "_list_ids",
        "_lines",
        "_text_offs",
        "_texts",
        "_lists",
        "_v4",
        "_v6",
        "_alternates",
        "meta",
        "size_bytes",
        "path",
        "origin",
        "__weakref__",
    )

    def __init__(
        self,
        buf: bytes | bytearray | mmap.mmap | SnapshotImage,
        *,
        path: Path | None = None,
        verify: bool = True,
        origin: SnapshotOrigin | None = None,
    ) -> None:
        if isinstance(buf, SnapshotImage):
            buf = buf.to_bytes()
        self._mm = buf if isinstance(buf, mmap.mmap) else None
        self.path = path
        self.origin = origin
        self.size_bytes = len(buf)
        h = _read_header(buf)
        if verify:
            _check_body(buf, h)
        self._buf = mv = memoryview(buf)
        sec = h["sections"]
        parsed = _check_structure(h, lambda off, length: bytes(mv[off : off + length]))

        def view(name: str, fmt: str) -> memoryview:
            off, length = sec[name]
            return mv[off : off + length].cast(fmt)  # type: ignore[call-overload,no-any-return]

        self._dir = view("dir", "I")
        self._shift = 64 - h["dir_bits"]
        self._table = view("table", "Q")
        self._kinds = view("kinds", "B")
        self._list_ids = view("lists", "H")
        self._lines = view("lines", "I")
        self._text_offs = view("text_offs", "I")
        self._texts = view("texts", "B")
        meta, self._lists, self._v4, self._v6, self._alternates = parsed
        self.meta: dict[str, Any] = meta

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, copy_dir: str | os.PathLike[str] | None = None
    ) -> CompiledIndex:
        """Load a snapshot file after checking version, size and checksum; SnapshotError if bad.

        The bytes served are a verified private copy in ``copy_dir`` (mapped
        read-only, shared by this user's processes) or, without one, process
        memory: never the published file, which others may change under us.
        """
        path = Path(path)
        try:
            with open(path, "rb") as src:
                st = os.fstat(src.fileno())
                head = src.read(HEADER_SIZE)
                h = _read_header(head)
                size = HEADER_SIZE + h["body_len"]
                if size != st.st_size:
                    raise SnapshotError(
                        f"truncated or padded snapshot ({st.st_size} bytes, header says {size})"
                    )
                buf: bytearray | mmap.mmap | None = None
                residence = None
                if copy_dir is not None:
                    try:
                        buf, residence = _private_copy(src, head, h, Path(copy_dir))
                    except OSError:
                        buf = None  # no room or no right to write there: use memory
                if buf is None:
                    buf = _read_verified(src, head, h)
        except SnapshotError as exc:
            raise SnapshotError(f"{path}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path}: cannot read snapshot: {exc}") from None
        origin = SnapshotOrigin(path, FileIdentity.of(st), head, residence)
        return cls(buf, path=path, verify=False, origin=origin)

    def image(self) -> memoryview:
        """The whole snapshot file as served (to write a good copy back)."""
        view: memoryview = self._buf
        return view

    # -- introspection ----------------------------------------------------

    @property
    def lists(self) -> tuple[ListInfo, ...]:
        return self._lists

    @property
    def url_rules_on_addresses(self) -> bool:
        """Whether some URL rule's host is an IP address (then worth checking at the address)."""
        return bool(self.meta.get("url_ip_hosts", 1))

    def has_url_rules_on(self, host: str) -> bool:
        """Whether some URL rule is written for exactly this canonical host (one probe)."""
        h = xxhash.xxh3_64_intdigest(host.encode(), NS_HOST)
        return any(self._kinds[pos] == URLHOST for pos in self._find_hash(h))

    def holds_any(self, probes: Probes) -> bool:
        """Whether any record (a rule or a marker) is keyed by one of these host probes.

        False means no rule of this index can match a URL or host with these probes.
        """
        find = self._find_hash
        return any(find(hv) for _, hv in probes)

    @property
    def rule_count(self) -> int:
        return int(self.meta.get("rules", 0))

    # The metadata's fields, typed: nothing outside this module reads ``meta`` itself.

    @property
    def built_at(self) -> float | None:
        """When the index was compiled (Unix seconds); None for an image without it."""
        t = self.meta.get("built_at")
        return float(t) if isinstance(t, int | float) else None

    @property
    def by_kind(self) -> dict[str, int]:
        """Rules by kind label (``domain``, ``url``, ...), as compiled."""
        d = self.meta.get("by_kind")
        return {str(k): int(n) for k, n in d.items()} if isinstance(d, dict) else {}

    @property
    def refused_count(self) -> int:
        """Rules the poison guard refused while compiling."""
        return int(self.meta.get("refused_count", 0))

    @property
    def v4_prefixes(self) -> tuple[int, ...]:
        """The IPv4 network prefix lengths that carry rules, longest first."""
        return self._v4

    @property
    def v6_prefixes(self) -> tuple[int, ...]:
        return self._v6

    @property
    def key_hashes(self) -> memoryview:
        """The sorted 64-bit key hashes; position i is record i (read-only; for diffs)."""
        view: memoryview = self._table
        return view

    def record_at(self, pos: int, key: str = "") -> Match | None:
        """The rule at table position ``pos`` (None for a marker); ``key`` if no text."""
        return None if self._kinds[pos] in _MARKERS else self._match(pos, key)

    def close(self) -> None:
        """Release the mapping (only when no lookup can still be running)."""
        for v in (
            self._dir,
            self._table,
            self._kinds,
            self._list_ids,
            self._lines,
            self._text_offs,
            self._texts,
            self._buf,
        ):
            v.release()
        if self._mm is not None:
            # Something may still hold a view of it (a traceback's frame, a debugger): the
            # mapping then goes with the last view; closing is only an early release.
            with contextlib.suppress(BufferError):
                self._mm.close()

    # -- lookups ----------------------------------------------------------

    def _find(self, ns: int, key: bytes) -> list[int]:
        """Positions of the records whose key is ``key`` in namespace ``ns``."""
        return self._find_hash(xxhash.xxh3_64_intdigest(key, ns))

    def _find_hash(self, h: int) -> list[int]:
        b = h >> self._shift
        lo = self._dir[b]
        hi = self._dir[b + 1]
        if lo == hi:
            return _NONE
        table = self._table
        if hi - lo == 1:
            return [lo] if table[lo] == h else _NONE
        return [i for i in range(lo, hi) if table[i] == h]

    @property
    def empty(self) -> bool:
        return len(self._table) == 0

    def _match(self, pos: int, key: str) -> Match:
        info = self._lists[self._list_ids[pos]]
        t0 = self._text_offs[pos]
        t1 = self._text_offs[pos + 1]
        text = bytes(self._texts[t0:t1]).decode("utf-8", "replace") if t1 > t0 else key
        return Match(
            list=info.name,
            rule=text,
            line=self._lines[pos],
            kind=RuleKind(self._kinds[pos]),
            category=info.category,
            mode=info.mode,
            key=key,
        )

    def _pick(
        self, found: Iterable[int], key: str, best: Match | None
    ) -> tuple[Match | None, bool]:
        """Keep the first enforce match (or the first monitor one); True when final."""
        for pos in found:
            if self._lists[self._list_ids[pos]].mode is Mode.ENFORCE:
                return self._match(pos, key), True
            if best is None:
                best = self._match(pos, key)
        return best, False

    def match_url(
        self, cu: CanonicalURL, probes: Probes | None = None, *, fold_case: bool = False
    ) -> Match | None:
        """The rule that matches this canonical URL, enforce rules first, or None.

        ``probes`` are the host's hashed lookup keys (``host_probes``), passed in
        when several indexes are asked about the same URL. ``fold_case``: paths
        also match rules written in another letter case.
        """
        if probes is None:
            probes = host_probes(cu.host, cu.host_kind)
        best, final, url_hosts = self._match_host(cu.host, cu.host_kind, probes)
        if final or not url_hosts:
            return best
        paths = url_match_paths(cu)
        alternates = self._alternates
        params: frozenset[str] | None = None  # the URL's query parameters, when first needed
        for host in url_host_expressions(cu):
            if host not in url_hosts:
                continue
            for path in paths:
                expr = host + path
                found = self._find(NS_URL, expr.encode())
                if found:
                    best, final = self._pick(found, expr, best)
                    if final:
                        return best
                low = expr.lower() if fold_case else ""
                if fold_case:
                    found = self._find(NS_URL_FOLDED, low.encode())
                    if found:
                        best, final = self._pick(found, low, best)
                        if final:
                            return best
                if not alternates:
                    continue
                for ns, probe in ((NS_URL_ALT, expr), (NS_URL_ALT_FOLDED, low)):
                    if not probe:
                        continue
                    found = self._find(ns, probe.encode())
                    if not found:
                        continue
                    if params is None:
                        params = query_params(cu.query)
                    folded = ns == NS_URL_ALT_FOLDED
                    best, final = self._pick_alternate(found, probe, params, folded, best)
                    if final:
                        return best
        return best

    def _pick_alternate(
        self,
        found: list[int],
        probe: str,
        params: frozenset[str],
        folded: bool,
        best: Match | None,
    ) -> tuple[Match | None, bool]:
        """The rules behind other-spelling markers at ``probe`` that the URL satisfies.

        ``folded``: ``probe`` is lower-cased and so are the rule's path and parameters.
        """
        for pos in found:
            if self._kinds[pos] != URLALT:
                continue  # a hash collision with a record of another kind
            suffix = bytes(self._texts[self._text_offs[pos] : self._text_offs[pos + 1]])
            rest, sep, query = suffix.decode("utf-8", "surrogateescape").partition("?")
            if sep:
                wanted = query_params(query)
                have = params
                if folded:
                    wanted = frozenset(p.lower() for p in wanted)
                    have = frozenset(p.lower() for p in params)
                if not wanted <= have:
                    continue
            key = probe + rest + sep + query
            ns = NS_URL
            if folded:
                key, ns = key.lower(), NS_URL_FOLDED
            best, final = self._pick(self._find(ns, key.encode()), key, best)
            if final:
                return best, True
        return best, False

    def match_host(self, host: str, probes: Probes | None = None) -> Match | None:
        """Rules that match every URL on ``host`` (a CONNECT target, an SNI name, an IP)."""
        kind = host_kind(host)
        if probes is None:
            probes = host_probes(host, kind)
        best, final, url_hosts = self._match_host(host, kind, probes)
        if final:
            return best
        for h in url_hosts:
            # A URL rule for the root path ("evil.example/") covers the whole host.
            expr = h + "/"
            found = self._find(NS_URL, expr.encode())
            if found:
                best, final = self._pick(found, expr, best)
                if final:
                    return best
        return best

    def _match_host(
        self, host: str, kind: str, probes: Probes
    ) -> tuple[Match | None, bool, list[str]]:
        """Host, IP and CIDR rules; also which host expressions carry URL rules."""
        best: Match | None = None
        url_hosts: list[str] = []
        kinds = self._kinds
        if kind == "domain":
            last = len(probes) - 1
            for i, (h, hv) in enumerate(probes):
                found = self._find_hash(hv)
                if not found:
                    continue
                for pos in found:
                    k = kinds[pos]
                    if k == URLHOST:
                        # Safe Browsing host expressions: the exact host and the last 5 labels
                        if i == 0 or last - i < 5:
                            url_hosts.append(h)
                    elif k == RuleKind.DOMAIN or (k == RuleKind.EXACT and i == 0):
                        best, final = self._pick((pos,), h, best)
                        if final:
                            return best, True, url_hosts
            return best, False, url_hosts
        found = []
        for pos in self._find_hash(probes[0][1]):
            if kinds[pos] == URLHOST:
                url_hosts.append(host)
            else:
                found.append(pos)
        best, final = self._pick(found, host, best)
        if final:
            return best, True, url_hosts
        best, final = self._match_cidr(host, kind, best)
        return best, final, url_hosts

    def _match_cidr(self, host: str, kind: str, best: Match | None) -> tuple[Match | None, bool]:
        if kind == "ipv4":
            prefixes, masks, version = self._v4, _V4_MASKS, 4
            if not prefixes:
                return best, False
            a, b, c, d = host.split(".")
            n = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
        else:
            prefixes, masks, version = self._v6, _V6_MASKS, 6
            if not prefixes:
                return best, False
            n = int(ipaddress.IPv6Address(host))
        h64 = xxhash.xxh3_64_intdigest
        size = 5 if version == 4 else 17
        for plen in prefixes:
            net = n & masks[plen]
            found = self._find_hash(h64(((net << 8) | plen).to_bytes(size, "big"), NS_NET))
            if found:
                key = f"{ipaddress.ip_address(net) if version == 4 else ipaddress.IPv6Address(net)}/{plen}"
                best, final = self._pick(found, key, best)
                if final:
                    return best, True
        return best, False


def _read_header(buf: bytes | bytearray | mmap.mmap) -> dict[str, Any]:
    if len(buf) < HEADER_SIZE:
        raise SnapshotError(f"truncated snapshot ({len(buf)} bytes)")
    raw = bytes(buf[:HEADER_SIZE])
    magic, version, hsize, body_len, body_xxh, dir_bits, n = _HEAD.unpack_from(raw)
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
    ):
        raise SnapshotError("snapshot header inconsistent (corrupt snapshot)")
    return {
        "body_len": body_len,
        "body_xxh": body_xxh,
        "dir_bits": dir_bits,
        "n": n,
        "sections": sections,
    }


# Each fixed-width section: its element format and how many elements ("n": one per
# record, "n+1": one more, "dir": the directory's 2**dir_bits + 1).
_SHAPES: Final = {
    "dir": ("I", "dir"),
    "table": ("Q", "n"),
    "kinds": ("B", "n"),
    "lists": ("H", "n"),
    "lines": ("I", "n"),
    "text_offs": ("I", "n+1"),
}


def _check_structure(
    h: dict[str, Any], read: Callable[[int, int], bytes]
) -> tuple[dict[str, Any], tuple[ListInfo, ...], tuple[int, ...], tuple[int, ...], bool]:
    """Every check of a snapshot's layout beyond its checksums, through ``read(offset, length)``.

    The one definition for an index built over the bytes and for :func:`verify_file`,
    which reads a few small pieces of the file: both accept and refuse the same files.
    Returns the metadata (dict, lists, IPv4 and IPv6 prefix lengths, URL alternates).
    """
    n, sec = h["n"], h["sections"]
    counts = {"n": n, "n+1": n + 1, "dir": (1 << h["dir_bits"]) + 1}
    for name, (fmt, count) in _SHAPES.items():
        if sec[name][1] != counts[count] * struct.calcsize(fmt):
            raise SnapshotError(f"snapshot section {name!r} has the wrong size")
    dir_off, dir_len = sec["dir"]
    offs_off, _ = sec["text_offs"]
    last_dir = struct.unpack("<I", read(dir_off + dir_len - 4, 4))[0]
    texts_end = struct.unpack("<I", read(offs_off + 4 * n, 4))[0]
    if last_dir != n or texts_end != sec["texts"][1]:
        raise SnapshotError("snapshot sections inconsistent (corrupt snapshot)")
    try:
        meta = json.loads(read(*sec["meta"]))
        lists = tuple(
            ListInfo(d["name"], d["category"], Mode(d["mode"]), bool(d["allow"]))
            for d in meta["lists"]
        )
        v4 = tuple(int(p) for p in meta["v4_prefixes"] if 0 <= int(p) <= 32)
        v6 = tuple(int(p) for p in meta["v6_prefixes"] if 0 <= int(p) <= 128)
        alternates = bool(meta["url_alternates"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SnapshotError(f"snapshot metadata unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise SnapshotError("snapshot metadata unreadable: not an object")
    return meta, lists, v4, v6, alternates


def _check_body(buf: bytes | bytearray | mmap.mmap, h: dict[str, Any]) -> None:
    if len(buf) != HEADER_SIZE + h["body_len"]:
        raise SnapshotError("truncated or padded snapshot")
    if xxhash.xxh3_64_intdigest(memoryview(buf)[HEADER_SIZE:]) != h["body_xxh"]:
        raise SnapshotError("checksum mismatch (corrupt snapshot)")


def _body_digest(fd: int, size: int) -> int:
    """xxh3-64 of bytes HEADER_SIZE..size of ``fd``, read (not mapped) in chunks."""
    digest = xxhash.xxh3_64()
    chunk = bytearray(CHECKSUM_CHUNK)
    view = memoryview(chunk)
    pos = HEADER_SIZE
    while pos < size:
        n = os.preadv(fd, [view[: min(CHECKSUM_CHUNK, size - pos)]], pos)
        if n == 0:
            raise SnapshotError("snapshot shrank while being read")
        digest.update(view[:n])
        pos += n
    return digest.intdigest()


def _fd_holds(fd: int, head: bytes, h: dict[str, Any]) -> bool:
    """True when ``fd`` is exactly the snapshot whose header is ``head`` (size, header, checksum)."""
    size = HEADER_SIZE + h["body_len"]
    if os.fstat(fd).st_size != size or os.pread(fd, HEADER_SIZE, 0) != head:
        return False
    try:
        return bool(_body_digest(fd, size) == h["body_xxh"])
    except SnapshotError:
        return False


def _read_verified(src: Any, head: bytes, h: dict[str, Any]) -> mmap.mmap:
    """The whole snapshot read into memory and verified.

    The memory is an anonymous mapping, not a ``bytearray``: ``bytearray(n)`` zero-fills
    all of it while holding the GIL (~140 ms for a 1.11M-rule snapshot, every request
    of a proxy that verifies in a thread waiting behind it); the kernel hands out a
    mapping's zero pages lazily, as the read (GIL released) fills them.
    """
    size = HEADER_SIZE + h["body_len"]
    buf = mmap.mmap(-1, size)
    buf[:HEADER_SIZE] = head
    view = memoryview(buf)
    pos = HEADER_SIZE
    fd = src.fileno()
    while pos < size:
        n = os.preadv(fd, [view[pos:size]], pos)
        if n == 0:
            raise SnapshotError("truncated snapshot (it shrank while being read)")
        pos += n
    if xxhash.xxh3_64_intdigest(view[HEADER_SIZE:]) != h["body_xxh"]:
        raise SnapshotError("checksum mismatch (corrupt snapshot)")
    return buf


def copy_name(head: bytes) -> str:
    """The private copy's file name: the body checksum and size, so equal snapshots share one."""
    h = _read_header(head)
    return f"{h['body_xxh']:016x}-{HEADER_SIZE + h['body_len']}.jgs"


def _private_copy(
    src: Any, head: bytes, h: dict[str, Any], copy_dir: Path
) -> tuple[mmap.mmap, Path]:
    """Map a verified copy of ``src`` in ``copy_dir``: an existing one, or a new one.

    The copy is verified through the descriptor that is then mapped, so what is
    served is what was checked. It is made read-only and never opened for
    writing again. OSError when ``copy_dir`` cannot take it; SnapshotError when
    the source is bad (or changed while being copied).
    """
    target = copy_dir / copy_name(head)
    size = HEADER_SIZE + h["body_len"]
    mm = _adopt_copy(src, target, head, h)
    if mm is not None:
        return mm, target
    tfd, tmp = tempfile.mkstemp(prefix=".copy-", suffix=".tmp", dir=copy_dir)
    try:
        with os.fdopen(tfd, "wb") as out:
            out.write(head)
            pos = HEADER_SIZE
            while pos < size:
                data = os.pread(src.fileno(), min(CHECKSUM_CHUNK, size - pos), pos)
                if not data:
                    raise SnapshotError("truncated snapshot (it shrank while being copied)")
                out.write(data)
                pos += len(data)
        os.chmod(tmp, 0o444)
        rfd = os.open(tmp, _COPY_OPEN)
        try:
            if not _fd_holds(rfd, head, h):
                raise SnapshotError("checksum mismatch (corrupt snapshot, or changed while copied)")
            try:
                # The first process to finish a copy wins; the others map that one,
                # so workers started together still share one copy in the page cache.
                os.link(tmp, target)
            except FileExistsError:
                mm = _adopt_copy(src, target, head, h)
                if mm is not None:
                    return mm, target
                os.replace(tmp, target)  # the copy there is bad: ours replaces it
            return mmap.mmap(rfd, 0, access=mmap.ACCESS_READ), target
        finally:
            os.close(rfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_COPY_OPEN: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _adopt_copy(src: Any, target: Path, head: bytes, h: dict[str, Any]) -> mmap.mmap | None:
    """Map ``target`` if it is an intact copy of the snapshot ``head`` names (else None)."""
    try:
        fd = os.open(target, _COPY_OPEN)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise
    try:
        if not (stat.S_ISREG(os.fstat(fd).st_mode) and _fd_holds(fd, head, h)):
            return None
        # The published file must still be good too: a damaged one is refused (and
        # reported) even though an intact copy of it exists here.
        if _body_digest(src.fileno(), HEADER_SIZE + h["body_len"]) != h["body_xxh"]:
            raise SnapshotError("checksum mismatch (corrupt snapshot)")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check a snapshot file where it lies: header, size, checksum and layout (every check
    :meth:`CompiledIndex.load` makes); SnapshotError if bad.

    Read in chunks into one small buffer: no copy of the snapshot is made. (A full
    :meth:`CompiledIndex.load` allocates and then frees the whole snapshot; done
    beside a serving event loop only to answer "is it intact?", freeing 42 MB held
    the process's memory map lock long enough to delay requests.)
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(HEADER_SIZE)
            h = _read_header(head)
            size = HEADER_SIZE + h["body_len"]
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                raise SnapshotError(
                    f"truncated or padded snapshot ({actual} bytes, header says {size})"
                )
            if _body_digest(f.fileno(), size) != h["body_xxh"]:
                raise SnapshotError("checksum mismatch (corrupt snapshot)")
            fd = f.fileno()

            def read(off: int, length: int) -> bytes:
                data = os.pread(fd, length, off)
                if len(data) != length:
                    raise SnapshotError("truncated snapshot (it shrank while being read)")
                return data

            _check_structure(h, read)
    except SnapshotError as exc:
        raise SnapshotError(f"{p}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{p}: cannot read snapshot: {exc}") from None


def check_published(
    origin: SnapshotOrigin, known: FileIdentity | None, *, full: bool = False
) -> tuple[FileIdentity | None, str | None] | None:
    """Is the published file still the snapshot that was verified?

    None when its ``stat`` identity is still ``known`` and ``full`` is false
    (nothing new to say); otherwise its header, size and checksum are read
    again and the answer is (identity now, problem or None). A file replaced
    by an equal copy (``rsync`` without ``--inplace``) is no problem.
    """
    try:
        fd = os.open(origin.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "missing: the file was removed"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    try:
        ident = FileIdentity.of(os.fstat(fd))
        if ident == known and not full:
            return None
        h = _read_header(origin.header)
        size = HEADER_SIZE + h["body_len"]
        if ident.size != size:
            return ident, f"changed on disk: {ident.size} bytes, the verified snapshot has {size}"
        if os.pread(fd, HEADER_SIZE, 0) != origin.header or _body_digest(fd, size) != h["body_xxh"]:
            return ident, "changed on disk: its bytes no longer match the verified checksum"
        return ident, None
    except (OSError, SnapshotError) as exc:
        return None, f"unreadable: {exc}"
    finally:
        os.close(fd)


def write_snapshot(path: str | os.PathLike[str], image: Buffer | Sequence[Buffer]) -> Path:
    """Write a snapshot atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks: Sequence[Buffer] = (
        [image] if isinstance(image, bytes | bytearray | memoryview) else image  # type: ignore[assignment]
    )
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
