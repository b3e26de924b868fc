"""The one reference to the current engine that every addon reads."""

from __future__ import annotations

from collections.abc import Callable

from proxy_addons.core.engine import Engine
from proxy_addons.core.index import CompiledIndex
from proxy_addons.lists.health import IN_SYNC, SnapshotHealth


class EngineHolder:
    """Holds the engine in force; a refresh swaps in a new one atomically.

    Addons read ``holder.engine`` once per decision, so a decision never mixes
    two engines. Assigning one attribute is atomic in CPython, and the proxy
    reads it only from the event loop.
    """

    __slots__ = ("engine", "health", "extra", "on_swap")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # How the engine's snapshot relates to the store (the follower sets it): one
        # record that /readyz, /api/status and /metrics all read.
        self.health: SnapshotHealth = IN_SYNC
        # The proxy's own small block lists (the campaign list): kept across every swap,
        # so a refresh never drops a host the proxy blocked itself.
        self.extra: CompiledIndex | None = None
        # Called with (old, new) on every swap, on the event loop: must be quick and not raise
        # (the ledger keeps both to look up the rules the new engine adds).
        self.on_swap: list[Callable[[Engine, Engine], None]] = []

    def set_health(self, health: SnapshotHealth) -> None:
        self.health = health

    def swap(self, new: Engine) -> Engine:
        """Put ``new`` in force and return the engine it replaced (close it when done)."""
        if new.extra is not self.extra:
            new = new.with_extra(self.extra)
        old, self.engine = self.engine, new
        for listener in self.on_swap:
            listener(old, new)
        return old

    def set_extra(self, extra: CompiledIndex | None) -> None:
        """Put the proxy's own block lists in force, in this engine and every later one."""
        self.extra = extra
        self.engine = self.engine.with_extra(extra)
