"""List-format parsers: real feed samples, every format's quirks, refusals, detection."""

from __future__ import annotations

import codecs
import gzip
import os
from collections import Counter
from pathlib import Path

import pytest

from proxy_addons.core import formats
from proxy_addons.core.canon import url_rule_key
from proxy_addons.core.errors import ListFormatError
from proxy_addons.core.formats import (
    FORMATS,
    MAX_REJECTED_SAMPLES,
    MIN_ENTRIES_FOR_RATIO,
    detect_format,
    parse_list,
)
from proxy_addons.core.model import ParsedList, RuleKind

FEEDS = Path(__file__).parent.parent / "data" / "feeds"

D, E, U, IP, C = RuleKind.DOMAIN, RuleKind.EXACT, RuleKind.URL, RuleKind.IP, RuleKind.CIDR


def keys(p: ParsedList, kind: RuleKind | None = None) -> list[str]:
    return [r.key for r in p.rules if kind is None or r.kind is kind]


def kinds(p: ParsedList) -> dict[str, int]:
    return dict(Counter(r.kind.label for r in p.rules))


def rule(text: str, fmt: str = "auto") -> tuple[RuleKind, str, bool]:
    """The single rule one line makes."""
    p = parse_list(text, fmt)
    assert p.rejected_count == 0, p.rejected_samples
    assert len(p.rules) == 1, p.rules
    r = p.rules[0]
    return r.kind, r.key, r.exception


def rejected(text: str, fmt: str) -> str:
    """The reason the single entry of ``text`` is rejected."""
    p = parse_list(text, fmt)
    assert not p.rules, p.rules
    assert p.rejected_count == 1, p.rejected_by_reason
    return p.rejected_samples[0].reason


# --- real feed samples (tests/data/feeds, see its README) ----------------------

FEED_CASES = [
    # file, detected format, rules by kind, skipped
    ("certpl_domains.txt", "domains", {"domain": 12}, 0),
    ("certpl_hosts.txt", "hosts", {"domain": 12}, 0),
    ("feodo_ipblocklist.txt", "ips", {"ip": 12}, 10),
    ("hagezi_tif_adblock.txt", "adblock", {"domain": 10}, 12),
    ("hagezi_tif_dnsmasq.txt", "dnsmasq", {"domain": 10}, 11),
    ("hagezi_tif_domains.txt", "domains", {"domain": 10}, 11),
    ("hagezi_tif_hosts.txt", "hosts", {"domain": 12}, 11),
    ("hagezi_tif_wildcard.txt", "domains", {"domain": 10}, 11),
    ("openphish_feed.txt", "urls", {"url": 12}, 0),
    ("phishing_army_blocklist.txt", "domains", {"domain": 11}, 10),
    ("spamhaus_drop.txt", "cidr", {"cidr": 8}, 4),
    ("spamhaus_drop_v4.json", "cidr", {"cidr": 8}, 1),
    ("spamhaus_drop_v6.json", "cidr", {"cidr": 3}, 1),
    ("stevenblack_hosts.txt", "hosts", {"domain": 10}, 39),
    ("urlhaus_csv_online.csv", "urlhaus-csv", {"url": 10}, 9),
    ("urlhaus_hostfile.txt", "hosts", {"domain": 12}, 8),
    ("urlhaus_text_online.txt", "urls", {"url": 12}, 8),
    ("urlhaus_rpz.txt", "rpz", {"domain": 3, "exact": 3}, 10),
    ("certpl_rpz.txt", "rpz", {"domain": 1, "exact": 4}, 9),
]


@pytest.mark.parametrize(
    ("name", "fmt", "by_kind", "skipped"), FEED_CASES, ids=[c[0] for c in FEED_CASES]
)
def test_feed_sample_parses_cleanly(
    name: str, fmt: str, by_kind: dict[str, int], skipped: int
) -> None:
    data = (FEEDS / name).read_bytes()
    p = parse_list(data, name=name)
    assert p.format == fmt
    assert kinds(p) == by_kind
    assert p.rejected_count == 0, p.rejected_samples
    assert p.skipped == skipped
    assert detect_format(data.decode("utf-8")) == fmt
    # the explicit format gives the same result as detection
    assert parse_list(data, fmt).rules == p.rules


def test_feed_samples_all_covered() -> None:
    on_disk = {f.name for f in FEEDS.iterdir() if f.name != "README.md"}
    assert on_disk == {c[0] for c in FEED_CASES}


def test_stevenblack_local_records_are_not_rules() -> None:
    p = parse_list((FEEDS / "stevenblack_hosts.txt").read_bytes())
    ks = set(keys(p))
    assert not ks & {"localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0"}
    assert not any(k.startswith("ip6-") for k in ks)
    assert "ads.example.com" in ks
    assert p.rules[0].line == 40 and p.rules[0].text == "ads.example.com"


