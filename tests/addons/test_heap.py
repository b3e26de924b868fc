"""The start-up heap leaves the cyclic GC's reach once the proxy runs."""

from __future__ import annotations

import gc
import weakref

from proxy_addons.addons import FreezeStartupHeap, make_addons
from proxy_addons.core.engine import Engine
from proxy_addons.lists.holder import EngineHolder


class _Node:
    other: _Node | None = None


def test_running_freezes_what_exists_and_later_cycles_are_still_collected() -> None:
    gc.unfreeze()
    try:
        FreezeStartupHeap().running()
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # at least the interpreter's and pytest's own objects
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle made while serving
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_jectguard_run_loads_it() -> None:
    engine, _, _ = Engine.from_lists([])
    addons = make_addons(EngineHolder(engine))
    assert isinstance(addons[-1], FreezeStartupHeap)
