"""URL rules written for an address apply to every name that resolves there (red team 2,
finding 5): each request is checked again at every address it may be sent on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mitmproxy import connection
from mitmproxy.connection import ConnectionState
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder
from proxy_addons.addons.addresses import Addresses
from proxy_addons.addons.blocking import METADATA_KEY, Blocking
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec, Mode

from .test_addresses import FakeDNS, hook
from .test_blocking import NAV, req

RULE = "http://192.0.2.2:18211/bins/mozi.m"
LISTED = "192.0.2.2"


def url_engine(mode: Mode = Mode.ENFORCE) -> Engine:
    lists = [
        (ListSpec(name="urlhaus", mode=mode), parse_list(f"{RULE}\nhttp://good.test/x/\n", "urls"))
    ]
    return Engine.from_lists(lists)[0]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDNS]:
    fake = FakeDNS()
    monkeypatch.setattr(Addresses, "_resolve", staticmethod(fake))
    yield fake


def on(client: connection.Client, url: str) -> object:
    f = req(url, NAV)
    f.client_conn = client
    return f


async def run_check(addresses: Addresses, f: object) -> None:
    pending = addresses.requestheaders(f)  # type: ignore[arg-type]
    if pending is not None:
        await pending


def test_the_index_says_whether_any_url_rule_names_an_address() -> None:
    assert url_engine().url_rules_on_addresses
    names_only = Engine.from_lists([(ListSpec(name="t"), parse_list("http://a.test/x\n", "urls"))])
    assert not names_only[0].url_rules_on_addresses


def test_check_at_address_reads_the_rule_for_the_address() -> None:
    e = url_engine()
    v = e.check_url("http://innocent.test:18211/bins/mozi.m")
    assert v.action is Action.PASS  # `jectguard check` cannot know where the name points
    assert v.canonical is not None
    at = e.check_at_address(v.canonical, LISTED)
    assert at.action is Action.BLOCK and at.match is not None and at.match.rule == RULE
    assert e.check_at_address(v.canonical, "192.0.2.3").action is Action.PASS
    assert e.check_at_address(v.canonical, "::ffff:192.0.2.2").action is Action.BLOCK


async def test_a_name_that_resolves_to_the_rules_address_is_blocked(dns: FakeDNS) -> None:
    dns.answers = [(LISTED,)]
    blocking = Blocking(EngineHolder(url_engine()))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        f = req("http://innocent.test:18211/bins/mozi.m", NAV)
        await run_check(addresses, f)
        assert f.response is not None and f.response.status_code == 403
        meta = f.metadata[METADATA_KEY]
        assert meta["stage"] == "address" and meta["verdict"]["rule"] == RULE
        # the other files on that server, and the same file elsewhere, pass
        other = req("http://innocent.test:18211/bins/other", NAV)
        await run_check(addresses, other)
        assert other.response is None


async def test_monitor_lists_log_and_pass(dns: FakeDNS) -> None:
    dns.answers = [(LISTED,)]
    blocking = Blocking(EngineHolder(url_engine(Mode.MONITOR)))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        f = req("http://innocent.test:18211/bins/mozi.m", NAV)
        blocking.requestheaders(f)
        await run_check(addresses, f)
        assert f.response is None and f.metadata[METADATA_KEY]["action"] == "monitor"


async def test_a_name_elsewhere_passes_and_nothing_is_checked_without_such_rules(
    dns: FakeDNS,
) -> None:
    dns.answers = [("192.0.2.9",)]
    blocking = Blocking(EngineHolder(url_engine()))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        f = req("http://elsewhere.test:18211/bins/mozi.m", NAV)
        await run_check(addresses, f)
        assert f.response is None
    names_only = Engine.from_lists([(ListSpec(name="t"), parse_list("http://a.test/x\n", "urls"))])
    blocking = Blocking(EngineHolder(names_only[0]))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        assert addresses.requestheaders(req("http://a.test/x/y")) is None
    assert dns.lookups == ["elsewhere.test"]


async def test_new_connections_pin_from_the_resolution_the_request_was_checked_against(
    dns: FakeDNS,
) -> None:
    """A rebinding name: harmless at the check, the listed address by the connect."""
    dns.answers = [("192.0.2.9",), (LISTED,)]
    blocking = Blocking(EngineHolder(url_engine()))
    addresses = Addresses(blocking, refuses=None)
    client = tflow.tclient_conn()
    with taddons.context(blocking, addresses):
        f = on(client, "http://rebind.test:18211/bins/mozi.m")
        await run_check(addresses, f)
        assert f.response is None  # 192.0.2.9 serves nothing listed
        addresses._cache.clear()  # the cached answer expired before the connect
        server = connection.Server(address=("rebind.test", 18211))
        await addresses.server_connect(hook(server, client))
        assert server.address == ("192.0.2.9", 18211)  # not the fresh answer
    assert dns.lookups == ["rebind.test"]


async def test_a_reused_connection_is_checked_at_its_own_address(dns: FakeDNS) -> None:
    """The tunnel's connection went to the listed address; the name now answers another."""
    dns.answers = [(LISTED,), ("192.0.2.9",)]
    blocking = Blocking(EngineHolder(url_engine()))
    addresses = Addresses(blocking, refuses=None)
    client = tflow.tclient_conn()
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("moving.test", 18211))
        await addresses.server_connect(hook(server, client))  # at CONNECT (eager)
        assert server.address == (LISTED, 18211)
        server.state = ConnectionState.OPEN
        addresses.server_connected(hook(server, client))
        addresses._cache.clear()
        f = on(client, "http://moving.test:18211/bins/mozi.m")
        await run_check(addresses, f)
        assert f.response is not None and f.response.status_code == 403
        # once that connection is closed, no request can be sent on it any more
        addresses.server_disconnected(hook(server, client))
        again = tflow.tclient_conn()
        g = on(again, "http://moving.test:18211/bins/mozi.m")
        await run_check(addresses, g)
        assert g.response is None
        addresses.client_disconnected(client)
        addresses.client_disconnected(again)
        assert not addresses._checked and not addresses._peers


async def test_the_option_to_skip_resolved_checks_skips_these_too(dns: FakeDNS) -> None:
    dns.answers = [(LISTED,)]
    blocking = Blocking(EngineHolder(url_engine()))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_check_resolved=False)
        f = req("http://innocent.test:18211/bins/mozi.m", NAV)
        await run_check(addresses, f)
        assert f.response is None


async def test_connections_opened_before_a_refresh_are_checked_at_their_address(
    dns: FakeDNS,
) -> None:
    """The lists that name the address arrive while the connection is open."""
    dns.answers = [(LISTED,), ("192.0.2.9",)]
    ip_rules = Engine.from_lists([(ListSpec(name="ips"), parse_list("198.51.100.7\n", "ips"))])
    holder = EngineHolder(ip_rules[0])
    blocking = Blocking(holder)
    addresses = Addresses(blocking, refuses=None)
    client = tflow.tclient_conn()
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("moving.test", 18211))
        await addresses.server_connect(hook(server, client))
        server.state = ConnectionState.OPEN
        addresses.server_connected(hook(server, client))
        holder.engine = url_engine()  # a refresh
        addresses._cache.clear()
        f = on(client, "http://moving.test:18211/bins/mozi.m")
        await run_check(addresses, f)
        assert f.response is not None and f.response.status_code == 403
