"""Free ports for the processes a test starts, chosen so nothing else takes them meanwhile.

A port found by binding to port 0 comes from the kernel's ephemeral range, the
same range every outgoing connection's local port comes from: between the test
choosing it and the proxy binding it, another connection (a test client, a
proxy's upstream) can take it, and the proxy fails to start ("address already in
use": flaky under load). Ports below the ephemeral range are never handed out
to connections, so a port chosen there, free for TCP and UDP now and not given
out before in this process, stays free until the test's server binds it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_given: set[int] = set()
_DEFAULT_EPHEMERAL = (32768, 60999)
# Above the well-known and commonly registered service ports the tests could meet.
_FLOOR = 10000


def _ephemeral() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on ``host``, outside the ephemeral range, new to this process."""
    lo, hi = _ephemeral()
    ranges = [r for r in ((_FLOOR, lo - 1), (hi + 1, 65535)) if r[1] - r[0] > 1000]
    rng = random.Random()  # not the tests' seeded generator: workers must not agree
    for _ in range(2000):
        a, b = rng.choice(ranges) if ranges else (_FLOOR, 65535)
        port = rng.randint(a, b)
        if port in _given or (not ranges and lo <= port <= hi):
            continue
        if _bindable(host, port):
            _given.add(port)
            return port
    # A machine with no room outside its ephemeral range: take one from the kernel.
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
