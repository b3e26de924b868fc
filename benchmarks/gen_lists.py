"""Generate realistic synthetic blocklists for benchmarks.

    python benchmarks/gen_lists.py --out benchmarks/data [--domains 1000000 --urls 100000 --cidrs 10000]

Writes ``domains.txt`` (hosts-file format, like URLhaus/HaGeZi feeds),
``urls.txt`` (one URL a line, like URLhaus' text feed), ``cidrs.txt``
(Spamhaus DROP style) and ``queries.txt`` (URLs to look up: half hits, half
misses). Deterministic for a given seed. Labels are made of syllables, depths
and TLDs follow the rough shape of real threat feeds (many .com/.xyz/.top, some
country codes, some deep subdomains of free hosting), and a third of the URLs
are on bare IPs with ports, as in URLhaus.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
from pathlib import Path

SYLLABLES = (
    "ka ri to mo na lu ve xo pa qi ze bo ti sa ne fu gi ha jo ku la me ni ol pe "
    "ra se tu vi wa ya zu an el in on un ar er ir or ur sec log upd cdn api pay "
    "web net app srv bank mail acc ver ify sh op"
).split()
TLDS = (
    ["com"] * 30
    + ["net"] * 8
    + ["org"] * 5
    + ["xyz"] * 6
    + ["top"] * 6
    + ["info"] * 4
    + ["ru"] * 5
    + ["cn"] * 3
    + ["de"] * 2
    + ["br"] * 2
    + ["in"] * 2
    + ["co.uk"] * 2
    + ["com.br"] * 2
    + ["online", "site", "shop", "club", "live", "icu", "buzz", "pw", "tk", "ml"]
)
FREE_HOSTS = ["duckdns.org", "000webhostapp.com", "weebly.com", "blogspot.com", "ngrok.io"]
PATHS = (
    "bins wp-content wp-includes uploads admin login secure update img js files dl payload "
    "invoice docs doc tmp cgi-bin mozi i x86 arm7 mips"
).split()
EXTS = [".exe", ".php", ".js", ".sh", ".bin", ".zip", ".doc", ".html", "", ""]


def label(rng: random.Random) -> str:
    n = rng.choice((2, 2, 3, 3, 3, 4, 5))
    s = "".join(rng.choice(SYLLABLES) for _ in range(n))
    if rng.random() < 0.25:
        s += str(rng.randrange(1000))
    if rng.random() < 0.1:
        s = s[: len(s) // 2] + "-" + s[len(s) // 2 :]
    return s


def domain(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.05:
        return f"{label(rng)}.{rng.choice(FREE_HOSTS)}"
    base = f"{label(rng)}.{rng.choice(TLDS)}"
    if r < 0.35:
        return f"{label(rng)}.{base}"
    if r < 0.42:
        return f"{label(rng)}.{label(rng)}.{base}"
    return base


def public_ipv4(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global:
            return str(ip)


def url(rng: random.Random) -> str:
    if rng.random() < 0.33:
        host = public_ipv4(rng)
        if rng.random() < 0.6:
            host += f":{rng.choice((80, 8080, 443, 3000, 8000, 6000, 35000))}"
    else:
        host = domain(rng)
    depth = rng.choice((0, 1, 1, 2, 2, 3))
    path = "/".join(rng.choice(PATHS) for _ in range(depth))
    name = label(rng) + rng.choice(EXTS)
    u = f"{rng.choice(('http', 'http', 'https'))}://{host}/{path + '/' if path else ''}{name}"
    if rng.random() < 0.1:
        u += f"?id={rng.randrange(10**6)}"
    return u


def cidr(rng: random.Random) -> str:
    if rng.random() < 0.1:
        net = ipaddress.IPv6Network((0x2A00 << 112 | rng.getrandbits(96) << 16, 48), strict=False)
        return f"{net} ; SBL{rng.randrange(10**6)}"
    plen = rng.choice((16, 18, 19, 20, 21, 22, 22, 23, 24, 24, 24))
    while True:
        net = ipaddress.IPv4Network((rng.getrandbits(32), plen), strict=False)
        if net.network_address.is_global and not net.network_address.is_multicast:
            return f"{net} ; SBL{rng.randrange(10**6)}"


def miss_url(rng: random.Random) -> str:
    host = f"www.{label(rng)}{rng.randrange(10**6)}.{rng.choice(('com', 'org', 'net', 'de'))}"
    return f"https://{host}/{rng.choice(PATHS)}/{label(rng)}.html"


def generate(
    out: Path, n_domains: int, n_urls: int, n_cidrs: int, n_queries: int, seed: int
) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    domains = []
    seen: set[str] = set()
    while len(domains) < n_domains:
        d = domain(rng)
        if d not in seen:
            seen.add(d)
            domains.append(d)
    with open(out / "domains.txt", "w") as f:
        f.write("# synthetic hosts-format feed\n127.0.0.1 localhost\n")
        f.writelines(f"0.0.0.0 {d}\n" for d in domains)
    urls = [url(rng) for _ in range(n_urls)]
    with open(out / "urls.txt", "w") as f:
        f.writelines(u + "\n" for u in urls)
    with open(out / "cidrs.txt", "w") as f:
        f.write("; Spamhaus DROP List (synthetic)\n")
        f.writelines(cidr(rng) + "\n" for _ in range(n_cidrs))
    with open(out / "queries.txt", "w") as f:
        for i in range(n_queries):
            if i % 2:
                f.write(miss_url(rng) + "\n")
            elif rng.random() < 0.85:
                d = rng.choice(domains)
                sub = f"{label(rng)}." if rng.random() < 0.3 else ""
                f.write(f"http://{sub}{d}/{rng.choice(PATHS)}/{label(rng)}.js\n")
            else:
                f.write(rng.choice(urls) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--urls", type=int, default=100_000)
    ap.add_argument("--cidrs", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=2004)
    a = ap.parse_args()
    generate(a.out, a.domains, a.urls, a.cidrs, a.queries, a.seed)
    print(f"wrote {a.out}/domains.txt, urls.txt, cidrs.txt, queries.txt")


if __name__ == "__main__":
    main()
