"""The two stances of core/codings.py on the same bytes: a feed body counts only if its
stream ended; a response body yields what a browser renders of it, bounded.

A truncated list is a different list (refused); a truncated page is still rendered, and
run, up to the cut (so the scanner must see that much, and never more than its limit).
"""

from __future__ import annotations

import random

import pytest

from proxy_addons.core.codings import (
    CodingError,
    UndecodableBody,
    decode_all,
    decode_body,
    decodes_over,
    response_codings,
)
from proxy_addons.core.htmlscan import BodyTooLarge
from tests.feedserver import encode

CODINGS = ["gzip", "deflate", "raw-deflate", "br", "zstd"]
# Not compressible to nothing, and several zstd blocks long (zstd yields whole blocks):
# a cut two thirds in leaves bytes to render in every coding.
PAGE = (
    b"<html><body>"
    + b"".join(
        b"<p>%d %x</p><script src=//cdn%d.test/a.js></script>\n"
        % (i, random.Random(i).getrandbits(64), i)
        for i in range(8000)
    )
    + b"</body></html>"
)


def header(coding: str) -> str:
    return "deflate" if coding == "raw-deflate" else coding


@pytest.mark.parametrize("coding", CODINGS)
def test_whole_bodies_decode_alike_both_ways(coding: str) -> None:
    raw = encode(PAGE, coding)
    assert decode_all(raw, header(coding)) == PAGE
    assert decode_body(raw, header(coding), len(PAGE)) == PAGE


@pytest.mark.parametrize("coding", CODINGS)
def test_a_truncated_stream_is_refused_as_a_feed_and_rendered_as_a_page(coding: str) -> None:
    raw = encode(PAGE, coding)
    cut = raw[: len(raw) * 2 // 3]
    with pytest.raises(CodingError):
        decode_all(cut, header(coding))
    shown = decode_body(cut, header(coding), len(PAGE))
    assert shown and PAGE.startswith(shown) and len(shown) < len(PAGE)


@pytest.mark.parametrize("coding", CODINGS)
def test_a_response_never_decodes_past_its_limit(coding: str) -> None:
    raw = encode(PAGE, coding)
    limit = len(PAGE) // 10
    with pytest.raises(BodyTooLarge):
        decode_body(raw, header(coding), limit)
    assert decodes_over(raw, header(coding), limit)
    assert not decodes_over(raw, header(coding), len(PAGE))


def test_garbage_is_undecodable_as_a_page_and_corrupt_as_a_feed() -> None:
    for coding in ("gzip", "br", "zstd"):
        with pytest.raises(UndecodableBody):
            decode_body(b"\xff" * 64, coding, 1000)
        with pytest.raises(CodingError):
            decode_all(b"\xff" * 64, coding)


def test_an_unknown_token_means_the_raw_bytes_to_a_browser_and_an_error_to_a_feed() -> None:
    assert response_codings("gzip, x-unknown") == ()
    assert decode_body(b"<html>", "x-unknown", 100) == b"<html>"
    with pytest.raises(CodingError):
        decode_all(b"<html>", "x-unknown")
