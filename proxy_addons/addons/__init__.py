"""jectguard's mitmproxy addons; ``make_addons(holder)`` returns them in load order."""

from __future__ import annotations

from .blocking import Blocking
from .clients import ClientAllowList
from .holder import EngineHolder


def make_addons(holder: EngineHolder) -> list[object]:
    """The addons ``jectguard run`` loads, client checks first."""
    return [ClientAllowList(), Blocking(holder)]


__all__ = ["Blocking", "ClientAllowList", "EngineHolder", "make_addons"]
