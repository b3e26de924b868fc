"""Refresh orchestration: fetch -> validate -> keep body -> compile -> publish -> swap.

Pure asyncio + aiohttp (no mitmproxy), used by the refresh addon and by
``jectguard update``.

* :class:`Refresher` fetches every enabled URL source on its own schedule (its
  interval from the sources file plus jitter, so sources do not all fire at
  once). New bodies are validated (:mod:`.validate`), committed, and every
  block list is parsed and compiled into a snapshot **in a worker process**
  (``python -m proxy_addons.refresher``: a million-rule compile holds a CPU
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
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from . import __version__
from .config import SourcesConfig
from .core.engine import Engine, split_exceptions
from .core.errors import JectguardError, ListFormatError
from .core.formats import parse_list
from .core.index import FORMAT_VERSION, MAGIC, compile_index
from .core.model import ListSpec, Mode, ParsedList
from .feeds import (
    DEFAULT_POLICY,
    FetchPolicy,
    FetchResult,
    Progress,
    SourceState,
    clean_partials,
    commit_body,
    discard,
    fetch,
    load_state,
    make_session,
    save_state,
    state_path,
)
from .inforce import Hold, InForce, ListRecord
from .loading import ListFileError, feed_body_path, read_list_file
from .store import (
    SnapshotStore,
    StoreWriteError,
    compile_allow,
    list_inputs,
    load_engine,
    sources_fingerprint,
    writing,
)
from .validate import (
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
# The worker gets a lower CPU priority than the proxy it serves.
WORKER_NICE: Final = 5


class RefreshError(JectguardError):
    """The rebuild worker failed; the snapshot in force is unchanged."""

    hint = "state"


class EngineSlot(Protocol):
    """Where the engine in force lives (the proxy's EngineHolder)."""

    engine: Engine

    def swap(self, new: Engine) -> Engine: ...


class Outcome(StrEnum):
    """What one refresh did with one source (the metrics' result is derived from it)."""

    UPDATED = "updated"  # a new body is in force
    UNCHANGED = "unchanged"  # 304, or the same content as the body in force
    HELD_BACK = "held_back"  # a body came but a check refused it; the last good one stays
    FAILED = "failed"  # no usable answer, or the new body could not be published


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
            o.status in (Outcome.UPDATED, Outcome.UNCHANGED) for o in self.outcomes.values()
        )


# -- the rebuild job (in the worker) ---------------------------------------------


