# One module on purpose (~2,500 lines): the tokenizer states, the tree walker, the judging
# of elements and the fast path share one cursor and per-scan state in hot loops; split
# along its section banners it would pay a module attribute lookup per token and let the
# parts drift from the one HTML5 model they implement. A split (document, tokens, walker,
# judging, fast path, scanner) is a follow-up once the scanner's speed work has landed.
"""Find and strip injected active content in an HTML body, seeing what a browser sees.

The scanner finds the ``script``, ``iframe``, ``frame``, ``object``, ``embed``,
``meta refresh`` and SVG ``script`` elements an HTML5 parser would build, and
reports those that load a blocked URL, whose inline text references a blocked
host or URL, that match an injection signature, or (``after_html`` policy) that
sit after the document's ``</html>`` end tag, where server-side footers such as
Download.Ject's land.

How it sees the document:

* A purpose-built tokenizer follows the WHATWG tokenizer states that decide
  where markup is (data, tags and their attributes, comments and bogus
  comments, RAWTEXT/RCDATA/PLAINTEXT elements, script data with its escaped
  and double-escaped states, CDATA in foreign content) and just enough of tree
  construction to know the namespace (SVG/MathML foreign content, breakout
  tags, integration points).
* Where browsers legitimately differ, both readings are scanned and the
  findings unioned: ``<noscript>`` is raw text with scripting on and markup
  with it off; inside ``<select>``, parsers with 2025's "customizable select"
  (and Lexbor) create ``<iframe>``/``<style>``/... and read raw text, older ones
  ignore the tag and read markup (and ignore ``<svg>``/``<math>`` there, so a
  ``<script>`` after it is HTML and loads); ``</p>`` and ``</br>`` leave
  SVG/MathML since 2022's change of the standard, not in older parsers
  (html5lib); an end tag that may close SVG/MathML depends
  on the open HTML elements outside it, which the scanner does not track, so it
  follows a guess and rescans the other reading until the two agree again.
* Clean pages are the common case, so ``scan`` first runs a cheap
  over-approximation: every ``<script``/``<iframe``/... occurrence is judged as
  if it were a real element (and every ``<svg``/``<math`` is followed precisely),
  which can only add candidates, never lose one. Only when that finds something
  does the precise tokenizer run over the whole body. Candidates are found with
  numpy on large bodies, and elements are remembered by their bytes (a script
  element's bytes decide where it ends, so the same bytes elsewhere are the
  same element), which makes rescanning a templated site's pages cheap.

Offsets are byte offsets into the original body. ASCII-compatible encodings
(UTF-8, windows-125x, Shift_JIS, GBK, EUC-*, Big5, ...) are tokenized as bytes:
none of them uses bytes below 0x40 inside a multi-byte character, and every
byte that steers the tokenizer (``<>/="'!?-`` and whitespace) is below 0x40.
UTF-16 (BOM or Content-Type) is tokenized through a projection that maps each
code unit to one byte, so offsets map back exactly. Stateful encodings such as
ISO-2022-JP are not supported (they are treated as ASCII-compatible).

Limits: bodies larger than ``max_bytes`` raise ``BodyTooLarge`` (the caller
streams them unscanned); at most ``MAX_ALT_SCANS`` alternative readings are
scanned per document, within a shared work budget (``_ALT_WORK_FACTOR`` times
the body); past it, every active-element candidate in the body is judged as if
it were a real HTML element (the fast path's over-approximation), so hostile
nesting costs time linear in the body and still misses nothing.

Known differences from a conforming tree builder (all err towards reporting):
``<frameset>`` documents and templates whose content starts with ``<col>`` are
not modelled (a browser ignores ``<script>``, ``<xmp>``, ... there, and reads
what follows as markup; the scanner scans both readings and reports both); an
end tag such as ``</template>`` or ``</td>`` that may close SVG/MathML content
past an integration point is followed both ways too; HTML content
inside an integration point is processed "in body" even when the SVG sits in a
table (where the table insertion mode can close it); implied end tags are not
generated for HTML elements inside integration points; ``<template>`` contents
are scanned like the rest of the document; query strings are resolved as
UTF-8 whatever the document encoding.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import html
import itertools
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from html.entities import html5 as _HTML5_ENTITIES
from typing import Protocol, SupportsIndex, TypeVar

import ada_url

from proxy_addons.core.canon import MAX_URL_LENGTH
from proxy_addons.core.charset import Charset, detect_charset, html_reading, is_html
from proxy_addons.core.errors import JectguardError
from proxy_addons.core.jsscan import MAX_TOKENIZED_CHARS, SinkKind, analyse, data_loader
from proxy_addons.core.prefilter import fold_ascii_case, required_literals
from proxy_addons.core.signatures import Signature

# Bigger bodies are streamed through unscanned: scanning buffers the whole body.
MAX_SCAN_BYTES = 10 * 1024 * 1024
# Alternative readings (noscript with scripting off, ambiguous foreign end tags)
# rescanned per document; each usually stops at the next interesting tag.
MAX_ALT_SCANS = 256
# Work allowed to all alternative readings together, as a multiple of the body size.
_ALT_WORK_FACTOR = 8
# Work allowed to the fast path's local SVG/MathML walks, as a multiple of the
# body size, before it gives up and lets the precise scan decide.
_FAST_FOREIGN_BUDGET = 4
# How far back the "is this HTML element open?" guess looks (bounds its cost).
_OPEN_GUESS_WINDOW = 65536
# Inline texts longer than this are judged every time rather than cached.
_INLINE_CACHE_MAX_CHARS = 16384
# Elements longer than this are not remembered by the fast path (memory).
_ELEMENT_CACHE_MAX_BYTES = 16384
# Event handler values longer than this are judged on every scan (memory: handlers are
# short; ``script_text`` still remembers the verdict of one up to 16K characters).
_HANDLER_CACHE_MAX_BYTES = 1024
# Entries per verdict cache (URL -> match, (base, ref) -> URL, text -> verdict);
# a full cache is simply emptied.
DEFAULT_CACHE_ENTRIES = 20000
# Characters (or bytes) of keys one cache may hold: a page chooses its URLs, texts and
# page URL, so a bound on entries alone let 20,000 entries of 64 KB URLs pile up (GBs
# over many pages, in the proxy itself for small pages). A full cache is emptied.
_CACHE_KEY_CHARS = 16 * 1024 * 1024
# A key longer than this is never remembered (judged again when met again).
_CACHE_KEY_MAX_CHARS = _INLINE_CACHE_MAX_CHARS + 4096
# Cache entries used within one scan when cross-scan caching is off.
_PER_SCAN_ENTRIES = 4096
# Longest rule text kept in the replacement comment.
_COMMENT_RULE_CHARS = 80

AFTER_HTML_POLICIES = ("off", "log", "strip")
# srcdoc and data: documents are scanned as documents this many levels deep; deeper
# ones are judged by the URLs they name (err towards removal).
_MAX_DOCUMENT_DEPTH = 3
# String values read from an import map or speculation rules (a bound on work).
_MAX_JSON_STRINGS = 10000
# Script text tokenized per scan to decide mention or load (jsscan reads ~0.5-1 MB/s);
# past it, a script naming a blocked host is removed as before (a hostile page full
# of mentions cannot make a scan slow).
_JS_WORK_CHARS = 1024 * 1024
_OVER_BUDGET = "not analysed (work budget)"
# Script text tokenized per scan to find a loader for data blocks that name a blocked
# origin (only on such pages): ~0.1 s at worst; past it, raw sink shapes decide.
_LOADER_WORK_CHARS = 64 * 1024


class BodyTooLarge(JectguardError, ValueError):
    """The body exceeds the scanner's ``max_bytes``; it was not scanned."""


class MatchLike(Protocol):
    """What ``is_blocked`` returns for a blocked URL (``proxy_addons.core.model.Match``)."""

    @property
    def list(self) -> str: ...

    @property
    def rule(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One active element the scanner reports.

    ``start``/``end`` are byte offsets into the original body (``end`` is past the
    end tag, or the end of the body if the element is never closed; for
    ``object`` without an end tag, past the start tag only, so its fallback
    content survives). ``removed`` says whether ``strip()`` removes it: false
    for ``after_html="log"`` findings and for matches from a list in monitor
    mode (``match.mode == "monitor"``), and for mentions (``reason ==
    "mention"``). ``evidence`` names what made an inline script's reference a
    load or an injection (``document.write``, ``eval``, ``src``...).

    ``cuts``: for an event handler, the start tag (``start``/``end``) stays and
    ``strip()`` replaces these byte spans instead, every occurrence of the handler
    attribute, each by an inert attribute. Removing the whole tag would change how
    the rest of the page is read (an ``<img>`` in SVG closes the SVG: without it a
    ``<title>`` after it is SVG's, and the markup in it, which was text, runs).
    """

    start: int
    end: int
    element: str
    url: str | None
    reason: str
    rule: str
    list: str
    removed: bool = True
    evidence: str | None = None
    cuts: tuple[tuple[int, int], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "element": self.element,
            "url": self.url,
            "reason": self.reason,
            "rule": self.rule,
            "list": self.list,
            "start": self.start,
            "end": self.end,
            "removed": self.removed,
            "evidence": self.evidence,
        }


@dataclass(slots=True)
class Element:
    """An element as the tokenizer saw it; offsets are in the scanned buffer."""

    name: str  # "script", "svg:script", "iframe", "frame", "object", "embed", "meta", "base"
    start: int
    end: int
    attrs: dict[str, str]
    text: str | None = None  # script text (inline scripts only)
    after_html: bool = False
    # "" in the main reading (scripting on); "noscript" in the scripting-off
    # reading of a <noscript>; "select" in the pre-2025 reading of a raw-text
    # element inside <select>; "foreign-end" in the other reading of an end tag
    # that may or may not close SVG/MathML content.
    alternative: str = ""


# --------------------------------------------------------------------------
# Document: the bytes to tokenize and the mapping back to the original body.

_HIGH_BYTES = bytes(range(128)) + b"\x80" * 128


# Encodings whose bytes change meaning with state (an escape sequence switches to a
# two-byte set in which "<" and "-" are halves of characters): the scanner reads them
# as ASCII, so its readings are not the browser's (see ``_Doc.exact``).
_STATEFUL_ENCODINGS = ("iso2022", "hz")


class _Doc:
    __slots__ = ("bom", "buf", "charset", "encoding", "exact", "raw", "reading", "utf16")

    def __init__(self, raw: bytes, charset: Charset, *, html: bool = True) -> None:
        self.raw = raw
        self.charset = charset
        self.utf16 = charset.is_utf16
        self.bom = charset.bom
        self.encoding = charset.encoding
        # Whether the HTML readings are what the browser builds: not for a document it
        # parses as XML (XHTML: a <textarea> holds markup, entities expand) nor in a
        # stateful encoding. Where they are not, what only a reading can place (a
        # handler's tag) is not trusted to a reading: a handler that loads anywhere
        # refuses the page (``HandlersUnplaced``).
        self.exact = html and not charset.encoding.startswith(_STATEFUL_ENCODINGS)
        self.reading: _Reading | None = None  # the precise walk, once it has run
        if self.utf16:
            self.buf = _project_utf16(raw[self.bom :], big_endian=charset.encoding == "utf-16be")
        else:
            self.buf = raw

    def text(self, start: int, end: int) -> str:
        """Decoded text of buffer positions [start, end)."""
        if self.utf16:
            chunk = self.raw[self.bom + 2 * start : self.bom + 2 * end]
            return chunk.decode(self.encoding, "replace")
        return self.raw[start:end].decode(self.encoding, "replace")

    def raw_slice(self, start: int, end: int) -> bytes:
        """The original bytes of buffer positions [start, end)."""
        return self.raw[self.offset(start) : self.offset(end)]

    def offset(self, pos: int) -> int:
        """Byte offset in the original body of buffer position ``pos``."""
        return self.bom + 2 * pos if self.utf16 else pos


def _project_utf16(body: bytes, *, big_endian: bool) -> bytes:
    """One byte per UTF-16 code unit: the unit itself if ASCII, else 0x80."""
    body = body[: len(body) & ~1]
    lo, hi = (body[1::2], body[0::2]) if big_endian else (body[0::2], body[1::2])
    out = bytearray(lo.translate(_HIGH_BYTES))
    for m in re.finditer(rb"[^\x00]+", hi):
        out[m.start() : m.end()] = b"\x80" * (m.end() - m.start())
    return bytes(out)


# --------------------------------------------------------------------------
# Tokenizer pieces. All quantifiers are possessive: the tokenizer never
# backtracks, and a regex that could would disagree with it on malformed input.

_VALUE = rb"""(?:"[^"]*+"?+|'[^']*+'?+|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))"""
_ATTRS = (
    rb"(?:[\t\n\f\r ]++|/(?!>)|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rb"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+" + _VALUE + rb")?+)*+"
)
_TAG_BODY = rb"[A-Za-z][^\t\n\f\r />]*+" + _ATTRS + rb"/?>"
# A whole start or end tag from its "<"; no match means EOF inside the tag.
_TAG = re.compile(rb"<(/?)([A-Za-z][^\t\n\f\r />]*+)(" + _ATTRS + rb")(/?)>")
_TAG_TEXT = re.compile(_TAG.pattern.decode("ascii"))
_ATTR_TEXT = re.compile(
    r"[\t\n\f\r /]*+([^\t\n\f\r />][^\t\n\f\r />=]*+)"
    r"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >"'][^\t\n\f\r >]*+)|(?=\Z)))?+"""
)
# The same, over the bytes of a tag: where each attribute is (handlers are cut there).
_ATTR_SPANS = re.compile(_ATTR_TEXT.pattern.encode("ascii"))
# What strip() writes in place of a handler attribute it cuts: an inert attribute (a
# space after it: a quoted value may be followed by the next name directly).
_CUT_ATTRIBUTE = "data-jectguard-removed "
_COMMENT_BODY = rb"!--(?:-?>|[^-]*+(?:-(?!-!?>)[^-]*+)*+(?:--!?>)?+)"
_COMMENT = re.compile(rb"<" + _COMMENT_BODY)
_CDATA_END = re.compile(rb"\]\]>")

# Start tags that matter in HTML content: they are active, set the base URL,
# switch the tokenizer, or enter foreign content.
_PLAIN_INTERESTING = (
    b"script|iframe|frame|object|embed|meta|base|noscript|style|xmp|textarea|title|"
    b"noembed|noframes|plaintext|svg|math|select"
)
# End tags that matter in HTML content.
_PLAIN_END_STOPS = b"html|object|select"
_SKIP = re.compile(
    rb"(?:[^<]++|<(?:"
    + _COMMENT_BODY
    + rb"|!(?!--)[^>]*+>?+|\?[^>]*+>?+|/(?![A-Za-z])[^>]*+>?+"
    + rb"|/(?!(?i:"
    + _PLAIN_END_STOPS
    + rb")[\t\n\f\r />])"
    + _TAG_BODY
    + rb"|(?!(?i:"
    + _PLAIN_INTERESTING
    + rb")[\t\n\f\r />])"
    + _TAG_BODY
    + rb"|(?![A-Za-z!/?])))*+"
)

# Within a stretch _SKIP read past (data state), to place a handler in its tag: the
# data-state tokens (as _SKIP reads them; a stretch holds no end tag that ends one),
# one at a time, and _COMPLETE_TOKENS, only the tokens that end where the buffer is
# cut (a comment, bogus comment or tag without its terminator there matches none):
# cut at a position, it stops at the start of the token around that position.
_DATA_TOKEN = re.compile(
    rb"[^<]++|<(?:"
    + _COMMENT_BODY
    + rb"|!(?!--)[^>]*+>?+|\?[^>]*+>?+|/(?![A-Za-z])[^>]*+>?+|/?"
    + _TAG_BODY
    + rb"|(?![A-Za-z!/?]))"
)
_COMPLETE_TOKENS = re.compile(
    rb"(?:[^<]++|<(?:!--(?:-?>|[^-]*+(?:-(?!-!?>)[^-]*+)*+--!?>)"
    + rb"|!(?!--)[^>]*+>|\?[^>]*+>|/(?![A-Za-z])[^>]*+>|/?"
    + _TAG_BODY
    + rb"|(?![A-Za-z!/?])))*+"
)

