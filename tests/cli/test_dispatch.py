"""FastDispatch dispatches events exactly as mitmproxy's AddonManager, on the same cases."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow

from proxy_addons.cli import dispatch
from proxy_addons.cli.dispatch import FastDispatch, install

Log = list[str]


class Node:
    """An addon that records its hooks; ``kids`` become its ``addons``."""

    def __init__(self, name: str, log: Log, *kids: Node, **how: str) -> None:
        self.name = name
        self.log = log
        self.how = how
        if kids:
            self.addons = list(kids)

    def _do(self, hook: str) -> Any:
        kind = self.how.get(hook, "sync")
        self.log.append(f"{self.name}.{hook}")
        if kind == "raise":
            raise RuntimeError(f"{self.name} broke")
        if kind == "halt":
            raise exceptions.AddonHalt()
        if kind == "options":
            raise exceptions.OptionsError(f"{self.name} option")
        if kind == "async":

            async def later() -> None:
                await asyncio.sleep(0)
                self.log.append(f"{self.name}.{hook} done")

            return later()
        return None

    def request(self, flow: Any) -> Any:
        return self._do("request")

    def update(self, flows: Any) -> Any:
        return self._do("update")

    def running(self) -> Any:
        return self._do("running")


class AsyncNode(Node):
    async def response(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self.log.append(f"{self.name}.response")


class ModuleNamed(Node):
    """An addon that imported a module under a hook's name (mitmproxy skips it)."""

    responseheaders = types.ModuleType("responseheaders")


class NotCallable(Node):
    responseheaders = 42

    def __repr__(self) -> str:
        return f"NotCallable({self.name})"


Scenario = Callable[[Log], list[Any]]


def tree(log: Log) -> list[Any]:
    return [
        Node("a", log, Node("a1", log), Node("a2", log, Node("a2x", log, request="async"))),
        AsyncNode("b", log, request="async"),
        ModuleNamed("c", log),
        Node("d", log),
    ]


def failing(log: Log) -> list[Any]:
    return [
        Node("a", log, Node("a1", log, request="raise"), Node("a2", log)),
        Node("b", log),
        NotCallable("c", log),
        Node("d", log),
    ]


def halting(log: Log) -> list[Any]:
    return [Node("a", log), Node("b", log, Node("b1", log, request="halt")), Node("c", log)]


async def _run(manager_class: type[AddonManager], scenario: Scenario) -> tuple[Log, list[str]]:
    """The calls and the error lines one scenario gives through one manager."""
    log: Log = []
    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Catch()
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        with taddons.context(loadcore=False) as tctx:
            tctx.master.addons.__class__ = manager_class
            tctx.master.addons.add(*scenario(log))
            log.clear()  # registration is mitmproxy's own in both
            f = tflow.tflow(resp=True)
            for event in (
                http_layer.HttpRequestHook(f),
                http_layer.HttpResponseHeadersHook(f),
                http_layer.HttpResponseHook(f),
                hooks.RunningHook(),
            ):
                log.append(f"-- {event.name}")
                if event.args():  # a flow event, followed by `update` as the proxy does
                    await tctx.master.addons.handle_lifecycle(event)
                else:
                    await tctx.master.addons.trigger_event(event)
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
    return log, errors


@pytest.mark.parametrize("scenario", [tree, failing, halting], ids=lambda s: s.__name__)
async def test_same_calls_same_errors_as_mitmproxy(scenario: Scenario) -> None:
    theirs = await _run(AddonManager, scenario)
    ours = await _run(FastDispatch, scenario)
    assert ours == theirs
    assert theirs[0]  # the scenario did call something


def _request_calls(log: Log) -> Log:
    """The calls of the request event, up to the update event that follows it."""
    out = []
    for entry in log[log.index("-- request") + 1 :]:
        if entry.endswith(".update"):
            break
        out.append(entry)
    return out


async def test_the_cases_do_what_they_say() -> None:
    """The scenarios above cover order, awaiting, errors and halting (read on FastDispatch)."""
    log, errors = await _run(FastDispatch, tree)
    request = _request_calls(log)
    assert request == ["a.request", "a1.request", "a2.request", "a2x.request",
                       "a2x.request done", "b.request", "b.request done", "c.request", "d.request"]  # fmt: skip
    assert "b.response" in log and not errors
    log, errors = await _run(FastDispatch, failing)
    request = _request_calls(log)
    assert request == ["a.request", "a1.request", "b.request", "c.request", "d.request"]
    assert any("a1 broke" in e for e in errors)
    assert any("responseheaders" in e and "not callable" in e for e in errors)
    log, _ = await _run(FastDispatch, halting)
    request = _request_calls(log)
    assert request == ["a.request", "b.request", "b1.request"]  # c never sees it


async def test_options_error_propagates_and_children_added_later_are_seen() -> None:
    for manager in (AddonManager, FastDispatch):
        log: Log = []
        with taddons.context(loadcore=False) as tctx:
            tctx.master.addons.__class__ = manager
            parent = Node("p", log, Node("p1", log))
            tctx.master.addons.add(parent, Node("q", log, running="options"))
            with pytest.raises(exceptions.OptionsError):
                await tctx.master.addons.trigger_event(hooks.RunningHook())
            parent.addons.append(Node("p2", log))  # as a script loader adds scripts
            log.clear()
            await tctx.master.addons.trigger_event(http_layer.HttpRequestHook(tflow.tflow()))
            assert log == ["p.request", "p1.request", "p2.request", "q.request"], manager


def test_install_swaps_only_a_stock_manager_on_mitmproxy_12(monkeypatch: Any) -> None:
    with taddons.context(loadcore=False) as tctx:
        assert install(tctx.master) and type(tctx.master.addons) is FastDispatch
        assert not install(tctx.master)  # already done
    with taddons.context(loadcore=False) as tctx:
        monkeypatch.setattr("mitmproxy.version.VERSION", "13.0.0")
        assert not install(tctx.master) and type(tctx.master.addons) is AddonManager
    assert dispatch.MITMPROXY_MAJOR == 12


async def test_jectguard_run_builds_its_master_with_it() -> None:
    from mitmproxy.log import LegacyLogEvents
    from mitmproxy.options import Options

    from proxy_addons.cli.run import make_master

    master = make_master(Options())
    try:
        assert type(master.addons) is FastDispatch
        assert master.addons.get("termlog") is not None and master.addons.get("dumper")
        assert not any(isinstance(h, LegacyLogEvents) for h in logging.getLogger().handlers)
    finally:
        await master.addons.trigger_event(hooks.DoneHook())
