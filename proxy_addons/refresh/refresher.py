# One module on purpose (~1,400 lines): the refresher, its compile worker and the follower
# share one snapshot contract (docs/architecture.md); splitting the worker out is a
# follow-up once the refresh-swap work on this file has landed.
"""Refresh orchestration: fetch -> validate -> keep body -> compile -> publish -> swap.

Pure asyncio + aiohttp (no mitmproxy), used by the refresh addon and by
``jectguard update``.

* :class:`Refresher` fetches every enabled URL source on its own schedule (its
  interval from the sources file plus jitter, so sources do not all fire at
  once), each as its own task with its own deadline: a hung or dripping feed
  delays nothing but itself. Never sooner than the source's ``min_interval``
  or a server's ``Retry-After``, manual refreshes included. Each new body is
  handed to the rebuilder as soon as it arrives; rebuilds run one at a time,
  and bodies that arrive during one are taken together by the next. New bodies
  are validated (:mod:`.validate`), committed, and every
  block list is parsed and compiled into a snapshot **in a worker process**
  (``python -m proxy_addons.refresh.refresher``: a million-rule compile holds a CPU
  for seconds and, in a thread, would hold the GIL against the proxy's event
  loop). The snapshot is published (:mod:`.store`) and the new engine loaded
  off the loop and handed to the engine slot.
* :class:`Follower` / :func:`watch_snapshot`: a proxy process that does not
  refresh polls the store's ``current`` pointer and swaps to each new
  snapshot; no per-process feed downloads. Both roles recompile the small
  allow index in memory when an allowlist file changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from proxy_addons import __version__
from proxy_addons.core.engine import Engine, compile_block
from proxy_addons.core.errors import JectguardError
from proxy_addons.core.index import (
    FORMAT_VERSION,
    MAGIC,
    FileIdentity,
    SnapshotOrigin,
    check_published,
)
from proxy_addons.core.model import ListSpec, ParsedList
from proxy_addons.lists.files import (
    feed_body_path,
    parse_lists,
    source_of,
)
from proxy_addons.lists.health import (
    IN_SYNC,
    SnapshotEvent,
    SnapshotFault,
    SnapshotHealth,
    SnapshotState,
)
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.lists.inforce import Hold, InForce, ListRecord
from proxy_addons.lists.sources import FeedRules, SourcesConfig
from proxy_addons.lists.store import (
    POINTER,
    REBUILD_HOLDER,
    SnapshotStore,
    StoreInputs,
    StoreWriteError,
    compile_allow,
    list_inputs,
    load_engine,
    sources_fingerprint,
    writing,
)
from proxy_addons.refresh.feeds import (
    DEFAULT_POLICY,
    FetchPolicy,
    FetchResult,
    Progress,
    SourceState,
    commit_body,
    discard,
    fetch,
    load_state,
    save_state,
    state_path,
    tidy_feed_dir,
)
from proxy_addons.refresh.job import Candidate, CompileJob, CompileResult, ValidationReport
from proxy_addons.refresh.outcome import Fetch, Outcome
from proxy_addons.refresh.validate import (
    DEFAULT_CANARIES,
    Canaries,
    SizeBaseline,
    Validation,
    distinct_count,
    validate_body,
)

log = logging.getLogger(__name__)

# Local list files, the snapshot pointer and allowlists are checked this often.
POLL_SECONDS: Final = 5.0
WATCH_POLL_SECONDS: Final = 2.0
# A pointer's snapshot that failed to load is tried again after 2, 4, 8... s, at most this.
RETRY_FIRST_SECONDS: Final = 2.0
RETRY_MAX_SECONDS: Final = 60.0
# The published file served is checksummed again this often even when its stat is
# unchanged (a write that restored the mtime); ~10 ms and one read of the file.
FULL_VERIFY_SECONDS: Final = 300.0
# A failed or held-back source is tried again after min(this, its interval).
FAILURE_RETRY_SECONDS: Final = 600
# Up to this share of an interval (at most MAX_SCHEDULE_JITTER s) is added to it.
SCHEDULE_JITTER: Final = 0.1
MAX_SCHEDULE_JITTER: Final = 900
# After a start, sources whose turn has come are spread over this many seconds.
STARTUP_SPREAD: Final = 30.0
MAX_CONCURRENT_FETCHES: Final = 4
# Names the proxy answers itself (mitmproxy's certificate page).
OWN_NAMES: Final = ("mitm.it",)
# The worker only takes CPU time the proxy does not want: SCHED_IDLE where the kernel
# has it (Linux), else the lowest nice value. Measured with bench_refresh.py on 2 CPUs:
# at nice 5 the compile's 7 s of CPU raised the proxy's p99 3-4x; at SCHED_IDLE the
# compile seconds are as quiet as before it. On a host whose CPUs are saturated a
# refresh waits for spare time (a refresh is minutes apart; serving is not).
WORKER_NICE: Final = 19
# The worker's exit status when a rollback stopped it (128 + SIGTERM, as a shell says).
STOPPED_EXIT: Final = 143


class RefreshError(JectguardError):
    """The rebuild worker failed; the snapshot in force is unchanged."""

    hint = "state"


@dataclass(slots=True)
class SourceOutcome:
    name: str
    status: Outcome
    detail: str | None = None
    entries: int | None = None


@dataclass(slots=True)
class RefreshReport:
    outcomes: dict[str, SourceOutcome] = field(default_factory=dict)
    snapshot: str | None = None  # the snapshot published by this refresh
    rules: int | None = None
    refused: int = 0
    compile_seconds: float | None = None
    load_errors: dict[str, str] = field(default_factory=dict)
    not_published: str | None = None
    # The snapshot in force could not be served (corrupt, missing) and was republished.
    repaired: str | None = None
    # The cache could not be written (disk full, read-only): nothing new is in force.
    publish_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.not_published is None and all(
            o.status in (Outcome.UPDATED, Outcome.UNCHANGED, Outcome.DEFERRED)
            for o in self.outcomes.values()
        )


# -- the rebuild job (in the worker) ---------------------------------------------


def canary_names(cfg: SourcesConfig, own_names: Sequence[str] = OWN_NAMES) -> list[str]:
    from urllib.parse import urlsplit

    feed_hosts = [urlsplit(s.url).hostname or "" for s in cfg.sources if s.url]
    return [*DEFAULT_CANARIES, *cfg.never_block, *feed_hosts, *own_names]


def run_job(job: CompileJob) -> CompileResult:
    """Validate candidate bodies, commit the accepted ones, compile every block list, publish.

    The job and the result cross to the worker process as JSON (refresh/job.py), so
    this runs the same in a thread or there. The store stays locked from reading
    the record in force to publishing, so a rollback cannot slip in between.
    """
    out = CompileResult()
    store = SnapshotStore(Path(job.cache_dir))
    if not job.candidates and not job.rebuild:
        return out
    try:
        with store.locked(holder=REBUILD_HOLDER if _IN_WORKER else None):
            _run_locked(job, store, out)
    except StoreWriteError as exc:
        out.snapshot = None
        out.not_published = out.publish_error = str(exc)
    if out.not_published:
        # A list that passed every check but is not in force is not "updated".
        for v in out.validations.values():
            if v.accepted and not v.same:
                v.error = f"accepted, but not published: {out.not_published}"
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _validation_doc(v: Validation, *, same: bool = False) -> ValidationReport:
    return ValidationReport(
        accepted=v.accepted,
        reason=v.reason,
        entries=dict(v.entries),
        rejected=v.rejected,
        refused=v.refused,
        forced=v.forced,
        distinct=v.distinct,
        same=same,
    )


def _held_reason(hold: Hold) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(hold.since))
    return (
        f"held since {when}: the feed still serves the body a rollback took out "
        f"({hold.reason}); `jectguard rollback --release {hold.name}` accepts it"
    )


def _run_locked(job: CompileJob, store: SnapshotStore, out: CompileResult) -> None:
    cache = store.cache_dir
    specs = list(job.specs)
    by_name = {s.name: s for s in specs}
    canaries = Canaries(job.canaries)
    force = job.force
    in_force = store.read_record()
    holds = dict(in_force.holds) if in_force is not None else {}
    before = in_force.lists if in_force is not None else {}
    # name -> (parsed, digest, distinct, history) of each body accepted now
    accepted: dict[str, tuple[ParsedList, str, int, tuple[int, ...]]] = {}
    released: list[str] = []
    for c in job.candidates:
        name, tmp = c.name, Path(c.tmp)
        try:
            data = tmp.read_bytes()
        except OSError as exc:
            v = Validation(False, f"downloaded body unreadable: {exc.strerror or exc}")
            out.validations[name] = _validation_doc(v)
            continue
        digest = _sha256(data)
        prev = before.get(name)
        baseline = SizeBaseline.of_record(prev) if prev is not None else None
        hold = holds.get(name)
        if hold is not None and digest in hold.refused:
            v = Validation(False, _held_reason(hold))
        else:
            v = validate_body(
                data,
                fmt=by_name[name].format,
                name=name,
                content_type=c.content_type,
                previous_total=c.previous_total,
                baseline=baseline,
                canaries=canaries,
                force=force,
            )
        del data
        same = False
        if v.accepted:
            assert v.parsed is not None
            body = feed_body_path(cache, name)
            same = prev is not None and prev.digest == digest and _file_digest(body) == digest
            if same:
                discard(tmp)  # the body in force, byte for byte: nothing to commit
            else:
                with writing("keep the new body", body.parent):
                    commit_body(cache, name, tmp)
            history = (
                baseline.after(v.distinct) if baseline else SizeBaseline.of([v.distinct])
            ).history
            accepted[name] = (
                v.parsed,
                digest,
                v.distinct,
                prev.history if same and prev else history,
            )
            if hold is not None:
                holds.pop(name)
                released.append(name)
        else:
            discard(tmp)
        out.validations[name] = _validation_doc(v, same=same)
    if all(v.same or not v.accepted for v in out.validations.values()) and not (
        job.rebuild or released
    ):
        return

    inputs = StoreInputs(store, before, holds, accepted)
    lists, statuses = parse_lists(specs, cache, allow=False, resolve=inputs, count=distinct_count)
    records: dict[str, ListRecord] = {}
    bodies: dict[str, Path] = {}
    for status in statuses:
        if not status.loaded:
            if status.error is not None:
                out.load_errors[status.name] = status.error
            continue
        assert status.path is not None and status.digest is not None
        assert status.distinct is not None
        name, digest, distinct = status.name, status.digest, status.distinct
        prev = before.get(name)
        if name in accepted:
            history = accepted[name][3]
        elif prev is not None and prev.digest == digest:
            history = prev.history
        else:
            base = SizeBaseline.of_record(prev) if prev is not None else SizeBaseline()
            history = base.after(distinct).history
        bodies[name] = status.path
        fetched = by_name[name].url is not None
        records[name] = ListRecord(name, distinct, digest, history, fetched)
    released += inputs.released
    out.held_out = inputs.held_out
    out.released = released
    lost = sorted(n for n in out.load_errors if n in before)
    if lost and not force:
        out.not_published = (
            f"not published: {', '.join(lost)} could not be loaded and the snapshot in force "
            "has it (a new snapshot would protect less)"
        )
        return
    fingerprint = sources_fingerprint(specs)
    content = content_digest(fingerprint, records.values())
    repaired = None
    if in_force is not None and in_force.content == content:
        problem = store.verify_current()
        if problem is None:
            # Identical content: publish nothing (no history churn); keep the record current.
            record = replace(in_force.with_holds(holds.values()), inputs=list_inputs(specs, cache))
            if record != in_force:
                store.rewrite_record(record)
            return
        repaired = f"{in_force.snapshot} could not be served ({problem}); republished"
        out.repaired = repaired
    built = compile_block(lists)
    stats = built.stats
    record = InForce(
        snapshot="",
        published_at=time.time(),
        content=content,
        fingerprint=fingerprint,
        inputs=list_inputs(specs, cache),
        rules=stats.rules,
        by_kind=stats.by_kind,
        refused_count=stats.refused_count,
        compile_seconds=round(stats.seconds, 3),
        lists=records,
        holds={n: h for n, h in holds.items() if n in records or n in out.held_out},
        repaired=repaired,
    )
    out.snapshot = str(
        store.publish(built.image, exceptions=built.exceptions, record=record, bodies=bodies)
    )
    if repaired and in_force is not None:
        # A damaged file is no rollback target; a proxy that maps it keeps its pages.
        store.discard(in_force.snapshot)
    out.rules, out.refused, out.seconds = stats.rules, stats.refused_count, stats.seconds


def content_digest(fingerprint: str, lists: Iterable[ListRecord]) -> str:
    """What a snapshot is built from: equal digests compile to the same rules."""
    doc = [FORMAT_VERSION, __version__, fingerprint, sorted((r.name, r.digest) for r in lists)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _file_digest(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


async def run_rebuild(job: CompileJob, *, isolate: bool = True) -> CompileResult:
    """Run a rebuild job in a worker process (``isolate``) or a thread."""
    if not isolate:
        return await asyncio.to_thread(run_job, job)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy_addons.refresh.refresher",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await proc.communicate(job.to_json().encode())
    except BaseException:  # cancelled: the worker must not outlive its owner
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode in (STOPPED_EXIT, -signal.SIGTERM):
        raise RefreshError(
            "rebuild stopped (a rollback took the snapshot store); it runs again on what is in force"
        )
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RefreshError(f"rebuild worker exited with {proc.returncode}: {' '.join(tail)}")
    try:
        return CompileResult.from_json(stdout)
    except (ValueError, TypeError) as exc:
        raise RefreshError(f"rebuild worker answered garbage: {exc}") from None


def lower_priority() -> None:
    """Put this process behind every normal one in the CPU queue (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE - os.nice(0))


