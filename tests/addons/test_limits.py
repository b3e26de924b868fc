"""The connection front and deadlines (limits.py), with real asyncio streams and mitmproxy's helpers.

The behaviour against a real ``jectguard run`` is in tests/e2e/test_hostile_listeners.py.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import ctx, exceptions
from mitmproxy.proxy import layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder, make_addons
from proxy_addons.addons.clients import client_address
from proxy_addons.addons.limits import ConnectionLimits, DescriptorShortageFilter, Throttle
from proxy_addons.core import proxyproto
from proxy_addons.core.engine import Engine

TIMEOUT = 10.0


def test_throttle_holds_back_and_counts() -> None:
    now = [100.0]
    t = Throttle(10.0, clock=lambda: now[0])
    assert t.allow("k") == 0
    assert t.allow("k") is None and t.allow("k") is None
    assert t.allow("other") == 0
    now[0] += 10.0
    assert t.allow("k") == 2


def _record(exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc else None
    return logging.LogRecord(
        "mitmproxy.master", logging.ERROR, __file__, 1, "Unhandled error in task.", (), info
    )


def test_descriptor_shortage_becomes_one_short_warning() -> None:
    now = [0.0]
    f = DescriptorShortageFilter(Throttle(10.0, clock=lambda: now[0]))
    first = _record(OSError(errno.EMFILE, "Too many open files"))
    assert f.filter(first)
    assert first.levelno == logging.WARNING and first.exc_info is None
    assert "out of file descriptors" in first.getMessage()
    assert not f.filter(_record(OSError(errno.ENFILE, "File table overflow")))
    other = _record(OSError(errno.ECONNRESET, "reset"))
    assert f.filter(other) and other.levelno == logging.ERROR and other.exc_info
    assert f.filter(_record(None))
    now[0] = 10.0
    again = _record(OSError(errno.EMFILE, "Too many open files"))
    assert f.filter(again) and "1 more such" in again.getMessage()


async def test_loads_next_to_mitmproxy_default_addons() -> None:
    engine, _, _ = Engine.from_lists([])
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        tctx.master.addons.add(*make_addons(EngineHolder(engine)))
        for opt in (
            "jg_trusted_proxies",
            "jg_max_client_connections",
            "jg_header_timeout",
            "jg_idle_timeout",
        ):
            assert opt in tctx.options


async def test_options_validated() -> None:
    limits = ConnectionLimits()
    with taddons.context(limits) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jg_trusted_proxies"):
            tctx.configure(limits, jg_trusted_proxies=["10.0.0.0/33"])
        for name in ("jg_max_client_connections", "jg_header_timeout", "jg_idle_timeout"):
            with pytest.raises(exceptions.OptionsError, match=name):
                tctx.configure(limits, **{name: -1})
        tctx.configure(limits, jg_trusted_proxies=["127.0.0.1"], jg_max_client_connections=3)
        assert limits.cap == 3 and limits.trusted


# -- the front, on real sockets ----------------------------------------------------

Seen = list[tuple[Any, bytes]]


async def _serve(
    limits: ConnectionLimits, seen: Seen, release: asyncio.Event
) -> AsyncIterator[int]:
    async def original(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((writer.get_extra_info("peername"), await reader.readexactly(5)))
        await release.wait()
        writer.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await limits.front(original, r, w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        release.set()
        server.close()
        await server.wait_closed()


Open = Callable[[bytes], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def front() -> AsyncIterator[tuple[ConnectionLimits, Seen, asyncio.Event, Open]]:
    limits, seen, release = ConnectionLimits(), [], asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    gen = _serve(limits, seen, release)
    port = await anext(gen)

    async def open_(data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        w.write(data)
        await w.drain()
        return r, w

    try:
        yield limits, seen, release, open_
    finally:
        for w in writers:
            w.close()
        with pytest.raises(StopAsyncIteration):
            await anext(gen)


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Closed without a byte for us (EOF, or a reset when our bytes went unread)."""
    async with asyncio.timeout(TIMEOUT):
        try:
            return await reader.read() == b""
        except ConnectionResetError:
            return True


