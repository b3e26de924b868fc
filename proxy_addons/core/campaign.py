"""Campaign detection: the next Download.Ject, before any feed lists it.

A proxy in front of many browsers sees what no single site sees: the same
never-seen script host suddenly referenced from many *unrelated* sites, in the
same odd place, with the same shape. This module turns page views into that
signal. Pure: page bodies and times in, findings out; the caller owns the clock
and the storage.

Two parts:

- :func:`references` reads one HTML page (with the scanner's own parser, so it
  sees the elements a browser builds) and lists every third-party reference with
  *where* it sat: ``after-end`` (after ``</body>``/``</html>``: Download.Ject's
  footer), ``before-start`` (before ``<html>``: Gumblar's top-of-page script),
  ``written`` (by ``document.write``/``innerHTML``/``createElement`` in an inline
  script), ``hidden-frame`` (a 0/1-pixel or invisible iframe), ``breaks-out``
  (followed by what is left of the text field or attribute it broke out of:
  LizaMoon's ``</title><script src=...></script></title>``), ``repeated`` (the same external
  script more than once in a page: the 2008 SQL injection appended it to every
  text field), ``in-text`` (a ``<script src>`` left as text in a title or
  textarea: the same injection where the browser does not run it).
- :class:`CampaignDetector` keeps, per referenced host, when it was first seen
  here, which registrable domains (Public Suffix List) referenced it and which
  of those did so in an anomalous position, and the shapes of those references.
  It raises a :class:`CampaignFinding` when a host first seen recently is
  referenced from ``min_sites`` unrelated sites in anomalous positions, and
  those make up most of its sites.

The hard negatives are designed for, not tuned away:

- A new analytics tag or CDN rolled out to many sites in a week sits where tags
  sit (``<head>``, or just *before* ``</body>``, which is where ad networks and
  analytics go): no anomalous position, no finding, however fast it spreads.
- Widgets every theme includes, fonts, tag managers and libraries on most of the
  web: seen during the warm-up (a deployment learns its baseline first), so never
  "recently first seen"; and a short list of hosts everyone uses is ignored.
- Per-site nonces and IDs in otherwise identical tags: the shape fingerprint
  keeps element and attribute names and the position, never values.
- A host referenced in an odd place by one sloppy site: one site is not a
  campaign (``min_sites`` unrelated registrable domains are needed).

State is bounded: at most ``max_hosts`` hosts (least recently seen forgotten
first) with at most ``MAX_SITES_PER_HOST`` sites each, whatever the traffic.
:meth:`CampaignDetector.to_state` / :meth:`CampaignDetector.from_state` turn it
into plain JSON data and back (never pickle: the file is read back into a process
that parses hostile pages, and a pickle runs code), with the same bounds applied
on the way in. A host an operator cleared (:meth:`CampaignDetector.clear`) is not
flagged again for ``window`` seconds, even when it is forgotten and seen anew.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from publicsuffixlist import PublicSuffixList

from .canon import MAX_HOST_LENGTH, canonicalize_url
from .errors import CanonError
from .htmlscan import decode_script_text, parse_elements

# Positions no site's own template puts third-party code in.
STRONG: Final = frozenset({"after-end", "before-start", "breaks-out", "repeated", "in-text"})
# Positions injections use but legitimate tags use too (ad loaders still write their
# tags with document.write; tracking vendors load hidden 1x1 iframes): odd only
# together, or toward a bare IP address, which no legitimate vendor serves tags from.
WEAK: Final = frozenset({"written", "hidden-frame"})
ANOMALOUS: Final = STRONG | WEAK
DAY: Final = 86_400.0
# A host first seen longer ago than this is established, whatever it does now.
DEFAULT_WINDOW: Final = 7 * DAY
# Unrelated sites that must carry a host in an anomalous position before it is flagged.
DEFAULT_MIN_SITES: Final = 3
# Share of a host's sites whose reference is anomalous: a tag rolled out normally
# to fifty sites and odd on three is a sloppy template, not a campaign.
MIN_ANOMALOUS_SHARE: Final = 0.5
# Share of anomalous references that must share one shape (an injection kit writes
# the same tag everywhere).
MIN_SHAPE_SHARE: Final = 0.5
# The baseline: a deployment learns for this long (and this many page views) before
# any host counts as new.
DEFAULT_WARMUP_SECONDS: Final = 1 * DAY
DEFAULT_WARMUP_VIEWS: Final = 1_000
# Bounded state: hosts tracked, and sites remembered per host (enough to decide).
DEFAULT_MAX_HOSTS: Final = 200_000
MAX_SITES_PER_HOST: Final = 64
MAX_SHAPES_PER_HOST: Final = 16
# Distinct clients remembered per host (enough to tell one infected client replaying pages
# from a campaign many browsers meet). Kept as salted hashes, never addresses.
MAX_CLIENTS_PER_HOST: Final = 16
# Clearances remembered (each for ``window`` seconds): an operator clears a handful.
MAX_CLEARED: Final = 10_000
# The version of :meth:`CampaignDetector.to_state`'s document.
STATE_VERSION: Final = 1
# Only this much of a page is read for positions (the scanner reads the same).
MAX_PAGE_BYTES: Final = 4 * 1024 * 1024

# Registrable domains on most of the web (fonts, tag managers, libraries, video):
# never campaign hosts here even on a fresh deployment with no warm-up behind it.
COMMON_THIRD_PARTIES: Final = frozenset(
    """googletagmanager.com google-analytics.com googleapis.com gstatic.com google.com
    googlesyndication.com doubleclick.net googleadservices.com youtube.com ytimg.com
    facebook.net facebook.com fbcdn.net twitter.com twimg.com x.com linkedin.com licdn.com
    cloudflare.com cloudflareinsights.com jsdelivr.net unpkg.com jquery.com bootstrapcdn.com
    fontawesome.com typekit.net adobe.com adobedtm.com hotjar.com segment.com segment.io
    newrelic.com nr-data.net sentry.io sentry-cdn.com stripe.com paypal.com recaptcha.net
    hcaptcha.com vimeo.com vimeocdn.com wp.com wordpress.com gravatar.com disqus.com
    addthis.com sharethis.com cookielaw.org onetrust.com cookiebot.com matomo.cloud
    clarity.ms bing.com microsoft.com amazon-adsystem.com criteo.net taboola.com outbrain.com
    polyfill.io cdnjs.com akamaihd.net akamaized.net cloudfront.net fastly.net""".split()
)

_URL_IN_SCRIPT: Final = re.compile(r"""(?:https?:)?//([^/\s"'<>\\`()]+)""", re.IGNORECASE)
_WRITES_MARKUP: Final = re.compile(
    r"document\s*\.\s*write|innerHTML|outerHTML|insertAdjacentHTML|createElement|\.src\s*=",
    re.IGNORECASE,
)
# What is left of a text field or attribute an injection broke out of, right after the
# injected element: "<title>Shop</title><script src=...></script></title>" (LizaMoon),
# '<input value="x"><script src=...></script>">'. A template never leaves these.
_STRAY_REST: Final = re.compile(rb"\s*(?:</title\s*>|</textarea\s*>|[\"']\s*/?>)", re.IGNORECASE)
_TEXT_FIELD: Final = re.compile(
    rb"<(title|textarea)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL
)
_SCRIPT_SRC_TEXT: Final = re.compile(rb"<script[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)
_HIDDEN_STYLE: Final = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|(?:width|height)\s*:\s*[01](?:px)?\b",
    re.IGNORECASE,
)
_TINY: Final = frozenset({"0", "1", "0px", "1px"})
_URL_ATTRS: Final = {
    "script": "src",
    "iframe": "src",
    "frame": "src",
    "embed": "src",
    "object": "data",
}


