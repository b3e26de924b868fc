# One module on purpose (~870 lines): everything that writes or reads the snapshots folder
# under one lock discipline (publish, pointer, rollback, prune, private copies).
"""The snapshot store: compiled block snapshots on disk, and which one is current.

The compiled block snapshot is the contract between the refresher and every
proxy process. Layout under ``<cache>/snapshots/``::

    block-20250101T120000123456Z-1a2b3c4d.jgs         the compiled block index
    block-20250101T120000123456Z-1a2b3c4d.allow.json  ``@@`` exceptions found in block feeds
    block-20250101T120000123456Z-1a2b3c4d.info.json   what it was built from (:class:`InForce`)
    body-<list>-<sha256 prefix>                       the list bodies kept snapshots were built from
    current                                           JSON pointer to the snapshot in force

The pointer carries the :class:`~proxy_addons.lists.inforce.InForce` record of the
snapshot it names, plus the sources a rollback holds: the one record every
status surface reads.

Every file is written atomically (temp file, fsync, rename), the pointer last,
so a reader sees the old snapshot or the new one, never half of one. The
previous few snapshots are kept for ``jectguard rollback``, with the list bodies
they were compiled from: a rollback puts those bodies back, so the next rebuild
(another feed changing) compiles the rolled-back-to content, not the bad one.

Allow lists are small: they are never part of the snapshot but compiled in
memory when an engine is assembled (:func:`load_engine`), so editing the
allowlist never rebuilds the big index.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import xxhash

from proxy_addons.core.engine import Engine, allow_index
from proxy_addons.core.errors import JectguardError, SnapshotError
from proxy_addons.core.index import (
    CompiledIndex,
    CompileStats,
    SnapshotImage,
    check_published,
    verify_file,
    write_snapshot,
)
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.lists.files import (
    ListBody,
    ListStatus,
    LoadReport,
    Unavailable,
    build_engine,
    feed_body_path,
    parse_lists,
    read_body,
    source_of,
)
from proxy_addons.lists.inforce import Hold, InForce, ListRecord
from proxy_addons.lists.layout import SNAPSHOT_DIR, CacheLayout

log = logging.getLogger(__name__)

POINTER: Final = "current"
LOCK: Final = ".lock"
# Who holds the lock, written into it by a rebuild worker: a rollback stops such a
# worker rather than wait for it (at SCHED_IDLE on a saturated host, minutes).
REBUILD_HOLDER: Final = "rebuild-worker"
REBUILD_MODULE: Final = b"proxy_addons.refresh.refresher"
BODY_PREFIX: Final = "body-"
# Digest characters in an archived body's name: unique enough among a list's few kept bodies.
BODY_DIGEST_CHARS: Final = 16
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


class StoreWriteError(JectguardError):
    """The cache cannot be written (disk full, read-only, permissions); nothing changed in force.

    The operator's environment, not a bug: an "input" error (exit code 2) with a
    message that says what to fix.
    """

    hint = "input"

    @classmethod
    def wrap(cls, exc: OSError, what: str, where: Path) -> StoreWriteError:
        why = exc.strerror or str(exc)
        fix = {
            errno.ENOSPC: "free some space",
            errno.EDQUOT: "free some space (quota)",
            errno.EROFS: "the file system is read-only; use a writable --cache-dir",
            errno.EACCES: "check the owner and permissions, or use another --cache-dir",
            errno.EPERM: "check the owner and permissions, or use another --cache-dir",
        }.get(exc.errno or 0, "check the cache directory")
        return cls(f"cannot {what} in {where}: {why} ({fix}); the snapshot in force is unchanged")


@contextlib.contextmanager
def writing(what: str, where: Path) -> Iterator[None]:
    """Turn an OSError while writing the cache into a StoreWriteError that says what to fix."""
    try:
        yield
    except OSError as exc:
        raise StoreWriteError.wrap(exc, what, where) from None


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """What a rollback put in force and what it holds."""

    target: Path
    record: InForce
    held: tuple[Hold, ...]
    notes: tuple[str, ...] = field(default=())  # what it could not restore, and why


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
        p = source_of(s, cache_dir)
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
        self.dir = CacheLayout(self.cache_dir).snapshots
        self.keep = keep
        self._lock_depth = 0
        self._thread_lock = threading.RLock()
        # (path, inode, size, mtime_ns, ctime_ns) of the last current file that verified
        self._verified: tuple[object, ...] | None = None

    @property
    def pointer_path(self) -> Path:
        return self.dir / POINTER

    def body_path(self, name: str, digest: str) -> Path:
        """Where the body of list ``name`` with this sha256 is kept for rollback.

        Names and digests come from records on disk: nothing in them may lead
        out of the store (ValueError).
        """
        tag = digest[:BODY_DIGEST_CHARS]
        if not _plain_name(name) or len(tag) != BODY_DIGEST_CHARS or not _is_hex(tag):
            raise ValueError(f"not a list body: {name!r} {digest!r}")
        return self.dir / f"{BODY_PREFIX}{name}-{tag}"

    @contextlib.contextmanager
    def locked(self, *, holder: str | None = None) -> Iterator[None]:
        """Serialise writers (a refresher, `jectguard update` and `rollback` may overlap).

        Re-entrant within one store object: a rebuild holds the lock from reading
        the record in force to publishing, and publish takes it again (a second
        flock on a new descriptor would wait for ourselves). ``holder`` is written
        into the lock file with this process's pid while it is held
        (:meth:`stop_rebuild` reads it).
        """
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with writing("lock the snapshot store", self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
                f = open(self.dir / LOCK, "a+b")  # noqa: SIM115 (closed below)
            with f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    if holder is not None:
                        with contextlib.suppress(OSError):
                            f.truncate(0)
                            f.write(json.dumps({"pid": os.getpid(), "holder": holder}).encode())
                            f.flush()
                    yield
                finally:
                    self._lock_depth = 0
                    if holder is not None:
                        with contextlib.suppress(OSError):
                            f.truncate(0)
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def stop_rebuild(self) -> int | None:
        """Stop the rebuild worker holding the store lock, if one does; its pid, or None.

        An operator's rollback must not wait for a rebuild (the worker runs at the
        lowest CPU priority: on a saturated host it may hold the lock for minutes).
        The worker is told to stop (SIGTERM: it cleans up what it half-wrote) and
        the refresher runs the rebuild again later, on what is then in force. Only a
        process that wrote the rebuild-worker mark and runs the worker module is
        signalled (a pid reused since is left alone).
        """
        try:
            fd = os.open(self.dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                data = os.pread(fd, 256, 0)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None  # nobody holds it
        finally:
            os.close(fd)
        try:
            doc = json.loads(data)
            pid = int(doc["pid"])
            if doc["holder"] != REBUILD_HOLDER or pid <= 1 or pid == os.getpid():
                return None
            with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                if REBUILD_MODULE not in cmd.read():
                    return None
            os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)  # a stopped worker must run to end
        except (ValueError, KeyError, TypeError, OSError):
            return None
        return pid

    # -- writing ------------------------------------------------------------

    def publish(
        self,
        image: SnapshotImage,
        *,
        exceptions: Sequence[tuple[ListSpec, ParsedList]] = (),
        info: dict[str, Any] | None = None,
        record: InForce | None = None,
        bodies: dict[str, Path] | None = None,
    ) -> Path:
        """Write a snapshot and make it current; returns its path.

        ``record`` (or a plain ``info`` document) says what it was built from; it
        is written beside the snapshot and into the pointer (its ``snapshot`` is
        set here). ``bodies`` maps list names to the files compiled, kept as
        ``body-<list>-<digest>`` (the digest in the record) so a rollback can restore them.
        StoreWriteError when the cache cannot be written (the old snapshot stays).
        """
        digest = xxhash.xxh3_64()
        for chunk in image.chunks:
            digest.update(chunk)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        base = f"block-{stamp}-{digest.hexdigest()[:8]}"
        path = self.dir / f"{base}.jgs"
        if record is None:
            record = InForce.from_json({**(info or {}), "snapshot": path.name})
        record = replace(record, snapshot=path.name)
        with self.locked(), writing("write a snapshot", self.dir):
            try:
                image.write(path)
                path.chmod(FILE_MODE)
                if exceptions:
                    atomic_write(self.dir / f"{base}.allow.json", _dump_lists(exceptions))
                self._archive(record, bodies or {})
                atomic_write(_info_path(path), json.dumps(record.as_dict()).encode())
            except BaseException:
                # A half-published snapshot would take a rollback slot; the pointer never named it.
                for p in (path, _allow_path(path), _info_path(path)):
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise
            self._point_to(record)
            self._prune()
        return path

    def _archive(self, record: InForce, bodies: dict[str, Path]) -> None:
        """Keep each compiled body under its digest (a hard link while it is the body in force)."""
        for name, src in bodies.items():
            lst = record.lists.get(name)
            if lst is None or lst.digest is None or not _plain_name(name):
                continue
            dest = self.body_path(name, lst.digest)
            if dest.exists():
                continue
            tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                # Feed bodies are replaced by rename, never rewritten: a link costs no space
                # while the body is in force. A local list may be edited in place: copy it.
                if not lst.fetched:
                    raise OSError(errno.EXDEV, "copy local lists")
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            if _sha256_file(tmp) != lst.digest:
                # Edited since it was read and compiled: keeping these bytes under the
                # digest of the ones compiled would let a rollback restore rules that
                # were never in force. The list's body is simply not kept this time.
                tmp.unlink()
                log.warning(
                    "jectguard: %s changed while it was compiled; its body is not kept "
                    "for rollback with this snapshot",
                    src,
                )
                continue
            os.replace(tmp, dest)

    def _point_to(self, record: InForce) -> None:
        doc = {"version": POINTER_VERSION, "pointed_at": time.time(), **record.as_dict()}
        atomic_write(self.pointer_path, json.dumps(doc, indent=1).encode())
        self._verified = None

    def rewrite_record(self, record: InForce) -> None:
        """Replace the record in force (same snapshot): holds released, inputs refreshed."""
        with self.locked(), writing("update the snapshot pointer", self.dir):
            self._point_to(record)

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
        # Bodies no kept snapshot (nor the record in force) was built from.
        wanted: set[Path] = set()
        records = [self.record_of(p) for p in keep]
        records.append(self.read_record())
        for rec in records:
            if rec is None:
                continue
            for n, r in rec.lists.items():
                with contextlib.suppress(ValueError):
                    wanted.add(self.body_path(n, r.digest or ""))
        for body in self.dir.glob(BODY_PREFIX + "*"):
            if body not in wanted and not body.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    body.unlink()

    def discard(self, name: str) -> None:
        """Remove a snapshot that is not current (a damaged one) and its side files."""
        path = self.dir / Path(name).name
        with self.locked():
            if path == self.current_path():
                return
            for p in (path, _allow_path(path), _info_path(path)):
                with contextlib.suppress(OSError):
                    p.unlink()

    def rollback(
        self, steps: int = 1, *, specs: Sequence[ListSpec] | None = None, clock: Any = time.time
    ) -> RollbackResult:
        """Put the snapshot ``steps`` older than the current one back in force, and make it stick.

        The target is verified first; SnapshotError if there is none or it is corrupt.
        Every list whose body differs between the two snapshots gets its target body
        back (so a rebuild compiles it) and is *held*: the body rolled back is
        refused until its source publishes a different one, or an operator releases
        it. With ``specs`` the record's inputs are refreshed so the restored bodies
        count as built (no rebuild for them).
        """
        if steps < 1:
            raise SnapshotError("rollback: steps must be at least 1")
        with self.locked(), writing("roll back", self.dir):
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
            now = clock()
            current = self.read_record() or InForce(snaps[pos].name)
            wanted = self.record_of(target) or InForce(target.name)
            holds = dict(current.holds)
            held: list[Hold] = []
            notes: list[str] = []
            for name, bad in current.lists.items():
                if not _plain_name(name):
                    notes.append(f"{name!r}: not a list name; skipped")
                    continue
                good = wanted.lists.get(name)
                if good is not None and good.digest == bad.digest:
                    continue
                if bad.digest is None:
                    notes.append(
                        f"{name}: the snapshot in force does not record its body; not held"
                    )
                    continue
                restored = good.digest if good is not None else None
                if good is not None and good.digest is not None and bad.fetched:
                    archived = self.body_path(name, good.digest)
                    if archived.exists():
                        _restore(archived, feed_body_path(self.cache_dir, name))
                    else:
                        notes.append(
                            f"{name}: its earlier body was not kept; no new snapshot "
                            "is published while only the rolled-back body is left"
                        )
                        restored = None
                elif good is not None and not bad.fetched:
                    notes.append(
                        f"{name}: a local file; the rolled-back rules return when it "
                        "is edited (its current content is held out of rebuilds)"
                    )
                prior = holds.get(name)
                refused = tuple(dict.fromkeys((*(prior.refused if prior else ()), bad.digest)))
                hold = Hold(name, refused, f"rolled back from {current.snapshot}", now, restored)
                holds[name] = hold
                held.append(hold)
            inputs = list_inputs(specs, self.cache_dir) if specs is not None else wanted.inputs
            record = replace(
                wanted.with_holds(holds.values()),
                inputs=inputs,
                rolled_back_from=current.snapshot,
                rolled_back_at=now,
                repaired=None,
            )
            self._point_to(record)
        return RollbackResult(target, record, tuple(held), tuple(notes))

    def release(self, names: Iterable[str] | None) -> list[Hold]:
        """Stop holding these sources (None: all); returns the holds released."""
        with self.locked(), writing("update the snapshot pointer", self.dir):
            record = self.read_record()
            if record is None:
                return []
            chosen = set(record.holds) if names is None else set(names)
            gone = [h for n, h in record.holds.items() if n in chosen]
            if gone:
                kept = [h for n, h in record.holds.items() if n not in chosen]
                self._point_to(record.with_holds(kept))
            return gone

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

    def read_record(self) -> InForce | None:
        """The record of what is in force (None: nothing published, or unreadable)."""
        doc = self.read_pointer()
        if doc is None:
            return None
        try:
            return InForce.from_json(doc)
        except (ValueError, TypeError):
            return None

    def record_of(self, snapshot: Path) -> InForce | None:
        """The record written with ``snapshot`` (None if missing or unreadable)."""
        try:
            return InForce.from_json(self.snapshot_info(snapshot), snapshot.name)
        except (ValueError, TypeError):
            return None

    def current_path(self) -> Path | None:
        doc = self.read_pointer()
        if doc is None:
            return None
        name = Path(doc["snapshot"]).name  # never follow a path out of the store
        return self.dir / name

    def verify_current(self) -> str | None:
        """Why the current snapshot file cannot be served (missing, truncated, corrupt), or None.

        The checksum is read again only when the file's inode, size, mtime or ctime
        changed since it last verified (ctime cannot be set back by a writer).
        """
        path = self.current_path()
        if path is None:
            return "no snapshot published"
        try:
            st = path.stat()
        except OSError as exc:
            return f"{path.name}: {exc.strerror or exc}"
        stamp = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == self._verified:
            return None
        try:
            verify_file(path)
        except SnapshotError as exc:
            self._verified = None
            return str(exc)
        self._verified = stamp
        return None

    def rollback_targets(self) -> list[SnapshotInfo]:
        """The kept snapshots older than the current one: what `rollback` can go back to."""
        snaps = self.list_snapshots()
        pos = next((i for i, s in enumerate(snaps) if s.current), None)
        return [] if pos is None else snaps[pos + 1 :]

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


def _plain_name(name: str) -> bool:
    return bool(name) and name == Path(name).name and not name.startswith(".") and "\0" not in name


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _restore(archived: Path, body: Path) -> None:
    """Make an archived body the body in force again (a link renamed into place)."""
    body.parent.mkdir(parents=True, exist_ok=True)
    tmp = body.with_name(body.name + f".restore-{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(archived, tmp)
    except OSError:
        shutil.copyfile(archived, tmp)
    os.replace(tmp, body)
    fsync_dir(body.parent)


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
    parsed, statuses = parse_lists(specs, cache_dir, allow=True)
    errors = {s.name: s.error or "not loaded" for s in statuses if not s.loaded}
    return AllowResult(parsed, errors)


def compile_allow(
    specs: Sequence[ListSpec],
    cache_dir: Path,
    exceptions: Sequence[tuple[ListSpec, ParsedList]] = (),
) -> tuple[CompiledIndex, AllowResult]:
    """The allow index, compiled in memory from the allow lists plus feed exceptions."""
    allow = parse_allow_lists(specs, cache_dir)
    # A monitor-mode list's exceptions unblock nothing (core.engine.split_exceptions);
    # a snapshot published before that rule, or before the list went on trial, has them.
    trial = {s.name for s in specs if s.mode is Mode.MONITOR}
    exceptions = [
        (spec, parsed)
        for spec, parsed in exceptions
        if spec.mode is not Mode.MONITOR and spec.name not in trial
    ]
    # Allow lists first, then the block lists' exceptions: the order Engine.from_lists uses.
    index, _ = allow_index([*allow.lists, *exceptions])
    return index, allow


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


class StoreInputs:
    """Where each block list's bytes come from, as the store's record in force says
    (the resolver of a rebuild, and of a cold start that cannot load the snapshot).

    A download accepted now comes parsed, from its validation. A feed whose body is
    gone compiles the copy kept with the snapshot in force. A body a rollback holds
    (refused, still on disk) gives way to the body the rollback restored, or keeps
    the list out; a local list edited since ends its hold. Everything else is read
    from its file, as ``build_engine`` reads it.
    """

    def __init__(
        self,
        store: SnapshotStore,
        before: Mapping[str, ListRecord],
        holds: dict[str, Hold],  # the holds in force: a released one is removed
        accepted: Mapping[str, tuple[ParsedList, str, int, tuple[int, ...]]] | None = None,
    ) -> None:
        self.store = store
        self.before = before
        self.holds = holds
        self.accepted = accepted or {}
        self.released: list[str] = []  # holds an edit ended
        self.held_out: list[str] = []  # lists a rollback keeps out

    def __call__(self, spec: ListSpec) -> ListBody | Unavailable:
        name = spec.name
        src = source_of(spec, self.store.cache_dir)
        if name in self.accepted:
            parsed, digest, distinct, _ = self.accepted[name]
            return ListBody(src, digest, parsed=parsed, distinct=distinct)
        prev = self.before.get(name)
        if spec.url is not None and not src.exists():
            kept = kept_body(self.store, name, prev.digest if prev else None)
            if kept is None:
                # In force, but its body is gone: do not drop it. Else: not fetched yet.
                return Unavailable(f"{src}: its cached body is missing" if prev else None)
            # The body in force was deleted: compile the copy kept with it (if it is that).
            assert prev is not None and prev.digest is not None
            found = _kept_exactly(kept, prev.digest)
            # counted when it was published
            return replace(found, distinct=prev.rules) if isinstance(found, ListBody) else found
        body = read_body(src)
        hold = self.holds.get(name)
        if hold is not None and body.digest in hold.refused:
            # A rolled-back body still on disk (a local file, or a body not kept):
            # compile the one the rollback restored, or leave the list out.
            kept = kept_body(self.store, name, hold.restored)
            if kept is None and prev is not None:
                # In force, but only the rolled-back body is left: neither drop the
                # list nor bring the bad rules back; keep the snapshot in force.
                return Unavailable(
                    f"held by a rollback and its earlier body was not kept ({hold.reason})"
                )
            if kept is None:  # not in the snapshot rolled back to: stays out
                self.held_out.append(name)
                return Unavailable(None)
            assert hold.restored is not None  # kept_body finds nothing without a digest
            found = _kept_exactly(kept, hold.restored)
            if isinstance(found, Unavailable):
                return found
            body = found
        elif hold is not None and body.digest != hold.restored:
            # New content that did not come by download: a local list edited. Its
            # edit ends the hold (a fetched body's hold ends when a download is accepted).
            self.holds.pop(name)
            self.released.append(name)
        if prev is not None and prev.digest == body.digest:
            body = replace(body, distinct=prev.rules)  # counted when it was published
        return body


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def kept_body(store: SnapshotStore, name: str, digest: str | None) -> Path | None:
    """The body of ``name`` kept with a snapshot, if there is one (a bad digest: none)."""
    if not digest:
        return None
    try:
        path = store.body_path(name, digest)
    except ValueError:
        return None
    return path if path.exists() else None


def _kept_exactly(path: Path, digest: str) -> ListBody | Unavailable:
    """A kept body, only if its bytes are the ones its name promises: a copy that differs
    (a list edited while it was archived, a damaged file) must not come into force under
    the digest of another."""
    body = read_body(path)
    if body.digest != digest:
        return Unavailable(f"{path}: the kept body does not match its digest (damaged or changed)")
    return body


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
            # Compiled as the refresher would publish it: a body a rollback holds stays
            # out (the one it restored is compiled), a deleted feed body is read from
            # the copy kept with the snapshot. Plain files would bring held rules back.
            store = SnapshotStore(cache_dir)
            record = store.read_record()
            resolve = None
            if record is not None:
                resolve = StoreInputs(store, record.lists, dict(record.holds))
            return build_engine(specs, cache_dir=cache_dir, resolve=resolve)
        engine, pointer = previous
        log.warning(
            "jectguard: the current snapshot does not load (%s); starting on the previous "
            "verified one, %s, until it does",
            exc,
            pointer["snapshot"],
        )
    report = LoadReport()
    try:
        record = InForce.from_json(pointer)
    except (ValueError, TypeError):
        record = InForce(str(pointer.get("snapshot")))
    for spec in specs:
        if not spec.enabled:
            continue
        where = spec.path or spec.url or ""
        lst = record.lists.get(spec.name)
        if spec.allow:
            report.lists.append(ListStatus(spec.name, where, True))
        elif lst is not None:
            report.lists.append(ListStatus(spec.name, where, True, lst.rules))
        else:
            report.lists.append(ListStatus(spec.name, where, False, error="not in the snapshot"))
    report.block_stats = CompileStats(
        rules=engine.block.rule_count,
        by_kind=dict(record.by_kind),
        refused_count=record.refused_count,
    )
    return engine, report
