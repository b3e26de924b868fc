"""``jectguard run``: mitmproxy with jectguard's addons, ready for a browser.

mitmproxy is imported inside :func:`main` only, so ``jectguard check`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from proxy_addons.cli.common import Exit

if TYPE_CHECKING:
    from proxy_addons.core.engine import Engine
    from proxy_addons.lists.files import LoadReport

EXIT_OK = Exit.OK
EXIT_INPUT = Exit.INPUT


def default_confdir() -> Path:
    """jectguard's own mitmproxy confdir (its CA lives here), not the user's ~/.mitmproxy."""
    env = os.environ.get("JECTGUARD_CONFDIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("jectguard", appauthor=False)) / "mitmproxy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--listen-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port to listen on (default 8080)",
    )
    p.add_argument(
        "--confdir",
        default=None,
        metavar="DIR",
        help="mitmproxy's directory for its CA and config.yaml "
        "(default: a per-user jectguard directory)",
    )
    p.add_argument(
        "--no-intercept",
        action="store_true",
        help="do not decrypt TLS: block HTTPS at the CONNECT/SNI level only, "
        "pass allowed TLS through untouched (no CA to install)",
    )
    p.add_argument(
        "--mode",
        choices=("enforce", "monitor"),
        default="enforce",
        help="enforce: block matches (default); monitor: only log them",
    )
    p.add_argument(
        "--admin-contact",
        default="",
        metavar="CONTACT",
        help="email or URL shown on block pages for questions and false positives",
    )
    p.add_argument(
        "--allow-clients",
        action="append",
        default=[],
        metavar="CIDR",
        help="only these client networks may use the proxy (repeatable); "
        "required with a non-loopback --listen-host unless proxyauth is set",
    )
    p.add_argument(
        "--trusted-proxies",
        action="append",
        default=[],
        metavar="CIDR",
        help="load balancers that send a PROXY protocol header naming the real "
        "client (repeatable); connections from them must send one",
    )
    p.add_argument(
        "--allow-destination",
        action="append",
        default=[],
        metavar="CIDR",
        help="let clients reach this network although it is loopback, unspecified, "
        "link-local, cloud metadata or this host's own (repeatable)",
    )
    p.add_argument(
        "--connect-ports",
        action="append",
        default=[],
        metavar="SPEC",
        help="ports CONNECT may tunnel to, e.g. 443,8443 or 1-65535 (repeatable; default 443)",
    )
    p.add_argument(
        "--admin-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the admin API and dashboard (default 127.0.0.1)",
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=8090,
        metavar="PORT",
        help="port of the admin API and dashboard (default 8090; 0 turns it off)",
    )
    p.add_argument(
        "--admin-token-file",
        default="",
        metavar="FILE",
        help="file holding the admin bearer token (default: $JECTGUARD_ADMIN_TOKEN, "
        "else one generated on first start in the data directory)",
    )
    p.add_argument(
        "--events-file",
        default="-",
        metavar="FILE",
        help="JSON event stream (one line per block, strip, refresh problem): "
        "a file to append to, '-' for stdout (default), '' for none",
    )
    p.add_argument(
        "--events-drop-query",
        action="store_true",
        help="leave query strings out of logged URLs (privacy)",
    )
    p.add_argument(
        "--refresh-role",
        choices=("refresh", "watch", "off"),
        default=None,
        help="refresh: fetch feeds and publish snapshots (default with configured "
        "sources); watch: follow snapshots another process publishes "
        "(scale-out replicas); off: keep the lists as started (default with "
        "--blocklist/--allowlist files)",
    )
    p.add_argument(
        "--dns-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also answer DNS (UDP and TCP) on this port of --listen-host, from the "
        "same lists (off by default; 53 for a home network)",
    )
    p.add_argument(
        "--dns-only", action="store_true", help="serve only DNS (needs --dns-port), no HTTP proxy"
    )
    p.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="proxy processes sharing the port (SO_REUSEPORT), one per core with "
        "'auto'; one refreshes and serves the admin API (default 1)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="setoptions",
        metavar="NAME=VALUE",
        help="set a mitmproxy or jg_ option (repeatable)",
    )


# Modes where mitmproxy's proxyauth asks every client for credentials before it relays
# anything (HTTP proxy and SOCKS5 logins). Elsewhere (transparent, reverse, WireGuard,
# DNS) traffic flows without a login, so only --allow-clients can close the listener.
PROXYAUTH_MODES: Final = frozenset({"regular", "upstream", "socks5"})


@dataclass(frozen=True, slots=True)
class Listener:
    """One address mitmproxy will listen on, as its server instance computes it."""

    mode: str  # the mode's type name, e.g. "regular"
    description: str  # mitmproxy's own, e.g. "HTTP(S) proxy"
    host: str  # what mitmproxy binds: "" is every interface
    port: int
    addresses: tuple[str, ...]  # what the host resolves to; () when it does not resolve

    @property
    def loopback_only(self) -> bool:
        return bool(self.addresses) and all(_is_loopback_ip(a) for a in self.addresses)

    @property
    def where(self) -> str:
        if not self.host:
            return f"*:{self.port} (all interfaces)"
        bare = self.host.strip("[]")
        shown = f"[{bare}]" if ":" in bare else bare
        extra = ""
        if self.addresses and [bare] != list(self.addresses):
            extra = f" ({', '.join(self.addresses)})"
        return f"{shown}:{self.port}{extra}"


def _is_loopback_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]").partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _bind_addresses(host: str, port: int) -> tuple[str, ...]:
    """The addresses ``asyncio.start_server(host=...)`` binds: a name binds all it resolves to."""
    if not host:
        return ("0.0.0.0", "::")
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def plan_listeners(
    modes: Sequence[str], listen_host: str, listen_port: int | None, server: bool = True
) -> list[Listener]:
    """Every address mitmproxy's proxyserver will bind for these options (ValueError: bad mode).

    Uses mitmproxy's own parser and its ``listen_host``/``listen_port`` rules, so a
    ``mode=socks5@0.0.0.0:1080`` is seen exactly as mitmproxy will bind it. Modes that
    bind no port (local, tun) intercept this machine's own traffic: no listener.
    """
    from mitmproxy.proxy import mode_specs

    if not server:
        return []
    out = []
    for spec in modes:
        mode = mode_specs.ProxyMode.parse(spec)
        port = mode.listen_port(listen_port)
        if port is None:
            continue
        host = mode.listen_host(listen_host)
        out.append(
            Listener(mode.type_name, mode.description, host, port, _bind_addresses(host, port))
        )
    return out


def exposure_problem(
    listeners: Sequence[Listener], proxyauth: str, allow_clients: Sequence[str]
) -> str | None:
    """Why these listeners would make an open proxy, or None when they are fine.

    ``--allow-clients`` closes every listener (the client allow-list runs on each
    connection whatever the mode); proxyauth only those modes that ask for a login.
    """
    if allow_clients:
        return None
    open_ = [
        lst
        for lst in listeners
        if not lst.loopback_only and not (proxyauth and lst.mode in PROXYAUTH_MODES)
    ]
    if not open_:
        return None
    where = "; ".join(f"{lst.description} on {lst.where}" for lst in open_)
    unresolved = [lst.host for lst in open_ if not lst.addresses]
    hint = f" ({', '.join(unresolved)} does not resolve)" if unresolved else ""
    login = (
        "Require a login with --set proxyauth=USER:PASS (or another mitmproxy proxyauth "
        "method; HTTP and SOCKS5 modes only), or name"
        if any(lst.mode in PROXYAUTH_MODES for lst in open_)
        else "Name"
    )
    return (
        f"refusing to listen on {where}{hint}: anyone who can reach that port could use "
        f"this proxy. {login} the client networks allowed with --allow-clients CIDR "
        "(repeatable), or listen on 127.0.0.1."
    )


def _set_value(setoptions: list[str], name: str) -> str:
    value = ""
    for spec in setoptions:
        key, _, val = spec.partition("=")
        if key.strip() == name:
            value = val.strip()
    return value


def _early_exposure_problem(args: argparse.Namespace) -> str | None:
    """The exposure check on the command line alone, parsed as mitmproxy will parse it."""
    from mitmproxy import exceptions
    from mitmproxy.options import Options

    opts = Options(listen_host=args.listen_host, listen_port=args.listen_port)
    try:
        opts.set(*args.setoptions, defer=True)  # jg_ and addon options are not known yet
        found = plan_listeners(opts.mode, opts.listen_host, opts.listen_port, opts.server)
    except (exceptions.OptionsError, ValueError):
        return None  # reported with mitmproxy's own message once the addons are loaded
    return exposure_problem(found, _set_value(args.setoptions, "proxyauth"), args.allow_clients)


def refresh_role(args: argparse.Namespace) -> str:
    """Files named on the command line are the lists: nothing to refresh."""
    if args.refresh_role:
        return str(args.refresh_role)
    return "off" if args.blocklist or args.allowlist else "refresh"


def _fail(message: str) -> int:
    print(f"jectguard: {message}", file=sys.stderr)
    return EXIT_INPUT


def main(args: argparse.Namespace) -> int:
    if not 0 < args.listen_port < 65536:
        return _fail(f"--listen-port must be between 1 and 65535, got {args.listen_port}")
    for flag, specs in (
        ("--allow-clients", args.allow_clients),
        ("--trusted-proxies", args.trusted_proxies),
    ):
        for spec in specs:
            try:
                ipaddress.ip_network(spec, strict=False)
            except ValueError:
                return _fail(f"{flag}: not an IP network: {spec!r}")
    # Fail fast, before building a large engine; re-checked on the final options
    # (a config.yaml may set proxyauth, mode or listen_host).
    problem = _early_exposure_problem(args)
    if problem:
        return _fail(problem)
    workers = _workers_hook(args)
    if workers is not None:
        return workers

    from proxy_addons.cli.common import engine_from_args

    engine, report = engine_from_args(args)  # before the event loop starts: may take seconds
    # The start-up heap leaves the cyclic GC's reach once the proxy runs (FreezeStartupHeap).
    try:
        return asyncio.run(_serve(args, engine, report))
    finally:
        engine.close()


def _workers_hook(args: argparse.Namespace) -> int | None:
    """``--workers N`` (N > 1): supervise N copies of this command; None to serve here."""
    from proxy_addons.cli.workers import WorkerContext, parse_workers, supervise

    if WorkerContext.from_env() is not None:
        return None  # a worker itself
    try:
        n = parse_workers(str(args.workers))
    except ValueError as exc:
        return _fail(str(exc))
    if n == 1:
        return None
    if args.dns_port is not None:
        return _fail("--workers: DNS (--dns-port) is served by a single process; drop one")
    return supervise(n, refresh_role(args))


def _startup_message(
    opts: Any, listeners: list[Listener], report: LoadReport, addons: list[Any]
) -> str:
    confdir = Path(os.path.expanduser(opts.confdir))
    mode = "enforce" if opts.jg_mode == "enforce" else "MONITOR ONLY: nothing is blocked"
    if listeners:
        first, *others = listeners
        kind = "" if first.mode == "regular" else f" as {first.description}"
        lines = [f"jectguard: proxy on {first.where}{kind} ({mode})"]
        lines += [f"  also on {lst.where} as {lst.description}" for lst in others]
        exposed = [lst.where for lst in listeners if not lst.loopback_only]
        if exposed:
            lines.append(f"  reachable from the network: {', '.join(exposed)}")
    else:
        lines = [
            f"jectguard: no proxy listener (server=false); refresh role {opts.jg_refresh_role}"
        ]
    if opts.jg_intercept:
        lines += [
            "  TLS interception ON: HTTPS URLs are checked in full and blocked pages explained.",
            "  Clients must trust jectguard's CA: browse to http://mitm.it through the proxy,",
            f"  or install {confdir / 'mitmproxy-ca-cert.pem'}",
        ]
    else:
        lines += [
            "  TLS interception OFF (--no-intercept): HTTPS is blocked by host (CONNECT/SNI)",
            "  only and passed through untouched; browsers show their own error when blocked.",
        ]
    if opts.jg_allow_clients:
        lines.append(f"  clients allowed from: {', '.join(opts.jg_allow_clients)} (and loopback)")
    if opts.jg_trusted_proxies:
        lines.append(
            f"  PROXY protocol required from: {', '.join(opts.jg_trusted_proxies)} "
            "(the client it names is the client)"
        )
    if opts.proxyauth:
        lines.append("  proxy authentication required (proxyauth)")
    admin = next((a for a in addons if getattr(a, "name", "") == "jectguard_admin"), None)
    if admin is not None and opts.jg_admin_port:
        base = f"http://{opts.jg_admin_host}:{opts.jg_admin_port}/"
        lines.append(f"  dashboard: {base}  (admin API, /metrics)")
        lines.append(f"  PAC file:  {base}proxy.pac")
        token = getattr(admin, "token", None)
        if token is not None and getattr(token, "path", None):
            lines.append(f"  admin token in: {token.path}")
    lines.append("  lists:")
    for st in report.lists:
        if st.loaded:
            lines.append(f"    {st.name:<24} {st.rules:>9} rules  ({st.source})")
        else:
            lines.append(f"    {st.name:<24} not loaded: {st.error}")
    bs = report.block_stats
    if bs is not None:
        refused = getattr(bs, "refused_count", 0)
        lines.append(
            f"  {bs.rules} block rules in force"
            + (f", {refused} refused by the poison guard" if refused else "")
        )
    return "\n".join(lines)


def drop_legacy_log_events() -> None:
    """Remove mitmproxy's handler that turns every log record into an ``add_log`` event.

    That event is deprecated since mitmproxy 9 and no addon here (nor mitmproxy's
    own) uses it, but each record still costs a synchronous dispatch to every
    addon: ~0.1 ms of CPU per blocked request, whose log line is one record.
    Log output itself (termlog, errorcheck) uses handlers of its own.
    """
    from mitmproxy.log import LegacyLogEvents

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LegacyLogEvents):
            root.removeHandler(handler)


def make_master(opts: Any) -> Any:
    """mitmdump's master as ``jectguard run`` uses it (before jectguard's own addons).

    stdout carries only the JSON event stream (for a SIEM); people read stderr,
    where mitmproxy's flow lines go too (off unless --set flow_detail=1 or more).
    The event dispatch is :mod:`.dispatch`'s: on an allowed request, half the event
    loop's time was mitmproxy's own dispatch.
    """
    from mitmproxy.addons.dumper import Dumper
    from mitmproxy.addons.termlog import TermLog
    from mitmproxy.tools.dump import DumpMaster

    from proxy_addons.cli.dispatch import install as install_fast_dispatch

    master: Any = DumpMaster(opts, with_termlog=False, with_dumper=False)
    install_fast_dispatch(master)
    drop_legacy_log_events()
    master.addons.add(TermLog(out=sys.stderr), Dumper(outfile=sys.stderr))
    opts.update(flow_detail=0)
    return master


async def _serve(args: argparse.Namespace, engine: Engine, report: LoadReport) -> int:
    from mitmproxy import exceptions, optmanager
    from mitmproxy.options import Options

    from proxy_addons.addons import EngineHolder, Jectguard, make_addons
    from proxy_addons.cli.workers import prepare_worker
    from proxy_addons.lists.layout import cache_dir_from

    # As mitmproxy's own entry point does: the termlog addon filters by verbosity.
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("asyncio", "hpack", "quic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    confdir = Path(args.confdir) if args.confdir else default_confdir()
    cache_dir = cache_dir_from(args.cache_dir)
    opts = Options()
    master = make_master(opts)
    addons = make_addons(EngineHolder(engine), report=report, cache_dir=cache_dir)
    prepare_worker(addons)  # --workers: share the port, report every worker; else nothing
    # DNS mode: jectguard answers a blocked name before mitmproxy's resolver asks upstream.
    resolver = master.addons.get("dnsresolver")
    if resolver is not None:
        master.addons.remove(resolver)
    master.addons.add(Jectguard(addons))
    if resolver is not None:
        master.addons.add(resolver)
    try:
        opts.update(
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            confdir=str(confdir),
            jg_mode=args.mode,
            jg_intercept=not args.no_intercept,
            jg_admin_contact=args.admin_contact,
            jg_allow_clients=list(args.allow_clients),
            jg_trusted_proxies=list(args.trusted_proxies),
            jg_allow_destination=list(args.allow_destination),
            jg_connect_ports=list(args.connect_ports) or ["443"],
            jg_admin_host=args.admin_host,
            jg_admin_port=args.admin_port,
            jg_admin_token_file=args.admin_token_file,
            jg_events_file=args.events_file,
            jg_events_drop_query=args.events_drop_query,
            jg_refresh_role=refresh_role(args),
            jg_sources=str(args.sources or ""),
            jg_cache_dir=str(cache_dir),
        )
        if args.dns_only and args.dns_port is None:
            return _fail("--dns-only needs --dns-port PORT")
        if args.dns_port is not None:
            if not 0 < args.dns_port < 65536:
                return _fail(f"--dns-port: {args.dns_port} is not a port (1-65535)")
            dns_mode = f"dns@{args.dns_port}"
            opts.update(mode=[dns_mode] if args.dns_only else [*opts.mode, dns_mode])
        if args.no_intercept:
            # mitmproxy's own passthrough; our next_layer hook still checks each SNI.
            opts.update(ignore_hosts=[".*"])
        optmanager.load_paths(opts, str(confdir / "config.yaml"), str(confdir / "config.yml"))
        opts.set(*args.setoptions)
    except exceptions.OptionsError as exc:
        return _fail(str(exc))
    try:
        listeners = plan_listeners(opts.mode, opts.listen_host, opts.listen_port, opts.server)
    except ValueError as exc:
        return _fail(f"mode: {exc}")
    problem = exposure_problem(listeners, opts.proxyauth or "", list(opts.jg_allow_clients))
    if problem:
        return _fail(problem)

    print(_startup_message(opts, listeners, report, addons), file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, master.shutdown)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(master.shutdown))
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await master.run()
    return EXIT_OK
