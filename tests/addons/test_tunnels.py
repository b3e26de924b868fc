"""The tunnels addon next to mitmproxy's own layer detection, hook by hook."""

from __future__ import annotations

import logging
import ssl
import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.addons.next_layer import NextLayer as MitmNextLayer
from mitmproxy import exceptions
from mitmproxy.proxy import commands, context, events, layer, layers
from mitmproxy.proxy.layer import NextLayerHook
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder
from proxy_addons.addons.blocking import Blocking
from proxy_addons.addons.observe import Observe
from proxy_addons.addons.tunnels import (
    RELAY_LAYERS,
    HeldNextLayer,
    HoldLayer,
    RefuseLayer,
    Tunnels,
)
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

from .test_blocking import make_engine


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


HELLO_OK = client_hello("example.test")
HELLO_EVIL = client_hello("www.evil.test")
SSH = b"SSH-2.0-OpenSSH_9.6\r\n"


class Setup:
    def __init__(self) -> None:
        self.blocking = Blocking(EngineHolder(make_engine()))
        self.tunnels = Tunnels(self.blocking)
        self.mitm = MitmNextLayer()


@pytest.fixture
def setup() -> Setup:
    return Setup()


def tunnel(
    tctx: taddons.context, mode: str = "regular", address: tuple[str, int] = ("example.test", 443)
) -> context.Context:
    """The context of the bytes after an accepted CONNECT (eager connection strategy)."""
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse(mode)
    client.alpn = client.sni = client.tls_version = None  # plain CONNECT: no TLS yet
    ctx = context.Context(client, tctx.options)
    ctx.server.address = address
    if mode.startswith("reverse"):
        modes.ReverseProxy(ctx)
    else:
        modes.HttpProxy(ctx)
        layers.HttpLayer(ctx, HTTPMode.regular)
    return ctx


def decide(
    s: Setup, ctx: context.Context, data: bytes, nl: layer.NextLayer | None = None
) -> object:
    """What mitmproxy's next_layer and then ours pick for ``data`` from the client."""
    nl = nl or layer.NextLayer(ctx)
    nl.events = (
        [events.Start(), events.DataReceived(ctx.client, data)] if data else [events.Start()]
    )
    s.mitm.next_layer(nl)
    s.tunnels.next_layer(nl)
    return nl.layer


WAITS = [
    b"\x16",
    b"\x16\x03",
    HELLO_OK[:3],
    HELLO_OK[:-1],
    b"G",
    b"GE",
    b"GET",
    b"GET /x",
    b"GET /x HTTP/1.",
]


@pytest.mark.parametrize("no_intercept", [False, True])
@pytest.mark.parametrize("data", WAITS)
def test_prefixes_wait_under_a_deadline(setup: Setup, data: bytes, no_intercept: bool) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        if no_intercept:
            tctx.configure(setup.mitm, ignore_hosts=[".*"])
        ctx = tunnel(tctx)
        chosen = decide(setup, ctx, data)
        if len(data) >= 3 and data[0] == 0x16 and not no_intercept:
            # mitmproxy's TLS layer takes it from three bytes on and waits for the rest itself
            assert isinstance(chosen, layers.ServerTLSLayer)
            return
        assert isinstance(chosen, HoldLayer)
        assert not any(isinstance(x, RELAY_LAYERS) for x in ctx.layers)
        # Asked again under the HoldLayer: wait (no layer), the deadline is the HoldLayer's.
        assert decide(setup, ctx, data, HeldNextLayer(ctx)) is None


@pytest.mark.parametrize("no_intercept", [False, True])
def test_request_line_goes_to_the_http_layer(setup: Setup, no_intercept: bool) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        if no_intercept:
            # --no-intercept: mitmproxy's ignore_hosts would relay plain HTTP raw
            tctx.configure(setup.mitm, ignore_hosts=[".*"])
        for data in (b"GET /bad/ HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"):
            chosen = decide(setup, tunnel(tctx), data)
            assert isinstance(chosen, layers.HttpLayer) and chosen.mode is HTTPMode.transparent


def test_complete_client_hello_is_left_to_tls(setup: Setup) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        assert isinstance(decide(setup, tunnel(tctx), HELLO_OK), layers.ServerTLSLayer)