_SCRIPT_DATA = re.compile(rb"<!--|</(?i:script)[\t\n\f\r />]")
_SCRIPT_ESCAPED = re.compile(rb"-->|</(?i:script)[\t\n\f\r />]|<(?i:script)[\t\n\f\r />]")
_SCRIPT_DOUBLE = re.compile(rb"-->|</(?i:script)[\t\n\f\r />]")
# RAWTEXT/RCDATA start tags that the pre-2025 "in select" insertion mode ignores.
_IGNORED_IN_OLD_SELECT = frozenset(
    {b"iframe", b"noembed", b"noframes", b"noscript", b"style", b"xmp", b"title", b"plaintext"}
)
_RAW_END: dict[bytes, re.Pattern[bytes]] = {
    name: re.compile(rb"</(?i:" + name + rb")[\t\n\f\r />]")
    for name in (
        b"iframe",
        b"noembed",
        b"noframes",
        b"noscript",
        b"style",
        b"xmp",
        b"textarea",
        b"title",
    )
}


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


_VOID = _names(
    "area base basefont bgsound br col embed frame hr image img input keygen link meta "
    "param source track wbr"
)
_HTML_SPECIAL = _names(
    "address applet area article aside base basefont bgsound blockquote body br button "
    "caption center col colgroup dd details dir div dl dt embed fieldset figcaption figure "
    "footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html iframe img "
    "input keygen li link listing main marquee menu meta nav noembed noframes noscript "
    "object ol p param plaintext pre script search section select source style summary "
    "table tbody td template textarea tfoot th thead title tr track ul wbr xmp"
)
# Start tags that leave foreign content ("breakout" tags).
_BREAKOUT = _names(
    "b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head hr "
    "i img li listing menu meta nobr ol p pre ruby s small span strong strike sub sup "
    "table tt u ul var"
)
# HTML elements that cannot be open around foreign content: void elements, those
# whose content is text (their end tag is found by the tokenizer), and svg and math,
# which are never HTML elements (an unmatched </math> under <svg> closes nothing).
_NEVER_OPEN = _VOID | _names(
    "script style xmp iframe noembed noframes noscript textarea title plaintext svg math"
)
# End tags whose insertion-mode rules look past MathML/SVG integration points: "in
# head" closes a template anywhere on the stack; the table modes use table scope,
# whose only boundaries are html, table and template.
_SCOPE_FREE_ENDS = _names("template table caption colgroup tbody tfoot thead tr td th")
# Start tags that switch the tokenizer (script data, RAWTEXT, RCDATA, PLAINTEXT)
# when the tree builder acts on them; where it ignores them, the tokenizer stays put.
_TOKENIZER_SWITCHES = frozenset(
    {b"script", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript",
     b"textarea", b"title", b"plaintext"}
)  # fmt: skip
_FRAMESET_AT = re.compile(rb"<(?i:frameset)[\t\n\f\r />]")
_TEMPLATE_AT = re.compile(rb"<(?i:template)[\t\n\f\r />]")
_COL_AT = re.compile(rb"<(?i:col)[\t\n\f\r />]")
# Start tags "in body" ignores (parse error) but the table modes act on: inside an
# integration point (read in body; a table around the SVG is not tracked) both
# readings are scanned.
_IGNORED_IN_BODY = _names("caption col colgroup frame head tbody td tfoot th thead tr")
_MATH_TEXT_IP = frozenset({"mi", "mo", "mn", "ms", "mtext"})
_SVG_HTML_IP = frozenset({"foreignobject", "desc", "title"})
_ACTIVE = frozenset({"script", "svg:script", "iframe", "frame", "object", "embed", "meta"})

HTML_NS, SVG_NS, MATH_NS = 0, 1, 2
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class _Node:
    """An open element inside foreign content (or HTML inside an integration point)."""

    ns: int
    name: str  # lower-cased
    html_ip: bool = False  # an HTML integration point
    text_ip: bool = False  # a MathML text integration point
    special: bool = False
    script: int = -1  # index of its Element when it is an SVG script
    texts: list[str] = field(default_factory=list)


class _Stack(list[_Node]):
    """The foreign-content stack, indexed: where each name, the topmost HTML node and
    the topmost special node are. End tags ask those questions; walking the stack to
    answer them made thousands of end tags over a deep stack quadratic."""

    __slots__ = ("at_name", "at_html_name", "at_html", "at_special")

    def __init__(self, nodes: Iterable[_Node] = ()) -> None:
        super().__init__()
        self.at_name: dict[str, list[int]] = {}
        self.at_html_name: dict[str, list[int]] = {}
        self.at_html: list[int] = []
        self.at_special: list[int] = []
        for node in nodes:
            self.append(node)

    def append(self, node: _Node) -> None:
        i = len(self)
        super().append(node)
        self.at_name.setdefault(node.name, []).append(i)
        if node.ns == HTML_NS:
            self.at_html.append(i)
            self.at_html_name.setdefault(node.name, []).append(i)
        if node.special:
            self.at_special.append(i)

    def pop(self, index: SupportsIndex = -1) -> _Node:
        if index != -1:
            raise ValueError("the foreign stack is popped from the top only")
        node = super().pop()
        self.at_name[node.name].pop()
        if node.ns == HTML_NS:
            self.at_html.pop()
            self.at_html_name[node.name].pop()
        if node.special:
            self.at_special.pop()
        return node

    def clear(self) -> None:
        super().clear()
        self.at_name.clear()
        self.at_html_name.clear()
        self.at_html.clear()
        self.at_special.clear()

    def fresh(self) -> list[_Node]:
        """Copies of the open nodes, without open-script state: an alternative's stack."""
        return [_Node(x.ns, x.name, x.html_ip, x.text_ip, x.special) for x in self]

    @staticmethod
    def _top(where: list[int] | None) -> int:
        return where[-1] if where else -1

    def top_named(self, name: str) -> int:
        return self._top(self.at_name.get(name))

    def top_html_named(self, name: str) -> int:
        return self._top(self.at_html_name.get(name))

    def top_html(self) -> int:
        return self._top(self.at_html)

    def top_special(self) -> int:
        return self._top(self.at_special)