def test_urlhaus_csv_takes_the_url_column_not_the_urlhaus_link() -> None:
    p = parse_list((FEEDS / "urlhaus_csv_online.csv").read_bytes())
    assert not any(k.startswith("urlhaus.abuse.ch") for k in keys(p))
    assert keys(p)[0] == "192.0.2.17/bin.sh"
    assert p.rules[0].text == "http://192.0.2.17:35729/bin.sh"
    assert p.rules[0].line == 10
    # a comma inside a quoted field does not split it
    assert url_rule_key("http://dl.example.com/file.php?id=13&name=doc,final.vbs")[1] in keys(p)
    assert "2001:db8::5/arm7" in keys(p)


def test_urlhaus_hostfile_tab_separated() -> None:
    p = parse_list((FEEDS / "urlhaus_hostfile.txt").read_bytes())
    assert keys(p)[0] == "malware-drop.example.com"
    assert p.rules[0].text == "malware-drop.example.com"


def test_drop_text_and_json_agree() -> None:
    text = parse_list((FEEDS / "spamhaus_drop.txt").read_bytes())
    js = parse_list((FEEDS / "spamhaus_drop_v4.json").read_bytes())
    assert keys(text) == keys(js)
    assert text.rules[0].text == "192.0.2.0/25"  # without the "; SBL" comment
    v6 = parse_list((FEEDS / "spamhaus_drop_v6.json").read_bytes())
    assert keys(v6)[0] == "2001:db8::/32"


def test_hagezi_variants_agree() -> None:
    base = set(keys(parse_list((FEEDS / "hagezi_tif_domains.txt").read_bytes())))
    for name in ("hagezi_tif_adblock.txt", "hagezi_tif_dnsmasq.txt", "hagezi_tif_wildcard.txt"):
        assert set(keys(parse_list((FEEDS / name).read_bytes()))) == base, name


# --- decoding and line handling -------------------------------------------------


def test_crlf_bom_uppercase_trailing_dot() -> None:
    data = codecs.BOM_UTF8 + b"# hi\r\nEXAMPLE.COM.\r\n\r\nb.Example.org\r\n"
    p = parse_list(data)
    assert p.format == "domains"
    assert keys(p) == ["example.com", "b.example.org"]
    assert [r.text for r in p.rules] == ["EXAMPLE.COM.", "b.Example.org"]
    assert [r.line for r in p.rules] == [2, 4]
    assert p.skipped == 2


def test_bom_on_str_input() -> None:
    assert keys(parse_list("\ufeffexample.com\n", "domains")) == ["example.com"]


def test_old_mac_line_endings() -> None:
    p = parse_list(b"a.example\rb.example\r")
    assert keys(p) == ["a.example", "b.example"]
    assert [r.line for r in p.rules] == [1, 2]


def test_utf16_with_bom_is_decoded() -> None:
    data = "0.0.0.0 bücher.example\r\n".encode("utf-16")
    p = parse_list(data)
    assert keys(p) == ["xn--bcher-kva.example"]


def test_stray_invalid_byte_spoils_only_its_line() -> None:
    lines = [f"host{i}.example".encode() for i in range(20)] + [b"b\xfccher.example"]
    p = parse_list(b"\n".join(lines), "domains")
    assert len(p.rules) == 20
    assert p.rejected_by_reason == {"invalid encoding": 1}


def test_idn_keeps_written_text() -> None:
    p = parse_list("bücher.example\n", "domains")
    assert p.rules[0].key == "xn--bcher-kva.example"
    assert p.rules[0].text == "bücher.example"


def test_line_numbers_are_one_based_physical_lines() -> None:
    p = parse_list("# c\n\na.example\n  \nb.example", "domains")
    assert [r.line for r in p.rules] == [3, 5]


# --- hosts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 a.example", [(D, "a.example")]),
        ("127.0.0.1 a.example", [(D, "a.example")]),
        (":: a.example", [(D, "a.example")]),
        ("::1 a.example", [(D, "a.example")]),
        ("0 a.example", [(D, "a.example")]),
        ("0.0.0.0\ta.example", [(D, "a.example")]),
        ("0.0.0.0   A.Example.  ", [(D, "a.example")]),
        (
            "0.0.0.0 a.example b.example\tc.example",
            [(D, "a.example"), (D, "b.example"), (D, "c.example")],
        ),
        ("0.0.0.0 a.example # inline comment", [(D, "a.example")]),
        ("0.0.0.0 a.example#glued comment", [(D, "a.example")]),
        ("0.0.0.0 bücher.example", [(D, "xn--bcher-kva.example")]),
        ("0.0.0.0 192.0.2.1", [(IP, "192.0.2.1")]),
        ("0.0.0.0 2001:db8::1", [(IP, "2001:db8::1")]),
        ("0.0.0.0 example.a1", [(D, "example.a1")]),
    ],
)
def test_hosts_lines(line: str, expected: list[tuple[RuleKind, str]]) -> None:
    p = parse_list(line + "\n", "hosts")
    assert [(r.kind, r.key) for r in p.rules] == expected
    assert p.rejected_count == 0


