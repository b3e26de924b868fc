"""One response body's scan: decode it as a browser does, strip it, encode it again.

Pure (bytes in, bytes out), so the strip addon runs it on the event loop and a scan
worker process runs the same code without importing mitmproxy (a worker spawned for
big pages imported it, and the addon with it, at its first scan: ~0.3 s of CPU for
nothing it used; tests/test_house.py checks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from proxy_addons.core.codings import (
    ENCODERS,
    UndecodableBody,
    decode_body,
    encode_body,
    lenient_codings,
)
from proxy_addons.core.htmlscan import BodyTooLarge, Finding, Scanner


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