def spec_to_dict(spec: ListSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["mode"] = spec.mode.value
    return d


def spec_from_dict(d: dict[str, Any]) -> ListSpec:
    return ListSpec(**{**d, "mode": Mode(d["mode"])})


def canary_names(cfg: SourcesConfig, own_names: Sequence[str] = OWN_NAMES) -> list[str]:
    from urllib.parse import urlsplit

    feed_hosts = [urlsplit(s.url).hostname or "" for s in cfg.sources if s.url]
    return [*DEFAULT_CANARIES, *cfg.never_block, *feed_hosts, *own_names]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Validate candidate bodies, commit the accepted ones, compile every block list, publish.

    ``job`` and the result are JSON documents, so this runs the same in a
    thread or in the worker process. The store stays locked from reading the
    record in force to publishing, so a rollback cannot slip in between.
    """
    cache = Path(job["cache_dir"])
    out: dict[str, Any] = {"validations": {}, "snapshot": None, "load_errors": {}}
    store = SnapshotStore(cache)
    if not job["candidates"] and not job.get("rebuild"):
        return out
    try:
        with store.locked():
            _run_locked(job, store, out)
    except StoreWriteError as exc:
        out["snapshot"] = None
        out["not_published"] = out["publish_error"] = str(exc)
    if out.get("not_published"):
        # A list that passed every check but is not in force is not "updated".
        for v in out["validations"].values():
            if v["accepted"] and not v.get("same"):
                v["error"] = f"accepted, but not published: {out['not_published']}"
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _validation_doc(v: Validation, **extra: Any) -> dict[str, Any]:
    return {
        "accepted": v.accepted,
        "reason": v.reason,
        "entries": v.entries,
        "rejected": v.rejected,
        "refused": v.refused,
        "forced": v.forced,
        "distinct": v.distinct,
        **extra,
    }


def _held_reason(hold: Hold) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(hold.since))
    return (
        f"held since {when}: the feed still serves the body a rollback took out "
        f"({hold.reason}); `jectguard rollback --release {hold.name}` accepts it"
    )


def _run_locked(job: dict[str, Any], store: SnapshotStore, out: dict[str, Any]) -> None:
    cache = store.cache_dir
    specs = [spec_from_dict(d) for d in job["specs"]]
    by_name = {s.name: s for s in specs}
    canaries = Canaries(job["canaries"])
    force = bool(job.get("force", False))
    in_force = store.read_record()
    holds = dict(in_force.holds) if in_force is not None else {}
    before = in_force.lists if in_force is not None else {}
    # name -> (parsed, digest, distinct, history) of each body accepted now
    accepted: dict[str, tuple[ParsedList, str, int, tuple[int, ...]]] = {}
    released: list[str] = []
    for c in job["candidates"]:
        name, tmp = c["name"], Path(c["tmp"])
        try:
            data = tmp.read_bytes()
        except OSError as exc:
            v = Validation(False, f"downloaded body unreadable: {exc.strerror or exc}")
            out["validations"][name] = _validation_doc(v)
            continue
        digest = _sha256(data)
        prev = before.get(name)
        baseline = prev.baseline if prev is not None else None
        hold = holds.get(name)
        if hold is not None and digest in hold.refused:
            v = Validation(False, _held_reason(hold))
        else:
            v = validate_body(
                data,
                fmt=by_name[name].format,
                name=name,
                content_type=c.get("content_type"),
                previous_total=c.get("previous_total"),
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
            history = (baseline.after(v.distinct) if baseline else SizeBaseline.of([v.distinct])).history
            accepted[name] = (v.parsed, digest, v.distinct, prev.history if same and prev else history)
            if hold is not None:
                holds.pop(name)
                released.append(name)
        else:
            discard(tmp)
        out["validations"][name] = _validation_doc(v, same=same)
    if all(v.get("same") or not v["accepted"] for v in out["validations"].values()) and not (
        job.get("rebuild") or released
    ):
        return

    lists: list[tuple[ListSpec, ParsedList]] = []
    records: dict[str, ListRecord] = {}
    bodies: dict[str, Path] = {}
    for spec in specs:
        if not spec.enabled or spec.allow:
            continue
        prev = before.get(spec.name)
        src = Path(spec.path) if spec.path is not None else feed_body_path(cache, spec.name)
        if spec.name in accepted:
            parsed, digest, distinct, history = accepted[spec.name]
        else:
            if spec.url is not None and not src.exists():
                kept = _kept_body(store, spec.name, prev.digest if prev else None)
                if kept is None:
                    if prev is not None:  # in force, but its body is gone: do not drop it
                        out["load_errors"][spec.name] = f"{src}: its cached body is missing"
                    continue  # not fetched yet
                src = kept  # the body in force was deleted: compile the copy kept with it
            try:
                data = read_list_file(src)
            except ListFileError as exc:
                out["load_errors"][spec.name] = str(exc)
                continue
            digest = _sha256(data)
            hold = holds.get(spec.name)
            if hold is not None and digest in hold.refused:
                # A rolled-back body still on disk (a local file, or a body not kept):
                # compile the one the rollback restored, or leave the list out.
                kept = _kept_body(store, spec.name, hold.restored)
                if kept is None and prev is not None:
                    # In force, but only the rolled-back body is left: neither drop the
                    # list nor bring the bad rules back; keep the snapshot in force.
                    out["load_errors"][spec.name] = (
                        f"held by a rollback and its earlier body was not kept ({hold.reason})"
                    )
                    continue
                if kept is None:  # not in the snapshot rolled back to: stays out
                    out.setdefault("held_out", []).append(spec.name)
                    continue
                src, digest = kept, hold.restored or digest
                data = kept.read_bytes()
            elif hold is not None and digest != hold.restored:
                # New content that did not come by download: a local list edited. Its
                # edit ends the hold (a fetched body's hold ends when a download is accepted).
                holds.pop(spec.name)
                released.append(spec.name)
            try:
                parsed = parse_list(data, spec.format, name=spec.name)
            except ListFormatError as exc:
                out["load_errors"][spec.name] = f"{src}: {exc}"
                continue
            del data
            if prev is not None and prev.digest == digest:
                distinct, history = prev.rules, prev.history
            else:
                distinct = distinct_count(parsed)
                base = prev.baseline if prev is not None else SizeBaseline()
                history = base.after(distinct).history
        lists.append((spec, parsed))
        bodies[spec.name] = src
        records[spec.name] = ListRecord(spec.name, distinct, digest, history, spec.url is not None)
    if released:
        out["released"] = released
    lost = sorted(n for n in out["load_errors"] if n in before)
    if lost and not force:
        out["not_published"] = (
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
            record = replace(
                in_force.with_holds(holds.values()), inputs=list_inputs(specs, cache)
            )
            if record != in_force:
                store.rewrite_record(record)
            return
        repaired = f"{in_force.snapshot} could not be served ({problem}); republished"
        out["repaired"] = repaired
    block, exceptions = split_exceptions(lists)
    image, stats = compile_index(block)
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
        holds={n: h for n, h in holds.items() if n in records or n in out.get("held_out", [])},
        repaired=repaired,
    )
    out["snapshot"] = str(store.publish(image, exceptions=exceptions, record=record, bodies=bodies))
    if repaired and in_force is not None:
        # A damaged file is no rollback target; a proxy that maps it keeps its pages.
        store.discard(in_force.snapshot)
    out.update(rules=stats.rules, refused=stats.refused_count, seconds=stats.seconds)


def _kept_body(store: SnapshotStore, name: str, digest: str | None) -> Path | None:
    """The body of ``name`` kept with a snapshot, if there is one (a bad digest: none)."""
    if not digest:
        return None
    try:
        path = store.body_path(name, digest)
    except ValueError:
        return None
    return path if path.exists() else None


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


async def run_rebuild(job: dict[str, Any], *, isolate: bool = True) -> dict[str, Any]:
    """Run a rebuild job in a worker process (``isolate``) or a thread."""
    if not isolate:
        return await asyncio.to_thread(run_job, job)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy_addons.refresher",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await proc.communicate(json.dumps(job).encode())
    except BaseException:  # cancelled: the worker must not outlive its owner
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RefreshError(f"rebuild worker exited with {proc.returncode}: {' '.join(tail)}")
    try:
        result: dict[str, Any] = json.loads(stdout)
    except ValueError as exc:
        raise RefreshError(f"rebuild worker answered garbage: {exc}") from None
    return result


def _worker_main() -> int:
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    job = json.loads(sys.stdin.buffer.read())
    result = run_job(job)
    sys.stdout.write(json.dumps(result))
    return 0


# -- following the store -----------------------------------------------------------


def _file_stamps(paths: Sequence[Path]) -> tuple[tuple[int, int] | None, ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Follower:
    """Keeps an engine slot on the store's current snapshot and the current allowlists."""

    def __init__(self, cache_dir: Path, specs: Sequence[ListSpec], slot: EngineSlot | None) -> None:
        self.cache_dir = Path(cache_dir)
        self.specs = list(specs)
        self.slot = slot
        self.store = SnapshotStore(self.cache_dir)
        self.pointer_stamp: tuple[int, int, int] | None = None
        self.allow_stamp: tuple[tuple[int, int] | None, ...] = ()
        self._allow_files = [
            Path(s.path) if s.path else feed_body_path(self.cache_dir, s.name)
            for s in self.specs
            if s.enabled and s.allow
        ]

    async def start(self) -> None:
        """Adopt the current snapshot unless the slot already serves it."""
        self.allow_stamp = await asyncio.to_thread(_file_stamps, self._allow_files)
        current = await asyncio.to_thread(self.store.current_path)
        if self.slot is not None and current is not None and self.slot.engine.block.path == current:
            self.pointer_stamp = await asyncio.to_thread(self.store.pointer_stamp)
            return
        await self.sync(force=True)

    async def sync(self, *, force: bool = False) -> bool:
        """Swap to a newly published snapshot, or recompile changed allowlists; True if swapped."""
        stamp = await asyncio.to_thread(self.store.pointer_stamp)
        allow = await asyncio.to_thread(_file_stamps, self._allow_files)
        if stamp is not None and (force or stamp != self.pointer_stamp):
            self.pointer_stamp, self.allow_stamp = stamp, allow
            try:
                engine, pointer = await asyncio.to_thread(
                    load_engine, self.specs, self.cache_dir, require_fingerprint=True
                )
            except JectguardError as exc:
                log.warning("jectguard: not switching to the new snapshot, keeping the one in force: %s", exc)
                return False
            self._swap(engine)
            log.info(
                "jectguard: now serving snapshot %s (%s block rules)",
                pointer.get("snapshot"),
                pointer.get("rules", engine.block.rule_count),
            )
            return True
        if allow != self.allow_stamp and self.slot is not None:
            self.allow_stamp = allow
            await self._recompile_allow()
            return True
        return False

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
    slot: EngineSlot,
    *,
    interval: float = WATCH_POLL_SECONDS,
) -> None:
    """Follow the snapshots another process publishes, forever (cancel to stop)."""
    follower = Follower(cache_dir, specs, slot)
    await follower.start()
    while True:
        await asyncio.sleep(interval)
        await follower.sync()


