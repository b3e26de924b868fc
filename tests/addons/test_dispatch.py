"""The ``Jectguard`` parent addon: one addon to mitmproxy, every child's hooks in order."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    # ldap3 (imported by mitmproxy's proxyauth) trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import addonmanager, exceptions, hooks, http
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder, Jectguard, addon_name, chain, make_addons
from proxy_addons.addons.blocking import METADATA_KEY
from tests.addons.test_blocking import make_engine


class Recorder:
    """A child that records each hook call; ``fail`` raises, ``slow`` awaits first."""

    def __init__(self, name: str, log: list[tuple[str, str]], **kinds: str) -> None:
        self.name = name
        self.log = log
        self.kinds = kinds

    def _call(self, hook: str) -> Any:
        kind = self.kinds.get(hook, "sync")
        if kind == "fail":
            self.log.append((self.name, hook))
            raise RuntimeError(f"{self.name} fails")
        if kind == "slow":

            async def later() -> None:
                await asyncio.sleep(0)
                self.log.append((self.name, hook))

            return later()
        self.log.append((self.name, hook))
        return None

    def requestheaders(self, flow: http.HTTPFlow) -> Any:
        return self._call("requestheaders")

    def response(self, flow: http.HTTPFlow) -> Any:
        return self._call("response")


class OnlyRequest:
    name = "only_request"

    def request(self, flow: http.HTTPFlow) -> None:
        flow.metadata["only"] = True


def test_mitmproxy_never_walks_the_children() -> None:
    """What mitmproxy walks on every event is the parent alone (it used to walk all 14)."""
    parent = Jectguard(make_addons(EngineHolder(make_engine())))
    assert list(addonmanager.traverse([parent])) == [parent]


def test_every_hook_a_child_defines_reaches_it() -> None:
    children = make_addons(EngineHolder(make_engine()))
    parent = Jectguard(children)
    with taddons.context(loadcore=False):  # every hook module imported, as in a proxy
        from mitmproxy.tools.dump import DumpMaster  # noqa: F401

    defined = {
        name
        for child in children
        for name in dir(child)
        if name in hooks.all_hooks and callable(getattr(child, name))
    }
    assert {"requestheaders", "response", "next_layer", "dns_request", "running"} <= defined
    assert defined <= set(parent.hooks) | {"load"}
    for name in defined - {"load", "done"}:
        assert getattr(parent, name) is parent.hooks[name]
    # an event no child handles is not an attribute: mitmproxy skips the addon
    assert getattr(parent, "websocket_message", None) is None


def test_a_hook_only_one_child_defines_is_its_own_method() -> None:
    child = OnlyRequest()
    parent = Jectguard([Recorder("a", []), child])
    assert parent.request == child.request  # no wrapper between mitmproxy and the child


async def test_children_are_called_in_order_and_a_failure_stops_the_event() -> None:
    log: list[tuple[str, str]] = []
    parent = Jectguard(
        [Recorder("a", log), Recorder("b", log, response="fail"), Recorder("c", log)]
    )
    f = tflow.tflow(resp=True)
    assert parent.requestheaders(f) is None  # all synchronous: no coroutine made
    assert log == [("a", "requestheaders"), ("b", "requestheaders"), ("c", "requestheaders")]
    log.clear()
    with pytest.raises(RuntimeError, match="b fails"):
        parent.response(f)
    assert log == [("a", "response"), ("b", "response")]  # c not called, as with addons


async def test_an_awaitable_is_awaited_before_the_next_child() -> None:
    log: list[tuple[str, str]] = []
    parent = Jectguard(
        [
            Recorder("a", log, response="slow"),
            Recorder("b", log),
            Recorder("c", log, response="slow"),
        ]
    )
    pending = parent.response(tflow.tflow(resp=True))
    assert pending is not None and log == []  # b waits for a's coroutine
    await pending
    assert log == [("a", "response"), ("b", "response"), ("c", "response")]


def test_chain_of_nothing_does_nothing() -> None:
    assert chain([])(1, 2) is None


async def test_children_register_like_mitmproxy_addons_and_leave_on_done() -> None:
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        children = make_addons(EngineHolder(make_engine()))
        parent = Jectguard(children)
        tctx.master.addons.add(parent)
        for child in children:
            assert tctx.master.addons.get(addon_name(child)) is child
        assert "jg_mode" in tctx.options and "jg_campaign" in tctx.options  # children's load ran
        tctx.options.update(jg_mode="monitor")  # configure reaches the children
        assert tctx.master.addons.get("jectguard_block").enforce is False
        # a second set of children with the same names is refused, as mitmproxy refuses it
        again = Jectguard(make_addons(EngineHolder(make_engine())))
        again.name = "jectguard_again"  # type: ignore[misc]
        with pytest.raises(exceptions.AddonManagerError, match="jectguard_clients"):
            tctx.master.addons.add(again)
        await tctx.master.addons.invoke_addon(parent, hooks.DoneHook())
        for child in children:
            assert tctx.master.addons.get(addon_name(child)) is None


async def test_a_duplicate_child_name_is_refused() -> None:
    with (
        taddons.context(loadcore=False) as tctx,
        pytest.raises(exceptions.AddonManagerError, match="only_request"),
    ):
        tctx.master.addons.add(Jectguard([OnlyRequest(), OnlyRequest()]))


async def test_a_request_through_mitmproxys_dispatch_is_checked() -> None:
    """The whole chain, dispatched by mitmproxy as the proxy does: a listed host is blocked."""
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        tctx.master.addons.add(Jectguard(make_addons(EngineHolder(make_engine()))))
        tctx.options.update(jg_events_file="", jg_admin_port=0, jg_refresh_role="off")
        for url, action in (("http://evil.test/x", "block"), ("http://good.test/ok", "pass")):
            f = tflow.tflow()
            f.request.url = url
            f.live = True
            await tctx.master.addons.handle_lifecycle(http_layer.HttpRequestHeadersHook(f))
            assert f.metadata[METADATA_KEY]["action"] == action
            assert (f.response is not None) is (action == "block")
            if f.response is not None:
                assert f.response.status_code == 403
