"""The blocking addon: checks every way a client can reach a host, at the earliest hook.

- ``http_connect``: the CONNECT target and port, before any byte goes to it
  (:mod:`.connects`; the destination policy: :mod:`proxy_addons.core.destinations`).
- ``tls_clienthello``: the SNI (transparent and reverse modes, domain fronting).
- ``requestheaders``: every host a request names (URL, request-target authority,
  Host header, HTTP/2 ``:authority``, SNI), before any body is read or forwarded
  (:mod:`.requests`); the proceed-anyway site (:mod:`.proceedsite`).
- ``responseheaders``: a redirect (``Location``, ``Refresh``) to a blocked URL
  becomes the block page (:mod:`.requests`).
- a tunnel's content (:mod:`.tunnels`) and the addresses a server name resolves to
  (:mod:`.addresses`: resolved once, checked against the lists and the destination
  policy, connected to as checked) are guarded by their own addons, which read this
  one's options, ``refused`` and ``policy``.

Every check goes through one decision function (:func:`.decide.decide`) and one
renderer (:func:`.decide.respond`). Decisions are recorded in
``flow.metadata["jectguard"]`` (``Decision.as_dict()``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions

from proxy_addons.addons.blockpage import HEADER_NAME, block_header
from proxy_addons.core.destinations import DEFAULT_CONNECT_PORTS, DestinationPolicy
from proxy_addons.core.engine import Engine, Verdict
from proxy_addons.lists.holder import EngineHolder

from .connects import ConnectChecks
from .decide import ADDRESS_KINDS, PageSettings
from .proceed import MIN_SECRET_LENGTH, ProceedSigner, random_secret
from .proceedsite import ProceedSite
from .requests import METADATA_KEY, Refusal, RequestChecks, client_ip

logger = logging.getLogger(__name__)

# Longest admin contact shown on a page (an email address or a URL).
MAX_CONTACT_LENGTH: Final = 200
# Where the kernel lists this host's own addresses (Linux); read once per configure.
_PROC_FIB_TRIE: Final = Path("/proc/net/fib_trie")
_PROC_IF_INET6: Final = Path("/proc/net/if_inet6")


def own_addresses() -> set[str]:
    """The proxy host's own addresses (every interface), as Squid's ``to_localhost`` needs."""
    out: set[str] = set()
    try:
        lines = _PROC_FIB_TRIE.read_text().splitlines()
        for prev, line in zip(lines, lines[1:], strict=False):
            if "/32 host LOCAL" in line:
                out.add(prev.strip().removeprefix("|-- "))
    except OSError:
        pass
    try:
        for line in _PROC_IF_INET6.read_text().splitlines():
            h = line.split()[0]
            out.add(str(ipaddress.IPv6Address(int(h, 16))))
    except (OSError, ValueError, IndexError):
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            out.add(str(info[4][0]))
    except (OSError, UnicodeError):
        pass
    return out


class Blocking(RequestChecks, ConnectChecks, ProceedSite):
    """Blocks requests, tunnels and connections toward listed hosts, URLs and addresses."""

    name = "jectguard_block"

    def __init__(self, holder: EngineHolder) -> None:
        self.holder = holder
        self.enforce = True
        self.intercept = True
        self.block_page = True
        self.check_resolved = True
        self.admin_contact = ""
        self.report_url = ""
        self.pages = PageSettings()
        self.policy = DestinationPolicy()
        self.signer: ProceedSigner | None = None
        self._secret = random_secret()  # used when no jg_proceed_secret is set
        # client connection id -> why its tunnel/TLS was refused (never connect upstream)
        self.refused: dict[str, Refusal] = {}
        # client connection ids whose TLS handshake must fail (blocked SNI, no interception)
        self.fail_tls: set[str] = set()

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_mode",
            str,
            "enforce",
            "jectguard: 'enforce' blocks matches; 'monitor' only logs them (every list).",
            choices=("enforce", "monitor"),
        )
        loader.add_option(
            "jg_intercept",
            bool,
            True,
            "jectguard: decrypt TLS to check full URLs and show block pages on HTTPS. "
            "When false, TLS is passed through untouched after the CONNECT/SNI check.",
        )
        loader.add_option(
            "jg_block_page",
            bool,
            True,
            "jectguard: answer blocked navigations with an HTML page (false: plain text).",
        )
        loader.add_option(
            "jg_admin_contact",
            str,
            "",
            "jectguard: who to contact about a block (email or URL), shown on block pages.",
        )
        loader.add_option(
            "jg_report_url",
            str,
            "",
            "jectguard: an http(s) URL where people can report a false positive.",
        )
        loader.add_option(
            "jg_check_resolved",
            bool,
            True,
            "jectguard: refuse server connections whose resolved address is on an IP/CIDR list.",
        )
        loader.add_option(
            "jg_proceed_anyway",
            bool,
            False,
            "jectguard: offer a signed, expiring, per-client 'proceed anyway' on block pages.",
        )
        loader.add_option(
            "jg_proceed_minutes",
            int,
            15,
            "jectguard: how long a 'proceed anyway' grant lasts (1-1440 minutes).",
        )
        loader.add_option(
            "jg_proceed_secret",
            str,
            "",
            "jectguard: HMAC key for 'proceed anyway' tokens (at least 16 characters); "
            "empty: a random key per process.",
        )
        loader.add_option(
            "jg_allow_destination",
            Sequence[str],
            [],
            "jectguard: networks (CIDR) clients may reach although they are loopback, "
            "unspecified, link-local, cloud metadata or this host's own (repeatable).",
        )
        loader.add_option(
            "jg_connect_ports",
            Sequence[str],
            [DEFAULT_CONNECT_PORTS],
            "jectguard: ports CONNECT may tunnel to: ports and ranges, e.g. '443,8443' "
            "or '1-65535' (repeatable; default 443).",
        )
        loader.add_option(
            "jg_url_case_insensitive",
            bool,
            False,
            "jectguard: URL rules match paths in any letter case, as IIS and Windows "
            "servers serve them (/MAL/X.EXE for a rule on /mal/x.exe).",
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if o.jg_mode not in ("enforce", "monitor"):
            raise exceptions.OptionsError(
                f"jg_mode: must be 'enforce' or 'monitor', got {o.jg_mode!r}"
            )
        contact = o.jg_admin_contact
        if len(contact) > MAX_CONTACT_LENGTH or not contact.isprintable():
            raise exceptions.OptionsError(
                f"jg_admin_contact: must be printable and at most {MAX_CONTACT_LENGTH} "
                f"characters, got {contact[:40]!r}"
            )
        report = o.jg_report_url
        if report:
            parts = urllib.parse.urlsplit(report)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or not report.isprintable()
            ):
                raise exceptions.OptionsError(
                    f"jg_report_url: must be an http(s) URL, got {report[:80]!r}"
                )
        if not 1 <= o.jg_proceed_minutes <= 1440:
            raise exceptions.OptionsError(
                f"jg_proceed_minutes: must be between 1 and 1440, got {o.jg_proceed_minutes}"
            )
        secret = o.jg_proceed_secret
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise exceptions.OptionsError(
                f"jg_proceed_secret: must be at least {MIN_SECRET_LENGTH} characters"
            )
        if updated & {"jg_allow_destination", "jg_connect_ports"} or not self.policy.own:
            for name, values in (
                ("jg_allow_destination", o.jg_allow_destination),
                ("jg_connect_ports", o.jg_connect_ports),
            ):
                try:
                    DestinationPolicy.from_specs(
                        values if name == "jg_allow_destination" else [],
                        values if name == "jg_connect_ports" else [],
                    )
                except ValueError as exc:
                    raise exceptions.OptionsError(f"{name}: {exc}") from None
            self.policy = DestinationPolicy.from_specs(
                o.jg_allow_destination, o.jg_connect_ports, own_addresses()
            )
        self.enforce = o.jg_mode == "enforce"
        self.intercept = o.jg_intercept
        Engine.fold_case = o.jg_url_case_insensitive  # process-wide, as jg_nat64_prefixes
        self.block_page = o.jg_block_page
        self.check_resolved = o.jg_check_resolved
        self.admin_contact = contact
        self.report_url = report
        self.pages = PageSettings(self.block_page, contact, report)
        if not o.jg_proceed_anyway:
            self.signer = None
        elif updated & {"jg_proceed_anyway", "jg_proceed_secret", "jg_proceed_minutes"}:
            key = secret.encode() if secret else self._secret
            self.signer = ProceedSigner.create(key, o.jg_proceed_minutes)

    # -- bookkeeping --------------------------------------------------------

    def client_disconnected(self, client: connection.Client) -> None:
        self.refused.pop(client.id, None)
        self.fail_tls.discard(client.id)

    def _granted(self, client: connection.Client, v: Verdict) -> bool:
        """A proceed-anyway grant covers this verdict: a name's, never an address rule's."""
        m = v.match
        if self.signer is None or (m is not None and m.kind in ADDRESS_KINDS):
            return False
        return self.signer.granted(client_ip(client), v.host)


__all__ = ["HEADER_NAME", "METADATA_KEY", "Blocking", "block_header", "own_addresses"]
