"""jectguard's mitmproxy addons; ``make_addons(holder)`` returns them in load order.

``jectguard run`` loads them behind one ``Jectguard`` addon that calls its
children's hooks itself. mitmproxy walks an addon and, recursively, its
``addons`` list on every event, ``getattr``-ing the event's name on each addon
met: with the fourteen children under ``addons``, that walk ran over all
fourteen for each event of a request, hooks or not, and called each hook
through a generator (measured: 93 -> 73 us per request for the addon's four
flow hooks under mitmproxy's own dispatch, ``update`` events not counted).
``Jectguard`` instead builds, once, one callable per hook name from the
children that define it (the child's own bound method when only one does), so
mitmproxy sees one addon with one attribute per hook. ``jectguard run`` also
replaces mitmproxy's per-event dispatch itself (``proxy_addons.cli.dispatch``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from proxy_addons.lists.holder import EngineHolder

if TYPE_CHECKING:
    from .addresses import Addresses
    from .admin import AdminServer
    from .blocking import Blocking
    from .campaign import Campaign
    from .clients import ClientAllowList
    from .dnsfilter import DnsFilter
    from .heap import FreezeStartupHeap
    from .ledger import LedgerAddon
    from .limits import ConnectionLimits
    from .observe import Observe
    from .refresh import Refresh
    from .strip import Strip
    from .tunnels import Tunnels

# The addon classes load with their first use, not with the package: a worker process
# started by ``spawn`` imports one module of this package (``campaign_worker``) and must
# not load mitmproxy and every addon to do so (tests/test_house.py checks).
_ADDONS: Final = {
    "Addresses": ".addresses",
    "AdminServer": ".admin",
    "Blocking": ".blocking",
    "Campaign": ".campaign",
    "ClientAllowList": ".clients",
    "DnsFilter": ".dnsfilter",
    "FreezeStartupHeap": ".heap",
    "LedgerAddon": ".ledger",
    "ConnectionLimits": ".limits",
    "Observe": ".observe",
    "Refresh": ".refresh",
    "Strip": ".strip",
    "Tunnels": ".tunnels",
}


def __getattr__(name: str) -> Any:
    module = _ADDONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def make_addons(
    holder: EngineHolder, *, report: Any = None, cache_dir: Path | None = None
) -> list[object]:
    """The addons ``jectguard run`` loads: client checks first, observers after deciders."""
    from proxy_addons.admin.app import lists_from_report
    from proxy_addons.telemetry.events import EventLog, report_refresh_outcomes
    from proxy_addons.telemetry.metrics import Metrics

    from .addresses import Addresses
    from .admin import AdminServer
    from .blocking import Blocking
    from .campaign import Campaign
    from .clients import ClientAllowList
    from .dnsfilter import DnsFilter
    from .heap import FreezeStartupHeap
    from .ledger import LedgerAddon
    from .limits import ConnectionLimits
    from .observe import Observe
    from .refresh import Refresh
    from .strip import Strip
    from .tunnels import Tunnels

    events, metrics = EventLog(), Metrics()
    refresh = Refresh(
        holder,
        on_report=lambda rep: report_refresh_outcomes(events, metrics, rep),
        on_snapshot_event=lambda ev: events.emit("error", **ev.as_dict()),
    )
    metrics.set_health_provider(lambda: holder.health)
    blocking = Blocking(holder)
    observe = Observe(events, metrics, holder)
    campaign = Campaign(holder, events, metrics, cache_dir=cache_dir)
    return [
        ClientAllowList(),
        blocking,
        Tunnels(blocking, on_decision=observe.connection_decision),
        # Every resolved address meets the configured destination policy (read at each
        # use: `configure` replaces ``blocking.policy``); reverse mode is exempt there.
        Addresses(
            blocking,
            refuses=lambda ip: blocking.policy.refuses(ip),
            on_refusal=observe.address_refusal,
        ),
        Strip(holder),
        campaign,  # after the stripper: it reads the page the browser gets
        ConnectionLimits(),  # after the deciders: its next_layer sees their choice
        refresh,
        DnsFilter(holder, events, metrics),
        observe,
        ledger := LedgerAddon(holder, events, metrics),
        AdminServer(
            holder,
            events,
            metrics,
            data_dir=cache_dir,
            lists=lists_from_report(report, cache_dir) if report is not None else None,
            refresh_status=refresh.status,
            refresh_trigger=refresh.trigger,
            campaigns=campaign,
            retro_hits=ledger.recent_hits,
        ),
        FreezeStartupHeap(),
    ]


def deciders() -> tuple[type, ...]:
    """The children whose hooks decide what traffic may pass.

    An exception in one of their traffic hooks refuses that traffic. The others
    observe (events, metrics, ledger, campaign detection, admin, refresh): their
    errors are logged and traffic goes on.
    """
    from .addresses import Addresses
    from .blocking import Blocking
    from .clients import ClientAllowList
    from .dnsfilter import DnsFilter
    from .limits import ConnectionLimits
    from .strip import Strip
    from .tunnels import Tunnels

    return (ClientAllowList, Blocking, Tunnels, Addresses, Strip, ConnectionLimits, DnsFilter)


class Handler(Protocol):
    """A bound hook method: mitmproxy passes the event's fields as positional arguments."""

    def __call__(self, *args: Any) -> object: ...


