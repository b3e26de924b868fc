"""``launch_proxy.py`` plus a resolver that answers differently each time (DNS rebinding).

``JG_TEST_REBIND="rebind.test=127.0.0.1|192.0.2.7"`` makes each lookup of
``rebind.test`` inside the proxy process return the next address of the list,
round robin, the way an attacker's DNS server with TTL 0 does. Everything else
is ``launch_proxy.py``: the static test host table and the real ``jectguard``.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import launch_proxy  # noqa: E402  (installs the static host table)

_static_getaddrinfo = socket.getaddrinfo
_ANSWERS = {
    name.lower(): itertools.cycle(addrs.split("|"))
    for name, _, addrs in (
        item.partition("=") for item in os.environ.get("JG_TEST_REBIND", "").split(",") if item
    )
}


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.lower().rstrip(".") in _ANSWERS:
        host = next(_ANSWERS[name.lower().rstrip(".")])
    return _static_getaddrinfo(host, port, family, type, proto, flags)


socket.getaddrinfo = _getaddrinfo

if __name__ == "__main__":
    del launch_proxy
    from proxy_addons.cli import main

    sys.exit(main(sys.argv[1:]))