# True in the rebuild worker process (``python -m proxy_addons.refresh.refresher``): it
# marks the store lock as a rebuild's, which a rollback may stop (never the proxy).
_IN_WORKER = False


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # A rollback stopping this rebuild: unwind, so a half-written snapshot is removed.
    raise SystemExit(STOPPED_EXIT)


def _worker_main() -> int:
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    lower_priority()
    job = CompileJob.from_json(sys.stdin.buffer.read())
    sys.stdout.write(run_job(job).to_json())
    return 0


# -- following the store -----------------------------------------------------------


def _file_stamps(paths: Sequence[Path]) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Follower:
    """Keeps an engine slot on the store's current snapshot and the current allowlists.

    A snapshot the pointer names but that does not load (its file has not
    arrived yet, or is corrupt) is tried again with backoff, and until then the
    process is *stale*: it keeps serving the verified snapshot it has. The
    published file of the snapshot served is re-verified each poll (a ``stat``;
    the checksum when it changed, and every ``FULL_VERIFY_SECONDS``): a file
    changed or removed under the process is *damaged*, reported, and, with
    ``repair`` (the refresher), rewritten from the verified bytes in memory.
    Serving never depends on that file: what is served is a private copy.
    """

    def __init__(
        self,
        cache_dir: Path,
        specs: Sequence[ListSpec],
        slot: EngineHolder | None,
        *,
        repair: bool = False,
        on_health: Callable[[SnapshotHealth], None] | None = None,
        on_event: Callable[[SnapshotEvent], object] | None = None,  # its result is ignored
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.specs = list(specs)
        self.slot = slot
        self.store = SnapshotStore(self.cache_dir)
        self.repair = repair
        self.on_health = on_health
        self.on_event = on_event
        self.clock = clock
        self.pointer_stamp: tuple[int, int, int] | None = None
        self.allow_stamp: tuple[tuple[int, int] | None, ...] = ()
        self._allow_files = [
            source_of(s, self.cache_dir) for s in self.specs if s.enabled and s.allow
        ]
        self.health = IN_SYNC
        # the pointer's snapshot that failed to load: its name, since, tries, next try
        self._pending: str | None = None
        self._pending_since = 0.0
        self._pending_error = ""
        self._pending_file: tuple[tuple[int, int] | None, ...] = ()
        self._attempts = 0
        self._retry_at = 0.0
        # the published file of the snapshot served, as last verified
        self._origin: SnapshotOrigin | None = None
        self._identity: FileIdentity | None = None
        self._full_at = 0.0
        self._damage: str | None = None
        self._damage_since = 0.0
        self._faults: collections.Counter[SnapshotFault] = collections.Counter()

    async def start(self) -> None:
        """Adopt the current snapshot unless the slot already serves it."""
        self.allow_stamp = await asyncio.to_thread(_file_stamps, self._allow_files)
        current = await asyncio.to_thread(self.store.current_path)
        if self.slot is not None and current is not None and self.slot.engine.block.path == current:
            self.pointer_stamp = await asyncio.to_thread(self.store.pointer_stamp)
            await self._verify(self.clock())
            self._report()
            return
        await self.sync(force=True)

    async def sync(self, *, force: bool = False) -> bool:
        """Swap to a newly published snapshot, or recompile changed allowlists; True if swapped.

        Also retries a pointer's snapshot that failed to load (when its backoff
        ends or its file changes) and re-verifies the published file served.
        """
        now = self.clock()
        stamp = await asyncio.to_thread(self.store.pointer_stamp)
        allow = await asyncio.to_thread(_file_stamps, self._allow_files)
        swapped = False
        if stamp is not None and (
            force or stamp != self.pointer_stamp or await self._retry_due(now)
        ):
            self.pointer_stamp = stamp
            swapped = await self._load(now)
            if swapped:
                self.allow_stamp = allow
        elif stamp is None and self.pointer_stamp is not None:
            self.pointer_stamp = None  # the pointer vanished: report it, keep serving
            self._load_failed(now, "the pointer file was removed", None, ())
        if not swapped:
            await self._verify(now)
            if allow != self.allow_stamp and self.slot is not None:
                self.allow_stamp = allow
                await self._recompile_allow()
                swapped = True
        self._report()
        return swapped

    async def _retry_due(self, now: float) -> bool:
        if self._pending is None:
            return False
        if now >= self._retry_at:
            return True
        # The file it names arrived or changed: no reason to wait out the backoff.
        stamp = await asyncio.to_thread(_file_stamps, [self.store.dir / self._pending])
        return stamp != self._pending_file

    async def _load(self, now: float) -> bool:
        try:
            engine, pointer = await asyncio.to_thread(
                load_engine, self.specs, self.cache_dir, require_fingerprint=True
            )
        except JectguardError as exc:
            doc = await asyncio.to_thread(self.store.read_pointer) or {}
            target = Path(str(doc.get("snapshot", ""))).name or None
            stamp = await asyncio.to_thread(_file_stamps, [self.store.dir / (target or POINTER)])
            self._load_failed(now, str(exc), target, stamp)
            return False
        if self._pending is not None:
            log.warning(
                "jectguard: snapshot %s loaded after %d failed tries (%.0f s behind the pointer)",
                self._pending,
                self._attempts,
                now - self._pending_since,
            )
        self._pending = None
        self._attempts = 0
        self._swap(engine)
        log.info(
            "jectguard: now serving snapshot %s (%s block rules)",
            pointer.get("snapshot"),
            pointer.get("rules", engine.block.rule_count),
        )
        return True

    def _load_failed(
        self, now: float, error: str, target: str | None, stamp: tuple[tuple[int, int] | None, ...]
    ) -> None:
        if target is not None and target == self._serving():
            # The pointer names what is served (it was rewritten, or the file is
            # damaged): nothing to catch up with; _verify reports any damage.
            self._pending = None
            return
        target = target or POINTER  # no readable pointer: wait for one
        if target != self._pending:
            self._pending, self._pending_since, self._attempts = target, now, 0
            self._faults[SnapshotFault.LOAD_FAILED] += 1
            self._event(SnapshotFault.LOAD_FAILED, target, error)
        self._attempts += 1
        self._pending_error = error
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (self._attempts - 1))
        self._retry_at = now + delay
        self._pending_file = stamp
        log.warning(
            "jectguard: not switching to snapshot %s (try %d, next in %.0f s), "
            "serving the verified one in force: %s",
            target,
            self._attempts,
            delay,
            error,
        )

    def _serving(self) -> str | None:
        if self.slot is None:
            return None
        path = self.slot.engine.block.path
        return path.name if path is not None else None

    async def _verify(self, now: float) -> None:
        """Re-verify the published file of the snapshot served; report and repair a change."""
        origin = self.slot.engine.block.origin if self.slot is not None else None
        if origin is not self._origin:
            self._origin, self._damage = origin, None
            self._identity = origin.identity if origin is not None else None
            self._full_at = now + FULL_VERIFY_SECONDS
        if origin is None:
            return
        full = now >= self._full_at
        if full:
            self._full_at = now + FULL_VERIFY_SECONDS
        checked = await asyncio.to_thread(check_published, origin, self._identity, full=full)
        if checked is None:
            return  # not changed since it was last read: what was found then still holds
        self._identity, problem = checked
        if problem is None:
            if self._damage is not None:
                log.warning("jectguard: snapshot file %s is intact again", origin.path)
            self._damage = None
            return
        if problem == self._damage:
            return
        fault = SnapshotFault.MISSING if problem.startswith("missing") else SnapshotFault.CHANGED
        if self._damage is None:
            self._damage_since = now
        self._damage = problem
        self._faults[fault] += 1
        self._event(fault, origin.path.name, problem)
        log.warning(
            "jectguard: snapshot file %s %s; still serving its verified copy", origin.path, problem
        )
        if self.repair and self.slot is not None:
            block = self.slot.engine.block
            try:
                repaired = await asyncio.to_thread(self.store.restore, block)
            except OSError as exc:
                log.warning("jectguard: cannot rewrite %s: %s", origin.path, exc.strerror or exc)
                return
            if repaired:
                self._faults[SnapshotFault.REPAIRED] += 1
                self._event(
                    SnapshotFault.REPAIRED, origin.path.name, "rewritten from the verified copy"
                )
                log.warning("jectguard: rewrote %s from its verified copy", origin.path)
                self._identity = None  # read it again next poll

    def _event(self, fault: SnapshotFault, snapshot: str | None, detail: str) -> None:
        if self.on_event is not None:
            self.on_event(SnapshotEvent(fault, snapshot, detail))

    def _report(self) -> None:
        """Build the health record from the state above and hand it on if it changed."""
        pointer = self._pending or self._serving()
        since: float | None = None
        if self._pending is not None:
            state = SnapshotState.STALE
            if self._pending == POINTER:
                pointer = None
                reason = f"the snapshot pointer is missing or unreadable: {self._pending_error}"
            else:
                reason = (
                    f"the pointer names {self._pending}, which does not load: {self._pending_error}"
                )
            since = self._pending_since
            if self._damage is not None:
                since = min(since, self._damage_since)
        elif self._damage is not None:
            state, reason, since = SnapshotState.DAMAGED, self._damage, self._damage_since
        else:
            state, reason = SnapshotState.CURRENT, None
        health = SnapshotHealth(
            state=state,
            serving=self._serving(),
            pointer=pointer,
            reason=reason,
            since=since,
            behind_since=self._pending_since if self._pending is not None else None,
            attempts=self._attempts if self._pending is not None else 0,
            next_retry=self._retry_at if self._pending is not None else None,
            damage=self._damage,
            faults=tuple(sorted(self._faults.items())),
        )
        if health != self.health:
            self.health = health
            if self.on_health is not None:
                self.on_health(health)

    async def _recompile_allow(self) -> None:
        assert self.slot is not None
        current = self.slot.engine
        try:
            exceptions = (
                self.store.load_exceptions(current.block.path) if current.block.path else []
            )
            new_allow, result = await asyncio.to_thread(
                compile_allow, self.specs, self.cache_dir, exceptions
            )
        except JectguardError as exc:
            log.warning("jectguard: allowlist not reloaded: %s", exc)
            return
        for name, err in result.errors.items():
            log.warning("jectguard: allowlist %s not loaded: %s", name, err)
        self._swap(current.with_allow(new_allow))
        log.info("jectguard: allowlists reloaded (%d rules)", new_allow.rule_count)

    def _swap(self, engine: Engine) -> None:
        if self.slot is not None:
            # The old engine is not closed: a flow may still hold it between two
            # awaits; it is unmapped when the last reference goes.
            self.slot.swap(engine)


