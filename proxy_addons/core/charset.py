"""Decide how a browser would decode an HTML body, and whether a body is HTML at all.

Only the obvious cases of the WHATWG "encoding sniffing" and "MIME sniffing"
algorithms: a byte order mark, the Content-Type ``charset`` parameter, a
``<meta>`` prescan of the first 1024 bytes, then a fallback (UTF-8 when the
body is valid UTF-8, else windows-1252). No statistical detection.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

# The WHATWG prescan looks at no more than this many bytes.
PRESCAN_BYTES = 1024
# MIME sniffing looks at no more than this many bytes (the "resource header").
SNIFF_BYTES = 1445

# WHATWG labels whose meaning differs from Python's codec of the same name,
# or which Python does not know. Everything else goes through codecs.lookup.
_LABELS: dict[str, str] = {
    "ascii": "windows-1252",
    "us-ascii": "windows-1252",
    "latin1": "windows-1252",
    "latin-1": "windows-1252",
    "iso-8859-1": "windows-1252",
    "iso8859-1": "windows-1252",
    "iso_8859-1": "windows-1252",
    "l1": "windows-1252",
    "cp1252": "windows-1252",
    "x-cp1252": "windows-1252",
    "iso-8859-9": "windows-1254",
    "latin5": "windows-1254",
    "iso-8859-11": "windows-874",
    "tis-620": "windows-874",
    "x-sjis": "shift_jis",
    "sjis": "shift_jis",
    "ms_kanji": "shift_jis",
    "windows-31j": "cp932",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "gb2312": "gbk",
    "gb_2312": "gbk",
    "x-gbk": "gbk",
    "chinese": "gbk",
    "big5": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "korean": "cp949",
    "windows-949": "cp949",
    "x-user-defined": "windows-1252",
    "unicode": "utf-16le",
    "utf-16": "utf-16le",
    "ucs-2": "utf-16le",
    "unicodefeff": "utf-16le",
    "unicodefffe": "utf-16be",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "x-mac-cyrillic": "mac-cyrillic",
}

_UTF16 = frozenset({"utf-16le", "utf-16be"})
# Bytes that may follow "<meta" in the prescan: whitespace or "/".
_META_END = frozenset(bytes([c]) for c in b"\t\n\f\r /")


@dataclass(frozen=True, slots=True)
class Charset:
    """How to decode a body: a Python codec name and where the decision came from.

    ``bom`` is the length of a byte order mark at the start of the body (0 if
    none); ``source`` is one of "bom", "header", "meta", "fallback".
    """

    encoding: str
    source: str
    bom: int = 0

    @property
    def is_utf16(self) -> bool:
        return self.encoding in _UTF16


def normalize_label(label: str) -> str | None:
    """Map a charset label to a Python codec name as browsers read it, or None if unknown."""
    key = label.strip().strip("\"'").strip().lower()
    if not key:
        return None
    if key in _LABELS:
        return _LABELS[key]
    try:
        info = codecs.lookup(key)
    except LookupError:
        return None
    name = info.name
    # Refuse pseudo-encodings (base64, rot13, ...) a page could name to hurt itself.
    if not getattr(info, "_is_text_encoding", True):
        return None
    if name in ("utf-16-le", "utf-16-be"):
        return name.replace("-le", "le").replace("-be", "be")
    if name in ("utf-16", "utf-32", "utf-32-le", "utf-32-be", "utf-7"):
        # Browsers do not support UTF-32/UTF-7; a bare utf-16 label means LE.
        return "utf-16le" if name == "utf-16" else None
    return name


def bom_charset(body: bytes) -> Charset | None:
    """The encoding named by a byte order mark, if the body starts with one."""
    if body.startswith(b"\xef\xbb\xbf"):
        return Charset("utf-8", "bom", 3)
    if body.startswith(b"\xfe\xff"):
        return Charset("utf-16be", "bom", 2)
    if body.startswith(b"\xff\xfe"):
        return Charset("utf-16le", "bom", 2)
    return None


def content_type_charset(content_type: str | None) -> str | None:
    """The codec named by a Content-Type ``charset`` parameter, if any and known.

    Of several comma-separated values (repeated fields), the one Fetch picks.
    """
    if not content_type:
        return None
    label = extract_mime_type(content_type)[1]
    return normalize_label(label) if label else None


# "The algorithm for extracting a character encoding from a meta element".
_META_CONTENT_CHARSET = re.compile(
    rb"""charset[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"|'([^']*)'|([^\t\n\f\r ;"']+))""", re.I
)
_PRESCAN_ATTR = re.compile(
    rb"""[\t\n\f\r /]*([^\t\n\f\r />][^\t\n\f\r /=>]*)"""
    rb"""(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"|'([^']*)'|([^\t\n\f\r >]*)))?"""
)
_PRESCAN_SKIP_TAG = re.compile(rb"""(?:[^>"']|"[^"]*"|'[^']*')*>?""")


