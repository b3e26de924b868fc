"""Processes for the benchmarks: free loopback ports, start a server and wait until it listens, stop it.

One copy for every benchmark that runs a proxy or an origin in its own process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A proxy compiling the 1.1M-rule lists at start-up takes a while on a busy machine.
STARTUP_TIMEOUT = 300.0


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = STARTUP_TIMEOUT
) -> None:
    """Return once ``port`` accepts; RuntimeError (with the log's tail) if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"process exited {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def start(
    cmd: list[str],
    log: Path,
    port: int,
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (output to ``log``) and wait until it listens on ``port``; killed if it never does."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        wait_port(port, proc, log, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
