"""The snapshot store: compiled block snapshots on disk, and which one is current.

The compiled block snapshot is the contract between the refresher and every
proxy process. Layout under ``<cache>/snapshots/``::

    block-20250101T120000123456Z-1a2b3c4d.jgs         the compiled block index
    block-20250101T120000123456Z-1a2b3c4d.allow.json  ``@@`` exceptions found in block feeds
    block-20250101T120000123456Z-1a2b3c4d.info.json   what it was built from (lists, counts)
    current                                           JSON pointer to the snapshot in force

Every file is written atomically (temp file, fsync, rename), the pointer last,
so a reader sees the old snapshot or the new one, never half of one. The
previous few snapshots are kept for ``jectguard rollback``.

Allow lists are small: they are never part of the snapshot but compiled in
memory when an engine is assembled (:func:`load_engine`), so editing the
allowlist never rebuilds the big index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import xxhash

from .core.engine import Engine, split_exceptions
from .core.errors import JectguardError, ListFormatError, SnapshotError
from .core.index import (
    CompiledIndex,
    CompileStats,
    SnapshotImage,
    check_published,
    compile_index,
    write_snapshot,
)
from .core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from .loading import (
    ListFileError,
    ListStatus,
    LoadReport,
    build_engine,
    feed_body_path,
    parse_spec,
)

log = logging.getLogger(__name__)

SNAPSHOT_DIR: Final = "snapshots"
POINTER: Final = "current"
LOCK: Final = ".lock"
# Snapshots kept besides the current one: enough to roll back a bad day, few
# enough that a 36 MB index does not fill the disk.
KEEP_PREVIOUS: Final = 3
# A temp file older than this is a leftover of a crash, not a write in progress.
STALE_TEMP_SECONDS: Final = 3600
POINTER_VERSION: Final = 1
# Snapshots and pointer are readable by proxy processes running as other users.
FILE_MODE: Final = 0o644
# A private copy made this long ago may go (a process that maps it keeps its pages;
# one that loads it again makes it again).
COPY_PRUNE_SECONDS: Final = 600


class NoSnapshot(SnapshotError):
    """Nothing has been published yet (or the pointer names a missing file)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot file in the store."""

    path: Path
    published_at: str  # the UTC timestamp in its name
    checksum: str
    size: int
    current: bool

    @property
    def name(self) -> str:
        return self.path.name


def atomic_write(path: Path, data: bytes) -> None:
    """Write a small file atomically: temp file in the same folder, fsync, rename, fsync dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp makes 0600; proxies may run as another user
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def sources_fingerprint(specs: Sequence[ListSpec]) -> str:
    """What the enabled block sources are, so a config change is noticed."""
    doc = sorted(
        (s.name, s.url or s.path or "", s.format, s.category, s.mode.value)
        for s in specs
        if s.enabled and not s.allow
    )
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def list_inputs(specs: Sequence[ListSpec], cache_dir: Path) -> dict[str, list[int] | None]:
    """(mtime_ns, size) of the file each enabled block source is read from (None: missing)."""
    out: dict[str, list[int] | None] = {}
    for s in specs:
        if not s.enabled or s.allow:
            continue
        p = Path(s.path) if s.path is not None else feed_body_path(cache_dir, s.name)
        try:
            st = p.stat()
        except OSError:
            out[s.name] = None
        else:
            out[s.name] = [st.st_mtime_ns, st.st_size]
    return out


