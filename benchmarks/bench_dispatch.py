"""CPU per allowed request spent in mitmproxy's addon dispatch and the hooks, no sockets.

    python benchmarks/bench_dispatch.py [--requests 3000] [--rounds 5] [--small]

Builds the same addon chain as ``mitmdump`` (DumpMaster with termlog and dumper)
and as ``jectguard run`` (``run.make_master``, plus the Jectguard addon and its
children, with the 1.11M-rule lists by default; once more with mitmproxy's own
event dispatch instead of ``proxy_addons.cli.dispatch``), then replays the hooks mitmproxy triggers for one
allowed HTTP request on a kept-alive connection (requestheaders, request,
responseheaders, response; each followed by mitmproxy's ``update`` event) on a
fresh flow, ``--requests`` times. Timed with ``time.process_time`` (CPU, not wall
time), alternating the two chains, best of ``--rounds``: the figure is much less
sensitive to other load on the machine than a socket benchmark. The difference
between mitmdump and "jectguard, mitmproxy's dispatch" is what jectguard's hooks add;
"jectguard run" is what the proxy pays.

``--by-addon`` also times each top-level addon's share (mitmproxy's
``invoke_addon`` for that addon alone, with the same flows), and each of
jectguard's children alone (its hook methods called directly).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _flow() -> Any:
    from mitmproxy.test import tflow

    f = tflow.tflow(resp=True)
    f.request.url = "http://127.0.0.1:8000/"
    f.request.headers["accept"] = "*/*"
    f.response.headers["content-type"] = "text/plain"
    f.response.content = b"ok"
    f.live = True  # hooks skip flows that are not live (replays)
    # A plain-HTTP client and server, as in bench_proxy.py (tflow's have TLS and an SNI,
    # which the request check would look up as one more name).
    for conn in (f.client_conn, f.server_conn):
        conn.sni = conn.tls_version = conn.alpn = conn.cipher = None
    return f


def _hooks(flow: Any) -> list[Any]:
    """The hooks of one request, the response taken off the flow until the server answers."""
    from mitmproxy.proxy.layers import http as http_layer

    response = flow.response
    flow.response = None

    def answered() -> None:
        flow.response = response

    return [
        http_layer.HttpRequestHeadersHook(flow),
        http_layer.HttpRequestHook(flow),
        answered,
        http_layer.HttpResponseHeadersHook(flow),
        http_layer.HttpResponseHook(flow),
    ]


async def _master(jectguard: bool, lists: list[Path], fast_dispatch: bool = True) -> Any:
    import tempfile

    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    opts = Options()
    # tlsconfig's request hook needs its certificate store (the CA in confdir).
    confdir = tempfile.mkdtemp(prefix="jg-dispatch-conf-")
    if not jectguard:
        master = DumpMaster(opts)  # what mitmdump builds
        opts.update(flow_detail=0, termlog_verbosity="warn", confdir=confdir)
        return master
    from proxy_addons.addons import EngineHolder, Jectguard, make_addons
    from proxy_addons.cli import build_parser, engine_from_args
    from proxy_addons.cli.run import drop_legacy_log_events, make_master

    args = build_parser().parse_args(["run", *[a for p in lists for a in ("--blocklist", str(p))]])
    engine, report = engine_from_args(args)
    if fast_dispatch:
        master = make_master(opts)  # exactly as `jectguard run` builds it
    else:  # mitmproxy's own dispatch, for the comparison
        from mitmproxy.addons.dumper import Dumper
        from mitmproxy.addons.termlog import TermLog

        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        drop_legacy_log_events()
        master.addons.add(TermLog(out=sys.stderr), Dumper(outfile=sys.stderr))
    # A cache of its own (the campaign state, the ledger), never the user's.
    addons = make_addons(EngineHolder(engine), report=report, cache_dir=Path(confdir) / "cache")
    master.addons.add(Jectguard(addons))
    opts.update(
        flow_detail=0,
        termlog_verbosity="warn",
        jg_admin_port=0,
        jg_events_file="",
        jg_refresh_role="off",
        jg_allow_destination=["127.0.0.0/8"],  # the origin is local, as in bench_proxy.py
        jg_connect_ports=["1-65535"],
        confdir=confdir,
    )
    return master


async def _replay(master: Any, n: int, addon: Any = None, child: Any = None) -> float:
    """CPU seconds for ``n`` requests' hooks (through one addon, or one child, when given)."""
    steps = [_hooks(_flow()) for _ in range(n)]
    t0 = time.process_time()
    for hooks in steps:
        for hook in hooks:
            if callable(hook):
                hook()
            elif child is not None:  # the child's own method, without any dispatch
                method = getattr(child, hook.name, None)
                if method is not None:
                    result = method(*hook.args())
                    if result is not None and inspect.isawaitable(result):
                        await result
            elif addon is None:
                await master.addons.handle_lifecycle(hook)
            else:
                await master.addons.invoke_addon(addon, hook)
    return time.process_time() - t0