def _meta_charset(attrs: dict[bytes, bytes]) -> str | None:
    if b"charset" in attrs:
        return normalize_label(attrs[b"charset"].decode("ascii", "replace"))
    if attrs.get(b"http-equiv", b"").strip().lower() == b"content-type" and b"content" in attrs:
        m = _META_CONTENT_CHARSET.search(attrs[b"content"])
        if m:
            raw = m.group(1) or m.group(2) or m.group(3) or b""
            return normalize_label(raw.decode("ascii", "replace"))
    return None


def prescan_meta(body: bytes) -> str | None:
    """The codec declared by a ``<meta>`` in the first 1024 bytes (WHATWG prescan, simplified)."""
    head = body[:PRESCAN_BYTES]
    pos = 0
    n = len(head)
    while True:
        lt = head.find(b"<", pos)
        if lt < 0 or lt + 1 >= n:
            return None
        if head.startswith(b"<!--", lt):
            end = head.find(b"-->", lt + 2)
            if end < 0:
                return None
            pos = end + 3
            continue
        if head[lt : lt + 5].lower() == b"<meta" and head[lt + 5 : lt + 6] in _META_END:
            attrs: dict[bytes, bytes] = {}
            p = lt + 5
            while p < n:
                m = _PRESCAN_ATTR.match(head, p)
                if not m or m.end() == p:
                    break
                name = m.group(1).lower()
                if name.startswith(b">"):
                    break
                value = m.group(2) or m.group(3) or m.group(4) or b""
                attrs.setdefault(name, value)
                p = m.end()
                if p < n and head[p : p + 1] == b">":
                    break
            found = _meta_charset(attrs)
            if found is not None:
                # A meta naming UTF-16 means UTF-8: the bytes are evidently ASCII-compatible.
                return "utf-8" if found in _UTF16 else found
            pos = p + 1
            continue
        second = head[lt + 1 : lt + 2]
        if second.isalpha() or (second == b"/" and head[lt + 2 : lt + 3].isalpha()):
            m2 = _PRESCAN_SKIP_TAG.match(head, lt + 1)
            pos = m2.end() if m2 else lt + 1
            continue
        if second in (b"!", b"/", b"?"):
            end = head.find(b">", lt)
            if end < 0:
                return None
            pos = end + 1
            continue
        pos = lt + 1


