"""jectguard's addons loaded into plain ``mitmdump -s`` (as benchmarks and integrators do)
behave as under ``jectguard run``: script addons run before mitmproxy's own layer choice,
and a regular proxy request must still get the regular HTTP layer (it used to get a
transparent one and crash every connection)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .conftest import Origin, Proxy, free_port, raw_exchange, status_of, wait_for_port

SCRIPT = """
from proxy_addons.addons import EngineHolder, Jectguard, make_addons
from proxy_addons.core.engine import Engine
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec

_engine = Engine.from_lists([(ListSpec(name="t"), parse_list("evil.test\\n"))])[0]
addons = [Jectguard(make_addons(EngineHolder(_engine)))]
"""


def test_addons_in_mitmdump_script_serve_and_block(tmp_path: Path, origin: Origin) -> None:
    script = tmp_path / "jg.py"
    script.write_text(SCRIPT)
    port = free_port()
    log = tmp_path / "mitmdump.log"
    mitmdump = Path(sys.executable).with_name("mitmdump")
    cmd = [
        str(mitmdump), "-s", str(script), "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={tmp_path / 'confdir'}", "--set", "jg_admin_port=0",
        "--set", "jg_allow_destination=127.0.0.0/8", "--set", "jg_connect_ports=1-65535",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    proxy = Proxy(proc, port, tmp_path / "confdir", log)
    try:
        wait_for_port(port, proc, log, 30.0)
        for _ in range(3):
            ok = raw_exchange(port, f"GET http://127.0.0.1:{origin.port}/x HTTP/1.1\r\n"
                                    f"Host: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
            assert status_of(ok) == 200, ok[:300]
        blocked = raw_exchange(
            port, b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n"
        )
        assert status_of(blocked) == 403
        assert proxy.alive()
        assert "AssertionError" not in proxy.output() and "has crashed" not in proxy.output()
    finally:
        proxy.stop(signal.SIGTERM)