def _norm(text: str) -> str:
    """The input-stream preprocessing browsers apply: CRLF/CR -> LF, NUL -> U+FFFD."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text


_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]{0,31};?)")


def _attr_ref(m: re.Match[str]) -> str:
    run = m.group(1)
    if run[0] == "#":
        return html.unescape("&" + run)
    for size in range(len(run), 1, -1):
        name = run[:size]
        if name in _HTML5_ENTITIES:
            if name.endswith(";"):
                return _HTML5_ENTITIES[name] + run[size:]
            # A legacy reference without ';' stays literal in an attribute when
            # followed by '=' or an alphanumeric ("&copy=1" in a query string).
            nxt = run[size : size + 1] or m.string[m.end() : m.end() + 1]
            if nxt == "=" or nxt.isalnum():
                return m.group(0)
            return _HTML5_ENTITIES[name] + run[size:]
    return m.group(0)


def unescape_attr(value: str) -> str:
    """Decode character references as the tokenizer does inside an attribute value."""
    if "&" not in value:
        return value
    return _CHARREF.sub(_attr_ref, value)


def parse_attrs(text: str) -> dict[str, str]:
    """Attributes of a tag from the text between its name and ``/?>``; the first duplicate wins."""
    attrs: dict[str, str] = {}
    for m in _ATTR_TEXT.finditer(text):
        name = m.group(1).lower()
        if "\r" in name or "\x00" in name:
            name = _norm(name)
        if name in attrs:
            continue
        value = m.group(2)
        if value is None:
            value = m.group(3)
            if value is None:
                value = m.group(4) or ""
        if "\r" in value or "\x00" in value:
            value = _norm(value)
        attrs[name] = unescape_attr(value) if "&" in value else value
    return attrs


def _script_end(buf: bytes, pos: int) -> tuple[int, int]:
    """(end of the script text, end of the element) for script data starting at ``pos``."""
    n = len(buf)
    state = 0  # 0 script data, 1 escaped, 2 double escaped
    while True:
        pattern = _SCRIPT_DATA if state == 0 else _SCRIPT_ESCAPED if state == 1 else _SCRIPT_DOUBLE
        m = pattern.search(buf, pos)
        if m is None:
            return n, n
        tok = m.group()
        if tok == b"<!--":
            state, pos = 1, m.start() + 2  # its "--" counts towards "-->"
        elif tok == b"-->":
            state, pos = 0, m.end()
        elif tok[1:2] == b"/":
            if state == 2:
                state, pos = 1, m.end()
                continue
            tag = _TAG.match(buf, m.start())
            return m.start(), (tag.end() if tag else n)
        else:  # "<script" + terminator in the escaped state
            state, pos = 2, m.end()


def _raw_end(buf: bytes, pos: int, name: bytes) -> tuple[int, int]:
    """(end of the text, end of the element) for RAWTEXT/RCDATA content from ``pos``."""
    m = _RAW_END[name].search(buf, pos)
    if m is None:
        return len(buf), len(buf)
    tag = _TAG.match(buf, m.start())
    return m.start(), (tag.end() if tag else len(buf))


# --------------------------------------------------------------------------
# The precise walker.


class _Walk:
    """One reading of the document, from ``pos`` in a given state, emitting elements."""

    def __init__(
        self,
        shared: _Shared,
        pos: int,
        *,
        fstack: list[_Node] | None = None,
        scripting: bool = True,
        alternative: str = "",
        clamp: int = -1,
        after_html: bool = False,
        local: bool = False,
    ) -> None:
        self.s = shared
        self.buf = shared.doc.buf
        self.n = len(self.buf)
        self.pos = pos
        self.origin = pos
        self.fstack = _Stack(fstack or ())
        self.scripting = scripting
        self.alternative = alternative
        self.clamp = clamp
        self.after_html = after_html
        self.local = local  # fast path: follow one foreign subtree, then stop
        # Where this reading reads start tags (recorded for readings with scripting
        # on, where handlers run), in order: a reading moves forward.
        self.track: _Track | None = None
        if shared.record and scripting:
            self.track = _Track()
            shared.tracks.append(self.track)
        self.objects: list[int] = []
        self.select_open = False
        # The pre-2025 "in select" reading: <svg> and <math> inside <select> are
        # ignored (their content is HTML), see _queue_old_select_foreign.
        self.old_select = False
        self.foreign_root = pos
        self.work = 0
        # For a scripting-off reading queued by the main reading: its <noscript> tag.
        self.noscript_at = -1

    # ---- output

    def _emit(
        self, name: str, start: int, end: int, attrs: dict[str, str], text: str | None
    ) -> int:
        if self.clamp >= 0 and end > self.clamp:
            end = max(self.clamp, start)
        el = Element(name, start, end, attrs, text, self.after_html, self.alternative)
        self.s.elements.append(el)
        return len(self.s.elements) - 1

    def _attrs(self, tag: re.Match[bytes]) -> dict[str, str]:
        start, end = tag.span(3)
        if start == end:
            return {}
        return parse_attrs(self.s.doc.text(start, end))

    # ---- driving

    def run(self) -> None:
        buf, n = self.buf, self.n
        while self.pos < n:
            if self.fstack:
                self._foreign_token()
                if self.local and not self.fstack:
                    return
                continue
            if self.local and self.pos > self.origin:
                return
            skipped = _SKIP.match(buf, self.pos)
            p = skipped.end() if skipped else self.pos  # (it always matches)
            if self.track is not None and p > self.pos:
                self.track.stretches.append((self.pos, p))
            if p >= n:
                self.pos = n
                break
            if self.alternative and p > self.origin and p in self.s.sync:
                return  # back in step with the main reading
            if not self.alternative and not self.local:
                self.s.sync.add(p)
            self._plain_tag(p)
        self._finish()

    def _finish(self) -> None:
        for node in self.fstack:
            if node.script >= 0:
                self._close_script(node, self.n)
        self.fstack.clear()

    def _plain_tag(self, p: int) -> None:
        tag = _TAG.match(self.buf, p)
        if tag is None:
            self.pos = self.n  # EOF inside a tag: the rest of the body is that tag
            return
        self.pos = tag.end()
        name = tag.group(2).lower()
        if tag.group(1):
            if name == b"html":
                self.after_html = True
            elif name == b"object" and self.objects:
                self.s.elements[self.objects.pop()].end = tag.end()
            elif name == b"select":
                self.select_open = False
            return
        if self.track is not None:
            self.track.tags.append((p, tag.end()))
        if name == b"select":
            self.select_open = True
            return
        if self.select_open and name in (b"svg", b"math"):
            if self.old_select:
                return  # ignored: what follows is HTML
            self._queue_old_select_foreign(tag)
        elif self.select_open and name in _IGNORED_IN_OLD_SELECT:
            self._queue_old_select(tag, name)
        elif name in _TOKENIZER_SWITCHES and self.s.may_ignore(p):
            self._queue_ignored(tag, name)
        self._html_start(p, tag, name)

    def _queue_ignored(self, tag: re.Match[bytes], name: bytes) -> None:
        """A tree builder in "in frameset" or in a template's "in column group" mode ignores
        this tag, and then its content is markup, not text. Scan that reading too."""
        if (name == b"noscript" and not self.scripting) or self.alternative == "ignored":
            return  # no raw text to begin with; one level (nested ones multiply the work)
        self._queue_markup_reading(tag, name, "ignored")

    def _queue_old_select(self, tag: re.Match[bytes], name: bytes) -> None:
        """Inside <select>, browsers without "customizable select" ignore this tag.

        Modern parsers (and Lexbor) create the element and read its content as
        raw text; older ones (the "in select" insertion mode) drop the tag and
        read on as markup. Scan that reading too.
        """
        self._queue_markup_reading(tag, name, "select")

    def _queue_old_select_foreign(self, tag: re.Match[bytes]) -> None:
        """Inside <select>, browsers without "customizable select" ignore <svg>/<math>.

        Modern parsers (and Lexbor) enter foreign content, where a <script> is an
        SVG or MathML element; older ones (Firefox in 2026) drop the tag and build
        an HTML <script> that loads. Scan that reading too, until it meets the
        main reading again.
        """
        if not self.s.room(tag.end(), self.scripting):
            return
        walk = _Walk(
            self.s,
            tag.end(),
            scripting=self.scripting,
            alternative=self.alternative or "select",
            clamp=self.clamp,
            after_html=self.after_html,
        )
        walk.select_open = walk.old_select = True
        self.s.queue_alt(walk)

    def _queue_markup_reading(self, tag: re.Match[bytes], name: bytes, label: str) -> None:
        """The reading in which this raw-text start tag is dropped and markup reads on."""
        if not self.s.room(tag.end(), self.scripting):
            return
        end = tag.end()
        if name == b"plaintext":
            text_end = len(self.buf)
        elif name == b"script":
            text_end = _script_end(self.buf, end)[0]
        else:
            text_end = _raw_end(self.buf, end, name)[0]
        walk = _Walk(
            self.s,
            end,
            scripting=self.scripting,
            alternative=self.alternative or label,
            clamp=text_end if self.clamp < 0 else min(text_end, self.clamp),
            after_html=self.after_html,
        )
        walk.select_open = label == "select"
        self.s.queue_alt(walk)

    def _html_start(self, p: int, tag: re.Match[bytes], name: bytes) -> None:
        """A start tag processed by HTML rules (in body, or inside an integration point)."""
        buf = self.buf
        end = tag.end()
        self.pos = end
        if (
            self.alternative == "ignored"
            and name in _TOKENIZER_SWITCHES
            and not self.fstack
            and self.s.may_ignore(p)
        ):
            # The reading in which the tree builder ignores such tags: markup reads on.
            # The element is still reported by its attributes (past a </template> it
            # would be real): a superset.
            if name == b"script":  # with its text read as a real one would be
                text, el_end = "", end
                if self.s.ignored_texts < MAX_ALT_SCANS:  # each may read to the end
                    self.s.ignored_texts += 1
                    text_end, el_end = _script_end(buf, end)
                    text = _norm(self.s.doc.text(end, text_end))
                self._emit("script", p, el_end, self._attrs(tag), text)
            elif name == b"iframe":
                self._emit("iframe", p, end, self._attrs(tag), None)
            return
        if name == b"script":
            text_end, el_end = _script_end(buf, end)
            text = _norm(self.s.doc.text(end, text_end))
            self._emit("script", p, el_end, self._attrs(tag), text)
            self.pos = el_end
        elif name in (b"iframe", b"noembed", b"noframes", b"style", b"xmp", b"textarea", b"title"):
            _, el_end = _raw_end(buf, end, name)
            if name == b"iframe":
                self._emit("iframe", p, el_end, self._attrs(tag), None)
            self.pos = el_end
        elif name == b"noscript":
            if not self.scripting:
                self._push_html("noscript")
                return
            text_end, el_end = _raw_end(buf, end, name)
            # Scripting off reads the same bytes as markup: scan that reading too.
            # Inside an integration point the <noscript> is the current node (an
            # HTML one: "<![CDATA[" there is a bogus comment, not a CDATA section).
            fstack = self.fstack.fresh()
            if fstack:
                fstack.append(_Node(HTML_NS, "noscript", special=True))
            walk = _Walk(
                self.s,
                end,
                fstack=fstack,
                scripting=False,
                alternative=self.alternative or "noscript",
                clamp=text_end if self.clamp < 0 else min(text_end, self.clamp),
                after_html=self.after_html,
            )
            if not self.alternative:
                walk.noscript_at = p
            self.s.queue_alt(walk)
            self.pos = el_end
        elif name == b"plaintext":
            self.pos = self.n
        elif name in (b"svg", b"math"):
            if not tag.group(4):
                ns = SVG_NS if name == b"svg" else MATH_NS
                if not self.fstack:
                    self.foreign_root = p
                self.fstack.append(_Node(ns, name.decode()))
        elif name == b"object":
            idx = self._emit("object", p, end, self._attrs(tag), None)
            if not self.fstack:
                self.objects.append(idx)
        elif name in (b"embed", b"frame", b"meta", b"base"):
            self._emit(name.decode(), p, end, self._attrs(tag), None)
        elif self.fstack:
            sname = name.decode("latin-1")
            if sname in _IGNORED_IN_BODY and self.s.room(end, self.scripting):
                # "In body" ignores it; "in cell" or "in row" (the SVG sits in a table,
                # which is not tracked) acts on it. Read on both ways.
                self.s.queue_alt(
                    _Walk(
                        self.s,
                        end,
                        fstack=self.fstack.fresh(),
                        scripting=self.scripting,
                        alternative=self.alternative or "ignored",
                        clamp=self.clamp,
                        after_html=self.after_html,
                    )
                )
            self._push_html(sname)

    def _push_html(self, name: str) -> None:
        if self.fstack and name not in _VOID:
            self.fstack.append(_Node(HTML_NS, name, special=name in _HTML_SPECIAL))

    # ---- foreign content

    def _foreign_token(self) -> None:
        buf, n = self.buf, self.n
        pos = self.pos
        lt = buf.find(b"<", pos)
        top = self.fstack[-1]
        if lt < 0:
            lt = n
        if lt > pos:
            if top.script >= 0:
                top.texts.append(html.unescape(self.s.doc.text(pos, lt)))
            self.work += lt - pos
            self.pos = lt
            if lt >= n:
                self._finish()
            return
        c = buf[lt + 1 : lt + 2]
        self.work += 16
        if c == b"!":
            if buf.startswith(b"<!--", lt):
                m = _COMMENT.match(buf, lt)
                self.pos = m.end() if m else n
            elif buf.startswith(b"<![CDATA[", lt) and top.ns != HTML_NS:
                m = _CDATA_END.search(buf, lt + 9)
                stop = m.start() if m else n
                if top.script >= 0:
                    top.texts.append(self.s.doc.text(lt + 9, stop))
                self.pos = m.end() if m else n
            else:
                gt = buf.find(b">", lt)
                self.pos = gt + 1 if gt >= 0 else n
        elif c == b"?":
            gt = buf.find(b">", lt)
            self.pos = gt + 1 if gt >= 0 else n
        elif c == b"/":
            if buf[lt + 2 : lt + 3].isalpha():
                tag = _TAG.match(buf, lt)
                if tag is None:
                    self.pos = n
                    self._finish()
                    return
                self.pos = tag.end()
                self._foreign_end(lt, tag, tag.group(2).lower().decode("latin-1"))
            elif buf.startswith(b"</>", lt):
                self.pos = lt + 3
            elif lt + 2 >= n:
                self._text_lt(top, lt, n)
            else:
                gt = buf.find(b">", lt)
                self.pos = gt + 1 if gt >= 0 else n
        elif c.isalpha():
            tag = _TAG.match(buf, lt)
            if tag is None:
                self.pos = n
                self._finish()
                return
            self.pos = tag.end()
            if self.track is not None:
                self.track.tags.append((lt, tag.end()))
            self._foreign_start(lt, tag, tag.group(2).lower())
        else:
            self._text_lt(top, lt, lt + 1)

    def _text_lt(self, top: _Node, lt: int, end: int) -> None:
        if top.script >= 0:
            top.texts.append(self.s.doc.text(lt, end))
        self.pos = end

    def _uses_html_rules(self, top: _Node, name: bytes | None) -> bool:
        """The tree-construction dispatcher, for a start tag ``name`` (None: end tag)."""
        if top.ns == HTML_NS:
            return True
        if name is None:
            return False
        if top.html_ip:
            return True
        if top.text_ip and name not in (b"mglyph", b"malignmark"):
            return True
        return top.ns == MATH_NS and top.name == "annotation-xml" and name == b"svg"

    def _foreign_start(self, p: int, tag: re.Match[bytes], name: bytes) -> None:
        while self.fstack:
            top = self.fstack[-1]
            if self._uses_html_rules(top, name):
                self._html_start(p, tag, name)
                return
            sname = name.decode("latin-1")
            breakout = sname in _BREAKOUT
            if sname == "font":
                attrs = self._attrs(tag)
                breakout = any(k in attrs for k in ("color", "face", "size"))
            if breakout:
                self._pop_to_html_or_ip(p)
                continue
            attrs = self._attrs(tag) if sname in ("script", "annotation-xml") else {}
            node = _Node(top.ns, sname)
            if top.ns == SVG_NS:
                node.html_ip = sname in _SVG_HTML_IP
                node.special = node.html_ip
                if sname == "script":
                    node.script = self._emit("svg:script", p, tag.end(), attrs, "")
            else:
                node.text_ip = sname in _MATH_TEXT_IP
                node.special = node.text_ip or sname == "annotation-xml"
                if sname == "annotation-xml":
                    enc = attrs.get("encoding", "").lower()
                    node.html_ip = enc in ("text/html", "application/xhtml+xml")
            if tag.group(4):  # self-closing: acknowledged, popped at once
                if node.script >= 0:
                    self._close_script(node, tag.end())
                return
            self.fstack.append(node)
            return
        self._html_start(p, tag, name)

    def _pop_to_html_or_ip(self, at: int) -> None:
        while self.fstack:
            top = self.fstack[-1]
            if top.ns == HTML_NS or top.html_ip or top.text_ip:
                return
            self._pop(at)

    def _pop(self, at: int) -> None:
        node = self.fstack.pop()
        if node.script >= 0:
            self._close_script(node, at)

    def _close_script(self, node: _Node, end: int) -> None:
        el = self.s.elements[node.script]
        el.end = end if self.clamp < 0 else min(end, max(self.clamp, el.start))
        el.text = _norm("".join(node.texts))
        node.script = -1

    def _foreign_end(self, p: int, tag: re.Match[bytes], name: str) -> None:
        stack = self.fstack
        top = stack[-1]
        if top.ns == HTML_NS:
            self._html_end(p, tag, name)
            return
        if name in ("br", "p"):
            # Parsers from before 2022's change of the standard (html5lib) leave the
            # foreign content open: an SVG <script> reads on. Scan that reading too.
            if not self.local and self.s.room(tag.end(), self.scripting):
                self.s.queue_alt(
                    _Walk(
                        self.s,
                        tag.end(),
                        fstack=self.fstack.fresh(),
                        scripting=self.scripting,
                        alternative="foreign-end",
                        clamp=self.clamp,
                        after_html=self.after_html,
                    )
                )
            self._pop_to_html_or_ip(p)
            return
        if name == "script" and top.script >= 0:
            self._close_script(stack.pop(), tag.end())
            return
        # From the top down: a node of that name closes, unless an HTML node comes
        # first (its own name included): then the HTML rules decide; past the bottom,
        # the tag goes to the HTML stack outside.
        i, h = stack.top_named(name), stack.top_html()
        if i > h:
            while len(stack) > i:
                self._pop(p)
        elif h >= 0:
            self._html_end(p, tag, name)
        else:
            self._escaping_end(p, tag, name)

    def _html_end(self, p: int, tag: re.Match[bytes], name: str) -> None:
        """In-body "any other end tag" over the tracked part of the stack."""
        stack = self.fstack
        # From the top down: an HTML node of that name closes, a special node (checked
        # second, at the same node) stops the walk.
        i, s = stack.top_html_named(name), stack.top_special()
        if i >= 0 and i >= s:
            while len(stack) > i:
                self._pop(p)
        elif s >= 0 and name in _SCOPE_FREE_ENDS:
            self._escaping_end(p, tag, name)  # it may reach past the boundary

    def _probably_open(self, name: str) -> bool:
        """``_probably_open_uncached`` for this foreign subtree, computed once per name."""
        key = (self.foreign_root, name)
        cache = self.s.open_guesses
        if key not in cache:
            cache[key] = _probably_open_uncached(self.buf, self.foreign_root, name)
        return cache[key]

    def _escaping_end(self, p: int, tag: re.Match[bytes], name: str) -> None:
        """An end tag that no open foreign element matches: it goes to the HTML stack outside.

        Whether it closes the foreign content depends on the HTML elements open
        outside it, which are not tracked: guess from the tags before it, and
        scan the other reading as an alternative.
        """
        if name not in _SCOPE_FREE_ENDS and self.fstack.top_special() >= 0:
            return  # an integration point on the way stops the walk: ignored
        if name == "html":
            self.after_html = True
            return
        if name == "body" or self.local:
            # (The fast path covers "it closes" by judging every candidate as HTML.)
            return
        never_open = name in _NEVER_OPEN and (name != "noscript" or self.scripting)
        closes = not never_open and self._probably_open(name)
        # Copies and alternatives only while there is room for them: thousands of
        # such end tags must not cost thousands of stack copies (quadratic).
        room = self.s.room(tag.end(), self.scripting)
        alt_stack: list[_Node] = []
        if closes:
            if room:
                alt_stack = self.fstack.fresh()
            for node in self.fstack:
                if node.script >= 0:
                    self._close_script(node, p)
            self.fstack.clear()
        if not room:
            return
        self.s.queue_alt(
            _Walk(
                self.s,
                tag.end(),
                fstack=alt_stack,
                scripting=self.scripting,
                alternative="foreign-end",
                clamp=self.clamp,
                after_html=self.after_html,
            )
        )


def _probably_open_uncached(buf: bytes, end: int, name: str) -> bool:
    """Whether an HTML element ``name`` is probably open before ``end`` (a heuristic)."""
    try:
        bname = re.escape(name.encode("ascii"))
    except UnicodeEncodeError:
        return False
    window = buf[max(0, end - _OPEN_GUESS_WINDOW) : end]
    opens = len(re.findall(rb"<(?i:" + bname + rb")[\t\n\f\r />]", window))
    closes = len(re.findall(rb"</(?i:" + bname + rb")[\t\n\f\r />]", window))
    return opens > closes


class _Shared:
    """State shared by the main reading and its alternatives."""

    def __init__(self, doc: _Doc, *, record: bool = False) -> None:
        self.doc = doc
        self.elements: list[Element] = []
        # With ``record``: where each reading with scripting on read start tags (with
        # scripting off no event handler runs).
        self.record = record
        self.tracks: list[_Track] = []
        # Where the first reading with scripting on that was not run (MAX_ALT_SCANS,
        # or the work budget) would have started: the tags past it are not all known.
        self.unread_from = len(doc.buf) + 1
        self.sync: set[int] = set()
        self.alts: list[_Walk] = []
        self.alt_count = 0
        self._ignoring_from: int | None = None
        self.open_guesses: dict[tuple[int, str], bool] = {}
        self.ignored_texts = 0
        # Spans read by scripting-off readings before they met the main reading again.
        self.offline: list[tuple[int, int]] = []

    def superseded(self, walk: _Walk) -> bool:
        """Whether an earlier scripting-off reading read over this one's ``<noscript>`` tag.

        With scripting off the whole document is read that way: a ``<noscript>``
        that the main (scripting-on) reading sees as a tag may, with scripting off,
        sit inside an earlier noscript's script text, comment or foreign content.
        Then the reading from it is no browser's and is not scanned.
        """
        at = walk.noscript_at
        return at >= 0 and any(start < at < stop for start, stop in self.offline)

    def may_ignore(self, p: int) -> bool:
        """Whether a tree builder may ignore a start tag at ``p`` (an over-approximation):
        after a ``<frameset>``, or after ``<template>`` then ``<col>``."""
        if self._ignoring_from is None:
            buf = self.doc.buf
            starts = []
            m = _FRAMESET_AT.search(buf)
            if m:
                starts.append(m.start())
            m = _TEMPLATE_AT.search(buf)
            if m:
                m = _COL_AT.search(buf, m.end())
                if m:
                    starts.append(m.start())
            self._ignoring_from = min(starts) if starts else len(buf) + 1
        return p > self._ignoring_from

    def room(self, origin: int, scripting: bool) -> bool:
        """Whether another alternative reading (from ``origin``) may be queued; if not,
        its part of the document is not all known from there on."""
        if self.alt_count < MAX_ALT_SCANS:
            return True
        if scripting:
            self.unread_from = min(self.unread_from, origin)
        return False

    def queue_alt(self, walk: _Walk) -> None:
        if self.room(walk.origin, walk.scripting):
            self.alt_count += 1
            self.alts.append(walk)


@dataclass(slots=True)
class _Track:
    """Where one reading read markup, in order (buffer offsets): each start tag it read
    one by one (interesting ones, foreign content), and each stretch it read past
    whole in the data state (_SKIP), whose start tags are found again on demand."""

    tags: list[tuple[int, int]] = field(default_factory=list)
    stretches: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Reading:
    """The precise walk of a document: its elements, and where its readings read markup."""

    elements: list[Element]
    tracks: list[_Track]  # one per reading with scripting on
    # Every reading with scripting on that starts before this ran to its end; one
    # from here on was not run (a hostile page past MAX_ALT_SCANS or the work
    # budget): past it, some reading's tags are unknown. Past the body: all ran.
    unread_from: int


def _walk_document(doc: _Doc) -> list[Element]:
    return _read_document(doc).elements


def _read_document(doc: _Doc) -> _Reading:
    """The precise walk of ``doc`` (all readings), run once per document."""
    if doc.reading is None:
        doc.reading = _run_readings(doc)
    return doc.reading


def _run_readings(doc: _Doc) -> _Reading:
    shared = _Shared(doc, record=True)
    _Walk(shared, 0).run()
    # Alternative readings stop where they meet the main one again; inside foreign
    # content they may not, and hostile pages can make hundreds of them read to the
    # end. Past a budget the rest are replaced by the over-approximation: every
    # active-element candidate in the body, read as HTML (a superset, never a miss).
    budget = _ALT_WORK_FACTOR * len(doc.buf) + 65536
    spent = 0
    while shared.alts:
        if spent > budget:
            for walk in shared.alts:
                if walk.scripting:
                    shared.unread_from = min(shared.unread_from, walk.origin)
            shared.alts.clear()
            shared.elements.extend(_candidate_elements(doc))
            break
        walk = shared.alts.pop(0)
        if shared.superseded(walk):
            continue
        walk.run()
        spent += max(0, walk.pos - walk.origin) + walk.work
        if walk.noscript_at >= 0:
            shared.offline.append((walk.origin, walk.pos))
    seen: set[tuple[int, str]] = set()
    result: list[Element] = []
    for el in sorted(shared.elements, key=lambda e: (e.start, e.alternative != "")):
        key = (el.start, el.name)
        if key not in seen:
            seen.add(key)
            result.append(el)
    return _Reading(result, shared.tracks, shared.unread_from)


def _candidate_elements(doc: _Doc) -> list[Element]:
    """Every ``<script``/``<iframe``/``<frame``/``<object``/``<embed``/``<meta`` in the
    body as if it were a real HTML element (the fast path's over-approximation)."""
    buf = doc.buf
    out: list[Element] = []
    for p, name in _candidates(buf):
        if name == b"script":
            tag = _TAG.match(buf, p)
            if tag is None:
                continue
            text_end, el_end = _script_end(buf, tag.end())
            attrs = parse_attrs(doc.text(*tag.span(3)))
            text = _norm(doc.text(tag.end(), text_end))
            out.append(Element("script", p, el_end, attrs, text, False, "budget"))
        elif name in (b"iframe", b"frame", b"object", b"embed", b"meta"):
            tag = _start_tag(buf, p, name)
            if tag is None:
                continue
            attrs = parse_attrs(doc.text(*tag.span(3)))
            out.append(Element(name.decode(), p, tag.end(), attrs, None, False, "budget"))
    return out


def parse_elements(body: bytes, content_type: str | None = None) -> list[Element]:
    """Every element of interest (active ones and ``base``) in document order.

    Offsets are in the scanned buffer: byte offsets for ASCII-compatible
    encodings, UTF-16 code units (after the BOM) for UTF-16.
    """
    return _walk_document(_Doc(body, detect_charset(body, content_type)))


# --------------------------------------------------------------------------
# Judging elements: URLs, inline references, signatures.

# As JavaScript reads escapes: ``\u{...}`` takes any number of hex digits (leading
# zeros), and a legacy octal escape is at most three digits from 0-3 (``\377``) but
# two from 4-7 (``\561`` is ``\56`` then ``1``: "." and "1").
_JS_ESCAPE = re.compile(
    r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|u\{([0-9a-fA-F]+)\}|([0-3][0-7]{0,2}|[4-7][0-7]?)|(.))",
    re.S,
)
_PERCENT = re.compile(r"%u([0-9a-fA-F]{4})|%([0-9a-fA-F]{2})")
_FROM_CHAR_CODE = re.compile(r"fromCharCode\s*\(\s*([0-9xXa-fA-F\s,]+)\)")
# What is left of "String.fromCharCode(...)" once the call is a literal: String."ab".
_STRING_DOT = re.compile(r"String\s*\.\s*(?=\")")
# Literal-only expressions folded to the string they make, so that a URL assembled
# from pieces is read whole (each gated by a substring test, anchored on a literal):
# atob('...'), 'a'.concat('b', 'c'), ['a', 'b'].join('.'), `${'a'}` in a template,
# and comments beside the "+" of a concatenation ('ht' + /*x*/ 'tp://...').
_LIT = r"""(["'`])([^"'`\\]*)\{n}"""
_ATOB_CALL = re.compile(r"""atob\s*\(\s*(["'`])([A-Za-z0-9+/=\s_-]*)\1\s*\)""")
# From the "." of .concat(...) (its literal arguments); the literal before it is read
# back (a pattern that starts with a quote class is tried at every character: ~200 ms
# per 5 MB of code).
_CONCAT_CALL = re.compile(r"\.\s*concat\s*\(((?:\s*" + _LIT.format(n=2) + r"\s*,?)*)\s*\)")
_ARRAY_JOIN = re.compile(
    r"\[((?:\s*" + _LIT.format(n=2) + r"\s*,)*\s*" + _LIT.format(n=4) + r"\s*,?\s*)\]"
    r"\s*\.\s*join\s*\(\s*(?:" + _LIT.format(n=6) + r")?\s*\)"
)
_STRING_LITERAL = re.compile(_LIT.format(n=1))
_TEMPLATE_LITERAL_PART = re.compile(r"\$\{\s*" + _LIT.format(n=1) + r"\s*\}")
_BLOCK_COMMENT = re.compile(r"/\*(?:[^*]++|\*(?!/))*+\*/")
_LINE_COMMENT_AFTER_PLUS = re.compile(r"\+([ \t]*+)//[^\n\r\u2028\u2029]*+")
_LINE_COMMENT_BEFORE_PLUS = re.compile(r"//[^\n\r\u2028\u2029]*+([\n\r\u2028\u2029]\s*+\+)")
# The rest of a literal concatenation from its "+": spaces and the next opening quote
# (the part before the "+" is read back; a pattern starting with a quote class would
# be tried at every character: ~20 ms per 5 MB of script).
_CONCAT_REST = re.compile(r"""\s*["'`]""")
_QUOTES = frozenset("\"'`")
_SIMPLE_ESC = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\x00"}


