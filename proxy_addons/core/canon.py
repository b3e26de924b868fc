"""URL and host canonicalization: WHATWG parsing, then Safe Browsing normalization.

Every URL is parsed by ada (the WHATWG URL parser Node.js uses), so jectguard
sees the host a browser would connect to: userinfo dropped, IPv4 in any numeric
form turned into a dotted quad, IPv6 compressed, IDN turned into punycode
(UTS-46), default ports removed, ``.``/``..`` resolved. On top of that we apply
Google Safe Browsing's canonicalization for matching: leading/trailing dots
stripped and repeated dots collapsed in the host, repeated percent-unescaping of
path and query followed by one canonical escape, repeated slashes collapsed,
fragment dropped, and no port (Safe Browsing expressions are host + path).

A URL that the WHATWG parser refuses is a :class:`CanonError`: no browser can
request it, so there is nothing to block.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
from typing import Final, Literal, NamedTuple

from ada_url._ada_wrapper import ffi, lib  # the binding's own cffi handle: one call, no dict

from .errors import CanonError, URLTooLong

# Longest URL we canonicalize; browsers cap around 2 MB, real attack URLs are short.
MAX_URL_LENGTH: Final = 64 * 1024
# DNS names are at most 253 characters.
MAX_HOST_LENGTH: Final = 253
# Safe Browsing: at most 4 path prefixes from the root, plus the exact paths.
MAX_PATH_PREFIXES: Final = 4
# Safe Browsing: exact host plus up to 4 suffixes from the last 5 labels.
MAX_URL_HOST_SUFFIXES: Final = 5
# Percent-unescaping repeats until stable, bounded so hostile input cannot spin.
MAX_UNESCAPE_ROUNDS: Final = 32

HostKind = Literal["domain", "ipv4", "ipv6"]

_ABSENT: Final = 0xFFFFFFFF  # ada's "component not present" offset
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_C0_AND_SPACE: Final = "".join(map(chr, range(0x21)))
_NO_TABS_OR_NEWLINES: Final = str.maketrans("", "", "\t\n\r")
_SCHEME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_KNOWN_SCHEMES: Final = frozenset(
    {"http", "https", "ws", "wss", "ftp", "file", "data", "javascript", "blob", "about", "mailto"}
)
_HOSTED_SCHEMES: Final = frozenset({"http", "https", "ws", "wss", "ftp"})
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD_RE: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PLAIN_HOST_RE: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_DOTS_RE: Final = re.compile(r"\.{2,}")
_ESCAPE_RE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES_RE: Final = re.compile(rb"/{2,}")
# Bytes Safe Browsing escapes: <= 0x20, >= 0x7f, '#', '%'; and '\\', which a browser
# would read back as '/', so that a canonical URL canonicalizes to itself.
_MUST_ESCAPE: Final = frozenset(range(0x21)) | frozenset(range(0x7F, 0x100)) | {0x23, 0x25, 0x5C}
_ESCAPE_TABLE: Final = [f"%{b:02X}" if b in _MUST_ESCAPE else chr(b) for b in range(256)]


class CanonicalURL(NamedTuple):
    """A URL in the canonical form used for matching and display.

    A NamedTuple, not a dataclass: one is built per request, and a tuple is
    built several times faster.
    """

    scheme: str  # "http", "https", "ws", "wss", "ftp"
    host: str  # canonical host; IPv6 without brackets
    host_kind: HostKind
    port: int | None  # explicit non-default port, or None
    path: str  # canonical, escaped, always starts with "/"
    query: str | None  # canonical query without "?", or None when absent

    @property
    def url(self) -> str:
        """The canonical URL string (Safe Browsing form: no port, no fragment)."""
        host = f"[{self.host}]" if self.host_kind == "ipv6" else self.host
        q = "" if self.query is None else "?" + self.query
        return f"{self.scheme}://{host}{self.path}{q}"

    def __str__(self) -> str:
        return self.url


def _wire_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encoding errors in URL text: a lone surrogate U+DC80..U+DCFF is the raw byte it
    escapes (mitmproxy decodes request lines with "surrogateescape", so a non-UTF-8
    byte a client sent arrives that way: ``%FF`` and a raw 0xFF must canonicalize
    alike); any other lone surrogate is U+FFFD, as the WHATWG parser makes it."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        out += bytes((cp - 0xDC00,)) if 0xDC80 <= cp <= 0xDCFF else b"\xef\xbf\xbd"
    return bytes(out), exc.end


codecs.register_error("jectguard-url", _wire_bytes)


def scalar_text(text: str) -> str:
    """Lone surrogates (bytes a client sent that were not UTF-8) as U+FFFD, so that
    every page, JSON body and log line can encode the text."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _unescape_fully(data: bytes) -> bytes:
    for _ in range(MAX_UNESCAPE_ROUNDS):
        if b"%" not in data:
            return data
        new = _ESCAPE_RE.sub(lambda m: bytes((int(m.group(1), 16),)), data)
        if new == data:
            return data
        data = new
    return data


