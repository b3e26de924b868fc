"""A deciding addon that raises refuses the traffic it was deciding on (fail closed).

mitmproxy logs an exception in a hook ("Addon error") and carries on: the flow is
forwarded, the connection opened, the page delivered, as if the check had passed.
For the addons that decide (block lists, tunnels, addresses, limits, stripping, DNS)
that would make every bug, and every input that triggers one, a way around the
proxy. :func:`guarded` wraps such an addon's traffic hooks: when one raises, the
thing the hook was deciding on is refused, and the error is logged with its
traceback. Lifecycle hooks (``configure``: its ``OptionsError`` is how a bad option
is reported) and the observers' hooks are not wrapped: a full events disk must not
stop all traffic.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from mitmproxy import connection, flow, tls
from mitmproxy.proxy import layer, server_hooks

from .tunnels import RefuseLayer

logger = logging.getLogger(__name__)

# Hooks about the proxy's own life, not about traffic: errors there propagate as before.
LIFECYCLE: Final = frozenset({"load", "configure", "running", "done", "add_log", "update"})
REASON: Final = "jectguard: internal error while checking; refused (fail closed)"


class FailClosed:
    """What a failed hook refuses, by the kind of object it was deciding on."""

    def __init__(self) -> None:
        # Clients whose TLS must not start (a tls_clienthello that failed): read by
        # :meth:`tls_start_client`, which the parent runs before any child's.
        self.refused_tls: set[str] = set()
        self.failures = 0

    def refuse(self, hook: str, owner: str, args: tuple[Any, ...], exc: BaseException) -> None:
        self.failures += 1
        logger.error(
            "jectguard: %s.%s failed (%s: %s); refusing what it was deciding on",
            owner,
            hook,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        for arg in args:
            self._refuse_one(arg)

    def _refuse_one(self, arg: object) -> None:
        if isinstance(arg, flow.Flow):
            if arg.killable:
                arg.kill()  # nothing of it is forwarded; the connection is closed
            return
        if isinstance(arg, connection.Client):
            arg.error = REASON  # client_connected: mitmproxy closes it at once
            return
        if isinstance(arg, server_hooks.ServerConnectionHookData):
            arg.server.error = REASON  # server_connect: the connection is not opened
            return
        if isinstance(arg, layer.NextLayer):
            arg.layer = RefuseLayer(arg.context)
            return
        if isinstance(arg, tls.ClientHelloData):
            # Neither a raw relay nor a TLS session: tls_start_client closes it.
            arg.ignore_connection = False
            arg.establish_server_tls_first = False
            self.refused_tls.add(arg.context.client.id)
            return
        if isinstance(arg, tls.TlsData):
            arg.ssl_conn = None  # mitmproxy then closes the connection
            return

    def tls_start_client(self, data: tls.TlsData) -> None:
        if data.context.client.id in self.refused_tls:
            self.refused_tls.discard(data.context.client.id)
            data.ssl_conn = None

    def client_disconnected(self, client: connection.Client) -> None:
        self.refused_tls.discard(client.id)


Handler = Callable[..., object]


def guarded(handler: Handler, hook: str, owner: str, fail: FailClosed) -> Handler:
    """``handler``, but an exception (raised, or from the awaitable it returns) refuses."""

    def call(*args: Any) -> object:
        try:
            result = handler(*args)
        except Exception as exc:
            fail.refuse(hook, owner, args, exc)
            return None
        if result is not None and inspect.isawaitable(result):
            return _awaited(result, hook, owner, args, fail)
        return result

    return call


async def _awaited(
    pending: Awaitable[Any], hook: str, owner: str, args: tuple[Any, ...], fail: FailClosed
) -> None:
    try:
        await pending
    except Exception as exc:
        fail.refuse(hook, owner, args, exc)


__all__ = ["LIFECYCLE", "REASON", "FailClosed", "guarded"]
