"""The scan of one body (core/scanjob.py): the same encoders as mitmproxy's, stacked
codings undone and applied again, and the job a worker process runs."""

from __future__ import annotations

import pytest
from mitmproxy.net import encoding as mitm_encoding

from proxy_addons.core.codings import decode_body
from proxy_addons.core.htmlscan import Scanner
from proxy_addons.core.scanjob import ENCODERS, ScanJob, encode_body

from .test_htmlscan import SIGNATURES, blocker

PAGE = b"<!doctype html><title>t</title>" + b"<p>text, text and text</p>\n" * 200


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_the_encoders_are_mitmproxys(coding: str) -> None:
    # Moved out of the addon so a worker needs no mitmproxy: same bytes on the wire.
    assert ENCODERS[coding](PAGE) == bytes(mitm_encoding.custom_encode[coding](PAGE))


@pytest.mark.parametrize(
    ("header", "encoded"),
    [("gzip", True), ("x-gzip", True), ("gzip, br", True), ("deflate, zstd", True),
     ("", False), ("identity", False), ("gzip, x-unknown", False)],
)  # fmt: skip
def test_encode_body_applies_what_decode_body_undoes(header: str, encoded: bool) -> None:
    raw = encode_body(PAGE, header)
    assert (raw != PAGE) is encoded
    assert decode_body(raw, header, 10**7) == PAGE


def test_a_scan_job_strips_and_encodes_again() -> None:
    scanner = Scanner(blocker({"evil.test"}), SIGNATURES)  # type: ignore[arg-type]
    page = PAGE + b"<script src=//evil.test/x.js></script><p>kept</p>"
    job = ScanJob(encode_body(page, "gzip, br"), "gzip, br", "text/html", "http://a.test/",
                  comment=False, remove=True, limit=10**7)  # fmt: skip
    outcome = job.run(scanner)
    assert outcome.raw is not None and outcome.content_encoding is None
    assert decode_body(outcome.raw, "gzip, br", 10**7) == PAGE + b"<p>kept</p>"
    assert [f.url for f in outcome.findings] == ["http://evil.test/x.js"]