def _escape(data: bytes) -> str:
    table = _ESCAPE_TABLE
    return "".join([table[b] for b in data])


def _resolve_path(path: bytes) -> bytes:
    """Collapse repeated slashes and resolve dot segments (after unescaping)."""
    path = _SLASHES_RE.sub(b"/", path)
    if b"." not in path:
        return path
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b".":
            if last:
                out.append(b"")
        elif seg == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(seg)
    return b"/" + b"/".join(out)


def _canonical_path(raw: str) -> str:
    if raw.isascii() and "%" not in raw and "//" not in raw and "/." not in raw:
        # Fast path: ada already resolved dots; nothing to unescape or escape
        # except what the escape table flags, which ada has encoded already.
        return raw or "/"
    data = _resolve_path(_unescape_fully(raw.encode("utf-8", "jectguard-url")))
    return _escape(data) or "/"


def _canonical_query(raw: str) -> str:
    if raw.isascii() and "%" not in raw and "#" not in raw and " " not in raw:
        return raw
    return _escape(_unescape_fully(raw.encode("utf-8", "jectguard-url")))


def _host_kind(host: str) -> HostKind:
    if ":" in host:
        return "ipv6"
    last = host.rpartition(".")[2]
    if last.isdigit():
        return "ipv4"
    return "domain"


def _unmap_v6(host: str) -> tuple[str, HostKind]:
    """IPv6 compressed; an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d)
    address is the IPv4 address it carries, as Safe Browsing's reference maps them."""
    ip = ipaddress.IPv6Address(host)
    v4 = ip.ipv4_mapped
    if v4 is None and ip in _NAT64:
        v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if v4 is not None:
        return str(v4), "ipv4"
    return ip.compressed, "ipv6"


def _tidy_dots(host: str) -> str:
    if ".." in host:
        host = _DOTS_RE.sub(".", host)
    return host.strip(".")


def _parse(text: str) -> tuple[str, int, int, int, int, int, int, int, int]:
    """Run ada on ``text``; return href and the component offsets."""
    data = text.encode("utf-8", "jectguard-url")
    url = lib.ada_parse(data, len(data))
    try:
        if not lib.ada_is_valid(url):
            raise CanonError(f"not a valid URL: {text[:200]!r}")
        h = lib.ada_get_href(url)
        href = ffi.unpack(h.data, h.length).decode("utf-8")
        c = lib.ada_get_components(url)
        return (
            href,
            c.protocol_end,
            c.username_end,
            c.host_start,
            c.host_end,
            c.port,
            c.pathname_start,
            c.search_start,
            c.hash_start,
        )
    finally:
        lib.ada_free(url)


