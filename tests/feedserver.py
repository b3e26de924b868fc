"""A feed server on 127.0.0.1 that a test controls: content, 304, errors, hangs, bad gzip,
streams cut at any byte, drips, redirects, Retry-After, dates from the future...

It runs in its own thread and event loop, so sync tests can drive subprocesses
(``jectguard update``, the proxy) against it. Tests change a :class:`Feed`'s
attributes between fetches; the handler reads them per request.

It also listens on 127.0.0.2 (same port when free: :attr:`FeedServer.alt_port`):
a test's fetch policy may call that address "public" to check what a public
feed may reach (redirects to 127.0.0.1, names resolving to it).
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import hashlib
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Feed:
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    etag: bool = True  # send an ETag (a hash of the body) and honour If-None-Match
    last_modified: str | None = None
    gzip: bool = False
    bad_gzip: bool = False
    hang: float = 0.0  # seconds to wait before answering
    close_mid_body: bool = False  # promise the whole body, send half, drop the connection
    stream_forever: bool = False  # an endless chunked body (for the size cap)
    fail: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # answered first, in order
    # Content-Encoding applied to the body: gzip, deflate, raw-deflate (sent as deflate), br, zstd.
    encoding: str | None = None
    # Cut the (encoded) body after this many bytes. How the cut looks on the wire:
    # "length" a Content-Length equal to the cut (a "complete" transfer of a cut stream),
    # "close" the full Content-Length then the connection drops, "chunked" chunks
    # without the terminator, "eof" no length at all, the connection closes.
    cut_at: int | None = None
    cut_how: str = "length"
    drip: float = 0.0  # seconds between single bytes of the body (a dripping server)
    redirect: str | None = None  # answer 302 to this Location (relative to this server)
    redirect_status: int = 302
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers

    def tag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    status: int = 0


class FeedServer:
    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}
        self.hits: list[Hit] = []
        self.streamed = 0  # bytes written by stream_forever answers
        self.active: dict[str, int] = {}  # answers being written now, by feed
        self.port = 0
        self.alt_port = 0  # on 127.0.0.2
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="feedserver", daemon=True)
        self._ready = threading.Event()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def alt_url(self, name: str) -> str:
        """The feed on 127.0.0.2 (a test policy may call that address public)."""
        return f"http://127.0.0.2:{self.alt_port}/{name}"

    def feed(self, name: str, body: bytes = b"", **kw: object) -> Feed:
        f = Feed(body=body, **kw)  # type: ignore[arg-type]
        self.feeds[name] = f
        return f

    def hits_for(self, name: str) -> list[Hit]:
        return [h for h in self.hits if h.path == "/" + name]

    # -- serving ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hit = Hit(request.path, dict(request.headers))
        self.hits.append(hit)
        feed = self.feeds.get(name)
        if feed is None:
            hit.status = 404
            return web.Response(status=404, text="no such feed")
        if feed.fail:
            status, headers = feed.fail.pop(0)
            hit.status = status
            return web.Response(status=status, headers=headers, text=f"error {status}")
        if feed.redirect is not None:
            hit.status = feed.redirect_status
            return web.Response(status=feed.redirect_status, headers={"Location": feed.redirect})
        if feed.hang:
            await asyncio.sleep(feed.hang)
        headers = {"Content-Type": feed.content_type, **feed.headers}
        if feed.status != 200:
            hit.status = feed.status
            return web.Response(status=feed.status, text=f"error {feed.status}")
        # A faulty answer is never a 304: the fault must reach the client.
        faulty = feed.close_mid_body or feed.bad_gzip or feed.stream_forever
        faulty = faulty or "html" in feed.content_type or feed.cut_at is not None
        if feed.etag and not faulty:
            headers["ETag"] = feed.tag()
            if request.headers.get("If-None-Match") == feed.tag():
                hit.status = 304
                return web.Response(status=304, headers={"ETag": feed.tag()})
        if feed.last_modified:
            headers["Last-Modified"] = feed.last_modified
            # As servers do: not modified when the date asked about is not before ours
            # (so a date from the future gets 304 whatever the list is now).
            since = _date(request.headers.get("If-Modified-Since"))
            ours = _date(feed.last_modified)
            if not feed.etag and since is not None and ours is not None and since >= ours:
                hit.status = 304
                return web.Response(status=304)
        hit.status = feed.status
        if feed.stream_forever:
            resp = web.StreamResponse(status=200, headers=headers)
            await resp.prepare(request)
            chunk = b"".join(b"s%d.stream.example\n" % i for i in range(4000))
            try:
                for _ in range(100_000):
                    await resp.write(chunk)
                    self.streamed += len(chunk)
            except (ConnectionResetError, ConnectionError):
                pass
            return resp
        body = feed.body
        if feed.gzip or feed.bad_gzip:
            body = gzip.compress(body) if feed.gzip else b"\x1f\x8b\x08\x00garbage-not-deflate" * 10
            headers["Content-Encoding"] = "gzip"
        if feed.encoding:
            body = encode(body, feed.encoding)
            headers["Content-Encoding"] = (
                "deflate" if feed.encoding == "raw-deflate" else feed.encoding
            )
        if feed.cut_at is not None:
            return await self._cut(request, feed, headers, body)
        if feed.drip:
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_length = len(body)
            self.active[name] = self.active.get(name, 0) + 1
            try:
                await resp.prepare(request)
                for i in range(len(body)):
                    await resp.write(body[i : i + 1])
                    await asyncio.sleep(feed.drip)
            finally:
                self.active[name] -= 1
            return resp
        if feed.close_mid_body:
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(status=feed.status, body=body, headers=headers)

    async def _cut(
        self, request: web.Request, feed: Feed, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        assert feed.cut_at is not None and request.transport is not None
        part = body[: feed.cut_at]
        if feed.cut_how == "length":
            return web.Response(status=200, body=part, headers=headers)
        if feed.cut_how == "eof":
            # Written by hand: aiohttp would add a length or chunk the body.
            head = "HTTP/1.1 200 OK\r\nConnection: close\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            request.transport.write(head.encode() + b"\r\n" + part)
            request.transport.close()
            await asyncio.sleep(5)  # cancelled when the connection goes
            raise web.HTTPInternalServerError
        resp = web.StreamResponse(status=200, headers=headers)
        if feed.cut_how == "close":
            resp.content_length = len(body)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if part:
            await resp.write(part)
        await resp.drain()
        await asyncio.sleep(0.02)
        request.transport.close()
        return resp

    # -- lifecycle ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )

        async def start() -> None:
            assert self._runner is not None
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            for port in (self.port, 0):
                alt = web.TCPSite(self._runner, "127.0.0.2", port)
                try:
                    await alt.start()
                except OSError:
                    continue
                self.alt_port = alt._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                break

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> FeedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("feed server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def encode(body: bytes, coding: str) -> bytes:
    """``body`` in a content coding (as a server would send it)."""
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    if coding == "raw-deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(body) + c.flush()
    if coding == "br":
        import brotli

        return bytes(brotli.compress(body))
    if coding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]
        return bytes(zstd.compress(body))
    raise ValueError(coding)


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    s = FeedServer().start()
    try:
        yield s
    finally:
        s.stop()


def sources_toml(
    server: FeedServer,
    feeds: dict[str, str],
    *,
    extra: str = "",
    refresh: str = "5m",
    min_interval: str | None = "0s",
) -> str:
    """A sources file whose URL sources point at ``server`` (name -> format); tests fetch
    again at once, so no minimum interval unless one is given."""
    parts = [
        '[canaries]\nnever_block = ["google.com", "github.com"]\n',
    ]
    for name, fmt in feeds.items():
        parts.append(
            f'[[source]]\nname = "{name}"\nurl = "{server.url(name)}"\nformat = "{fmt}"\n'
            f'category = "malware"\nrefresh = "{refresh}"\n'
            + (f'min_interval = "{min_interval}"\n' if min_interval is not None else "")
        )
    parts.append(extra)
    return "\n".join(parts)
