"""Readers of the names a Host, Location or Refresh header carries."""

from __future__ import annotations

import pytest

from proxy_addons.core.targets import join_target, refresh_target, routed_name


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("evil.example:abc", "evil.example"),
        ("EVIL.example.:-1", "evil.example"),
        ("evil.example:80:80", "evil.example"),
        ("evil.example:", "evil.example"),
        ("[::1]:x", "[::1]"),
        ("[::1", ""),
        (" Evil.Example ", "evil.example"),
    ],
)
def test_routed_name_as_nginx_host(value: str, name: str) -> None:
    assert routed_name(value) == name


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("0; url=http://a.example/", "http://a.example/"),
        ("0;URL=http://a.example/", "http://a.example/"),
        ("5, 'http://a.example/x'", "http://a.example/x"),
        ('0; url="/p q"', "/p q"),
        ("1.5 http://a.example/", "http://a.example/"),
        (".5;url=/x", "/x"),
        ("0;   url =  /x", "/x"),
        ("0; urlx", "urlx"),
        ("0", None),
        ("", None),
        ("x; url=/a", None),
        ("0x; url=/a", None),
    ],
)
def test_refresh_target_as_html_reads_it(value: str, url: str | None) -> None:
    assert refresh_target(value) == url


@pytest.mark.parametrize(
    ("target", "joined"),
    [
        ("\\\\evil.example/x", "http://evil.example/x"),
        ("/\\evil.example/x", "http://evil.example/x"),
        ("\t//evil.example/x", "http://evil.example/x"),
        ("/bad/y", "http://good.example/bad/y"),
        ("https://EVIL.example./", "https://evil.example./"),
        ("/\udcff/x", "http://good.example/%FF/x"),
    ],
)
def test_join_target_as_a_browser_joins(target: str, joined: str) -> None:
    assert join_target("http://good.example/start", target) == joined


def test_unparseable_target_is_not_followed() -> None:
    assert join_target("http://good.example/", "http://[bad/") is None
