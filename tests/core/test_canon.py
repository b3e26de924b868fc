"""Canonicalization: the shared case table, hosts, networks and Safe Browsing expressions.

Expected values come from the Safe Browsing v4 "URLs and Hashing" examples, the
WHATWG ``urltestdata.json`` host and path cases, and (for evasions) ada, the
WHATWG parser Node.js uses, with the Safe Browsing rules applied on top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy_addons.core.canon import (
    CanonicalURL,
    canonical_host,
    canonical_network,
    canonicalize_url,
    host_kind,
    url_host_expressions,
    url_path_expressions,
    url_rule_key,
)
from proxy_addons.core.errors import CanonError, JectguardError

CASES_PATH = Path(__file__).parent.parent / "data" / "canon_cases.json"
CASE_KEYS = {"name", "input", "canonical_url", "host", "error", "source", "note", "bug"}
SOURCES = {"sb", "whatwg", "evasion", "jectguard"}
CASES: list[dict[str, Any]] = json.loads(CASES_PATH.read_text(encoding="utf-8"))


def _params(rows: list[dict[str, Any]]) -> list[Any]:
    """One pytest param per row; rows with a known bug are strict xfails."""
    out = []
    for row in rows:
        marks = []
        if row["bug"]:
            marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {row['bug']}"))
        out.append(pytest.param(row, id=row["name"], marks=marks))
    return out


# -- the table itself ------------------------------------------------------


def test_table_is_clean() -> None:
    names = [row["name"] for row in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    inputs = [row["input"] for row in CASES]
    assert len(inputs) == len(set(inputs)), "inputs must be unique"
    for row in CASES:
        assert set(row) == CASE_KEYS, row["name"]
        assert row["source"] in SOURCES, row["name"]
        assert isinstance(row["input"], str) and isinstance(row["note"], str)
        assert row["bug"] is None or (isinstance(row["bug"], str) and row["bug"])
        assert row["error"] is (row["canonical_url"] is None), row["name"]
        assert row["error"] is (row["host"] is None), row["name"]
        if not row["error"]:
            assert "://" in row["canonical_url"], row["name"]
    # Clean JSON: round-trips exactly, no NaN or other extensions.
    text = CASES_PATH.read_text(encoding="utf-8")
    assert json.loads(json.dumps(CASES, allow_nan=False)) == json.loads(text)


def test_table_covers_every_source() -> None:
    assert {row["source"] for row in CASES} == SOURCES


# -- canonicalize_url over the table --------------------------------------


@pytest.mark.parametrize("row", _params(CASES))
def test_canonicalize_url(row: dict[str, Any]) -> None:
    if row["error"]:
        with pytest.raises(CanonError):
            canonicalize_url(row["input"])
        return
    cu = canonicalize_url(row["input"])
    assert cu.url == row["canonical_url"]
    assert cu.host == row["host"]


@pytest.mark.parametrize("row", _params([r for r in CASES if not r["error"] and not r["bug"]]))
def test_canonical_host_is_a_fixed_point(row: dict[str, Any]) -> None:
    """A canonical host read back as a bare host stays the same."""
    cu = canonicalize_url(row["input"])
    assert canonical_host(cu.host) == cu.host
    assert host_kind(cu.host) == cu.host_kind


_NOT_IDEMPOTENT: dict[str, str] = {}


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            r,
            id=r["name"],
            marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {_NOT_IDEMPOTENT[r['name']]}")]
            if r["name"] in _NOT_IDEMPOTENT
            else [],
        )
        for r in CASES
        if not r["error"] and not r["bug"]
    ],
)
def test_canonical_url_is_idempotent(row: dict[str, Any]) -> None:
    url = canonicalize_url(row["input"]).url
    assert canonicalize_url(url).url == url


def test_canon_error_is_a_value_error_with_input_hint() -> None:
    with pytest.raises(CanonError) as info:
        canonicalize_url("javascript:alert(1)")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, JectguardError)
    assert info.value.hint == "input"


@pytest.mark.parametrize("value", [None, b"http://evil.example/", 42])
def test_non_string_input_is_a_canon_error(value: object) -> None:
    with pytest.raises(CanonError):
        canonicalize_url(value)  # type: ignore[arg-type]


def test_overlong_url_is_a_canon_error() -> None:
    with pytest.raises(CanonError):
        canonicalize_url("http://evil.example/" + "a" * 70_000)


# -- components -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://www.gotaport.com:1234/", 1234),
        ("http://evil.example:80/", None),
        ("https://evil.example:443/", None),
        ("https://evil.example:80/", 80),
        ("http://evil.example:0/", 0),
        ("ws://evil.example:80/", None),
        ("wss://evil.example:443/", None),
        ("ftp://evil.example:21/", None),
        ("http://evil.example:/", None),
        ("http://[2001:db8::1]:8443/", 8443),
        ("evil.example:8080/mal/", 8080),
        ("http://f:00000000000000000000080/c", None),
    ],
)
def test_port_is_kept_out_of_the_url(url: str, port: int | None) -> None:
    cu = canonicalize_url(url)
    assert cu.port == port
    authority = cu.url.split("//", 1)[1].split("/", 1)[0]
    assert authority == (f"[{cu.host}]" if cu.host_kind == "ipv6" else cu.host)


@pytest.mark.parametrize(
    ("url", "scheme", "host", "kind", "path", "query"),
    [
        ("http://evil.example/a/b?c=d#e", "http", "evil.example", "domain", "/a/b", "c=d"),
        ("https://evil.example", "https", "evil.example", "domain", "/", None),
        ("http://evil.example/q?", "http", "evil.example", "domain", "/q", ""),
        ("http://evil.example/q", "http", "evil.example", "domain", "/q", None),
        ("http://3279880203/blah", "http", "195.127.0.11", "ipv4", "/blah", None),
        ("http://[2001:DB8::1]/x", "http", "2001:db8::1", "ipv6", "/x", None),
        ("ws://evil.example/s", "ws", "evil.example", "domain", "/s", None),
        ("wss://evil.example/s", "wss", "evil.example", "domain", "/s", None),
        ("ftp://evil.example/f", "ftp", "evil.example", "domain", "/f", None),
        ("http://0x7f.0.0.0x7g/", "http", "0x7f.0.0.0x7g", "domain", "/", None),
    ],
)
def test_components(
    url: str, scheme: str, host: str, kind: str, path: str, query: str | None
) -> None:
    cu = canonicalize_url(url)
    assert (cu.scheme, cu.host, cu.host_kind, cu.path, cu.query) == (
        scheme,
        host,
        kind,
        path,
        query,
    )


def test_url_property_builds_the_safe_browsing_form() -> None:
    cu = CanonicalURL("https", "2001:db8::1", "ipv6", 8443, "/a", "b=c")
    assert cu.url == "https://[2001:db8::1]/a?b=c"
    assert str(cu) == cu.url
    assert CanonicalURL("http", "evil.example", "domain", None, "/", "").url == (
        "http://evil.example/?"
    )
    assert CanonicalURL("http", "evil.example", "domain", 81, "/x", None).url == (
        "http://evil.example/x"
    )


# -- canonical_host -------------------------------------------------------


HOST_CASES = [
    # (input, expected or None for CanonError, bug)
    ("EVIL.Example", "evil.example", None),
    ("EVIL.Example.", "evil.example", None),
    ("..evil..example..", "evil.example", None),
    (" evil.example ", "evil.example", None),
    ("my_host.evil.example", "my_host.evil.example", None),
    ("b\u00fccher.example", "xn--bcher-kva.example", None),
    ("B\u00dcCHER.example", "xn--bcher-kva.example", None),
    ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example", None),
    ("fa\u00df.de", "xn--fa-hia.de", None),
    ("\uff45\uff56\uff49\uff4c.example", "evil.example", None),
    ("3647724179", "217.107.218.147", None),
    ("0xd9.0x6b.0xda.0x93", "217.107.218.147", None),
    ("0331.0153.0332.0223", "217.107.218.147", None),
    ("0xd96bda93", "217.107.218.147", None),
    ("217.7330835", "217.111.220.19", None),
    ("217.107.56026", "217.107.218.218", None),
    ("217.107.218.147.", "217.107.218.147", None),
    ("4294967295", "255.255.255.255", None),
    ("[2001:DB8::1]", "2001:db8::1", None),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1", None),
    ("::ffff:1.2.3.4", "1.2.3.4", None),
    ("[::127.0.0.1]", "::7f00:1", None),
    ("0x7f.0.0.0x7g", "0x7f.0.0.0x7g", None),
    ("", None, None),
    ("   ", None, None),
    ("evil.example:8080", None, None),
    ("evil.example/x", None, None),
    ("good.com@evil.example", None, None),
    ("evil example", None, None),
    ("evil.example#x", None, None),
    ("evil.example?x", None, None),
    ("evil\\example", None, None),
    ("[::1", None, None),
    ("1.2.3.4.5", None, None),
    ("256.1.1.1", None, None),
    ("4294967296", None, None),
    ("host%23.com", None, None),
    ("a" * 300, None, None),
    ("0x7f", "0.0.0.127", None),
    ("1.2.3.0xff", "1.2.3.255", None),
    ("0xffffffff", "255.255.255.255", None),
    ("0XD9.0X6B.0XDA.0XA", "217.107.218.10", None),
    ("a" * 254, None, None),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            text,
            expected,
            id=repr(text)[:40],
            marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")] if bug else [],
        )
        for text, expected, bug in HOST_CASES
    ],
)
def test_canonical_host(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(CanonError):
            canonical_host(text)
    else:
        assert canonical_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            t,
            id=repr(t)[:40],
            marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {b}")] if b else [],
        )
        for t, e, b in HOST_CASES
        if e is not None and ":" not in t and "@" not in t and t.strip() == t
    ],
)
def test_canonical_host_agrees_with_url_host(text: str) -> None:
    assert canonical_host(text) == canonicalize_url(f"http://{text}/").host


# -- canonical_network ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.7/24", ("192.0.2.0", 24, 4)),
        ("203.0.113.0/24", ("203.0.113.0", 24, 4)),
        (" 203.0.113.0/24 ", ("203.0.113.0", 24, 4)),
        ("10.0.0.0/8", ("10.0.0.0", 8, 4)),
        ("198.51.100.7", ("198.51.100.7", 32, 4)),
        ("198.51.100.7/32", ("198.51.100.7", 32, 4)),
        ("0xc6.51.100.7", ("198.51.100.7", 32, 4)),
        ("2001:DB8::1/32", ("2001:db8::", 32, 6)),
        ("2001:db8:0:0:0:0:0:1", ("2001:db8::1", 128, 6)),
        ("2001:db8::/48", ("2001:db8::", 48, 6)),
    ],
)
def test_canonical_network(text: str, expected: tuple[str, int, int]) -> None:
    assert canonical_network(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-an-ip",
        "192.0.2.0/33",
        "192.0.2.0/x",
        "192.0.2.0/24/1",
        "2001:db8::/129",
        "[2001:db8::1]",
    ],
)
def test_canonical_network_errors(text: str) -> None:
    with pytest.raises(CanonError):
        canonical_network(text)


# -- Safe Browsing suffix/prefix expressions (v4 doc and reference clients) --


@pytest.mark.parametrize(
    ("url", "hosts", "paths"),
    [
        # Safe Browsing v4 "Suffix/Prefix Expressions" examples.
        (
            "http://a.b.c/1/2.html?param=1",
            ["a.b.c", "b.c"],
            ["/1/2.html?param=1", "/1/2.html", "/", "/1/"],
        ),
        (
            "http://a.b.c.d.e.f.g/1.html",
            ["a.b.c.d.e.f.g", "c.d.e.f.g", "d.e.f.g", "e.f.g", "f.g"],
            ["/1.html", "/"],
        ),
        ("http://1.2.3.4/1/", ["1.2.3.4"], ["/1/", "/"]),
        # google/safebrowsing (Go) and Chromium unit tests.
        (
            "http://a.com/a/b/c/d/e.html?123",
            ["a.com"],
            ["/", "/a/", "/a/b/", "/a/b/c/", "/a/b/c/d/e.html", "/a/b/c/d/e.html?123"],
        ),
        (
            "http://a.b.c/1/2/3/4/5/",
            ["a.b.c", "b.c"],
            ["/1/2/3/4/5/", "/1/2/3/", "/1/2/", "/1/", "/"],
        ),
        ("http://[2001:470:1:18::114]/a/b", ["2001:470:1:18::114"], ["/a/b", "/a/", "/"]),
        ("http://a.b/", ["a.b"], ["/"]),
        ("http://b/", ["b"], ["/"]),
    ],
)
def test_expressions(url: str, hosts: list[str], paths: list[str]) -> None:
    cu = canonicalize_url(url)
    got_hosts = url_host_expressions(cu)
    got_paths = url_path_expressions(cu)
    assert got_hosts[0] == cu.host  # the exact host first
    assert sorted(got_hosts) == sorted(hosts)
    assert sorted(got_paths) == sorted(paths)
    assert len(got_hosts) <= 5 and len(got_paths) <= 6


def test_expressions_full_product_matches_the_v4_example() -> None:
    cu = canonicalize_url("http://a.b.c/1/2.html?param=1")
    got = {h + p for h in url_host_expressions(cu) for p in url_path_expressions(cu)}
    assert got == {
        "a.b.c/1/2.html?param=1",
        "a.b.c/1/2.html",
        "a.b.c/",
        "a.b.c/1/",
        "b.c/1/2.html?param=1",
        "b.c/1/2.html",
        "b.c/",
        "b.c/1/",
    }


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("http://evil.example/mal/", ("evil.example", "evil.example/mal/")),
        ("HTTP://EVIL.example:8080/mal/?a=1#x", ("evil.example", "evil.example/mal/?a=1")),
        ("evil.example", ("evil.example", "evil.example/")),
        ("http://0xd9.0x6b.0xda.0x93/x", ("217.107.218.147", "217.107.218.147/x")),
        ("http://[2001:db8::1]/x", ("2001:db8::1", "2001:db8::1/x")),
        ("http://evil.example/%6Dal/", ("evil.example", "evil.example/mal/")),
    ],
)
def test_url_rule_key(rule: str, expected: tuple[str, str]) -> None:
    assert url_rule_key(rule) == expected


# Found by running the WHATWG URL tests (urltestdata.json) through the canonicalizer.
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # a valid name whose tidy form ends in a number that is no IPv4 address: still a name
        ("http://foo.09..", "http://foo.09/"),
        ("http://example.123../a", "http://example.123/a"),
        ("http://1.2.3.4../", "http://1.2.3.4/"),  # while real numeric forms stay addresses
        ("http://3639551379../", "http://216.239.37.147/"),
        ("http://x.1.2.3../", "http://x.1.2.3/"),  # three dots, still a name (review)
        # a raw byte that is not UTF-8 reaches us as a lone surrogate (mitmproxy decodes with
        # surrogateescape): it is that byte, as its %XX form is
        ("http://example.com/evil\udcff", "http://example.com/evil%FF"),
        ("http://example.com/a?q=\udcfe", "http://example.com/a?q=%FE"),
        # any other lone surrogate is U+FFFD, as the WHATWG parser makes it
        ("http://example.com/\ud800x?\ud800", "http://example.com/%EF%BF%BDx?%EF%BF%BD"),
    ],
)
def test_whatwg_edge_cases(url: str, expected: str) -> None:
    assert canonicalize_url(url).url == expected


def test_host_kind_of_canonical_hosts() -> None:
    assert host_kind("foo.09") == "domain"
    assert host_kind("1.2.3.4") == "ipv4"
    assert host_kind("2001:db8::1") == "ipv6"
    assert canonical_host("foo.09..") == "foo.09"
    assert canonicalize_url("http://x.1.2.3../").host_kind == "domain"
