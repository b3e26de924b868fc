"""The observe addon: turns the decisions other addons record on a flow into events and metrics.

It reads, never decides:

- ``flow.metadata["jectguard"]`` (the blocking addon): ``action``, ``stage``,
  ``request_id``, ``verdict`` (``Verdict.as_dict()``), optionally ``seconds``
  (time the verdict took).
- ``flow.metadata["jectguard_strip"]`` (the stripping addon): ``{"findings":
  [Finding.as_dict(), ...], "skipped": reason or None}``.
- :meth:`Observe.address_refusal`, called by the addresses addon with the decision
  that refused a connection after its name resolved (a listed address, an internal
  one), emitted when the flow's error arrives (with the flow's client, user, URL).
- :meth:`Observe.connection_decision`, called by the tunnels addon for decisions on
  connections that carry no flow (unclassifiable content, a relayed SNI).

Load it after the addons it observes. Each decision (one request id) is
recorded once, however many hooks see it. A blocked CONNECT whose tunnel the
proxy keeps local to serve the block page inside it (``deferred``) is recorded
only if no request in that tunnel is: one blocked visit, one event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions, http

from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog, open_sink
from proxy_addons.telemetry.metrics import Metrics

from .blocking import METADATA_KEY
from .decide import Act, Decision
from .ledger import flow_user

logger = logging.getLogger(__name__)

STRIP_KEY: Final = "jectguard_strip"
# Decisions already turned into events, so later hooks do not repeat them (a list: metadata
# must stay serializable for flow files).
SEEN_KEY: Final = "jectguard_observed"
# Connections refused at the resolved-address stage whose flow has not failed yet: the
# addresses addon hands each over typed (server connection id -> decision); the flow's
# error hook turns it into an event. Bounded: a refusal whose flow never reports is dropped.
MAX_PENDING_REFUSALS: Final = 1024


def _client(flow: http.HTTPFlow) -> str | None:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else None


def _seen(flow: http.HTTPFlow, key: str) -> bool:
    """Whether ``key`` was recorded for this flow already (marks it as recorded)."""
    seen = flow.metadata.setdefault(SEEN_KEY, [])
    if key in seen:
        return True
    seen.append(key)
    return False


class Observe:
    """Writes the event stream and moves the metrics for every recorded decision."""

    name = "jectguard_observe"

    def __init__(
        self, events: EventLog, metrics: Metrics, holder: EngineHolder | None = None
    ) -> None:
        self.events = events
        self.metrics = metrics
        self.holder = holder
        self._sink_spec: str | None = None
        self._categories: tuple[object, dict[str, str]] = (None, {})
        # client connection id -> the blocked CONNECT's event, held until the
        # tunnel shows a blocked request (dropped) or closes (emitted).
        self._deferred: dict[str, tuple[Mapping[str, Any], dict[str, Any]]] = {}
        self._refusals: dict[str, tuple[Decision, str, str]] = {}

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_events_file",
            str,
            "-",
            "jectguard: where the JSON event stream goes: a file (appended), '-' for "
            "stdout, '' for nowhere (recent events stay visible in the admin API).",
        )
        loader.add_option(
            "jg_events_drop_query",
            bool,
            False,
            "jectguard: drop query strings and fragments from URLs in events (privacy).",
        )

    def configure(self, updated: set[str]) -> None:
        self.events.drop_query = ctx.options.jg_events_drop_query
        spec = ctx.options.jg_events_file
        if spec != self._sink_spec:
            try:
                sink, owned = open_sink(spec)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"jg_events_file: cannot open {spec!r} for appending: {exc.strerror or exc}"
                ) from None
            self.events.set_sink(sink, owned=owned)
            self._sink_spec = spec

    # -- hooks --------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._decision(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._decision(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._decision(flow)  # a redirect toward a blocked URL

    def response(self, flow: http.HTTPFlow) -> None:
        self._decision(flow)
        self._strips(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._decision(flow)
        self._address_refusal(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        held = self._deferred.pop(client.id, None)
        if held is not None:
            self._emit_block(*held)

    def done(self) -> None:
        for held in list(self._deferred.values()):
            self._emit_block(*held)
        self._deferred.clear()
        self.events.close()
        self._sink_spec = None

    # -- decisions ----------------------------------------------------------

    def _category_of(self, list_name: str | None) -> str | None:
        if self.holder is None or not list_name:
            return None
        engine = self.holder.engine
        cached_for, table = self._categories
        if cached_for is not engine:
            table = {info.name: info.category for info in engine.block.lists}
            self._categories = (engine, table)
        return table.get(list_name)

    def _decision(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(METADATA_KEY)
        if not isinstance(meta, Mapping):
            return
        action = meta.get("action")
        if not isinstance(action, str) or action == "proceed-form":
            return
        rid = meta.get("request_id")
        if _seen(flow, f"{action}:{rid or ''}"):
            return
        seconds = meta.get("seconds")
        if isinstance(seconds, int | float):
            self.metrics.latency.observe(seconds)
        if action == "proceed-granted":
            self.events.emit(
                "allow-override",
                client=_client(flow),
                method=flow.request.method,
                url=flow.request.pretty_url,
                reason="proceed-anyway-granted",
                host=meta.get("host"),
            )
            return
        self.metrics.record_checked(action)
        if action == "pass":
            return
        v = meta.get("verdict")
        v = v if isinstance(v, Mapping) else {}
        fields: dict[str, Any] = {
            "client": _client(flow),
            "user": flow_user(flow),
            "method": flow.request.method,
            "url": v.get("canonical_url") or v.get("url"),
            "verdict": v.get("verdict"),
            "list": v.get("list"),
            "rule": v.get("rule"),
            "category": v.get("category"),
            "request_id": rid,
            "stage": meta.get("stage"),
            "host": v.get("host"),
            "kind": v.get("kind"),
            "mode": v.get("mode"),
            "line": v.get("line"),
        }
        if action == "block":
            client_id = flow.client_conn.id
            if meta.get("deferred"):
                self._deferred[client_id] = (v, fields)
                return
            self._deferred.pop(client_id, None)
            self._emit_block(v, fields)
        elif action == "monitor":
            self.metrics.record_monitor(v.get("list"), v.get("category"))
            self.events.emit("monitor", **fields)
        elif action == "proceed":
            self.metrics.record_override(v.get("list"), "proceed-anyway")
            self.events.emit("allow-override", reason="proceed-anyway", **fields)
        elif action == "allow":
            over = v.get("overridden")
            if isinstance(over, Mapping):
                self.metrics.record_override(over.get("list"), "allowlist")
                self.events.emit(
                    "allow-override", reason="allowlist", overridden=dict(over), **fields
                )
        elif action == "error":
            self.metrics.record_error("canonicalize")
            self.events.emit("error", reason=v.get("error"), **fields)

    def _emit_block(self, v: Mapping[str, Any], fields: dict[str, Any]) -> None:
        self.metrics.record_block(v.get("list"), v.get("category"))
        self.events.emit("block", **fields)

    def address_refusal(self, server_id: str, d: Decision, request_id: str, host: str) -> None:
        """A connection refused after its name resolved (the addresses addon calls this)."""
        if len(self._refusals) >= MAX_PENDING_REFUSALS:
            self._refusals.pop(next(iter(self._refusals)))
        self._refusals[server_id] = (d, request_id, host)

    def _address_refusal(self, flow: http.HTTPFlow) -> None:
        held = self._refusals.pop(flow.server_conn.id, None)
        if held is None:
            return
        d, rid, host = held
        if _seen(flow, f"{d.action.value}:{rid}"):
            return
        v = d.checked
        m = v.match if v is not None else None
        fields: dict[str, Any] = {
            "client": _client(flow),
            "user": flow_user(flow),
            "method": flow.request.method,
            "url": flow.request.pretty_url,
            "verdict": d.verdict.value,
            "list": m.list if m else None,
            "rule": m.rule if m else None,
            "category": m.category if m else None,
            "request_id": rid,
            "stage": d.stage.value,
            "host": host,
            # the address a listed one was (a policy refusal names it in its reason)
            "address": v.input if v is not None else None,
        }
        self._emit_refusal(d, fields)

    def _emit_refusal(self, d: Decision, fields: dict[str, Any]) -> None:
        self.metrics.record_checked(d.action.value)
        if d.action is Act.BLOCK:
            self.metrics.record_block(fields["list"], fields["category"])
            self.events.emit("block", reason=d.reason or None, **fields)
        else:
            self.metrics.record_error(d.stage.value)
            self.events.emit("error", reason=d.reason or None, **fields)

    # -- decisions no flow carries ----------------------------------------------

    def connection_decision(self, d: Decision, client: str, request_id: str) -> None:
        """A decision on a connection without a flow (a tunnel's content, a relayed SNI)."""
        if d.action is Act.PASS or d.action is Act.ALLOW:
            return
        v = d.as_dict(request_id)["verdict"]
        v = v if isinstance(v, Mapping) else {}
        fields: dict[str, Any] = {
            "client": client or None,
            "url": v.get("canonical_url") or v.get("url") or d.url,
            "verdict": v.get("verdict"),
            "list": v.get("list"),
            "rule": v.get("rule"),
            "category": self._category_of(v.get("list")),
            "request_id": request_id,
            "stage": d.stage.value,
            "host": v.get("host"),
        }
        self.metrics.record_checked(d.action.value)
        if d.action is Act.BLOCK:
            self._emit_block(v, fields)
        elif d.action is Act.MONITOR:
            self.metrics.record_monitor(fields["list"], fields["category"])
            self.events.emit("monitor", **fields)
        elif d.action is Act.PROCEED:
            self.metrics.record_override(fields["list"], "proceed-anyway")
            self.events.emit("allow-override", reason="proceed-anyway", **fields)
        else:
            self.metrics.record_error(d.stage.value)
            self.events.emit("error", reason=d.reason or v.get("error"), **fields)

    # -- strips -------------------------------------------------------------

    def _strips(self, flow: http.HTTPFlow) -> None:
        record = flow.metadata.get(STRIP_KEY)
        if record is None or _seen(flow, "strip"):
            return
        if isinstance(record, Mapping):
            findings = record.get("findings") or []
            skipped = record.get("skipped")
        else:
            findings, skipped = record, None
        base = {
            "client": _client(flow),
            "user": flow_user(flow),
            "method": flow.request.method,
            "url": flow.request.pretty_url,
        }
        if skipped:
            self.events.emit("strip", removed=False, skipped=str(skipped), **base)
        for f in findings if isinstance(findings, list) else []:
            if not isinstance(f, Mapping):
                continue
            list_name = f.get("list")
            category = f.get("category") or self._category_of(list_name)
            removed = bool(f.get("removed", True))
            if removed:
                self.metrics.record_strip(list_name, category)
            self.events.emit(
                "strip",
                **base,
                verdict="strip" if removed else "monitor",
                list=list_name,
                rule=f.get("rule"),
                category=category,
                element=f.get("element"),
                element_url=f.get("url"),
                reason=f.get("reason"),
                removed=removed,
            )


__all__ = ["SEEN_KEY", "STRIP_KEY", "Observe"]