def canonicalize_url(text: str) -> CanonicalURL:
    """Parse ``text`` as a browser would and return its canonical form.

    A string without a scheme (``www.example.com/x``) is read as ``http://``,
    as Safe Browsing does. Raises :class:`CanonError` for anything that is not
    a URL with a host.
    """
    if not isinstance(text, str):
        raise CanonError("URL must be a string")
    if len(text) > MAX_URL_LENGTH:
        # The fragment is never sent: a URL long only for its fragment is checked
        # without it ("#" starts the fragment in every state of a hosted URL).
        text = text.partition("#")[0]
        if len(text) > MAX_URL_LENGTH:
            raise URLTooLong(f"URL longer than {MAX_URL_LENGTH} characters")
    # WHATWG: strip leading/trailing C0 controls and spaces, remove tabs and newlines anywhere
    stripped = text.strip(_C0_AND_SPACE)
    if "\t" in stripped or "\n" in stripped or "\r" in stripped:
        stripped = stripped.replace("\t", "").replace("\n", "").replace("\r", "")
    if not stripped:
        raise CanonError("empty URL")
    if not stripped.startswith(("http://", "https://")):  # the common case needs no regex
        m = _SCHEME_RE.match(stripped)
        if m is None or (
            m.group(0)[:-1].lower() not in _KNOWN_SCHEMES
            and not stripped[m.end() :].startswith("//")
        ):
            stripped = "http://" + stripped
    href, proto_end, _user_end, host_start, host_end, port, path_start, search_start, hash_start = (
        _parse(stripped)
    )
    scheme = href[: proto_end - 1]
    if scheme not in _HOSTED_SCHEMES:
        raise CanonError(f"scheme {scheme!r} has no host to check")
    if (hash_start if hash_start != _ABSENT else len(href)) > MAX_URL_LENGTH:
        # Percent-encoding makes a character up to 9 ("€" is %E2%82%AC): the cap is
        # on what is sent, and bounds the work of every path expression made from it.
        raise URLTooLong(f"URL longer than {MAX_URL_LENGTH} characters once encoded")
    if href[host_start : host_start + 1] == "@":
        host_start += 1
    host = _tidy_dots(href[host_start:host_end])
    if not host:
        raise CanonError("URL has no host")
    end = len(href)
    path_end = (
        search_start if search_start != _ABSENT else hash_start if hash_start != _ABSENT else end
    )
    path = _canonical_path(href[path_start:path_end])
    if search_start != _ABSENT:
        query: str | None = _canonical_query(
            href[search_start + 1 : hash_start if hash_start != _ABSENT else end]
        )
    else:
        query = None
    kind: HostKind
    if host[0] == "[":
        host, kind = _unmap_v6(host[1:-1])
    else:
        kind = _host_kind(host)
        if kind == "ipv4" and not _DOTTED_QUAD_RE.fullmatch(host):
            # dots collapsed by Safe Browsing rules: let the WHATWG IPv4 parser read it again
            # ("foo.09.." is a valid name whose tidy form "foo.09" is no IPv4 address: a name)
            try:
                host = canonical_host(host)
            except CanonError:
                kind = "domain"
    # positional: a NamedTuple builds faster without keywords (once per request)
    return CanonicalURL(scheme, host, kind, None if port == _ABSENT else port, path, query)


def url_scheme(text: str) -> str | None:
    """The scheme a WHATWG parser reads at the start of ``text`` (lower case), or None."""
    # (Linear in the text: WHATWG strips any number of leading controls and spaces and
    # removes tabs and newlines anywhere, the scheme's letters included.)
    m = _SCHEME_RE.match(text.lstrip(_C0_AND_SPACE).translate(_NO_TABS_OR_NEWLINES))
    return None if m is None else m.group(0)[:-1].lower()


def has_hosted_scheme(text: str) -> bool:
    """Whether ``text`` is a URL of a scheme whose requests name a host (http, ws, ftp...)."""
    return url_scheme(text) in _HOSTED_SCHEMES


def canonical_host(text: str) -> str:
    """Canonicalize a bare host (a list entry, a CONNECT target, an SNI name).

    Accepts hostnames in any case, with trailing dots, IDN in Unicode,
    IPv4 in any numeric form and IPv6 with or without brackets. Returns
    lowercase ASCII (punycode), IPv4 as a dotted quad and IPv6 compressed
    without brackets. Raises :class:`CanonError`.
    """
    host = text.strip()
    if not host:
        raise CanonError("empty host")
    if _DOTTED_QUAD_RE.fullmatch(host):
        return host  # already canonical: four decimal octets, no leading zeros
    low = _tidy_dots(host.lower())
    if len(low) > MAX_HOST_LENGTH and not host.startswith("["):
        raise CanonError(f"host longer than {MAX_HOST_LENGTH} characters")
    last = low[low.rfind(".") + 1 :]
    if (
        _PLAIN_HOST_RE.fullmatch(low)
        and "xn--" not in low
        and not last.isdigit()
        and not last.startswith("0x")
    ):
        # Fast path for the common list entry: a plain ASCII name, nothing to map.
        # (A last label that is a decimal or 0x number makes the host an IPv4 address.)
        return low
    if ":" in host and not host.startswith("["):
        if "%" in host:
            raise CanonError(f"zoned IPv6 address is not a host: {text[:200]!r}")
        try:
            return _unmap_v6(host)[0]
        except ValueError:
            raise CanonError(f"not a valid host: {text[:200]!r}") from None
    if any(c in host for c in "/?#@\\"):
        raise CanonError(f"not a valid host: {text[:200]!r}")
    try:
        cu = canonicalize_url("http://" + host + "/")
    except CanonError:
        raise CanonError(f"not a valid host: {text[:200]!r}") from None
    if cu.port is not None or len(cu.host) > MAX_HOST_LENGTH:
        raise CanonError(f"not a valid host: {text[:200]!r}")
    return cu.host


