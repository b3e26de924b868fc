"""A feed server on 127.0.0.1 that a test controls: content, 304, errors, hangs, bad gzip...

It runs in its own thread and event loop, so sync tests can drive subprocesses
(``jectguard update``, the proxy) against it. Tests change a :class:`Feed`'s
attributes between fetches; the handler reads them per request.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import threading
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
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="feedserver", daemon=True)
        self._ready = threading.Event()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

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
        if feed.hang:
            await asyncio.sleep(feed.hang)
        headers = {"Content-Type": feed.content_type}
        if feed.status != 200:
            hit.status = feed.status
            return web.Response(status=feed.status, text=f"error {feed.status}")
        # A faulty answer is never a 304: the fault must reach the client.
        faulty = feed.close_mid_body or feed.bad_gzip or feed.stream_forever
        faulty = faulty or "html" in feed.content_type
        if feed.etag and not faulty:
            headers["ETag"] = feed.tag()
            if request.headers.get("If-None-Match") == feed.tag():
                hit.status = 304
                return web.Response(status=304, headers={"ETag": feed.tag()})
        if feed.last_modified:
            headers["Last-Modified"] = feed.last_modified
            if request.headers.get("If-Modified-Since") == feed.last_modified and not feed.etag:
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


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    s = FeedServer().start()
    try:
        yield s
    finally:
        s.stop()


def sources_toml(server: FeedServer, feeds: dict[str, str], *, extra: str = "", refresh: str = "5m") -> str:
    """A sources file whose URL sources point at ``server`` (name -> format)."""
    parts = [
        "[canaries]\nnever_block = [\"google.com\", \"github.com\"]\n",
    ]
    for name, fmt in feeds.items():
        parts.append(
            f'[[source]]\nname = "{name}"\nurl = "{server.url(name)}"\nformat = "{fmt}"\n'
            f'category = "malware"\nrefresh = "{refresh}"\n'
        )
    parts.append(extra)
    return "\n".join(parts)
