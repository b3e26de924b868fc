"""The DNS addon's hooks, called directly: failures fail closed, answers are read whole."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from mitmproxy import dns
from mitmproxy.net.dns import https_records, response_codes, types
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from proxy_addons.addons.dnsfilter import DnsFilter, answer_targets
from proxy_addons.core.engine import Engine
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics


def engine(text: str) -> Engine:
    return Engine.from_lists([(ListSpec(name="t"), parse_list(text))])[0]


class Exploding:
    def check_host(self, host: str) -> Any:
        raise RuntimeError("boom")


def query(name: str, qtype: int = types.A) -> dns.DNSMessage:
    req = tflow.tdnsreq()
    req.questions = [dns.Question(name, qtype, 1)]
    return req


async def test_a_failing_check_answers_servfail_never_passes() -> None:
    addon = DnsFilter(EngineHolder(Exploding()), EventLog(), Metrics())  # type: ignore[arg-type]
    with taddons.context(addon):
        f = tflow.tdnsflow(req=query("evil.example"))
        await addon.dns_request(f)
        assert f.response is not None and f.response.response_code == response_codes.SERVFAIL
        f = tflow.tdnsflow(req=query("evil.example"))
        f.response = f.request.succeed(
            [dns.ResourceRecord.A("evil.example", ipaddress.IPv4Address("192.0.2.1"))]
        )
        addon.dns_response(f)
        assert f.response.response_code == response_codes.SERVFAIL


async def test_only_dns_mode_flows_are_touched() -> None:
    addon = DnsFilter(EngineHolder(engine("evil.example\n")), EventLog(), Metrics())
    with taddons.context(addon):
        f = tflow.tdnsflow(req=query("evil.example"))
        f.client_conn.proxy_mode = ProxyMode.parse("wireguard")
        await addon.dns_request(f)
        assert f.response is None


async def test_unreadable_answers_are_not_passed_on() -> None:
    addon = DnsFilter(EngineHolder(engine("evil.example\n")), EventLog(), Metrics())
    with taddons.context(addon):
        f = tflow.tdnsflow(req=query("good.example"))
        bad = dns.ResourceRecord("good.example", types.A, 1, 60, b"\x01\x02")  # 2-byte address
        f.response = f.request.succeed([bad])
        addon.dns_response(f)
        assert f.response.response_code == response_codes.SERVFAIL


def test_answer_targets_reads_service_records() -> None:
    rec = https_records.HTTPSRecord(
        1, "svc.example", {4: ipaddress.IPv4Address("203.0.113.66").packed + bytes(4),
                           6: ipaddress.IPv6Address("2001:db8::1").packed},
    )  # fmt: skip
    rr = dns.ResourceRecord("x.example", types.HTTPS, 1, 60, https_records.pack(rec))
    assert answer_targets(rr) == ["svc.example", "203.0.113.66", "0.0.0.0", "2001:db8::1"]
    bad = https_records.HTTPSRecord(1, ".", {4: b"\x01\x02\x03"})
    with pytest.raises(ValueError):
        answer_targets(dns.ResourceRecord("x.example", types.SVCB, 1, 60, https_records.pack(bad)))
