"""Scanning HTML bodies in worker processes, so a big page never stalls the proxy.

The scanner is pure Python: a page with megabytes of inline script costs ~11 ms
of CPU per MB plus ~1.6 us per URL not judged before (it was ~100 ms per MB), and in
a thread it holds the GIL, so every other flow of the proxy would wait that long
(issue 17 measured 880-916 ms for small requests). Here
each body above the inline limit goes to one of a few long-lived worker
processes (``python -m proxy_addons.addons.strip_worker``) over a pipe, and the
event loop only writes and reads bytes.

The engine reaches a worker cheaply: a snapshot that has a file is mapped by
path (the page cache holds one copy for all processes); an index built in
memory (the allow index, a block index compiled at start without a snapshot) is
sent once as its image. Each worker keeps its scanner, and so its verdict caches,
until the engine or the settings change.

Messages are frames: a 4-byte little-endian length, a JSON header, then the
byte blobs the header's ``blobs`` list announces (no pickle: the parent never
runs code a worker hands it). A worker that dies, or does not answer within the
timeout, is killed and replaced; the scan it had fails with ``ScanFailed``, and
the addon refuses the page (it never passes unscanned).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import struct
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

from proxy_addons.core.codings import UndecodableBody
from proxy_addons.core.engine import Engine
from proxy_addons.core.errors import JectguardError
from proxy_addons.core.htmlscan import BodyTooLarge, Finding, Scanner
from proxy_addons.core.index import HEADER_SIZE, CompiledIndex
from proxy_addons.core.scanjob import ScanJob
from proxy_addons.core.signatures import parse_signatures

logger = logging.getLogger(__name__)

_LEN: Final = struct.Struct("<I")
Blob = bytes | memoryview
# A header is a few hundred bytes; a config header carries the signatures text (<= 1 MB).
MAX_HEADER_BYTES: Final = 4 * 1024 * 1024
# A blob is a body (<= the 1 GiB scan cap) or an index image (<= 8 GiB snapshot cap).
MAX_BLOB_BYTES: Final = 8 * 1024**3
# A worker imports the scanner and the engine, not mitmproxy (~0.25 s of CPU idle; far
# more on a loaded machine).
STARTUP_TIMEOUT: Final = 60.0
WORKER_MODULE: Final = "proxy_addons.addons.strip_worker"
# How much lower than the proxy a worker runs (nice(2) increment).
WORKER_NICENESS: Final = 10


class ScanFailed(JectguardError):
    """No worker produced an answer (died, timed out, would not start, all busy)."""


class ScanError(JectguardError):
    """The scanner raised inside a worker (a bug): the page could not be judged."""


# -- framing ------------------------------------------------------------------------------


def frame(header: dict[str, Any], blobs: Sequence[Blob] = ()) -> list[Blob]:
    """The pieces of one message, in order (written one after another)."""
    head = json.dumps({**header, "blobs": [memoryview(b).nbytes for b in blobs]}).encode()
    return [_LEN.pack(len(head)), head, *blobs]


def _parse_header(head: bytes) -> tuple[dict[str, Any], list[int]]:
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("frame header is not an object")
    sizes = header.get("blobs", [])
    if not isinstance(sizes, list) or not all(
        isinstance(n, int) and 0 <= n <= MAX_BLOB_BYTES for n in sizes
    ):
        raise ValueError("bad blob sizes in frame header")
    return header, sizes


def _header_length(prefix: bytes) -> int:
    (n,) = _LEN.unpack(prefix)
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {n} bytes")
    return int(n)


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], list[bytes]]:
    """One message from a stream; IncompleteReadError at end of stream."""
    n = _header_length(await reader.readexactly(_LEN.size))
    header, sizes = _parse_header(await reader.readexactly(n))
    return header, [await reader.readexactly(size) for size in sizes]


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def read_frame_sync(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]]:
    """One message from a blocking stream; EOFError at end of stream."""
    n = _header_length(_read_exactly(stream, _LEN.size))
    header, sizes = _parse_header(_read_exactly(stream, n))
    return header, [_read_exactly(stream, size) for size in sizes]


def write_frame_sync(stream: BinaryIO, header: dict[str, Any], blobs: Sequence[Blob] = ()) -> None:
    for piece in frame(header, blobs):
        stream.write(piece)
    stream.flush()


# -- what a worker is told ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker's scanner depends on; a worker is reconfigured when this changes.

    ``engine`` compares by identity (an Engine has no ``__eq__``): a refresh swaps in
    a new object, and that is the change that matters.
    """

    engine: Engine
    signatures_text: str
    signatures_source: str
    after_html: str
    max_bytes: int
    # The engine's process-wide settings (``jg_url_case_insensitive``,
    # ``jg_nat64_prefixes``): a worker is another process, so it is told them, or
    # it would judge the same URL differently from the proxy.
    fold_case: bool = False
    nat64: tuple[str, ...] = ()

    def message(self, *, images: bool = False) -> list[Blob]:
        """The config frame: snapshot files by path (with the header they must have, so
        a file replaced or damaged since is noticed), or, with ``images``, every index's bytes."""
        blobs: list[Blob] = []

        def index_source(index: CompiledIndex) -> dict[str, Any]:
            if not images and index.path is not None and os.path.exists(index.path):
                head = bytes(index.image()[:HEADER_SIZE]).hex()
                doc: dict[str, Any] = {"path": os.fspath(index.path), "head": head}
                residence = index.origin.residence if index.origin is not None else None
                if residence is not None:
                    # The worker maps the proxy's verified private copy (shared pages),
                    # not a 42 MB copy of its own in process memory per worker.
                    doc["copy_dir"] = os.fspath(residence.parent)
                return doc
            blobs.append(index.image())
            return {"blob": len(blobs) - 1}

        extra_source: dict[str, Any] | None = None
        if self.engine.extra is not None:
            # the proxy's own block list (the campaign list), small: always by its bytes
            blobs.append(self.engine.extra.image())
            extra_source = {"blob": len(blobs) - 1}
        header = {
            "op": "config",
            "block": index_source(self.engine.block),
            "allow": index_source(self.engine.allow),
            "extra": extra_source,
            "fold_case": self.fold_case,
            "nat64": list(self.nat64),
            "signatures_text": self.signatures_text,
            "signatures_source": self.signatures_source,
            "after_html": self.after_html,
            "max_bytes": self.max_bytes,
        }
        return frame(header, blobs)


