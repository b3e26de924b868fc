"""jectguard's mitmproxy addons; ``make_addons(holder)`` returns them in load order.

``jectguard run`` loads them as the children of one ``Jectguard`` addon: mitmproxy
dispatches every event to every top-level addon with a coroutine and an error
guard of its own, so seven top-level addons cost seven of each on each of a
request's hooks even where they have nothing to do. As children they cost one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
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


def make_addons(
    holder: EngineHolder, *, report: Any = None, cache_dir: Path | None = None
) -> list[object]:
    """The addons ``jectguard run`` loads: client checks first, observers after deciders."""
    from proxy_addons.admin.app import lists_from_report
    from proxy_addons.telemetry.events import report_refresh_outcomes

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


class Jectguard:
    """One top-level mitmproxy addon whose children are jectguard's addons, in order.

    Options, commands and hooks of the children work as if each were loaded on
    its own (mitmproxy walks ``addons``), and ``addons.get("jectguard_block")``
    still finds a child. An exception in one child's hook ends that event for
    the children after it (mitmproxy logs it); the proxy keeps serving.
    """

    name = "jectguard"

    def __init__(self, addons: list[object]) -> None:
        self.addons = addons


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
    "make_addons",
]