@pytest.mark.parametrize(
    "line",
    [
        "127.0.0.1 localhost",
        "127.0.0.1 localhost.localdomain",
        "127.0.0.1 LocalHost.",
        "255.255.255.255 broadcasthost",
        "127.0.0.1 local",
        "0.0.0.0 0.0.0.0",
        "::1 ip6-localhost ip6-loopback",
        "ff02::1 ip6-allnodes",
        "ff00::0 ip6-mcastprefix",
        "fe80::1%lo0 localhost",
        "# 0.0.0.0 commented.example",
    ],
)
def test_hosts_local_family_is_skipped_not_rejected(line: str) -> None:
    p = parse_list(line + "\n", "hosts")
    assert p.rules == [] and p.rejected_count == 0
    assert p.skipped >= 1


def test_hosts_ip6_prefix_only_for_single_labels() -> None:
    assert keys(parse_list("0.0.0.0 ip6-tunnel.example\n", "hosts")) == ["ip6-tunnel.example"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0.0.0.0 106", "not a plausible host"),
        ("0.0.0.0 010.1.1.1", "not a plausible host"),
        ("0.0.0.0 0x7f.1", "not a plausible host"),
        ("0.0.0.0 a/b.example", "invalid host"),
        ("0.0.0.0 ads*.example", "unsupported pattern"),
        ("a.example", "invalid hosts line"),
        ("0.0.0.0", "invalid hosts line"),
        ("example.org a.example", "invalid hosts line"),
        ("not-an-ip ip6-tunnel.example", "invalid hosts line"),
    ],
)
def test_hosts_rejections(line: str, reason: str) -> None:
    assert rejected(line + "\n", "hosts") == reason


def test_hosts_rejects_each_bad_token_and_keeps_the_good() -> None:
    p = parse_list("0.0.0.0 good.example 106 also.example\n", "hosts")
    assert keys(p) == ["good.example", "also.example"]
    assert p.rejected_samples[0].text == "106"


# --- domains --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a.example", (D, "a.example", False)),
        ("A.EXAMPLE.", (D, "a.example", False)),
        (".a.example", (D, "a.example", False)),
        ("*.a.example", (D, "a.example", False)),
        ("=www.a.example", (E, "www.a.example", False)),
        ("=WWW.A.EXAMPLE.", (E, "www.a.example", False)),
        ("192.0.2.1", (IP, "192.0.2.1", False)),
        ("=192.0.2.1", (IP, "192.0.2.1", False)),
        ("2001:DB8::1", (IP, "2001:db8::1", False)),
        ("192.0.2.0/24", (C, "192.0.2.0/24", False)),
        ("192.0.2.1/32", (IP, "192.0.2.1", False)),
        ("a.example # trailing comment", (D, "a.example", False)),
        ("a.example\t#", (D, "a.example", False)),
        ("bücher.example", (D, "xn--bcher-kva.example", False)),
        # a single label is the engine's poison guard's business, not the parser's
        ("com", (D, "com", False)),
    ],
)
def test_domains_lines(line: str, expected: tuple[RuleKind, str, bool]) -> None:
    assert rule(line + "\n", "domains") == expected


def test_domains_text_is_entry_without_comment() -> None:
    p = parse_list("  =www.a.example  # exact\n", "domains")
    assert p.rules[0].text == "=www.a.example"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("106", "not a plausible host"),
        ("1.2.3", "not a plausible host"),
        ("0x7f000001", "not a plausible host"),
        ("*.106", "not a plausible host"),
        ("ads*.example", "unsupported pattern"),
        ("*.192.0.2.1", "unsupported pattern"),
        ("*", "unsupported pattern"),
        ("a.example/path", "invalid host"),
        ("a b.example", "invalid host"),
        ("0.0.0.0 a.example", "invalid host"),
        ("||a.example^", "invalid host"),
        ("192.0.2.0/33", "invalid network"),
        ("fe80::1%eth0", "invalid host"),
        ("x" * 300 + ".example", "invalid host"),
    ],
)
def test_domains_rejections(line: str, reason: str) -> None:
    assert rejected(line + "\n", "domains") == reason


def test_domains_localhost_and_bang_comments_skipped() -> None:
    p = parse_list("localhost\n! comment\n# comment\n\nip6-loopback\n", "domains")
    assert p.rules == [] and p.rejected_count == 0 and p.skipped == 5