def test_passthrough_client_hello_sni_checked(setup: Setup) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.mitm, ignore_hosts=[".*"])
        assert isinstance(decide(setup, tunnel(tctx), HELLO_OK), layers.TCPLayer)
        ctx = tunnel(tctx)
        assert isinstance(decide(setup, ctx, HELLO_EVIL), RefuseLayer)
        assert ctx.client.id in setup.blocking.refused


@pytest.mark.parametrize(
    "data",
    [
        SSH,
        b"\x16\x04\x00",
        b"\x00\x01",
        b"\r\n\r\n\r\n\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"GET /\r\n",
        b"\x80\x2e\x01\x00\x02\x00",
        b"\x05\x01\x00",
    ],
)
@pytest.mark.parametrize("no_intercept", [False, True])
def test_unknown_content_is_never_relayed(setup: Setup, data: bytes, no_intercept: bool) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        if no_intercept:
            tctx.configure(setup.mitm, ignore_hosts=[".*"])
        chosen = decide(setup, tunnel(tctx), data)
        # refused, or (looking enough like HTTP to mitmproxy) its HTTP layer, which rejects it
        assert isinstance(chosen, (RefuseLayer, layers.HttpLayer)), chosen
        if no_intercept or data[:3] != b"GET":
            assert isinstance(chosen, RefuseLayer)


def test_raw_tunnels_option_allows_listed_destinations_only(setup: Setup) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.tunnels, jg_raw_tunnels=["Example.TEST.:443", "[2001:db8::1]:22"])
        assert isinstance(decide(setup, tunnel(tctx), SSH), layers.TCPLayer)
        assert isinstance(
            decide(setup, tunnel(tctx, address=("2001:db8::1", 22)), SSH), layers.TCPLayer
        )
        # another port, another host, a host named only by the client: refused
        for address in (("example.test", 22), ("other.test", 443)):
            assert isinstance(decide(setup, tunnel(tctx, address=address), SSH), RefuseLayer)
        # HTTP to a raw-allowed destination is still checked as HTTP
        chosen = decide(setup, tunnel(tctx), b"GET / HTTP/1.1\r\n")
        assert isinstance(chosen, layers.HttpLayer)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("jg_raw_tunnels", ["example.test"]),
        ("jg_raw_tunnels", ["2001:db8::1:22"]),
        ("jg_raw_tunnels", ["example.test:0"]),
        ("jg_raw_tunnels", ["exa mple.test:22"]),
        ("jg_tunnel_classify_seconds", 0),
        ("jg_tunnel_classify_seconds", 301),
    ],
)
def test_bad_options_are_refused(setup: Setup, option: str, value: object) -> None:
    with (
        taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx,
        pytest.raises(exceptions.OptionsError, match=option),
    ):
        tctx.configure(setup.tunnels, **{option: value})