def _js_escape(m: re.Match[str]) -> str:
    hx, u4, ub, octal, other = m.groups()
    code = hx or u4 or ub
    if code is not None:
        value = int(code, 16)
        return chr(value) if value <= 0x10FFFF else "\ufffd"
    if octal is not None:
        return chr(int(octal, 8))
    assert other is not None
    return _SIMPLE_ESC.get(other, other)


def _percent(m: re.Match[str]) -> str:
    u4, b2 = m.groups()
    return chr(int(u4 or b2, 16))


def _char_codes(m: re.Match[str]) -> str:
    out = []
    for part in m.group(1).split(","):
        part = part.strip()
        try:
            value = int(part, 0) if part.lower().startswith("0x") else int(part)
        except ValueError:
            return m.group(0)
        out.append(chr(value) if 0 <= value <= 0x10FFFF else "\ufffd")
    return '"' + "".join(out) + '"'


def decode_script_text(text: str) -> str:
    """Undo the common JS obfuscations: escapes, unescape("%.."), fromCharCode, "a" + "b"."""
    out = text
    if "\\" in out:
        out = _undo_escapes(out)
    if "%" in out:
        out = _PERCENT.sub(_percent, out)
        if "\\" in out:
            out = _undo_escapes(out)
    # (Every fold below but templates needs a "(": one memchr-speed test spares
    # megabytes of JSON the slower searches for "atob", "join"... ~5 ms each per 5 MB.)
    calls = "(" in out
    if calls and "fromCharCode" in out:
        out = _FROM_CHAR_CODE.sub(_char_codes, out)
        out = _STRING_DOT.sub("", out)
    if calls and "atob" in out:
        out = _ATOB_CALL.sub(_atob_literal, out)
    if "+" in out:
        if "/*" in out:
            out = _BLOCK_COMMENT.sub(_concat_comment, out)
        if "//" in out:
            out = _LINE_COMMENT_AFTER_PLUS.sub(_line_comment_after_plus, out)
            out = _LINE_COMMENT_BEFORE_PLUS.sub(_line_comment_before_plus, out)
        out = _join_literals(out)
    # Folds feed each other (['ht', 'tp://a.b'].join('') + '/x'.concat(...)): a few
    # rounds, each only where its anchor is.
    templates = "$" in out and "${" in out
    for _ in range(3 if calls or templates else 0):
        folded = out
        if templates:
            folded = _TEMPLATE_LITERAL_PART.sub(r"\2", folded)
        if calls and "concat" in folded:
            folded = _fold_concat(folded)
        if calls and "join" in folded:
            folded = _ARRAY_JOIN.sub(_array_join, folded)
        if folded == out:
            break
        out = _join_literals(folded) if "+" in folded else folded
    return out


def _atob_literal(m: re.Match[str]) -> str:
    decoded = _base64_text("".join(m.group(2).split()))
    return m.group(0) if decoded is None else '"' + decoded + '"'


def _fold_concat(text: str) -> str:
    """``text`` with every ``'a'.concat('b', 'c')`` of literals made ``"abc"``."""
    pieces: list[str] = []
    done = 0
    for m in _CONCAT_CALL.finditer(text):
        end = m.start()
        while end > done and text[end - 1] in " \t\n\r":
            end -= 1
        quote = text[end - 1] if end > done else ""
        if not quote or quote not in _QUOTES:
            continue
        opening = text.rfind(quote, done, end - 1)
        literal = text[opening + 1 : end - 1]
        if opening < 0 or any(q in literal for q in _QUOTES) or "\\" in literal:
            continue
        args = "".join(a.group(2) for a in _STRING_LITERAL.finditer(m.group(1)))
        pieces += (text[done:opening], '"', literal, args, '"')
        done = m.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _array_join(m: re.Match[str]) -> str:
    items = [a.group(2) for a in _STRING_LITERAL.finditer(m.group(1))]
    sep = m.group(7) if m.group(6) is not None else ","
    return '"' + sep.join(items) + '"'


def _concat_comment(m: re.Match[str]) -> str:
    """A block comment beside a concatenation's "+" (or between its literals) goes."""
    text = m.string
    before = text[max(0, m.start() - 64) : m.start()].rstrip()[-1:]
    after = text[m.end() : m.end() + 64].lstrip()[:1]
    if before and after and before in "\"'`+" and after in "\"'`+/":
        return ""
    return m.group(0)


def _line_comment_after_plus(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 64) : m.start()].rstrip()[-1:]
    return "+" + m.group(1) if before and before in "\"'`" else m.group(0)


def _line_comment_before_plus(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 64) : m.start()].rstrip()[-1:]
    return m.group(1) if before and before in "\"'`" else m.group(0)


# Escapes undone in bulk (see _undo_escapes): the escapes common in serialized state,
# replaced as plain strings (none stands for a backslash, which a later step would
# read as the start of another escape).
# Most frequent first: once no backslash is left (a memchr-speed test) the rarer ones
# are not searched for (each search reads the whole text: ~1-3 ms per 5 MB).
_COMMON_ESCAPES = (
    ("\\/", "/"), ('\\"', '"'), ("\\n", "\n"), ("\\'", "'"), ("\\t", "\t"), ("\\r", "\r"),
)  # fmt: skip
# The HTML-safe ones of Rails, Next.js, PHP (looked for only where "\\u00" is).
_COMMON_U00_ESCAPES = (
    ("\\u003c", "<"), ("\\u003e", ">"), ("\\u0026", "&"), ("\\u003C", "<"), ("\\u003E", ">"),
)  # fmt: skip
# Stands for an escaped backslash meanwhile (undone last); a text that holds it is
# undone the plain way.
_BACKSLASH_MARK = "\x00"


def _undo_escapes(text: str) -> str:
    """``text`` with JS escapes undone, as ``_JS_ESCAPE.sub(_js_escape, text)`` would.

    JSON app state holds hundreds of thousands of escapes (\\" \\/ \\n \\u003c): a
    Python callback for each cost ~0.4 us (110 ms for 5 MB of Rails-style state).
    Escaped backslashes are set aside first (``str.replace`` pairs them left to
    right, as the regex does), so every backslash left starts an escape and the
    common ones can be replaced as strings; a regex undoes the rest.
    """
    if _BACKSLASH_MARK in text:
        return _JS_ESCAPE.sub(_js_escape, text)
    out = text.replace("\\\\", _BACKSLASH_MARK)
    u00 = _COMMON_U00_ESCAPES if "\\u00" in out else ()
    for escape, plain in (*_COMMON_ESCAPES[:3], *u00, *_COMMON_ESCAPES[3:]):
        if escape in out:
            out = out.replace(escape, plain)
            if "\\" not in out:
                break
    if "\\" not in out:
        return out.replace(_BACKSLASH_MARK, "\\")
    # (an escape may stand for the mark itself: \\0, \\x00; no escape spans a mark)
    return "\\".join(_JS_ESCAPE.sub(_js_escape, piece) for piece in out.split(_BACKSLASH_MARK))


def _join_literals(text: str) -> str:
    """``text`` with every ``'`` ``+`` ``'`` (any quotes, spaces around the ``+``) removed,
    left to right, as ``re.sub(r"([\"'`])\\s*\\+\\s*([\"'`])", "", text)`` would."""
    pieces: list[str] = []
    done = 0  # end of the text copied or removed so far
    floor = 0  # a match's first quote is at or after this
    find = text.find
    plus = find("+")
    while plus >= 0:
        quote = floor + len(text[floor:plus].rstrip()) - 1
        if quote >= floor and text[quote] in _QUOTES:
            rest = _CONCAT_REST.match(text, plus + 1)
            if rest is not None:
                pieces.append(text[done:quote])
                done = floor = rest.end()
                plus = find("+", done)
                continue
        floor = plus + 1
        plus = find("+", floor)
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


# Candidate references in script text, each pass anchored on a literal that
# ``re`` finds at memory speed (a pattern that starts with anything else is tried
# at every position: 50-300 ms for 5 MB of script): absolute or protocol-relative
# URLs from their "//" (the scheme before it is read back), host-like string
# literals from the "." of their last label (the literal is then matched from its
# opening quote), and HTML tags being written ("<").
_URL_REF = re.compile(
    r"//"
    r"(\[[0-9A-Fa-f:.]+\]|[\w~%-]+(?:[.\u3002\uff0e\uff61][\w~%-]+)*[.\u3002\uff0e\uff61]?)"
    r"(?::\d{1,5})?"
    r"""[^\s"'<>\\`(){}|^]*"""
)
# The schemes a reference keeps (any other is read as "http:"), longest first.
_URL_SCHEMES = ("https:", "http:", "wss:", "ftp:", "ws:")
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
_LITERAL_REF = re.compile(
    r"""(["'`])([A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63})+)\.?(?::[0-9]{1,5})?\1"""
)
# The end of a host-like literal: its last label and closing quote.
_LITERAL_END = re.compile(r"""\.[A-Za-z0-9-]{1,63}\.?(?:["'`]|:[0-9]{1,5}["'`])""")
_HOST_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"
_TAG_REF = re.compile(r"<(?i:script|iframe|frame|object|embed|meta|base)[\s/>]")
_IPV4 = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}")
# Hosts without an ASCII dot that a browser still reads as an address or a dotted
# name: http://3647724179/ and http://0xd96bda93/ (IPv4 numbers), ideographic and
# fullwidth full stops (UTS 46 maps them to ".").
_DOTLESS_HOST = re.compile(r"\d+|0[xX][0-9a-fA-F]*|.*[\u3002\uff0e\uff61].*")
# URL shapes the "//" pass above does not read the way the WHATWG parser does, each
# found in the text a browser's JavaScript sees (escapes undone) and handed whole to
# the parser: an authority after "\\", "/\" or "\/" (special schemes read "\" as
# "/"); after "//", one holding what the host pattern stops at (userinfo "a:b@",
# tab/newline, which the parser removes, soft hyphens and other characters IDNA maps
# away, "%2e"); after a special scheme and at most one slash ("http:evil.example" on
# an https page, "https:/evil.example" on an http one: the parser skips slashes there).
# An authority is what the parser reads as one: up to "/", "\", "?" or "#", here also
# up to a quote, space, "<" or ">" (the end of a string or tag in script text).
_AUTHORITY = r"""((?:[^/\\?#\x00-\x08\x0b\x0c\x0e-\x20"'<>`{}|^])*+)"""
# Each pass starts with a literal, which ``re`` finds at memory speed (a class or a
# lookbehind first is tried at every character: ~30-90 ms per 5 MB of script).
_BACKSLASH_AUTHORITY = re.compile(r"\\[/\\]" + _AUTHORITY)
_SLASH_BACKSLASH_AUTHORITY = re.compile(r"/\\" + _AUTHORITY)
_ODD_AUTHORITY = re.compile(
    r"//(?=[A-Za-z0-9.-]*+(?::[0-9]++)?+"
    r"""[^A-Za-z0-9./\\?#\x00-\x08\x0b\x0c\x0e-\x20"'<>`{}|^-])""" + _AUTHORITY
)
# From the ":" of a scheme whose last letter is p or s (http, https, ws, wss, ftp),
# the scheme read back in Python.
_SCHEME_AUTHORITY = re.compile(r":(?<=[pPsS]:)(?![/\\]{2})[/\\]?+" + _AUTHORITY)
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
_AT_AUTHORITY = re.compile("@" + _AUTHORITY)
# (Quotes too, though the parser reads "//a'b@host" as one authority: an e-mail
# address in the string after a URL's is data, and must not become a reference.)
_USERINFO_STOPS = ("/", "\\", "?", "#", "<", ">", "\n", '"', "'", "`")
_USERINFO_LOOKBACK = 256
_TAB_NEWLINE = re.compile(r"[\t\n\r]")
_TLD = re.compile(r"\.(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})$")