def host_kind(host: str) -> HostKind:
    """Whether a canonical host is a domain name, an IPv4 or an IPv6 address."""
    if ":" in host:
        return "ipv6"
    return "ipv4" if _DOTTED_QUAD_RE.fullmatch(host) else "domain"


def canonical_network(text: str) -> tuple[str, int, int]:
    """Canonicalize a CIDR network: returns (network address, prefix length, IP version).

    Host bits set below the prefix are cleared (``192.0.2.7/24`` is ``192.0.2.0/24``).
    """
    addr, sep, plen = text.strip().partition("/")
    try:
        if not sep:
            ip = ipaddress.ip_address(canonical_host(addr) if "." in addr else addr)
            return ip.compressed, ip.max_prefixlen, ip.version
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
    except (ValueError, CanonError):
        raise CanonError(f"not a valid network: {text[:200]!r}") from None
    return net.network_address.compressed, net.prefixlen, net.version


def url_host_expressions(cu: CanonicalURL) -> list[str]:
    """Safe Browsing host expressions: the exact host plus up to 4 from the last 5 labels."""
    if cu.host_kind != "domain":
        return [cu.host]
    labels = cu.host.split(".")
    out = [cu.host]
    start = max(1, len(labels) - 5)
    for i in range(start, len(labels) - 1):
        out.append(".".join(labels[i:]))
    return out[:MAX_URL_HOST_SUFFIXES]


def url_path_expressions(cu: CanonicalURL) -> list[str]:
    """Safe Browsing path expressions: exact path with and without query, then prefixes."""
    out: list[str] = []
    if cu.query is not None:
        out.append(f"{cu.path}?{cu.query}")
    out.append(cu.path)
    if cu.path != "/":
        out.append("/")
        parts = cu.path.split("/")[1:-1]
        prefix = "/"
        for part in parts[: MAX_PATH_PREFIXES - 1]:
            prefix += part + "/"
            if prefix != cu.path:
                out.append(prefix)
    return out


# A URL rule matches its whole subtree at any depth; paths deeper than this many
# directories are probed for rules up to this depth (a rule is never this deep).
MAX_RULE_DEPTH: Final = 256


def _resolve_dots(path: str) -> str:
    out: list[str] = []
    parts = path.split("/")[1:]
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _same_file_paths(path: str) -> list[str]:
    """Paths that IIS or Tomcat map to the same file as ``path`` (canonical form).

    IIS reads ``\\`` (``%5C``) as ``/`` and drops trailing dots and spaces from each
    name; Tomcat drops ``;parameters`` from each segment. A rule written for the file
    must match every spelling the server accepts, so each is probed too.
    """
    out = []
    slashed = _resolve_dots(path.replace("%5C", "/")) if "%5C" in path else path
    for p in (slashed,):
        segs = p.split("/")
        no_params = "/".join(seg.split(";", 1)[0] for seg in segs)
        trimmed = "/".join(
            seg if seg in (".", "..") else _strip_dots_spaces(seg) for seg in no_params.split("/")
        )
        for variant in (p, no_params, trimmed):
            if variant != path and variant not in out:
                out.append(variant)
    return out


# Trailing dots and "%20"s, any mix of them (Windows drops both from a file name),
# matched at the start of the reversed segment.
_DOTS_SPACES_REVERSED: Final = re.compile(r"(?:\.|02%)+")


def _strip_dots_spaces(seg: str) -> str:
    # (Linear: a loop cutting one at a time copied the segment for each, quadratic in a
    # run of them, and a client can send 60,000: 68 ms a check, on every request.)
    if not seg.endswith((".", "%20")):
        return seg
    trimmed = seg.rstrip(".")  # the usual run, at C speed
    if not trimmed.endswith("%20"):
        return trimmed
    m = _DOTS_SPACES_REVERSED.match(trimmed[::-1])
    return trimmed[: len(trimmed) - m.end()] if m is not None else trimmed


