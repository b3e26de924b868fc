# One module on purpose (~560 lines): the strip addon's hooks and the scan dispatch
# (loop or worker) hand one plan from responseheaders to response. Body decoding is
# in core/codings.py, one body's scan (ScanJob) in core/scanjob.py.
"""The stripping addon: removes injected active content from HTML responses before the browser sees it.

- ``responseheaders``: decides whether the body may be HTML (``text/html``,
  ``application/xhtml+xml``, or an unlabelled/``octet-stream``/``text/plain``
  body to sniff) and whether it fits the scan cap. A known Content-Length over
  the cap streams the body through untouched (an event says so). A body of
  unknown length is buffered by mitmproxy up to ``stream_large_bodies``, which
  this addon sets to the cap when the user has not set it: past that, mitmproxy
  switches to streaming, so memory never grows with the body size.
- ``response``: decodes the body (Content-Encoding, bounded by the cap), runs
  the scanner (on the event loop for small bodies, in a worker process for
  larger ones: ``strip_worker``), and, only when something was removed,
  replaces the body (re-encoded with the original Content-Encoding), fixes
  Content-Length, weakens the ETag and drops digests. A clean page is not
  touched at all: same bytes, same headers. A page that could not be scanned
  (a worker died or timed out, the scanner failed) is refused with a 502: never
  passed on unscanned.

Findings are recorded in ``flow.metadata["jectguard_strip"]`` as ``{"findings":
[Finding.as_dict(), ...], "skipped": reason or None}``; the observe addon turns
them into events and metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from typing import Any, Final

from mitmproxy import ctx, exceptions, http

from proxy_addons.addons.blockpage import printable
from proxy_addons.core.canon import scalar_text
from proxy_addons.core.charset import html_reading, is_html, mime_essence
from proxy_addons.core.codings import (
    UndecodableBody,
    coding_tokens,
    decode_body,
    decodes_over,
)
from proxy_addons.core.engine import Engine, blocked_by
from proxy_addons.core.htmlscan import AFTER_HTML_POLICIES, BodyTooLarge, Scanner
from proxy_addons.core.scanjob import Outcome, ScanJob, encode_body
from proxy_addons.core.signatures import Signature
from proxy_addons.lists.holder import EngineHolder
from proxy_addons.lists.signatures import DEFAULT_SIGNATURES, read_signatures

from .observe import STRIP_KEY
from .strip_worker import Reply, ScanError, ScanFailed, ScanPool, WorkerConfig

logger = logging.getLogger(__name__)

# Bodies bigger than this (decoded) are streamed through unscanned: scanning buffers them whole.
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
# A cap above this would let one response hold a gigabyte of memory.
MAX_MAX_BYTES: Final = 1024 * 1024 * 1024
# Bodies up to this size (decoded) are scanned on the event loop; bigger ones in a worker
# process. A scan costs up to ~0.22 ms per KB when the body is dense with URLs never
# judged before (each ~10 us: canonicalize, look up; CPU time 32 KB 7.0 ms, 256 KB
# 52 ms: `benchmarks/bench_stall.py --scan-only`), and every other flow waits while the
# loop scans: 32 KB keeps that wait well under 50 ms, even on a loaded machine.
INLINE_SCAN_BYTES: Final = 32 * 1024
# Worker processes for bodies over INLINE_SCAN_BYTES (each scans one body at a time).
DEFAULT_WORKERS: Final = 2
MAX_WORKERS: Final = 64
# A page waits at most this long for a free worker, and a worker that has not answered this
# long after taking the page is killed and the page refused. A 10 MB page scans in
# ~0.1-0.5 s of CPU (more when dense with new URLs or text past the tokenizer's bound),
# but a worker runs at nice +10: on a saturated machine it waits for the CPU (before
# issue 17's speed work a 5 MB page took over 10 s at load 9 on 2 cores): a generous bound.
DEFAULT_SCAN_TIMEOUT: Final = 30
# Outcomes of clean big bodies remembered by digest: a site serves the same large shell
# (inline bundle, app state) to every client, and rescanning it costs ~11-30 ms per MB.
OUTCOME_CACHE_ENTRIES: Final = 64
# Where the response-headers decision waits for the response hook (a str: flows stay serializable).
PLAN_KEY: Final = "jectguard_strip_plan"

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
# Types a browser sniffs (or, in the Download.Ject era, sniffed) as HTML when the body looks like it.
SNIFF_TYPES: Final = frozenset(
    {"", "unknown/unknown", "application/unknown", "*/*", "application/octet-stream", "text/plain"}
)
# Statuses that carry no body of their own to strip (206: a range of the resource, not the page).
NO_STRIP_STATUSES: Final = frozenset({101, 204, 205, 206, 304})
# Headers that describe the exact original bytes and would be false after a removal.
DIGEST_HEADERS: Final = ("content-md5", "digest", "content-digest", "repr-digest")


def outcome_of(reply: Reply) -> Outcome:
    """A worker's reply as the Outcome the event loop applies."""
    return Outcome(reply.raw, reply.findings, reply.content_encoding)