# --- adblock --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("||a.example^", (D, "a.example", False)),
        ("||A.Example.^", (D, "a.example", False)),
        ("||a.example^|", (D, "a.example", False)),
        ("||a.example", (D, "a.example", False)),
        ("||bücher.example^", (D, "xn--bcher-kva.example", False)),
        ("||192.0.2.1^", (IP, "192.0.2.1", False)),
        ("||a.example^$third-party", (D, "a.example", False)),
        ("||a.example^$3p", (D, "a.example", False)),
        ("||a.example^$~first-party", (D, "a.example", False)),
        ("||a.example^$important", (D, "a.example", False)),
        ("||a.example^$all", (D, "a.example", False)),
        ("||a.example^$document", (D, "a.example", False)),
        ("||a.example^$doc,popup", (D, "a.example", False)),
        ("||a.example^$third-party,important", (D, "a.example", False)),
        ("||a.example^$Third-Party", (D, "a.example", False)),
        ("@@||a.example^", (D, "a.example", True)),
        ("@@||a.example^$important", (D, "a.example", True)),
        ("@@||a.example^$document", (D, "a.example", True)),
        ("||a.example/path|", (U, "a.example/path", False)),
        ("||a.example/dir/", (U, "a.example/dir/", False)),
        ("||a.example/p?q=1", (U, "a.example/p?q=1", False)),
        ("|https://a.example/x|", (U, "a.example/x", False)),
        ("|http://A.example/x?y=1|", (U, "a.example/x?y=1", False)),
        ("|https://a.example/", (U, "a.example/", False)),
        ("@@|https://a.example/ok|", (U, "a.example/ok", True)),
    ],
)
def test_adblock_rules(line: str, expected: tuple[RuleKind, str, bool]) -> None:
    assert rule(line + "\n", "adblock") == expected


def test_adblock_text_is_the_whole_rule() -> None:
    p = parse_list("||a.example^$third-party\n@@||b.example^\n", "adblock")
    assert [r.text for r in p.rules] == ["||a.example^$third-party", "@@||b.example^"]
    assert p.count(D) == 1 and p.count(D, exception=True) == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("||a.example^$script", "narrowing modifier"),
        ("||a.example^$image,third-party", "narrowing modifier"),
        ("||a.example^$domain=b.example", "narrowing modifier"),
        ("||a.example^$denyallow=b.example", "narrowing modifier"),
        ("||a.example^$badfilter", "narrowing modifier"),
        ("||a.example^$redirect=noopjs", "narrowing modifier"),
        ("||a.example^$removeparam=utm", "narrowing modifier"),
        ("||a.example^$csp=script-src 'none'", "narrowing modifier"),
        ("||a.example^$~script", "narrowing modifier"),
        ("||a.example^$~document", "narrowing modifier"),
        ("||a.example^$dnsrewrite=192.0.2.1", "narrowing modifier"),
        # an allow rule widened to the whole host would allow more than the list did
        ("@@||a.example^$third-party", "narrowing modifier"),
        ("@@||a.example^$elemhide", "narrowing modifier"),
        ("@@||a.example^$generichide", "narrowing modifier"),
        ("||a.example^$frobnicate", "unsupported modifier"),
        ("/ads[0-9]+\\.example/", "regex rule"),
        ("/banner/$script", "regex rule"),
        ("-ad-banner-", "generic rule"),
        ("/ads/banner", "generic rule"),
        ("a.example", "generic rule"),
        ("$script,third-party", "generic rule"),
        ("||ads.", "generic rule"),
        ("||ads", "generic rule"),
        ("||ad*.example^", "unsupported pattern"),
        ("||*.a.example^", "unsupported pattern"),
        ("||a.example/ad*.js", "unsupported pattern"),
        ("||a.example/ad^x", "unsupported pattern"),
        ("||106^", "not a plausible host"),
        ("||a.example:8080^", "invalid host"),
    ],
)
def test_adblock_rejections(line: str, reason: str) -> None:
    if reason in ("not a plausible host", "invalid host"):
        assert rejected(line + "\n", "adblock") == reason  # a fault of the list
        return
    # A sound rule that is not host-level: skipped and counted by reason, no fault
    # (EasyList is mostly these, and must not be refused for it).
    p = parse_list(line + "\n", "adblock")
    assert not p.rules and p.rejected_count == 0
    assert p.skipped_by_reason == {reason: 1}


def test_plain_domains_declared_as_adblock_are_refused() -> None:
    text = "".join(f"host{i}.example\n" for i in range(50))
    with pytest.raises(ListFormatError, match="no host-level rule"):
        parse_list(text, "adblock")