@dataclass(frozen=True, slots=True)
class Reference:
    """One third-party reference in a page, and where it sat."""

    host: str
    element: str
    positions: frozenset[str]
    shape: str  # element, attribute names and positions: never values (nonces, IDs)

    @property
    def anomalous(self) -> bool:
        if self.positions & STRONG:
            return True
        weak = self.positions & WEAK
        return len(weak) > 1 or (bool(weak) and is_ip(self.host))


@dataclass(frozen=True, slots=True)
class CampaignFinding:
    """A host referenced across unrelated sites the way injections are."""

    host: str
    first_seen: float
    flagged_at: float
    sites: tuple[str, ...]
    pages: int
    score: float
    evidence: tuple[str, ...]
    # distinct clients whose page views put the host in an anomalous position (0: unknown,
    # as in a replay without clients); not in as_dict, whose fields the replay prints
    clients: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "event": "campaign",
            "host": self.host,
            "first_seen": self.first_seen,
            "flagged_at": self.flagged_at,
            "sites": list(self.sites),
            "pages": self.pages,
            "score": round(self.score, 2),
            "evidence": list(self.evidence),
        }


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def is_ip(host: str) -> bool:
    if not (host[-1:].isdigit() or ":" in host):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def registrable(host: str) -> str:
    """The registrable domain of a host (``a.b.example.co.uk`` -> ``example.co.uk``); an
    IP address or a bare public suffix is its own."""
    if is_ip(host):
        return host
    return _psl().privatesuffix(host) or host


