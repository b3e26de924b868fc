"""HTTPS page loads in headless Chromium: no proxy vs plain mitmdump vs ``jectguard run``.

    python benchmarks/bench_pageload.py [--quick] [--pages 10] [--rounds 4] [--small]

A corpus of pages (HTML of 50-500 KB, each with 30-80 subresources: stylesheets,
scripts and PNG images over four host names; HTML, CSS and JS gzip- or
brotli-encoded; every third page carries an injected footer that loads a script
and an iframe from a listed host) is served over HTTPS by an aiohttp origin (its
own process, a self-signed certificate for every name). Chromium (Debian's, via
Playwright) maps the names to 127.0.0.1 with ``--host-resolver-rules``; the proxies
resolve them through a host table (the ``--launch`` wrapper below), and trust the
origin with ``ssl_insecure``. Chromium trusts the origin's and each proxy's CA by
their SPKI hashes (``--ignore-certificate-errors-spki-list``), so certificates count
as valid and responses are cached as on a real site.

Configurations: direct (no proxy), plain ``mitmdump``, and ``jectguard run`` with
the 1.11M-rule synthetic lists (gen_lists.py) plus the footer's host, stripping on
(the default). Each round loads every page twice through each configuration, in
turn (so load on the machine hits them alike): a first visit in a fresh browser
context (empty cache, new connections) and a repeat visit in the same context
(subresources from the cache, the HTML revalidated with a 304). Printed: median
and p95 of the navigation timing ``loadEventEnd``, the proxy's CPU time per page
(psutil, the whole proxy process) and failed requests. Issue 16's target:
jectguard within 1.05x of plain mitmdump on median and p95.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gzip
import hashlib
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _procs import free_port, stop, wait_port  # noqa: E402

BIN = Path(sys.executable).parent
HOSTS = ("www.news.example", "static.news.example", "img.cdn.example", "media.cdn.example")
EVIL = "evil-cdn.example"
ALL_HOSTS = (*HOSTS, EVIL)
CHROMIUM = "/usr/bin/chromium"
LOAD_TIMEOUT_MS = 60_000
QUIET = ["--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]

_WORDS = (
    "the council said on tuesday that its report on regional transport would be published "
    "after a consultation with residents businesses and local groups over the coming months"
).split()


# -- corpus (deterministic: the origin process rebuilds it from the same seed) ---------


@dataclass
class Resource:
    body: bytes
    content_type: str
    encoding: str = ""  # "", "gzip" or "br"
    cache: str = "public, max-age=86400"


@dataclass
class Corpus:
    port: int
    pages: list[str] = field(default_factory=list)  # URLs
    resources: dict[tuple[str, str], Resource] = field(default_factory=dict)  # (host, path)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _png(rng: random.Random, size: int) -> bytes:
    """A valid PNG of about ``size`` bytes (noisy pixels do not compress)."""
    w = 64
    h = max(1, size // (w * 3))
    raw = b"".join(b"\x00" + rng.randbytes(w * 3) for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def _encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, 6)
    if encoding == "br":
        import brotli

        return bytes(brotli.compress(body, quality=5))
    return body


def build_corpus(port: int, pages: int, seed: int = 16) -> Corpus:
    rng = random.Random(seed)
    c = Corpus(port)
    base = {h: f"https://{h}:{port}" for h in ALL_HOSTS}
    shared = [
        ("static.news.example", "/shared/site.css", "text/css"),
        ("static.news.example", "/shared/site.js", "application/javascript"),
    ]
    for host, path, ctype in shared:
        body = (
            f"/* {_text(rng, 4000)} */"
            if ctype == "text/css"
            else f"var site = {{}}; // {_text(rng, 6000)}"
        ).encode()
        c.resources[(host, path)] = Resource(_encode(body, "br"), ctype, "br")
    c.resources[(EVIL, "/c.js")] = Resource(b"var x = 1;", "application/javascript")
    c.resources[(EVIL, "/f.html")] = Resource(b"<p>x</p>", "text/html")
    for i in range(pages):
        enc = "gzip" if i % 2 == 0 else "br"
        n_sub = rng.randint(30, 80)
        tags = [
            f'<link rel="stylesheet" href="{base[h]}{p}">'
            if t == "text/css"
            else f'<script src="{base[h]}{p}"></script>'
            for h, p, t in shared
        ]
        for j in range(n_sub - len(shared)):
            kind = rng.choices(("css", "js", "img"), weights=(1, 3, 6))[0]
            if kind == "img":
                host = rng.choice(("img.cdn.example", "media.cdn.example"))
                path = f"/p{i}/i{j}.png"
                c.resources[(host, path)] = Resource(
                    _png(rng, rng.randint(2_000, 40_000)), "image/png"
                )
                tags.append(f'<img src="{base[host]}{path}" width="64" alt="">')
            else:
                host = "static.news.example"
                path = f"/p{i}/r{j}.{kind}"
                size = rng.randint(2_000, 60_000 if kind == "js" else 30_000)
                body = (
                    f"/* {_text(rng, size // 6)} */\n.c{j} {{ color: #333 }}"
                    if kind == "css"
                    else f"window.v{j} = {j}; // {_text(rng, size // 6)}"
                ).encode()
                renc = rng.choice(("gzip", "br"))
                ctype = "text/css" if kind == "css" else "application/javascript"
                c.resources[(host, path)] = Resource(_encode(body, renc), ctype, renc)
                tags.append(
                    f'<link rel="stylesheet" href="{base[host]}{path}">'
                    if kind == "css"
                    else f'<script src="{base[host]}{path}"></script>'
                )
        target = rng.randint(50_000, 500_000)
        head = [t for t in tags if not t.startswith("<img")]
        imgs = [t for t in tags if t.startswith("<img")]
        paras: list[str] = []
        size = 0
        k = 0
        while size < target:
            p = f"<p>{_text(rng, rng.randint(40, 200))}</p>"
            if imgs and k % 3 == 0:
                p += imgs.pop()
            paras.append(p)
            size += len(p)
            k += 1
        paras += imgs
        html = (
            "<!doctype html><html><head><meta charset=utf-8><title>page</title>"
            + "".join(head)
            + "</head><body>"
            + "\n".join(paras)
            + "</body></html>"
        )
        if i % 3 == 2:  # the injected footer: after </html>, as compromised servers append it
            html += (
                f'\n<script src="{base[EVIL]}/c.js"></script>'
                f'<iframe src="{base[EVIL]}/f.html" width="1" height="1"></iframe>'
            )
        path = f"/article/{i}.html"
        c.resources[("www.news.example", path)] = Resource(
            _encode(html.encode(), enc), "text/html; charset=utf-8", enc, "no-cache"
        )
        c.pages.append(f"{base['www.news.example']}{path}")
    return c


# -- origin (its own process) ----------------------------------------------------------


def serve_origin(port: int, pages: int, cert: str, key: str) -> None:
    import ssl

    from aiohttp import web

    corpus = build_corpus(port, pages)

    async def handle(request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower()
        res = corpus.resources.get((host, request.path))
        if res is None:
            return web.Response(status=404)
        etag = '"' + hashlib.blake2b(res.body, digest_size=8).hexdigest() + '"'
        headers = {"Content-Type": res.content_type, "Cache-Control": res.cache, "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if res.encoding:
            headers["Content-Encoding"] = res.encoding
            headers["Vary"] = "Accept-Encoding"
        return web.Response(body=res.body, headers=headers)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    web.run_app(
        app, host="127.0.0.1", port=port, ssl_context=ctx, print=None, access_log=None, backlog=1024
    )


def make_cert(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for every host name; returns its SPKI hash too."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=20))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in ALL_HOSTS]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    c, k = directory / "origin.pem", directory / "origin.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k, spki_hash(c)


def spki_hash(pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


# -- proxies ------------------------------------------------------------------------------


def launch(which: str, argv: list[str]) -> int:
    """Run a proxy with ``*.example`` names resolving to 127.0.0.1 (the origin)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower().rstrip(".").endswith(".example"):
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    if which == "mitmdump":
        from mitmproxy.tools.main import mitmdump

        sys.argv = ["mitmdump", *argv]
        mitmdump()
        return 0
    from proxy_addons.cli import main as jectguard

    return jectguard(argv)


