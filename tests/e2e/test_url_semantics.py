"""URL rules match what the server serves, whatever name or spelling reaches it (red
team 2, findings 3, 5 and 6), through a real `jectguard run`; and `jectguard check`
says the same for every URL it can judge without resolving names.

* a URL rule on an IP address blocks that file under any name that resolves there,
  plain HTTP, inside an intercepted tunnel, and on a kept-alive connection;
* a query rule blocks its parameters in any order, with extras, on every spelling of
  its path;
* a rule's file is blocked without its extension (Apache MultiViews serves it).
"""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    ATTACKER_IP,
    HOSTS,
    LAUNCHER,
    ROOT,
    Origin,
    Proxy,
    client_ssl,
    free_port,
    make_cert,
    start_proxy,
    wait_for_port,
)

pytestmark = pytest.mark.skipif(
    ATTACKER_IP is None, reason="needs a non-loopback IPv4 address for the listed origin"
)
TIMEOUT = 10.0


class IPOrigin:
    """HTTP and HTTPS origins on this machine's own address, recording each path."""

    def __init__(self, host: str, cert_dir: Path) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                paths.append(self.path)
                body = b"payload bytes"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        cert, key = make_cert(cert_dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.plain = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.tls = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.tls.socket = ctx.wrap_socket(self.tls.socket, server_side=True)
        self.port = self.plain.server_address[1]
        self.tls_port = self.tls.server_address[1]
        self.threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            for s in (self.plain, self.tls)
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in (self.plain, self.tls):
            s.shutdown()
            s.server_close()
        for t in self.threads:
            t.join(5)


@pytest.fixture(scope="module")
def ip_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPOrigin]:
    assert ATTACKER_IP is not None
    o = IPOrigin(ATTACKER_IP, tmp_path_factory.mktemp("iporigin"))
    try:
        yield o
    finally:
        o.close()


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory, ip_origin: IPOrigin) -> Path:
    path = tmp_path_factory.mktemp("urlsem") / "urls.txt"
    path.write_text(
        f"http://{ATTACKER_IP}:{ip_origin.port}/bins/mozi.m\n"
        f"https://{ATTACKER_IP}/tls/mozi.a\n"
        "http://good.test/dl.php?id=7\n"
        "https://good.test/uc?export=download&id=X\n"
        "http://good.test/dl/payload.exe\n"
    )
    return path


@pytest.fixture(scope="module")
def url_proxy(tmp_path_factory: pytest.TempPathFactory, rules: Path) -> Iterator[Proxy]:
    assert ATTACKER_IP is not None
    with pytest.MonkeyPatch.context() as mp:
        # nip.io-style: innocent names that resolve to the listed address
        mp.setitem(HOSTS, "innocent.test", ATTACKER_IP)
        mp.setitem(HOSTS, "other.innocent.test", ATTACKER_IP)
        p = start_proxy(
            tmp_path_factory.mktemp("urlsem-proxy"),
            "--blocklist", str(rules),
            "--set", "ssl_insecure=true",  # tests only: the origins' certificates are self-signed
        )  # fmt: skip
    try:
        yield p
    finally:
        p.stop()


