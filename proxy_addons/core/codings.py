"""Strict streaming decoders for a feed's ``Content-Encoding``: a body counts only if every
coding proves that it ended.

A feed is a list: a truncated list is a *different* list (every entry after the
cut is lost, and the last line is cut into another host name). So, unlike the
browser-like decoder in ``addons/strip.py`` (which salvages what it can), these
decoders raise :class:`CodingError` unless each stream reached its end marker
and, where the format has one, its checksum matched:

- ``gzip``/``x-gzip``: member after member, each ending with its CRC-32 and
  length trailer (zlib checks both before it reports the end); bytes after a
  member must be another complete member;
- ``deflate``: the zlib wrapper (Adler-32 checked) or, as some servers send it,
  raw deflate (no checksum exists in that format: its final block must arrive,
  and the HTTP transfer must prove its own length);
- ``br``: the stream's last meta-block (brotli has no checksum);
- ``zstd``: frame after frame, each complete (its content checksum is checked
  when the frame carries one).

Pure: bytes in, bytes out. Output comes in pieces of at most ``piece`` bytes, so
a small compressed chunk never expands into one huge buffer (a zip bomb is cut
by the caller's size cap as it grows).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Final, Protocol

import brotli  # untyped: see [[tool.mypy.overrides]] in pyproject.toml

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

# Decoded bytes handed out per step (bounded memory per chunk of input).
PIECE: Final = 256 * 1024
# A feed never needs codings stacked deeper than this (``gzip, br`` is already unusual).
MAX_CODINGS: Final = 2
# What we can verify (gzip, x-gzip, deflate, br, zstd), and so may ask for.
ACCEPT_ENCODING: Final = "gzip, deflate, br, zstd"


class CodingError(ValueError):
    """A content coding is unknown, corrupt, or its stream did not end."""


class Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode a chunk of input; the decoded pieces."""
        ...

    def finish(self) -> None:
        """Raise CodingError unless the stream ended properly."""
        ...


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> None:
        pass


def _drain_zlib(d: Any, data: bytes, piece: int) -> Iterator[bytes]:
    """Decompress with bounded output; a capped step may leave input or output pending."""
    out = d.decompress(data, piece)
    while True:
        if out:
            yield out
        if d.eof or (len(out) < piece and not d.unconsumed_tail):
            return
        out = d.decompress(d.unconsumed_tail, piece)


def _drain_zstd(d: Any, data: bytes, piece: int) -> Iterator[bytes]:
    out = d.decompress(data, piece)
    while True:
        if out:
            yield out
        if d.eof or d.needs_input:
            return
        out = d.decompress(b"", piece)  # more output is pending


class _Members:
    """gzip members or zstd frames, one after another; each must end (and check) properly."""

    def __init__(self, coding: str, piece: int) -> None:
        self.coding = coding
        self.piece = piece
        self.d: Any = None  # the member being decoded; None between members
        self.members = 0

    def _new(self) -> Any:
        if self.coding == "zstd":
            return zstd.ZstdDecompressor()
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                if self.d is None:
                    self.d = self._new()
                    self.members += 1
                drain = _drain_zstd if self.coding == "zstd" else _drain_zlib
                yield from drain(self.d, data, self.piece)
                if not self.d.eof:
                    return
                data = self.d.unused_data  # the next member starts here
                self.d = None
        except (zlib.error, zstd.ZstdError) as exc:
            raise CodingError(f"corrupt {self.coding} stream: {exc}") from None

    def finish(self) -> None:
        if self.d is not None:
            raise CodingError(f"{self.coding} stream cut short (no end of stream)")
        if not self.members:
            raise CodingError(f"empty {self.coding} body (no stream at all)")


class _Deflate:
    """HTTP 'deflate': zlib-wrapped (checksummed) or raw; one stream, nothing after it."""

    def __init__(self, piece: int) -> None:
        self.piece = piece
        self.d: Any = None
        self.head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.d is None:
            self.head += data
            if len(self.head) < 2:
                return
            cmf, flg = self.head[0], self.head[1]
            wrapped = cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0
            self.d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self.head = self.head, b""
        try:
            if self.d.eof:
                if data:
                    raise CodingError("bytes after the end of the deflate stream")
                return
            yield from _drain_zlib(self.d, data, self.piece)
        except zlib.error as exc:
            raise CodingError(f"corrupt deflate stream: {exc}") from None
        if self.d.eof and self.d.unused_data:
            raise CodingError("bytes after the end of the deflate stream")

    def finish(self) -> None:
        if self.d is None or not self.d.eof:
            raise CodingError("deflate stream cut short (no final block)")


class _Brotli:
    def __init__(self, piece: int) -> None:
        self.piece = piece
        self.d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        try:
            if self.d.is_finished():
                raise CodingError("bytes after the end of the br stream")
            out = self.d.process(data, output_buffer_limit=self.piece)
            # Output comes a bounded piece at a time; the rest with empty calls.
            while out:
                yield out
                if self.d.is_finished():
                    return
                out = self.d.process(b"", output_buffer_limit=self.piece)
        except brotli.error as exc:
            raise CodingError(f"corrupt br stream: {exc}") from None

    def finish(self) -> None:
        if not self.d.is_finished():
            raise CodingError("br stream cut short (no last meta-block)")


class _Chain:
    """Codings applied in order (``gzip, br``), undone in reverse."""

    def __init__(self, decoders: list[Decoder]) -> None:
        self.decoders = decoders

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def _through(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self.decoders):
            if data:
                yield data
            return
        for piece in self.decoders[i].feed(data):
            yield from self._through(i + 1, piece)

    def finish(self) -> None:
        # Every decoder hands out its output as it goes, so each can be checked in turn.
        for d in self.decoders:
            d.finish()


def content_codings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding header, in the order they were applied."""
    if not header:
        return []
    tokens = [t.strip().lower() for t in header.split(",")]
    return [t for t in tokens if t and t != "identity"]


def decoder_for(header: str | None, *, piece: int = PIECE) -> Decoder:
    """A strict decoder for a Content-Encoding header; CodingError if one is unknown."""
    codings = content_codings(header)
    if len(codings) > MAX_CODINGS:
        raise CodingError(
            f"{len(codings)} stacked content codings ({header!r}); a feed needs at most {MAX_CODINGS}"
        )
    decoders: list[Decoder] = []
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            decoders.append(_Members("gzip", piece))
        elif coding == "zstd":
            decoders.append(_Members("zstd", piece))
        elif coding == "deflate":
            decoders.append(_Deflate(piece))
        elif coding == "br":
            decoders.append(_Brotli(piece))
        else:
            raise CodingError(f"unsupported content coding {coding!r}")
    if not decoders:
        return _Identity()
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)


def decode_all(raw: bytes, header: str | None, *, piece: int = PIECE) -> bytes:
    """Decode a whole body strictly (tests and small bodies)."""
    d = decoder_for(header, piece=piece)
    out = b"".join(d.feed(raw))
    d.finish()
    return out