@dataclass
class Config:
    name: str
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    confdir: Path | None = None
    browser: Any = None
    load: dict[str, list[float]] = field(default_factory=lambda: {"first": [], "repeat": []})
    cpu: dict[str, float] = field(default_factory=lambda: {"first": 0.0, "repeat": 0.0})
    failed: int = 0

    def cpu_now(self) -> float:
        if self.proc is None:
            return 0.0
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)


def start_proxy(cfg: Config, cmd: list[str], tmp: Path) -> None:
    log = tmp / f"{cfg.name.split()[0]}.log"
    with log.open("wb") as out:
        cfg.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    t0 = time.monotonic()
    assert cfg.port is not None
    wait_port(cfg.port, cfg.proc, log)
    print(f"  {cfg.name} listening after {time.monotonic() - t0:.1f} s", flush=True)


# -- loads --------------------------------------------------------------------------------


def load_page(cfg: Config, url: str) -> None:
    """A first visit (fresh context) and a repeat visit (same context), timed by the page."""
    ctx = cfg.browser.new_context()
    try:
        page = ctx.new_page()
        page.on("requestfailed", lambda r: _failed(cfg, r))
        for kind in ("first", "repeat"):
            c0 = cfg.cpu_now()
            page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
            nav = page.evaluate(
                "() => { const n = performance.getEntriesByType('navigation')[0];"
                " return n.loadEventEnd - n.startTime; }"
            )
            cfg.cpu[kind] += cfg.cpu_now() - c0
            cfg.load[kind].append(float(nav))
    finally:
        ctx.close()


