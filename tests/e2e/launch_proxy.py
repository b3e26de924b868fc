"""Run the ``jectguard`` CLI with a test-only host table, like an /etc/hosts entry.

``JG_TEST_HOSTS="good.test=127.0.0.1,attacker.test=192.0.2.2"`` makes those names
resolve to loopback origins inside the proxy process; any other ``*.test`` name
fails at once (no slow lookups of names that cannot exist). Everything else about
the process is the real ``jectguard`` command.
"""

from __future__ import annotations

import os
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo
_TABLE = dict(
    item.split("=", 1) for item in os.environ.get("JG_TEST_HOSTS", "").split(",") if "=" in item
)


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str):
        key = name.lower().rstrip(".")
        if key in _TABLE:
            host = _TABLE[key]
        elif key.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real_getaddrinfo(host, port, family, type, proto, flags)


socket.getaddrinfo = _getaddrinfo

if __name__ == "__main__":
    from proxy_addons.cli import main

    sys.exit(main(sys.argv[1:]))