def _hook_names() -> frozenset[str]:
    """Every event name mitmproxy can dispatch (each hook's module registers it on import)."""
    import mitmproxy.addonmanager  # load
    import mitmproxy.log  # add_log
    import mitmproxy.proxy.layers  # http, tcp, udp, tls, dns, quic, websocket
    import mitmproxy.proxy.server_hooks  # client and server connections
    from mitmproxy import hooks

    del mitmproxy
    return frozenset(hooks.all_hooks) | {"load"}


def chain(handlers: Sequence[Handler]) -> Handler:
    """One callable that calls ``handlers`` in order, as mitmproxy would call separate addons.

    Synchronous while every handler is: most hooks of an allowed request are, and a
    coroutine per event costs more than the hook. A handler that returns an
    awaitable (an ``async def``, or a plain method that returns one only for a slow
    case) makes the rest run in a coroutine that awaits it first, which is returned
    for mitmproxy to await. An exception in one ends the event for those after it.
    """
    if not handlers:
        return _nothing
    if len(handlers) == 1:
        return handlers[0]
    handlers = tuple(handlers)

    def call_all(*args: Any) -> Awaitable[None] | None:
        for i, handler in enumerate(handlers):
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                return _finish(result, handlers[i + 1 :], args)
        return None

    return call_all


def _nothing(*args: Any) -> None:
    return None


async def _finish(pending: Awaitable[Any], rest: Sequence[Handler], args: tuple[Any, ...]) -> None:
    await pending
    for handler in rest:
        result = handler(*args)
        if result is not None and inspect.isawaitable(result):
            await result


def addon_name(addon: object) -> str:
    """The name mitmproxy looks an addon up by (as ``mitmproxy.addonmanager._get_name``)."""
    return str(getattr(addon, "name", type(addon).__name__.lower()))


class Jectguard:
    """One top-level mitmproxy addon whose children are jectguard's addons, in order.

    Each hook a child defines is an attribute of this addon (see :func:`chain`),
    so mitmproxy dispatches to one addon, never walking the children. ``load``
    registers the children as mitmproxy registers the ``addons`` of an addon (a
    clashing name raises ``AddonManagerError``, ``addons.get("jectguard_block")``
    finds a child, its commands are collected) and ``done`` unregisters them, as
    ``AddonManager.remove`` does, once every child's ``done`` has run. Options,
    ``configure``, ``running`` and every traffic hook reach the children in order;
    an exception in a deciding child's traffic hook refuses that traffic (the flow
    killed, the connection closed or never opened, see :mod:`.failclosed`) and the
    children after it still run; an exception in an observer's hook or in a
    lifecycle hook ends that event for the children after it (mitmproxy logs it).
    The proxy keeps serving either way.
    """

    name = "jectguard"

    def __init__(self, addons: Sequence[object]) -> None:
        # Not ``self.addons``: mitmproxy would walk that list on every event.
        self.children: tuple[object, ...] = tuple(addons)
        self.hooks: dict[str, Handler] = {}
        from .failclosed import LIFECYCLE, FailClosed, guarded

        # A decider's traffic hook that raises refuses what it decided on (failclosed.py).
        self.fail_closed = FailClosed()
        decides = deciders()
        for hook in sorted(_hook_names()):
            handlers: list[Handler] = []
            own = getattr(self.fail_closed, hook, None) if hook not in LIFECYCLE else None
            if callable(own):
                handlers.append(own)
            for a in self.children:
                h = getattr(a, hook, None)
                if not callable(h):
                    continue
                if hook not in LIFECYCLE and isinstance(a, decides):
                    h = guarded(h, hook, addon_name(a), self.fail_closed)
                handlers.append(h)
            if handlers:
                self.hooks[hook] = chain(handlers)
                if hook not in ("load", "done"):  # those two are methods: they (un)register
                    setattr(self, hook, self.hooks[hook])
        self._load = self.hooks.get("load", _nothing)
        self._done = self.hooks.get("done", _nothing)

    def load(self, loader: Any) -> None:
        from mitmproxy import exceptions

        master = loader.master
        names = [addon_name(a) for a in self.children]
        for name in names:
            if name in master.addons.lookup or names.count(name) > 1:
                raise exceptions.AddonManagerError(f"An addon called '{name}' already exists.")
        self._load(loader)
        for name, addon in zip(names, self.children, strict=True):
            master.addons.lookup[name] = addon
        for addon in self.children:
            master.commands.collect_commands(addon)

    def done(self) -> Awaitable[None] | None:
        """Every child's ``done`` (some are coroutines), then the children leave the lookup."""
        result = self._done()
        if result is not None and inspect.isawaitable(result):
            return self._forget_after(result)
        self._forget()
        return None

    async def _forget_after(self, pending: Awaitable[Any]) -> None:
        try:
            await pending
        finally:
            self._forget()

    def _forget(self) -> None:
        from mitmproxy import ctx

        master = getattr(ctx, "master", None)
        if master is None:
            return
        for addon in self.children:
            name = addon_name(addon)
            if master.addons.lookup.get(name) is addon:
                del master.addons.lookup[name]


__all__ = [
    "Addresses",
    "AdminServer",
    "Blocking",
    "Campaign",
    "ClientAllowList",
    "ConnectionLimits",
    "DnsFilter",
    "EngineHolder",
    "FreezeStartupHeap",
    "Jectguard",
    "LedgerAddon",
    "Observe",
    "Refresh",
    "Strip",
    "Tunnels",
    "addon_name",
    "chain",
    "make_addons",
]
