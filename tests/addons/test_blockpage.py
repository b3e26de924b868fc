"""Block page rendering: kinds, fields, escaping, no scripts or external resources."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from proxy_addons.addons.blockpage import (
    HEADER_NAME,
    MAX_SHOWN_URL,
    BlockInfo,
    ProceedForm,
    block_header,
    choose_kind,
    header_value,
    new_request_id,
    printable,
    render,
    render_html,
    render_proceed_page,
)
from proxy_addons.core.engine import Action, Verdict

EVIL = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def info(**kw: object) -> BlockInfo:
    base: dict[str, object] = dict(
        url="http://evil.test/dot.php",
        stage="request",
        request_id="0123456789ab",
        time=1087948800.0,
        host="evil.test",
        list="builtin",
        rule="evil.test",
        line=12,
        kind="domain",
        category="malware",
        admin_contact="it@example.org",
    )
    base.update(kw)
    return BlockInfo(**base)  # type: ignore[arg-type]


KIND_CASES = [
    ("document", None, "html"),
    ("Document", "application/json", "html"),
    ("script", "*/*", "empty"),
    ("image", "image/avif,image/webp", "empty"),
    ("iframe", "text/html", "empty"),
    ("empty", "application/json", "empty"),
    (None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),
    (None, "application/json", "json"),
    (None, "application/problem+json", "json"),
    (None, "application/json, text/html;q=0.5", "json"),
    (None, "text/html;q=0.9, application/json;q=0.9", "html"),
    (None, "text/html;q=0", "text"),
    (None, "*/*", "text"),
    (None, None, "text"),
    (None, "x" * 100_000, "text"),
]


@pytest.mark.parametrize(("dest", "accept", "kind"), KIND_CASES)
def test_choose_kind(dest: str | None, accept: str | None, kind: str) -> None:
    assert choose_kind(dest, accept) == kind


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    return c


def test_html_page_has_required_fields() -> None:
    page = render_html(info(report_url="https://example.org/fp"))
    text = " ".join(parse(page).text)
    for needle in (
        "http://evil.test/dot.php",
        "builtin",
        "evil.test",
        "malware",
        "0123456789ab",
        "2004-06-23 00:00:00 UTC",
        "suspected malicious",
        "mistake",
        "it@example.org",
    ):
        assert needle in text, needle
    assert 'name="viewport"' in page
    assert 'href="https://example.org/fp"' in page
    assert 'href="mailto:it@example.org"' in page


def test_html_page_has_no_scripts_or_external_resources() -> None:
    c = parse(render_html(info()))
    tags = {t for t, _ in c.tags}
    assert not tags & {"script", "img", "link", "iframe", "object", "embed", "base"}
    for _, attrs in c.tags:
        assert not any(k.startswith("on") for k in attrs)
        assert "src" not in attrs


@pytest.mark.parametrize("field", ["url", "rule", "list", "category", "admin_contact", "host"])
def test_html_escapes_every_field(field: str) -> None:
    page = render_html(info(**{field: EVIL}))
    c = parse(page)
    assert not any(t in ("script", "img") for t, _ in c.tags)
    assert EVIL in " ".join(c.text) or field == "host"
    assert "<script>" not in page


def test_html_attribute_escaping_in_links_and_form() -> None:
    proceed = ProceedForm(
        "http://evil.test/.well-known/jectguard/proceed",
        {"return": EVIL, "sig": 'a"b'},
        15,
        "evil.test",
    )
    page = render_html(info(admin_contact='https://x.test/"onmouseover="alert(1)', proceed=proceed))
    c = parse(page)
    for _, attrs in c.tags:
        assert not any(k.startswith("on") for k in attrs)
    values = [a.get("value") for t, a in c.tags if t == "input"]
    assert EVIL in values and 'a"b' in values


def test_long_urls_shortened() -> None:
    v = Verdict(Action.BLOCK, "x", host="evil.test")
    bi = BlockInfo.from_verdict(v, url="h" * 100_000, stage="request", request_id="r")
    assert len(bi.url) == MAX_SHOWN_URL + 1 and bi.url.endswith("…")


def test_render_kinds_headers() -> None:
    for kind, ctype in (
        ("html", "text/html"),
        ("json", "application/json"),
        ("text", "text/plain"),
        ("empty", "text/plain"),
    ):
        r = render(info(), kind)  # type: ignore[arg-type]
        h = dict(r.headers)
        assert r.status == 403
        assert h["Cache-Control"] == "no-store"
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Content-Type"].startswith(ctype)
        assert "id=0123456789ab" in h[HEADER_NAME]
        if kind == "empty":
            assert r.body == b""
    csp = dict(render(info(), "html").headers)["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "form-action 'none'" in csp


def test_json_body() -> None:
    doc = json.loads(render(info(url=EVIL), "json").body)
    assert doc["url"] == EVIL and doc["list"] == "builtin" and doc["rule"] == "evil.test"
    assert doc["category"] == "malware" and doc["request_id"] == "0123456789ab"
    assert doc["reason"] == "suspected malicious" and doc["admin_contact"] == "it@example.org"


def test_text_body_has_no_control_characters() -> None:
    body = render(info(url="http://evil.test/\x1b[2J\r\nX-Evil: 1"), "text").body.decode()
    assert "\x1b" not in body and "\r" not in body
    assert "List: builtin" in body


def test_header_values_are_one_safe_line() -> None:
    v = block_header(info(rule="a\r\nSet-Cookie: x=1 ü" + "z" * 500))
    assert re.fullmatch(r"[\x20-\x7e]*", v) and len(v) <= 200
    assert header_value("é\n") == "??"


def test_printable() -> None:
    assert printable("a\x00b\u2028") == "a\\x00b\\x2028"


def test_request_ids_are_unique() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)


def test_refusal_without_a_list_names_its_reason_and_status() -> None:
    i = info(
        list=None,
        rule=None,
        category=None,
        status=400,
        why="the Host header cannot be read: not a valid URL",
    )
    for kind in ("html", "text", "json"):
        r = render(i, kind)  # type: ignore[arg-type]
        assert r.status == 400
        assert b"the Host header cannot be read" in r.body
        assert b"suspected malicious" not in r.body
    assert json.loads(render(i, "json").body)["reason"].startswith("refused: ")


def test_proceed_page_is_unreadable_by_other_origins_and_escaped() -> None:
    form = ProceedForm("/", {"host": "evil.test", "sig": 'a"b', "return": EVIL}, 15, "evil.test")
    r = render_proceed_page(form, "http://evil.test/x", "http://evil.test")
    h = dict(r.headers)
    assert r.status == 200 and h["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert "form-action 'self' http://evil.test" in h["Content-Security-Policy"]
    assert h["Cross-Origin-Resource-Policy"] == "same-origin"
    assert not any(k.lower().startswith("access-control") for k in h)
    page = r.body.decode()
    c = parse(page)
    assert not any(t in ("script", "img") for t, _ in c.tags)
    assert 'method="post" action="/"' in page
