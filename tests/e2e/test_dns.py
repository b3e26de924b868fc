"""DNS mode end to end: a real ``jectguard run --dns-port`` between dnspython and a real
upstream name server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsserver import Upstream, serve  # noqa: E402

from .conftest import LAUNCHER, ROOT, Proxy, free_port  # noqa: E402

BLOCK = """\
evil.example
=exact.example
cname-target.bad
203.0.113.66
198.51.100.0/24
http://shared.example/malware.exe
"""
ALLOW = "ok.evil.example\n"
ZONE = {
    "evil.example": [("A", "192.0.2.1"), ("MX", "10 mail.evil.example"), ("TXT", '"x"')],
    "sub.evil.example": [("A", "192.0.2.2")],
    "ok.evil.example": [("A", "192.0.2.13")],
    "exact.example": [("A", "192.0.2.3")],
    "www.exact.example": [("A", "192.0.2.4")],
    "www.good.example": [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")],
    "tracker.good.example": [("CNAME", "hop.good.example")],
    "hop.good.example": [("CNAME", "x.cname-target.bad")],
    "x.cname-target.bad": [("A", "192.0.2.11")],
    "flux.good.example": [("A", "192.0.2.20"), ("A", "203.0.113.66")],
    "net.good.example": [("A", "198.51.100.5")],
    "shared.example": [("A", "192.0.2.12")],
    "svc.good.example": [("HTTPS", '1 . alpn="h2" ipv4hint="192.0.2.30,203.0.113.66"')],
    "alias.good.example": [("HTTPS", "0 x.cname-target.bad.")],
    "fine.good.example": [("HTTPS", '1 . alpn="h2" ipv4hint="192.0.2.31"')],
}
TIMEOUT = 5.0


def start_dns(
    tmp: Path, upstream: Upstream, *args: str, dns_only: bool = False
) -> tuple[Proxy, int]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "block.txt").write_text(BLOCK)
    (tmp / "allow.txt").write_text(ALLOW)
    port, dns_port = free_port(), free_port()
    log = tmp / "proxy.log"
    cmd = [
        sys.executable, str(LAUNCHER), "run",
        "--listen-port", str(port), "--confdir", str(tmp / "confdir"),
        "--admin-port", "0", "--cache-dir", str(tmp / "cache"),
        "--blocklist", str(tmp / "block.txt"), "--allowlist", str(tmp / "allow.txt"),
        "--dns-port", str(dns_port), "--events-file", str(tmp / "events.jsonl"),
        "--set", f"dns_name_servers=127.0.0.1:{upstream.port}",
        *(["--dns-only"] if dns_only else []),
        *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    proxy = Proxy(proc, port, tmp / "confdir", log)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jectguard exited {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", dns_port), timeout=0.5):
                pass
            # TCP listens; UDP is bound by then too, but a query proves it.
            ask(dns_port, "www.good.example", timeout=1.0)
            break
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                proxy.stop(signal.SIGKILL)
                raise RuntimeError(f"DNS port never opened:\n{log.read_text()}") from None
            time.sleep(0.05)
    return proxy, dns_port


def ask(
    port: int, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = TIMEOUT
) -> dns.message.Message:
    q = dns.message.make_query(name, qtype)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def answers(msg: dns.message.Message) -> list[tuple[str, str]]:
    return [
        (dns.rdatatype.to_text(rrset.rdtype), rd.to_text()) for rrset in msg.answer for rd in rrset
    ]


def events(tmp: Path) -> list[dict[str, object]]:
    path = tmp / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(ZONE) as up:
        yield up


@pytest.fixture(scope="module")
def dnsproxy(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[tuple[Proxy, int, Path]]:
    tmp = tmp_path_factory.mktemp("dns")
    proxy, port = start_dns(tmp, upstream)
    try:
        yield proxy, port, tmp
    finally:
        proxy.stop()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    "qtype, want",
    [
        ("A", [("A", "0.0.0.0")]),
        ("AAAA", [("AAAA", "::")]),
        ("HTTPS", []),
        ("SVCB", []),
        ("CNAME", []),
        ("MX", []),
        ("TXT", []),
    ],
)
def test_blocked_name_answered_without_asking_upstream(
    dnsproxy: tuple[Proxy, int, Path], upstream: Upstream, qtype: str, want: list[object], tcp: bool
) -> None:
    _, port, _ = dnsproxy
    for name in ("evil.example", "sub.evil.example", "exact.example"):
        r = ask(port, name, qtype, tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR, (name, qtype)
        assert answers(r) == want, (name, qtype)
        if want:
            assert r.answer[0].ttl <= 10  # short: unblocking takes effect soon
    assert not {"evil.example", "sub.evil.example", "exact.example"} & upstream.names_asked()


def test_allowed_names_get_the_upstream_answer(
    dnsproxy: tuple[Proxy, int, Path], upstream: Upstream
) -> None:
    _, port, _ = dnsproxy
    assert answers(ask(port, "www.good.example")) == [("A", "192.0.2.10")]
    assert answers(ask(port, "www.good.example", "AAAA", tcp=True)) == [("AAAA", "2001:db8::10")]
    assert answers(ask(port, "www.exact.example")) == [("A", "192.0.2.4")]  # =exact: that host only
    assert ask(port, "missing.good.example").rcode() == dns.rcode.NXDOMAIN
    # The allow list wins, as it does for the proxy.
    assert answers(ask(port, "ok.evil.example")) == [("A", "192.0.2.13")]
    # A URL rule is about one file on a shared host: it never blocks the name.
    assert answers(ask(port, "shared.example")) == [("A", "192.0.2.12")]


def test_cname_chain_to_a_blocked_name_is_blocked(dnsproxy: tuple[Proxy, int, Path]) -> None:
    _, port, tmp = dnsproxy
    for tcp in (False, True):
        r = ask(port, "tracker.good.example", tcp=tcp)
        assert answers(r) == [("A", "0.0.0.0")], r
    ev = [e for e in events(tmp) if e.get("qname") == "tracker.good.example"]
    assert ev and ev[-1]["event"] == "dns-block" and ev[-1]["rule"] == "cname-target.bad"
    assert ev[-1]["matched"] == "answer"


def test_answers_on_ip_and_cidr_lists_are_blocked(dnsproxy: tuple[Proxy, int, Path]) -> None:
    _, port, _ = dnsproxy
    assert answers(ask(port, "flux.good.example")) == [("A", "0.0.0.0")]
    assert answers(ask(port, "net.good.example", tcp=True)) == [("A", "0.0.0.0")]


def test_https_records_pointing_at_listed_hosts_are_blocked(
    dnsproxy: tuple[Proxy, int, Path],
) -> None:
    _, port, _ = dnsproxy
    # An address hint on the IP list, an alias-mode target on the domain list: NODATA.
    for name in ("svc.good.example", "alias.good.example"):
        r = ask(port, name, "HTTPS")
        assert r.rcode() == dns.rcode.NOERROR and answers(r) == [], name
    assert answers(ask(port, "fine.good.example", "HTTPS")) == [
        ("HTTPS", '1 . alpn="h2" ipv4hint="192.0.2.31"')
    ]


def test_each_block_is_an_event_with_its_provenance(dnsproxy: tuple[Proxy, int, Path]) -> None:
    _, port, tmp = dnsproxy
    ask(port, "sub.evil.example", "MX")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        hits = [e for e in events(tmp) if e.get("qtype") == "MX" and e["event"] == "dns-block"]
        if hits:
            break
        time.sleep(0.05)
    e = hits[-1]
    assert e["stage"] == "dns" and e["client"] == "127.0.0.1"
    assert (
        e["qname"] == "sub.evil.example"
        and e["list"] == "block.txt"
        and e["rule"] == "evil.example"
    )


def test_garbage_never_crashes_and_service_goes_on(dnsproxy: tuple[Proxy, int, Path]) -> None:
    proxy, port, _ = dnsproxy
    rng = __import__("random").Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for size in (0, 1, 2, 11, 12, 13, 40, 300, 512, 1400):
            for _ in range(5):
                s.sendto(bytes(rng.randrange(256) for _ in range(size)), ("127.0.0.1", port))
        # A header claiming sections the packet does not hold; a compression loop.
        s.sendto(struct.pack("!HHHHHH", 1, 0x0100, 50, 50, 50, 50), ("127.0.0.1", port))
        loop = struct.pack("!HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
        s.sendto(loop, ("127.0.0.1", port))
    for payload in (
        b"\x00\x00",  # a zero length
        b"\xff\xff" + os.urandom(100),  # 64 KiB announced, 100 bytes sent, then closed
        struct.pack("!H", 30) + os.urandom(30),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            c.settimeout(TIMEOUT)
            try:
                while c.recv(4096):
                    pass
            except OSError:
                pass
    assert proxy.alive()
    assert answers(ask(port, "www.good.example")) == [("A", "192.0.2.10")]
    assert answers(ask(port, "evil.example", tcp=True)) == [("A", "0.0.0.0")]
    assert "Traceback" not in proxy.output()
    # Malformed packets from 40 source ports (each its own "connection" to mitmproxy):
    # the log says so a bounded number of times a minute, and the service goes on.
    for _ in range(40):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x01\x02\x03", ("127.0.0.1", port))
    assert answers(ask(port, "www.good.example")) == [("A", "192.0.2.10")]
    assert 0 < proxy.output().count("sent an invalid message") <= 10


@pytest.mark.parametrize(
    "style, rcode",
    [("nxdomain", dns.rcode.NXDOMAIN), ("refused", dns.rcode.REFUSED)],
)
def test_block_answer_styles(
    tmp_path: Path, upstream: Upstream, style: str, rcode: dns.rcode.Rcode
) -> None:
    proxy, port = start_dns(tmp_path, upstream, "--set", f"jg_dns_block_answer={style}")
    try:
        for qtype in ("A", "AAAA", "TXT"):
            r = ask(port, "evil.example", qtype)
            assert r.rcode() == rcode and not r.answer
        assert answers(ask(port, "tracker.good.example")) == []
        assert ask(port, "tracker.good.example").rcode() == rcode
        assert answers(ask(port, "www.good.example")) == [("A", "192.0.2.10")]
    finally:
        proxy.stop()


def test_monitor_mode_answers_and_logs(tmp_path: Path) -> None:
    with serve(ZONE) as up:
        proxy, port = start_dns(tmp_path, up, "--mode", "monitor")
        try:
            assert answers(ask(port, "evil.example")) == [("A", "192.0.2.1")]
            assert "evil.example" in up.names_asked()
            assert answers(ask(port, "tracker.good.example")) != [("A", "0.0.0.0")]
        finally:
            proxy.stop()
    ev = [e for e in events(tmp_path) if e.get("stage") == "dns"]
    assert {e["event"] for e in ev} == {"monitor"}
    assert {e["qname"] for e in ev} >= {"evil.example", "tracker.good.example"}


def test_dns_only_serves_no_http_proxy_and_truncation_falls_back_to_tcp(tmp_path: Path) -> None:
    with serve(ZONE, truncate_udp=True) as up:
        proxy, port = start_dns(tmp_path, up, dns_only=True)
        try:
            assert answers(ask(port, "www.good.example")) == [("A", "192.0.2.10")]
            assert up.tcp_queries >= 1  # the upstream's UDP answer was truncated
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.port), 1):
                pass
        finally:
            proxy.stop()


def test_a_flooding_client_is_refused_others_are_served(tmp_path: Path, upstream: Upstream) -> None:
    proxy, port = start_dns(tmp_path, upstream, "--set", "jg_dns_rate=5")
    try:
        codes = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            for i in range(60):
                q = dns.message.make_query("www.good.example", "A")
                q.id = i + 1
                s.sendto(q.to_wire(), ("127.0.0.1", port))
            for _ in range(60):
                codes.append(dns.message.from_wire(s.recv(4096)).rcode())
        assert codes.count(dns.rcode.REFUSED) >= 30
        # Another client (another loopback address) is untouched by the flood.
        q = dns.message.make_query("www.good.example", "A")
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=TIMEOUT, source="127.0.0.2")
        assert answers(r) == [("A", "192.0.2.10")]
        assert proxy.alive()
        assert proxy.output().count("queries/s") <= 10  # logged at a bounded rate
    finally:
        proxy.stop()


def test_bad_options_are_refused_at_start(tmp_path: Path, upstream: Upstream) -> None:
    for args in (
        ["--set", "jg_dns_block_answer=sinkhole"],
        ["--set", "dns_name_servers=resolver.example"],
    ):
        with pytest.raises(RuntimeError, match="exited"):
            start_dns(tmp_path / args[1].split("=")[0], upstream, *args)


def test_exposure_guard_and_allow_clients_apply_to_dns(tmp_path: Path, upstream: Upstream) -> None:
    from .conftest import non_loopback_ip

    # A public DNS listener without --allow-clients is refused, as the proxy's is.
    with pytest.raises(RuntimeError, match="exited"):
        start_dns(tmp_path / "open", upstream, "--listen-host", "0.0.0.0")
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to be an outside client from")
    proxy, port = _start_on(tmp_path / "lan", upstream, ip, "--allow-clients", "198.51.100.0/24")
    try:
        q = dns.message.make_query("www.good.example", "A")
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(q, ip, port=port, timeout=1.5, source=ip)
        with pytest.raises((EOFError, OSError, dns.exception.Timeout)):
            dns.query.tcp(q, ip, port=port, timeout=1.5, source=ip)
        assert proxy.alive()
    finally:
        proxy.stop()


def _start_on(tmp: Path, upstream: Upstream, host: str, *args: str) -> tuple[Proxy, int]:
    """start_dns on a non-loopback address, checked from loopback by the port only."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "block.txt").write_text(BLOCK)
    port, dns_port = free_port(host), free_port(host)
    log = tmp / "proxy.log"
    cmd = [
        sys.executable, str(LAUNCHER), "run", "--listen-host", host,
        "--listen-port", str(port), "--confdir", str(tmp / "confdir"),
        "--admin-port", "0", "--cache-dir", str(tmp / "cache"),
        "--blocklist", str(tmp / "block.txt"), "--dns-port", str(dns_port),
        "--set", f"dns_name_servers=127.0.0.1:{upstream.port}", *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    proxy = Proxy(proc, port, tmp / "confdir", log)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jectguard exited {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((host, dns_port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proxy.stop(signal.SIGKILL)
                raise RuntimeError(f"DNS port never opened:\n{log.read_text()}") from None
            time.sleep(0.05)
    # Loopback clients are always allowed: one answered query proves UDP is served,
    # so a later silence toward an outside client is the allow list, not a slow start.
    q = dns.message.make_query("www.good.example", "A")
    while True:
        try:
            dns.query.udp(q, host, port=dns_port, timeout=1.0, source="127.0.0.1")
            return proxy, dns_port
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                proxy.stop(signal.SIGKILL)
                raise RuntimeError(f"DNS never answered:\n{log.read_text()}") from None