def _url_scheme(text: str, slashes: int) -> str:
    """The scheme written before the "//" at ``slashes`` (one of _URL_SCHEMES, not
    preceded by a scheme character), else "http:"."""
    for scheme in _URL_SCHEMES:
        at = slashes - len(scheme)
        if (
            at >= 0
            and text.startswith(scheme, at)
            and (at == 0 or text[at - 1] not in _SCHEME_CHARS)
        ):
            return scheme
    return "http:"


def _may_be_host(authority: str) -> bool:
    """Whether an authority's host may name a blocked host once the URL parser has
    read it (the "//" pass's rule for plain ASCII; anything else is asked)."""
    host = _TAB_NEWLINE.sub("", authority.rpartition("@")[2])
    if not host.isascii() or "%" in host or host.startswith("["):
        return True
    host = host.partition(":")[0]
    return "." in host or _DOTLESS_HOST.fullmatch(host) is not None


def _shape_refs(text: str) -> Iterator[str]:
    """Absolute references for the URL shapes ``_URL_REF`` does not read as a browser
    does (see ``_AUTHORITY``), each as ``scheme://authority/`` for the parser."""
    passes = [_ODD_AUTHORITY] if "//" in text else []
    if "\\" in text:
        passes.append(_BACKSLASH_AUTHORITY)
        if "/\\" in text:
            passes.append(_SLASH_BACKSLASH_AUTHORITY)
    for pattern in passes:
        for m in pattern.finditer(text):
            authority = m.group(1)
            if authority and _may_be_host(authority):
                at = m.start()
                scheme = _url_scheme(text, at) if at and text[at - 1] == ":" else "http:"
                yield scheme + "//" + authority + "/"
    if "@" in text:
        # Userinfo that the authority pattern stops at ("//us er@host": the parser
        # percent-encodes the space): the host after an "@" whose authority began
        # with two slashes.
        for m in _AT_AUTHORITY.finditer(text):
            at = m.start()
            begin = max(0, at - _USERINFO_LOOKBACK)
            stop = max(text.rfind(c, begin, at) for c in _USERINFO_STOPS)
            if stop > 0 and text[stop - 1] in "/\\" and text[stop] in "/\\":
                authority = m.group(1)
                if authority and _may_be_host(authority):
                    yield "http://" + authority + "/"
    if ":" in text:
        for m in _SCHEME_AUTHORITY.finditer(text):
            authority = m.group(1)
            if not authority or not _may_be_host(authority):
                continue
            colon = m.start()
            begin = colon
            while begin > 0 and text[begin - 1] in _SCHEME_CHARS and colon - begin < 6:
                begin -= 1
            scheme = text[begin:colon].lower()
            if scheme in _SPECIAL_SCHEMES and (begin == 0 or text[begin - 1] not in _SCHEME_CHARS):
                yield scheme + "://" + authority + "/"


def _host_literals(text: str) -> Iterator[str]:
    """The host-like string literals in ``text`` ("evil.example", 'a.b.c'), in order.

    Each is found from its end (_LITERAL_END), its opening quote is the character
    before the host characters that precede it, and _LITERAL_REF confirms it from there. Every match of
    ``_LITERAL_REF.finditer`` is found, and a literal whose opening quote closes
    another one too. Linear: each search reads back only to the previous end.
    """
    floor = 0
    for m in _LITERAL_END.finditer(text):
        start = m.start()
        # The characters before the last label, less the host characters that end
        # them: what is left ends with the opening quote, or this is no literal.
        quote = floor + len(text[floor:start].rstrip(_HOST_CHARS)) - 1
        floor = m.end() - 1  # (the closing quote may open the next literal)
        if quote < 0 or quote == start - 1 or text[quote] not in "\"'`":
            continue
        r = _LITERAL_REF.match(text, quote, m.end())
        if r is not None:
            yield r.group(2)


def _resolve(base: str, ref: str) -> str | None:
    ref = ref.strip("\t\n\f\r ")
    if not ref:
        return None
    try:
        return ada_url.join_url(base, ref)
    except ValueError:
        return None


def _meta_refresh_url(content: str) -> str | None:
    """The URL of a ``<meta http-equiv=refresh content="0; url=...">`` (WHATWG steps, simplified)."""
    m = re.match(r"[\t\n\f\r ]*([0-9]*)([0-9.]*)[\t\n\f\r ]*[;,]?[\t\n\f\r ]*", content)
    if m is None or not (m.group(1) or m.group(2).startswith(".")):
        return None
    rest = content[m.end() :]
    u = re.match(r"(?i:url)[\t\n\f\r ]*=[\t\n\f\r ]*", rest)
    if u:
        rest = rest[u.end() :]
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        rest = rest[1:]
        end = rest.find(quote)
        if end >= 0:
            rest = rest[:end]
    return rest.strip() or None


def _data_url_text(url: str) -> str | None:
    """The payload of a ``data:`` URL as text (percent- or base64-decoded)."""
    head, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    raw = urllib.parse.unquote_to_bytes(payload)
    if head.lower().endswith(";base64"):
        try:
            raw = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", raw) + b"===")
        except (ValueError, TypeError):
            return None
    return raw.decode("utf-8", "replace")


class ScriptKind(StrEnum):
    """What a browser does with a ``<script>`` element's text (HTML "prepare the script element")."""

    CLASSIC = "classic"
    MODULE = "module"
    IMPORTMAP = "importmap"
    SPECULATION_RULES = "speculationrules"
    WEBBUNDLE = "webbundle"  # Chromium's subresource Web Bundles: JSON naming a bundle URL
    DATA = "data"  # JSON, JSON-LD, templates, unknown types: never run
    # Not a <script>: the code of a javascript: URL, whose string result the browser
    # renders as a document (javascript:'<script src=...>' injects without a write).
    JAVASCRIPT_URL = "javascript-url"


# Script kinds whose text is JSON naming URLs the browser loads.
_JSON_LOADS = (ScriptKind.IMPORTMAP, ScriptKind.SPECULATION_RULES, ScriptKind.WEBBUNDLE)


# The HTML standard's JavaScript MIME type essences.
_JS_MIME_TYPES = frozenset(
    """application/ecmascript application/javascript application/x-ecmascript
    application/x-javascript text/ecmascript text/javascript text/javascript1.0
    text/javascript1.1 text/javascript1.2 text/javascript1.3 text/javascript1.4
    text/javascript1.5 text/jscript text/livescript text/x-ecmascript
    text/x-javascript""".split()
)
_JS_VERSIONED = re.compile(r"text/javascript1\.[0-9]")


def _runs_as(type_string: str) -> ScriptKind:
    # Erring towards "runs": surrounding Unicode whitespace stripped (Chromium strips
    # more than ASCII whitespace), MIME parameters ignored (Chromium then runs
    # nothing, but a script judged as code is still removed only on evidence), any
    # text/javascript1.x.
    value = type_string.strip("\t\n\f\r ").strip().lower()
    essence = value.partition(";")[0].strip()
    if essence in _JS_MIME_TYPES or _JS_VERSIONED.fullmatch(essence):
        return ScriptKind.CLASSIC
    for kind in (ScriptKind.MODULE, *_JSON_LOADS):
        if value == kind.value:
            return kind
    return ScriptKind.DATA


def script_kind(attrs: dict[str, str]) -> ScriptKind:
    """The script's type as the HTML standard decides it from ``type`` and ``language``."""
    type_ = attrs.get("type")
    if type_ is not None:
        if not type_.strip("\t\n\f\r ").strip():
            return ScriptKind.CLASSIC  # empty (whitespace: erring towards "runs")
        return _runs_as(type_)
    language = attrs.get("language")
    if not language:
        return ScriptKind.CLASSIC
    return _runs_as("text/" + language)


# Markup that runs code or loads a frame, a script or a style sheet when it is
# written into a document (``document.write``, ``innerHTML``...).
_ACTIVE_MARKUP = re.compile(
    r"<(?i:script|iframe|frame|object|embed|meta|base|link|portal|fencedframe|style|svg|math"
    r"|applet)[\s/>]|<[A-Za-z][^>]*?[\s/\"'](?i:on[a-z]+)\s*=|(?i:javascript):"
)
# Any tag with a URL attribute, for "a write of markup carrying a blocked URL".
_URL_TAG_REF = re.compile(r"<(?!(?i:a|area)[\s/>])[A-Za-z][A-Za-z0-9-]*[\s/]")
_URL_TAG_ATTRS = ("src", "href", "data", "action", "poster", "background", "srcset", "codebase")
# A URL attribute in written markup, whatever the tag (its name may be split across
# strings joined at run time): the URL, or nothing when the value is added later
# ('ipt src="' + u + '">'). Not href: that is mostly a link, which loads nothing. An
# attribute follows a space, a quote or "/" (not "?data=" in a URL's query).
_WRITTEN_URL_ATTR = re.compile(
    r"""(?:^|(?<=[\t\n\f\r "'/]))(?i:src|data|action|formaction|codebase|srcdoc)[\t\n\f\r ]*="""
    r"""[\t\n\f\r ]*(?:\\?["'])?([^\t\n\f\r "'<>`]*)"""
)
_BASE64_BLOCK = re.compile(r"[\sA-Za-z0-9+/_-]+={0,2}\s*")
_BASE64_LITERAL = re.compile(r"""(["'`])([A-Za-z0-9+/_-]{16,}={0,2})\1""")


def _base64_payloads(text: str) -> list[str]:
    """Texts hidden as base64 string literals in a script that decodes base64 (``atob``)."""
    out = []
    for m in _BASE64_LITERAL.finditer(text):
        decoded = _base64_text(m.group(2))
        if decoded is not None:
            out.append(decoded)
    return out


def _base64_text(raw: str) -> str | None:
    """The text a base64 string encodes, if it is mostly printable."""
    try:
        data = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "==", validate=False)
    except (binascii.Error, ValueError):
        return None
    decoded = data.decode("utf-8", "replace")
    printable = sum(1 for c in decoded if c.isprintable() or c in "\t\n\r")
    return decoded if decoded and printable >= 0.9 * len(decoded) else None


def _json_strings(value: object, out: list[str]) -> None:
    """The string values (not keys) in a JSON document, depth first, up to a bound."""
    stack = [value]
    while stack and len(out) < _MAX_JSON_STRINGS:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# A constant URL prefix whose origin is already decided: "scheme://host/..." or a
# relative reference (path, query, fragment).
# (Read once tabs and newlines are gone, as the URL parser removes them; a lone "/" or
# "\\" is no path yet: "/" + "/evil.example" is a host.)
_FIXED_ORIGIN = re.compile(r"[\x00-\x20]*(?:[A-Za-z][A-Za-z0-9+.-]*:)?[/\\]{2}[^/\\?#]*[/\\?#]")
_RELATIVE = re.compile(r"[\x00-\x20]*(?:/(?=[^/\\])|\\(?=[^/\\])|\?|#|\.\.?/)")


@dataclass(frozen=True, slots=True)
class _Verdict:
    url: str | None
    reason: str
    rule: str
    list: str
    removed: bool
    evidence: str | None = None

    def mention(self) -> _Verdict:
        return _Verdict(self.url, "mention", self.rule, self.list, False)


# A verdict cache's answer for a URL never judged (None is "judged, not blocked").
_UNSEEN: object = object()


