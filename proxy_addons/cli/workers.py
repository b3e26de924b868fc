"""``jectguard run --workers N``: N proxy processes on one port, one refresher, one admin API.

Design (docs/deploy.md, "Workers"):

- The supervisor (this module, no mitmproxy imported) starts N copies of the same
  ``jectguard run`` command line, restarts one that dies and stops all on
  SIGTERM/SIGINT. It never serves traffic itself.
- Every worker binds the listening port with ``SO_REUSEPORT``, so the kernel spreads
  new connections over the workers. The kernel only lets sockets of the same
  effective user share a port, and only when each set the option, so another
  user's process cannot join the group.
- Worker 0 runs the configured refresh role (it fetches feeds and publishes
  snapshots) and the admin API; the others follow the published snapshots (the
  ``watch`` role) and run no admin server. Each worker maps its own verified
  private copy of the snapshot, shared per host in the page cache.
- Counters: prometheus_client's multi-process mode. Each worker keeps its counters in
  a file of its own under a private directory; worker 0's ``/metrics`` sums them and
  adds one ``jectguard_worker_*`` series per worker (pid, up, restarts, requests
  checked) from the supervisor's ``workers.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proxy_addons.cli.common import Exit

ENV_INDEX: Final = "JECTGUARD_WORKER_INDEX"
ENV_COUNT: Final = "JECTGUARD_WORKER_COUNT"
ENV_DIR: Final = "JECTGUARD_WORKER_DIR"
# prometheus_client reads this when it is imported: counters live in per-process files.
ENV_PROMETHEUS: Final = "PROMETHEUS_MULTIPROC_DIR"
STATUS_FILE: Final = "workers.json"
STOP_TIMEOUT: Final = 15.0  # seconds a worker gets to drain after SIGTERM before SIGKILL
# A worker that dies again and again is restarted after a growing pause, up to this
# long, so a crash loop does not eat the CPU the other workers are serving with.
RESTART_DELAY_MIN: Final = 0.5
RESTART_DELAY_MAX: Final = 10.0
STABLE_AFTER: Final = 30.0  # seconds up after which a worker's restart pause starts over
POLL_INTERVAL: Final = 0.2


def parse_workers(text: str) -> int:
    """``--workers`` value: a count of 1 or more, or ``auto`` for the cores this process may use."""
    if text.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--workers: expected a number or 'auto', got {text!r}") from None
    if not 1 <= n <= 256:
        raise ValueError(f"--workers must be between 1 and 256, got {n}")
    return n


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Which worker this process is, read from the environment the supervisor set."""

    index: int
    count: int
    directory: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerContext | None:
        env = os.environ if environ is None else environ
        if ENV_INDEX not in env:
            return None
        return cls(int(env[ENV_INDEX]), int(env.get(ENV_COUNT, "1")), Path(env.get(ENV_DIR, "")))


def worker_role(configured: str, index: int) -> str:
    """One refresher per deployment: worker 0 keeps the role, the others follow its snapshots."""
    if index > 0 and configured == "refresh":
        return "watch"
    return configured


def worker_argv(base: Sequence[str], index: int, configured_role: str) -> list[str]:
    """The command line of worker ``index``: the supervisor's, plus what differs per worker.

    argparse keeps the last value of an option, so appending overrides what the
    user gave for the run command (the options all belong to ``run``, the last
    subcommand on the line).
    """
    argv = [*base, "--refresh-role", worker_role(configured_role, index)]
    if index > 0:
        argv += ["--admin-port", "0"]  # one admin API: worker 0's
    return argv


def enable_reuse_port() -> None:
    """Make mitmproxy bind its TCP proxy listeners with ``SO_REUSEPORT``.

    mitmproxy 12 binds each listener itself with ``asyncio.start_server(handler,
    host, port)`` in ``AsyncioServerInstance.listen``; this wraps that method for
    TCP-only modes (regular, upstream, reverse, socks5, transparent) and leaves UDP
    modes (DNS, WireGuard: bound in mitmproxy_rs) as they are.
    """
    import asyncio

    from mitmproxy.proxy import mode_servers

    cls: Any = mode_servers.AsyncioServerInstance
    if getattr(cls.listen, "_jg_reuse_port", False):
        return
    original = cls.listen

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        if self.mode.transport_protocol != "tcp" or port == 0:
            return list(await original(self, host, port))
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    listen._jg_reuse_port = True  # type: ignore[attr-defined]
    cls.listen = listen


def prepare_worker(addons: Sequence[object]) -> None:
    """In a worker: bind with SO_REUSEPORT; worker 0 also reports every worker. Else nothing."""
    ctx = WorkerContext.from_env()
    if ctx is None:
        return
    enable_reuse_port()
    if ctx.index == 0:
        admin = next((a for a in addons if getattr(a, "name", "") == "jectguard_admin"), None)
        metrics = getattr(admin, "metrics", None)
        if metrics is not None:
            metrics.add_collector(WorkersCollector(ctx))


