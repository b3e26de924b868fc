"""The proceed-anyway site: a confirmation page on the proxy's own origin, and the grant.

- The block page links (a GET form) to ``http(s)://PROCEED_HOST/?host=..&return=..``.
- That page, answered by the proxy, shows the signed token in a POST form; a fetch,
  frame or another origin gets nothing (:func:`~.proceed.navigation_problem`).
- The POST, from a click on that page, grants the host to this client and sends the
  browser back to the blocked URL.

A grant is only ever offered for a name that a name or URL rule blocked; address
(IP/CIDR) rules are never unlocked by it (:data:`~.decide.ADDRESS_KINDS`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import ada_url
from mitmproxy import connection, http

from proxy_addons.addons.blockpage import ProceedForm, printable, render_proceed_page
from proxy_addons.core.canon import scalar_text
from proxy_addons.core.engine import Action

from .decide import ADDRESS_KINDS, Act, Decision
from .proceed import PROCEED_HOST, ProceedSigner, navigation_problem
from .requests import METADATA_KEY, client_ip

if TYPE_CHECKING:
    from proxy_addons.lists.holder import EngineHolder

logger = logging.getLogger(__name__)

# Largest proceed form body parsed (four short fields).
MAX_PROCEED_BODY: Final = 4096
_TEXT: Final = {"Cache-Control": "no-store", "Content-Type": "text/plain; charset=utf-8"}


def _refused(reason: str, status: int = 403) -> http.Response:
    return http.Response.make(status, f"proceed anyway refused: {reason}\n", _TEXT)


class ProceedSite:
    """Serves the proceed origin; mixed into :class:`~.blocking.Blocking`."""

    holder: EngineHolder
    signer: ProceedSigner | None

    def _proceed_form(self, d: Decision, client: connection.Client) -> ProceedForm | None:
        """The block page's link to the confirmation page, when a grant may be offered."""
        v = d.checked
        if self.signer is None or d.action is not Act.BLOCK or v is None or not v.host:
            return None
        if v.match is None or v.match.kind in ADDRESS_KINDS:
            return None
        scheme = "https" if d.url.startswith(("https:", "wss:")) else "http"
        return ProceedForm(
            action=f"{scheme}://{PROCEED_HOST}/",
            fields={"host": v.host, "return": scalar_text(d.url)},
            minutes=self.signer.minutes,
            host=v.host,
            method="get",
        )

    def _grantable(self, host: str, target: str) -> str | None:
        """The origin of ``target`` when a name or URL rule blocks it for ``host`` now.

        The target must be a URL the engine reads (never free text): its origin goes
        into the confirmation page's CSP, and the browser is sent back to it.
        """
        v = self.holder.engine.check_url(target)
        m = v.match
        if v.action is not Action.BLOCK or v.host != host or m is None or m.kind in ADDRESS_KINDS:
            return None
        try:
            return str(ada_url.URL(target).origin)
        except ValueError:
            return None

    def _proceed_site(self, flow: http.HTTPFlow) -> None:
        """Answer a request to the proceed origin (never forwarded anywhere)."""
        req = flow.request
        flow.metadata[METADATA_KEY] = {"action": "proceed-form"}
        signer = self.signer
        if signer is None:
            flow.response = _refused("not enabled on this proxy", 404)
            return
        submit = req.method == "POST"
        problem = navigation_problem(req.headers.get, submit=submit)
        if problem is None and not submit and req.method != "GET":
            problem = f"method {req.method[:10]} not allowed"
        if problem is not None:
            logger.warning(
                "jectguard: refused proceed-anyway request from %s: %s",
                client_ip(flow.client_conn),
                printable(problem),
            )
            flow.response = _refused(problem)
            return
        if submit:
            req.stream = False  # the form is read whole in `request`, never forwarded
            return
        host, target = req.query.get("host", ""), req.query.get("return", "")
        origin = self._grantable(host, target)
        if origin is None:
            flow.response = _refused("nothing blocked to continue to")
            return
        form = ProceedForm(
            action="/",
            fields={**signer.issue(client_ip(flow.client_conn), host), "return": target},
            minutes=signer.minutes,
            host=host,
        )
        r = render_proceed_page(form, target, origin)
        flow.response = http.Response.make(
            r.status, r.body, [(k.encode(), v.encode()) for k, v in r.headers]
        )

    def request(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(METADATA_KEY)
        if not meta or meta.get("action") != "proceed-form" or flow.response or not flow.live:
            return
        flow.response = self._grant(flow)

    def _grant(self, flow: http.HTTPFlow) -> http.Response:
        req = flow.request
        client = client_ip(flow.client_conn)
        signer = self.signer
        if signer is None or len(req.raw_content or b"") > MAX_PROCEED_BODY:
            return _refused("not available")
        fields = {k: v for k, v in req.urlencoded_form.items(multi=False)}
        host, reason = signer.verify(client, fields)
        target = fields.get("return", "")
        if host is None or self._grantable(host, target) is None:
            logger.warning(
                "jectguard: refused proceed-anyway from %s: %s",
                client,
                reason or "nothing blocked to continue to",
            )
            return _refused(reason or "nothing blocked to continue to")
        until = signer.grant(client, host)
        logger.warning(
            "jectguard: proceed-anyway granted: client %s may reach %s until %s",
            client,
            host,
            time.strftime("%H:%M:%S", time.localtime(until)),
        )
        # _grantable read the target as the URL of this blocked host: safe to send back to
        location = target if target.isprintable() else "/"
        flow.metadata[METADATA_KEY] = {"action": "proceed-granted", "host": host}
        return http.Response.make(303, b"", {**_TEXT, "Location": location})


__all__ = ["MAX_PROCEED_BODY", "ProceedSite"]
