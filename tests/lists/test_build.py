"""One way to build an engine: ``build_engine`` and the refresher's worker parse through one
loop (``lists/files.parse_lists``) and compile through one function (``compile_block``).

The same lists, loaded the quick way (files in memory: ``check``, a cold start) and the
published way (the worker compiles and publishes a snapshot, a proxy loads it), must
block, monitor and allow the same requests with the same rules.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from proxy_addons.core.engine import Engine, compile_block
from proxy_addons.core.model import ListSpec, Mode, ParsedList, RuleKind
from proxy_addons.lists.files import (
    ListBody,
    Unavailable,
    build_engine,
    feed_body_path,
    parse_lists,
    read_body,
)
from proxy_addons.lists.store import load_engine
from proxy_addons.refresh.job import CompileJob
from proxy_addons.refresh.refresher import run_job

FEEDS = Path(__file__).resolve().parents[1] / "data" / "feeds"

# A hand-written list mixing every kind of entry, and an adblock feed with ``@@``
# exceptions (host and URL), as some feeds ship them.
MIXED = b"""# local list
mixed-domain.test
*.wild.mixed.test
=exact.mixed.test
http://files.mixed.test/dropper.exe
198.51.100.77
203.0.113.0/24
2001:db8:bad::/48
"""
ADBLOCK = b"""[Adblock Plus]
||adblock-evil.test^
||cdn.adblock.test/kit/
@@||cdn.adblock.test/kit/safe.js
||shared.adblock.test^
@@||shared.adblock.test^
"""
# An allow list with URL entries: one file on a blocked host, one whole blocked host.
ALLOW = b"""http://files.mixed.test/dropper.exe?ok=1
inpost-doplata.example.com
"""


def _sources(tmp: Path, cache: Path) -> list[ListSpec]:
    """Every format family, as local files and as cached feed bodies."""
    local = tmp / "lists"
    local.mkdir()
    (local / "mixed.txt").write_bytes(MIXED)
    (local / "allow.txt").write_bytes(ALLOW)
    specs = [
        ListSpec("mixed", path=str(local / "mixed.txt"), format="mixed", category="local"),
        ListSpec("allow", path=str(local / "allow.txt"), allow=True, category="allow"),
        ListSpec("adblock", url="https://feeds.test/adblock.txt", format="adblock"),
    ]
    feed_body_path(cache, "adblock").parent.mkdir(parents=True, exist_ok=True)
    feed_body_path(cache, "adblock").write_bytes(ADBLOCK)
    for name, fname, fmt, mode in [
        ("hosts", "certpl_hosts.txt", "hosts", Mode.ENFORCE),
        ("domains", "hagezi_tif_domains.txt", "domains", Mode.ENFORCE),
        ("urls", "urlhaus_text_online.txt", "urls", Mode.ENFORCE),
        ("cidr", "spamhaus_drop.txt", "cidr", Mode.ENFORCE),
        ("rpz", "urlhaus_rpz.txt", "rpz", Mode.MONITOR),
    ]:
        specs.append(ListSpec(name, url=f"https://feeds.test/{fname}", format=fmt, mode=mode))
        shutil.copyfile(FEEDS / fname, feed_body_path(cache, name))
    return specs


def _probes(lists: list[tuple[ListSpec, ParsedList]]) -> list[str]:
    """Requests every rule of these lists decides, plus neighbours that nothing should."""
    out = ["http://nothing-listed.test/", "http://198.51.100.78/", "http://[2001:db8:600d::1]/"]
    for _, parsed in lists:
        for r in parsed.rules:
            if r.kind in (RuleKind.DOMAIN, RuleKind.EXACT):
                out += [f"http://{r.key}/x", f"http://sub.{r.key}/", f"http://{r.key}.other/"]
            elif r.kind is RuleKind.URL:
                out += [f"http://{r.key}", f"http://{r.key}?ok=1", f"http://{r.key}/../y"]
            elif r.kind is RuleKind.IP:
                host = f"[{r.key}]" if ":" in r.key else r.key
                out += [f"http://{host}/", f"http://{host}/path"]
            else:
                net = ipaddress.ip_network(r.key)
                for addr in (net.network_address + 1, net.broadcast_address + 1):
                    out.append(f"http://[{addr}]/" if net.version == 6 else f"http://{addr}/")
    return out


def _verdict(engine: Engine, url: str) -> tuple[object, ...]:
    v = engine.check_url(url)
    m = v.match
    over = v.overridden
    return (
        v.action,
        (m.list, m.rule, m.line, m.kind, m.mode) if m else None,
        (over.list, over.rule) if over else None,
    )


def test_build_engine_and_the_refresher_worker_make_the_same_engine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    specs = _sources(tmp_path, cache)
    quick, report = build_engine(specs, cache_dir=cache)
    assert all(s.loaded for s in report.lists), report.lists

    result = run_job(CompileJob(cache_dir=str(cache), specs=tuple(specs), rebuild=True))
    assert result.snapshot and not result.load_errors and not result.not_published
    published, _ = load_engine(specs, cache, require_fingerprint=True)

    assert report.block_stats is not None
    assert result.rules == report.block_stats.rules == published.block.rule_count
    assert quick.block.rule_count == published.block.rule_count
    assert quick.block.by_kind == published.block.by_kind
    assert quick.block.refused_count == published.block.refused_count
    assert quick.allow.rule_count == published.allow.rule_count > 0
    # Every kind of rule is in play, and the exceptions went to the allow side.
    assert set(published.block.by_kind) == {"domain", "exact", "url", "ip", "cidr"}

    parsed, _ = parse_lists(specs, cache)
    probes = _probes(parsed)
    assert len(probes) > 100
    seen = set()
    for url in probes:
        want = _verdict(quick, url)
        assert _verdict(published, url) == want, url
        seen.add(want[0].value)  # type: ignore[attr-defined]
    assert seen >= {"block", "monitor", "allow", "pass"}
    # The cases the two paths once compiled apart: exceptions and allow-list URLs.
    assert quick.check_url("http://cdn.adblock.test/kit/safe.js").action == "allow"
    assert quick.check_url("http://cdn.adblock.test/kit/other.js").action == "block"
    assert published.check_url("http://shared.adblock.test/").action == "allow"
    assert published.check_url("http://files.mixed.test/dropper.exe?ok=1").action == "allow"
    assert published.check_url("http://files.mixed.test/dropper.exe").action == "block"


def test_one_compile_function_behind_from_lists(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    specs = _sources(tmp_path, cache)
    lists, _ = parse_lists(specs, cache)
    built = compile_block(lists)
    engine, bstats, astats = Engine.from_lists(lists)
    assert built.stats.rules == bstats.rules == engine.block.rule_count
    assert built.stats.by_kind == bstats.by_kind
    # The allow side: the allow lists first, then each block list's exceptions.
    assert [s.name for s, _ in built.allow] == ["allow", "adblock"]
    assert [s.name for s, _ in built.exceptions] == ["adblock"]
    assert sum(len(p.rules) for _, p in built.allow) == astats.rules


def test_parse_lists_takes_the_bytes_where_the_resolver_finds_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    specs = _sources(tmp_path, cache)
    elsewhere = tmp_path / "kept-domains.txt"
    elsewhere.write_bytes(b"kept.test\n")

    def resolve(spec: ListSpec) -> ListBody | Unavailable:
        if spec.name == "domains":
            return read_body(elsewhere)
        if spec.name == "urls":
            return Unavailable(None)  # no error: nothing to load yet
        if spec.name == "cidr":
            return Unavailable("held")
        return read_body(Path(spec.path) if spec.path else feed_body_path(cache, spec.name))

    lists, statuses = parse_lists(specs, cache, allow=False, resolve=resolve, count=len_rules)
    by_name = {s.name: s for s in statuses}
    assert "allow" not in by_name  # only block lists were asked for
    assert by_name["domains"].path == elsewhere and by_name["domains"].distinct == 1
    assert by_name["domains"].digest == read_body(elsewhere).digest
    assert not by_name["urls"].loaded and by_name["urls"].error is None
    assert not by_name["cidr"].loaded and by_name["cidr"].error == "held"
    assert [s.name for s, _ in lists] == ["mixed", "adblock", "hosts", "domains", "rpz"]


def test_a_refused_list_names_the_file_it_was_read_from(tmp_path: Path) -> None:
    html = tmp_path / "portal.txt"
    html.write_bytes(b"<!doctype html><html><body>log in</body></html>\n")
    spec = ListSpec("portal", path=str(html), format="auto")
    _, statuses = parse_lists([spec], tmp_path)
    assert not statuses[0].loaded and str(html) in (statuses[0].error or "")
    with pytest.raises(ValueError):
        parse_lists([spec], tmp_path, strict=True)


def len_rules(parsed: ParsedList) -> int:
    return len({(r.kind, r.key) for r in parsed.rules})


def test_an_exception_and_an_allow_entry_for_one_host_credit_the_same_list(tmp_path: Path) -> None:
    # A block feed listed before the allow list, both allowing one host: the allow index
    # was once built in list order in memory and allow lists first from a snapshot, so
    # the verdict named another list depending on how the engine was loaded.
    feed, allow = tmp_path / "feed.txt", tmp_path / "allow.txt"
    feed.write_bytes(b"||both.test^\n@@||both.test^\n||other.test^\n")
    allow.write_bytes(b"both.test\n")
    specs = [
        ListSpec("feed", path=str(feed), format="adblock"),
        ListSpec("allow", path=str(allow), allow=True, category="allow"),
    ]
    cache = tmp_path / "cache"
    quick, _ = build_engine(specs, cache_dir=cache)
    assert run_job(CompileJob(cache_dir=str(cache), specs=tuple(specs), rebuild=True)).snapshot
    published, _ = load_engine(specs, cache)
    for url in ("http://both.test/", "http://www.both.test/x", "http://other.test/"):
        assert _verdict(quick, url) == _verdict(published, url), url
    assert quick.check_url("http://both.test/").action == "allow"