# -- the supervisor ------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = RESTART_DELAY_MIN
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A worker gets SIGTERM if the supervisor dies (even by SIGKILL): no orphan proxies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        role: str,
        directory: Path,
        *,
        log: Any = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.role = role
        self.directory = directory
        self.log = log or sys.stderr
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = threading.Event()

    def say(self, message: str) -> None:
        print(f"jectguard supervisor: {message}", file=self.log, flush=True)

    def _spawn(self, w: _Worker) -> None:
        env = {
            **os.environ,
            ENV_INDEX: str(w.index),
            ENV_COUNT: str(self.count),
            ENV_DIR: str(self.directory),
            ENV_PROMETHEUS: str(self.directory / "metrics"),
        }
        w.proc = subprocess.Popen(  # noqa: S603 - our own command line
            worker_argv(self.command, w.index, self.role),
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor runs no threads
        )
        w.started_at = time.time()
        w.restart_at = None
        self.write_status()

    def write_status(self) -> None:
        """``workers.json`` for worker 0's admin API (atomic: temp file, rename)."""
        rows = [
            {
                "worker": w.index,
                "pid": w.proc.pid if w.proc is not None else None,
                "up": w.proc is not None and w.proc.poll() is None,
                "started_at": w.started_at,
                "restarts": w.restarts,
            }
            for w in self.workers
        ]
        tmp = self.directory / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps({"supervisor": os.getpid(), "workers": rows}))
        tmp.replace(self.directory / STATUS_FILE)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code of the whole group."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        code = 0
        try:
            for w in self.workers:
                self._spawn(w)
            self.say(
                f"{self.count} workers started (pids "
                f"{', '.join(str(w.proc.pid) for w in self.workers if w.proc)})"
            )
            while not self.stopping.wait(POLL_INTERVAL):
                failed = self._reap()
                if failed is not None:
                    code = failed
                    break
        finally:
            self._stop_all()
        return code

    def _reap(self) -> int | None:
        """Restart what died; an exit code when the group must stop (a worker refused its options)."""
        now = time.time()
        for w in self.workers:
            if w.proc is not None and (rc := w.proc.poll()) is not None:
                w.proc = None
                w.exits.append(rc)
                if rc == Exit.INPUT:
                    self.say(f"worker {w.index} refused its options (exit {rc}); stopping")
                    return rc
                up = now - w.started_at
                w.delay = (
                    RESTART_DELAY_MIN if up > STABLE_AFTER else min(RESTART_DELAY_MAX, w.delay * 2)
                )
                w.restart_at = now + w.delay
                self.say(
                    f"worker {w.index} exited ({_describe(rc)}) after {up:.1f} s; "
                    f"restarting in {w.delay:.1f} s"
                )
                self.write_status()
            if w.proc is None and w.restart_at is not None and now >= w.restart_at:
                w.restarts += 1
                self._spawn(w)
                self.say(f"worker {w.index} restarted (pid {w.proc.pid if w.proc else '?'})")
        return None

    def _stop_all(self) -> None:
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _describe(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-rc).name}"
    return f"code {rc}"


def supervise(workers: int, role: str, *, argv: Sequence[str] | None = None) -> int:
    """Run ``workers`` copies of this very command line; returns when they have all stopped."""
    # sys.orig_argv keeps how the interpreter was started (a console script, -m, a
    # launcher file), so each worker runs exactly what the user ran.
    command = [sys.executable, *(sys.orig_argv[1:] if argv is None else argv)]
    directory = Path(tempfile.mkdtemp(prefix="jectguard-workers-"))  # 0700: counters stay private
    (directory / "metrics").mkdir()
    try:
        return Supervisor(command, workers, role, directory).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- what worker 0's admin API adds -------------------------------------------


def read_status(directory: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((directory / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return []
    rows = data.get("workers") if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def checked_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Requests checked per worker pid, from prometheus_client's per-process counter files."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        try:
            pid = int(path.stem.rpartition("_")[2])
            families = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
        except (ValueError, OSError):
            continue
        out[pid] = sum(
            s.value
            for fam in families
            if fam.name == "jectguard_requests_checked"
            for s in fam.samples
            if s.name.endswith("_total")
        )
    return out


class WorkersCollector:
    """``jectguard_worker_*`` series, one per worker, for worker 0's ``/metrics``."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows = read_status(self.ctx.directory)
        checked = checked_by_pid(self.ctx.directory / "metrics")
        count = GaugeMetricFamily("jectguard_workers", "Worker processes configured.")
        count.add_metric([], float(self.ctx.count))
        up = GaugeMetricFamily(
            "jectguard_worker_up", "1 while the worker process runs.", labels=["worker", "pid"]
        )
        restarts = CounterMetricFamily(
            "jectguard_worker_restarts",
            "Times the supervisor restarted the worker.",
            labels=["worker"],
        )
        served = CounterMetricFamily(
            "jectguard_worker_requests_checked",
            "Requests and tunnels checked by the worker's current process.",
            labels=["worker", "pid"],
        )
        for r in rows:
            worker, pid = str(r.get("worker")), str(r.get("pid"))
            up.add_metric([worker, pid], 1.0 if r.get("up") else 0.0)
            restarts.add_metric([worker], float(r.get("restarts") or 0))
            if isinstance(r.get("pid"), int):
                served.add_metric([worker, pid], checked.get(r["pid"], 0.0))
        yield count
        yield up
        yield restarts
        yield served


__all__ = [
    "Supervisor",
    "WorkerContext",
    "WorkersCollector",
    "enable_reuse_port",
    "parse_workers",
    "prepare_worker",
    "supervise",
    "worker_argv",
    "worker_role",
]
