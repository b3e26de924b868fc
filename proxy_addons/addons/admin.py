"""The admin addon: serves the admin API and dashboard inside mitmproxy's event loop.

The application itself is :func:`proxy_addons.admin.app.create_app`; this addon
only owns its options, its token and the server's lifetime (``running`` starts
it, ``done`` stops it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from mitmproxy import ctx, exceptions

from proxy_addons.admin.app import (
    AdminHosts,
    AdminState,
    AdminToken,
    CampaignControl,
    RefreshTrigger,
    TokenError,
    create_app,
    load_or_create_token,
)
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

# Stop waiting for open admin connections after this long at shutdown.
SHUTDOWN_TIMEOUT_SECONDS: Final = 2.0
_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?"
)


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_admin_host(value: str) -> str:
    """A host to bind to: an IP address or a host name; ValueError otherwise."""
    host = value.strip()
    if not host:
        raise ValueError("must be an address to listen on (e.g. 127.0.0.1)")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"not an IP address or host name: {value!r}")
    return host


# The options the admin token is read from.
_TOKEN_INPUTS: Final = frozenset({"jg_admin_port", "jg_admin_token_file", "jg_cache_dir"})


class AdminServer:
    """The admin API on ``jg_admin_host:jg_admin_port`` (0 turns it off)."""

    name = "jectguard_admin"

    def __init__(
        self,
        holder: EngineHolder,
        events: EventLog,
        metrics: Metrics,
        *,
        data_dir: Path | None = None,
        lists: Callable[[], list[dict[str, Any]]] | None = None,
        refresh_status: Callable[[], Any] | None = None,
        refresh_trigger: RefreshTrigger | None = None,
        campaigns: CampaignControl | None = None,
        retro_hits: Callable[[float], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.holder = holder
        self.events = events
        self.metrics = metrics
        self.data_dir = data_dir
        self.lists = lists
        self.refresh_status = refresh_status
        self.refresh_trigger = refresh_trigger
        self.campaigns = campaigns
        self.retro_hits = retro_hits
        self.host = "127.0.0.1"
        self.port = 0
        self.hosts = AdminHosts()
        self.state: AdminState | None = None
        self.token: AdminToken | None = None
        # (token file, data dir) whose reading failed and was reported.
        self._token_failed: tuple[str, str] | None = None
        self.runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None  # where the server really listens
        self._master: Any = None
        # The metrics' snapshot series, from the index's typed fields (never its raw meta).
        metrics.set_meta_provider(
            lambda: {
                "by_kind": holder.engine.block.by_kind,
                "built_at": holder.engine.block.built_at,
            }
        )

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_admin_host",
            str,
            "127.0.0.1",
            "jectguard: address of the admin API and dashboard. Anything but loopback "
            "exposes them to the network (still behind the admin token).",
        )
        loader.add_option(
            "jg_admin_port",
            int,
            8090,
            "jectguard: port of the admin API and dashboard (0: off).",
        )
        loader.add_option(
            "jg_admin_hostnames",
            Sequence[str],
            [],
            "jectguard: host names the admin API and dashboard are reached by, besides "
            "localhost and its listen address (a request naming any other Host is refused "
            "with 421, against DNS rebinding).",
        )
        loader.add_option(
            "jg_admin_token_file",
            str,
            "",
            "jectguard: file holding the admin API's bearer token. Default: the "
            "JECTGUARD_ADMIN_TOKEN environment variable, else a token generated on first "
            "start and stored (mode 0600) as admin-token in the data directory.",
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        try:
            host = parse_admin_host(o.jg_admin_host)
        except ValueError as exc:
            raise exceptions.OptionsError(f"jg_admin_host: {exc}") from None
        names = []
        for name in o.jg_admin_hostnames:
            if not _HOSTNAME_RE.fullmatch(name.strip()):
                raise exceptions.OptionsError(f"jg_admin_hostnames: not a host name: {name!r}")
            names.append(name.strip())
        if not 0 <= o.jg_admin_port <= 65535:
            raise exceptions.OptionsError(
                f"jg_admin_port: must be between 0 (off) and 65535, got {o.jg_admin_port}"
            )
        if o.jg_admin_port and (self.token is None or "jg_admin_token_file" in updated):
            data_dir = self.data_dir
            if data_dir is None:
                from proxy_addons.lists.layout import cache_dir_from

                # the refresh addon's jg_cache_dir, when loaded and set
                cache = getattr(o, "jg_cache_dir", "") if "jg_cache_dir" in o else ""
                data_dir = cache_dir_from(cache)
            key = (o.jg_admin_token_file, str(data_dir))
            try:
                self.token = load_or_create_token(o.jg_admin_token_file or None, data_dir)
            except TokenError as exc:
                # Raised once per bad value: mitmproxy re-sends other options (one addon's
                # configure setting another's) and rolls back on an error, so raising again
                # in every nested update recursed (a RecursionError traceback before the
                # message). The server never starts without a token (running()).
                if key != self._token_failed or updated & _TOKEN_INPUTS:
                    self._token_failed = key
                    raise exceptions.OptionsError(f"jg_admin_token_file: {exc}") from None
            else:
                self._token_failed = None
        self.host, self.port = host, o.jg_admin_port
        self.hosts = AdminHosts.for_listener(host, tuple(names))
        if self.state is not None:
            self.state.hosts = self.hosts
        if self.port and not is_loopback(host) and updated & {"jg_admin_host", "jg_admin_port"}:
            logger.warning(
                "jectguard: the admin API listens on %s, reachable from the network; "
                "every data route requires the admin token, but /healthz, /readyz and "
                "/proxy.pac are open. Prefer 127.0.0.1 behind a reverse proxy or a firewall.",
                host,
            )

    # -- lifetime -----------------------------------------------------------

    def _proxy_address(self) -> tuple[str, int] | None:
        """Where the regular proxy listens (for the PAC file)."""
        ps = self._master.addons.get("proxyserver") if self._master is not None else None
        if ps is not None:
            for server in ps.servers:
                if server.mode.type_name == "regular" and server.listen_addrs:
                    addrs = sorted(server.listen_addrs, key=lambda a: ":" in str(a[0]))
                    return str(addrs[0][0]), int(addrs[0][1])
        try:
            return ctx.options.listen_host, ctx.options.listen_port or 8080
        except AttributeError:
            return None

    def url(self) -> str | None:
        """The dashboard's URL, once the server is up."""
        if self.bound is None:
            return None
        host, port = self.bound
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    async def running(self) -> None:
        if self.runner is not None:
            return
        if self.token is None:  # no option changed since load: configure() never ran
            try:
                self.configure(set())
            except exceptions.OptionsError as exc:
                logger.error("jectguard: cannot start the admin API: %s", exc)
                return
        if self.port and self.token is None:
            logger.error("jectguard: cannot start the admin API: its token cannot be read")
        if not self.port or self.token is None:
            return
        self._master = getattr(ctx, "master", None)
        state = AdminState(
            token=self.token.token,
            engine=lambda: self.holder.engine,
            snapshot_health=lambda: self.holder.health,
            events=self.events,
            metrics=self.metrics,
            proxy_address=self._proxy_address,
            lists=self.lists,
            refresh_status=self.refresh_status,
            refresh_trigger=self.refresh_trigger,
            campaigns=self.campaigns,
            hosts=self.hosts,
            retro_hits=self.retro_hits,
            cache_dir=self.data_dir,
        )
        self.state = state
        runner = web.AppRunner(
            create_app(state),
            access_log=None,  # requests are not events; keep mitmproxy's log readable
            handle_signals=False,  # mitmproxy owns the signals
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # ERROR during start-up: mitmproxy exits, as it does for a busy proxy port.
            logger.error(
                "jectguard: cannot start the admin API on %s:%s: %s",
                self.host,
                self.port,
                exc.strerror or exc,
            )
            return
        self.runner = runner
        addrs = runner.addresses
        self.bound = (str(addrs[0][0]), int(addrs[0][1])) if addrs else (self.host, self.port)
        where = {
            "file": f"from {self.token.path}",
            "env": "from the JECTGUARD_ADMIN_TOKEN environment variable",
            "stored": f"in {self.token.path}",
            "generated": f"generated and stored in {self.token.path}",
        }[self.token.source]
        logger.info("jectguard: admin API and dashboard on %s (token %s)", self.url(), where)

    async def done(self) -> None:
        runner, self.runner, self.bound = self.runner, None, None
        if runner is None:
            return
        try:
            await asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT_SECONDS + 1)
        except TimeoutError:
            logger.warning("jectguard: the admin API did not stop in time")


__all__ = ["AdminServer", "is_loopback", "parse_admin_host"]