def finding_dict(f: Finding) -> dict[str, Any]:
    """Every field of a finding (``as_dict`` is the event's view; this round-trips)."""
    return {fl.name: getattr(f, fl.name) for fl in dataclasses.fields(Finding)}


def finding_from(d: Any) -> Finding:
    if not isinstance(d, dict):
        raise ValueError("finding is not an object")
    names = {fl.name for fl in dataclasses.fields(Finding)}
    return Finding(**{k: v for k, v in d.items() if k in names})


# -- the worker process -----------------------------------------------------------------------


def _load_index(source: Any, blobs: list[bytes]) -> CompiledIndex:
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        copy_dir = source.get("copy_dir")
        index = CompiledIndex.load(
            source["path"], copy_dir=copy_dir if isinstance(copy_dir, str) else None
        )
        if bytes(index.image()[:HEADER_SIZE]).hex() != source.get("head"):
            index.close()
            raise ValueError(f"{source['path']} is not the snapshot the proxy serves")
        return index
    if isinstance(source, dict) and isinstance(source.get("blob"), int):
        return CompiledIndex(blobs[source["blob"]])
    raise ValueError(f"bad index source {source!r}")


def _configure(header: dict[str, Any], blobs: list[bytes]) -> Scanner:
    import ipaddress

    from proxy_addons.core.engine import blocked_by  # the same verdict mapping as the proxy

    extra = header.get("extra")
    engine = Engine(
        _load_index(header["block"], blobs),
        _load_index(header["allow"], blobs),
        None if extra is None else _load_index(extra, blobs),
    )
    # This process scans for one proxy: its settings are this process's.
    Engine.fold_case = bool(header.get("fold_case", False))
    Engine.nat64 = tuple(ipaddress.IPv6Network(n) for n in header.get("nat64", ()))
    signatures = parse_signatures(header["signatures_text"], source=header["signatures_source"])
    return Scanner(
        blocked_by(engine),
        signatures,
        after_html=header["after_html"],
        max_bytes=int(header["max_bytes"]),
    )