def url_match_paths(cu: CanonicalURL) -> list[str]:
    """Every path expression a URL rule may match, for the engine (not Safe Browsing's list).

    Safe Browsing's expressions (:func:`url_path_expressions`) first; then every
    directory prefix at any depth (a rule ``/a/b/c/d/`` matches ``/a/b/c/d/e/f``),
    each also without its slash (a rule ``/mal`` covers ``/mal/x.exe``, never
    ``/malware``); then the same for the spellings a server maps to the same file
    (:func:`_same_file_paths`). Letter case is kept: paths match as written.
    """
    out = url_path_expressions(cu)
    seen = set(out)
    for path in (cu.path, *_same_file_paths(cu.path)):
        if path not in seen:
            seen.add(path)
            out.append(path)
        i = path.find("/", 1)
        depth = 0
        while i != -1 and depth < MAX_RULE_DEPTH:
            for prefix in (path[: i + 1], path[:i]):
                if prefix not in seen:
                    seen.add(prefix)
                    out.append(prefix)
            i = path.find("/", i + 1)
            depth += 1
    return out


# A rule's file without its extensions (Apache MultiViews): at most this many stems.
MAX_PATH_STEMS: Final = 4


def query_params(query: str | None) -> frozenset[str]:
    """The ``name=value`` parameters of a canonical query, as a server reads them.

    Split at ``&`` and at ``;`` (CGI's other separator), empty ones dropped (``?id=7&``),
    ``+`` read as the space it means in a form-encoded query. Order and repeats do not
    matter: a query rule matches a URL whose query holds each of the rule's parameters.
    Names are read as PHP reads them: leading spaces dropped, spaces and dots inside
    turned into ``_`` (``?%20i.d=7`` is ``$_GET['i_d']``).
    """
    if not query:
        return frozenset()
    if "+" in query:
        query = query.replace("+", "%20")
    out = set()
    for param in query.replace(";", "&").split("&"):
        if not param:
            continue
        name, sep, value = param.partition("=")
        if "%20" in name or "." in name:
            while name.startswith("%20"):
                name = name[3:]
            name = name.replace("%20", "_").replace(".", "_")
            param = name + sep + value
        out.add(param)
    return frozenset(out)


def path_stems(path: str) -> list[str]:
    """The path with each extension of its last segment removed, longest first.

    Apache's MultiViews serves ``/dl/payload.exe`` for ``/dl/payload`` (content
    negotiation picks among ``payload.*``), and ``payload.tar.gz`` for ``payload.tar``
    too; never ``payload.exe`` for ``payload.exe.txt``. A name that starts with its
    only dot (``.htaccess``) has no stem.
    """
    head, sep, last = path.rpartition("/")
    out: list[str] = []
    i = last.rfind(".")
    while i > 0 and len(out) < MAX_PATH_STEMS:
        last = last[:i]
        out.append(f"{head}{sep}{last}")
        i = last.rfind(".")
    return out


def url_rule_alternates(key: str) -> list[tuple[str, str]]:
    """Where a URL rule (its "host/path[?query]" key) must also be looked for.

    Pairs (``host/path`` probed, suffix that makes the rule's key again): a rule with
    a query at its path (the query is then a set of parameters the URL must hold,
    :func:`query_params`); and any rule at each stem of its path (:func:`path_stems`).
    A rule without a query and without an extension has none: its key is probed as is.
    """
    base, sep, query = key.partition("?")
    suffix = sep + query
    out = [(base, suffix)] if sep else []
    host, slash, path = base.partition("/")
    if slash:
        for stem in path_stems(slash + path):
            out.append((host + stem, base[len(host) + len(stem) :] + suffix))
    return out


def url_rule_key(text: str) -> tuple[str, str]:
    """Canonicalize a URL rule; returns (host, "host/path[?query]" expression key)."""
    cu = canonicalize_url(text)
    host = cu.host
    if len(host) > MAX_HOST_LENGTH:
        # No DNS name is longer: such a rule could match no URL a client can reach, and
        # lookups probe no longer key (``index.host_probes``).
        raise CanonError(f"host longer than {MAX_HOST_LENGTH} characters")
    q = "" if cu.query is None else "?" + cu.query
    return host, f"{host}{cu.path}{q}"