def test_mostly_generic_adblock_list_is_not_refused() -> None:
    text = "".join(f"/banner{i}/$script\n-ad-{i}-\n" for i in range(50)) + "||ads.example^\n"
    p = parse_list(text, "adblock")
    assert [r.key for r in p.rules] == ["ads.example"]
    assert p.skipped_by_reason == {"regex rule": 50, "generic rule": 50}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # AdGuard DNS syntax: "|host^" is that host exactly (AdGuard DNS filter's own lines)
        ("|ezodn.com^", (RuleKind.EXACT, "ezodn.com", False)),
        ("@@|ezodn.com^|", (RuleKind.EXACT, "ezodn.com", True)),
        ("@@|core.crazyegg.com^|", (RuleKind.EXACT, "core.crazyegg.com", True)),
        ("|198.51.100.7^", (RuleKind.IP, "198.51.100.7", False)),
    ],
)
def test_adguard_exact_host_rules(line: str, expected: tuple[RuleKind, str, bool]) -> None:
    assert rule(line + "\n", "adblock") == expected


def test_table_words_are_not_hosts() -> None:
    """A table mistaken for a list: commas and parentheses are in no host name."""
    assert rejected("0.0.0.0 no.31,jin-rong\n", "hosts") == "not a plausible host"
    assert rejected("(abuse_gdnoc)bad\n", "domains") == "not a plausible host"
    # PhishTank's CSV is not a URL list: its header and rows have no plausible host
    assert rejected("phish_id,url,phish_detail_url,submission_time\n", "urls") == "invalid url"
    assert rejected("8504226,https://a.example/,http://b.example/x\n", "urls") == "invalid url"


def test_ranges_table_is_not_detected_as_hosts() -> None:
    """DShield's block.txt: start, end, prefix, ... per line: no format fits, refused."""
    text = "".join(
        f"192.0.{i}.0\t192.0.{i}.255\t24\t100\tSOME-NET Street\tCN\tabuse@example.net\n"
        for i in range(20)
    )
    with pytest.raises(ListFormatError, match="cannot detect"):
        parse_list(text)


def test_addresses_with_a_score_column() -> None:
    """IPsum: "address<TAB>number of lists"."""
    text = "# IP\tnumber of (black)lists\n" + "".join(
        f"198.51.100.{i}\t{i % 9 + 1}\n" for i in range(20)
    )
    p = parse_list(text)
    assert p.format == "ips" and len(p.rules) == 20 and p.rejected_count == 0
    assert rejected("198.51.100.1\tmany\n", "ips") == "invalid network"


def test_a_sample_for_every_reason() -> None:
    text = "".join(f"{i}\n" for i in range(1, 30)) + "a.example\n" * 40 + "1.2.3.4/99\n"
    p = parse_list(text, "domains")
    assert {s.reason for s in p.rejected_samples} == set(p.rejected_by_reason)


@pytest.mark.parametrize(
    "line",
    [
        "[Adblock Plus 2.0]",
        "[AdGuard]",
        "! Title: a list",
        "!",
        "##.ad-banner",
        "example.com##.ad",
        "example.com#@#.ad",
        "example.com#?#div:has(> .ad)",
        "example.com#$#body { color: red }",
        "example.com#%#window.x = 1",
        "example.com##+js(aopr, x)",
        'example.com$$script[tag-content="ad"]',
        "# hosts-style comment",
        "||localhost^",
    ],
)
def test_adblock_skips(line: str) -> None:
    p = parse_list(line + "\n||a.example^\n", "adblock")
    assert keys(p) == ["a.example"]
    assert p.rejected_count == 0
    assert p.skipped == 1


# --- urls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("http://a.example/x", "a.example/x"),
        ("HTTPS://A.EXAMPLE/X?Q=1", "a.example/X?Q=1"),
        ("https://a.example", "a.example/"),
        ("https://a.example/", "a.example/"),
        ("http://a.example:8080/x#frag", "a.example/x"),
        ("http://192.0.2.1/x.sh", "192.0.2.1/x.sh"),
        ("http://[2001:db8::1]/x", "2001:db8::1/x"),
        ("http://bücher.example/x", "xn--bcher-kva.example/x"),
        ("a.example/path", "a.example/path"),
        ("http://a.example/x # comment", "a.example/x"),
    ],
)
def test_urls_lines(line: str, key: str) -> None:
    assert rule(line + "\n", "urls") == (U, key, False)
    assert url_rule_key(line.split(" #")[0])[1] == key


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("javascript:alert(1)", "invalid url"),
        ("http://", "invalid url"),
        ("http://a.example/x y", "invalid url"),
    ],
)
def test_urls_rejections(line: str, reason: str) -> None:
    assert rejected(line + "\n", "urls") == reason


# --- urlhaus-csv ----------------------------------------------------------------

CSV_HEADER = "# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter\n"