class _Judge:
    """Judges elements for one scan, with the scanner's verdict caches."""

    def __init__(self, scanner: Scanner, page_url: str) -> None:
        self.scanner = scanner
        self.page_url = page_url
        # Without cross-scan caches, still judge each URL or text once per scan.
        self.caches = scanner._caches if scanner._caches.entries > 0 else _Caches(_PER_SCAN_ENTRIES)
        self.depth = 0  # srcdoc / data: documents being judged inside this one
        self.js_work = _JS_WORK_CHARS  # script text this scan may still tokenize
        self.base_verdicts: dict[str, _Verdict | None] = {}
        self.long_verdicts: dict[str, MatchLike | None] = {}  # URLs too long for caches

    def check(self, url: str) -> MatchLike | None:
        cache = self.caches.verdicts
        if url in cache:
            return cache[url]
        if len(url) > _CACHE_KEY_MAX_CHARS:
            # Too long to keep across scans, still asked once per scan: a page naming
            # one 30 KB URL a thousand times costs one check, not a thousand (bounded
            # by the page itself, and gone with this scan).
            cache = self.long_verdicts
            if url in cache:
                return cache[url]
            result = cache[url] = self.scanner.is_blocked(url)
            return result
        result = self.scanner.is_blocked(url)
        self.caches.put(cache, url, result)
        return result

    def resolve(self, base: str, ref: str) -> str | None:
        key = (base, ref)
        cache = self.caches.joins
        if key in cache:
            return cache[key]
        result = _resolve(base, ref)
        self.caches.put(cache, key, result)
        return result

    def _url_verdict(self, url: str, reason: str) -> _Verdict | None:
        match = self.check(url)
        if match is not None:
            monitor = str(getattr(match, "mode", "")) == "monitor"
            return _Verdict(url, reason, match.rule, match.list, not monitor)
        sig = self.scanner._signature(url, "url")
        if sig is not None:
            return _Verdict(url, "signature", sig.name, "signatures", True)
        return None

    def element_urls(self, el: Element) -> list[str]:
        """The attribute URLs (unresolved) by which an element loads something."""
        a = el.attrs
        if el.name in ("script", "svg:script"):
            keys: tuple[str, ...] = ("src", "href", "xlink:href")
        elif el.name == "object":
            keys = ("data",)
        elif el.name == "meta":
            if a.get("http-equiv", "").strip().lower() != "refresh":
                return []
            url = _meta_refresh_url(a.get("content", ""))
            return [url] if url else []
        elif el.name in ("iframe", "frame", "embed"):
            keys = ("src",)
        else:
            return []
        return [a[k] for k in keys if k in a]

    def judge(self, el: Element, bases: Sequence[str]) -> _Verdict | None:
        """Whether an element loads, runs or injects a blocked URL (or only mentions one)."""
        script = el.name in ("script", "svg:script")
        for ref in self.element_urls(el):
            for base in bases:
                url = self.resolve(base, ref)
                if url is None:
                    continue
                # A script's src is judged whatever its type: a script on the page
                # can change the type and insert the element again, which then loads
                # (it never "started"); no page needs a data block with such a src.
                verdict = self._url_verdict(url, "blocked-url")
                if verdict is not None:
                    return verdict
                inline = self._embedded(url, bases, script=script)
                if inline is not None:
                    return inline
        if el.name == "iframe" and "srcdoc" in el.attrs:
            verdict = self.document(el.attrs["srcdoc"], bases)
            if verdict is not None:
                return verdict
        if el.text and script:
            # With a src, the element's text is never run: the fetched script is.
            kind = ScriptKind.DATA if "src" in el.attrs else script_kind(el.attrs)
            if el.name == "svg:script" and ("href" in el.attrs or "xlink:href" in el.attrs):
                kind = ScriptKind.DATA
            return self.script_text(el.text, bases, kind)
        return None

    def _embedded(self, url: str, bases: Sequence[str], *, script: bool) -> _Verdict | None:
        """Code or a document carried inside the URL itself (``javascript:``, ``data:``)."""
        low = url[:11].lower()
        if low.startswith("javascript:"):
            code = urllib.parse.unquote(url[11:])
            return self.script_text(code, bases, ScriptKind.JAVASCRIPT_URL)
        if low.startswith("data:"):
            text = _data_url_text(url)
            if text:
                if script:
                    return self.script_text(text, bases, ScriptKind.CLASSIC)
                mime = url[5:].split(",", 1)[0].split(";", 1)[0]
                return self.document(text, bases, html=not _is_xml(mime))
        return None

    def document(self, text: str, bases: Sequence[str], *, html: bool = True) -> _Verdict | None:
        """Judge an HTML document held in an attribute or URL (``srcdoc``, ``data:text/html``);
        ``html`` false: a document of an XML type (``data:application/xhtml+xml``)."""
        if self.depth >= _MAX_DOCUMENT_DEPTH:
            return self.references(text, bases)
        doc = _Doc(text.encode("utf-8", "surrogatepass"), Charset("utf-8", "header"), html=html)
        mention: _Verdict | None = None
        self.depth += 1
        try:
            elements = _walk_document(doc)
            # Its own <base href> (resolved against the bases around it, which a srcdoc
            # document inherits) decides what its elements load, as the page's does.
            inner = list(bases)
            for el in elements:
                if el.name == "base" and "href" in el.attrs:
                    for base in bases:
                        resolved = self.resolve(base, el.attrs["href"])
                        if resolved is not None and resolved not in inner:
                            inner.append(resolved)
            for el in elements:
                verdict = self.judge(el, inner)
                if verdict is None:
                    continue
                if verdict.reason == "mention":
                    mention = mention or verdict
                    continue
                if verdict.reason == "blocked-url":  # loaded by the embedded document
                    verdict = _Verdict(verdict.url, "inline-reference", verdict.rule,
                                       verdict.list, verdict.removed, el.name)  # fmt: skip
                return verdict
            # <img onerror> in the document, under the bases in force around it.
            for f in self.scanner._handlers(doc, self, bases, _candidates(doc.buf)):
                if f.removed:
                    return _Verdict(f.url, f.reason, f.rule, f.list, True, f.evidence)
        finally:
            self.depth -= 1
        return mention

    def script_text(self, text: str, bases: Sequence[str], kind: ScriptKind) -> _Verdict | None:
        """Judge a script's text by what the browser does with it (cached)."""
        if len(text) > _INLINE_CACHE_MAX_CHARS:
            return self._script_text(text, bases, kind)
        key = (text, kind, self.page_url, tuple(bases))
        cache = self.caches.inline
        if key in cache:
            return cache[key]
        verdict = self._script_text(text, bases, kind)
        if verdict is None or verdict.evidence != _OVER_BUDGET:  # (another scan has its own)
            self.caches.put(cache, key, verdict)
        return verdict

    def _script_text(self, text: str, bases: Sequence[str], kind: ScriptKind) -> _Verdict | None:
        if kind is ScriptKind.DATA:
            verdict = self.data_references(text, bases)
            return verdict.mention() if verdict is not None else None
        if kind in _JSON_LOADS:
            return self._json_loads(text, bases)
        verdict = self.references(text, bases)
        named = verdict is not None
        if verdict is None:
            # <base href> at a blocked origin: the script's relative URLs load from it.
            verdict = self._blocked_base(bases)
            if verdict is None:
                return None
        evidence = self._evidence(text, bases, writes=kind is ScriptKind.JAVASCRIPT_URL)
        if evidence is None:
            return verdict.mention() if named else None
        return _Verdict(
            verdict.url, verdict.reason, verdict.rule, verdict.list, verdict.removed, evidence
        )

    def data_references(self, text: str, bases: Sequence[str]) -> _Verdict | None:
        """What a data block names, also when the whole block is base64 (a payload that
        a loader elsewhere decodes: ``eval(atob(p.text))``)."""
        verdict = self.references(text, bases)
        if verdict is None and len(text) >= 16 and _BASE64_BLOCK.fullmatch(text):
            payload = _base64_text("".join(text.split()))
            if payload is not None:
                verdict = self.references(payload, bases)
        return verdict

    def _blocked_base(self, bases: Sequence[str]) -> _Verdict | None:
        for base in bases:
            if base != self.page_url:
                if base not in self.base_verdicts:
                    self.base_verdicts[base] = self._url_verdict(base, "inline-reference")
                verdict = self.base_verdicts[base]
                if verdict is not None:
                    return verdict
        return None

    def _json_loads(self, text: str, bases: Sequence[str]) -> _Verdict | None:
        """An import map or speculation rules: every string value is a URL that may be
        loaded (a module when imported, a page Chromium prefetches or prerenders)."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # the browser ignores it; judged as if every URL in it loaded
        if data is None:
            verdict = self.references(text, bases)
            if verdict is None:
                return None
            return _Verdict(verdict.url, verdict.reason, verdict.rule, verdict.list,
                            verdict.removed, "unreadable JSON")  # fmt: skip
        strings: list[str] = []
        _json_strings(data, strings)
        for value in strings:
            for base in bases:
                url = self.resolve(base, value)
                if url is None:
                    continue
                verdict = self._url_verdict(url, "blocked-url")
                if verdict is not None:
                    return verdict
        verdict = self.references(text, bases)
        return verdict.mention() if verdict is not None else None

    def _evidence(self, text: str, bases: Sequence[str], *, writes: bool) -> str | None:
        """What makes a script that names a blocked host load or inject it, or None (data).

        ``writes``: the script's result is written as a document (a javascript: URL).
        """
        budget = self.js_work
        traits = analyse(text, limit=budget)
        self.js_work -= len(text)
        if traits.unreadable:
            if len(text) > MAX_TOKENIZED_CHARS:
                return "not analysed (too long)"
            return _OVER_BUDGET if len(text) > budget else "unreadable script"
        for kind in (SinkKind.CODE, SinkKind.CREATE):
            sink = traits.first(kind)
            if sink is not None:
                return sink.name
        markup = traits.first(SinkKind.MARKUP)
        name = markup.name if markup is not None else "javascript: URL" if writes else None
        if name is not None and self._writes_active(text, traits.strings, bases):
            return name
        for sink in traits.sinks:
            if sink.kind is SinkKind.LOAD and self._may_load_blocked(
                sink.url, sink.complete, bases
            ):
                return sink.name
        return None

    def _writes_active(self, text: str, strings: Sequence[str], bases: Sequence[str]) -> bool:
        """Whether the script holds markup that, written, runs code or loads a blocked URL.

        ``strings`` are its string constants: a URL attribute is looked for there,
        not in the code (``var src = "..."`` is no markup).
        """
        variants = [text, decode_script_text(text)]
        payloads = _base64_payloads(text) if "atob" in text or "base64" in text.lower() else []
        variants.extend(payloads)
        if any(_ACTIVE_MARKUP.search(v) for v in variants):
            return True
        constants = [
            decode_script_text(c) if "%" in c else c for c in strings if "=" in c or "<" in c
        ]
        constants.extend(payloads)
        if "fromCharCode" in text:
            constants.extend(_char_codes(m) for m in _FROM_CHAR_CODE.finditer(text))
        for constant in constants:
            for m in _WRITTEN_URL_ATTR.finditer(constant):
                ref = m.group(1)
                if not ref:
                    return True  # the value is added at run time: it may be the blocked one
                if self._blocked_ref(ref, bases):
                    return True
            if "<" not in constant:
                continue
            for m in _URL_TAG_REF.finditer(constant):
                tag = _TAG_TEXT.match(constant, m.start(), m.start() + 4096)
                if tag is None:
                    continue
                attrs = parse_attrs(tag.group(3))
                if any(self._blocked_ref(attrs[k], bases) for k in _URL_TAG_ATTRS if k in attrs):
                    return True
        return False

    def _blocked_ref(self, ref: str, bases: Sequence[str]) -> bool:
        for base in bases:
            url = self.resolve(base, ref)
            if url is not None and self.check(url) is not None:
                return True
        return False

    def _may_load_blocked(self, prefix: str | None, complete: bool, bases: Sequence[str]) -> bool:
        """Whether a load sink's URL argument (its constant prefix) may be a blocked URL."""
        if prefix is None:
            return True  # built at run time: it may be the blocked one the script names
        if not complete:
            prefix = _TAB_NEWLINE.sub("", prefix)
            fixed = _FIXED_ORIGIN.match(prefix)
            if fixed is not None:
                prefix = prefix[: fixed.end()]
            elif _RELATIVE.match(prefix):
                prefix = prefix.partition("?")[0].partition("#")[0] or "."
            else:
                return True  # "http://" + host: the origin is decided at run time
        for base in bases:
            url = self.resolve(base, prefix)
            if url is None:
                continue
            if url[:11].lower().startswith("javascript:") or url[:5].lower() == "data:":
                return True
            if self._url_verdict(url, "blocked-url") is not None:
                return True
        return False

    def references(self, text: str, bases: Sequence[str]) -> _Verdict | None:
        """The first blocked host or URL the text names (decoded too), then signatures."""
        decoded = decode_script_text(text)
        variants = [text] if decoded == text else [text, decoded]
        low = fold_ascii_case(text)  # (once: the signatures read it too)
        if "atob" in text or "base64" in low:
            variants.extend(_base64_payloads(text))
        for variant in variants:
            verdict = self._references(variant, bases)
            if verdict is not None:
                return verdict
        # The shapes read only as the parser reads them, in what the browser's
        # JavaScript sees (the decoded text; a raw "\/" is JSON's "/", no anchor).
        raw_differs = len(variants) > 1 and variants[1] is decoded
        for variant in variants:
            if variant is text and raw_differs:
                continue
            for ref in _shape_refs(variant):
                verdict = self._absolute_verdict(ref)
                if verdict is not None:
                    return verdict
        for variant in variants:
            sig = self.scanner._signature(variant, "script", low if variant is text else None)
            if sig is not None:
                return _Verdict(None, "signature", sig.name, "signatures", True)
        return None

    def _references(self, text: str, bases: Sequence[str]) -> _Verdict | None:
        if "//" in text:
            # (Thousands of URLs in app state: a URL judged clean before is let go
            # with one dictionary lookup, and "https:" is read back without a loop.)
            verdicts = self.caches.verdicts
            for m in _URL_REF.finditer(text):
                host = m.group(1)
                if (
                    "." not in host
                    and "%" not in host  # (%2e is a dot to the parser)
                    and not host.startswith("[")
                    and not _DOTLESS_HOST.fullmatch(host)
                ):
                    continue
                at = m.start()
                if not at or text[at - 1] != ":":
                    scheme = "http:"
                elif text.startswith("https:", at - 6) and (
                    at == 6 or text[at - 7] not in _SCHEME_CHARS
                ):
                    scheme = "https:"
                else:
                    scheme = _url_scheme(text, at)
                ref = scheme + m.group()
                if verdicts.get(ref, _UNSEEN) is None:
                    continue
                verdict = self._absolute_verdict(ref)
                if verdict is not None:
                    return verdict
        if "." in text:
            for lit in _host_literals(text):
                if _TLD.search(lit) or _IPV4.fullmatch(lit):
                    verdict = self._absolute_verdict("http://" + lit + "/")
                    if verdict is not None:
                        return verdict
        if "<" in text:
            for m in _TAG_REF.finditer(text):
                for url in self._written_tag(text, m.start(), bases):
                    if url is not None:
                        verdict = self._ref_verdict(url, resolved=True)
                        if verdict is not None:
                            return verdict
        return None

    def _absolute_verdict(self, ref: str) -> _Verdict | None:
        """``_ref_verdict`` of an absolute reference (its URL depends on no base).

        ``is_blocked`` parses a URL as a browser does, and a URL parsed again once
        serialized is the same URL: the reference itself is asked, and joined (for the
        finding) only when blocked. Saves a third of the work per distinct URL, which
        big app state holds by the thousand. Except past the URL length cap: the
        engine refuses such a text, while its resolved URL (dot segments removed:
        ``http://evil.example`` + ``'/.'*32760`` + ``/x``) is short and is what the
        browser requests; that text is resolved first, as any other reference.
        """
        if len(ref) > MAX_URL_LENGTH:
            return self._ref_verdict(ref)
        match = self.check(ref)
        if match is None:
            return None
        url = self.resolve(self.page_url, ref)
        return None if url is None else self._match_verdict(url, match)

    def _ref_verdict(self, ref: str, *, resolved: bool = False) -> _Verdict | None:
        url = ref if resolved else self.resolve(self.page_url, ref)
        if url is None:
            return None
        match = self.check(url)
        if match is None:
            return None
        return self._match_verdict(url, match)

    @staticmethod
    def _match_verdict(url: str, match: MatchLike) -> _Verdict:
        monitor = str(getattr(match, "mode", "")) == "monitor"
        return _Verdict(url, "inline-reference", match.rule, match.list, not monitor)

    def _written_tag(self, text: str, start: int, bases: Sequence[str]) -> list[str | None]:
        """URLs of an HTML tag inside script text (``document.write('<script src=..>')``)."""
        tag = _TAG_TEXT.match(text, start, start + 4096)
        if tag is None:
            return []
        attrs = parse_attrs(tag.group(3))
        refs = [attrs[k] for k in ("src", "data", "href", "xlink:href") if k in attrs]
        if "content" in attrs:
            refresh = _meta_refresh_url(attrs["content"])
            if refresh:
                refs.append(refresh)
        return [self.resolve(base, ref) for ref in refs for base in bases]


# --------------------------------------------------------------------------
# The fast path: an over-approximation that can only add candidates.

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
# What the fast path looks at: active elements, foreign content, <base> and </html>.
_CANDIDATE_NAMES = (
    b"script", b"iframe", b"frame", b"object", b"embed", b"meta", b"svg", b"math", b"base", b"/html"
)  # fmt: skip
_CANDIDATE_LOW = re.compile(rb"<(" + b"|".join(_CANDIDATE_NAMES) + rb")[\t\n\f\r />]")
_HTML_END_AT = re.compile(rb"</(?i:html)[\t\n\f\r />]")
# The fast path's whole script element, when its text has no "<!--" (escaped
# states) and its end tag is complete; otherwise _script_end decides.
_FAST_SCRIPT = re.compile(
    rb"<(?i:script)(?=[\t\n\f\r />])(?P<attrs>" + _ATTRS + rb")/?>"
    rb"(?P<text>(?:[^<]++|<(?!!--|/(?i:script)[\t\n\f\r />]))*+)"
    rb"(?P<close></(?i:script)(?=[\t\n\f\r />])" + _ATTRS + rb"/?>)?+"
)
# Attributes that change how a script element is judged (what it loads, whether its
# text runs): a tag without any of them is judged with no attributes.
_SCRIPT_ATTRS = re.compile(rb"(?i:src|href|type|language)")
_REFRESH = re.compile(rb"(?i:refresh)")
_FOREIGN_END: dict[bytes, re.Pattern[bytes]] = {
    b"svg": re.compile(rb"</(?i:svg)"),
    b"math": re.compile(rb"</(?i:math)"),
}
# A foreign subtree's start tag up to the first ">" after the first "</svg"
# (or "</math"): the fast path's cache key for it.
_FAST_FOREIGN: dict[bytes, re.Pattern[bytes]] = {
    name: re.compile(
        rb"<(?i:" + name + rb")(?=[\t\n\f\r />])" + _ATTRS + rb"/?>"
        rb"(?:[^<]++|<(?!/(?i:" + name + rb")))*+</(?i:" + name + rb")[^>]*+>"
    )
    for name in (b"svg", b"math")
}
# An event handler attribute (a candidate: confirmed by the start tag around it).
_HANDLER_LOW = re.compile(rb"on[a-z]+[\t\n\f\r ]*=")  # in the lower-cased body
_HANDLER_AFTER = frozenset(b"\t\n\f\r \"'/")  # what precedes an attribute's name
_HANDLER_VALUE = re.compile(rb"""[\t\n\f\r ]*+("[^"]*+"|'[^']*+'|[^\t\n\f\r >]++)""")
# The values _HANDLER_VALUE reads after each match of _HANDLER_LOW whose byte before is
# in _HANDLER_AFTER (b"" where it reads none), found in the body as it is, by case of
# "on": "on" with a regex anchored on its literal (a case-insensitive "on" is tried at
# every byte: 5x slower); "On", and "oN"/"ON", from each "O" and "N", which are rare
# and which memchr finds at memory speed (a regex walks to each one a byte at a time).
_HANDLER_TAIL = rb"[A-Za-z]+[\t\n\f\r ]*=(?=" + _HANDLER_VALUE.pattern + rb"|)"
_HANDLER_LOWER_ON = re.compile(rb"on(?<=[\t\n\f\r \"'/]on)" + _HANDLER_TAIL)
_HANDLER_UPPER: tuple[tuple[bytes, re.Pattern[bytes]], ...] = (
    (b"O", re.compile(rb"O(?<=[\t\n\f\r \"'/]O)n" + _HANDLER_TAIL)),
    (b"N", re.compile(rb"N(?<=[\t\n\f\r \"'/][oO]N)" + _HANDLER_TAIL)),
)
# Past this many "O" (or "N") in a body the rest are left to the regex (bounded Python work).
_HANDLER_UPPER_HITS = 64
# From this size on numpy finds candidates faster than a regex over a lowercased copy.
_VECTOR_MIN_BYTES = 8192