def _scan(
    scanner: Scanner, header: dict[str, Any], blobs: list[bytes]
) -> tuple[dict[str, Any], list[bytes]]:
    job = ScanJob(
        raw=blobs[0],
        content_encoding=str(header["content_encoding"]),
        content_type=header["content_type"],
        page_url=str(header["page_url"]),
        comment=bool(header["comment"]),
        remove=bool(header["remove"]),
        limit=int(header["limit"]),
    )
    try:
        outcome = job.run(scanner)
    except BodyTooLarge as exc:
        return {"ok": False, "kind": "too-large", "message": str(exc)}, []
    except UndecodableBody as exc:
        return {"ok": False, "kind": "undecodable", "message": str(exc)}, []
    reply = {
        "ok": True,
        "findings": [finding_dict(f) for f in outcome.findings],
        "content_encoding": outcome.content_encoding,
        "changed": outcome.raw is not None,
    }
    return reply, [outcome.raw] if outcome.raw is not None else []


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer scan requests until the parent closes the pipe."""
    scanner: Scanner | None = None
    config_error = "not configured"
    write_frame_sync(replies, {"op": "ready", "pid": os.getpid()})
    while True:
        try:
            header, blobs = read_frame_sync(requests)
        except EOFError:
            return
        op = header.get("op")
        if op == "config":
            try:
                scanner, config_error = _configure(header, blobs), ""
            except Exception as exc:  # reported with every scan until a good config arrives
                scanner, config_error = None, f"{type(exc).__name__}: {exc}"
            continue
        if op != "scan":
            raise SystemExit(f"jectguard strip worker: unknown request {op!r}")
        t0 = time.perf_counter()
        reply: dict[str, Any]
        out: list[bytes]
        try:
            if scanner is None:  # the parent answers with the images
                reply, out = {"ok": False, "kind": "config", "message": config_error}, []
            else:
                reply, out = _scan(scanner, header, blobs)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply, out = (
                {"ok": False, "kind": "error", "message": f"{type(exc).__name__}: {exc}"},
                [],
            )
        reply["seconds"] = time.perf_counter() - t0
        write_frame_sync(replies, reply, out)


def main() -> None:
    # Below the proxy in the CPU queue: on a busy machine a scan must not take the CPU the
    # event loop needs to serve everyone else (measured: at equal priority, small requests
    # waited up to ~0.5 s while two workers scanned 5 MB pages on 2 CPUs).
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    # The protocol owns the real stdout; a stray print (from any import) goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        serve(requests, replies)


# -- the pool, in the proxy ---------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    config: WorkerConfig | None = None
    jobs: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def reap(self, grace: float = 0.0) -> None:
        """End the process (closing its input ends a healthy one; after ``grace`` s, kill)."""
        self.writer.close()
        if grace <= 0:
            self.kill()
        try:
            await asyncio.wait_for(self.proc.wait(), grace or None)
        except TimeoutError:
            self.kill()
            await self.proc.wait()


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer to one scan: the findings and, when changed, the new raw body."""

    findings: list[Finding]
    raw: bytes | None
    content_encoding: str | None
    seconds: float = 0.0


