"""mitmproxy's event dispatch, same semantics, a fraction of the CPU (``jectguard run`` only).

Half of a proxy's event-loop time on a small allowed request is mitmproxy's
``AddonManager.trigger_event`` (py-spy; README "Where the allowed path's CPU
goes"). For each of a request's ~8 events (four flow hooks, each followed by
``update``) and each of its ~37 top-level addons it makes a ``safecall()``
context manager, an ``invoke_addon`` coroutine, an ``_iter_hooks`` and a
``traverse`` generator, and calls ``Hook.args()`` (``dataclasses.fields``) for
every handler: ~2 us per addon per event, whether the addon handles the event
or not. :class:`FastDispatch` does the same walk with plain loops, one
``try`` per top-level addon, the event's arguments read once per event, and an
``await`` only for a handler that returned an awaitable. ``bench_dispatch.py``
(CPU of one allowed request's hooks and dispatch, no sockets): plain mitmdump's
chain 564 us; jectguard's (one more addon, its hooks) 678 us under mitmproxy's
dispatch, 138 us under this one.

What stays exactly as in mitmproxy 12 (``tests/cli/test_dispatch.py``
runs both managers on the same cases): addons and their ``addons`` children in
order, walked afresh on every event (scripts come and go); a handler attribute
that is neither callable nor a module is an error; an exception in one
top-level addon is logged as "Addon error: ..." and the next addon still runs;
``AddonHalt`` ends the event; ``OptionsError`` propagates. Every other method
(``register``, ``add``, ``remove``, ``invoke_addon``, the synchronous
``trigger``) is mitmproxy's own. A mitmproxy other than 12.x keeps its own
dispatch (:func:`install` says so in the log).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Iterator
from typing import Any, Final

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall

logger = logging.getLogger(__name__)

# The mitmproxy major version whose trigger_event this reproduces.
MITMPROXY_MAJOR: Final = 12


def _handlers(addon: Any, name: str) -> Iterator[tuple[Any, Any]]:
    """(addon, handler) for ``addon`` and its ``addons``, depth first (mitmproxy's traverse)."""
    func = getattr(addon, name, None)
    if func:
        if callable(func):
            yield addon, func
        elif not isinstance(func, types.ModuleType):
            raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
    children = getattr(addon, "addons", None)
    if children is not None:
        for child in children:
            yield from _handlers(child, name)


class FastDispatch(AddonManager):
    """``AddonManager`` with a cheaper ``trigger_event``; see the module docstring."""

    async def trigger_event(self, event: hooks.Hook) -> None:
        name = event.name
        args: list[Any] | None = None
        for addon in self.chain:
            try:
                if not hasattr(addon, "addons"):  # the common case: one addon, no walk
                    func = getattr(addon, name, None)
                    if not func:
                        continue
                    if not callable(func):
                        if isinstance(func, types.ModuleType):
                            continue
                        raise exceptions.AddonManagerError(
                            f"Addon handler {name} ({addon}) not callable"
                        )
                    if args is None:
                        args = event.args()
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                    continue
                for _, func in _handlers(addon, name):
                    if args is None:
                        args = event.args()
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as exc:
                _log_addon_error(exc)


def _log_addon_error(exc: Exception) -> None:
    """Log as mitmproxy's ``safecall`` does ("Addon error: ..." with the traceback)."""
    try:
        with safecall():
            raise exc
    finally:
        del exc  # no reference cycle through the traceback


def install(master: Any) -> bool:
    """Give ``master`` the cheaper dispatch; False (and a debug line) on another mitmproxy."""
    from mitmproxy import version

    major = version.VERSION.split(".", 1)[0]
    if major != str(MITMPROXY_MAJOR) or type(master.addons) is not AddonManager:
        logger.debug("jectguard: mitmproxy %s keeps its own event dispatch", version.VERSION)
        return False
    master.addons.__class__ = FastDispatch
    return True


__all__ = ["MITMPROXY_MAJOR", "FastDispatch", "install"]
