"""The strict feed decoders: a stream counts only if it ended (and checked) properly."""

from __future__ import annotations

import random

import pytest

from proxy_addons.core.codings import CodingError, content_codings, decode_all, decoder_for
from tests.feedserver import encode

CODINGS = ["gzip", "deflate", "raw-deflate", "br", "zstd"]
BODY = (
    b"".join(b"host%d.example\n" % i for i in range(300))
    + b"login.microsoftonline.com.phish-kit.example\n"
)


def header(coding: str) -> str:
    return "deflate" if coding == "raw-deflate" else coding


def feed_in_pieces(raw: bytes, coding: str, rng: random.Random) -> bytes:
    d = decoder_for(header(coding), piece=97)
    out, i = [], 0
    while i < len(raw):
        n = rng.randint(1, 300)
        out.extend(d.feed(raw[i : i + n]))
        i += n
    d.finish()
    return b"".join(out)


@pytest.mark.parametrize("coding", CODINGS)
def test_whole_streams_decode_however_they_are_split(coding: str) -> None:
    raw = encode(BODY, coding)
    rng = random.Random(coding)
    for _ in range(20):
        assert feed_in_pieces(raw, coding, rng) == BODY


@pytest.mark.parametrize("coding", CODINGS)
def test_every_cut_fails(coding: str) -> None:
    raw = encode(BODY, coding)
    for cut in range(len(raw)):
        with pytest.raises(CodingError):
            decode_all(raw[:cut], header(coding))


@pytest.mark.parametrize("coding", CODINGS)
def test_bytes_after_the_end_fail(coding: str) -> None:
    raw = encode(BODY, coding)
    for tail in (b"\0", b"\0" * 8, b"garbage", raw[:5]):
        with pytest.raises(CodingError):
            decode_all(raw + tail, header(coding))


def test_gzip_members_follow_each_other() -> None:
    raw = encode(BODY[:100], "gzip") + encode(BODY[100:], "gzip")
    assert decode_all(raw, "gzip") == BODY
    with pytest.raises(CodingError):
        decode_all(raw[:-1], "gzip")


def test_checksums_are_checked() -> None:
    for coding, at in (("gzip", -6), ("deflate", -2)):
        bad = bytearray(encode(BODY, coding))
        bad[at] ^= 0x55
        with pytest.raises(CodingError):
            decode_all(bytes(bad), coding)


def test_stacked_and_unknown_codings() -> None:
    two = encode(encode(BODY, "gzip"), "br")
    assert decode_all(two, "gzip, br") == BODY
    assert decode_all(BODY, "identity") == BODY and decode_all(BODY, None) == BODY
    assert content_codings(" GZIP , identity,br ") == ["gzip", "br"]
    with pytest.raises(CodingError, match="unsupported"):
        decoder_for("compress")
    with pytest.raises(CodingError, match="stacked"):
        decoder_for("gzip, gzip, gzip")
    with pytest.raises(CodingError, match="empty"):
        decode_all(b"", "gzip")


def test_output_comes_in_bounded_pieces() -> None:
    bomb = encode(b"\0" * 5_000_000, "gzip")
    d = decoder_for("gzip", piece=64 * 1024)
    sizes = [len(p) for p in d.feed(bomb)]
    d.finish()
    assert sum(sizes) == 5_000_000 and max(sizes) <= 64 * 1024