async def watch_snapshot(
    cache_dir: Path,
    specs: Sequence[ListSpec],
    slot: EngineHolder,
    *,
    interval: float = WATCH_POLL_SECONDS,
    on_health: Callable[[SnapshotHealth], None] | None = None,
    on_event: Callable[[SnapshotEvent], object] | None = None,  # its result is ignored
) -> None:
    """Follow the snapshots another process publishes, forever (cancel to stop)."""
    follower = Follower(cache_dir, specs, slot, on_health=on_health, on_event=on_event)
    await follower.start()
    while True:
        await asyncio.sleep(interval)
        try:
            await follower.sync()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad poll must not end following for the process lifetime
            log.warning("jectguard: snapshot poll failed: %s: %s", type(exc).__name__, exc)


# -- the refresher -------------------------------------------------------------


def next_run(
    spec: ListSpec,
    state: SourceState,
    now: float,
    *,
    ok: bool,
    permanent: bool = False,
    min_interval: float = 0.0,
) -> float:
    """When to fetch a source again: its interval plus jitter; sooner after a failure that
    may pass (not a permanent one); never before its minimum interval or a Retry-After."""
    short = not ok and not permanent
    base = float(min(spec.refresh, FAILURE_RETRY_SECONDS) if short else spec.refresh)
    base = max(base, float(min_interval))
    jitter = random.uniform(0, min(base * SCHEDULE_JITTER, MAX_SCHEDULE_JITTER))
    when = now + base + jitter
    if state.not_before is not None:
        when = max(when, state.not_before)
    return when