async def _wait_for(cond: Callable[[], bool]) -> None:
    """Until the server side (other tasks, no signal of their own) has got that far."""
    async with asyncio.timeout(TIMEOUT):
        while not cond():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "header",
    [
        proxyproto.build_v2(("10.1.2.3", 5555), ("127.0.0.1", 8080)),
        b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8080\r\n",
    ],
)
async def test_trusted_balancer_names_the_client(front: Any, header: bytes) -> None:
    limits, seen, _, open_ = front
    limits.trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    await open_(header + b"hello")
    await _wait_for(lambda: bool(seen))
    assert seen == [(("10.1.2.3", 5555), b"hello")]  # the client's bytes after it are intact


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 10.1.2.3 127.0.0.1 5555\r\nhello",
        proxyproto.build_v2(("10.1.2.3", 5555), ("127.0.0.1", 8080))[:20],
    ],
)
async def test_trusted_balancer_without_a_valid_header_is_refused(front: Any, data: bytes) -> None:
    limits, seen, _, open_ = front
    limits.trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    reader, writer = await open_(data)
    if len(data) == 20:
        writer.write_eof()  # a header cut short, then the end
    assert await _closed(reader)
    assert seen == []


async def test_header_from_anyone_else_is_not_read(front: Any) -> None:
    limits, seen, _, open_ = front
    limits.trusted = (ipaddress.ip_network("10.9.9.9/32"),)
    await open_(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8080\r\n")
    await _wait_for(lambda: bool(seen))
    assert seen[0][0][0] == "127.0.0.1" and seen[0][1] == b"PROXY"


async def test_cap_per_client(front: Any) -> None:
    limits, seen, release, open_ = front
    limits.cap = 2
    for _ in range(2):
        await open_(b"first")
    await _wait_for(lambda: len(seen) == 2)
    reader, _ = await open_(b"third")
    assert await _closed(reader)  # closed at once
    assert len(seen) == 2 and limits.open["127.0.0.1"] == 2
    release.set()
    await _wait_for(lambda: not limits.open)  # counts return to zero


# -- deadlines -----------------------------------------------------------------------


async def test_deadline_follows_the_request_cycle() -> None:
    limits = ConnectionLimits()
    with taddons.context(limits) as tctx:
        tctx.configure(limits, jg_header_timeout=30, jg_idle_timeout=60)
        f = tflow.tflow()
        client = f.client_conn
        limits.client_connected(client)
        w = limits._waiting[client.id]
        assert w.timer is not None  # waiting for the first head
        limits.requestheaders(f)
        assert w.timer is None and w.pending == {f.id}
        limits.response(f)
        assert w.timer is not None and not w.pending  # keep-alive: idle deadline
        context = _context(client)
        nl = NextLayer(context)
        nl.layer = layers.TCPLayer(context)
        limits.next_layer(nl)
        assert w.timer is None and w.tunnel
        limits.response(f)
        assert w.timer is None  # a tunnel is left to tcp_timeout
        limits.client_disconnected(client)
        assert client.id not in limits._waiting


def _context(client: Any) -> Any:
    return Context(client, ctx.options)


async def test_deadlines_off_with_zero() -> None:
    limits = ConnectionLimits()
    with taddons.context(limits) as tctx:
        tctx.configure(limits, jg_header_timeout=0)
        client = tflow.tclient_conn()
        limits.client_connected(client)
        assert limits._waiting[client.id].timer is None


def test_client_address_maps_ipv4_in_ipv6() -> None:
    c = tflow.tclient_conn()
    c.peername = ("::ffff:10.1.2.3", 1, 0, 0)
    assert client_address(c) == "10.1.2.3"
    c.peername = None
    assert client_address(c) == ""