def test_urlhaus_csv_without_header_uses_third_column() -> None:
    text = '"1","2025-01-01 00:00:00","http://a.example/x","offline","","malware_download","None","https://urlhaus.abuse.ch/url/1/","r"\n'
    p = parse_list(text)
    assert p.format == "urlhaus-csv"
    assert keys(p) == ["a.example/x"]  # offline rows are kept: a URL list is a list


def test_urlhaus_csv_header_moves_the_url_column() -> None:
    # dumps before ~2021 had no last_online column; a header names the layout
    text = "# url,id,dateadded\n" + '"http://a.example/x","1","2025-01-01"\n'
    assert keys(parse_list(text, "urlhaus-csv")) == ["a.example/x"]


def test_urlhaus_csv_bad_rows() -> None:
    text = (
        CSV_HEADER
        + '"1","d"\n'
        + '"2","d","not a url","online"\n'
        + '"3","d","http://a.example/","online"\n'
    )
    p = parse_list(text, "urlhaus-csv")
    assert keys(p) == ["a.example/"]
    assert p.rejected_by_reason == {"invalid row": 1, "invalid url": 1}


def test_urlhaus_csv_stray_quote_spoils_only_its_line() -> None:
    text = CSV_HEADER + '"1","d","http://a.example/x\n' + '"2","d","http://b.example/y"\n'
    assert keys(parse_list(text, "urlhaus-csv")) == ["a.example/x", "b.example/y"]


# --- ips / cidr -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("192.0.2.1", (IP, "192.0.2.1", False)),
        ("192.0.2.1 # c2", (IP, "192.0.2.1", False)),
        ("192.0.2.1/32", (IP, "192.0.2.1", False)),
        ("2001:db8::1/128", (IP, "2001:db8::1", False)),
        ("2001:DB8:0:0::1", (IP, "2001:db8::1", False)),
        ("192.0.2.0/24 ; SBL123", (C, "192.0.2.0/24", False)),
        ("192.0.2.7/24", (C, "192.0.2.0/24", False)),
        ("10.0.0.0/8", (C, "10.0.0.0/8", False)),
        ('{"cidr":"192.0.2.0/24","sblid":"SBL1","rir":"arin"}', (C, "192.0.2.0/24", False)),
        ('{"cidr":"2001:db8::\\/32","sblid":"SBL2"}', (C, "2001:db8::/32", False)),
    ],
)
@pytest.mark.parametrize("fmt", ["ips", "cidr"])
def test_network_lines(fmt: str, line: str, expected: tuple[RuleKind, str, bool]) -> None:
    assert rule(line + "\n", fmt) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("106", "not a plausible host"),
        ("1.2.3", "not a plausible host"),
        ("a.example", "invalid network"),
        ("192.0.2.0/33", "invalid network"),
        ("192.0.2.0/24 extra", "invalid network"),
        ('{"cidr": 5}', "unsupported"),
        ('{"asn": 64496}', "unsupported"),
        ("{not json", "invalid row"),
        ("[" * 5000 + "]" * 5000, "invalid network"),
        ("{" + '"a":[' * 5000, "invalid row"),
    ],
)
def test_network_rejections(line: str, reason: str) -> None:
    assert rejected(line + "\n", "cidr") == reason


def test_drop_json_metadata_line_is_skipped() -> None:
    p = parse_list('{"type":"metadata","timestamp":1,"records":0}\n', "cidr")
    assert p.rules == [] and p.rejected_count == 0 and p.skipped == 1


# --- dnsmasq ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("address=/a.example/0.0.0.0", [(D, "a.example")]),
        ("address=/a.example/", [(D, "a.example")]),
        ("address=/a.example/::", [(D, "a.example")]),
        ("address=/a.example/127.0.0.1", [(D, "a.example")]),
        ("address=/a.example/#", [(D, "a.example")]),
        ("server=/a.example/", [(D, "a.example")]),
        ("local=/a.example/", [(D, "a.example")]),
        ("local=/A.Example./", [(D, "a.example")]),
        ("local=/.a.example/", [(D, "a.example")]),
        ("address=/a.example/b.example/0.0.0.0", [(D, "a.example"), (D, "b.example")]),
        ("address=/bücher.example/", [(D, "xn--bcher-kva.example")]),
        ("address=/192.0.2.1/", [(IP, "192.0.2.1")]),
        ("local=/a.example/  # comment", [(D, "a.example")]),
    ],
)
def test_dnsmasq_lines(line: str, expected: list[tuple[RuleKind, str]]) -> None:
    p = parse_list(line + "\n", "dnsmasq")
    assert [(r.kind, r.key) for r in p.rules] == expected
    assert p.rejected_count == 0
    assert p.rules[0].text == line.split("  #")[0]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("server=/a.example/192.0.2.53", "forwarding rule"),
        ("server=/a.example/192.0.2.53#5353", "forwarding rule"),
        ("server=/a.example/#", "forwarding rule"),
        ("address=/a.example/192.0.2.1", "redirect rule"),
        ("address=/#/0.0.0.0", "invalid host"),
        ("address=//0.0.0.0", "invalid host"),
        ("address=/*.a.example/", "unsupported pattern"),
        ("cache-size=1000", "unsupported"),
        ("address=a.example", "unsupported"),
        ("address=/0.0.0.0", "unsupported"),
        ("local=/106/", "not a plausible host"),
    ],
)
def test_dnsmasq_rejections(line: str, reason: str) -> None:
    assert rejected(line + "\n", "dnsmasq") == reason