class SnapshotStore:
    """The snapshots folder of one cache directory."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, keep: int = KEEP_PREVIOUS) -> None:
        self.cache_dir = Path(cache_dir)
        self.dir = self.cache_dir / SNAPSHOT_DIR
        self.keep = keep

    @property
    def pointer_path(self) -> Path:
        return self.dir / POINTER

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (a refresher and a `jectguard update` may overlap)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- writing ------------------------------------------------------------

    def publish(
        self,
        image: SnapshotImage,
        *,
        exceptions: Sequence[tuple[ListSpec, ParsedList]] = (),
        info: dict[str, Any] | None = None,
    ) -> Path:
        """Write a snapshot and make it current; returns its path.

        ``info`` (JSON-able) is kept in the pointer: the refresher records the
        sources fingerprint and inputs there.
        """
        digest = xxhash.xxh3_64()
        for chunk in image.chunks:
            digest.update(chunk)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        base = f"block-{stamp}-{digest.hexdigest()[:8]}"
        path = self.dir / f"{base}.jgs"
        with self.locked():
            image.write(path)
            path.chmod(FILE_MODE)
            if exceptions:
                atomic_write(self.dir / f"{base}.allow.json", _dump_lists(exceptions))
            atomic_write(_info_path(path), json.dumps(info or {}).encode())
            self._point_to(path, info or {})
            self._prune()
        return path

    def _point_to(self, path: Path, info: dict[str, Any]) -> None:
        doc = {
            "version": POINTER_VERSION,
            "snapshot": path.name,
            "pointed_at": time.time(),
            **{k: v for k, v in info.items() if k not in ("version", "snapshot", "pointed_at")},
        }
        atomic_write(self.pointer_path, json.dumps(doc, indent=1).encode())

    def _prune(self) -> None:
        snaps = self.list_snapshots()
        current = next((s for s in snaps if s.current), None)
        keep = {s.path for s in snaps[: self.keep + 1]}
        if current is not None:
            keep.add(current.path)
        for s in snaps:
            if s.path not in keep:
                # A proxy that still maps it keeps its pages (unlink, not truncate).
                with contextlib.suppress(FileNotFoundError):
                    s.path.unlink()
                for side in (_allow_path(s.path), _info_path(s.path)):
                    with contextlib.suppress(FileNotFoundError):
                        side.unlink()
        now = time.time()
        for tmp in self.dir.glob("*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                    tmp.unlink()

    def rollback(self, steps: int = 1) -> Path:
        """Point ``current`` at the snapshot ``steps`` older than the current one.

        The target is verified first; SnapshotError if there is none or it is corrupt.
        """
        if steps < 1:
            raise SnapshotError("rollback: steps must be at least 1")
        with self.locked():
            snaps = self.list_snapshots()
            pos = next((i for i, s in enumerate(snaps) if s.current), None)
            if pos is None:
                raise NoSnapshot(f"{self.dir}: no current snapshot to roll back from")
            if pos + steps >= len(snaps):
                raise SnapshotError(
                    f"rollback: only {len(snaps) - 1 - pos} older snapshot(s) kept, "
                    f"cannot go back {steps}"
                )
            target = snaps[pos + steps].path
            CompiledIndex.load(target).close()  # refuse a corrupt target before pointing at it
            pointer = {**self.snapshot_info(target), "rolled_back_from": snaps[pos].name}
            self._point_to(target, pointer)
        return target

    # -- reading ------------------------------------------------------------

    def read_pointer(self) -> dict[str, Any] | None:
        """The pointer document, or None when nothing was published (or it is unreadable)."""
        try:
            doc = json.loads(self.pointer_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("snapshot"), str):
            return None
        return doc

    def pointer_stamp(self) -> tuple[int, int, int] | None:
        """Cheap change detector for watchers: (inode, mtime_ns, size) of the pointer."""
        try:
            st = self.pointer_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current_path(self) -> Path | None:
        doc = self.read_pointer()
        if doc is None:
            return None
        name = Path(doc["snapshot"]).name  # never follow a path out of the store
        return self.dir / name

    def load_current(self) -> CompiledIndex:
        """Load the current snapshot; SnapshotError (NoSnapshot) if absent, corrupt or foreign.

        What is served is a verified private copy (:func:`snapshot_copy_dir`),
        never the shared file itself.
        """
        path = self.current_path()
        if path is None:
            raise NoSnapshot(f"{self.dir}: no snapshot published yet")
        if not path.exists():
            raise NoSnapshot(f"{path}: current snapshot is missing")
        copies = snapshot_copy_dir()
        index = CompiledIndex.load(path, copy_dir=copies)
        if copies is not None and index.origin is not None and index.origin.residence:
            prune_copies(copies, keep=index.origin.residence)
        return index

    def restore(self, index: CompiledIndex) -> bool:
        """Write ``index``'s verified bytes back over its published file if that is damaged.

        Only while the pointer still names it; atomic (temp file, rename), never
        in place. True when the file was rewritten.
        """
        origin = index.origin
        if origin is None or origin.path.parent != self.dir:
            return False
        with self.locked():
            if self.current_path() != origin.path:
                return False
            checked = check_published(origin, None, full=True)
            if checked is None or checked[1] is None:
                return False
            write_snapshot(origin.path, [index.image()])
            origin.path.chmod(FILE_MODE)
        return True

    def load_exceptions(self, snapshot: Path) -> list[tuple[ListSpec, ParsedList]]:
        """The ``@@`` exception rules published with ``snapshot`` (usually none)."""
        p = _allow_path(snapshot)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SnapshotError(f"{p}: cannot read: {exc.strerror or exc}") from None
        return _load_lists(data, p)

    def snapshot_info(self, snapshot: Path) -> dict[str, Any]:
        """What the refresher recorded when it published ``snapshot`` ({} if unknown)."""
        try:
            doc = json.loads(_info_path(snapshot).read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def list_snapshots(self) -> list[SnapshotInfo]:
        """Snapshots in the store, newest first."""
        current = self.current_path()
        out = []
        for p in self.dir.glob("block-*.jgs"):
            parts = p.stem.split("-")
            if len(parts) != 3:
                continue
            with contextlib.suppress(OSError):
                out.append(SnapshotInfo(p, parts[1], parts[2], p.stat().st_size, p == current))
        out.sort(key=lambda s: s.name, reverse=True)
        return out


def snapshot_copy_dir() -> Path | None:
    """A local folder only this user writes, for verified private copies of snapshots.

    ``$JECTGUARD_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/jectguard``, else
    ``<tmp>/jectguard-<uid>``, plus ``/snapshots``. None when it cannot be made
    or is not ours alone (someone else could change a copy under us): snapshots
    are then read into process memory instead.
    """
    base = os.environ.get("JECTGUARD_RUNTIME_DIR")
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = (
            os.path.join(xdg, "jectguard")
            if xdg
            else os.path.join(tempfile.gettempdir(), f"jectguard-{os.getuid()}")
        )
    uid = os.getuid()
    path = Path(base)
    for d in (path, path / SNAPSHOT_DIR):
        try:
            d.mkdir(mode=0o700, exist_ok=True)
            st = d.lstat()
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
            return None
    return path / SNAPSHOT_DIR


def prune_copies(copy_dir: Path, *, keep: Path, older_than: float = COPY_PRUNE_SECONDS) -> None:
    """Remove private copies (and leftover temp files) other than ``keep`` not touched lately.

    A process still mapping a removed copy keeps its pages (unlink, not truncate).
    """
    now = time.time()
    for p in [*copy_dir.glob("*.jgs"), *copy_dir.glob(".copy-*.tmp")]:
        if p == keep:
            continue
        with contextlib.suppress(OSError):
            if now - p.lstat().st_mtime > older_than:
                p.unlink()


def _allow_path(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.stem + ".allow.json")


def _info_path(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.stem + ".info.json")


def _dump_lists(lists: Sequence[tuple[ListSpec, ParsedList]]) -> bytes:
    doc = [
        {
            "name": spec.name,
            "category": spec.category,
            "mode": spec.mode.value,
            "format": parsed.format,
            "rules": [[int(r.kind), r.key, r.text, r.line] for r in parsed.rules],
        }
        for spec, parsed in lists
    ]
    return json.dumps(doc, separators=(",", ":")).encode()


def _load_lists(data: bytes, where: Path) -> list[tuple[ListSpec, ParsedList]]:
    try:
        out = []
        for d in json.loads(data):
            spec = ListSpec(
                name=d["name"], category=d["category"], mode=Mode(d["mode"]), allow=True
            )
            rules = [Rule(RuleKind(k), key, text, line, True) for k, key, text, line in d["rules"]]
            out.append((spec, ParsedList(d["format"], rules)))
        return out
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{where}: unreadable exception rules: {exc}") from None


# -- engines from the store ----------------------------------------------------


@dataclass(slots=True)
class AllowResult:
    lists: list[tuple[ListSpec, ParsedList]]
    errors: dict[str, str]


def parse_allow_lists(specs: Sequence[ListSpec], cache_dir: Path) -> AllowResult:
    """Parse the enabled allow lists (small); a broken one is reported and skipped."""
    result = AllowResult([], {})
    for spec in specs:
        if not spec.enabled or not spec.allow:
            continue
        try:
            parsed, status = parse_spec(spec, cache_dir)
        except (ListFileError, ListFormatError) as exc:
            result.errors[spec.name] = str(exc)
            continue
        if parsed is None:
            result.errors[spec.name] = status.error or "not loaded"
        else:
            result.lists.append((spec, parsed))
    return result


def compile_allow(
    specs: Sequence[ListSpec],
    cache_dir: Path,
    exceptions: Sequence[tuple[ListSpec, ParsedList]] = (),
) -> tuple[CompiledIndex, AllowResult]:
    """The allow index, compiled in memory from the allow lists plus feed exceptions."""
    allow = parse_allow_lists(specs, cache_dir)
    _, from_allow = split_exceptions(allow.lists)
    img, _ = compile_index([*from_allow, *exceptions])
    return CompiledIndex(img), allow


def load_engine(
    specs: Sequence[ListSpec], cache_dir: Path, *, require_fingerprint: bool = False
) -> tuple[Engine, dict[str, Any]]:
    """Engine from the current snapshot plus allow lists compiled now (fast: no big compile).

    Raises SnapshotError (NoSnapshot) when there is no usable snapshot; with
    ``require_fingerprint`` also when it was built from other sources than ``specs``.
    Returns the engine and the pointer document.
    """
    store = SnapshotStore(cache_dir)
    pointer = store.read_pointer()
    if pointer is None:
        raise NoSnapshot(f"{store.dir}: no snapshot published yet")
    if require_fingerprint and pointer.get("fingerprint") != sources_fingerprint(specs):
        raise SnapshotError("current snapshot was built from other sources")
    return _with_allow(store, store.load_current(), specs, cache_dir), pointer


def _with_allow(
    store: SnapshotStore, block: CompiledIndex, specs: Sequence[ListSpec], cache_dir: Path
) -> Engine:
    """The engine of ``block`` and the allow lists (plus its ``@@`` exceptions) compiled now."""
    try:
        exceptions = store.load_exceptions(block.path) if block.path else []
        allow, _ = compile_allow(specs, cache_dir, exceptions)
    except JectguardError:
        block.close()
        raise
    return Engine(block, allow)


def load_previous_engine(
    specs: Sequence[ListSpec], cache_dir: Path
) -> tuple[Engine, dict[str, Any]] | None:
    """The snapshot published just before the pointer's, if built from ``specs`` and intact.

    Never a newer one (after a rollback, the newer one is what was rolled back
    from). After a rollback *and* a later publish, the one just before may be
    the one rolled back from: the store keeps no record of that. Returns the
    engine and what was recorded when it was published (``snapshot`` set to
    its name), or None.
    """
    store = SnapshotStore(cache_dir)
    pointer = store.read_pointer()
    if pointer is None:
        return None
    named = Path(pointer["snapshot"]).name
    older = [s for s in store.list_snapshots() if s.name < named]
    if not older:
        return None
    snap = older[0]
    info = store.snapshot_info(snap.path)
    if info.get("fingerprint") != sources_fingerprint(specs):
        return None
    try:
        block = CompiledIndex.load(snap.path, copy_dir=snapshot_copy_dir())
        engine = _with_allow(store, block, specs, cache_dir)
    except JectguardError:
        return None
    return engine, {**info, "snapshot": snap.path.name}


def _all_lists_at_hand(specs: Sequence[ListSpec], cache_dir: Path) -> bool:
    """Can every enabled block list be compiled here (its file, or its cached feed body)?"""
    return all(v is not None for v in list_inputs(specs, cache_dir).values())


def startup_engine(specs: Sequence[ListSpec], cache_dir: Path) -> tuple[Engine, LoadReport]:
    """The engine a proxy starts with, at once and offline.

    The current snapshot when it was built from these sources (a copy and a
    checksum: well under a second for a million rules); otherwise the lists
    compiled in memory from local files and cached feed bodies, or, when some
    are not at hand here, the previous snapshot of these sources (the follower
    keeps trying the current one).
    """
    try:
        engine, pointer = load_engine(specs, cache_dir, require_fingerprint=True)
    except SnapshotError as exc:
        # The pointer's snapshot of these sources does not load (late, damaged,
        # gone). Compiling the lists is as good when all of them are here; a
        # replica often has no feed bodies, and the local lists alone would
        # protect next to nothing: then the previous snapshot serves.
        doc = SnapshotStore(cache_dir).read_pointer()
        previous = None
        if (
            doc is not None
            and doc.get("fingerprint") == sources_fingerprint(specs)
            and not _all_lists_at_hand(specs, cache_dir)
        ):
            previous = load_previous_engine(specs, cache_dir)
        if previous is None:
            return build_engine(specs, cache_dir=cache_dir)
        engine, pointer = previous
        log.warning(
            "jectguard: the current snapshot does not load (%s); starting on the previous "
            "verified one, %s, until it does",
            exc, pointer["snapshot"],
        )
    report = LoadReport()
    counts = pointer.get("lists", {})
    for spec in specs:
        if not spec.enabled:
            continue
        where = spec.path or spec.url or ""
        if spec.allow:
            report.lists.append(ListStatus(spec.name, where, True))
        elif spec.name in counts:
            report.lists.append(ListStatus(spec.name, where, True, int(counts[spec.name])))
        else:
            report.lists.append(ListStatus(spec.name, where, False, error="not in the snapshot"))
    report.block_stats = CompileStats(
        rules=engine.block.rule_count,
        by_kind=dict(pointer.get("by_kind", {})),
        refused_count=int(pointer.get("refused_count", 0)),
    )
    return engine, report