def _host_of(url: str, base: str) -> str | None:
    try:
        cu = canonicalize_url(url if "//" in url[:8] or ":" in url[:10] else base + url)
    except CanonError:
        return None
    # No DNS name is longer: such a host is reached by no one, and the detector keeps
    # up to 200,000 hosts (of 64 KB each, a page could make that 13 GB).
    return cu.host if 0 < len(cu.host) <= MAX_HOST_LENGTH else None


def _shape(element: str, attrs: Iterable[str], positions: Iterable[str]) -> str:
    text = element + "|" + ",".join(sorted(attrs)) + "|" + ",".join(sorted(positions))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def references(body: bytes, content_type: str | None, page_url: str) -> list[Reference]:
    """Every reference of a page to another site's host, with its positions."""
    try:
        page = canonicalize_url(page_url)
    except CanonError:
        return []
    site = registrable(page.host)
    base = f"{page.scheme}://{page.host}/"
    raw = body[:MAX_PAGE_BYTES]
    lower = raw.lower()
    end_marks = [i for i in (lower.rfind(b"</body"), lower.rfind(b"</html")) if i >= 0]
    end = min(end_marks) if end_marks else -1
    html_open = lower.find(b"<html")
    found: list[tuple[str, str, set[str], tuple[str, ...]]] = []

    def add(url: str, element: str, positions: set[str], attrs: Sequence[str]) -> None:
        host = _host_of(url, base)
        if host and registrable(host) != site:
            found.append((host, element, positions, tuple(attrs)))

    for el in parse_elements(raw, content_type):
        if el.alternative:
            continue  # the main reading is what the browser builds
        positions: set[str] = set()
        if el.after_html or (end >= 0 and el.start > end):
            positions.add("after-end")
        if html_open > 0 and el.start < html_open:
            positions.add("before-start")
        if _STRAY_REST.match(raw, el.end):
            positions.add("breaks-out")
        name = el.name.removeprefix("svg:")
        if name in ("iframe", "frame") and (
            el.attrs.get("width", "").strip() in _TINY
            or el.attrs.get("height", "").strip() in _TINY
            or _HIDDEN_STYLE.search(el.attrs.get("style", ""))
            or "hidden" in el.attrs
        ):
            positions.add("hidden-frame")
        attr = _URL_ATTRS.get(name)
        url = el.attrs.get(attr, "").strip() if attr else ""
        if url:
            add(url, name, positions, list(el.attrs))
        if name == "script" and el.text and not url:
            text = decode_script_text(el.text)
            if _WRITES_MARKUP.search(text):
                for m in _URL_IN_SCRIPT.finditer(text):
                    add("http://" + m.group(1) + "/", "script", positions | {"written"}, ["inline"])
    for field_match in _TEXT_FIELD.finditer(raw):
        for src in _SCRIPT_SRC_TEXT.finditer(field_match.group(2)):
            add(src.group(1).decode("latin-1"), "script", {"in-text"}, ["src"])

    counts: dict[tuple[str, str], int] = {}
    for host, element, _, _ in found:
        counts[(host, element)] = counts.get((host, element), 0) + 1
    out = []
    for host, element, positions, attrs in found:
        if element == "script" and counts[(host, element)] > 1:
            positions = positions | {"repeated"}
        out.append(
            Reference(host, element, frozenset(positions), _shape(element, attrs, positions))
        )
    return out


@dataclass(slots=True)
class _HostStats:
    first_seen: float
    established: bool  # first seen during the warm-up: part of the baseline
    sites: set[str] = field(default_factory=set)
    anomalous: dict[str, float] = field(default_factory=dict)  # site -> first odd sighting
    positions: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    flagged: bool = False
    clients: set[str] = field(default_factory=set)  # salted hashes