def _failed(cfg: Config, request: Any) -> None:
    if EVIL not in request.url:  # the footer's requests fail by design through jectguard
        cfg.failed += 1


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def report(configs: list[Config]) -> None:
    base = next((c for c in configs if c.name.startswith("mitmdump")), configs[0])
    print(
        f"\n{'configuration':<34}{'visit':<8}{'median ms':>10}{'p95 ms':>9}"
        f"{'vs mitmdump':>13}{'proxy CPU ms/page':>19}{'failed':>8}"
    )
    for c in configs:
        for kind in ("first", "repeat"):
            xs = c.load[kind]
            if not xs:
                continue
            med, p95 = statistics.median(xs), pct(xs, 95)
            bx = base.load[kind]
            ratio = (
                f"{med / statistics.median(bx):.2f}x/{p95 / pct(bx, 95):.2f}x"
                if bx and c is not base
                else ""
            )
            cpu = f"{c.cpu[kind] / len(xs) * 1000:.0f}" if c.proc is not None else "-"
            print(
                f"{c.name:<34}{kind:<8}{med:>10.0f}{p95:>9.0f}{ratio:>13}{cpu:>19}"
                f"{c.failed if kind == 'first' else '':>8}"
            )
    print("(vs mitmdump: median ratio / p95 ratio)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pages", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="4 pages, 2 rounds, 1,000-rule lists")
    ap.add_argument("--small", action="store_true", help="1,000-rule lists instead of 1.11M")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--serve-origin", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--launch", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.launch:
        return launch(args.launch[0], args.launch[1:])
    if args.serve_origin:
        port, pages, cert, key = args.serve_origin
        serve_origin(int(port), int(pages), cert, key)
        return 0
    if args.quick:
        args.pages, args.rounds, args.small = 4, 2, True

    lists = [args.data / f"{n}.txt" for n in ("domains", "urls", "cidrs")]
    if not all(p.exists() for p in lists):
        subprocess.run(
            [sys.executable, str(HERE / "gen_lists.py"), "--out", str(args.data)], check=True
        )
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="jg-pageload-") as tmpdir:
        tmp = Path(tmpdir)
        if args.small:
            for p in lists:
                (tmp / p.name).write_text("\n".join(p.read_text().splitlines()[:1000]) + "\n")
            lists = [tmp / p.name for p in lists]
        (tmp / "footer.txt").write_text(f"{EVIL}\n")
        lists.append(tmp / "footer.txt")
        cert, key, origin_spki = make_cert(tmp)
        oport = free_port()
        origin = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-origin",
                str(oport),
                str(args.pages),
                str(cert),
                str(key),
            ]
        )
        corpus_pages = build_corpus(oport, args.pages).pages
        configs = [
            Config("direct (no proxy)"),
            Config("mitmdump"),
            Config("jectguard run (strip on)"),
        ]
        me = [sys.executable, __file__, "--launch"]
        try:
            wait_port(oport, origin, tmp / "none")
            for cfg in configs[1:]:
                cfg.port, cfg.confdir = free_port(), tmp / cfg.name.split()[0]
                if cfg.name == "mitmdump":
                    cmd = [
                        *me,
                        "mitmdump",
                        "--listen-host",
                        "127.0.0.1",
                        "--listen-port",
                        str(cfg.port),
                        "--set",
                        f"confdir={cfg.confdir}",
                        "--set",
                        "ssl_insecure=true",
                        *QUIET,
                    ]
                else:
                    cmd = [
                        *me,
                        "jectguard",
                        "run",
                        "--listen-port",
                        str(cfg.port),
                        "--confdir",
                        str(cfg.confdir),
                        "--cache-dir",
                        str(tmp / "cache"),
                        "--admin-port",
                        "0",
                        "--events-file",
                        str(tmp / "events.jsonl"),
                        *[a for p in lists for a in ("--blocklist", str(p))],
                        "--set",
                        "ssl_insecure=true",
                        *QUIET,
                        # the origin is local: open what the destination policy refuses
                        "--allow-destination",
                        "127.0.0.0/8",
                        "--connect-ports",
                        str(oport),
                    ]
                start_proxy(cfg, cmd, tmp)
            spkis = [origin_spki] + [
                spki_hash(c.confdir / "mitmproxy-ca-cert.pem")
                for c in configs[1:]
                if c.confdir is not None
            ]
            flags = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP *.example 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={','.join(spkis)}",
            ]
            print(
                f"{args.pages} pages x {args.rounds} rounds; origin on 127.0.0.1:{oport}; "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                flush=True,
            )
            with sync_playwright() as pw:
                for cfg in configs:
                    proxy = {"server": f"http://127.0.0.1:{cfg.port}"} if cfg.port else None
                    cfg.browser = pw.chromium.launch(
                        executable_path=CHROMIUM,
                        args=flags,
                        proxy=proxy,  # type: ignore[arg-type]
                    )
                for url in corpus_pages[:1]:  # warm-up: start-up costs, not measured
                    for cfg in configs:
                        load_page(cfg, url)
                        cfg.load = {"first": [], "repeat": []}
                        cfg.cpu = {"first": 0.0, "repeat": 0.0}
                        cfg.failed = 0
                for r in range(args.rounds):
                    for i, url in enumerate(corpus_pages):
                        order = configs[(i + r) % 3 :] + configs[: (i + r) % 3]
                        for cfg in order:
                            load_page(cfg, url)
                    print(f"  round {r + 1}/{args.rounds} done", flush=True)
                for cfg in configs:
                    cfg.browser.close()
            report(configs)
            events = tmp / "events.jsonl"
            stripped = events.read_text().count('"strip') if events.exists() else 0
            print(
                f"jectguard events mentioning strip: {stripped}; "
                f"load average {os.getloadavg()[0]:.1f} at the end"
            )
        finally:
            for cfg in configs:
                if cfg.proc is not None:
                    stop(cfg.proc)
            stop(origin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