def fetch_allowed_at(
    state: SourceState, rules: FeedRules, *, ignore_min_interval: bool = False
) -> tuple[float, str]:
    """The earliest time a source may be fetched again, and why (0.0: any time).

    ``Retry-After`` always holds (the operator asked; ignoring it risks a ban);
    the minimum interval holds unless an operator forces a manual refresh.
    """
    when, why = 0.0, ""
    if state.not_before is not None:
        when, why = state.not_before, "the feed server asked us to wait (Retry-After)"
    if not ignore_min_interval and state.last_attempt is not None:
        floor = state.last_attempt + rules.min_interval
        if floor > when:
            when, why = floor, f"min_interval {rules.min_interval}s since the last fetch"
    return when, why


def _clock_text(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


@dataclass(slots=True)
class _BuildRequest:
    """A candidate body (or a plain rebuild) waiting for the rebuilder."""

    candidate: Candidate | None
    force: bool
    rebuild: bool
    done: asyncio.Future[CompileResult]


class Refresher:
    """Fetches feeds on their schedule and publishes snapshots; optionally feeds an engine slot."""

    def __init__(
        self,
        cfg: SourcesConfig,
        cache_dir: Path,
        *,
        slot: EngineHolder | None = None,
        policy: FetchPolicy = DEFAULT_POLICY,
        isolate: bool = True,
        startup_spread: float = STARTUP_SPREAD,
        poll: float = POLL_SECONDS,
        own_names: Sequence[str] = OWN_NAMES,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[RefreshReport], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.specs = list(cfg.sources)
        self.url_specs = [s for s in self.specs if s.enabled and s.url]
        self.policy = policy
        self.isolate = isolate
        self.startup_spread = startup_spread
        self.poll = poll
        self.canaries = canary_names(cfg, own_names)
        self.clock = clock
        self.on_report = on_report
        self.follower = Follower(self.cache_dir, self.specs, slot)
        self.store = self.follower.store
        self.schedule: dict[str, float] = {}
        # When the rebuild running now started (None: none runs); shown by status().
        self.rebuild_since: float | None = None
        self.last_report: RefreshReport | None = None
        self._rebuild_not_before = 0.0
        self._wake = asyncio.Event()
        # One task per source being fetched (and validated); a second request joins it.
        # An ended task stays here until its done callback runs: ask _in_flight().
        self._fetching: dict[str, asyncio.Task[tuple[SourceOutcome, CompileResult | None]]] = {}
        self._fetch_slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self._builds: list[_BuildRequest] = []
        self._builder: asyncio.Task[None] | None = None
        self._build_seq = 0
        self._stale_task: asyncio.Task[None] | None = None
        # Asked for while being fetched: fetched again once that fetch is done (it may
        # have read the feed before the change the request is about).
        self._again: set[str] = set()

    # -- one refresh ---------------------------------------------------------

    async def refresh(
        self,
        names: Sequence[str] | None = None,
        *,
        force: bool = False,
        rebuild: bool = False,
        progress: Progress | None = None,
    ) -> RefreshReport:
        """Fetch the given URL sources (default: all) now, each on its own, publishing each
        change as it is validated; the report once all are done.

        ``force`` accepts what the shrink guard holds back and skips the minimum
        interval (never a Retry-After). A source already being fetched is not
        fetched twice: its fetch in progress answers for it. ``rebuild`` compiles
        a snapshot even if no feed changed (once the fetches are done, if none
        published one).
        """
        return await self._refresh(names, force=force, rebuild=rebuild, progress=progress)

    async def _refresh(
        self,
        names: Sequence[str] | None,
        *,
        force: bool,
        rebuild: bool,
        progress: Progress | None,
    ) -> RefreshReport:
        specs = [s for s in self.url_specs if names is None or s.name in names]
        tasks = [self._start(spec, force=force, progress=progress) for spec in specs]
        # Shielded: a fetch may be shared (the background loop's, another caller's), so a
        # caller that is cancelled stops waiting but does not end the fetch for the others.
        done = await asyncio.gather(*map(asyncio.shield, tasks)) if tasks else []
        report = RefreshReport()
        workers = [w for _, w in done if w is not None]
        for outcome, _ in done:
            report.outcomes[outcome.name] = outcome
        if rebuild and not any(w.snapshot for w in workers):
            extra = await self._build(None, force=force, rebuild=True)
            workers.append(extra)
            if self.on_report and extra.repaired:  # per-source reports carry no repair
                repaired = RefreshReport()
                _merge_workers(repaired, [extra])
                self.on_report(repaired)
        _merge_workers(report, workers)
        self.last_report = report
        return report

    def _start(
        self, spec: ListSpec, *, force: bool = False, progress: Progress | None = None
    ) -> asyncio.Task[tuple[SourceOutcome, CompileResult | None]]:
        """The task fetching this source: the one in progress, or a new one."""
        task = self._in_flight(spec.name)
        if task is not None:
            return task
        task = asyncio.get_running_loop().create_task(
            self._source(spec, force=force, progress=progress), name=f"jectguard-fetch-{spec.name}"
        )
        self._fetching[spec.name] = task
        task.add_done_callback(functools.partial(self._fetch_ended, spec.name))
        return task

    def _in_flight(
        self, name: str
    ) -> asyncio.Task[tuple[SourceOutcome, CompileResult | None]] | None:
        """The task fetching this source now, if one is (the one place that decides it).

        A task that has ended is not in flight although it is still registered:
        asyncio runs its done callback (:meth:`_fetch_ended`) a loop turn later, and
        in that turn status() would show an ended fetch, a refresh() would be answered
        by its old outcome instead of a new fetch, and a ``gather`` of it returns
        without yielding, so a caller looping on it never lets the callback run.
        """
        task = self._fetching.get(name)
        return task if task is not None and not task.done() else None

    def _fetches(self) -> dict[str, asyncio.Task[tuple[SourceOutcome, CompileResult | None]]]:
        """The sources being fetched now, and their tasks."""
        return {n: t for n in list(self._fetching) if (t := self._in_flight(n)) is not None}

    def _fetch_ended(self, name: str, task: asyncio.Task[Any]) -> None:
        """A fetch task's done callback: unregister it, and give the source its next turn
        however the task ended (a source is never left without one)."""
        if self._fetching.get(name) is task:
            del self._fetching[name]
        retry = self.clock() + FAILURE_RETRY_SECONDS
        if task.cancelled():
            # Ended before recording an outcome (a stop, or a refresh() caller that was
            # cancelled): not the far-off turn _tick set while it ran.
            self.schedule[name] = min(self.schedule.get(name, retry), retry)
        elif (exc := task.exception()) is not None:
            # A bug or a full disk: this source tries again later, the others go on.
            log.warning("jectguard: refresh of %s failed: %s: %s", name, type(exc).__name__, exc)
            self.schedule[name] = retry
        if name in self._again:
            self._again.discard(name)
            self.schedule[name] = 0.0
        self._wake.set()

    async def _source(
        self, spec: ListSpec, *, force: bool, progress: Progress | None
    ) -> tuple[SourceOutcome, CompileResult | None]:
        """Fetch one source within its deadline, have a new body validated and published, record."""
        st = await asyncio.to_thread(load_state, self.cache_dir, spec)
        rules = self.cfg.rules(spec.name)
        allowed, why = fetch_allowed_at(st, rules, ignore_min_interval=force)
        if allowed > self.clock():
            self.schedule[spec.name] = allowed
            detail = f"not fetched: next fetch allowed at {_clock_text(allowed)} ({why})"
            if progress:
                progress(spec.name, "deferred", {"detail": detail})
            return SourceOutcome(spec.name, Outcome.DEFERRED, detail, st.entries_total), None
        async with self._fetch_slots:
            if progress:
                progress(spec.name, "start", {"url": spec.url})
            try:
                res = await fetch(
                    spec,
                    st,
                    self.cache_dir,
                    self.policy,
                    internal=rules.internal,
                    progress=progress,
                    clock=self.clock,
                )
            except Exception as exc:  # a bad URL, a bug: this source fails alone
                res = FetchResult(Fetch.FAILED, error=f"{type(exc).__name__}: {exc}")
            if progress:
                progress(spec.name, "fetched", {"status": res.status, "error": res.error})
        worker: CompileResult | None = None
        try:
            if res.status == Fetch.NEW:
                previous = (
                    st.entries_total if feed_body_path(self.cache_dir, spec.name).exists() else None
                )
                candidate = Candidate(spec.name, str(res.tmp), res.content_type, previous)
                worker = await self._build(candidate, force=force, rebuild=False)
            validation = worker.validations.get(spec.name) if worker else None
            outcome = self._record(spec, st, res, validation, self.clock())
            if res.status == Fetch.NEW and worker and worker.error:
                outcome.detail = f"{outcome.detail}: {worker.error}"
            await asyncio.to_thread(save_state, self.cache_dir, st)
        finally:
            await asyncio.to_thread(discard, res.tmp)
        if self.on_report:
            one = RefreshReport(outcomes={spec.name: outcome})
            _merge_workers(one, [worker] if worker else [])
            self.on_report(one)
        return outcome, worker

    # -- rebuilds: one at a time, coalescing what arrives meanwhile ----------

    async def _build(
        self, candidate: Candidate | None, *, force: bool, rebuild: bool
    ) -> CompileResult:
        """Validate a candidate body (or just rebuild) and publish; the worker's answer."""
        loop = asyncio.get_running_loop()
        req = _BuildRequest(candidate, force, rebuild, loop.create_future())
        self._builds.append(req)
        if self._builder is None or self._builder.done():
            self._builder = loop.create_task(self._build_all(), name="jectguard-rebuild")
        return await req.done

    async def _build_all(self) -> None:
        while self._builds:
            force = self._builds[0].force
            batch = [r for r in self._builds if r.force == force and not r.done.done()]
            self._builds = [r for r in self._builds if r.force != force and not r.done.done()]
            if not batch:
                continue
            candidates = [r.candidate for r in batch if r.candidate is not None]
            job = CompileJob(
                cache_dir=str(self.cache_dir),
                specs=tuple(self.specs),
                candidates=tuple(candidates),
                canaries=tuple(self.canaries),
                force=force,
                rebuild=any(r.rebuild for r in batch),
            )
            self.rebuild_since = self.clock()
            try:
                worker = await run_rebuild(job, isolate=self.isolate)
            except asyncio.CancelledError:
                # Nobody may go on waiting for a rebuild that will not come.
                for r in [*batch, *self._builds]:
                    r.done.cancel()
                self._builds = []
                raise
            except Exception as exc:  # the worker died or a bug: these bodies are not taken
                detail = (
                    str(exc) if isinstance(exc, RefreshError) else f"{type(exc).__name__}: {exc}"
                )
                log.warning("jectguard: %s; keeping the snapshot in force", detail)
                worker = CompileResult(error=detail, not_published=detail)
            finally:
                self.rebuild_since = None
            self._build_seq += 1
            worker.seq = self._build_seq
            if worker.snapshot:
                try:
                    await self.follower.sync()
                except Exception as exc:  # the snapshot is published; the next poll swaps to it
                    log.warning("jectguard: not switched to the new snapshot yet: %s", exc)
            for name, err in worker.load_errors.items():
                log.warning("jectguard: list %s not loaded: %s", name, err)
            if worker.not_published and not worker.error:
                log.warning("jectguard: %s", worker.not_published)
            for r in batch:
                if not r.done.done():
                    r.done.set_result(worker)

    def _record(
        self,
        spec: ListSpec,
        st: SourceState,
        res: FetchResult,
        v: ValidationReport | None,
        now: float,
    ) -> SourceOutcome:
        """Update a source's state from one fetch and its validation; the outcome to report."""
        st.last_attempt = now
        ok = False
        if res.status == Fetch.NOT_MODIFIED:
            st.last_success, st.last_error, st.held_back, st.failures = now, None, None, 0
            st.etag, st.last_modified = res.etag, res.last_modified
            out = SourceOutcome(spec.name, Outcome.UNCHANGED, "304 Not Modified", st.entries_total)
            ok = True
        elif res.status == Fetch.FAILED or v is None or v.error:
            st.last_error = (
                res.error
                or (v.error if v is not None else None)
                or ("validation did not run (rebuild worker failed)")
            )
            st.failures += 1
            if res.retry_after is not None:
                st.not_before = now + res.retry_after
            out = SourceOutcome(spec.name, Outcome.FAILED, st.last_error, st.entries_total)
            log.warning(
                "jectguard: feed %s failed, serving its last good data: %s",
                spec.name,
                st.last_error,
            )
        elif v.accepted:
            st.last_success = now
            st.etag, st.last_modified, st.bytes = res.etag, res.last_modified, res.bytes
            st.body_sha256 = res.sha256  # the validators above describe this body only
            st.entries, st.entries_total = v.entries, sum(v.entries.values())
            st.rejected, st.refused = v.rejected, v.refused
            st.held_back, st.last_error, st.failures = None, None, 0
            if v.same:
                detail = f"{st.entries_total} entries (same content as the list in force)"
                out = SourceOutcome(spec.name, Outcome.UNCHANGED, detail, st.entries_total)
            else:
                st.last_change = now
                detail = f"{st.entries_total} entries" + (
                    " (size guard overridden)" if v.forced else ""
                )
                out = SourceOutcome(spec.name, Outcome.UPDATED, detail, st.entries_total)
            ok = True
        else:
            st.held_back, st.last_error = v.reason, None
            out = SourceOutcome(spec.name, Outcome.HELD_BACK, v.reason, st.entries_total)
            log.warning(
                "jectguard: feed %s held back, keeping its last good data: %s", spec.name, v.reason
            )
        if res.retry_after is None and ok:
            st.not_before = None
        st.permanent_error = res.status == Fetch.FAILED and res.permanent
        st.next_run = self._next_run(spec, st, now, ok=ok)
        self.schedule[spec.name] = st.next_run
        return out

    def _next_run(self, spec: ListSpec, st: SourceState, now: float, *, ok: bool) -> float:
        """Its next turn: a permanent failure waits the normal interval, and never under
        the source's minimum interval."""
        rules = self.cfg.rules(spec.name)
        return next_run(
            spec, st, now, ok=ok, permanent=st.permanent_error, min_interval=rules.min_interval
        )

    # -- forever -------------------------------------------------------------

    def snapshot_stale(self) -> bool:
        """True when the current snapshot must be rebuilt: built from other lists, or unusable.

        Unusable includes a current file that is missing, truncated or fails its
        checksum (read again only when the file changed), so a damaged snapshot
        is republished instead of "nothing changed".
        """
        pointer = self.store.read_pointer()
        if pointer is None:
            return True
        if pointer.get("fingerprint") != sources_fingerprint(self.specs):
            return True
        current = self.store.current_path()
        try:
            with open(current, "rb") as f:  # type: ignore[arg-type]
                if f.read(len(MAGIC)) != MAGIC:
                    return True  # written by another jectguard version: this one cannot load it
        except OSError:
            return True
        problem = self.store.verify_current()
        if problem is not None:
            slot = self.follower.slot
            origin = getattr(slot.engine.block, "origin", None) if slot is not None else None
            if origin is not None and origin.path == current:
                # This process serves a verified copy of it: the follower writes that back
                # (no recompile). Republish only what nobody here can restore.
                return False
            log.warning(
                "jectguard: the snapshot in force cannot be served (%s); rebuilding", problem
            )
            return True
        inputs = pointer.get("inputs", {})
        return bool(inputs != list_inputs(self.specs, self.cache_dir))

    async def run(self) -> None:
        """Refresh every URL source on its schedule, forever (cancel to stop)."""
        await asyncio.to_thread(tidy_feed_dir, self.cache_dir)
        states = await asyncio.to_thread(
            lambda: {s.name: load_state(self.cache_dir, s) for s in self.url_specs}
        )
        now = self.clock()
        for spec in self.url_specs:
            st = states[spec.name]
            when = st.next_run if st.next_run is not None and st.next_run > now else None
            if when is None:
                # Never fetched: soon. Overdue with a cached body: spread out, so a
                # restart does not hit every feed operator in the same second.
                cached = feed_body_path(self.cache_dir, spec.name).exists()
                spread = self.startup_spread if cached else min(self.startup_spread, 2.0)
                when = now + random.uniform(0, spread)
            if st.not_before is not None:
                when = max(when, st.not_before)
            self.schedule[spec.name] = when
        await self.follower.start()
        try:
            while True:
                try:
                    await self._tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not end refreshing for the process lifetime
                    log.warning("jectguard: refresh cycle failed: %s: %s", type(exc).__name__, exc)
                fetching = self._fetches()
                waiting = [t for n, t in self.schedule.items() if n not in fetching]
                wake = min(waiting, default=self.clock() + self.poll)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), max(0.05, min(wake - self.clock(), self.poll))
                    )
                self._wake.clear()
        finally:
            await self._stop()

    async def _stop(self) -> None:
        """Cancel fetches and the rebuild (its worker is killed); each cleans up after itself."""
        tasks: list[asyncio.Task[Any]] = [*self._fetches().values()]
        tasks += [t for t in (self._builder, self._stale_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def trigger(self) -> bool:
        """Make every source due now (the admin API). Never "busy": a source being fetched
        carries on, one whose minimum interval or Retry-After has not passed is fetched
        when it has (its status says when)."""
        self.refresh_soon()
        return True

    def status(self) -> dict[str, Any]:
        """What is in force and per-source status, JSON-ready (reads small files)."""
        doc = status_document(self.cfg, self.cache_dir, self.last_report)
        # A rebuild waits for spare CPU (its worker runs at the lowest priority): how long
        # this one has been running says whether new rules are stuck behind a busy host.
        since = self.rebuild_since
        doc["rebuild"] = {
            "running": since is not None,
            "since": since,
            "seconds": None if since is None else round(self.clock() - since, 1),
        }
        fetching = self._fetches()
        for src in doc["sources"]:
            if src.get("refresh_seconds") is not None:
                src["fetching"] = src["name"] in fetching
                src["scheduled"] = self.schedule.get(src["name"])
        return doc

    def refresh_soon(self, *names: str) -> None:
        """Make these sources (default: all) due now and wake the loop."""
        known = {s.name for s in self.url_specs}
        # An unknown name would stay due for ever: the loop would wake every turn for it.
        for name in [n for n in names if n in known] if names else list(self.schedule):
            self.schedule[name] = 0.0
            if self._in_flight(name) is not None:
                self._again.add(name)
        self._wake.set()

    async def _tick(self) -> None:
        now = self.clock()
        by_name = {s.name: s for s in self.url_specs}
        for name, t in list(self.schedule.items()):
            if t <= now and name in by_name and self._in_flight(name) is None:
                # Far off until its outcome reschedules it (a deferral sets its own time).
                self.schedule[name] = now + self.poll + 3600
                self._start(by_name[name])
        idle = (self._builder is None or self._builder.done()) and not self._builds
        stale_running = self._stale_task is not None and not self._stale_task.done()
        may_rebuild = idle and not stale_running and now >= self._rebuild_not_before
        if may_rebuild and await asyncio.to_thread(self.snapshot_stale):
            self._stale_task = asyncio.get_running_loop().create_task(
                self._rebuild_stale(now), name="jectguard-stale-rebuild"
            )
            return
        await self.follower.sync()

    async def _rebuild_stale(self, now: float) -> None:
        worker = await self._build(None, force=False, rebuild=True)
        if not worker.snapshot:
            # Do not rebuild every poll while a list stays broken.
            self._rebuild_not_before = now + FAILURE_RETRY_SECONDS
        report = RefreshReport()
        _merge_workers(report, [worker])
        if report.not_published or report.repaired:
            self.last_report = report  # what status shows of the last refresh
        if self.on_report and (worker.not_published or worker.load_errors or worker.repaired):
            self.on_report(report)


def _merge_workers(report: RefreshReport, workers: Sequence[CompileResult]) -> None:
    """What the rebuilds a refresh took part in did: the latest snapshot, the latest trouble."""
    ordered = sorted(workers, key=lambda w: w.seq)
    published = [w for w in ordered if w.snapshot]
    if published:
        last = published[-1]
        report.snapshot = last.snapshot
        report.rules = last.rules
        report.refused = last.refused
        report.compile_seconds = last.seconds
    if ordered:
        report.load_errors = ordered[-1].load_errors
        problems = [w.not_published for w in ordered if w.not_published]
        if problems and (not published or ordered[-1].not_published):
            report.not_published = problems[-1]
        report.repaired = next((w.repaired for w in published if w.repaired), None)
        errors = [w.publish_error for w in ordered if w.publish_error]
        if errors and report.not_published in errors:
            report.publish_error = report.not_published


def release_holds(cache_dir: Path, names: Sequence[str] | None) -> list[Hold]:
    """Stop holding these sources (None: all) and forget the validators of their downloads.

    Without the validators the next fetch takes the feed's body as it is now
    (a 304 would keep the restored body in force although the hold is gone).
    """
    store = SnapshotStore(cache_dir)
    gone = store.release(names)
    for hold in gone:
        path = state_path(cache_dir, hold.name)
        try:
            st = SourceState.from_json(hold.name, path.read_bytes())
        except (OSError, ValueError, TypeError):
            continue  # no state: nothing to forget
        st.etag = st.last_modified = None
        with writing("save the feed state", path.parent):
            save_state(cache_dir, st)
    return gone


class Health(StrEnum):
    """One word for a source's state, decided here for every status surface."""

    OK = "ok"
    HELD = "held"  # a rollback holds it: the body rolled back is refused
    HELD_BACK = "held_back"  # its last download was refused; the last good data stays
    FAILED = "failed"  # its last download (or publish) failed; the last good data stays
    FAILED_NO_DATA = "failed_no_data"
    NOT_FETCHED = "not_fetched"
    LOCAL = "local"
    DISABLED = "disabled"


def source_health(doc: dict[str, Any]) -> Health:
    if not doc["enabled"]:
        return Health.DISABLED
    if doc.get("hold"):
        return Health.HELD
    if doc["source"] and not str(doc["source"]).startswith(("http://", "https://")):
        return Health.LOCAL
    if doc.get("held_back"):
        return Health.HELD_BACK
    if doc.get("last_error"):
        return Health.FAILED if doc.get("cached") else Health.FAILED_NO_DATA
    if not doc.get("cached"):
        return Health.NOT_FETCHED
    return Health.OK


def source_status(
    cfg: SourcesConfig, cache_dir: Path, record: InForce | None = None
) -> list[dict[str, Any]]:
    """Per source: its config, its state file and what of it is in force (from ``record``)."""
    if record is None:
        record = SnapshotStore(cache_dir).read_record()
    out = []
    for spec in cfg.sources:
        lst = record.lists.get(spec.name) if record is not None else None
        hold = record.holds.get(spec.name) if record is not None else None
        doc: dict[str, Any] = {
            "name": spec.name,
            "kind": "allow" if spec.allow else "block",
            "enabled": spec.enabled,
            "source": spec.url or spec.path,
            "format": spec.format,
            "category": spec.category,
            "mode": spec.mode.value,
            "refresh_seconds": spec.refresh if spec.url else None,
            "rules_in_snapshot": lst.rules if lst is not None else None,
            "hold": {"reason": hold.reason, "since": hold.since} if hold is not None else None,
        }
        if spec.url:
            state = load_state(cache_dir, spec)
            rules = cfg.rules(spec.name)
            st = dataclasses.asdict(state)
            st.pop("name", None)
            st.pop("url", None)
            doc.update(st)
            doc["cached"] = feed_body_path(cache_dir, spec.name).exists()
            doc["min_interval_seconds"] = rules.min_interval
            doc["internal"] = rules.internal
            allowed, why = fetch_allowed_at(state, rules)
            later = allowed > time.time()
            doc["next_fetch_allowed"] = allowed if later else None  # None: any time
            doc["next_fetch_allowed_why"] = why if later else None
        doc["health"] = source_health(doc)
        out.append(doc)
    return out


def status_document(
    cfg: SourcesConfig, cache_dir: Path, last_report: RefreshReport | None = None
) -> dict[str, Any]:
    """The one status document: the record in force, every source, the rollback history.

    ``jectguard lists --json``, ``/api/status`` (``refresh``), ``/api/lists`` and
    the dashboard all show this.
    """
    store = SnapshotStore(cache_dir)
    record = store.read_record()
    snaps = store.list_snapshots()
    return {
        "cache_dir": str(cache_dir),
        "in_force": record.as_dict() if record is not None else None,
        "sources": source_status(cfg, cache_dir, record),
        "snapshots": [{"name": s.name, "size": s.size, "current": s.current} for s in snaps],
        "rollback_targets": len(store.rollback_targets()),
        "last_refresh": None
        if last_report is None
        else {
            "snapshot": last_report.snapshot,
            "not_published": last_report.not_published,
            "publish_error": last_report.publish_error,
            "repaired": last_report.repaired,
        },
    }


if __name__ == "__main__":
    sys.exit(_worker_main())
