"""One decision for every stage, and one place that turns a decision into a response.

Every hook that checks something (a request's hosts, a CONNECT target, an SNI, a
redirect, a destination) hands the engine's :class:`Verdict` to :func:`decide`, and
combines several with :func:`worst`. An ``error`` verdict fails closed here, once,
so no stage can forget it. :func:`respond` is the only code that builds a refusal.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from mitmproxy import http

from proxy_addons.addons.blockpage import (
    BlockInfo,
    ProceedForm,
    choose_kind,
    new_request_id,
    printable,
    render,
)
from proxy_addons.core.canon import MAX_URL_LENGTH
from proxy_addons.core.engine import Action, Verdict
from proxy_addons.core.model import RuleKind

logger = logging.getLogger(__name__)

# Rules on addresses: a grant for a name never unlocks them (the name may move onto a
# listed C2 address; the person clicked through a name, not an address).
ADDRESS_KINDS: Final = frozenset({RuleKind.IP, RuleKind.CIDR})


class Stage(enum.StrEnum):
    """Which part of the traffic named the host (shown on the page, logged)."""

    REQUEST = "request"  # the request URL as the proxy forwards it
    AUTHORITY = "authority"  # the request-target's authority or HTTP/2 :authority
    HOST_HEADER = "host-header"
    SNI = "sni"
    CONNECT = "connect"
    REDIRECT = "redirect"  # Location or Refresh of a response
    ADDRESS = "address"  # an address the server name resolves to
    DESTINATION = "destination"  # a destination refused by policy, not by a list
    TUNNEL = "tunnel"  # what a tunnel carries (neither TLS nor HTTP, or never shown)
    UPGRADE = "upgrade"  # a 101 switch to a protocol the proxy cannot read


class Act(enum.StrEnum):
    """What the proxy does (``flow.metadata["jectguard"]["action"]``)."""

    PASS = "pass"  # nothing matched
    ALLOW = "allow"  # an allowlist entry matched
    PROCEED = "proceed"  # blocked, but this client holds a proceed-anyway grant
    MONITOR = "monitor"  # would block; logged and let through (monitor list or mode)
    ERROR = "error"  # unreadable: refused with 400 (never passed, in any mode)
    BLOCK = "block"  # refused with 403 (a list, or the destination policy)


# Several checks on one request: the strongest wins. An error outranks everything but
# a block, so one unreadable host is never outvoted by a readable allowed one.
_RANK: Final = {
    Act.PASS: 0,
    Act.ALLOW: 1,
    Act.PROCEED: 2,
    Act.MONITOR: 3,
    Act.ERROR: 4,
    Act.BLOCK: 5,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The proxy's answer for one check: where, what the engine said, what is done."""

    stage: Stage
    verdict: Action
    action: Act
    url: str = ""  # what a person is shown
    checked: Verdict | None = None  # the engine's full verdict: what matched
    reason: str = ""  # why, when no list rule says it (policy, unreadable input)
    status: int = 0  # the refusal's HTTP status; 0: the request goes on

    @property
    def refuses(self) -> bool:
        return self.status != 0

    def as_dict(self, request_id: str = "") -> dict[str, object]:
        """Plain data for ``flow.metadata`` (read by the observe addon)."""
        if self.action is Act.PASS:
            return {"action": "pass", "stage": self.stage.value}
        v = self.checked
        verdict = (
            v.as_dict()
            if v is not None
            else {
                "url": self.url,
                "host": None,
                "verdict": self.verdict.value,
                "list": None,
                "rule": None,
                "error": self.reason or None,
            }
        )
        out: dict[str, object] = {
            "action": self.action.value,
            "stage": self.stage.value,
            "request_id": request_id,
            "verdict": verdict,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


_PASSED: Final = {s: Decision(s, Action.PASS, Act.PASS) for s in Stage}


def _error_status(stage: Stage, text: str) -> int:
    if stage is Stage.REDIRECT:
        return 502  # the server's answer is unreadable, not the client's request
    return 414 if len(text) > MAX_URL_LENGTH else 400


def decide(
    stage: Stage,
    v: Verdict,
    url: str,
    *,
    enforce: bool,
    granted: Callable[[Verdict], bool],
) -> Decision:
    """The one ladder: pass, allow, error (fails closed), grant, monitor, block."""
    a = v.action
    if a is Action.PASS:
        return _PASSED[stage]
    if a is Action.ALLOW:
        return Decision(stage, a, Act.ALLOW, url, v)
    if a is Action.ERROR:
        reason = f"{_NAMES[stage]} cannot be read: {v.error or 'invalid'}"
        return Decision(stage, a, Act.ERROR, url, v, reason, _error_status(stage, v.input))
    if a is Action.BLOCK:
        m = v.match
        if (m is None or m.kind not in ADDRESS_KINDS) and granted(v):
            return Decision(stage, a, Act.PROCEED, url, v)
        if enforce:
            return Decision(stage, a, Act.BLOCK, url, v, status=403)
    return Decision(stage, a, Act.MONITOR, url, v)


def refuse_destination(stage: Stage, url: str, reason: str) -> Decision:
    """A destination the policy refuses: a block in every mode (it guards the proxy host)."""
    return Decision(stage, Action.BLOCK, Act.BLOCK, url, None, reason, 403)


def refuse_upgrade(url: str, protocol: str) -> Decision:
    """A 101 to anything but a WebSocket the proxy reads: refused in every mode.

    After a 101 mitmproxy relays raw bytes (its ``rawtcp``), so every request that
    follows on the connection (HTTP/2 after ``h2c``, HTTP/1 after ``foo``) would
    reach the server unchecked. It is the server's answer, hence 502.
    """
    named = protocol or "no protocol named"
    reason = f"the server switched to {named!r}, which the proxy cannot check (only WebSocket)"
    return Decision(Stage.UPGRADE, Action.BLOCK, Act.BLOCK, url, None, reason, 502)


def worst(decisions: Iterable[Decision]) -> Decision:
    """The strongest of several decisions on one request (the first among equals)."""
    best: Decision | None = None
    for d in decisions:
        if best is None or _RANK[d.action] > _RANK[best.action]:
            best = d
    assert best is not None, "worst() needs at least one decision"
    return best


_NAMES: Final = {
    Stage.REQUEST: "the request URL",
    Stage.AUTHORITY: "the request-target authority",
    Stage.HOST_HEADER: "the Host header",
    Stage.SNI: "the TLS server name",
    Stage.CONNECT: "the CONNECT target",
    Stage.REDIRECT: "the redirect target",
    Stage.ADDRESS: "the server address",
    Stage.DESTINATION: "the destination",
    Stage.TUNNEL: "the tunnel's content",
    Stage.UPGRADE: "the protocol upgrade",
}

_LOG_WHAT: Final = {
    Act.ALLOW: "allowed by the allowlist",
    Act.PROCEED: "allowed by proceed-anyway grant",
    Act.MONITOR: "monitor: would block",
    Act.ERROR: "refused (unreadable)",
    Act.BLOCK: "blocked",
}


def log_decision(d: Decision, client: str, request_id: str, note: str = "") -> None:
    """One log line per decision worth a line (allowlist hits stay quiet)."""
    if d.action is Act.PASS or d.action is Act.ALLOW:
        return
    m = d.checked.match if d.checked is not None else None
    logger.info(
        "jectguard: %s%s %s (stage %s, list %s, rule %r, client %s, id %s)%s",
        _LOG_WHAT[d.action],
        note,
        printable(d.url[:500]),
        d.stage.value,
        m.list if m else "-",
        m.rule if m else d.reason or "-",
        client,
        request_id,
        f": {d.reason}" if d.reason and d.action is Act.ERROR else "",
    )


@dataclass(frozen=True, slots=True)
class PageSettings:
    """What every refusal page says besides the decision (from the options)."""

    block_page: bool = True
    admin_contact: str = ""
    report_url: str = ""


def block_info(
    d: Decision, request_id: str, settings: PageSettings, proceed: ProceedForm | None = None
) -> BlockInfo:
    v = d.checked if d.checked is not None else Verdict(d.verdict, d.url)
    return BlockInfo.from_verdict(
        v,
        url=d.url,
        stage=d.stage.value,
        request_id=request_id,
        admin_contact=settings.admin_contact,
        report_url=settings.report_url,
        proceed=proceed,
        status=d.status,
        why=d.reason,
    )


def respond(
    d: Decision,
    request_id: str,
    settings: PageSettings,
    *,
    sec_fetch_dest: str | None,
    accept: str | None,
    proceed: ProceedForm | None = None,
) -> http.Response:
    """The response for a refusing decision: block page, JSON, text or an empty body."""
    kind = choose_kind(sec_fetch_dest, accept)
    if kind == "html" and not settings.block_page:
        kind = "text"
    r = render(block_info(d, request_id, settings, proceed), kind)
    return http.Response.make(r.status, r.body, [(k.encode(), v.encode()) for k, v in r.headers])


__all__ = [
    "Act",
    "Decision",
    "PageSettings",
    "Stage",
    "decide",
    "log_decision",
    "new_request_id",
    "refuse_destination",
    "refuse_upgrade",
    "respond",
    "worst",
]