def test_monitor_mode_still_refuses_what_it_cannot_check(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Unclassifiable content is not a list verdict but unreadable input: refused in every mode."""
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.blocking, jg_mode="monitor")
        with caplog.at_level(logging.INFO):
            assert isinstance(decide(setup, tunnel(tctx), SSH), RefuseLayer)
        assert "refused (unreadable) tcp://example.test:443" in caplog.text
        assert "stage tunnel" in caplog.text
        assert isinstance(decide(setup, tunnel(tctx), b"\x16"), HoldLayer)
        assert isinstance(decide(setup, tunnel(tctx), b"GE"), HoldLayer)
        # a listed SNI relayed undecrypted is only logged in monitor mode ...
        tctx.configure(setup.mitm, ignore_hosts=[".*"])
        ctx = tunnel(tctx)
        assert isinstance(decide(setup, ctx, HELLO_EVIL), layers.TCPLayer)
        assert ctx.client.id not in setup.blocking.refused
        # ... but an unreadable one is refused (the old next_layer passed it): one the
        # engine cannot read, and one mitmproxy cannot read (its ``sni`` is None)
        for name in ("999.1.1.1.1", "exa%mple.test"):
            ctx = tunnel(tctx)
            assert isinstance(decide(setup, ctx, client_hello(name)), RefuseLayer), name
            assert setup.blocking.refused[ctx.client.id][1] == "sni"
        # plain HTTP is still read as HTTP (the request checks log what they would block)
        assert isinstance(decide(setup, tunnel(tctx), b"GET / HTTP/1.1\r\n"), layers.HttpLayer)


def test_refused_client_is_refused_in_monitor_mode(setup: Setup) -> None:
    """``refused`` holds only refusing decisions (an unreadable SNI in monitor mode)."""
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.blocking, jg_mode="monitor")
        tctx.configure(setup.mitm, ignore_hosts=[".*"])
        ctx = tunnel(tctx)
        bad = setup.blocking.holder.engine.check_host("999.1.1.1.1")
        setup.blocking.refused[ctx.client.id] = (bad, "sni", "https://999.1.1.1.1/")
        assert isinstance(decide(setup, ctx, HELLO_OK), RefuseLayer)


def test_reverse_tcp_mode_is_the_operators_choice(setup: Setup) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        ctx = tunnel(tctx, mode="reverse:tcp://127.0.0.1:22")
        assert isinstance(decide(setup, ctx, SSH), layers.TCPLayer)


def test_refused_client_gets_nothing_relayed(setup: Setup) -> None:
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.mitm, ignore_hosts=[".*"])
        ctx = tunnel(tctx)
        setup.blocking.refused[ctx.client.id] = (make_engine().check_host("evil.test"), "sni", "x")
        assert isinstance(decide(setup, ctx, HELLO_OK), RefuseLayer)


# -- the deadline ------------------------------------------------------------------


def _drive(hold: HoldLayer, event: events.Event) -> list[commands.Command]:
    return list(hold.handle_event(event))


def test_hold_layer_refuses_at_the_deadline(setup: Setup) -> None:
    expired: list[bytes] = []
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        ctx = tunnel(tctx)
        before = list(ctx.layers)
        hold = HoldLayer(ctx, 7.0, lambda _ctx, data: expired.append(data))
        assert ctx.layers == before  # invisible to mitmproxy's stack matching
        (wakeup,) = _drive(hold, events.Start())
        assert isinstance(wakeup, commands.RequestWakeup) and wakeup.delay == 7.0
        (hook,) = _drive(hold, events.DataReceived(ctx.client, b"\x16"))
        assert isinstance(hook, NextLayerHook)
        setup.mitm.next_layer(hook.data)
        setup.tunnels.next_layer(hook.data)
        assert hook.data.layer is None  # still waiting
        assert _drive(hold, events.HookCompleted(hook)) == []
        cmds = _drive(hold, events.Wakeup(wakeup))
    assert [type(c) for c in cmds] == [commands.CloseConnection]
    assert cmds[0].connection is ctx.client  # type: ignore[attr-defined]
    assert expired == [b"\x16"]


def test_hold_layer_hands_over_once_classified(setup: Setup) -> None:
    expired: list[bytes] = []
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        ctx = tunnel(tctx)
        hold = HoldLayer(ctx, 7.0, lambda _ctx, data: expired.append(data))
        (wakeup,) = _drive(hold, events.Start())
        (hook,) = _drive(hold, events.DataReceived(ctx.client, b"GE"))
        setup.tunnels.next_layer(hook.data)
        _drive(hold, events.HookCompleted(hook))
        (hook,) = _drive(hold, events.DataReceived(ctx.client, b"T /bad/ HTTP/1.1\r\n"))
        setup.mitm.next_layer(hook.data)
        setup.tunnels.next_layer(hook.data)
        assert isinstance(hook.data.layer, layers.HttpLayer)
        _drive(hold, events.HookCompleted(hook))
        # the deadline passes after the decision: nothing is closed
        cmds = _drive(hold, events.Wakeup(wakeup))
    assert not any(isinstance(c, commands.CloseConnection) for c in cmds)
    assert expired == []


def test_refusals_without_a_flow_become_events(setup: Setup) -> None:
    """A refused tunnel has no flow: the tunnels addon hands its decision to observe."""
    events = EventLog()
    observe = Observe(events, Metrics(), setup.blocking.holder)
    setup.tunnels.on_decision = observe.connection_decision
    with taddons.context(setup.mitm, setup.blocking, setup.tunnels) as tctx:
        tctx.configure(setup.mitm, ignore_hosts=[".*"])
        assert isinstance(decide(setup, tunnel(tctx), SSH), RefuseLayer)
        assert isinstance(decide(setup, tunnel(tctx), HELLO_EVIL), RefuseLayer)
    recent = events.recent()[::-1]  # oldest first
    assert [(e["event"], e["stage"]) for e in recent] == [("error", "tunnel"), ("block", "sni")]
    assert recent[0]["url"] == "tcp://example.test:443"
