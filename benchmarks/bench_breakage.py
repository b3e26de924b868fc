"""Does jectguard break clean pages? Chromium direct vs plain mitmdump vs ``jectguard run``, one run.

    python benchmarks/bench_breakage.py [--quick] [--install] [--max-pages 300] [--shots 10]

The corpus, served over local HTTPS (a TLS origin with a self-signed certificate)
with a content coding chosen per page (gzip, br, zstd, deflate, chunked,
identity):

* **Documentation sites from Debian packages** that ship HTML (python3-doc,
  debian-reference-en, git-doc, apache2-doc, postgresql-doc-15). Each is looked for where the
  package installs it; ``--install`` runs ``apt-get install`` for the missing ones
  (root). What is missing is printed, never silently skipped.
* **Generated real-world shapes** (``generated`` below): templates, SVG and
  MathML, several charsets (windows-1251, Shift_JIS, ISO-8859-1, UTF-16), JSON
  app state, and pages that *quote* indicators of compromise: a JSON-LD article
  record naming a blocked URL, a ``__NEXT_DATA__`` post quoting blocked hosts, a
  code viewer's JSON payload of ``blocklists/builtin.txt``, an inline link
  checker holding blocked hosts as data, an IOC list in prose. The IOC pages are
  a category of their own: they changed until the scanner stopped judging data
  by its text (issue 17, branch i17-scan), and must pass since.

Each page is loaded in headless Debian Chromium (Playwright, ``/usr/bin/chromium``)
three ways: directly, through plain ``mitmdump``, and through ``jectguard run``
(the shipped ``blocklists/builtin.txt``, stripping on). Compared with the direct
load: the document's response bytes, the DOM text (``innerText``), console errors,
and, for a sample (``--shots``), a screenshot. Printed: pages changed per category
(target 0 for clean pages), what changed on each, and page-load time (navigation
to ``load``) median and p95 for the three paths.

Certificates: the browser contexts set ``ignore_https_errors`` (the proxies' CAs
and the origin's certificate are throwaways made for the run), as the e2e browser
tests do; both proxies verify nothing upstream (``ssl_insecure``) for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import hashlib
import json
import mimetypes
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import brotli  # noqa: E402
from _procs import free_port, start, stop  # noqa: E402
from aiohttp import web  # noqa: E402

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-features=HttpsUpgrades",
]  # fmt: skip
HOST = "corpus.test"
NAV_TIMEOUT_MS = 30_000
# (package, where its HTML lives): the first index.html under it is the entry page.
DEBIAN_DOCS = [
    ("python3-doc", "/usr/share/doc/python3-doc/html"),
    ("debian-reference-en", "/usr/share/debian-reference"),
    ("git-doc", "/usr/share/doc/git-doc"),
    ("apache2-doc", "/usr/share/doc/apache2-doc/manual"),
    ("postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html"),
]
# (nginx-doc ships no HTML, only examples: not a site.)
QUICK_DOCS = 4  # pages per documentation site in --quick (under 2 minutes)
CODINGS = ("gzip", "br", "zstd", "deflate", "chunked", "identity")
IOC_HOSTS = ("gumblar.cn", "martuz.cn", "lizamoon.com")


# -- the corpus ---------------------------------------------------------------------------------


@dataclass
class Page:
    path: str  # URL path on the origin
    body: bytes
    content_type: str
    category: str  # "debian:<pkg>", "generated" or "ioc"
    coding: str = "identity"


def _doc(title: str, body: str, head: str = "", charset: str = "utf-8") -> str:
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset={charset}><title>{title}</title>"
        f"{head}</head><body>{body}</body></html>"
    )


def generated_pages() -> list[Page]:
    """Real-world shapes written out by hand: clean ones, and ones that quote IOCs."""
    builtin = (ROOT / "blocklists" / "builtin.txt").read_text(encoding="utf-8")
    out: list[Page] = []

    def add(
        name: str,
        html: str | bytes,
        category: str = "generated",
        ctype: str = "text/html; charset=utf-8",
    ) -> None:
        body = html.encode() if isinstance(html, str) else html
        out.append(Page(f"/gen/{name}.html", body, ctype, category))

    add(
        "template",
        _doc(
            "Template",
            "<template id=row><tr><td class=n></td><td><script>/*t*/</script></td></tr></template>"
            "<table id=t></table><script>const t=document.getElementById('row');for(let i=0;i<5;i++){"
            "const c=t.content.cloneNode(true);c.querySelector('.n').textContent='row '+i;"
            "document.getElementById('t').appendChild(c)}</script>",
        ),
    )
    add(
        "svg-mathml",
        _doc(
            "SVG and MathML",
            "<h1>Figures</h1><svg width=120 height=60 viewBox='0 0 120 60'>"
            "<title>bar</title><rect width=100 height=20 fill=teal /><text x=5 y=50>svg text</text>"
            "<script>document.title += ' (svg ok)';</script></svg>"
            "<math><mi>x</mi><mo>=</mo><mfrac><mn>1</mn><mn>2</mn></mfrac></math><p>after</p>",
        ),
    )
    add(
        "app-state-json",
        _doc(
            "App",
            "<div id=root></div><script id=__NEXT_DATA__ type=application/json>"
            + json.dumps(
                {
                    "props": {
                        "pageProps": {
                            "posts": [
                                {
                                    "id": i,
                                    "url": f"https://cdn.example.com/{i}.jpg",
                                    "title": f"Post {i}",
                                }
                                for i in range(3000)
                            ]
                        }
                    }
                }
            )
            + "</script><script>const d=JSON.parse(document.getElementById('__NEXT_DATA__').textContent);"
            "document.getElementById('root').textContent=d.props.pageProps.posts.length+' posts';</script>",
        ),
    )
    add(
        "ld-json-clean",
        _doc(
            "News",
            "<article><h1>Release notes</h1><p>Version 2.0 is out.</p></article>",
            head='<script type="application/ld+json">{"@type":"NewsArticle","headline":"Release 2.0",'
            '"url":"https://example.org/news/2"}</script>',
        ),
    )
    for cs, text in (
        ("windows-1251", "Привет, мир: страница в кодировке windows-1251"),
        ("shift_jis", "こんにちは世界。シフトJISのページです"),
        ("iso-8859-1", "Grüße aus Köln: café, naïve, œuvre?"),
    ):
        body = _doc(
            f"charset {cs}",
            f"<h1>{text}</h1><p>{text}</p><script>document.title+=' ok'</script>",
            charset=cs,
        ).encode(cs, "replace")
        add(f"charset-{cs}", body, ctype=f"text/html; charset={cs}")
    add(
        "charset-utf-16",
        "\ufeff".encode("utf-16-le") + _doc("utf-16", "<h1>UTF-16 página</h1>").encode("utf-16-le"),
        ctype="text/html",
    )
    # Pages that quote indicators: a reader's security news, a code host, a link checker.
    add(
        "ioc-ld-json",
        _doc(
            "Threat report",
            "<article><h1>Download.Ject, revisited</h1><p>Infected sites "
            "loaded http://www.nihaorr1.com/1.js in 2008.</p></article>",
            head='<script type="application/ld+json">{"@context":"https://schema.org","@type":"NewsArticle",'
            '"headline":"Mass SQL injection","articleBody":"the script http://www.nihaorr1.com/1.js was injected"}</script>',
        ),
        "ioc",
    )
    add(
        "ioc-next-data",
        _doc(
            "Post",
            "<div id=root>loading</div><script id=__NEXT_DATA__ type=application/json>"
            + json.dumps(
                {
                    "props": {
                        "pageProps": {
                            "post": {
                                "body": "Gumblar redirected to gumblar.cn and "
                                "217.107.218.147 served the payload."
                            }
                        }
                    }
                }
            )
            + "</script><script>const d=JSON.parse(document.getElementById('__NEXT_DATA__').textContent);"
            "document.getElementById('root').textContent=d.props.pageProps.post.body;</script>",
        ),
        "ioc",
    )
    add(
        "ioc-code-viewer",
        _doc(
            "blocklists/builtin.txt",
            "<pre id=code></pre><script type=application/json id=blob>"
            + json.dumps({"path": "blocklists/builtin.txt", "lines": builtin.splitlines()})
            + "</script><script>const b=JSON.parse(document.getElementById('blob').textContent);"
            "document.getElementById('code').textContent=b.lines.join('\\n');</script>",
        ),
        "ioc",
    )
    add(
        "ioc-link-checker",
        _doc(
            "Links",
            "<ul id=links><li><a href=https://example.org/>example</a></li></ul>"
            "<script>const bad="
            + json.dumps(list(IOC_HOSTS))
            + ";for(const a of document.querySelectorAll('a')){"
            "if(bad.some(h=>a.hostname.endsWith(h)))a.remove()}</script>",
        ),
        "ioc",
    )
    add(
        "ioc-prose",
        _doc(
            "IOC list",
            "<h1>Indicators</h1><ul>"
            + "".join(f"<li><code>{h}</code></li>" for h in IOC_HOSTS)
            + "<li><code>217.107.218.147</code></li></ul><p>Block gumblar.cn at the proxy.</p>",
        ),
        "ioc",
    )
    return out


def find_debian_docs(install: bool, limit: int) -> tuple[list[Page], list[str]]:
    """Pages of the documentation packages found (installing missing ones if asked), and what is missing."""
    missing: list[str] = []
    pages: list[Page] = []
    if install:
        want = [pkg for pkg, where in DEBIAN_DOCS if not Path(where).is_dir()]
        if want and os.geteuid() == 0 and shutil.which("apt-get"):
            for pkg in want:  # one by one: an unknown name must not sink the rest
                subprocess.run(
                    ["apt-get", "install", "-y", "-qq", pkg],
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                )
    for pkg, where in DEBIAN_DOCS:
        root = Path(where)
        if not root.is_dir():
            missing.append(f"{pkg} (no {where}; apt-get install {pkg}, or run with --install)")
            continue
        files = sorted(p for p in root.rglob("*") if p.suffix in (".html", ".htm") and p.is_file())
        files = [p for p in files if not p.is_symlink() or p.resolve().is_file()]
        if not files:
            missing.append(f"{pkg} ({where} has no HTML)")
            continue
        rnd = random.Random(pkg)
        chosen = files if len(files) <= limit else sorted(rnd.sample(files, limit))
        for p in chosen:
            rel = p.relative_to(root).as_posix()
            pages.append(Page(f"/{pkg}/{rel}", p.read_bytes(), "text/html", f"debian:{pkg}"))
    return pages, missing


def assign_codings(pages: list[Page]) -> None:
    for i, p in enumerate(pages):
        p.coding = CODINGS[i % len(CODINGS)]


def encode(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, 6)
    if coding == "br":
        return bytes(brotli.compress(body))
    if coding == "zstd":
        return bytes(zstd.compress(body))
    if coding == "deflate":
        return zlib.compress(body)
    return body


# -- the origin ------------------------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    c, k = directory / "origin.pem", directory / "origin.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


class Origin:
    """HTTPS on 127.0.0.1 from a thread: the corpus pages, and the rest of each doc tree as files."""

    def __init__(self, pages: list[Page], cert_dir: Path) -> None:
        self.pages = {p.path: p for p in pages}
        self.roots = {pkg: Path(where) for pkg, where in DEBIAN_DOCS if Path(where).is_dir()}
        self.cert, self.key = make_cert(cert_dir)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="origin")
        self._ready = threading.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        page = self.pages.get(request.path)
        if page is None:  # a stylesheet, image or script of a documentation site
            parts = request.path.lstrip("/").split("/", 1)
            root = self.roots.get(parts[0])
            if root is None or len(parts) < 2:
                raise web.HTTPNotFound()
            f = (root / parts[1]).resolve()
            if not f.is_relative_to(root.resolve()) or not f.is_file():
                raise web.HTTPNotFound()
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            return web.Response(body=f.read_bytes(), headers={"Content-Type": ctype})
        headers = {"Content-Type": page.content_type, "Cache-Control": "no-store"}
        if page.coding == "chunked":
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(page.body), 8192):
                await resp.write(page.body[i : i + 8192])
            await resp.write_eof()
            return resp
        if page.coding != "identity":
            headers["Content-Encoding"] = page.coding
        return web.Response(body=encode(page.body, page.coding), headers=headers)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)

        async def go() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._loop.run_until_complete(go())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Origin:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("origin did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- the proxies ------------------------------------------------------------------------------------

# Both proxies resolve HOST to 127.0.0.1 through the e2e tests' launcher (an /etc/hosts entry).
LAUNCH = [sys.executable, str(ROOT / "tests" / "e2e" / "launch_proxy.py")]
MITMDUMP = [sys.executable, "-c",
            "import runpy, sys; sys.argv[0] = 'mitmdump'; "
            f"runpy.run_path({str(ROOT / 'tests' / 'e2e' / 'launch_proxy.py')!r}); "
            "from mitmproxy.tools.main import mitmdump; mitmdump()"]  # fmt: skip


def start_proxies(tmp: Path) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    os.environ["JG_TEST_HOSTS"] = f"{HOST}=127.0.0.1"
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    mport = free_port()
    procs["mitmdump"] = (
        start(
            [
                *MITMDUMP,
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(mport),
                "--set",
                f"confdir={tmp / 'mitm'}",
                "--set",
                "ssl_insecure=true",
                "--set",
                "termlog_verbosity=warn",
            ],
            tmp / "mitmdump.log",
            mport,
        ),
        mport,
    )
    jport = free_port()
    (tmp / "jg").mkdir()
    procs["jectguard"] = (
        start(
            [
                *LAUNCH,
                "run",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(jport),
                "--confdir",
                str(tmp / "jg" / "confdir"),
                "--cache-dir",
                str(tmp / "jg" / "cache"),
                "--admin-port",
                "0",
                # The origin is on loopback, which the destination policy refuses by default.
                "--allow-destination",
                "127.0.0.0/8",
                "--connect-ports",
                "1-65535",
                "--blocklist",
                str(ROOT / "blocklists" / "builtin.txt"),
                "--set",
                "ssl_insecure=true",
                "--set",
                "termlog_verbosity=warn",
            ],
            tmp / "jg" / "proxy.log",
            jport,
        ),
        jport,
    )
    return procs


# -- the browser --------------------------------------------------------------------------------------


@dataclass
class Load:
    ok: bool
    seconds: float
    body_digest: str | None
    text: str
    errors: list[str]
    shot: str | None
    error: str | None = None


@dataclass
class Result:
    page: Page
    loads: dict[str, Load] = field(default_factory=dict)

    def differences(self) -> list[str]:
        base = self.loads.get("direct")
        out: list[str] = []
        if base is None or not base.ok:
            return [f"direct load failed: {base.error if base else '?'}"]
        for path in ("mitmdump", "jectguard"):
            got = self.loads.get(path)
            if got is None or not got.ok:
                out.append(f"{path}: load failed ({got.error if got else '?'})")
                continue
            if got.body_digest != base.body_digest:
                out.append(f"{path}: response bytes differ")
            if got.text != base.text:
                out.append(f"{path}: DOM text differs")
            if sorted(got.errors) != sorted(base.errors):
                out.append(f"{path}: console errors differ ({got.errors[:2]} vs {base.errors[:2]})")
            if base.shot is not None and got.shot != base.shot:
                out.append(f"{path}: screenshot differs")
        return out


def load_page(context: Any, url: str, shot: bool) -> Load:
    page = context.new_page()
    errors: list[str] = []
    bodies: list[bytes] = []
    # The favicon's 404 lands on whichever load asks first: not a difference between paths.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not str(m.location.get("url", "")).endswith("/favicon.ico")
            else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        t0 = time.perf_counter()
        resp = page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
        seconds = time.perf_counter() - t0
        if resp is not None:
            try:
                bodies.append(resp.body())
            except Exception:  # navigated on (meta refresh, script): the bytes are gone
                bodies.append(b"(navigated away)")
        text = page.evaluate("() => document.body ? document.body.innerText : ''")
        digest = hashlib.sha256(page.screenshot(full_page=False)).hexdigest() if shot else None
        status_ok = resp is not None and resp.status < 400
        return Load(
            status_ok,
            seconds,
            hashlib.sha256(bodies[0]).hexdigest() if bodies else None,
            text,
            errors,
            digest,
            None if status_ok else f"status {resp.status if resp else None}",
        )
    except Exception as exc:  # a failed load is a result, not a crash of the benchmark
        return Load(False, 0.0, None, "", errors, None, f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        page.close()


def run_browser(
    pages: list[Page], ports: dict[str, int], origin_port: int, shots: int
) -> list[Result]:
    from playwright.sync_api import sync_playwright

    results = [Result(p) for p in pages]
    shot_every = max(1, len(pages) // max(1, shots)) if shots else 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            timeout=60_000,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"],
        )
        try:
            contexts = {"direct": browser.new_context(ignore_https_errors=True)}
            for name, port in ports.items():
                contexts[name] = browser.new_context(
                    ignore_https_errors=True, proxy={"server": f"http://127.0.0.1:{port}"}
                )
            for ctx in contexts.values():
                ctx.set_default_timeout(NAV_TIMEOUT_MS)
            for i, r in enumerate(results):
                url = f"https://{HOST}:{origin_port}{r.page.path}"
                shot = bool(shot_every) and i % shot_every == 0
                order = ["direct", "mitmdump", "jectguard"]
                order = order[i % 3 :] + order[: i % 3]  # take turns: no path always goes first
                for name in order:
                    r.loads[name] = load_page(contexts[name], url, shot)
        finally:
            browser.close()
    return results


# -- report -------------------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def report(results: list[Result], missing: list[str]) -> int:
    cats: dict[str, list[Result]] = {}
    for r in results:
        group = (
            "ioc-quoting (pass since the i17-scan change)"
            if r.page.category == "ioc"
            else ("clean: " + r.page.category)
        )
        cats.setdefault(group, []).append(r)
    print(f"pages: {len(results)}")
    if missing:
        print("MISSING documentation packages (not in this run):")
        for m in missing:
            print(f"  - {m}")
    clean_changed = 0
    print(f"\n{'category':58s} {'pages':>6s} {'changed':>8s}")
    for group in sorted(cats):
        rs = cats[group]
        changed = [r for r in rs if r.differences()]
        if not group.startswith("ioc"):
            clean_changed += len(changed)
        print(f"{group:58s} {len(rs):6d} {len(changed):8d}")
    print(f"\nclean pages changed: {clean_changed} (target 0)")
    for r in results:
        diffs = r.differences()
        if diffs:
            print(f"  [{r.page.category}] {r.page.path} ({r.page.coding}): {'; '.join(diffs)}")
    print(f"\n{'page load (navigation to load)':32s} {'n':>5s} {'median ms':>10s} {'p95 ms':>8s}")
    for path in ("direct", "mitmdump", "jectguard"):
        xs = [r.loads[path].seconds for r in results if path in r.loads and r.loads[path].ok]
        print(
            f"{path:32s} {len(xs):5d} {statistics.median(xs) * 1000 if xs else float('nan'):10.1f} "
            f"{pct(xs, 0.95) * 1000:8.1f}"
        )
    paired = [
        r.loads["jectguard"].seconds - r.loads["mitmdump"].seconds
        for r in results
        if r.loads.get("jectguard")
        and r.loads.get("mitmdump")
        and r.loads["jectguard"].ok
        and r.loads["mitmdump"].ok
    ]
    if paired:
        print(
            f"{'jectguard - mitmdump, paired':32s} {len(paired):5d} {statistics.median(paired) * 1000:10.1f} "
            f"{pct(paired, 0.95) * 1000:8.1f}"
        )
    return clean_changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DOCS} pages per documentation site plus the generated pages",
    )
    parser.add_argument(
        "--install", action="store_true", help="apt-get install missing doc packages"
    )
    parser.add_argument("--max-pages", type=int, default=300, help="pages per documentation site")
    parser.add_argument(
        "--shots", type=int, default=10, help="pages whose screenshots are compared"
    )
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("bench_breakage: /usr/bin/chromium is missing (apt-get install chromium)")
    t0 = time.perf_counter()
    docs, missing = find_debian_docs(args.install, QUICK_DOCS if args.quick else args.max_pages)
    pages = generated_pages() + docs
    assign_codings(pages)
    with tempfile.TemporaryDirectory(prefix="jg_breakage_") as t:
        tmp = Path(t)
        with Origin(pages, tmp) as origin:
            procs = start_proxies(tmp)
            try:
                results = run_browser(
                    pages,
                    {n: port for n, (_, port) in procs.items()},
                    origin.port,
                    0 if args.quick else args.shots,
                )
            finally:
                for proc, _ in procs.values():
                    stop(proc)
    report(results, missing)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
