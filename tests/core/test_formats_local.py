"""Lists people write and the zone files DNS firewalls use: mixed lists, damaged
lines, RPZ zones, and Spamhaus' JSON DROP with its record count."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.errors import ListFormatError
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec, RuleKind

FEEDS = Path(__file__).parent.parent / "data" / "feeds"
JECTGUARD = Path(sys.executable).with_name("jectguard")

MIXED = """\
# our own list: whatever the SOC pasted in
evil.example
*.wild.example
=only-this.example
203.0.113.7
198.51.100.0/24
2001:db8:bad::/48
http://compromised.example/wp-content/uploads/x.js
compromised2.example/shell/
0.0.0.0 hosts-style.example other-hosts.example
80.94.95.112\t10
192.0.2.0/25 ; SBL000101
||adblock-style.example^
address=/dnsmasq-style.example/0.0.0.0
not a host at all
"""


def kinds(text: str, fmt: str = "auto") -> list[tuple[str, str]]:
    return [(r.kind.name, r.key) for r in parse_list(text, fmt).rules]


def engine(text: str, fmt: str = "auto") -> Engine:
    spec = ListSpec(name="local", path="local.txt", format=fmt)
    return Engine.from_lists([(spec, parse_list(text, fmt))])[0]


def test_mixed_list_takes_each_line_for_what_it_is() -> None:
    p = parse_list(MIXED)
    assert p.format == "mixed"
    assert [(r.kind.name, r.key, r.line) for r in p.rules] == [
        ("DOMAIN", "evil.example", 2),
        ("DOMAIN", "wild.example", 3),
        ("EXACT", "only-this.example", 4),
        ("IP", "203.0.113.7", 5),
        ("CIDR", "198.51.100.0/24", 6),
        ("CIDR", "2001:db8:bad::/48", 7),
        ("URL", "compromised.example/wp-content/uploads/x.js", 8),
        ("URL", "compromised2.example/shell/", 9),
        ("DOMAIN", "hosts-style.example", 10),
        ("DOMAIN", "other-hosts.example", 10),
        ("IP", "80.94.95.112", 11),
        ("CIDR", "192.0.2.0/25", 12),
        ("DOMAIN", "adblock-style.example", 13),
        ("DOMAIN", "dnsmasq-style.example", 14),
    ]
    assert p.rejected_count == 1 and p.rejected_samples[0].line == 15


def test_mixed_list_blocks_through_the_engine() -> None:
    e = engine(MIXED)
    blocked = [
        "http://a.evil.example/",
        "http://x.wild.example/",
        "http://only-this.example/",
        "http://203.0.113.7/",
        "http://198.51.100.9/",
        "http://[2001:db8:bad::1]/",
        "http://compromised.example/wp-content/uploads/x.js?v=1",
        "http://compromised2.example/shell/c99.php",
        "http://hosts-style.example/",
        "http://80.94.95.112/",
        "http://192.0.2.5/",
        "http://adblock-style.example/",
        "http://dnsmasq-style.example/",
    ]
    for url in blocked:
        assert e.check_url(url).action is Action.BLOCK, url
    for url in ("http://www.only-this.example/", "http://compromised.example/index.html"):
        assert e.check_url(url).action is Action.PASS, url


def test_declared_mixed_format_and_explicit_formats_still_strict() -> None:
    assert parse_list(MIXED, "mixed").format == "mixed"
    # Declared "domains", the URL lines stay rejected: the operator said what it is.
    p = parse_list("a.example\nb.example\nhttp://c.example/x\n", "domains")
    assert p.rejected_count == 1


def test_mixed_list_from_a_file_with_the_real_command(tmp_path: Path) -> None:
    f = tmp_path / "local.txt"
    f.write_text(MIXED)
    res = subprocess.run(
        [str(JECTGUARD), "check", "--json", "--blocklist", str(f),
         "http://compromised.example/wp-content/uploads/x.js", "http://203.0.113.7/",
         "http://fine.example/"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "JECTGUARD_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["verdict"] for r in rows] == ["block", "block", "pass"], res.stderr
    assert rows[0]["kind"] == "url" and rows[0]["line"] == 8


# --- damaged lines ------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 500, 999])
def test_a_garbage_line_anywhere_spoils_only_itself(where: int) -> None:
    lines = [f"bad{i}.example" for i in range(1000)]
    lines.insert(where, "\x03\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb")
    p = parse_list("\n".join(lines).encode("latin-1"))
    assert len(p.rules) == 1000
    assert p.rejected_by_reason == {"control characters": 1}
    assert p.rejected_samples[0].line == where + 1


def test_a_real_binary_file_is_still_refused_whole() -> None:
    with pytest.raises(ListFormatError, match="binary"):
        parse_list(os.urandom(100_000))
    with pytest.raises(ListFormatError, match="binary"):
        parse_list(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 100)


# --- RPZ ---------------------------------------------------------------------------


def test_urlhaus_rpz_zone() -> None:
    p = parse_list((FEEDS / "urlhaus_rpz.txt").read_bytes())
    assert p.format == "rpz"
    got = {(r.kind.name, r.key) for r in p.rules}
    assert got == {
        ("EXACT", "0-0-0-0-0-0-0-0-0-0-0-0-0-10-0-0-0-0-0-0-0-0-0-0-0.info"),
        ("DOMAIN", "0-0-0-0-0-0-0-0-0-0-0-0-0-10-0-0-0-0-0-0-0-0-0-0-0.info"),
        ("EXACT", "1000-dinero.com"),
        ("DOMAIN", "1000-dinero.com"),
        ("EXACT", "update-flash.example-bad.net"),
        ("DOMAIN", "update-flash.example-bad.net"),
    }
    assert p.rejected_count == 0
    # The comment after a record is not part of the rule as written.
    assert all(";" not in r.text for r in p.rules)


def test_cert_polska_style_rpz_with_origin_and_multiline_soa() -> None:
    p = parse_list((FEEDS / "certpl_rpz.txt").read_bytes())
    assert p.format == "rpz"
    assert [(r.kind.name, r.key) for r in p.rules] == [
        ("EXACT", "allegro-weryfikacja.example.pl"),
        ("DOMAIN", "allegro-weryfikacja.example.pl"),
        ("EXACT", "olx-platnosc.example.com"),  # absolute name: the origin is removed
        ("EXACT", "inpost-doplata.example.net"),
        ("EXACT", "bank-login.example.org"),  # local data: sent to a walled garden
    ]
    assert p.rejected_count == 0


def test_rpz_exact_and_wildcard_semantics_through_the_engine() -> None:
    zone = (
        "$ORIGIN rpz.local.\n"
        "exact.example CNAME .\n"
        "*.subs.example CNAME *.\n"
        "*.evil.example CNAME .\n"
        "ok.evil.example CNAME rpz-passthru.\n"
        "32.7.113.0.203.rpz-ip CNAME .\n"
        "24.0.100.51.198.rpz-ip CNAME .\n"
        "48.zz.bad.db8.2001.rpz-ip CNAME .\n"
        "ns1.evil.rpz-nsdname CNAME .\n"
        "24.0.2.0.192.rpz-client-ip CNAME .\n"
    )
    p = parse_list(zone)
    assert p.skipped_by_reason == {"unsupported trigger": 2}
    e = engine(zone)
    cases = {
        "http://exact.example/": Action.BLOCK,
        "http://www.exact.example/": Action.PASS,  # an RPZ name is that name only
        "http://a.subs.example/": Action.BLOCK,
        "http://x.evil.example/": Action.BLOCK,
        "http://ok.evil.example/": Action.ALLOW,  # passthru is an exception
        "http://203.0.113.7/": Action.BLOCK,
        "http://198.51.100.77/": Action.BLOCK,
        "http://[2001:db8:bad::5]/": Action.BLOCK,
        "http://ns1.evil/": Action.PASS,
    }
    for url, want in cases.items():
        assert e.check_url(url).action is want, url


@pytest.mark.parametrize(
    "zone, reason",
    [
        ("$ORIGIN rpz.local.\nother.example.wrong.zone. CNAME .\n", "name outside the zone"),
        ("evil.example.rpz.local. CNAME .\n", "name outside the zone"),  # no origin known
        ("$ORIGIN rpz.local.\n$INCLUDE other.zone\n", "unsupported"),
        ("$ORIGIN rpz.local.\nbad.example CNAME a b\n", "invalid row"),
        ("$ORIGIN rpz.local.\nx.example CNAME .\n99.1.2.3.4.rpz-ip CNAME .\n", "invalid network"),
        ("$ORIGIN rpz.local.\nweird.example 300 IN\n", "invalid row"),
    ],
)
def test_rpz_bad_records_are_rejected_with_reasons(zone: str, reason: str) -> None:
    p = parse_list(zone, "rpz")
    assert reason in p.rejected_by_reason, p.rejected_by_reason


def test_rpz_tcp_only_and_apex_records_set_no_rule() -> None:
    p = parse_list(
        "$ORIGIN rpz.local.\n@ SOA a. b. 1 2 3 4 5\n@ NS ns.\nrpz.local. NS ns.\n"
        't.example CNAME rpz-tcp-only.\nnote.example TXT "a ; quoted"\n',
        "rpz",
    )
    assert p.rules == [] and p.rejected_count == 0


# --- Spamhaus JSON DROP --------------------------------------------------------------


def test_json_drop_record_count_matches() -> None:
    p = parse_list((FEEDS / "spamhaus_drop_v4.json").read_bytes())
    assert p.format == "cidr" and len(p.rules) == 8
    assert {r.kind for r in p.rules} <= {RuleKind.CIDR, RuleKind.IP}


def test_json_drop_cut_in_transit_is_refused() -> None:
    lines = (FEEDS / "spamhaus_drop_v4.json").read_text().splitlines()
    cut = [*lines[:5], lines[-1]]  # three records lost, the metadata line intact
    with pytest.raises(ListFormatError, match="declares 8 records but 5"):
        parse_list("\n".join(cut))
    padded = [*lines[:-1], '{"cidr":"8.8.8.0/24","sblid":"SBL9","rir":"arin"}', lines[-1]]
    with pytest.raises(ListFormatError, match="declares 8 records but 9"):
        parse_list("\n".join(padded))


@pytest.mark.parametrize(
    "text", [")\n$", "(\n", "$ORIGIN rpz.local.\n)\nevil.example CNAME .\n", " ( ) \n"]
)
@pytest.mark.parametrize("fmt", ["auto", "rpz"])
def test_rpz_lines_of_only_parentheses_never_crash(text: str, fmt: str) -> None:
    """Found by the property test: a line that is only ')' had no tokens (IndexError).

    A clear refusal (nothing looks like a rule) is fine; a crash is not.
    """
    from proxy_addons.core.errors import ListFormatError

    with contextlib.suppress(ListFormatError):
        parse_list(text, fmt)