class _Prefilter:
    """numpy: the ``<`` whose next four bytes may start a candidate name.

    The four bytes are read as one little-endian word and OR-ed with 0x20 in
    every byte, which lowercases ASCII letters (and maps a few other bytes onto
    each other: a superset, confirmed by the caller).
    """

    FOLD = 0x20202020

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        names: dict[int, bytes] = {}
        for name in _CANDIDATE_NAMES:
            heads = [name[:4]] if len(name) >= 4 else [name + bytes([t]) for t in b"\t\n\f\r />"]
            names.update((int.from_bytes(h, "little") | self.FOLD, name) for h in heads)
        self.keys = np.array(sorted(names), dtype=np.uint32)
        self.names = [names[k] for k in sorted(names)]

    def find(self, buf: bytes) -> list[tuple[int, bytes]]:
        np = self.np
        n = len(buf)
        arr = np.frombuffer(buf, dtype=np.uint8)
        # Positions past n - 5 cannot start a candidate: "<svg>" is the shortest.
        lt = np.flatnonzero(arr[: n - 4] == 0x3C)
        # words[i] = bytes i..i+3 as one word (overlapping, unaligned reads).
        words = np.ndarray((n - 3,), dtype="<u4", buffer=buf, strides=(1,))
        got = words[lt + 1] | np.uint32(self.FOLD)
        at = np.searchsorted(self.keys, got)
        np.minimum(at, len(self.keys) - 1, out=at)
        hit = self.keys[at] == got
        names = self.names
        return [(p, names[i]) for p, i in zip(lt[hit].tolist(), at[hit].tolist(), strict=True)]


_PREFILTER: _Prefilter | None = None


def _candidates(buf: bytes, *, vector: bool | None = None) -> list[tuple[int, bytes]]:
    """(position, lowercased name) of every ``<script``, ``<iframe``, ... ``</html`` in ``buf``, in order.

    Large bodies (or ``vector=True``) are searched with numpy: find every ``<``
    and keep those whose next four bytes (lowercased) start a candidate name.
    That may also yield ``<scribble``, ``<metadata``, ``</htmlx``...: callers
    confirm each one (the tag must parse, with the right name).
    """
    n = len(buf)
    if not (n >= _VECTOR_MIN_BYTES if vector is None else vector) or n < 8:
        low = buf.translate(_LOWER)
        return [(m.start(), m.group(1)) for m in _CANDIDATE_LOW.finditer(low)]
    global _PREFILTER
    if _PREFILTER is None:
        _PREFILTER = _Prefilter()
    return _PREFILTER.find(buf)


def _start_tag(buf: bytes, p: int, name: bytes) -> re.Match[bytes] | None:
    """The start tag ``name`` at ``p``, or None (not that element, or EOF inside the tag)."""
    tag = _TAG.match(buf, p)
    if tag is None or tag.group(1) or tag.group(2).lower() != name:
        return None
    return tag


# --------------------------------------------------------------------------
# The scanner.


def _handler_values(buf: bytes) -> set[bytes]:
    """The raw value (quotes included) of every event handler attribute in ``buf``."""
    values = set(_HANDLER_LOWER_ON.findall(buf))
    for anchor, pattern in _HANDLER_UPPER:
        at = buf.find(anchor, 1)
        for _ in range(_HANDLER_UPPER_HITS):
            if at < 0:
                break
            m = pattern.match(buf, at)  # (the look-behind reads the bytes before ``at``)
            if m is not None:
                values.add(m.group(1) or b"")
            at = buf.find(anchor, at + 1)
        else:
            if at >= 0:
                values.update(pattern.findall(buf, at))
    return values


def _handler_code(doc: _Doc, raw: bytes) -> str | None:
    """The JavaScript of a handler's raw value (quotes included), or None: nothing to run."""
    text = raw.decode(doc.encoding, "replace")
    if text[:1] in ("'", '"') and text[-1:] == text[:1] and len(text) > 1:
        text = text[1:-1]
    return unescape_attr(text) if text else None


def _comment(element: str, rule: str) -> str:
    # Nothing that could end the comment early ("--", ">") or confuse a reader.
    clean = re.sub(r"[^A-Za-z0-9 ._:/@#=?&,+()|*^$~%'-]", "_", rule)[:_COMMENT_RULE_CHARS]
    clean = re.sub(r"-{2,}", "-", clean)
    return f"<!-- jectguard: removed {element} ({clean}) -->"


def _is_xml(content_type: str | None) -> bool:
    """Whether a browser parses a document of this type as XML (XHTML, SVG, XML)."""
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.endswith(("/xml", "+xml"))


class StripUnsettled(JectguardError, RuntimeError):
    """What was left after removing the findings reads differently and holds something
    to remove again (a removal changed how the rest of the page parses). Refused."""


class HandlersUnplaced(JectguardError, RuntimeError):
    """A handler that loads or injects could not be placed in its start tag: the page's
    readings were cut short by a work bound (a hostile page). Refused, never passed."""


class _Markup:
    """Where the readings of a document read start tags: a handler's tag is found there.

    The precise walk records every start tag it reads one by one (interesting ones,
    foreign content) and every stretch it reads past whole in the data state; a
    stretch is read again on demand (``_COMPLETE_TOKENS``, the same grammar). An
    ``on...=`` outside all of them (comments, RCDATA/RAWTEXT, script text,
    attribute values) is no attribute in any reading, whatever ``<script`` or ``<``
    precedes it; one inside a tag is placed however long the tag is.
    """

    def __init__(self, buf: bytes, reading: _Reading) -> None:
        self.buf = buf
        # Per reading (tags do not overlap within one, but do across readings): the
        # starts and ends of its tags, then of its stretches, for a bisection each.
        self.tracks = [
            (
                [start for start, _ in track.tags],
                [end for _, end in track.tags],
                [start for start, _ in track.stretches],
                [end for _, end in track.stretches],
            )
            for track in reading.tracks
            if track.tags or track.stretches
        ]
        self.all = [span for track in reading.tracks for span in (*track.tags, *track.stretches)]
        self.cursors: dict[int, list[int]] = {}  # per stretch start: see _in_stretch

    def spans(self) -> list[tuple[int, int]]:
        """The merged spans of markup (tags and stretches), in order: handlers are there."""
        out: list[tuple[int, int]] = []
        for lo, hi in sorted(self.all):
            if out and lo <= out[-1][1]:
                if hi > out[-1][1]:
                    out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out

    def tags_at(self, at: int) -> list[int]:
        """The start (``<``) of every start tag that some reading reads around ``at``.

        Called in increasing ``at`` (the handler search goes forward): in each stretch
        the tokens are read on from where the last call stopped, at C speed, so a
        stretch costs one pass whatever the number of handlers in it.
        """
        found: set[int] = set()
        for tag_starts, tag_ends, stretch_starts, stretch_ends in self.tracks:
            i = bisect.bisect_right(tag_starts, at) - 1
            if i >= 0 and tag_ends[i] > at:
                found.add(tag_starts[i])
                continue
            i = bisect.bisect_right(stretch_starts, at) - 1
            if i >= 0 and stretch_ends[i] > at:
                start = self._in_stretch(stretch_starts[i], at)
                if start >= 0:
                    found.add(start)
        return sorted(found)

    def _in_stretch(self, lo: int, at: int) -> int:
        """The start tag around ``at`` in the stretch from ``lo`` (-1: text, a comment...)."""
        cursor = self.cursors.get(lo)
        if cursor is None or at < cursor[0]:
            cursor = [lo, lo, lo, -1]  # [read up to, token start, token end, tag or -1]
            self.cursors[lo] = cursor
        if cursor[1] <= at < cursor[2]:
            return cursor[3]
        buf = self.buf
        pos = max(cursor[0], cursor[2])
        q = _COMPLETE_TOKENS.match(buf, pos, at)  # (cut at ``at``: what ends before it)
        stop = q.end() if q is not None else pos
        if stop == at and stop > pos and buf[at - 1] == 0x3C:
            stop = at - 1  # (a "<" cut from what follows it reads as text: read it whole)
        while True:
            token = _DATA_TOKEN.match(buf, stop)
            end = token.end() if token is not None else len(buf)  # (EOF inside a tag)
            if end > at:
                break
            stop = end
        tag = -1
        if buf[stop : stop + 1] == b"<" and buf[stop + 1 : stop + 2].isalpha() and token:
            tag = stop
        cursor[:] = [stop, stop, end, tag]
        return tag