async def main_async(args: argparse.Namespace, lists: list[Path]) -> None:
    from mitmproxy import hooks

    plain = await _master(False, lists)
    jg_stock = await _master(True, lists, fast_dispatch=False)
    jg = await _master(True, lists)
    masters = {"mitmdump": plain, "jectguard, mitmproxy's dispatch": jg_stock,
               "jectguard run": jg}  # fmt: skip
    for m in masters.values():  # as the proxy starts: tlsconfig's CA, jectguard's heap freeze
        await m.addons.trigger_event(hooks.RunningHook())
    logging.getLogger().setLevel(logging.WARNING)
    best = dict.fromkeys(masters, float("inf"))
    for _ in range(args.rounds):
        for name, m in masters.items():
            best[name] = min(best[name], await _replay(m, args.requests) / args.requests)
    print(
        f"addon chain: mitmdump {len(plain.addons.chain)} top-level addons, "
        f"jectguard {len(jg.addons.chain)}"
    )
    base = best["mitmdump"]
    for name, s in best.items():
        print(
            f"{name:<34}{s * 1e6:8.1f} us CPU per request ({(s - base) * 1e6:+7.1f} us; "
            f"hooks + dispatch, best of {args.rounds} x {args.requests})"
        )
    jg = jg_stock  # per addon: mitmproxy's invoke_addon, the same in both
    if args.by_addon:
        n = args.requests // 3
        shares: dict[str, dict[str, float]] = {}
        for label, m in (("mitmdump", plain), ("jectguard", jg)):
            for a in m.addons.chain:
                t = min([await _replay(m, n, a) for _ in range(3)]) / n
                shares.setdefault(type(a).__name__, {})[label] = t
        print(f"  {'addon':<22}{'mitmdump us':>12}{'jectguard us':>13}")
        for name, t in sorted(shares.items(), key=lambda kv: -max(kv[1].values())):
            print(
                f"  {name:<22}{t.get('mitmdump', 0) * 1e6:>12.1f}"
                f"{t.get('jectguard', 0) * 1e6:>13.1f}"
            )
        parent = jg.addons.get("jectguard")
        print("  jectguard's children, their own hooks called directly (no dispatch):")
        for child in getattr(parent, "children", ()):
            t = min([await _replay(jg, n, child=child) for _ in range(3)]) / n
            print(f"    {type(child).__name__:<22}{t * 1e6:>10.1f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="1,000-rule lists")
    ap.add_argument("--by-addon", action="store_true")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    args = ap.parse_args()
    lists = [args.data / f"{n}.txt" for n in ("domains", "urls", "cidrs")]
    if args.small:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="jg-dispatch-"))
        for p in lists:
            (tmp / p.name).write_text("\n".join(p.read_text().splitlines()[:1000]) + "\n")
        lists = [tmp / p.name for p in lists]
    asyncio.run(main_async(args, lists))
    return 0


if __name__ == "__main__":
    sys.exit(main())
