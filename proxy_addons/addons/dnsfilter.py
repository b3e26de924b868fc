"""DNS mode: the same lists answer DNS for a whole network (phones, TVs, other browsers).

- ``dns_request``: a query for a name on a domain, exact-host or IP list is
  answered at once, never asked upstream (a blocked C2 name must not reach the
  attacker's name server, where DNS tunnels end). Allowed queries are forwarded,
  as Pi-hole does, to the first answering server of ``dns_name_servers`` (else
  the system's), so the client gets the upstream's own answer with its CNAME
  chain, TTLs and flags.
- ``dns_response``: a CNAME chain that reaches a blocked name, or an A/AAAA
  answer on an IP or CIDR list, is replaced by the block answer (CNAME cloaking,
  fast-flux hosts only the IP lists know).

URL rules never block a name: a malicious file on a shared host does not block
the host. This addon must run before mitmproxy's ``dnsresolver``, which would
otherwise ask upstream first; ``jectguard run`` orders them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

from mitmproxy import ctx, dns, exceptions
from mitmproxy.net.dns import https_records, response_codes, types
from mitmproxy.proxy import mode_specs

from proxy_addons.core.dnspolicy import (
    DEFAULT_BLOCK_TTL,
    DEFAULT_RATE,
    BlockAnswer,
    LogBudget,
    NameServer,
    RateLimiter,
    parse_block_answer,
    parse_name_server,
)
from proxy_addons.core.engine import Action, Verdict
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

METADATA_KEY: Final = "jectguard_dns"
# One upstream gets this long to answer before the next is tried.
UPSTREAM_TIMEOUT_SECONDS: Final = 4.0
# Answers that name another host or carry an address: what the response check reads.
_ADDRESS_TYPES: Final = frozenset({types.A, types.AAAA})
_NAME_TYPES: Final = frozenset({types.CNAME, types.DNAME})
_SERVICE_TYPES: Final = frozenset({types.HTTPS, types.SVCB})
_IPV4HINT: Final = https_records.SVCParamKeys.IPV4HINT.value
_IPV6HINT: Final = https_records.SVCParamKeys.IPV6HINT.value


def _type_name(qtype: int) -> str:
    return types.to_str(qtype)


def answer_targets(rr: dns.ResourceRecord) -> list[str]:
    """The names and addresses an answer sends a client to: a CNAME/DNAME target, an
    A/AAAA address, an HTTPS/SVCB record's target name and address hints."""
    if rr.type in _NAME_TYPES:
        return [rr.domain_name]
    if rr.type in _ADDRESS_TYPES:
        return [str(ipaddress.ip_address(rr.data))]
    if rr.type in _SERVICE_TYPES:
        record = https_records.unpack(rr.data)
        out = [record.target_name] if record.target_name not in ("", ".") else []
        for key, size in ((_IPV4HINT, 4), (_IPV6HINT, 16)):
            hints = record.params.get(key, b"")
            if len(hints) % size:
                raise ValueError("address hint of a bad length")
            out += [
                str(ipaddress.ip_address(hints[i : i + size])) for i in range(0, len(hints), size)
            ]
        return out
    return []


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, want_id: int) -> None:
        self.want_id = want_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # A reply must carry our query's id: anything else is stale or spoofed.
        matches = len(data) >= 2 and struct.unpack_from("!H", data)[0] == self.want_id
        if matches and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _ask_udp(server: NameServer, packed: bytes, query_id: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Datagram(query_id), remote_addr=(server.host, server.port)
    )
    try:
        transport.sendto(packed)
        return await proto.answer
    finally:
        transport.close()


async def _ask_tcp(server: NameServer, packed: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(struct.pack("!H", len(packed)) + packed)
        await writer.drain()
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)
    finally:
        writer.close()


async def forward(servers: Sequence[NameServer], request: dns.DNSMessage) -> dns.DNSMessage:
    """The first good answer from ``servers`` (UDP, then TCP when truncated).

    Raises OSError when none answers.
    """
    packed = request.packed
    problems: list[str] = []
    for server in servers:
        try:
            data = await asyncio.wait_for(
                _ask_udp(server, packed, request.id), UPSTREAM_TIMEOUT_SECONDS
            )
            answer = dns.DNSMessage.unpack(data)
            if answer.truncation:
                data = await asyncio.wait_for(_ask_tcp(server, packed), UPSTREAM_TIMEOUT_SECONDS)
                answer = dns.DNSMessage.unpack(data)
        except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as exc:
            problems.append(f"{server}: {exc or type(exc).__name__}")
            continue
        except (struct.error, ValueError, UnicodeError) as exc:
            problems.append(f"{server}: bad answer ({exc})")
            continue
        if answer.id != request.id or answer.query:
            problems.append(f"{server}: answer does not match the query")
            continue
        return answer
    raise OSError("no upstream name server answered: " + ("; ".join(problems) or "none set"))