def refusal(reason: str) -> http.Response:
    """The response that replaces a page no scan could judge."""
    body = (
        "jectguard: this page was not delivered because it could not be checked for "
        f"injected scripts ({printable(reason)[:300]}). Reload to try again.\n"
    )
    return http.Response.make(
        502,
        body.encode("utf-8", "replace"),
        {
            "Content-Type": "text/plain; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Jectguard-Refused": "scan-failed",
        },
    )


_PLAN_HEADERS: Final = (
    b"content-type",
    b"x-content-type-options",
    b"content-range",
    b"content-length",
)


def _pick_headers(headers: http.Headers) -> dict[bytes, str]:
    """The headers the plan needs, read in one pass over the raw fields.

    As ``Headers.get`` does: names compared case-insensitively, repeated fields
    joined with ", ". (``Headers.get`` costs ~1.5 us a call, on every response.)
    """
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers.fields:
        name = name.lower()
        if name in _PLAN_HEADERS:
            found.setdefault(name, []).append(value)
    return {k: b", ".join(v).decode("utf-8", "surrogateescape") for k, v in found.items()}


def html_plan(headers: http.Headers | dict[bytes, str]) -> str | None:
    """ "html" for an HTML type, "sniff" for a type a browser may sniff as HTML, else None."""
    picked = headers if isinstance(headers, dict) else _pick_headers(headers)
    essence = mime_essence(picked.get(b"content-type"))
    if essence in HTML_TYPES:
        return "html"
    if essence in SNIFF_TYPES:
        # With nosniff a browser never decides "HTML" for an unlabelled or generic body.
        nosniff = "nosniff" in picked.get(b"x-content-type-options", "").lower()
        return None if nosniff else "sniff"
    return None


