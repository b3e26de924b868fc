"""The addresses addon: resolve once, check every address, connect to the one checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from mitmproxy import connection
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder
from proxy_addons.addons.addresses import Addresses
from proxy_addons.addons.blocking import METADATA_KEY, Blocking
from proxy_addons.addons.blockpage import HEADER_NAME
from proxy_addons.addons.decide import Act, Decision, Stage
from proxy_addons.addons.observe import Observe
from proxy_addons.core.destinations import DestinationPolicy
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

from .test_blocking import NAV, connect_flow, make_engine, req


class FakeDNS:
    """A resolver whose answers the test scripts: each lookup pops the next answer."""

    def __init__(self, *answers: tuple[str, ...]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> tuple[tuple[str, ...], str | None]:
        self.lookups.append(host)
        try:
            return (str(ipaddress.ip_address(host)),), None
        except ValueError:
            pass
        if not self.answers:
            return (), f"cannot resolve {host}"
        return self.answers.pop(0), None


@pytest.fixture
def blocking() -> Blocking:
    return Blocking(EngineHolder(make_engine()))


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDNS]:
    fake = FakeDNS()
    monkeypatch.setattr(Addresses, "_resolve", staticmethod(fake))
    yield fake


def hook(server: connection.Server, client: connection.Client | None = None) -> object:
    return server_hooks.ServerConnectionHookData(server, client or tflow.tclient_conn())


async def test_rebinding_name_connects_to_the_checked_address(
    blocking: Blocking, dns: FakeDNS
) -> None:
    """The name answers 192.0.2.1 (fine), then 198.51.100.7 (listed): one lookup, pinned."""
    dns.answers = [("192.0.2.1",), ("198.51.100.7",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("rebind.test", 443))
        await addresses.server_connect(hook(server))
        assert server.error is None
        assert server.address == ("192.0.2.1", 443)  # mitmproxy connects here, nowhere else
        server.state = ConnectionState.OPEN
        addresses.server_connected(hook(server))
        assert server.address == ("rebind.test", 443)  # the name again: SNI, reuse, logs
        again = connection.Server(address=("rebind.test", 443))
        await addresses.server_connect(hook(again))
        assert again.address == ("192.0.2.1", 443)
    assert dns.lookups == ["rebind.test"]


async def test_failed_connect_gets_its_name_back(blocking: Blocking, dns: FakeDNS) -> None:
    dns.answers = [("192.0.2.1",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("a.test", 80))
        await addresses.server_connect(hook(server))
        server.error = "connection refused"
        addresses.server_connect_error(hook(server))
        assert server.address == ("a.test", 80)


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        (("198.51.100.7",), True),
        (("203.0.113.200",), True),
        (("192.0.2.1", "203.0.113.9"), True),  # any listed address refuses the name
        (("::ffff:198.51.100.7",), True),
        (("192.0.2.1",), False),
    ],
)
async def test_server_connect_checks_every_resolved_address(
    blocking: Blocking, dns: FakeDNS, answer: tuple[str, ...], refused: bool
) -> None:
    dns.answers = [answer]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("name.test", 80))
        await addresses.server_connect(hook(server))
        assert bool(server.error) is refused
        if refused:
            assert server.address == ("name.test", 80)  # never pinned, never connected


async def test_a_name_that_does_not_resolve_fails_closed(blocking: Blocking, dns: FakeDNS) -> None:
    """Never left to mitmproxy's own lookup, which could answer differently."""
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("nowhere.test", 80))
        await addresses.server_connect(hook(server))
        assert server.error and "cannot resolve" in server.error


async def test_real_resolver(blocking: Blocking) -> None:
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("localhost", 80))  # 127.0.0.1 is in 127.0.0.0/31
        await addresses.server_connect(hook(server))
        assert server.error and "127.0.0.1" in server.error
        server = connection.Server(address=("no-such-host.invalid", 80))
        await addresses.server_connect(hook(server))
        assert server.error and "no connection was made" in server.error


