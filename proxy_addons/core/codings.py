"""Strict streaming decoders for a feed's ``Content-Encoding``: a body counts only if every
coding proves that it ended.

A feed is a list: a truncated list is a *different* list (every entry after the
cut is lost, and the last line is cut into another host name). So, unlike the
browser-like response decoder below (:func:`decode_body`, which salvages what it can), these
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
by the caller's size cap as it grows). A stripped response body is encoded again
here too (:func:`encode_body`), with mitmproxy's own codecs and levels.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import brotli  # untyped: see [[tool.mypy.overrides]] in pyproject.toml

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]

from proxy_addons.core.errors import JectguardError

if TYPE_CHECKING:
    # The scanner's own error for a body over its limit; imported where raised, so the
    # refresher (which decodes feeds here) does not load the HTML scanner.
    from proxy_addons.core.htmlscan import BodyTooLarge

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


# -- response bodies: as a browser decodes them ------------------------------------
#
# The opposite stance to the feed decoders above: a browser renders (and runs) whatever
# a damaged or truncated body yields before the damage, so the scanner must see that
# much too. Used by the strip addon, its scan workers and the campaign worker: here in
# the pure core, so a worker process decodes without importing mitmproxy.
#
# The two stances share this module, not their decoders: each difference is the point
# of one of them (checksums checked or ignored as browsers ignore them, every gzip
# member or the first, a cut stream refused or read up to the damage a slice at a
# time), so one decoder per coding would carry a flag at each of those steps; each
# side is pinned by its own tests and both by tests/core/test_codings_response.py.

# Content codings a browser undoes; any other token (identity, unknown) makes it render
# the raw bytes, as Chromium does (SetUpSourceStream: "pass through raw response body").
COMPRESSIONS: Final = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
# Compressed input is fed this much at a time, so a corrupt stream still yields what
# precedes the damage (a browser has rendered, and run, that much).
_DECODE_CHUNK: Final = 64 * 1024
_SMALL_CHUNK: Final = 4096
_SALVAGE_CHUNK: Final = 64
_MAX_ZSTD_FRAMES: Final = 1024
# Firefox undoes at most 16 codings (Chromium has no limit). Each layer is decoded
# (and, after a removal, encoded) in full: all layers together may produce at most
# CODING_WORK_FACTOR times the body limit, past which the body is not scanned.
MAX_RESPONSE_CODINGS: Final = 16
CODING_WORK_FACTOR: Final = 4


class UndecodableBody(JectguardError, ValueError):
    """The compressed body yields nothing a browser would render."""


def _too_large(limit: int) -> BodyTooLarge:
    from proxy_addons.core.htmlscan import BodyTooLarge  # see the imports above

    return BodyTooLarge(f"decoded body exceeds the scan limit of {limit} bytes")


def response_codings(content_encoding: str) -> tuple[str, ...]:
    """The codings to undo, in the order they were applied; () when the raw bytes are the page.

    ``gzip, br`` was gzipped, then brotli-compressed: undone br first. A browser
    that meets a token it does not decode (``identity``, ``x-unknown``) renders
    the bytes as they are, so that is what gets scanned.
    """
    tokens = coding_tokens(content_encoding)
    if not tokens or any(t not in COMPRESSIONS for t in tokens):
        return ()
    return tuple("gzip" if t == "x-gzip" else t for t in tokens)


def coding_tokens(content_encoding: str) -> list[str]:
    """Every token of a Content-Encoding header, lower-cased, in order (unknown ones too)."""
    return [t for t in (t.strip().lower() for t in content_encoding.split(",")) if t]


def lenient_codings(content_encoding: str) -> tuple[str, ...]:
    """The known codings of a chain that also holds unknown tokens, as Firefox undoes
    them (it skips what it does not know); () when there is no such second reading."""
    tokens = coding_tokens(content_encoding)
    known = tuple("gzip" if t == "x-gzip" else t for t in tokens if t in COMPRESSIONS)
    if not known or len(known) == len(tokens) or len(known) > MAX_RESPONSE_CODINGS:
        return ()
    return known


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    """zlib in chunks; on damage keep every byte decoded before it (also a bad checksum:
    browsers do not check the gzip CRC, and render the page)."""
    d = zlib.decompressobj(wbits)
    try:  # a sound stream in one call (chunks cost ~2x on big bodies)
        body = d.decompress(raw, limit + 1)
        if len(body) <= limit and not d.eof:
            body += d.flush()  # what a truncated stream still holds
        return body
    except zlib.error:
        d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    damaged = False
    for i in range(0, len(raw), _DECODE_CHUNK):
        chunk = raw[i : i + _DECODE_CHUNK]
        saved = d.copy()
        try:
            piece = d.decompress(chunk, limit + 1 - size)
        except zlib.error:
            damaged = True
            out.append(_salvage(saved, chunk, limit + 1 - size))
            break
        out.append(piece)
        size += len(piece)
        if size > limit or d.eof or d.unconsumed_tail:
            break
    else:
        with contextlib.suppress(zlib.error):  # the damage is in what flush would finish
            out.append(d.flush())
    body = b"".join(out)
    if damaged and not body:
        raise UndecodableBody("corrupt compressed body: nothing decodes")
    return body


def _salvage(d: Any, chunk: bytes, room: int) -> bytes:
    """What ``chunk`` decodes to before the byte that breaks it."""
    out: list[bytes] = []
    for j in range(0, len(chunk), _SALVAGE_CHUNK):
        piece_in = chunk[j : j + _SALVAGE_CHUNK]
        saved = d.copy()
        try:
            piece = d.decompress(piece_in, room)
        except zlib.error:
            d = saved
            for k in range(len(piece_in)):  # the last slice, a byte at a time
                try:
                    piece = d.decompress(piece_in[k : k + 1], room)
                except zlib.error:
                    break
                out.append(piece)
                room -= len(piece)
                if room <= 0:
                    break
            break
        out.append(piece)
        room -= len(piece)
        if room <= 0 or d.eof:
            break
    return b"".join(out)


def _deflate_offset(raw: bytes) -> int | None:
    """Where the deflate data starts after a gzip or zlib header; None if there is neither.

    The checksums after the data (gzip CRC-32, zlib Adler-32) are never read:
    browsers render a page whose checksum is wrong.
    """
    if raw[:3] == b"\x1f\x8b\x08" and len(raw) >= 10:
        flags, pos = raw[3], 10
        if flags & 4:  # FEXTRA
            pos += 2 + int.from_bytes(raw[pos : pos + 2], "little")
        for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
            if flags & bit:
                end = raw.find(b"\0", pos)
                if end < 0:
                    return None
                pos = end + 1
        if flags & 2:  # FHCRC
            pos += 2
        return pos if pos <= len(raw) else None
    if (
        len(raw) >= 2
        and raw[0] & 0x0F == 8
        and (raw[0] << 8 | raw[1]) % 31 == 0
        and not raw[1] & 0x20
    ):
        return 2
    return None


def _decode_one(raw: bytes, coding: str, limit: int) -> bytes:
    if coding in ("gzip", "deflate"):
        # gzip accepts a zlib header too, as mitmproxy does; deflate may be raw, as some
        # servers send it.
        offset = _deflate_offset(raw)
        if offset is None:
            if coding == "gzip":
                raise UndecodableBody("corrupt gzip body: no gzip header")
            offset = 0
        return _inflate(raw[offset:], -15, limit)
    # Small input slices: damage loses at most one slice's output.
    out: list[bytes] = []
    size = 0
    try:
        if coding == "br":
            return _brotli(raw, limit)
        else:
            # Frame after frame, as a browser's decoder goes on (skippable frames
            # decode to nothing); bytes that start no frame end the body.
            z = zstd.ZstdDecompressor()
            pending = raw
            frames = 0
            while pending and size <= limit and frames < _MAX_ZSTD_FRAMES:
                for i in range(0, len(pending), _SMALL_CHUNK):
                    piece = z.decompress(pending[i : i + _SMALL_CHUNK], max_length=limit + 1 - size)
                    out.append(piece)
                    size += len(piece)
                    if size > limit or z.eof:
                        break
                if not z.eof:
                    break
                frames += 1
                consumed = i + _SMALL_CHUNK
                pending = z.unused_data + pending[consumed:]
                z = zstd.ZstdDecompressor()
    except (brotli.error, zstd.ZstdError) as exc:
        if not out:
            raise UndecodableBody(f"corrupt {coding} body: {exc}") from None
    return b"".join(out)


def _brotli_feed(b: Any, data: bytes, out: list[bytes], size: int, limit: int) -> int:
    """Feed ``data``; brotli hands out ~32 KB a call, the rest comes with empty calls."""
    piece = b.process(data, output_buffer_limit=limit + 1 - size)
    while piece:
        out.append(piece)
        size += len(piece)
        if size > limit:
            break
        piece = b.process(b"", output_buffer_limit=limit + 1 - size)
    return size


def _brotli(raw: bytes, limit: int) -> bytes:
    """Small slices; when one breaks (damage, or bytes after the end of the stream, which
    Chromium ignores), decode again up to it and feed that slice a byte at a time."""
    out: list[bytes] = []
    size = 0
    b = brotli.Decompressor()
    for i in range(0, len(raw), _SMALL_CHUNK):
        try:
            size = _brotli_feed(b, raw[i : i + _SMALL_CHUNK], out, size, limit)
        except brotli.error:
            out, size, b = [], 0, brotli.Decompressor()
            try:
                size = _brotli_feed(b, raw[:i], out, size, limit)
                for k in range(i, min(i + _SMALL_CHUNK, len(raw))):
                    if b.is_finished() or size > limit:
                        break
                    size = _brotli_feed(b, raw[k : k + 1], out, size, limit)
            except brotli.error:
                pass
            if not out:
                raise UndecodableBody("corrupt br body: nothing decodes") from None
            break
        if size > limit or b.is_finished():
            break
    return b"".join(out)


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The bytes a browser renders, never decompressing more than ``limit`` + 1 bytes (no zip bombs).

    Stacked codings (``gzip, gzip``) are undone in turn; an unknown or identity
    token means the raw bytes (see ``response_codings``). A truncated or damaged
    stream yields what precedes the damage (a browser renders that much; zstd
    checks whole blocks, so its grain is a block). A chain whose layers decode to
    more than CODING_WORK_FACTOR x ``limit`` together, or a body of which nothing
    decodes, raises UndecodableBody; BodyTooLarge over ``limit``.
    Thread-safe (unlike mitmproxy's cached ``encoding.decode``).
    """
    out = raw
    work = 0
    for coding in reversed(response_codings(content_encoding)):
        if not out:
            break
        out = _decode_one(out, coding, limit)
        if len(out) > limit:
            raise _too_large(limit)
        work += len(out)
        if work > CODING_WORK_FACTOR * limit:
            raise UndecodableBody(
                f"stacked codings decode to more than {CODING_WORK_FACTOR}x the limit"
            )
    if len(out) > limit:
        raise _too_large(limit)
    return out


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


def decodes_over(raw: bytes, content_encoding: str, limit: int) -> bool:
    """Whether some reading of the body (see ``ScanJob.run``) decodes to more than ``limit``.

    Decides where a body is scanned: a small compressed body may inflate to the scan
    cap, so the size is measured, never guessed (at most ``limit`` + 1 bytes per reading).
    """
    from proxy_addons.core.htmlscan import BodyTooLarge  # see the imports above

    if len(raw) > limit:
        return True
    for codings in (content_encoding, ", ".join(lenient_codings(content_encoding))):
        if not response_codings(codings):
            continue
        try:
            decode_body(raw, codings, limit)
        except BodyTooLarge:
            return True
        except UndecodableBody:
            continue
    return False
