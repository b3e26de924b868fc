"""A real upstream name server on 127.0.0.1 (UDP and TCP) for DNS-mode tests.

It answers from a small zone table, follows CNAMEs within it as a recursive
resolver would (the chain goes into the answer), and remembers every question
it was asked, so a test can prove a blocked name never reached upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# name -> [(type, value)]; a name absent from the table is NXDOMAIN.
Zone = dict[str, list[tuple[str, str]]]


@dataclass
class Upstream:
    zone: Zone
    port: int = 0
    asked: list[tuple[str, str]] = field(default_factory=list)
    truncate_udp: bool = False  # every UDP answer comes back truncated: the client must use TCP
    tcp_queries: int = 0

    def names_asked(self) -> set[str]:
        return {name for name, _ in self.asked}

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        q = query.question[0]
        name, qtype = q.name.to_text().rstrip(".").lower(), q.rdtype
        self.asked.append((name, dns.rdatatype.to_text(qtype)))
        seen = 0
        while seen < 8:
            seen += 1
            records = self.zone.get(name)
            if records is None:
                if not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            cname = [v for t, v in records if t == "CNAME"]
            if cname and qtype != dns.rdatatype.CNAME:
                response.answer.append(
                    dns.rrset.from_text(name + ".", 60, "IN", "CNAME", cname[0] + ".")
                )
                name = cname[0].lower()
                continue
            for rtype, value in records:
                if dns.rdatatype.from_text(rtype) == qtype:
                    if rtype in ("CNAME", "MX", "NS"):
                        value = value + "." if not value.endswith(".") else value
                    response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", rtype, value))
            break
        return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        out = self.upstream.answer(data)
        if self.upstream.truncate_udp:
            msg = dns.message.from_wire(out)
            msg.flags |= dns.flags.TC
            msg.answer = []
            out = msg.to_wire()
        self.transport.sendto(out, addr)


@contextlib.contextmanager
def serve(zone: Zone, *, truncate_udp: bool = False) -> Iterator[Upstream]:
    """Run the name server in a thread on one free port (UDP and TCP); stop on exit."""
    upstream = Upstream(zone, truncate_udp=truncate_udp)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                upstream.tcp_queries += 1
                out = upstream.answer(await reader.readexactly(size))
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        # One port for both: bind TCP first on port 0, then UDP on the same number.
        for _ in range(20):
            tcp = await asyncio.start_server(tcp_client, "127.0.0.1", 0)
            port = tcp.sockets[0].getsockname()[1]
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(upstream), local_addr=("127.0.0.1", port), family=socket.AF_INET
                )
            except OSError:
                tcp.close()
                continue
            break
        else:  # pragma: no cover - the machine is out of ports
            raise RuntimeError("no free port for the test name server")
        upstream.port = port
        ready.set()
        try:
            await stop
        finally:
            transport.close()
            tcp.close()
            await tcp.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("test name server did not start")
    try:
        yield upstream
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


__all__ = ["Upstream", "Zone", "serve"]
