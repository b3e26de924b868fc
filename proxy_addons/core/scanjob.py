"""One response body's scan: decode it as a browser does, strip it, encode it again.

Pure (bytes in, bytes out), so the strip addon runs it on the event loop and a scan
worker process runs the same code without importing mitmproxy (a worker spawned for
big pages imported it, and the addon with it, at its first scan: ~0.3 s of CPU for
nothing it used; tests/test_house.py checks).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import brotli  # untyped: see [[tool.mypy.overrides]] in pyproject.toml

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

from proxy_addons.core.codings import (
    UndecodableBody,
    decode_body,
    lenient_codings,
    response_codings,
)
from proxy_addons.core.htmlscan import BodyTooLarge, Finding, Scanner


def _gzip(body: bytes) -> bytes:
    out = io.BytesIO()  # (GzipFile, not gzip.compress: the same header, OS byte 255)
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=1) as f:
        f.write(body)
    return out.getvalue()


# The encoders for a stripped body, byte for byte mitmproxy's own (mitmproxy.net.encoding):
# the fastest level of each (the body goes out once), gzip without a timestamp so the
# same page encodes to the same bytes.
ENCODERS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "gzip": _gzip,
    "deflate": lambda body: zlib.compress(body, level=1),  # (zlib-wrapped, checksummed)
    "br": lambda body: bytes(brotli.compress(body, quality=0)),
    "zstd": lambda body: bytes(zstd.compress(body, level=1)),
}


def encode_body(body: bytes, content_encoding: str) -> bytes:
    """Apply the codings of ``content_encoding`` again, in order (none: the body as it is)."""
    for coding in response_codings(content_encoding):
        body = ENCODERS[coding](body)
    return body


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a scan decided: the new raw (encoded) body, or None to leave the response alone."""

    raw: bytes | None
    findings: list[Finding]
    # A new Content-Encoding for ``raw`` (None: keep the header as it is).
    content_encoding: str | None = None


@dataclass(frozen=True, slots=True)
class ScanJob:
    """Everything one scan needs, so it can run on any thread or in a worker process."""

    raw: bytes
    content_encoding: str
    content_type: str | None
    page_url: str
    comment: bool
    remove: bool  # false in monitor mode: report, keep everything
    limit: int

    def run(self, scanner: Scanner) -> Outcome:
        """Scan every reading a browser may render; raises BodyTooLarge or UndecodableBody."""
        known = lenient_codings(self.content_encoding)
        lenient: Outcome | None = None
        if known:
            # Chromium renders these bytes raw, Firefox undoes the codings it knows and
            # skips the rest: a page may hide in either reading.
            try:
                lenient = self._reading(scanner, ", ".join(known))
            except (UndecodableBody, BodyTooLarge):
                lenient = None
            if lenient is not None and lenient.raw is not None:
                return lenient  # stripped, and sent under the known codings alone
        outcome = self._reading(scanner, self.content_encoding)
        if lenient is not None and lenient.findings:  # reported (monitor), not removed
            outcome = replace(outcome, findings=lenient.findings + outcome.findings)
        return outcome

    def _reading(self, scanner: Scanner, codings: str) -> Outcome:
        body = decode_body(self.raw, codings, self.limit)
        if not self.remove:
            found = scanner.scan(body, self.page_url, self.content_type)
            return Outcome(None, [replace(f, removed=False) for f in found])
        new, findings = scanner.strip(body, self.page_url, self.content_type, comment=self.comment)
        if new is body:
            return Outcome(None, findings)
        # Stripped in the lenient reading: say so in the header, so every browser
        # reads the cleaned page the same way.
        header = codings if codings != self.content_encoding else None
        return Outcome(encode_body(new, codings), findings, header)


__all__ = ["ENCODERS", "Outcome", "ScanJob", "UndecodableBody", "encode_body"]