async def test_monitor_mode_only_logs(blocking: Blocking, dns: FakeDNS) -> None:
    dns.answers = [("198.51.100.7",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_mode="monitor")
        server = connection.Server(address=("name.test", 80))
        await addresses.server_connect(hook(server))
        assert server.error is None and server.address == ("198.51.100.7", 80)


async def test_upstream_mode_leaves_resolving_to_the_parent(
    blocking: Blocking, dns: FakeDNS
) -> None:
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        client = tflow.tclient_conn()
        client.proxy_mode = connect_flow(
            "x", mode="upstream:http://127.0.0.1:3128"
        ).client_conn.proxy_mode
        server = connection.Server(address=("name.test", 80))
        await addresses.server_connect(hook(server, client))
        assert server.error is None and dns.lookups == []


async def test_plain_http_to_a_listed_address_gets_the_block_page(
    blocking: Blocking, dns: FakeDNS
) -> None:
    dns.answers = [("203.0.113.9",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        f = req("http://innocent.test/page", NAV)
        pending = addresses.requestheaders(f)
        assert pending is not None
        await pending
        assert f.response is not None and f.response.status_code == 403
        assert "list=malware" in f.response.headers[HEADER_NAME]
        assert b"203.0.113.0/24" in f.response.content and b"IP address" in f.response.content
        assert f.metadata[METADATA_KEY]["stage"] == "address"
        # the next request is answered from the checked resolution, without a lookup
        f2 = req("http://innocent.test/other", NAV)
        assert addresses.requestheaders(f2) is None
        assert f2.response is not None and f2.response.status_code == 403
    assert dns.lookups == ["innocent.test"]


async def test_allowed_address_costs_no_await_after_the_first(
    blocking: Blocking, dns: FakeDNS
) -> None:
    dns.answers = [("192.0.2.1",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        first = addresses.requestheaders(req("http://fine.test/"))
        assert first is not None
        await first
        f = req("http://fine.test/again")
        assert addresses.requestheaders(f) is None and f.response is None


async def test_connect_to_a_listed_address_keeps_the_tunnel_local(
    blocking: Blocking, dns: FakeDNS
) -> None:
    dns.answers = [("198.51.100.7",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        f = connect_flow("innocent.test")
        pending = addresses.http_connect(f)
        assert pending is not None
        await pending
        assert f.response is not None and f.response.status_code == 200
        assert blocking.refused[f.client_conn.id][1] == "address"
        # the request inside the tunnel gets the block page; nothing connects upstream
        inner = req("https://innocent.test/", NAV)
        inner.client_conn = f.client_conn
        blocking.requestheaders(inner)
        assert inner.response is not None and inner.response.status_code == 403
        server = connection.Server(address=("innocent.test", 443))
        await addresses.server_connect(hook(server, f.client_conn))
        assert server.error and "blocked" in server.error


async def test_connect_to_a_listed_address_without_interception_is_403(
    blocking: Blocking, dns: FakeDNS
) -> None:
    dns.answers = [("198.51.100.7",)]
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_intercept=False)
        f = connect_flow("innocent.test")
        pending = addresses.http_connect(f)
        assert pending is not None
        await pending
        assert f.response is not None and f.response.status_code == 403
        assert "list=malware" in f.response.headers[HEADER_NAME]
        # the next CONNECT is answered from the checked resolution, without an await
        f2 = connect_flow("innocent.test")
        assert addresses.http_connect(f2) is None
        assert f2.response is not None and f2.response.status_code == 403
    assert dns.lookups == ["innocent.test"]


# -- the destination policy hook -------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "refused"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1", True),
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("10.0.0.1", False),  # private networks are often the intranet a proxy serves
    ],
)
def test_minimal_policy(ip: str, refused: bool) -> None:
    assert (DestinationPolicy().refuses(ipaddress.ip_address(ip)) is not None) is refused


async def test_policy_applies_to_every_resolved_address(blocking: Blocking, dns: FakeDNS) -> None:
    """A public name that resolves to loopback or metadata is refused, in every mode."""
    dns.answers = [("192.0.2.1", "169.254.169.254"), ("127.0.0.1",)]
    addresses = Addresses(blocking, refuses=lambda ip: blocking.policy.refuses(ip))
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_mode="monitor", jg_check_resolved=False)
        server = connection.Server(address=("metadata.test", 80))
        await addresses.server_connect(hook(server))
        assert server.error and "169.254.169.254 is a cloud metadata address" in server.error
        f = req("http://loopback.test/")
        pending = addresses.requestheaders(f)
        assert pending is not None
        await pending
        assert f.response is not None and f.response.status_code == 403
        assert b"127.0.0.1 is a" in f.response.content  # loopback, or the own address


async def test_without_policy_or_ip_rules_nothing_is_resolved(dns: FakeDNS) -> None:
    from proxy_addons.core.engine import Engine

    empty, _, _ = Engine.from_lists([])
    blocking = Blocking(EngineHolder(empty))
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses):
        server = connection.Server(address=("name.test", 80))
        await addresses.server_connect(hook(server))
        assert addresses.requestheaders(req("http://name.test/")) is None
        assert server.address == ("name.test", 80) and dns.lookups == []


async def test_ipv6_request_url_keeps_its_url_rules() -> None:
    """mitmproxy's Request.url leaves an IPv6 host bare; the check builds it with brackets."""
    from proxy_addons.core.engine import Engine
    from proxy_addons.core.formats import parse_list
    from proxy_addons.core.model import ListSpec

    urls = parse_list("http://[2001:db8::5]/bad/\n", "urls")
    engine, _, _ = Engine.from_lists([(ListSpec(name="urls"), urls)])
    blocking = Blocking(EngineHolder(engine))
    with taddons.context(blocking):
        f = req("http://[2001:db8::5]:8080/bad/x", NAV)
        assert f.request.url == "http://2001:db8::5:8080/bad/x"  # what mitmproxy gives
        blocking.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert f.metadata[METADATA_KEY]["stage"] == "request"


async def test_a_grant_for_the_name_never_unlocks_its_listed_address(
    blocking: Blocking, dns: FakeDNS
) -> None:
    """main's server_connect let a name's grant (``_granted_name``) open an IP/CIDR block."""
    dns.answers = [("198.51.100.7",)]
    refusals: list[tuple[str, Decision, str, str]] = []
    addresses = Addresses(blocking, refuses=None, on_refusal=lambda *a: refusals.append(a))
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_proceed_anyway=True)
        client = tflow.tclient_conn()
        assert blocking.signer is not None
        blocking.signer.grant(client.peername[0], "moved.test")
        blocking.signer.grant(client.peername[0], "198.51.100.7")
        server = connection.Server(address=("moved.test", 80))
        await addresses.server_connect(hook(server, client))
        assert server.error and "198.51.100.7" in server.error
        assert server.address == ("moved.test", 80)
        # the observe addon gets the decision itself, typed (never parses the error text)
        ((server_id, d, _, host),) = refusals
        assert server_id == server.id and host == "moved.test"
        assert d.stage is Stage.ADDRESS and d.action is Act.BLOCK
        assert d.checked is not None and d.checked.input == "198.51.100.7"


@pytest.mark.parametrize(
    ("answer", "stage", "list_name", "reason"),
    [
        (("203.0.113.9",), "address", "malware", None),  # a listed address
        (("169.254.169.254",), "destination", None, "cloud metadata"),  # the policy
    ],
)
async def test_a_refused_connection_becomes_one_event_with_its_flow(
    blocking: Blocking,
    dns: FakeDNS,
    answer: tuple[str, ...],
    stage: str,
    list_name: str | None,
    reason: str | None,
) -> None:
    # Blocking, addresses and observe together: the refusal reaches the event stream
    # with the flow's client, method and URL. A policy refusal (a name resolving inward)
    # was never an event while observe parsed the error text of list blocks only.
    events, metrics = EventLog(), Metrics()
    observe = Observe(events, metrics, blocking.holder)
    addresses = Addresses(
        blocking,
        refuses=lambda ip: DestinationPolicy().refuses(ip),
        on_refusal=observe.address_refusal,
    )
    dns.answers = [answer]
    with taddons.context(blocking, addresses, observe) as tctx:
        tctx.configure(observe, jg_events_file="")
        f = req("http://name.test/page")
        f.server_conn.address = ("name.test", 80)
        await addresses.server_connect(hook(f.server_conn, f.client_conn))
        assert f.server_conn.error and "no connection was made" in f.server_conn.error
        f.error = tflow.terr(f.server_conn.error)  # what mitmproxy then reports
        observe.error(f)
        observe.error(f)
        (ev,) = events.recent()
        assert ev["event"] == "block" and ev["stage"] == stage
        assert ev["url"] == "http://name.test/page" and ev["host"] == "name.test"
        assert ev["list"] == list_name and len(ev["request_id"]) == 12
        if reason is not None:
            assert reason in ev["reason"]
        else:
            assert ev["address"] == answer[0] and ev["category"] == "malware"


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
async def test_refused_client_never_connects_in_any_mode(
    blocking: Blocking, dns: FakeDNS, mode: str
) -> None:
    """``refused`` holds only refusing decisions (in monitor mode: an unreadable SNI)."""
    addresses = Addresses(blocking, refuses=None)
    with taddons.context(blocking, addresses) as tctx:
        tctx.configure(blocking, jg_mode=mode)
        client = tflow.tclient_conn()
        bad = blocking.holder.engine.check_host("999.1.1.1.1")
        blocking.refused[client.id] = (bad, "sni", "https://999.1.1.1.1/")
        server = connection.Server(address=("example.test", 443))
        await addresses.server_connect(hook(server, client))
        assert server.error and "cannot be read" in server.error
    assert dns.lookups == []


async def test_policy_changes_apply_at_once(blocking: Blocking, dns: FakeDNS) -> None:
    """The policy is read at use time and a cached resolution does not outlive it."""
    dns.answers = [("127.0.0.5",)]
    addresses = Addresses(blocking, refuses=lambda ip: blocking.policy.refuses(ip))
    with taddons.context(blocking, addresses) as tctx:
        server = connection.Server(address=("local.test", 80))
        await addresses.server_connect(hook(server))
        assert server.error and "127.0.0.5 is" in server.error
        tctx.configure(blocking, jg_allow_destination=["127.0.0.0/8"])
        addresses.configure({"jg_allow_destination"})
        dns.answers = [("127.0.0.5",)]
        server = connection.Server(address=("local.test", 80))
        await addresses.server_connect(hook(server))
        assert server.error is None and server.address == ("127.0.0.5", 80)
