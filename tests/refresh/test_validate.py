"""The never-break/never-poison checks a refreshed feed must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_addons.lists.sources import DEFAULT_SOURCES, load_sources
from proxy_addons.refresh.validate import Canaries, looks_like_html, validate_body

FEEDS = Path(__file__).parent.parent / "data" / "feeds"


def _domains(n: int, prefix: str = "bad") -> bytes:
    return "".join(f"{prefix}{i}.example\n" for i in range(n)).encode()


def test_accepts_a_normal_list() -> None:
    v = validate_body(_domains(100), fmt="domains", previous_total=90)
    assert v.accepted and v.reason is None
    assert v.entries == {"domain": 100} and v.total == 100


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"<!DOCTYPE html>\n<html><body>Please log in to the Wi-Fi</body></html>", None),
        (b"\xef\xbb\xbf  \n<html lang=en><head><title>502 Bad Gateway</title>", None),
        (b"\n  <head><title>Captive portal</title></head>", None),
        (b"evil.example\n", "text/html; charset=utf-8"),
    ],
)
def test_html_page_is_held_back(body: bytes, ctype: str | None) -> None:
    v = validate_body(body, fmt="auto", content_type=ctype)
    assert not v.accepted and v.reason is not None and "HTML" in v.reason


def test_plain_text_is_not_html() -> None:
    assert not looks_like_html(
        b"# list <html> mentioned far below\n" + b"a.example\n" * 200, "text/plain"
    )


def test_mostly_garbage_is_held_back() -> None:
    body = b"a.example\n" + b"foo bar baz\n" * 50
    v = validate_body(body, fmt="domains")
    assert not v.accepted and v.reason.startswith("format:")


def test_implausible_entries_are_rejected_not_applied() -> None:
    v = validate_body(_domains(30) + b"106\n", fmt="domains")
    assert v.accepted and v.rejected == 1
    assert all(r.key != "106" for r in v.parsed.rules)


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"com\n", "domains"),
        (b"co.uk\n", "domains"),
        (b"0.0.0.0 com\n", "hosts"),
        (b"0.0.0.0/0\n", "cidr"),
        (b"::/0\n", "cidr"),
        (b"10.0.0.0/4\n", "cidr"),
    ],
)
def test_catastrophic_rules_hold_the_list_back(body: bytes, fmt: str) -> None:
    filler = _domains(40) if fmt in ("domains", "hosts") else b"198.51.100.0/24\n" * 3
    if fmt == "hosts":
        filler = b"".join(b"0.0.0.0 " + line + b"\n" for line in _domains(40).splitlines())
    v = validate_body(filler + body, fmt=fmt)
    assert not v.accepted and v.reason.startswith("poison guard:"), v.reason


def test_private_suffix_is_dropped_not_held_back() -> None:
    # duckdns.org is a private public suffix: the compile guard drops the rule,
    # but real threat feeds list it and that must not freeze the whole feed.
    v = validate_body(_domains(40) + b"duckdns.org\n", fmt="domains")
    assert v.accepted and v.refused == 1


@pytest.mark.parametrize(
    ("line", "fmt"),
    [
        ("google.com", "domains"),
        ("=www.google.com", "domains"),
        ("abuse.ch", "domains"),  # parent of the feed host urlhaus.abuse.ch
        ("mitm.it", "domains"),
        ("http://github.com/", "urls"),  # the host's root: blocks all of it
        ("203.0.113.5", "domains"),
    ],
)
def test_canaries_hold_back(line: str, fmt: str) -> None:
    canaries = Canaries.build(
        ["google.com", "www.google.com", "github.com", "203.0.113.5"],
        ["https://urlhaus.abuse.ch/downloads/hostfile/"],
    )
    body = (
        "".join(f"http://bad{i}.example/x\n" for i in range(40))
        if fmt == "urls"
        else _domains(40).decode()
    )
    v = validate_body((body + line + "\n").encode(), fmt=fmt, canaries=canaries)
    assert not v.accepted and v.reason.startswith("canary:"), v.reason


def test_url_rules_on_canary_hosts_are_legitimate() -> None:
    canaries = Canaries.build(["github.com", "drive.google.com"])
    body = b"http://github.com/evil/repo/raw/payload.exe\nhttps://drive.google.com/uc?id=abc\n" * 1
    body += b"".join(b"http://bad%d.example/x\n" % i for i in range(20))
    v = validate_body(body, fmt="urls", canaries=canaries)
    assert v.accepted, v.reason


def test_subdomain_of_canary_is_fine() -> None:
    # Blocking evil.github.com does not block github.com.
    v = validate_body(
        _domains(20) + b"evil.google.com\n", fmt="domains", canaries=Canaries.build(["google.com"])
    )
    assert v.accepted


@pytest.mark.parametrize(
    ("previous", "now", "held"),
    [
        (1000, 600, False),
        (1000, 499, True),
        (1000, 0, True),
        (10, 0, True),
        (10, 3, False),  # small lists swing; only "empty" counts
        (None, 0, False),  # nothing to lose
    ],
)
def test_shrink_guard(previous: int | None, now: int, held: bool) -> None:
    v = validate_body(_domains(now), fmt="domains", previous_total=previous)
    assert v.accepted is not held
    if held:
        assert "--force" in v.reason
        forced = validate_body(_domains(now), fmt="domains", previous_total=previous, force=True)
        assert forced.accepted and forced.forced


def test_force_does_not_override_poison() -> None:
    v = validate_body(_domains(10) + b"com\n", fmt="domains", previous_total=1000, force=True)
    assert not v.accepted


def test_shipped_samples_pass_with_shipped_canaries() -> None:
    cfg = load_sources(DEFAULT_SOURCES)
    canaries = Canaries.build(cfg.never_block, [s.url for s in cfg.sources])
    checked = 0
    for spec in cfg.sources:
        if spec.url is None:
            continue
        samples = sorted(FEEDS.glob(f"{spec.name.split('_')[0]}*"))
        for sample in samples:
            v = validate_body(sample.read_bytes(), fmt="auto", name=sample.name, canaries=canaries)
            assert v.accepted, (sample.name, v.reason)
            checked += 1
    assert checked >= 5
