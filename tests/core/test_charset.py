"""Charset decisions and HTML sniffing, the obvious cases browsers agree on."""

from __future__ import annotations

import pytest

from proxy_addons.core.charset import (
    Charset,
    content_type_charset,
    detect_charset,
    extract_mime_type,
    is_html,
    normalize_label,
    prescan_meta,
    sniffs_as_html,
)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (
            b"\xef\xbb\xbf<meta charset=windows-1251>",
            "text/html; charset=koi8-r",
            Charset("utf-8", "bom", 3),
        ),
        (b"\xff\xfe<\x00p\x00", "text/html; charset=utf-8", Charset("utf-16le", "bom", 2)),
        (b"\xfe\xff\x00<\x00p", None, Charset("utf-16be", "bom", 2)),
        (b"<meta charset=windows-1251>", "text/html; charset=KOI8-R", Charset("koi8-r", "header")),
        (
            b"<meta charset=windows-1251>",
            'text/html; charset="Shift_JIS"',
            Charset("cp932", "header"),
        ),
        (b"<meta charset=windows-1251>", "text/html", Charset("cp1251", "meta")),
        (b"<meta charset=windows-1251>", "text/html; charset=bogus", Charset("cp1251", "meta")),
        (
            b"<meta http-equiv='Content-Type' content='text/html; charset=euc-jp'>",
            None,
            Charset("euc_jp", "meta"),
        ),
        (b"<meta charset=utf-16le>", None, Charset("utf-8", "meta")),
        (b"<meta charset=iso-8859-1>", None, Charset("windows-1252", "meta")),
        (b"<!-- <meta charset=koi8-r> --><meta charset=gbk>", None, Charset("gbk", "meta")),
        (
            b"<p title='<meta charset=koi8-r>'><meta charset=big5>",
            None,
            Charset("big5hkscs", "meta"),
        ),
        (b"<p>caf\xc3\xa9</p>", None, Charset("utf-8", "fallback")),
        (b"<p>caf\xe9 au lait</p>", None, Charset("windows-1252", "fallback")),
        (b"<p>plain ascii</p>", None, Charset("utf-8", "fallback")),
    ],
)
def test_detect_charset(body: bytes, content_type: str | None, expected: Charset) -> None:
    assert detect_charset(body, content_type) == expected


def test_meta_prescan_stops_at_1024_bytes() -> None:
    assert prescan_meta(b" " * 1020 + b"<meta charset=koi8-r>") is None
    assert prescan_meta(b" " * 900 + b"<meta charset=koi8-r>") == "koi8-r"


def test_labels() -> None:
    assert normalize_label(" UTF8 ") == "utf-8"
    assert normalize_label("latin1") == "windows-1252"
    assert normalize_label("base64") is None
    assert normalize_label("rot13") is None
    assert normalize_label("no-such-thing") is None
    assert normalize_label("utf-7") is None
    assert content_type_charset("text/html") is None
    assert content_type_charset("text/html;charset='windows-1251'") == "cp1251"


@pytest.mark.parametrize(
    ("body", "html"),
    [
        (b"<!DOCTYPE html><p>", True),
        (b" \t\r\n<!doctype HTML>", True),
        (b"<html>", True),
        (b"<HEAD>", True),
        (b"<script src=x>", True),
        (b"<iframe src=x>", True),
        (b"<body>", True),
        (b"<!-- c -->", True),
        (b"<p>", True),
        (b"<a href=x>", True),
        (b"<br>", True),
        (b"<htmlx>", False),
        (b"<?xml version='1.0'?><html>", False),
        (b"hello <html>", False),
        (b'{"a": 1}', False),
        (b"\xef\xbb\xbf<html>", True),
        (b"\xff\xfe" + "<html>".encode("utf-16-le"), True),
    ],
)
def test_sniffs_as_html(body: bytes, html: bool) -> None:
    assert sniffs_as_html(body) is html


def test_is_html_by_content_type() -> None:
    assert is_html(b"not html at all", "text/html; charset=utf-8")
    assert is_html(b"<html>", None)
    assert is_html(b"<html>", "text/plain")
    assert not is_html(b"hello", None)
    assert not is_html(b"<html>", "application/json")
    assert not is_html(b"<html>", "image/svg+xml")


# Fetch, "extract a MIME type", the examples of the spec (repeated fields arrive
# joined with ", ", as HTTP allows and mitmproxy's Headers.get does).
@pytest.mark.parametrize(
    ("value", "essence", "charset"),
    [
        ("text/plain;charset=gbk, text/html", "text/html", None),
        ("text/html;charset=gbk;a=b, text/html;x=y", "text/html", "gbk"),
        ("text/html;charset=gbk, x/x, text/html;x=y", "text/html", None),
        ("text/html, cannot-parse", "text/html", None),
        ("text/html, */*", "text/html", None),
        ("text/html, ", "text/html", None),
        # the latest charset of the run, as Chromium takes it (Fetch's text says gbk)
        ("text/html;charset=gbk, text/html;charset=utf-8, text/html", "text/html", "utf-8"),
        ("text/html;charset=gbk, text/html;charset=utf-8", "text/html", "utf-8"),
        # and the single-value cases around them
        ('Text/HTML ; Charset="Shift_JIS"', "text/html", "Shift_JIS"),
        ('text/html;charset="a,b", image/png', "image/png", None),
        ('text/html;x="1,2";charset=koi8-r', "text/html", "koi8-r"),
        ("text/html;charset=", "text/html", None),
        ("text / html", "", None),
        ("*/*", "", None),
        ("nonsense", "", None),
        ("", "", None),
    ],
)
def test_extract_mime_type(value: str, essence: str, charset: str | None) -> None:
    assert extract_mime_type(value) == (essence, charset)


def test_is_html_takes_the_type_a_browser_takes() -> None:
    assert is_html(b"hello", "image/png, text/html")
    assert not is_html(b"<html>", "text/html, image/png")
    assert is_html(b"<html>", "text/html foo")  # unparseable: sniffed, as a browser does
    assert content_type_charset("text/html;charset=gbk, text/html") == "gbk"
    assert content_type_charset("text/html;charset=gbk, image/png") is None