def test_dnsmasq_localhost_skipped() -> None:
    p = parse_list("address=/localhost/0.0.0.0\n", "dnsmasq")
    assert p.rules == [] and p.rejected_count == 0


# --- counting and refusals -------------------------------------------------------


def test_rejected_samples_are_capped_but_all_counted() -> None:
    text = "\n".join([f"ok{i}.example" for i in range(30)] + ["106"] * 12)
    p = parse_list(text, "domains")
    assert p.rejected_count == 12
    assert p.rejected_by_reason == {"not a plausible host": 12}
    assert len(p.rejected_samples) == MAX_REJECTED_SAMPLES
    assert p.rejected_samples[0].line == 31


def test_mostly_rejected_list_is_refused_with_a_clear_message() -> None:
    text = "\n".join(["ok.example"] * 4 + ["106"] * 4 + ["a/b"] * 3)
    with pytest.raises(ListFormatError) as exc:
        parse_list(text, "domains", name="feedx")
    msg = str(exc.value)
    assert "feedx" in msg and "'domains'" in msg and "7 of 11" in msg
    assert "not a plausible host: 4" in msg and "invalid host: 3" in msg


def test_half_rejected_is_not_refused() -> None:
    text = "\n".join(["ok.example"] * 5 + ["106"] * 5)
    assert parse_list(text, "domains").rejected_count == 5


def test_few_entries_are_never_refused() -> None:
    text = "\n".join(["106"] * (MIN_ENTRIES_FOR_RATIO - 1))
    p = parse_list(text, "domains")
    assert p.rules == [] and p.rejected_count == MIN_ENTRIES_FOR_RATIO - 1


def test_wrong_explicit_format_is_refused() -> None:
    data = (FEEDS / "hagezi_tif_adblock.txt").read_bytes()
    with pytest.raises(ListFormatError, match="'hosts'"):
        parse_list(data, "hosts")


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02\x03 binary\nmore\x00\n",
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"\xff\xd8\xff\xe0" + bytes(range(128, 256)) * 8,
        b"a.example\n\x00\x00\n\x01b.example\n",
        os.urandom(20000),
    ],
    ids=["nul", "all-bytes", "png", "jpeg-ish", "nul-most-lines", "random"],
)
def test_binary_is_refused(data: bytes) -> None:
    with pytest.raises(ListFormatError, match="binary"):
        parse_list(data)


def test_binary_str_is_refused() -> None:
    with pytest.raises(ListFormatError, match="binary"):
        parse_list("a.example\n\x00\n\x01x\n")


@pytest.mark.parametrize("fmt", ["auto", "domains", "hosts", "mixed"])
def test_one_garbage_line_is_rejected_not_the_list(fmt: str) -> None:
    # Pi-hole and AdGuard Home keep a good list with a damaged line; so do we.
    good = [f"host{i}.example" for i in range(40)]
    if fmt == "hosts":
        good = [f"0.0.0.0 {h}" for h in good]
    lines = [*good[:20], "\x00\x00\x13\x37junk\xff\x01", *good[20:]]
    p = parse_list("\n".join(lines).encode("latin-1"), fmt)
    assert len(p.rules) == 40
    assert p.rejected_by_reason == {"control characters": 1}
    assert p.rejected_samples[0].line == 21
    assert "\\x00" in p.rejected_samples[0].text  # shown escaped, readable in a log
    assert p.skipped == 0  # the blanked line is rejected, not also counted as blank


def test_garbage_lines_still_count_towards_refusal() -> None:
    # The rejection guard still applies: mostly damaged lines sink the list.
    lines = ["a.example", "b.example"] + ["x\x01y.example"] * 3 + ["c.example"] * 2
    lines = lines * 5
    text = "\n".join(lines)
    with pytest.raises(ListFormatError):
        parse_list(text + "\n" + "\n".join(["z\x02.example"] * 40))


def test_compressed_is_refused_with_a_hint() -> None:
    with pytest.raises(ListFormatError, match="decompress"):
        parse_list(gzip.compress(b"a.example\n"))


def test_latin1_file_is_not_binary() -> None:
    data = "# Liste für böse Domains\n".encode("latin-1") + b"a.example\nb.example\n"
    assert keys(parse_list(data)) == ["a.example", "b.example"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ListFormatError, match="unknown format 'csv'"):
        parse_list("a.example\n", "csv")


