"""Tunnels: a connection's content is classified before any byte of it is relayed.

mitmproxy picks the layer for a tunnel (after ``CONNECT``, in transparent mode,
inside decrypted TLS) from whatever bytes arrived first. A ClientHello or a
request line that arrives in pieces (``\\x16`` then the rest, ``GE`` then
``T /``) looks like neither, and mitmproxy relays the connection as raw TCP,
unchecked. This addon runs after mitmproxy's ``next_layer`` and overrides a
raw relay:

- bytes that may still become a ClientHello or a request line: wait for more
  (:class:`HoldLayer` refuses the connection at ``jg_tunnel_classify_seconds``;
  a server that speaks first gets nothing from the client and is refused too);
- a request line: mitmproxy's HTTP layer, so every request on the connection
  is checked like any other (this is what checks plain HTTP through ``CONNECT``
  with ``--no-intercept``, where ``ignore_hosts`` would relay it raw);
- a ClientHello relayed as passthrough (``--no-intercept``, ``ignore_hosts``):
  its SNI is checked;
- anything else (ssh on 443, DNS over TCP, an SSLv2 hello): refused, unless the
  destination is listed in ``jg_raw_tunnels`` (then relayed at once, unchecked).

Content that cannot be checked is not a list's verdict but an unreadable input,
so it is refused in every mode, monitor included, like every ``error``
(:func:`.decide.decide`); a tunnel whose CONNECT or SNI was refused is closed in
every mode too (``Blocking.refused`` only holds decisions that refuse).

mitmproxy's ``ignore_hosts`` and ``tcp_hosts`` do not open a raw relay for
unclassified content: they match the SNI and Host header too, which the client
chooses. ``jg_raw_tunnels`` matches only the destination the proxy connects to,
which was checked at ``CONNECT`` and by address.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from mitmproxy import ctx, exceptions, tls
from mitmproxy.proxy import commands, context, events, layer, layers, mode_specs
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.tls import parse_client_hello

from proxy_addons.core.authority import authority, url_host
from proxy_addons.core.canon import canonical_host
from proxy_addons.core.engine import Action
from proxy_addons.core.errors import CanonError
from proxy_addons.core.tunnel import Content, classify, parse_destination

from .blocking import Blocking
from .connects import server_name_verdict
from .decide import Act, Decision, Stage, log_decision, new_request_id
from .requests import client_ip

logger = logging.getLogger(__name__)

DEFAULT_CLASSIFY_SECONDS: Final = 10
MAX_CLASSIFY_SECONDS: Final = 300
# Layers that relay bytes without reading them as TLS or HTTP.
RELAY_LAYERS: Final = (layers.TCPLayer, layers.DNSLayer)

Expiry = Callable[[context.Context, bytes], None]
# A decision, the client's address and the request id (the observe addon's events).
OnDecision = Callable[[Decision, str, str], None]


class RefuseLayer(layer.Layer):
    """Closes the client connection at once; nothing is forwarded anywhere."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


class HeldNextLayer(layer.NextLayer):
    """A layer decision under a :class:`HoldLayer`'s deadline (asks ``next_layer`` on each byte)."""


class HoldLayer(layer.Layer):
    """Holds a connection's first bytes until ``next_layer`` decides, refusing at a deadline.

    mitmproxy's NextLayer waits for more data without a limit and only acts when
    data arrives; this layer adds the timer. It forwards every event to a
    :class:`HeldNextLayer` and, once that has decided, stays a plain pass-through.
    """

    def __init__(self, ctx_: context.Context, seconds: float, on_expiry: Expiry) -> None:
        super().__init__(ctx_)
        # Invisible to mitmproxy's layer-stack matching, as NextLayer itself is.
        self.context.layers.remove(self)
        self.child = HeldNextLayer(ctx_)
        self.seconds = seconds
        self._on_expiry = on_expiry
        self._wakeup: commands.RequestWakeup | None = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self._wakeup is None:
            self._wakeup = commands.RequestWakeup(self.seconds)
            yield self._wakeup
        elif isinstance(event, events.Wakeup) and event.command is self._wakeup:
            if self.child.layer is None:
                self._on_expiry(self.context, self.child.data_client())  # type: ignore[no-untyped-call]
                yield commands.CloseConnection(self.context.client)
            return
        yield from self.child.handle_event(event)


def _destination(ctx_: context.Context) -> str:
    address = ctx_.server.address
    if not address:
        return "-"
    return authority(str(address[0]), int(address[1]))