class _Caches:
    """Verdict caches shared by every scan of one Scanner (is_blocked must be pure)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.verdicts: dict[str, MatchLike | None] = {}
        self.joins: dict[tuple[str, str], str | None] = {}
        self.inline: dict[tuple[str, ScriptKind, str, tuple[str, ...]], _Verdict | None] = {}
        # Elements (and SVG/MathML subtrees) by their bytes, per (encoding, page URL,
        # bases...): everything their verdict depends on (see Scanner._fast_clean).
        self.elements: dict[tuple[bytes, tuple[str, ...]], bool] = {}
        # Script elements that ended with a complete end tag and no "<!--" in their text.
        self.complete: dict[tuple[bytes, tuple[str, ...]], bool] = {}
        # Event handler values (raw bytes, quotes included) judged to run and load
        # nothing blocked, per (encoding, page URL, bases): everything such a verdict
        # depends on (it reads no scan depth or work budget: see Scanner._handlers).
        self.clean_handlers: dict[tuple[str, str, tuple[str, ...]], set[bytes]] = {}
        self.clean_handler_count = 0  # values and contexts, bounded by ``entries``
        # Characters of keys each cache above holds (by id: see ``put``).
        self.key_chars: dict[int, int] = {}

    def known_clean_handlers(self, context: tuple[str, str, tuple[str, ...]]) -> AbstractSet[bytes]:
        return self.clean_handlers.get(context, frozenset())

    def add_clean_handlers(
        self, context: tuple[str, str, tuple[str, ...]], values: Iterable[bytes]
    ) -> None:
        values = [v for v in values if len(v) <= _HANDLER_CACHE_MAX_BYTES]
        if self.entries <= 0 or not values or _key_chars(context) > _HANDLER_CACHE_MAX_BYTES * 2:
            return  # (a context is a page URL and its bases: a huge one is not kept)
        if self.clean_handler_count + len(values) + 1 > self.entries:
            self.clean_handlers.clear()
            self.clean_handler_count = 0
        known = self.clean_handlers.get(context)
        if known is None:
            known = self.clean_handlers[context] = set()
            self.clean_handler_count += 1
        before = len(known)
        known.update(values)
        self.clean_handler_count += len(known) - before

    def put(self, cache: dict[_K, _V], key: _K, value: _V) -> None:
        if self.entries <= 0:
            return
        cost = _key_chars(key)
        if cost > _CACHE_KEY_MAX_CHARS:
            return
        held = self.key_chars.get(id(cache), 0) + cost
        if len(cache) >= self.entries or held > _CACHE_KEY_CHARS:
            cache.clear()
            held = cost
        self.key_chars[id(cache)] = held
        cache[key] = value


def _key_chars(key: object) -> int:
    """What a cache key holds, in characters or bytes (strings and bytes counted, the rest 8)."""
    if isinstance(key, str | bytes):
        return len(key)
    if isinstance(key, tuple):
        return sum(_key_chars(k) for k in key)
    return 8


class Scanner:
    """Finds (``scan``) and removes (``strip``) injected active content in HTML bodies.

    ``is_blocked(absolute_url)`` returns a match (with ``.list`` and ``.rule``) or
    None; its answers are cached (``cache_entries`` per cache, 0 disables), so
    build a new Scanner when the lists change. ``fast_path=False`` always runs
    the precise tokenizer (for tests and diagnostics). ``after_html`` is "off", "log" (report, keep) or "strip" (report,
    remove) for active content after ``</html>``.
    """

    def __init__(
        self,
        is_blocked: Callable[[str], MatchLike | None],
        signatures: Sequence[Signature] = (),
        *,
        after_html: str = "off",
        max_bytes: int = MAX_SCAN_BYTES,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        fast_path: bool = True,
    ) -> None:
        if after_html not in AFTER_HTML_POLICIES:
            raise ValueError(f"after_html must be one of {AFTER_HTML_POLICIES}, not {after_html!r}")
        self.is_blocked = is_blocked
        self.signatures = tuple(signatures)
        self.after_html = after_html
        self.max_bytes = max_bytes
        self._caches = _Caches(cache_entries)
        self.fast_path = fast_path
        # Per target, each signature with the literals one of which every match of it
        # contains: a plain substring search in the case-folded text rules most out.
        self._sig_filters: dict[str, tuple[tuple[Signature, frozenset[str] | None], ...]] = {
            target: tuple(
                (s, required_literals(s.regex.pattern, s.regex.flags))
                for s in self.signatures
                if target in s.targets
            )
            for target in ("script", "url")
        }

    def _signature(self, text: str, target: str, low: str | None = None) -> Signature | None:
        """The first signature for ``target`` that matches ``text`` (``low``: its
        ``fold_ascii_case``, when the caller has it)."""
        for sig, literals in self._sig_filters[target]:
            if literals is not None:
                if low is None:
                    low = fold_ascii_case(text)
                if not any(lit in low for lit in literals):
                    continue
            if sig.regex.search(text) is not None:
                return sig
        return None

    def _prepare(self, body: bytes, content_type: str | None) -> _Doc | None:
        if len(body) > self.max_bytes:
            raise BodyTooLarge(
                f"body of {len(body)} bytes exceeds the scan limit of {self.max_bytes}"
            )
        read_as, xml = html_reading(content_type)
        if not body or not is_html(body, read_as):
            return None
        return _Doc(body, detect_charset(body, read_as), html=not xml)

    def scan(self, body: bytes, page_url: str, content_type: str | None = None) -> list[Finding]:
        """Every finding in ``body``, in document order; raises BodyTooLarge over ``max_bytes``.

        ``content_type`` None means unknown: the body is scanned if it sniffs as HTML.
        """
        doc = self._prepare(body, content_type)
        if doc is None:
            return []
        return self._scan_doc(doc, page_url)

    def _scan_doc(self, doc: _Doc, page_url: str) -> list[Finding]:
        judge = _Judge(self, page_url)
        candidates = _candidates(doc.buf)
        handlers = self._handlers(doc, judge, (page_url,), candidates)
        if self.fast_path and self._fast_clean(doc, judge, candidates):
            return handlers
        findings = self._precise(doc, judge)
        if handlers:
            findings = sorted([*findings, *handlers], key=lambda f: (f.start, f.end))
        return findings

    def _handlers(
        self,
        doc: _Doc,
        judge: _Judge,
        outer: Sequence[str],
        candidates: Sequence[tuple[int, bytes]],
    ) -> list[Finding]:
        """Event handler attributes (``<img src=x onerror="...">``, ``<svg onload>``).

        A handler is inline JavaScript like a script's text, judged the same way;
        when it loads or injects a blocked origin the attribute is cut from its start
        tag (``Finding.cuts``). Every ``on...=`` in a start tag that a reading with
        scripting on builds is judged, however long the tag (``_handler_findings``).
        ``outer``: the
        base URLs in force around the document (the page's; a srcdoc document's
        container's), to which its own ``<base href>`` values are added.

        Most pages have handlers and nothing in them to find (an ``on...=`` costs
        ~3.5 us to place and judge, 164 of them on a 100 KB shop page), so first
        every value an ``on...=`` in the body reads (in script texts too: a superset
        of what ``_handler_findings`` judges) is looked up among the values judged
        clean before under the same encoding, page URL and bases: all that a
        handler's verdict depends on (``script_text`` caches it on the same key; a
        verdict of None reads neither the scan depth nor the work budget, and the
        element and attribute only place the finding). New values are judged and
        remembered; only when one is not clean does ``_handler_findings`` run. A
        UTF-16 body is searched that way at once (its buffer is a projection).
        """
        buf = doc.buf
        if doc.utf16:  # (the buffer is a projection: its values are not the text)
            return self._handler_findings(
                doc, judge, self._handler_bases(doc, judge, outer, candidates), candidates
            )
        values = _handler_values(buf)
        if not values:
            return []
        bases = self._handler_bases(doc, judge, outer, candidates)
        context = (doc.encoding, judge.page_url, tuple(bases))
        values -= judge.caches.known_clean_handlers(context)
        clean: list[bytes] = []
        for raw in values:
            code = _handler_code(doc, raw)
            if code is not None and judge.script_text(code, bases, ScriptKind.CLASSIC) is not None:
                break
            clean.append(raw)
        else:
            judge.caches.add_clean_handlers(context, clean)
            return []
        judge.caches.add_clean_handlers(context, clean)
        return self._handler_findings(doc, judge, bases, candidates)

    @staticmethod
    def _handler_bases(
        doc: _Doc, judge: _Judge, outer: Sequence[str], candidates: Sequence[tuple[int, bytes]]
    ) -> list[str]:
        """The bases in force around the document, then each ``<base href>`` in it."""
        bases = list(outer)
        for p, name in candidates:
            if name != b"base":
                continue
            tag = _start_tag(doc.buf, p, name)
            href = parse_attrs(doc.text(*tag.span(3))).get("href") if tag else None
            if href is None:
                continue
            for base in outer:  # (a srcdoc document's base resolves against its container's)
                resolved = judge.resolve(base, href)
                if resolved is not None and resolved not in bases:
                    bases.append(resolved)
        return bases

    @staticmethod
    def _handler_findings(
        doc: _Doc, judge: _Judge, bases: Sequence[str], candidates: Sequence[tuple[int, bytes]]
    ) -> list[Finding]:
        """The start tags whose handlers load or inject (``_handlers``), in body order.

        A handler is an attribute of a start tag that some reading of the document
        builds, as the precise walk reads it (``_Markup``): an ``on...=`` in a comment,
        a ``<textarea>``, an attribute value or a script's text is none, and a fake
        ``<script`` before a real one hides nothing. A page whose readings were cut
        short (past the walk's work bounds: hostile nesting) and that holds a handler
        value that loads is refused (``HandlersUnplaced``): its tag cannot be placed
        for sure, and removing a guess could change how the rest of the page reads.
        """
        buf = doc.buf
        low = buf.translate(_LOWER)  # (a literal "on" first: a fast search)
        reading = _read_document(doc)
        markup = _Markup(buf, reading)
        # Searched in markup only (megabytes of inline script hold many an "on" that
        # is no handler: "consectetur"; ~10 ms per 5 MB), and everywhere past where
        # the readings are not all known.
        unread_from = reading.unread_from if doc.exact else 0
        spans = [(lo, hi) for lo, hi in markup.spans() if lo < unread_from]
        rest = max(unread_from, spans[-1][1] if spans else 0)
        if rest < len(low):
            spans.append((rest, len(low)))
        matches = itertools.chain.from_iterable(
            _HANDLER_LOW.finditer(low, max(lo, 1), hi) for lo, hi in spans
        )
        findings: list[Finding] = []
        seen: set[int] = set()
        for m in matches:
            at = m.start() - 1
            if buf[at] not in _HANDLER_AFTER:
                continue
            # The value as it reads from here: most handlers name nothing blocked, and
            # are let go before their tag is looked for.
            value = _HANDLER_VALUE.match(buf, m.end())
            code = _handler_code(doc, doc.raw_slice(*value.span(1)) if value else b"")
            if code is None:
                continue
            judged = judge.script_text(code, bases, ScriptKind.CLASSIC)
            if judged is None:
                continue
            if judged.removed and at >= unread_from:
                # (A mention is reported where the readings that ran place it.)
                raise HandlersUnplaced(
                    "an event handler that names a blocked origin on a page whose readings "
                    "exceed the scanner's work bound"
                )
            for start in markup.tags_at(m.start()):
                if start in seen:
                    continue
                seen.add(start)
                tag = _TAG.match(buf, start)
                if tag is None:  # (recorded from a match: cannot happen)
                    continue
                attrs = parse_attrs(doc.text(*tag.span(3)))
                for key, code in attrs.items():
                    if not key.startswith("on") or len(key) < 3 or not code:
                        continue
                    verdict = judge.script_text(code, bases, ScriptKind.CLASSIC)
                    if verdict is None:
                        continue
                    # Every occurrence: with the first gone, a duplicate would count.
                    cuts = tuple(
                        (doc.offset(a.start(1)), doc.offset(a.end()))
                        for a in _ATTR_SPANS.finditer(buf, *tag.span(3))
                        if a.group(1).lower().decode("latin-1") == key
                    )
                    findings.append(
                        Finding(
                            start=doc.offset(start),
                            end=doc.offset(tag.end()),
                            element=tag.group(2).decode("latin-1").lower(),
                            url=verdict.url,
                            reason=verdict.reason,
                            rule=verdict.rule,
                            list=verdict.list,
                            removed=verdict.removed,
                            evidence=f"{key}: {verdict.evidence}" if verdict.evidence else key,
                            cuts=cuts,
                        )
                    )
        findings.sort(key=lambda f: (f.start, f.end))
        return findings

    def _fast_clean(
        self, doc: _Doc, judge: _Judge, candidates: Sequence[tuple[int, bytes]]
    ) -> bool | None:
        """True if no reading of the document can hold a finding; None: let the precise scan decide.

        Every ``<script``, ``<iframe``, ... occurrence is judged as if it were a
        real element (its tag, attributes and script text do not depend on what
        precedes it, when it is one); every ``<svg``/``<math`` is followed
        precisely through its foreign content; every ``<base href`` is tried as
        the base URL. This can only add candidates, never lose one.
        """
        buf = doc.buf
        bases = [judge.page_url]
        html_end = len(buf)
        for p, name in candidates:
            if name == b"base":
                tag = _start_tag(buf, p, name)
                href = parse_attrs(doc.text(*tag.span(3))).get("href") if tag else None
                resolved = judge.resolve(judge.page_url, href) if href is not None else None
                if resolved is not None and resolved not in bases:
                    bases.append(resolved)
            elif (
                name == b"/html"
                and html_end == len(buf)
                and self.after_html != "off"
                and _HTML_END_AT.match(buf, p)
            ):
                html_end = p
        # What an element's verdict depends on besides its bytes: the encoding its text
        # is decoded with (0x83 0x5C is one Shift_JIS character that eats a backslash,
        # two windows-1252 ones), the page URL and the bases in force.
        key_bases = (doc.encoding, *bases)
        cache = self._caches.elements
        budget = _FAST_FOREIGN_BUDGET * len(buf) + 65536
        work = 0
        shared = _Shared(doc)
        utf16 = doc.utf16
        complete = self._caches.complete
        for p, name in candidates:
            if name == b"script":
                if not utf16 and p <= html_end:
                    # Bytes identical to a whole script element seen before are
                    # that element again (it ends within its own bytes).
                    close = buf.find(b"</script", p)
                    gt = buf.find(b">", close) if close >= 0 else -1
                    if 0 <= gt < p + _ELEMENT_CACHE_MAX_BYTES:
                        seen = complete.get((buf[p : gt + 1], key_bases))
                        if seen is not None:
                            if seen:
                                return False
                            continue
                fast = _FAST_SCRIPT.match(buf, p)
                if fast is None:
                    continue  # EOF inside this tag if it is real; it may be fake (in a comment)
                end, text_end = fast.span("text")
                whole = fast.start("close") >= 0
                if whole:
                    el_end = fast.end()
                else:
                    tag = _TAG.match(buf, p)
                    if tag is None:
                        continue
                    end = tag.end()
                    text_end, el_end = _script_end(buf, end)
                if p > html_end:
                    return False  # active content after </html> (policy log or strip)
                # Templated sites repeat the same elements on every page: cache by bytes.
                key = (doc.raw_slice(p, el_end) if utf16 else buf[p:el_end], key_bases)
                cached = cache.get(key)
                if cached is not None:
                    if cached:
                        return False
                    continue
                text = _norm(doc.text(end, text_end))
                if _SCRIPT_ATTRS.search(buf, p, end) is not None:
                    attrs = parse_attrs(doc.text(*fast.span("attrs")))
                else:
                    attrs = {}
                suspect = judge.judge(Element("script", p, el_end, attrs, text), bases) is not None
                if el_end - p <= _ELEMENT_CACHE_MAX_BYTES:
                    self._caches.put(cache, key, suspect)
                    if whole and not utf16:
                        self._caches.put(complete, key, suspect)
                if suspect:
                    return False
                continue
            elif name in (b"svg", b"math"):
                # The walk depends only on the bytes it reads: an icon repeated
                # on every page is walked once. Key: the bytes up to the first
                # matching end tag, cached only if the walk stopped within them.
                subtree = _FAST_FOREIGN[name].match(buf, p)
                if subtree is not None:
                    guess = subtree.end()
                else:
                    tag = _start_tag(buf, p, name)
                    if tag is None:
                        continue
                    foreign_end = _FOREIGN_END[name].search(buf, tag.end())
                    guess = buf.find(b">", foreign_end.end()) + 1 if foreign_end else 0
                svg_key = (doc.raw_slice(p, guess), key_bases) if guess > 0 else None
                if svg_key is not None:
                    cached = cache.get(svg_key)
                    if cached is not None:
                        if cached:
                            return False
                        continue
                local = _Walk(shared, p, local=True)
                local.run()
                work += local.work + (local.pos - p)
                if work > budget:
                    return None
                suspect = any(judge.judge(el, bases) is not None for el in shared.elements)
                shared.elements.clear()
                if svg_key is not None and local.pos <= guess:
                    self._caches.put(cache, svg_key, suspect)
                if suspect:
                    return False
                continue
            elif name in (b"base", b"/html"):
                continue
            else:
                tag = _start_tag(buf, p, name)
                if tag is None:
                    continue
                end = el_end = tag.end()
                if name == b"meta" and _REFRESH.search(buf, p, end) is None:
                    continue
                if p > html_end:
                    return False
                key = (doc.raw_slice(p, el_end), key_bases)
                cached = cache.get(key)
                if cached is not None:
                    if cached:
                        return False
                    continue
                attrs = parse_attrs(doc.text(*tag.span(3)))
                suspect = (
                    judge.judge(Element(name.decode(), p, el_end, attrs, None), bases) is not None
                )
                if el_end - p <= _ELEMENT_CACHE_MAX_BYTES:
                    self._caches.put(cache, key, suspect)
                if suspect:
                    return False
        return True

    @staticmethod
    def _is_active(el: Element) -> bool:
        if el.name == "meta":
            return el.attrs.get("http-equiv", "").strip().lower() == "refresh"
        if el.name in ("script", "svg:script") and not any(
            k in el.attrs for k in ("src", "href", "xlink:href")
        ):
            return script_kind(el.attrs) is not ScriptKind.DATA  # a data block runs nothing
        return el.name in _ACTIVE

    def _precise(self, doc: _Doc, judge: _Judge) -> list[Finding]:
        elements = _walk_document(doc)
        base = judge.page_url
        for el in elements:
            if el.name == "base" and "href" in el.attrs and not el.alternative:
                resolved = _resolve(judge.page_url, el.attrs["href"])
                if resolved is not None:
                    base = resolved
                break
        findings: list[Finding] = []
        data_mentions: list[tuple[int, Element]] = []
        for el in elements:
            if el.name == "base":
                continue
            verdict = judge.judge(el, (base,))
            if (
                verdict is not None
                and verdict.reason == "mention"
                and el.name in ("script", "svg:script")
                and el.text
                and not any(k in el.attrs for k in ("src", "href", "xlink:href"))
                and script_kind(el.attrs) is ScriptKind.DATA
            ):
                data_mentions.append((len(findings), el))
            after = el.after_html and self.after_html != "off" and self._is_active(el)
            if verdict is None and not after:
                continue
            if verdict is None or (after and verdict.reason == "mention"):
                # (A mention is no reason to remove; where it sits may be, by policy.)
                verdict = _Verdict(
                    None, "after-html", "active content after </html>", "jectguard", False
                )
            removed = verdict.removed or (after and self.after_html == "strip")
            findings.append(
                Finding(
                    start=doc.offset(el.start),
                    end=doc.offset(el.end),
                    element=el.name,
                    url=verdict.url,
                    reason=verdict.reason,
                    rule=verdict.rule,
                    list=verdict.list,
                    removed=removed,
                    evidence=verdict.evidence,
                )
            )
        if data_mentions:
            self._data_loaded(findings, data_mentions, elements, judge, (base,))
        return findings

    @staticmethod
    def _data_loaded(
        findings: list[Finding],
        data_mentions: list[tuple[int, Element]],
        elements: Sequence[Element],
        judge: _Judge,
        bases: Sequence[str],
    ) -> None:
        """Data blocks naming a blocked origin on a page whose scripts can run them.

        A data block runs nothing by itself, but a script elsewhere on the page can
        ``eval`` its text, write it, copy it into a new script or re-type it and
        insert it again (which runs it): the payload, split from its tiny loader. The
        block is removed (the loader alone does nothing) when such a loader exists;
        a page that only reads its data (``JSON.parse(__NEXT_DATA__.textContent)``)
        keeps it.
        """
        loader = None
        scripts = [
            el.text
            for el in elements
            if el.name in ("script", "svg:script")
            and el.text
            and not any(k in el.attrs for k in ("src", "href", "xlink:href"))
            and script_kind(el.attrs) in (ScriptKind.CLASSIC, ScriptKind.MODULE)
        ]
        # Smallest first, within a tokenizing budget (a loader is small; past the
        # budget, the shapes of sinks in the raw text decide).
        budget = _LOADER_WORK_CHARS
        for text in sorted(scripts, key=len):
            loader = data_loader(text, limit=max(0, budget))
            budget -= len(text)
            if loader is not None:
                break
        if loader is None:
            return
        for index, el in data_mentions:
            verdict = judge.data_references(el.text or "", bases)
            if verdict is None:
                continue
            f = findings[index]
            if f.reason != "mention":
                continue
            findings[index] = dataclasses.replace(
                f,
                reason=verdict.reason,
                removed=verdict.removed,
                evidence=f"data block, run by a script on the page ({loader})",
            )

    def strip(
        self, body: bytes, page_url: str, content_type: str | None = None, *, comment: bool = True
    ) -> tuple[bytes, list[Finding]]:
        """Remove the findings marked ``removed``; return the new body and all findings.

        Returns body unchanged (the SAME bytes object) when nothing is removed.
        Everything outside the removed elements is byte-identical; each removed
        span is replaced by a short comment (encoded in the document's encoding)
        when ``comment`` is true.
        """
        doc = self._prepare(body, content_type)
        if doc is None:
            return body, []
        findings = self._scan_doc(doc, page_url)
        edits: list[tuple[int, int, bytes]] = []
        for f in findings:
            if not f.removed:
                continue
            if f.cuts:
                cut = self._encode(doc, _CUT_ATTRIBUTE)
                edits.extend((start, end, cut) for start, end in f.cuts)
            else:
                note = self._encode(doc, _comment(f.element, f.rule)) if comment else b""
                edits.append((f.start, f.end, note))
        if not edits:
            return body, findings
        edits.sort(key=lambda e: (e[0], e[1]))
        out: list[bytes] = []
        pos = 0
        for start, end, replacement in edits:
            if start < pos:
                pos = max(pos, end)  # inside (or overlapping) a span already removed
                continue
            out.append(body[pos:start])
            out.append(replacement)
            pos = end
        out.append(body[pos:])
        stripped = b"".join(out)
        # The page as the browser now gets it is read again: a removal can change how
        # the rest parses (a cut end tag lets markup a reading held as text become
        # elements). Anything there to remove again refuses the page.
        again = self._prepare(stripped, content_type)
        if again is not None and any(f.removed for f in self._scan_doc(again, page_url)):
            raise StripUnsettled("what was left after removing the findings holds more to remove")
        return stripped, findings

    @staticmethod
    def _encode(doc: _Doc, text: str) -> bytes:
        return text.encode(doc.encoding if doc.utf16 else "ascii", "replace")