def fetch(proxy: Proxy, url: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    try:
        conn.request("GET", url, headers={"Accept": "*/*"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def fetch_tls(proxy: Proxy, host: str, port: int, path: str) -> int:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", proxy.port, timeout=TIMEOUT, context=client_ssl(proxy.ca)
    )
    try:
        conn.set_tunnel(f"{host}:{port}")
        conn.request("GET", path, headers={"Accept": "*/*"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def check_cli(rules: Path, url: str, *flags: str) -> str:
    out = subprocess.run(
        [sys.executable, str(LAUNCHER), "check", "--blocklist", str(rules), "--json", *flags, url],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    verdict: str = json.loads(out.stdout)["verdict"]
    return verdict


# -- a URL rule on an address, reached through a name -------------------------------


def test_a_name_resolving_to_the_rules_address_is_blocked(
    url_proxy: Proxy, ip_origin: IPOrigin
) -> None:
    port = ip_origin.port
    assert fetch(url_proxy, f"http://{ATTACKER_IP}:{port}/bins/mozi.m") == 403
    for name in ("innocent.test", "other.innocent.test"):
        assert fetch(url_proxy, f"http://{name}:{port}/bins/mozi.m") == 403
        assert fetch(url_proxy, f"http://{name}:{port}/bins/mozi.m?x=1") == 403
    assert "/bins/mozi.m" not in "".join(ip_origin.paths)
    # the rest of that server is not listed
    assert fetch(url_proxy, f"http://innocent.test:{port}/bins/other") == 200
    assert ip_origin.paths[-1] == "/bins/other"


def test_a_kept_alive_connection_is_checked_for_each_request(
    url_proxy: Proxy, ip_origin: IPOrigin
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", url_proxy.port, timeout=TIMEOUT)
    try:
        statuses = []
        for path in ("/bins/first", "/bins/mozi.m", "/bins/last"):
            conn.request("GET", f"http://innocent.test:{ip_origin.port}{path}")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        conn.close()
    assert statuses == [200, 403, 200]
    assert "/bins/mozi.m" not in ip_origin.paths


def test_inside_an_intercepted_tunnel_too(url_proxy: Proxy, ip_origin: IPOrigin) -> None:
    assert fetch_tls(url_proxy, "innocent.test", ip_origin.tls_port, "/tls/ok") == 200
    assert fetch_tls(url_proxy, "innocent.test", ip_origin.tls_port, "/tls/mozi.a") == 403
    assert "/tls/mozi.a" not in ip_origin.paths


def test_check_cannot_resolve_names(rules: Path, ip_origin: IPOrigin) -> None:
    """Documented: only the proxy knows where a name points (README, rule semantics)."""
    url = f"http://innocent.test:{ip_origin.port}/bins/mozi.m"
    assert check_cli(rules, url) == "pass"
    assert check_cli(rules, f"http://{ATTACKER_IP}/bins/mozi.m") == "block"


# -- query rules and MultiViews: the proxy and `check` agree ---------------------------

SPELLINGS = [
    ("/dl.php?id=7", 403),
    ("/dl.php?id=7&", 403),
    ("/dl.php?id=7&utm=1", 403),
    ("/dl.php?utm=1&id=7", 403),
    ("/dl.php;jsessionid=1?id=7", 403),
    ("/dl.php.?id=7", 403),
    ("/dl.php%20?id=7", 403),
    ("/dl.php/?id=7", 403),
    ("/dl?id=7", 403),
    ("/uc?id=X&export=download&confirm=t", 403),
    ("/dl/payload", 403),
    ("/dl/payload/x", 403),
    ("/dl.php?id=8", 200),
    ("/dl.php", 200),
    ("/uc?id=X", 200),
    ("/dl/payload.html", 200),
]


@pytest.mark.parametrize("path, status", SPELLINGS)
def test_query_rules_and_stems_through_the_proxy_and_check(
    url_proxy: Proxy, origin: Origin, rules: Path, path: str, status: int
) -> None:
    assert fetch(url_proxy, f"http://good.test:{origin.port}{path}") == status
    want = "block" if status == 403 else "pass"
    assert check_cli(rules, f"http://good.test:{origin.port}{path}") == want


def test_query_rule_inside_an_intercepted_tunnel(url_proxy: Proxy, origin: Origin) -> None:
    port = origin.tls_port
    assert fetch_tls(url_proxy, "good.test", port, "/uc?confirm=t&id=X&export=download") == 403
    assert fetch_tls(url_proxy, "good.test", port, "/uc?id=Y&export=download") == 200


# -- letter case: the proxy's option and `check`'s flag agree (red team 2, finding 4) ----

CASES = [
    ("/DL.PHP?ID=7&utm=1", 403),
    ("/Dl/Payload", 403),
    ("/dl.php?id=7", 403),
    ("/DL.PHP?id=8", 200),
]


@pytest.fixture(scope="module")
def folding_proxy(tmp_path_factory: pytest.TempPathFactory, rules: Path) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("urlsem-fold"),
        "--blocklist", str(rules), "--set", "jg_url_case_insensitive=true",
    )  # fmt: skip
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize("path, status", CASES)
def test_case_insensitive_proxy_and_check_agree(
    folding_proxy: Proxy, origin: Origin, rules: Path, path: str, status: int
) -> None:
    url = f"http://good.test:{origin.port}{path}"
    assert fetch(folding_proxy, url) == status
    want = "block" if status == 403 else "pass"
    assert check_cli(rules, url, "--url-case-insensitive") == want
    if path != path.lower():
        assert check_cli(rules, url) == "pass"  # without the flag, as the default proxy


# -- a real Apache with MultiViews (red team 2, finding 3) ----------------------------

APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
APACHE_CONF = """\
ServerRoot "{root}"
PidFile {root}/httpd.pid
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule mime_module {modules}/mod_mime.so
LoadModule negotiation_module {modules}/mod_negotiation.so
Listen 127.0.0.1:{port}
ServerName good.test
ErrorLog {root}/error.log
TypesConfig /etc/mime.types
DocumentRoot {root}/docs
<Directory {root}/docs>
  Options +MultiViews
  Require all granted
</Directory>
"""


@pytest.fixture(scope="module")
def multiviews(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not (Path(APACHE).exists() and (APACHE_MODULES / "mod_negotiation.so").exists()):
        pytest.skip("needs Apache httpd with mod_negotiation (apt install apache2)")
    root = tmp_path_factory.mktemp("apache")
    (root / "docs" / "dl").mkdir(parents=True)
    (root / "docs" / "dl" / "payload.exe").write_bytes(b"MZ payload")
    port = free_port()
    conf = root / "httpd.conf"
    conf.write_text(APACHE_CONF.format(root=root, modules=APACHE_MODULES, port=port))
    proc = subprocess.Popen(
        [APACHE, "-f", str(conf), "-X"],  # one process in the foreground: ours to stop
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        (root / "error.log").touch()
        wait_for_port(port, proc, root / "error.log", 10.0)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_apache_multiviews_serves_the_file_without_its_extension(
    url_proxy: Proxy, multiviews: int
) -> None:
    # the control: Apache itself serves payload.exe for /dl/payload
    direct = http.client.HTTPConnection("127.0.0.1", multiviews, timeout=TIMEOUT)
    try:
        direct.request("GET", "/dl/payload", headers={"Host": "good.test"})
        resp = direct.getresponse()
        assert resp.status == 200 and resp.read() == b"MZ payload"
    finally:
        direct.close()
    assert fetch(url_proxy, f"http://good.test:{multiviews}/dl/payload") == 403
    assert fetch(url_proxy, f"http://good.test:{multiviews}/dl/payload.exe") == 403
    assert fetch(url_proxy, f"http://good.test:{multiviews}/dl/payload.html") == 404
