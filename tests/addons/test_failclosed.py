"""A deciding addon that raises refuses what it was deciding on; an observer that raises does not.

Each test dispatches through mitmproxy's own addon manager with the real ``Jectguard``
parent and the real children, as ``jectguard run`` does. The fault is a real one: an
engine whose lookups raise (what a bug, or an input that triggers one, would do).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import connection, exceptions, tls
from mitmproxy.proxy import context, layer, server_hooks
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.tls import TlsClienthelloHook, TlsStartClientHook
from mitmproxy.proxy.server_hooks import ServerConnectHook
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder, Jectguard, make_addons
from proxy_addons.addons.failclosed import REASON
from proxy_addons.addons.observe import Observe
from proxy_addons.addons.tunnels import RefuseLayer
from proxy_addons.core.engine import Engine
from tests.addons.test_blocking import make_engine


class Broken(RuntimeError):
    pass


class BrokenEngine(Engine):
    """An engine whose every lookup raises."""

    def check_url(self, *args: Any, **kwargs: Any) -> Any:
        raise Broken("check_url exploded")

    def check_host(self, *args: Any, **kwargs: Any) -> Any:
        raise Broken("check_host exploded")


def broken_engine() -> Engine:
    good = make_engine()
    return BrokenEngine(good.block, good.allow)


def _jectguard(tctx: Any, engine: Engine) -> Jectguard:
    tctx.master.addons.add(*mitm_addons.default_addons())
    jg = Jectguard(make_addons(EngineHolder(engine)))
    tctx.master.addons.add(jg)
    tctx.options.update(jg_events_file="", jg_admin_port=0, jg_refresh_role="off")
    return jg


async def test_a_request_check_that_raises_kills_the_flow() -> None:
    with taddons.context(loadcore=False) as tctx:
        jg = _jectguard(tctx, broken_engine())
        f = tflow.tflow()
        f.request.url = "http://evil.test/x"
        f.live = True
        await tctx.master.addons.handle_lifecycle(http_layer.HttpRequestHeadersHook(f))
        assert f.error is not None and not f.live  # killed: never forwarded
        assert jg.fail_closed.failures == 1


async def test_the_same_request_with_a_working_engine_is_forwarded() -> None:
    """The control: an allowed request passes, so the kill above is the fault's doing."""
    with taddons.context(loadcore=False) as tctx:
        jg = _jectguard(tctx, make_engine())
        f = tflow.tflow()
        f.request.url = "http://good.test/ok"
        f.live = True
        await tctx.master.addons.handle_lifecycle(http_layer.HttpRequestHeadersHook(f))
        assert f.error is None and f.live and f.response is None
        assert jg.fail_closed.failures == 0


async def test_a_server_connect_check_that_raises_never_opens_the_connection() -> None:
    with taddons.context(loadcore=False) as tctx:
        _jectguard(tctx, make_engine())
        addresses = tctx.master.addons.get("jectguard_addresses")
        assert addresses is not None

        async def explode(*_: Any) -> Any:
            raise Broken("resolver exploded")

        addresses._resolve = explode  # the fault: the resolver raises
        client = connection.Client(peername=("127.0.0.1", 5555), sockname=("127.0.0.1", 8080))
        server = connection.Server(address=("example.org", 80))
        data = server_hooks.ServerConnectionHookData(server=server, client=client)
        await tctx.master.addons.handle_lifecycle(ServerConnectHook(data))
        assert server.error == REASON


async def test_a_tls_clienthello_check_that_raises_closes_the_tls_connection() -> None:
    with taddons.context(loadcore=False) as tctx:
        jg = _jectguard(tctx, broken_engine())
        client = connection.Client(peername=("127.0.0.1", 5555), sockname=("127.0.0.1", 8080))
        ctx = context.Context(client, tctx.options)
        ctx.server = connection.Server(address=("evil.test", 443))
        hello = _client_hello("evil.test")
        data = tls.ClientHelloData(ctx, hello)
        await tctx.master.addons.handle_lifecycle(TlsClienthelloHook(data))
        assert client.id in jg.fail_closed.refused_tls
        assert data.ignore_connection is False  # never relayed raw
        start = tls.TlsData(client, ctx)
        start.ssl_conn = object()  # type: ignore[assignment]  # what tlsconfig would have set
        await tctx.master.addons.handle_lifecycle(TlsStartClientHook(start))
        assert start.ssl_conn is None  # mitmproxy closes the connection


async def test_a_next_layer_that_raises_refuses_the_connection() -> None:
    with taddons.context(loadcore=False) as tctx:
        _jectguard(tctx, make_engine())
        tunnels = tctx.master.addons.get("jectguard_tunnels")
        assert tunnels is not None

        def explode(*_: Any) -> Any:
            raise Broken("classifier exploded")

        tunnels._decide = explode  # the fault
        client = connection.Client(peername=("127.0.0.1", 5555), sockname=("127.0.0.1", 8080))
        ctx = context.Context(client, tctx.options)
        nl = layer.NextLayer(ctx)
        from mitmproxy.proxy import layers

        nl.layer = layers.TCPLayer(ctx)  # what mitmproxy chose: a raw relay
        ctx.layers = [nl]
        tctx.master.addons.trigger(layer.NextLayerHook(nl))  # type: ignore[no-untyped-call]
        assert isinstance(nl.layer, RefuseLayer)


async def test_an_observer_that_raises_does_not_refuse() -> None:
    """A failing events sink must not stop all traffic: observers fail open, and say so."""
    with taddons.context(loadcore=False) as tctx:
        jg = _jectguard(tctx, make_engine())
        observe = next(c for c in jg.children if isinstance(c, Observe))

        def explode(*_: Any) -> None:
            raise Broken("events disk full")

        observe.requestheaders = explode  # type: ignore[method-assign]
        jg2 = Jectguard(jg.children)  # rebuild the hook table with the faulty observer
        f = tflow.tflow()
        f.request.url = "http://good.test/ok"
        f.live = True
        with pytest.raises(Broken):  # mitmproxy logs it ("Addon error")
            result = jg2.requestheaders(f)  # type: ignore[attr-defined]
            if result is not None:
                await result
        assert f.live and f.error is None  # not killed: the traffic goes on
        assert jg2.fail_closed.failures == 0  # and not counted as a decider's failure


async def test_a_bad_option_still_reports_as_an_option_error() -> None:
    """configure is lifecycle: its OptionsError must reach mitmproxy, not be swallowed."""
    with taddons.context(loadcore=False) as tctx:
        _jectguard(tctx, make_engine())
        with pytest.raises(exceptions.OptionsError):
            tctx.options.update(jg_admin_port=70000)


def test_client_connected_failure_closes_the_client() -> None:
    """client_connected (the client allowlist, the limits) raising sets the client's error."""
    from proxy_addons.addons.failclosed import FailClosed

    fc = FailClosed()
    client = connection.Client(peername=("127.0.0.1", 5555), sockname=("127.0.0.1", 8080))
    fc.refuse("client_connected", "jectguard_clients", (client,), Broken("x"))
    assert client.error == REASON


def _client_hello(sni: str) -> Any:
    """A real ClientHello for ``sni``, parsed by mitmproxy."""
    import contextlib
    import ssl

    from mitmproxy.proxy.layers.tls import parse_client_hello

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()  # writes the ClientHello, then wants the server's answer
    hello = parse_client_hello(outgoing.read())
    assert hello is not None
    return hello