class CampaignDetector:
    """Per-host sightings and the campaign decision; see the module docstring."""

    def __init__(
        self,
        *,
        window: float = DEFAULT_WINDOW,
        min_sites: int = DEFAULT_MIN_SITES,
        warmup_seconds: float = DEFAULT_WARMUP_SECONDS,
        warmup_views: int = DEFAULT_WARMUP_VIEWS,
        max_hosts: int = DEFAULT_MAX_HOSTS,
        common: frozenset[str] = COMMON_THIRD_PARTIES,
    ) -> None:
        if min_sites < 2:
            raise ValueError("min_sites must be at least 2: one site is not a campaign")
        self.window = window
        self.min_sites = min_sites
        self.warmup_seconds = warmup_seconds
        self.warmup_views = warmup_views
        self.max_hosts = max_hosts
        self.common = common
        self.started: float | None = None
        self.views = 0
        self._hosts: OrderedDict[str, _HostStats] = OrderedDict()
        self._cleared: OrderedDict[str, float] = OrderedDict()  # host -> cleared at
        self._salt = secrets.token_hex(16)  # for the client hashes; kept with the state

    def __len__(self) -> int:
        return len(self._hosts)

    def warming_up(self, now: float) -> bool:
        return (
            self.started is None
            or now - self.started < self.warmup_seconds
            or self.views < self.warmup_views
        )

    def observe(
        self, now: float, page_url: str, refs: Sequence[Reference], client: str | None = None
    ) -> list[CampaignFinding]:
        """Record one page view's references; returns the hosts this view flagged.

        ``client`` (an address or user) is only counted, as a salted hash: how many
        distinct clients met the host in an anomalous position."""
        if self.started is None:
            self.started = now
        warming = self.warming_up(now)
        self.views += 1
        try:
            site = registrable(canonicalize_url(page_url).host)
        except CanonError:
            return []
        findings = []
        tag = self._client_tag(client) if client else None
        seen_here: set[str] = set()
        for ref in refs:
            host_site = registrable(ref.host)
            if host_site in self.common:
                continue
            stats = self._hosts.pop(ref.host, None)
            if stats is None:
                stats = _HostStats(first_seen=now, established=warming)
            self._hosts[ref.host] = stats  # most recently seen last
            if ref.host not in seen_here:
                stats.pages += 1
                seen_here.add(ref.host)
            if len(stats.sites) < MAX_SITES_PER_HOST:
                stats.sites.add(site)
            if ref.anomalous:
                if site not in stats.anomalous and len(stats.anomalous) < MAX_SITES_PER_HOST:
                    stats.anomalous[site] = now
                for p in ref.positions & ANOMALOUS:
                    stats.positions[p] = stats.positions.get(p, 0) + 1
                if ref.shape in stats.shapes or len(stats.shapes) < MAX_SHAPES_PER_HOST:
                    stats.shapes[ref.shape] = stats.shapes.get(ref.shape, 0) + 1
                if tag is not None and len(stats.clients) < MAX_CLIENTS_PER_HOST:
                    stats.clients.add(tag)
            finding = None if stats.flagged else self._judge(ref.host, stats, now)
            if finding is not None:
                stats.flagged = True
                if not self.cleared_recently(ref.host, now):
                    findings.append(finding)
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return findings

    def _client_tag(self, client: str) -> str:
        digest = hashlib.blake2b(client.encode(), key=self._salt.encode(), digest_size=6)
        return digest.hexdigest()

    def clear(self, host: str, now: float) -> None:
        """An operator cleared ``host``: no finding for it for ``window`` seconds."""
        self._cleared.pop(host, None)
        self._cleared[host] = now
        stats = self._hosts.get(host)
        if stats is not None:
            stats.flagged = True  # judged, and answered
        while len(self._cleared) > MAX_CLEARED:
            self._cleared.popitem(last=False)

    def cleared_recently(self, host: str, now: float) -> bool:
        at = self._cleared.get(host)
        return at is not None and now - at < self.window

    # -- state ----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the detector knows, as JSON data (hosts least recently seen first)."""
        return {
            "version": STATE_VERSION,
            "salt": self._salt,
            "started": self.started,
            "views": self.views,
            "hosts": [
                [
                    host,
                    s.first_seen,
                    s.established,
                    sorted(s.sites),
                    s.anomalous,
                    s.positions,
                    s.shapes,
                    s.pages,
                    s.flagged,
                    sorted(s.clients),
                ]
                for host, s in self._hosts.items()
            ],
            "cleared": dict(self._cleared),
        }

    @classmethod
    def from_state(cls, state: object, **settings: Any) -> CampaignDetector:
        """A detector with ``settings`` (as for the constructor) and the knowledge in
        ``state``; ValueError when it is not a document :meth:`to_state` wrote. The
        bounds of ``settings`` apply (a bigger document keeps its most recent hosts)."""
        det = cls(**settings)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("not a campaign detector state (or another version)")
        started, views = state.get("started"), state.get("views")
        hosts, cleared = state.get("hosts"), state.get("cleared")
        if started is not None and not _is_num(started):
            raise ValueError("'started' must be a number")
        if not isinstance(views, int) or isinstance(views, bool) or views < 0:
            raise ValueError("'views' must be a whole number")
        if not isinstance(hosts, list) or not isinstance(cleared, dict):
            raise ValueError("'hosts' must be a list and 'cleared' an object")
        salt = state.get("salt")
        if not isinstance(salt, str) or not 16 <= len(salt) <= 64:
            raise ValueError("'salt' must be a string of 16 to 64 characters")
        det._salt = salt
        det.started, det.views = (float(started) if started is not None else None), views
        for row in hosts[-det.max_hosts :]:
            host, stats = _stats_from_row(row)
            det._hosts.pop(host, None)
            det._hosts[host] = stats
        for host, at in list(cleared.items())[-MAX_CLEARED:]:
            if not isinstance(host, str) or not _is_num(at):
                raise ValueError("'cleared' maps hosts to times")
            det._cleared[host] = float(at)
        return det

    def _judge(self, host: str, s: _HostStats, now: float) -> CampaignFinding | None:
        if s.established or now - s.first_seen > self.window:
            return None
        odd = len(s.anomalous)
        if odd < self.min_sites or odd < MIN_ANOMALOUS_SHARE * len(s.sites):
            return None
        shaped = sum(s.shapes.values())
        top_shape = max(s.shapes.values(), default=0)
        if shaped and top_shape < MIN_SHAPE_SHARE * shaped:
            return None  # every site has its own odd tag for it: not one kit
        bare_ip = is_ip(host)
        score = odd + (1.0 if bare_ip else 0.0) + top_shape / max(1, shaped)
        evidence = [
            f"first seen {int((now - s.first_seen) // 60)} min before, referenced from "
            f"{len(s.sites)} unrelated sites, {odd} of them in anomalous positions",
            "positions: " + ", ".join(f"{p} x{n}" for p, n in sorted(s.positions.items())),
            f"{top_shape} of {shaped} anomalous references share one shape",
        ]
        if bare_ip:
            evidence.append("the host is a bare IP address")
        if s.clients:
            evidence.append(f"met by {len(s.clients)} distinct client(s)")
        return CampaignFinding(
            host=host,
            first_seen=s.first_seen,
            flagged_at=now,
            sites=tuple(sorted(s.anomalous)),
            pages=s.pages,
            score=score,
            evidence=tuple(evidence),
            clients=len(s.clients),
        )


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _counts(v: object, limit: int, what: str) -> dict[str, int]:
    if not isinstance(v, dict) or len(v) > limit:
        raise ValueError(f"{what}: at most {limit} names and counts")
    out = {}
    for k, n in v.items():
        if not isinstance(k, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{what}: names and counts")
        out[k] = n
    return out


def _stats_from_row(row: object) -> tuple[str, _HostStats]:
    """One host of a state document, checked (a file on disk is input like any other)."""
    if not isinstance(row, list) or len(row) != 10:
        raise ValueError("a host is a list of 10 fields")
    host, first_seen, established, sites, anomalous, positions, shapes, pages, flagged, clients = (
        row
    )
    if not isinstance(host, str) or not host or not _is_num(first_seen):
        raise ValueError("a host needs a name and a first-seen time")
    if not isinstance(established, bool) or not isinstance(flagged, bool):
        raise ValueError(f"{host}: 'established' and 'flagged' are true or false")
    if not isinstance(sites, list) or not all(isinstance(x, str) for x in sites):
        raise ValueError(f"{host}: 'sites' is a list of names")
    if not isinstance(anomalous, dict) or not all(
        isinstance(k, str) and _is_num(t) for k, t in anomalous.items()
    ):
        raise ValueError(f"{host}: 'anomalous' maps sites to times")
    if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
        raise ValueError(f"{host}: 'pages' is a whole number")
    if not isinstance(clients, list) or not all(isinstance(x, str) for x in clients):
        raise ValueError(f"{host}: 'clients' is a list of hashes")
    return host, _HostStats(
        first_seen=float(first_seen),
        established=established,
        sites=set(sites[:MAX_SITES_PER_HOST]),
        anomalous={k: float(t) for k, t in list(anomalous.items())[:MAX_SITES_PER_HOST]},
        positions=_counts(positions, len(ANOMALOUS), f"{host}: positions"),
        shapes=_counts(shapes, MAX_SHAPES_PER_HOST, f"{host}: shapes"),
        pages=pages,
        flagged=flagged,
        clients=set(clients[:MAX_CLIENTS_PER_HOST]),
    )


__all__ = [
    "ANOMALOUS",
    "COMMON_THIRD_PARTIES",
    "CampaignDetector",
    "CampaignFinding",
    "Reference",
    "is_ip",
    "references",
    "registrable",
]