def _fallback(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte sequence cut by the end of a partial body is still UTF-8.
        if exc.start < len(body) - 3 or exc.reason != "unexpected end of data":
            return "windows-1252"
    return "utf-8"


def detect_charset(body: bytes, content_type: str | None = None) -> Charset:
    """Decide the document encoding: BOM, then Content-Type, then ``<meta>``, then a fallback."""
    bom = bom_charset(body)
    if bom is not None:
        return bom
    header = content_type_charset(content_type)
    if header is not None:
        return Charset(header, "header")
    meta = prescan_meta(body)
    if meta is not None:
        return Charset(meta, "meta")
    return Charset(_fallback(body), "fallback")


_HTML_TYPES = frozenset({"text/html"})
_SNIFF_TYPES = frozenset(
    {"", "unknown/unknown", "application/unknown", "*/*", "application/octet-stream", "text/plain"}
)
# "Rules for identifying an unknown MIME type": patterns that mean text/html when
# followed by a tag-terminating byte (space or '>').
_HTML_SNIFF = re.compile(
    rb"[\t\n\f\r ]*+<(?:!DOCTYPE HTML|HTML|HEAD|SCRIPT|IFRAME|H1|DIV|FONT|TABLE|A|STYLE|TITLE"
    rb"|B|BODY|BR|P|!--)[ >]",
    re.I,
)


_HTTP_WS = " \t\n\r"
_MIME_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MIME_PARAM = re.compile(
    r"""[ \t\n\r]*+([^;=]*+)(?:=(?:"((?:[^"\\]|\\.?)*+)"?[^;]*+|([^;]*+)))?;?""", re.S
)


def _split_values(value: str) -> list[str]:
    """Fetch "get, decode, and split": commas outside double-quoted strings separate values."""
    if "," not in value:
        return [value.strip(" \t")]
    out: list[str] = []
    start = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ",":
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return out


def _parse_mime(text: str, *, charset_too: bool = True) -> tuple[str, str | None] | None:
    """MIME Sniffing "parse a MIME type": (essence, charset parameter) or None on failure."""
    text = text.strip(_HTTP_WS)
    kind, slash, rest = text.partition("/")
    subtype, _, params = rest.partition(";")
    subtype = subtype.rstrip(_HTTP_WS)
    if not slash or not _MIME_TOKEN.fullmatch(kind) or not _MIME_TOKEN.fullmatch(subtype):
        return None
    charset: str | None = None
    if charset_too and "charset" in params.lower():
        for m in _MIME_PARAM.finditer(params):
            name, quoted, bare = m.groups()
            if name.lower() == "charset" and (quoted is not None or bare is not None):
                if quoted is not None:
                    value = re.sub(r"\\(.)", r"\1", quoted, flags=re.S)
                else:
                    value = (bare or "").rstrip(_HTTP_WS)
                if value:
                    charset = value
                    break  # the first charset parameter wins
    return f"{kind}/{subtype}".lower(), charset


def extract_mime_type(content_type: str) -> tuple[str, str | None]:
    """Fetch "extract a MIME type": the (essence, charset) a browser uses; ("", None) if none.

    Several values (``image/png, text/html``, or repeated Content-Type fields
    joined with commas) are not an error: the last one that parses, other than
    ``*/*``, wins; its charset is the latest one named by a value of the same
    essence in the run that ends with it. That is what Chromium does
    (``HttpUtil::ParseContentType``); Fetch's text keeps the run's first charset
    instead, and the browser is what renders the page.
    """
    essence = ""
    charset: str | None = None
    for value in _split_values(content_type):
        parsed = _parse_mime(value)
        if parsed is None or parsed[0] == "*/*":
            continue
        if parsed[0] != essence:
            essence, charset = parsed
        elif parsed[1] is not None:
            charset = parsed[1]
    return essence, charset


def mime_essence(content_type: str | None) -> str:
    """The lower-cased ``type/subtype`` a browser takes from a Content-Type ("" when none)."""
    if not content_type:
        return ""
    if "," not in content_type:  # one value: no charset to read (every response asks)
        parsed = _parse_mime(content_type, charset_too=False)
        return "" if parsed is None or parsed[0] == "*/*" else parsed[0]
    return extract_mime_type(content_type)[0]


def sniffs_as_html(body: bytes) -> bool:
    """Whether MIME sniffing of an unlabelled body would decide text/html."""
    if bom_charset(body) is not None:
        # A UTF-16/UTF-8 BOM makes the sniffer say text/plain; an HTML page with
        # a BOM and no type is still worth a look when its text starts like HTML.
        charset = bom_charset(body)
        assert charset is not None
        text = body[charset.bom : charset.bom + 2 * SNIFF_BYTES].decode(charset.encoding, "replace")
        return _HTML_SNIFF.match(text.encode("ascii", "replace")[:SNIFF_BYTES]) is not None
    return _HTML_SNIFF.match(body[:SNIFF_BYTES]) is not None


def html_reading(content_type: str | None) -> tuple[str | None, bool]:
    """The type the scanner reads a body as, and whether a browser parses it as XML.

    XHTML is read as HTML with its charset label kept as one label (an approximation:
    the caller must not trust what only an HTML reading can place; see
    ``htmlscan._Doc.exact``). Any other type is returned as it is, with False.
    """
    if content_type is None:
        return None, False
    essence, charset = extract_mime_type(content_type)  # the type a browser takes
    if essence != "application/xhtml+xml":
        return content_type, False
    if not charset:
        return "text/html", True
    quoted = charset.replace("\\", "\\\\").replace('"', '\\"')
    return f'text/html; charset="{quoted}"', True


def is_html(body: bytes, content_type: str | None) -> bool:
    """Whether a browser would parse this response as HTML (the cases worth scanning).

    A text/html type is HTML; a missing, unknown, octet-stream or text/plain type
    is HTML when the body sniffs as HTML (scanning a page that turns out to be
    text costs nothing: nothing is found and nothing changes); anything else
    (images, JSON, CSS, scripts, XML) is not.
    """
    essence = mime_essence(content_type)
    if essence in _HTML_TYPES:
        return True
    if essence in _SNIFF_TYPES:
        return sniffs_as_html(body)
    return False