class InvalidMessageThrottle(logging.Filter):
    """mitmproxy logs every malformed DNS packet; a flood would flood the log. At most
    ``LogBudget.per_minute`` such lines a minute pass, then one saying how many did not."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = LogBudget()

    def filter(self, record: logging.LogRecord) -> bool:
        if "sent an invalid message" not in str(record.msg):
            return True
        ok, held = self.budget.take(record.created)
        if ok and held:
            record.msg = f"{record.msg} ({held} more invalid messages not logged)"
        return ok


_SERVER_LOGGER: Final = "mitmproxy.proxy.server"


class DnsFilter:
    """Answers DNS from the lists; see the module docstring."""

    name = "jectguard_dns"

    def __init__(self, holder: EngineHolder, events: EventLog, metrics: Metrics) -> None:
        self.holder = holder
        self.events = events
        self.metrics = metrics
        self.answer = BlockAnswer.ZERO
        self.ttl = DEFAULT_BLOCK_TTL
        self.enforce = True
        self.limiter = RateLimiter(DEFAULT_RATE)
        self.servers: tuple[NameServer, ...] | None = None  # None: the system's, read on use
        self._limited_log = LogBudget()
        self._upstream_log = LogBudget()

    # -- options ------------------------------------------------------------

    def running(self) -> None:
        self._throttle = InvalidMessageThrottle()
        logging.getLogger(_SERVER_LOGGER).addFilter(self._throttle)

    def done(self) -> None:
        throttle = getattr(self, "_throttle", None)
        if throttle is not None:
            logging.getLogger(_SERVER_LOGGER).removeFilter(throttle)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_dns_block_answer", str, BlockAnswer.ZERO.value,
            "How DNS mode answers a blocked name: zero (0.0.0.0 / :: for A/AAAA, "
            "NODATA for other types), nxdomain or refused.",
        )  # fmt: skip
        loader.add_option(
            "jg_dns_block_ttl", int, DEFAULT_BLOCK_TTL,
            "TTL in seconds of DNS block answers (short, so unblocking takes effect soon).",
        )  # fmt: skip
        loader.add_option(
            "jg_dns_rate", int, DEFAULT_RATE,
            "DNS queries per second allowed per client (bursts of 4x); 0 turns the limit off. "
            "Queries over it are answered REFUSED.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "jg_dns_block_answer" in updated:
            try:
                self.answer = parse_block_answer(o.jg_dns_block_answer)
            except ValueError as exc:
                raise exceptions.OptionsError(f"jg_dns_block_answer: {exc}") from None
        if "jg_dns_block_ttl" in updated:
            if not 0 <= o.jg_dns_block_ttl <= 86_400:
                raise exceptions.OptionsError("jg_dns_block_ttl: must be 0-86400 seconds")
            self.ttl = o.jg_dns_block_ttl
        if "jg_dns_rate" in updated:
            try:
                self.limiter = RateLimiter(o.jg_dns_rate)
            except ValueError as exc:
                raise exceptions.OptionsError(f"jg_dns_rate: {exc}") from None
        if "jg_mode" in updated:
            self.enforce = o.jg_mode == "enforce"
        if "dns_name_servers" in updated:
            try:
                servers = tuple(parse_name_server(s) for s in o.dns_name_servers)
            except ValueError as exc:
                raise exceptions.OptionsError(f"dns_name_servers: {exc}") from None
            self.servers = servers or None

    # -- hooks --------------------------------------------------------------

    async def dns_request(self, flow: dns.DNSFlow) -> None:
        if (
            flow.response
            or flow.error
            or not flow.live
            or not isinstance(flow.client_conn.proxy_mode, mode_specs.DnsMode)
        ):
            return
        try:
            await self._answer(flow)
        except Exception:
            # A failed hook would let mitmproxy's resolver ask upstream unchecked: fail closed.
            logger.exception("jectguard: DNS query check failed; answering SERVFAIL")
            self.metrics.record_error("dns-check-failed")
            flow.response = flow.request.fail(response_codes.SERVFAIL)

    async def _answer(self, flow: dns.DNSFlow) -> None:
        client = _client(flow)
        now = time.time()
        if not self.limiter.allow(client, now):
            flow.response = flow.request.fail(response_codes.REFUSED)
            flow.metadata[METADATA_KEY] = {"action": "rate-limited"}
            self.metrics.record_error("dns-rate-limited")
            ok, held = self._limited_log.take(now)
            if ok:
                more = f" ({held} more since the last line)" if held else ""
                logger.warning(
                    "jectguard: DNS client %s is over %d queries/s: refused%s",
                    client, self.limiter.rate, more,
                )  # fmt: skip
            return
        q = flow.request.question
        if q is None or not flow.request.query or flow.request.op_code != 0:
            # Only standard queries with one question are answered (no updates, no notifies).
            flow.response = flow.request.fail(response_codes.REFUSED)
            return
        v = self.holder.engine.check_host(q.name.rstrip(".") or ".")
        if self._stops(flow, v, "query", q.name):
            return
        try:
            flow.response = await forward(self._servers(), flow.request)
        except OSError as exc:
            ok, held = self._upstream_log.take(now)
            if ok:
                logger.warning("jectguard: DNS %s", exc)
            self.metrics.record_error("dns-upstream")
            flow.response = flow.request.fail(response_codes.SERVFAIL)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        if (
            not flow.response
            or METADATA_KEY in flow.metadata
            or not isinstance(flow.client_conn.proxy_mode, mode_specs.DnsMode)
        ):
            return
        try:
            self._check_answers(flow)
        except Exception:
            # mitmproxy would log a failed hook and send the answer on unchecked: fail closed.
            logger.exception("jectguard: DNS answer check failed; answering SERVFAIL")
            self.metrics.record_error("dns-check-failed")
            flow.response = flow.request.fail(response_codes.SERVFAIL)

    def _check_answers(self, flow: dns.DNSFlow) -> None:
        assert flow.response is not None
        q = flow.request.question
        if q is None:
            return
        engine = self.holder.engine
        for rr in flow.response.answers:
            try:
                targets = answer_targets(rr)
            except (ValueError, struct.error, UnicodeError, IndexError):
                # An answer we cannot read cannot be checked: it is not passed on.
                flow.response = flow.request.fail(response_codes.SERVFAIL)
                self.metrics.record_error("dns-bad-answer")
                return
            for target in targets:
                v = engine.check_host(target.rstrip(".") or ".")
                if self._stops(
                    flow, v, "answer", f"{q.name} answers {_type_name(rr.type)} {target}"
                ):
                    return

    # -- decisions ----------------------------------------------------------

    def _stops(self, flow: dns.DNSFlow, v: Verdict, where: str, what: str) -> bool:
        """Record a block or monitor hit; answers the flow when it blocks. True when answered."""
        if v.action is Action.ERROR:
            if where == "query":
                # A name no browser could look up: nothing legitimate is lost by refusing it.
                flow.response = flow.request.fail(response_codes.REFUSED)
                flow.metadata[METADATA_KEY] = {"action": "refused", "error": v.error}
                return True
            return False  # an odd alias name is only checked; the lookup itself was allowed
        if not v.listed:
            return False
        q = flow.request.question
        assert q is not None
        m = v.match
        enforce = self.enforce and v.action is Action.BLOCK
        action = "block" if enforce else "monitor"
        flow.metadata[METADATA_KEY] = {"action": action, "where": where}
        self.events.emit(
            "dns-block" if enforce else "monitor",
            client=_client(flow),
            verdict=action,
            list=m.list if m else None,
            rule=m.rule if m else None,
            category=m.category if m else None,
            stage="dns",
            qname=q.name,
            qtype=_type_name(q.type),
            matched=where,
            detail=what,
            answer=self.answer.value if enforce else None,
        )
        self.metrics.record_dns(action, m.list if m else None, m.category if m else None)
        if not enforce:
            flow.metadata.pop(METADATA_KEY)  # monitor: the answer is still checked
            flow.metadata[METADATA_KEY + "_monitor"] = True
            return False
        flow.response = self._block_answer(flow.request)
        return True

    def _block_answer(self, request: dns.DNSMessage) -> dns.DNSMessage:
        if self.answer is BlockAnswer.NXDOMAIN:
            return request.fail(response_codes.NXDOMAIN)
        if self.answer is BlockAnswer.REFUSED:
            return request.fail(response_codes.REFUSED)
        q = request.question
        assert q is not None
        if q.type == types.A:
            rr = dns.ResourceRecord.A(q.name, ipaddress.IPv4Address(0), ttl=self.ttl)
            return request.succeed([rr])
        if q.type == types.AAAA:
            rr = dns.ResourceRecord.AAAA(q.name, ipaddress.IPv6Address(0), ttl=self.ttl)
            return request.succeed([rr])
        return request.succeed([])  # NODATA: the name exists, with nothing of this type

    def _servers(self) -> Sequence[NameServer]:
        if self.servers is not None:
            return self.servers
        try:
            import mitmproxy_rs

            found = mitmproxy_rs.dns.get_system_dns_servers()
        except (RuntimeError, ImportError, AttributeError):
            found = []
        out = []
        for spec in found:
            try:
                out.append(parse_name_server(spec))
            except ValueError:
                continue
        return out


def _client(flow: dns.DNSFlow) -> str:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else "-"


__all__ = ["METADATA_KEY", "DnsFilter", "forward"]