# -- the refresher -------------------------------------------------------------


def next_run(spec: ListSpec, state: SourceState, now: float, *, ok: bool) -> float:
    """When to fetch a source again: its interval (shorter after a failure) plus jitter."""
    base = float(spec.refresh if ok else min(spec.refresh, FAILURE_RETRY_SECONDS))
    jitter = random.uniform(0, min(base * SCHEDULE_JITTER, MAX_SCHEDULE_JITTER))
    when = now + base + jitter
    if state.not_before is not None:
        when = max(when, state.not_before)
    return when


class Refresher:
    """Fetches feeds on their schedule and publishes snapshots; optionally feeds an engine slot."""

    def __init__(
        self,
        cfg: SourcesConfig,
        cache_dir: Path,
        *,
        slot: EngineSlot | None = None,
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
        self.last_report: RefreshReport | None = None
        self._lock = asyncio.Lock()
        self._rebuild_not_before = 0.0
        self._wake = asyncio.Event()

    # -- one refresh ---------------------------------------------------------

    async def refresh(
        self,
        names: Sequence[str] | None = None,
        *,
        force: bool = False,
        rebuild: bool = False,
        progress: Progress | None = None,
    ) -> RefreshReport:
        """Fetch the given URL sources (default: all) now, validate, and publish if anything changed."""
        async with self._lock:
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
        states = await asyncio.to_thread(lambda: {s.name: load_state(self.cache_dir, s) for s in specs})
        now = self.clock()
        results: dict[str, FetchResult] = {}
        if specs:
            sem = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
            async with make_session(self.policy) as session:

                async def one(spec: ListSpec) -> None:
                    async with sem:
                        if progress:
                            progress(spec.name, "start", {"url": spec.url})
                        try:
                            res = await fetch(
                                session, spec, states[spec.name], self.cache_dir, self.policy,
                                progress=progress,
                            )
                        except Exception as exc:  # a bad URL, a bug: this source fails alone
                            res = FetchResult("failed", error=f"{type(exc).__name__}: {exc}")
                        results[spec.name] = res
                        if progress:
                            progress(spec.name, "fetched", {"status": res.status, "error": res.error})

                await asyncio.gather(*(one(s) for s in specs))
        candidates = [
            {
                "name": n,
                "tmp": str(r.tmp),
                "content_type": r.content_type,
                "previous_total": states[n].entries_total
                if feed_body_path(self.cache_dir, n).exists()
                else None,
            }
            for n, r in results.items()
            if r.status == "new"
        ]
        report = RefreshReport()
        worker: dict[str, Any] = {"validations": {}}
        if candidates or rebuild:
            job = {
                "cache_dir": str(self.cache_dir),
                "specs": [spec_to_dict(s) for s in self.specs],
                "candidates": candidates,
                "canaries": self.canaries,
                "force": force,
                "rebuild": rebuild,
            }
            try:
                worker = await run_rebuild(job, isolate=self.isolate)
            except RefreshError as exc:
                report.not_published = str(exc)
                log.warning("jectguard: %s; keeping the snapshot in force", exc)
            finally:
                for c in candidates:
                    discard(Path(c["tmp"]))
        now = self.clock()
        for spec in specs:
            report.outcomes[spec.name] = self._record(
                spec, states[spec.name], results[spec.name], worker["validations"].get(spec.name), now
            )
        await asyncio.to_thread(lambda: [save_state(self.cache_dir, st) for st in states.values()])
        report.snapshot = worker.get("snapshot")
        report.rules = worker.get("rules")
        report.refused = worker.get("refused", 0)
        report.compile_seconds = worker.get("seconds")
        report.load_errors = worker.get("load_errors", {})
        report.not_published = report.not_published or worker.get("not_published")
        report.repaired = worker.get("repaired")
        report.publish_error = worker.get("publish_error")
        for name, err in report.load_errors.items():
            log.warning("jectguard: list %s not loaded: %s", name, err)
        if report.not_published:
            log.warning("jectguard: %s", report.not_published)
        if report.snapshot:
            await self.follower.sync()
        self.last_report = report
        if self.on_report:
            self.on_report(report)
        return report

    def _record(
        self,
        spec: ListSpec,
        st: SourceState,
        res: FetchResult,
        v: dict[str, Any] | None,
        now: float,
    ) -> SourceOutcome:
        """Update a source's state from one fetch and its validation; the outcome to report."""
        st.last_attempt = now
        ok = False
        if res.status == "not_modified":
            st.last_success, st.last_error, st.held_back, st.failures = now, None, None, 0
            st.etag, st.last_modified = res.etag, res.last_modified
            out = SourceOutcome(spec.name, Outcome.UNCHANGED, "304 Not Modified", st.entries_total)
            ok = True
        elif res.status == "failed" or v is None or v.get("error"):
            st.last_error = res.error or (v or {}).get("error") or (
                "validation did not run (rebuild worker failed)"
            )
            st.failures += 1
            if res.retry_after is not None:
                st.not_before = now + res.retry_after
            out = SourceOutcome(spec.name, Outcome.FAILED, st.last_error, st.entries_total)
            log.warning("jectguard: feed %s failed, serving its last good data: %s", spec.name, st.last_error)
        elif v["accepted"]:
            st.last_success = now
            st.etag, st.last_modified, st.bytes = res.etag, res.last_modified, res.bytes
            st.entries, st.entries_total = v["entries"], sum(v["entries"].values())
            st.rejected, st.refused = v["rejected"], v["refused"]
            st.held_back, st.last_error, st.failures = None, None, 0
            if v.get("same"):
                detail = f"{st.entries_total} entries (same content as the list in force)"
                out = SourceOutcome(spec.name, Outcome.UNCHANGED, detail, st.entries_total)
            else:
                st.last_change = now
                detail = f"{st.entries_total} entries" + (" (size guard overridden)" if v["forced"] else "")
                out = SourceOutcome(spec.name, Outcome.UPDATED, detail, st.entries_total)
            ok = True
        else:
            st.held_back, st.last_error = v["reason"], None
            out = SourceOutcome(spec.name, Outcome.HELD_BACK, v["reason"], st.entries_total)
            log.warning("jectguard: feed %s held back, keeping its last good data: %s", spec.name, v["reason"])
        if res.retry_after is None and ok:
            st.not_before = None
        st.next_run = next_run(spec, st, now, ok=ok)
        self.schedule[spec.name] = st.next_run
        return out

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
            log.warning("jectguard: the snapshot in force cannot be served (%s); rebuilding", problem)
            return True
        inputs = pointer.get("inputs", {})
        return bool(inputs != list_inputs(self.specs, self.cache_dir))

    async def run(self) -> None:
        """Refresh every URL source on its schedule, forever (cancel to stop)."""
        await asyncio.to_thread(clean_partials, self.cache_dir)
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
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end refreshing for the process lifetime
                log.warning("jectguard: refresh cycle failed: %s: %s", type(exc).__name__, exc)
            wake = min(self.schedule.values(), default=self.clock() + self.poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), max(0.05, min(wake - self.clock(), self.poll))
                )
            self._wake.clear()

    def trigger(self) -> bool:
        """Start a refresh of every source now (the admin API); False if one is running."""
        if self._lock.locked():
            return False
        self.refresh_soon()
        return True

    def status(self) -> dict[str, Any]:
        """What is in force and per-source status, JSON-ready (reads small files)."""
        return status_document(self.cfg, self.cache_dir, self.last_report)

    def refresh_soon(self, *names: str) -> None:
        """Make these sources (default: all) due now and wake the loop."""
        for name in names or list(self.schedule):
            self.schedule[name] = 0.0
        self._wake.set()

    async def _tick(self) -> None:
        now = self.clock()
        due = [n for n, t in self.schedule.items() if t <= now]
        if due:
            await self.refresh(due)
            return
        if now >= self._rebuild_not_before and await asyncio.to_thread(self.snapshot_stale):
            async with self._lock:
                report = await self._refresh([], force=False, rebuild=True, progress=None)
            if not report.snapshot:
                # Do not rebuild every poll while a list stays broken.
                self._rebuild_not_before = now + FAILURE_RETRY_SECONDS
            return
        await self.follower.sync()


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
            st = dataclasses.asdict(load_state(cache_dir, spec))
            st.pop("name", None)
            st.pop("url", None)
            doc.update(st)
            doc["cached"] = feed_body_path(cache_dir, spec.name).exists()
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
