"""jectguard's mitmproxy addons; ``make_addons(holder)`` returns them in load order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..events import EventLog
from ..metrics import Metrics
from .admin import AdminServer
from .blocking import Blocking
from .clients import ClientAllowList
from .heap import FreezeStartupHeap
from .holder import EngineHolder
from .observe import Observe
from .refresh import Refresh
from .strip import Strip


def make_addons(
    holder: EngineHolder, *, report: Any = None, cache_dir: Path | None = None
) -> list[object]:
    """The addons ``jectguard run`` loads: client checks first, observers after deciders."""
    from ..admin import lists_from_report
    from ..events import report_refresh_outcomes

    events, metrics = EventLog(), Metrics()
    refresh = Refresh(holder, on_report=lambda rep: report_refresh_outcomes(events, metrics, rep))
    return [
        ClientAllowList(),
        Blocking(holder),
        Strip(holder),
        refresh,
        Observe(events, metrics, holder),
        AdminServer(
            holder,
            events,
            metrics,
            data_dir=cache_dir,
            lists=lists_from_report(report, cache_dir) if report is not None else None,
            refresh_status=refresh.status,
            refresh_trigger=refresh.trigger,
        ),
        FreezeStartupHeap(),
    ]


__all__ = [
    "AdminServer",
    "Blocking",
    "ClientAllowList",
    "EngineHolder",
    "FreezeStartupHeap",
    "Observe",
    "Refresh",
    "Strip",
    "make_addons",
]