def test_empty_and_comment_only_lists_are_empty_not_errors() -> None:
    for data in (b"", b"\n\n", b"# only\n# comments\n", b"; DROP header only\n"):
        p = parse_list(data)
        assert p.rules == [] and p.rejected_count == 0
    assert parse_list(b"# x\n", "ips").format == "ips"


def test_undetectable_is_refused() -> None:
    with pytest.raises(ListFormatError, match="cannot detect"):
        parse_list("hello\nworld\n")
    with pytest.raises(ListFormatError, match="HTML"):
        parse_list(b"<!DOCTYPE html>\n<html><body>Rate limited</body></html>\n")


def test_overlong_line_is_rejected_unread() -> None:
    p = parse_list("a.example\n" + "b" * (formats.MAX_LINE_LENGTH + 1) + ".example\n", "domains")
    assert keys(p) == ["a.example"] and p.rejected_by_reason == {"line too long": 1}


# --- detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("0.0.0.0 a.example\n", "hosts"),
        ("# c\n127.0.0.1 a.example b.example\n", "hosts"),
        ("a.example\nb.example\n", "domains"),
        ("*.a.example\n", "domains"),
        ("=a.example\n", "domains"),
        ("||a.example^\n", "adblock"),
        ("@@||a.example^\n", "adblock"),
        ("example.com##.ad\n", "adblock"),
        ("[Adblock Plus 2.0]\na.example\n", "adblock"),
        ("http://a.example/x\n", "urls"),
        ("a.example/x\nb.example/y\n", "urls"),
        (CSV_HEADER, "urlhaus-csv"),
        ('"1","d","http://a.example/","online"\n', "urlhaus-csv"),
        ("192.0.2.1\n198.51.100.2\n", "ips"),
        ("192.0.2.1/32\n", "ips"),
        ("192.0.2.0/24 ; SBL1\n", "cidr"),
        ("192.0.2.1\n198.51.100.0/24\n", "cidr"),
        ('{"cidr":"192.0.2.0/24"}\n', "cidr"),
        ("address=/a.example/0.0.0.0\n", "dnsmasq"),
        ("local=/a.example/\n", "dnsmasq"),
        # shapes mixed by hand: each line is taken for what it is
        ("a.example\nb.example\nc.example\n0.0.0.0 d.example\n", "mixed"),
        ("a.example\nhttp://b.example/x\n", "mixed"),
        ("192.0.2.1\nhttp://b.example/x\n", "mixed"),
        ("a.example\n192.0.2.1\n198.51.100.0/24\n", "mixed"),
        # adblock keeps its parser: its generic rules look like other shapes
        ("||a.example^\n||b.example^\nads.example.com^$third-party\n", "adblock"),
        ("$TTL 300\n@ SOA a. b. 1 2 3 4 5\nevil.example CNAME .\n", "rpz"),
        ("evil.example CNAME .\n*.evil.example CNAME .\n", "rpz"),
    ],
)
def test_detect_format(text: str, fmt: str) -> None:
    assert detect_format(text) == fmt
    assert parse_list(text).format == fmt


def test_explicit_format_overrides_detection() -> None:
    # a domains list read as URLs: every domain is a URL rule for its root
    p = parse_list("a.example\nb.example\n", "urls")
    assert p.format == "urls" and keys(p) == ["a.example/", "b.example/"]


def test_detection_reads_a_bounded_sample() -> None:
    head = "\n".join(f"h{i}.example" for i in range(formats.DETECT_SAMPLE_LINES))
    assert detect_format(head + "\n" + "0.0.0.0 x.example\n" * 1000) == "domains"


def test_detect_format_ignores_a_bom() -> None:
    assert detect_format("\ufeff[Adblock Plus]\n! x\n") == "adblock"


def test_detect_format_refuses_nothing_to_go_on() -> None:
    with pytest.raises(ListFormatError):
        detect_format("# just a comment\n")


def test_formats_tuple_is_the_api() -> None:
    assert FORMATS == (
        "hosts",
        "domains",
        "adblock",
        "urls",
        "urlhaus-csv",
        "ips",
        "cidr",
        "dnsmasq",
        "mixed",
        "rpz",
    )
    for fmt in FORMATS:
        assert parse_list("", fmt).format == fmt


def test_adblock_skips_are_counted_by_reason() -> None:
    p = parse_list(
        "[Adblock Plus 2.0]\n! c\n||evil.example^\nexample.com##.ad\n##.banner\n", "adblock"
    )
    assert [r.key for r in p.rules] == ["evil.example"]
    assert p.skipped == 4
    assert p.skipped_by_reason == {"cosmetic": 2, "header": 1}