class Tunnels:
    """Classifies what a tunnel carries before mitmproxy relays it; refuses what it cannot check."""

    name = "jectguard_tunnels"

    def __init__(self, blocking: Blocking, *, on_decision: OnDecision | None = None) -> None:
        self.blocking = blocking
        # Where decisions on connections without a flow go besides the log (events).
        self.on_decision = on_decision
        self.seconds = float(DEFAULT_CLASSIFY_SECONDS)
        self.raw: frozenset[tuple[str, int]] = frozenset()

    def load(self, loader: object) -> None:
        add = loader.add_option  # type: ignore[attr-defined]
        add(
            "jg_tunnel_classify_seconds",
            int,
            DEFAULT_CLASSIFY_SECONDS,
            "jectguard: how long a tunnel may take to show a TLS ClientHello or an HTTP "
            "request line before it is refused (nothing is relayed before).",
        )
        add(
            "jg_raw_tunnels",
            Sequence[str],
            [],
            "jectguard: HOST:PORT destinations whose tunnels may carry content that is "
            "neither TLS nor HTTP (e.g. ssh on 443); relayed unchecked after the CONNECT "
            "and address checks. Matches the destination only, never SNI or Host.",
        )

    def configure(self, updated: set[str]) -> None:
        if "jg_tunnel_classify_seconds" in updated:
            seconds = ctx.options.jg_tunnel_classify_seconds
            if not 0 < seconds <= MAX_CLASSIFY_SECONDS:
                raise exceptions.OptionsError(
                    f"jg_tunnel_classify_seconds: must be above 0 and at most "
                    f"{MAX_CLASSIFY_SECONDS:g}, got {seconds!r}"
                )
            self.seconds = float(seconds)
        if "jg_raw_tunnels" in updated:
            raw = set()
            for item in ctx.options.jg_raw_tunnels:
                try:
                    raw.add(parse_destination(item))
                except ValueError as exc:
                    raise exceptions.OptionsError(f"jg_raw_tunnels: {exc}") from None
            self.raw = frozenset(raw)

    # -- hooks ----------------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        if chosen is None:
            # Loaded before mitmproxy's own layer choice (`mitmdump -s` runs script addons
            # first): let it choose, so a regular proxy connection gets its regular HTTP
            # layer and only what it would relay raw is ours to judge.
            own = ctx.master.addons.get("nextlayer")
            if own is not None and own is not self:
                own.next_layer(nextlayer)
                chosen = nextlayer.layer
        if chosen is not None and not isinstance(chosen, RELAY_LAYERS):
            return  # TLS or HTTP: those layers check what they carry
        ctx_ = nextlayer.context
        client = ctx_.client
        if client.transport_protocol != "tcp" or isinstance(
            client.proxy_mode, mode_specs.ReverseMode
        ):
            return  # a reverse proxy's protocol and destination are the operator's
        decided = self._decide(nextlayer, chosen)
        if decided is not chosen and chosen is not None:
            # The relay mitmproxy built must not linger in the stack it matches later.
            with contextlib.suppress(ValueError):
                ctx_.layers.remove(chosen)
        nextlayer.layer = decided

    def _decide(self, nextlayer: layer.NextLayer, chosen: layer.Layer | None) -> layer.Layer | None:
        """The layer for a connection mitmproxy would relay raw (None: wait for more bytes)."""
        ctx_ = nextlayer.context
        if ctx_.client.id in self.blocking.refused:
            return RefuseLayer(ctx_)  # its CONNECT or SNI was refused: in every mode
        found = classify(nextlayer.data_client())
        if found.content is Content.HTTP:
            return layers.HttpLayer(ctx_, HTTPMode.transparent)
        if found.content is Content.TLS:
            if chosen is None:  # mitmproxy wants more (ignore_hosts): wait, with our deadline
                return self._wait(nextlayer)
            return chosen if self._sni_allowed(nextlayer) else RefuseLayer(ctx_)
        if self._raw_allowed(ctx_):
            # An operator-trusted destination: relay at once, whoever speaks first.
            return chosen or layers.TCPLayer(ctx_)
        if found.content is Content.MORE:
            return self._wait(nextlayer)
        self._refuse(ctx_, f"its content is {found.reason}")
        return RefuseLayer(ctx_)

    def tls_start_client(self, data: tls.TlsData) -> None:
        if data.context.client.id in self.blocking.fail_tls:
            data.ssl_conn = None  # mitmproxy then closes the client connection

    # -- helpers --------------------------------------------------------------

    def _wait(self, nextlayer: layer.NextLayer) -> layer.Layer | None:
        if isinstance(nextlayer, HeldNextLayer):
            return None  # the HoldLayer above keeps the deadline
        return HoldLayer(nextlayer.context, self.seconds, self._expired)

    def _expired(self, ctx_: context.Context, data: bytes) -> None:
        self._refuse(
            ctx_,
            f"no TLS ClientHello or HTTP request line within {self.seconds:g}s "
            f"({len(data)} bytes received)",
        )

    def _refuse(self, ctx_: context.Context, why: str) -> None:
        """Content nobody can check: an unreadable input, refused in every mode."""
        url = f"tcp://{_destination(ctx_)}"
        self._record(Decision(Stage.TUNNEL, Action.ERROR, Act.ERROR, url, None, why, 400), ctx_)

    def _record(self, d: Decision, ctx_: context.Context, note: str = "") -> None:
        rid, client = new_request_id(), client_ip(ctx_.client)
        log_decision(d, client, rid, note)
        if self.on_decision is not None:
            self.on_decision(d, client, rid)

    def _raw_allowed(self, ctx_: context.Context) -> bool:
        address = ctx_.server.address
        if not self.raw or not address:
            return False
        try:
            return (canonical_host(str(address[0])), int(address[1])) in self.raw
        except CanonError:
            return False

    def _sni_allowed(self, nextlayer: layer.NextLayer) -> bool:
        """A ClientHello about to be relayed undecrypted: its SNI is decided here."""
        blocking = self.blocking
        client = nextlayer.context.client
        try:
            hello = parse_client_hello(nextlayer.data_client())
        except ValueError:
            hello = None
        if hello is None:
            self._refuse(nextlayer.context, "its ClientHello cannot be parsed")
            return False
        v = server_name_verdict(blocking.holder.engine, hello)
        if v is None:
            return True  # no SNI: the CONNECT target and the address were checked
        url = f"https://{url_host(hello.sni or v.input)}/"
        d = blocking._decide(Stage.SNI, v, url, client)
        if d.action is Act.PASS or d.action is Act.ALLOW:
            return True
        self._record(d, nextlayer.context, " (connection closed)" if d.refuses else "")
        if not d.refuses:
            return True
        blocking.refused[client.id] = (v, Stage.SNI.value, url)
        return False


__all__ = ["HoldLayer", "RefuseLayer", "Tunnels"]