@dataclass(slots=True)
class ScanPool:
    """A fixed number of worker processes; one scan at a time each.

    ``scan`` waits for a free worker (the lowest-numbered idle one, so a quiet
    proxy keeps using one warm cache) at most ``timeout`` seconds, for it to
    start (after a restart) at most ``startup_timeout``, then configures it if
    the engine or settings changed and gives it ``timeout`` seconds to answer.
    """

    size: int
    timeout: float
    startup_timeout: float = STARTUP_TIMEOUT
    command: Sequence[str] = (
        sys.executable,
        "-P",
        "-c",
        f"from {WORKER_MODULE} import main; main()",
    )
    _slots: list[asyncio.Task[_Worker] | None] = field(default_factory=list)
    _idle: list[int] = field(default_factory=list)
    _free: asyncio.Condition | None = None
    _closed: bool = False
    _reaping: set[asyncio.Task[None]] = field(default_factory=set)
    scans: int = 0  # scans answered (for tests and diagnostics)

    def start(self) -> None:
        """Start every worker in the background (``scan`` waits for the one it gets)."""
        if self._free is None:
            self._free = asyncio.Condition()
            self._slots = [None] * self.size
            self._idle = list(range(self.size))
        for i in range(self.size):
            self._ensure(i)

    def _ensure(self, i: int) -> asyncio.Task[_Worker]:
        task = self._slots[i]
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.get_running_loop().create_task(
                self._spawn(), name=f"jg-strip-worker-{i}"
            )
            self._slots[i] = task
        return task

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        assert proc.stdin is not None and proc.stdout is not None
        worker = _Worker(proc, proc.stdout, proc.stdin)
        try:
            header, _ = await asyncio.wait_for(read_frame(worker.reader), self.startup_timeout)
            if header.get("op") != "ready":
                raise ScanFailed(f"strip worker said {header.get('op')!r} instead of ready")
        except BaseException:
            await worker.reap()
            raise
        return worker

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now (for tests and diagnostics)."""
        out = []
        for task in self._slots:
            if (
                task is not None
                and task.done()
                and not task.cancelled()
                and task.exception() is None
            ):
                w = task.result()
                if w.proc.returncode is None:
                    out.append(w.pid)
        return out

    async def scan(self, job: ScanJob, config: WorkerConfig) -> Reply:
        """Scan ``job`` in a worker; ScanFailed if none answers in time."""
        if self._closed:
            raise ScanFailed("the scan pool is shut down")
        self.start()
        assert self._free is not None
        async with self._free:
            try:
                await asyncio.wait_for(self._free.wait_for(lambda: bool(self._idle)), self.timeout)
            except TimeoutError:
                raise ScanFailed(f"every scan worker stayed busy for {self.timeout:g} s") from None
            i = min(self._idle)
            self._idle.remove(i)
        try:
            return await self._scan_on(i, job, config)
        finally:
            async with self._free:
                self._idle.append(i)
                self._free.notify()

    async def _scan_on(self, i: int, job: ScanJob, config: WorkerConfig) -> Reply:
        # A worker (re)starting is bounded by its own startup limit (imports take seconds on
        # a loaded machine); the scan's timeout starts when the worker has the job.
        try:
            async with asyncio.timeout(self.startup_timeout):
                worker = await asyncio.shield(self._ensure(i))
        except TimeoutError:  # the start goes on (the pool owns it and ends it by its own limit)
            raise ScanFailed(
                f"scan worker did not start within {self.startup_timeout:g} s"
            ) from None
        except (OSError, ScanFailed, asyncio.IncompleteReadError, ValueError) as exc:
            self._slots[i] = None  # try again next time
            raise ScanFailed(f"scan worker could not start: {exc}") from None
        header = {
            "op": "scan",
            "content_encoding": job.content_encoding,
            "content_type": job.content_type,
            "page_url": job.page_url,
            "comment": job.comment,
            "remove": job.remove,
            "limit": job.limit,
        }
        try:
            async with asyncio.timeout(self.timeout):
                reply, blobs = await self._roundtrip(worker, config, header, job.raw, images=False)
                if reply.get("kind") == "config":  # a snapshot file did not load as ours
                    reply, blobs = await self._roundtrip(
                        worker, config, header, job.raw, images=True
                    )
        except TimeoutError:
            self._discard(i, worker)
            raise ScanFailed(
                f"scan worker {worker.pid} did not answer within {self.timeout:g} s; "
                "killed and restarted"
            ) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self._discard(i, worker)
            code = worker.proc.returncode
            why = (
                f"exited with {code}" if code is not None else f"died or broke the protocol ({exc})"
            )
            raise ScanFailed(f"scan worker {worker.pid} {why}; restarted") from None
        except BaseException:  # cancelled mid-message: the stream is out of step
            self._discard(i, worker)
            raise
        worker.jobs += 1
        self.scans += 1
        return _reply(reply, blobs)

    @staticmethod
    async def _roundtrip(
        worker: _Worker, config: WorkerConfig, header: dict[str, Any], raw: bytes, *, images: bool
    ) -> tuple[dict[str, Any], list[bytes]]:
        if images or worker.config != config:
            worker.writer.writelines(config.message(images=images))
            worker.config = config
        worker.writer.writelines(frame(header, [raw]))
        await worker.writer.drain()
        return await read_frame(worker.reader)

    def _discard(self, i: int, worker: _Worker) -> None:
        worker.kill()  # at once: it may be hung
        task = asyncio.get_running_loop().create_task(worker.reap(), name="jg-strip-worker-reap")
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
        self._slots[i] = None
        if not self._closed:
            self._ensure(i)  # the replacement starts now, not when the next big page arrives

    async def close(self) -> None:
        """Stop every worker (closing its pipe ends it; a stuck one is killed)."""
        self._closed = True
        workers = []
        for task in self._slots:
            if task is None:
                continue
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                continue
            if not task.cancelled() and task.exception() is None:
                workers.append(task.result())
        await asyncio.gather(*(w.reap(grace=2.0) for w in workers), *self._reaping)
        self._slots = [None] * self.size


def _reply(header: dict[str, Any], blobs: list[bytes]) -> Reply:
    if not header.get("ok"):
        kind, message = header.get("kind"), str(header.get("message", ""))
        if kind == "too-large":
            raise BodyTooLarge(message)
        if kind == "undecodable":
            raise UndecodableBody(message)
        if kind == "config":
            raise ScanError(f"worker has no engine: {message}")
        raise ScanError(f"scanner failed in the worker: {message}")
    findings = [finding_from(d) for d in header.get("findings", [])]
    changed = bool(header.get("changed"))
    if changed != (len(blobs) == 1):
        raise ScanError("worker reply: body missing or unexpected")
    ce = header.get("content_encoding")
    return Reply(
        findings,
        blobs[0] if changed else None,
        ce if isinstance(ce, str) else None,
        float(header.get("seconds", 0.0)),
    )


if __name__ == "__main__":
    main()