class Strip:
    """Strips script/iframe/... elements that load blocked URLs or match injection signatures."""

    name = "jectguard_strip"

    def __init__(self, holder: EngineHolder) -> None:
        self.holder = holder
        self.enabled = True
        self.max_bytes = DEFAULT_MAX_BYTES
        self.after_html = "log"
        self.comment = True
        self.signatures: list[Signature] = []
        self._signatures_text = ""
        self._signatures_path: str | None = None
        self._stream_limit_set: str | None = None  # the stream_large_bodies value we set
        self.workers = DEFAULT_WORKERS
        self.scan_timeout = float(DEFAULT_SCAN_TIMEOUT)
        # The event loop's scanner, rebuilt when the engine is swapped; the worker
        # processes keep their own (see strip_worker).
        self._loop_scanner: tuple[Engine, Scanner] | None = None
        self._pool: ScanPool | None = None
        self._closing: set[asyncio.Task[None]] = set()  # pools being shut down
        # Clean outcomes of big bodies by digest, valid for one worker configuration.
        self._outcomes: dict[tuple[object, ...], Outcome] = {}
        self._outcomes_for: WorkerConfig | None = None

    # -- options ------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "jg_strip",
            bool,
            True,
            "jectguard: remove injected scripts, frames and objects that load blocked URLs "
            "or match injection signatures from HTML responses.",
        )
        loader.add_option(
            "jg_strip_max_bytes",
            int,
            DEFAULT_MAX_BYTES,
            "jectguard: largest HTML body scanned (decoded bytes); bigger bodies stream "
            "through unscanned. Also sets stream_large_bodies when that is unset.",
        )
        loader.add_option(
            "jg_strip_after_html",
            str,
            "log",
            "jectguard: active content after </html> (a server-side footer): 'off' ignores it, "
            "'log' reports it, 'strip' removes it.",
            choices=AFTER_HTML_POLICIES,
        )
        loader.add_option(
            "jg_strip_comment",
            bool,
            True,
            "jectguard: replace each removed element with a short HTML comment naming the rule.",
        )
        loader.add_option(
            "jg_signatures",
            str,
            str(DEFAULT_SIGNATURES),
            "jectguard: injection signatures file (TOML); default: the shipped set.",
        )
        loader.add_option(
            "jg_strip_workers",
            int,
            DEFAULT_WORKERS,
            f"jectguard: worker processes that scan HTML bodies over {INLINE_SCAN_BYTES // 1024} KB "
            "(so a big page never stalls other connections).",
        )
        loader.add_option(
            "jg_strip_timeout",
            int,
            DEFAULT_SCAN_TIMEOUT,
            "jectguard: seconds a page may wait for its scan in a worker; past that the worker "
            "is restarted and the page refused (502), never passed unscanned.",
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if not 1 <= o.jg_strip_max_bytes <= MAX_MAX_BYTES:
            raise exceptions.OptionsError(
                f"jg_strip_max_bytes: must be between 1 and {MAX_MAX_BYTES}, "
                f"got {o.jg_strip_max_bytes}"
            )
        if o.jg_strip_after_html not in AFTER_HTML_POLICIES:
            raise exceptions.OptionsError(
                f"jg_strip_after_html: must be one of {', '.join(AFTER_HTML_POLICIES)}, "
                f"got {o.jg_strip_after_html!r}"
            )
        if not 1 <= o.jg_strip_workers <= MAX_WORKERS:
            raise exceptions.OptionsError(
                f"jg_strip_workers: must be between 1 and {MAX_WORKERS}, got {o.jg_strip_workers}"
            )
        if not 1 <= o.jg_strip_timeout <= 3600:
            raise exceptions.OptionsError(
                f"jg_strip_timeout: must be between 1 and 3600 seconds, got {o.jg_strip_timeout}"
            )
        if o.jg_signatures != self._signatures_path:
            try:
                text, signatures = read_signatures(o.jg_signatures) if o.jg_signatures else ("", [])
            except ValueError as exc:
                raise exceptions.OptionsError(f"jg_signatures: {exc}") from None
            self.signatures, self._signatures_text = signatures, text
            self._signatures_path = o.jg_signatures
        self.enabled = o.jg_strip
        self.max_bytes = o.jg_strip_max_bytes
        self.after_html = o.jg_strip_after_html
        self.comment = o.jg_strip_comment
        self._loop_scanner = None  # rebuilt with the new settings (workers: by their config)
        self.scan_timeout = float(o.jg_strip_timeout)
        if self._pool is not None:
            self._pool.timeout = self.scan_timeout
        if o.jg_strip_workers != self.workers:
            self.workers = o.jg_strip_workers
            self._retire_pool()
        self._sync_stream_limit()

    def _sync_stream_limit(self) -> None:
        """Let mitmproxy buffer bodies of unknown length only up to the cap, then stream them."""
        o = ctx.options
        if "stream_large_bodies" not in o:
            return  # mitmproxy's proxyserver addon is not loaded (unit tests)
        current = o.stream_large_bodies
        if current is not None and current != self._stream_limit_set:
            return  # the user's own setting wins
        want = str(self.max_bytes) if self.enabled else None
        if current != want:
            self._stream_limit_set = want
            o.update(stream_large_bodies=want)

    # -- lifecycle ----------------------------------------------------------

    def running(self) -> None:
        """Start the scan workers now, so the first big page does not wait for them."""
        if self.enabled:
            self._worker_pool().start()

    async def done(self) -> None:
        self._retire_pool()
        for task in list(self._closing):
            await task

    def _worker_pool(self) -> ScanPool:
        if self._pool is None:
            self._pool = ScanPool(self.workers, self.scan_timeout)
        return self._pool

    def _retire_pool(self) -> None:
        """Shut the pool down in the background (a new one starts when next needed)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: the pool never started a process
            return
        task = loop.create_task(pool.close(), name="jg-strip-pool-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- scanners -----------------------------------------------------------

    def _scanner(self, engine: Engine) -> Scanner:
        held = self._loop_scanner
        if held is not None and held[0] is engine:
            return held[1]
        scanner = Scanner(
            blocked_by(engine),
            self.signatures,
            after_html=self.after_html,
            max_bytes=self.max_bytes,
        )
        self._loop_scanner = (engine, scanner)
        return scanner

    def _worker_config(self, engine: Engine) -> WorkerConfig:
        return WorkerConfig(
            engine=engine,
            signatures_text=self._signatures_text,
            signatures_source=self._signatures_path or "",
            after_html=self.after_html,
            max_bytes=self.max_bytes,
            fold_case=Engine.fold_case,
            nat64=tuple(str(n) for n in Engine.nat64),
        )

    @property
    def monitor_only(self) -> bool:
        return getattr(ctx.options, "jg_mode", "enforce") == "monitor"

    # -- hooks --------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if not self.enabled or resp is None or flow.error or not flow.live:
            return
        picked = _pick_headers(resp.headers)
        plan = html_plan(picked)  # first: most responses are not HTML
        if plan is None:
            return
        if flow.request.method == "HEAD" or resp.status_code in NO_STRIP_STATUSES:
            return
        if b"content-range" in picked:
            return
        if resp.stream:
            # mitmproxy's stream_large_bodies saw a Content-Length over its limit.
            self._skip(flow, plan, "too large to scan: streamed (Content-Length over the limit)")
            return
        length = picked.get(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            resp.stream = True
            self._skip(
                flow,
                plan,
                f"too large to scan: Content-Length {int(length)} "
                f"> {self.max_bytes}; streamed unscanned",
            )
            return
        flow.metadata[PLAN_KEY] = plan

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Scan and strip; small bodies right here, larger ones in a worker process.

        A plain method that returns a coroutine only for the worker case: most
        responses are small or not HTML, and mitmproxy awaits only what it is given.
        """
        plan = flow.metadata.pop(PLAN_KEY, None)
        resp = flow.response
        if plan is None or resp is None or flow.error:
            return None
        if resp.stream:
            limit = getattr(ctx.options, "stream_large_bodies", None) or self.max_bytes
            self._skip(
                flow, plan, f"too large to scan: more than {limit} bytes; streamed unscanned"
            )
            return None
        raw = resp.raw_content
        if not raw:
            return None
        ce = resp.headers.get("content-encoding", "")
        # (XHTML is read as HTML, and known not to be: charset.html_reading)
        content_type = resp.headers.get("content-type")
        read_as = html_reading(content_type)[0]
        if not coding_tokens(ce) and len(raw) <= self.max_bytes and not is_html(raw, read_as):
            # The scan's own first decision (Scanner._prepare on the undecoded body), taken
            # before the job and the page URL are built: most responses are not HTML, and
            # this saves ~15 us of the allowed path (benchmarks/bench_dispatch.py).
            return None
        job = ScanJob(
            raw=raw,
            content_encoding=ce,
            content_type=content_type,
            page_url=scalar_text(flow.request.pretty_url),  # lone surrogates would stop URL joins
            comment=self.comment,
            remove=not self.monitor_only,
            limit=self.max_bytes,
        )
        engine = self.holder.engine
        if decodes_over(raw, ce, INLINE_SCAN_BYTES):
            return self._scan_in_worker(flow, plan, resp, raw, job, engine)
        try:
            outcome = job.run(self._scanner(engine))
        except Exception as exc:
            self._failed(flow, plan, exc)
            return None
        self._apply(flow, resp, raw, outcome)
        return None

    async def _scan_in_worker(
        self,
        flow: http.HTTPFlow,
        plan: str,
        resp: http.Response,
        raw: bytes,
        job: ScanJob,
        engine: Engine,
    ) -> None:
        config = self._worker_config(engine)
        if self._outcomes_for != config:
            self._outcomes.clear()
            self._outcomes_for = config
        # SHA-256 (not a fast hash): a server must not be able to make an injected page
        # collide with a clean one it served before. hashlib releases the GIL.
        digest = await asyncio.to_thread(lambda: hashlib.sha256(raw).digest())
        key = (
            digest,
            job.content_encoding,
            job.content_type,
            job.page_url,
            job.comment,
            job.remove,
            job.limit,
        )
        outcome = self._outcomes.get(key)
        if outcome is None:
            try:
                reply = await self._worker_pool().scan(job, config)
            except Exception as exc:
                self._failed(flow, plan, exc)
                return
            outcome = outcome_of(reply)
            if outcome.raw is None and self._outcomes_for == config:
                if len(self._outcomes) >= OUTCOME_CACHE_ENTRIES:
                    self._outcomes.pop(next(iter(self._outcomes)))
                self._outcomes[key] = outcome
        self._apply(flow, resp, raw, outcome)

    def _failed(self, flow: http.HTTPFlow, plan: str, exc: Exception) -> None:
        """The one place that decides what happens to a page the scan did not judge."""
        if isinstance(exc, BodyTooLarge):
            self._skip(flow, plan, f"too large to scan: {exc}; passed unscanned")
            return
        if isinstance(exc, UndecodableBody):
            self._skip(flow, plan, f"not scanned: {exc}")
            return
        # A worker that died or hung, or a scanner bug: the page was not judged, and an
        # error never fails open (monitor mode only reports, as it does for findings).
        reason = str(exc) if isinstance(exc, ScanFailed | ScanError) else f"scanner error: {exc!r}"
        url = flow.request.pretty_url[:300]
        if not isinstance(exc, ScanFailed | ScanError):
            logger.warning("jectguard: strip failed on %s", url, exc_info=exc)
        if self.monitor_only:
            logger.warning(
                "jectguard: %s: not scanned (%s); passed (monitor mode)", url, reason[:300]
            )
            self._skip(flow, "html", f"not scanned: {reason}; passed (monitor mode)")
            return
        logger.warning("jectguard: %s: refused with 502: not scanned (%s)", url, reason[:300])
        flow.response = refusal(reason)
        flow.metadata[STRIP_KEY] = {
            "findings": [],
            "skipped": f"refused (502): not scanned: {reason}",
        }

    def _apply(
        self, flow: http.HTTPFlow, resp: http.Response, raw: bytes, outcome: Outcome
    ) -> None:
        if outcome.findings:
            flow.metadata[STRIP_KEY] = {
                "findings": [f.as_dict() for f in outcome.findings],
                "skipped": None,
            }
        if outcome.raw is None:
            return  # clean (or monitor only): not a byte of the response changes
        if flow.response is not resp or resp.raw_content is not raw:
            return  # another addon replaced the response meanwhile: leave theirs alone
        self._replace_body(resp, outcome.raw)
        if outcome.content_encoding is not None:
            resp.headers["content-encoding"] = outcome.content_encoding
        removed = [f for f in outcome.findings if f.removed]
        logger.info(
            "jectguard: stripped %d element(s) from %s (%s)",
            len(removed),
            flow.request.pretty_url[:300],
            ", ".join(f"{f.element} {f.reason} {f.list}:{f.rule[:80]}" for f in removed[:5]),
        )

    @staticmethod
    def _replace_body(resp: http.Response, raw: bytes) -> None:
        """Put a new (already encoded) body in place, as ``Message.set_content`` would."""
        resp.raw_content = raw
        if "transfer-encoding" not in resp.headers:
            resp.headers["content-length"] = str(len(raw))
        etag = resp.headers.get("etag")
        if etag is not None and not etag.lstrip().startswith("W/"):
            # Still a fine validator for a cache (the page means the same), but no longer
            # a promise of these exact bytes (byte ranges, digests).
            resp.headers["etag"] = "W/" + etag.strip()
        for name in DIGEST_HEADERS:
            if name in resp.headers:
                del resp.headers[name]

    def _skip(self, flow: http.HTTPFlow, plan: str, reason: str) -> None:
        """Record that an HTML body was not scanned (only for declared HTML: not every download)."""
        if plan != "html":
            logger.debug("jectguard: %s (%s)", reason, flow.request.pretty_url[:300])
            return
        flow.metadata[STRIP_KEY] = {"findings": [], "skipped": reason}
        logger.info("jectguard: %s: %s", flow.request.pretty_url[:300], reason)


# Decoding lives in core/codings.py, the scan of one body (ScanJob, encode_body) in
# core/scanjob.py, where a worker process imports them without mitmproxy; their names
# stay importable from here.
__all__ = [
    "Outcome",
    "ScanJob",
    "Strip",
    "UndecodableBody",
    "decode_body",
    "decodes_over",
    "encode_body",
    "html_plan",
]
