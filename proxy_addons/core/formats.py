# One module on purpose (~1,300 lines): every list format is a small parser sharing one
# accumulator, one rejection vocabulary and one detection score; a new format is one
# more parser here (docs/architecture.md, "Where to add").
"""List-format parsers: the text of a blocklist in, rules and per-line issues out.

Pure: the caller passes bytes or text; nothing here reads files or sockets.
Every canonical form comes from :mod:`.canon`; this module only finds the
tokens. A bad line never sinks a list: it is rejected with a short, stable
reason and counted. A whole list is refused (:class:`ListFormatError`) only
when it looks binary, its format is unknown or undetectable, or most of its
entries are rejected.

Formats (``fmt``):

``hosts``
    ``0.0.0.0 a.example b.example # comment``; any IP literal (``0``,
    ``127.0.0.1``, ``::``...) as the first token. Each host becomes a DOMAIN
    rule (it blocks subdomains too: that is what a threat feed means), an
    IP-literal host an IP rule. ``localhost`` and its family are skipped.
``domains``
    One entry a line, ``#`` comments. ``example.com`` and ``*.example.com``
    are DOMAIN rules, ``=www.example.com`` is an EXACT rule (that host only:
    jectguard's exact-host syntax), an IP literal an IP rule, ``a/len`` a CIDR.
``adblock``
    Host-level AdBlock/AdGuard rules: ``||host^`` is DOMAIN, ``@@||host^`` an
    exception, AdGuard's ``|host^`` an EXACT rule (that host only);
    ``||host/path`` and ``|https://host/path|`` are URL rules.
    Options that only change *when* a host is blocked (``$third-party``,
    ``$important``, ``$document``...) are dropped; options that narrow a rule
    to resource types or sites (``$script``, ``$domain=``...) cannot be
    widened to a host rule; on ``@@`` exceptions the party and popup options
    narrow too (widening an allow rule allows more). Such rules, regex,
    wildcard and generic (unanchored) rules, cosmetic rules, ``!`` comments
    and ``[Adblock Plus 2.0]`` headers are skipped and counted by reason: they
    are sound rules of kinds a proxy of hosts and URLs does not enforce, so
    they never count towards refusing the list (EasyList is mostly these).
``urls``
    One URL a line: URL rules keyed ``host/path[?query]`` (Safe Browsing).
``urlhaus-csv``
    URLhaus CSV export: ``#`` comments, the ``url`` column found by the
    ``# id,dateadded,url,...`` header (else the third column).
``ips`` / ``cidr``
    One address or network a line, ``#`` and ``;`` comments (Spamhaus DROP),
    an address followed by a number (IPsum's count of lists), and Spamhaus'
    JSON-lines DROP (``{"cidr": ...}``). A full-length network
    (``/32``, ``/128``) is an IP rule. The two share one parser; detection
    names the list ``cidr`` when it holds networks.
``dnsmasq``
    ``address=/a/b/0.0.0.0``, ``address=/a/``, ``server=/a/``, ``local=/a/``:
    one DOMAIN rule per domain. ``server=/a/1.2.3.4`` forwards rather than
    blocks, ``address=/a/192.0.2.1`` redirects: both are rejected.

``mixed``
    A hand-written local list: each line is taken for what it is, a domain
    (``*.d``, ``=host``), an IP, a network, a URL, a hosts-file line, an
    adblock or dnsmasq rule, each parsed as its own format would. Detected
    when a list's lines vote for more than one of these shapes.
``rpz``
    DNS Response Policy Zone files (URLhaus, CERT Polska, corporate DNS
    firewalls): ``name [ttl] [class] CNAME .`` (NXDOMAIN), ``CNAME *.``
    (NODATA), ``rpz-drop.``, a walled-garden CNAME or local ``A``/``AAAA``
    data all block; ``rpz-passthru.`` is an exception. Owner names are
    relative to ``$ORIGIN`` (absolute ones must end in it, which is removed);
    ``name`` is an EXACT rule, ``*.name`` a DOMAIN rule; ``rpz-ip`` triggers
    (``32.4.3.2.1.rpz-ip``, ``48.zz.db8.2001.rpz-ip``) become IP/CIDR rules;
    NS and client triggers, SOA/NS records and other directives are skipped.

Whole files: a file is refused as binary only when it is mostly not text
(NUL or control characters on most lines, or in more than MAX_BINARY_RATIO of
its first BINARY_SNIFF_BYTES); otherwise each line holding a NUL or control
character is rejected ("control characters") and the rest is kept, as
Pi-hole and AdGuard Home do. Spamhaus' JSON-lines DROP ends in a metadata
line giving its record count: a file whose count does not match is refused
(it was cut or padded in transit).

Decoding: UTF-8 (a BOM is dropped; a UTF-16 BOM is honoured). Bytes that are
not UTF-8 become U+FFFD, so a stray byte spoils only its own line, which is
rejected as "invalid encoding"; we never guess latin-1, which would silently
turn a damaged UTF-8 list into valid but wrong IDN hosts.

Hosts: every host goes through ``canonical_host`` (IDN to punycode, case,
trailing dots). What the WHATWG parser would read as an IPv4 address but is
not written as a plain dotted quad (``106``, ``1.2.3``, ``010.1.1.1``,
``0x7f.1``) is rejected as "not a plausible host": no list means 0.0.0.106;
so is a name with characters no DNS name has (``,``, ``(``...), which the
WHATWG parser lets through: a table read as a list is full of them. (Entries
already written in canonical form take a fast path that does not look: on a
million-line list the check would cost 0.4 s, and such a name matches nothing.) A URL
entry needs a plausible host too (a CSV header or row is no URL). A table of
address ranges (DShield's ``start end prefix ...``) is not taken for a hosts
file: detection finds no format and the list is refused.
A single label such as ``com`` passes: refusing it is the engine's poison
guard's job.

Counting: ``skipped`` counts blank and comment lines and entries that are not
rules; a line with several hosts counts each host as one entry, and so does
the refusal test (more than MAX_REJECTED_RATIO of the entries rejected).
``Rule.text`` is the entry as written, without its comment: the host token in
hosts files, the ``url`` field of a CSV row, the ``cidr`` of a JSON DROP line,
the line otherwise.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from .canon import canonical_host, canonical_network, url_rule_key
from .errors import ListFormatError
from .gcpause import paused_gc
from .model import ParsedList, Rejected, Rule, RuleKind

FORMATS: tuple[str, ...] = (
    "hosts",
    "domains",
    "adblock",
    "urls",
    "urlhaus-csv",
    "ips",
    "cidr",
    "dnsmasq",
    "mixed",
    "rpz",
)

# Enough to show a person what went wrong; the counts cover the rest.
MAX_REJECTED_SAMPLES: Final = 5
# Detection looks at this many meaningful lines: enough to outvote a few odd ones.
DETECT_SAMPLE_LINES: Final = 200
# detect_format() only reads this much of the text, so it stays cheap on huge lists.
DETECT_SAMPLE_CHARS: Final = 256 * 1024
# A list whose rejected entries exceed this share is refused: it is not in this format.
MAX_REJECTED_RATIO: Final = 0.5
# ...but only from this many entries on: a handful of lines proves nothing.
MIN_ENTRIES_FOR_RATIO: Final = 10
# Binary sniffing reads this many leading bytes: enough lines that one bad line
# is outvoted by its neighbours.
BINARY_SNIFF_BYTES: Final = 64 * 1024
# Share of control bytes / invalid UTF-8 in the sniffed prefix that means "binary":
# random bytes score about 0.6, a text list with a garbage line far below this.
MAX_BINARY_RATIO: Final = 0.30
# Share of the sniffed lines holding a NUL or control character that means "binary".
MAX_BINARY_LINE_RATIO: Final = 0.5
# Longer lines are rejected unread; no real entry comes close (URLs stop at 64 KiB).
MAX_LINE_LENGTH: Final = 64 * 1024
# Distinct first tokens of hosts lines whose IP check we remember.
MAX_ADDRESS_CACHE: Final = 64

# Rejection reasons: short and stable (tests and dashboards key on them).
INVALID_HOST: Final = "invalid host"
INVALID_URL: Final = "invalid url"
INVALID_NETWORK: Final = "invalid network"
INVALID_ENCODING: Final = "invalid encoding"
INVALID_HOSTS_LINE: Final = "invalid hosts line"
INVALID_ROW: Final = "invalid row"
NOT_PLAUSIBLE: Final = "not a plausible host"
NARROWING_MODIFIER: Final = "narrowing modifier"
UNSUPPORTED_MODIFIER: Final = "unsupported modifier"
UNSUPPORTED_PATTERN: Final = "unsupported pattern"
REGEX_RULE: Final = "regex rule"
GENERIC_RULE: Final = "generic rule"
FORWARDING_RULE: Final = "forwarding rule"
REDIRECT_RULE: Final = "redirect rule"
UNSUPPORTED: Final = "unsupported"
LINE_TOO_LONG: Final = "line too long"
CONTROL_CHARACTERS: Final = "control characters"
UNSUPPORTED_TRIGGER: Final = "unsupported trigger"
OUTSIDE_ORIGIN: Final = "name outside the zone"

# Names every hosts file carries for the machine itself: never rules.
_NOT_RULES: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "broadcasthost",
        "local",
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
    }
)

# Adblock options that only say when a rule applies to its host; blocking the
# whole host is what the rule already does for the requests it covers.
_SOUND_BLOCK_OPTIONS: Final = frozenset(
    {
        "third-party", "3p", "~first-party", "~1p", "strict3p",
        "first-party", "1p", "~third-party", "~3p", "strict1p",
        "important", "all", "document", "doc", "popup", "match-case", "_",
    }
)  # fmt: skip
# An allow rule widened to the whole host would let through more than the list
# allowed, so party and popup options do not reduce on exceptions.
_SOUND_EXCEPTION_OPTIONS: Final = frozenset(
    {"important", "all", "document", "doc", "match-case", "_"}
)
# Options known to narrow a rule to resource types, sites, or to rewrite it.
_NARROWING_OPTIONS: Final = frozenset(
    {
        "script", "image", "stylesheet", "css", "object", "xmlhttprequest", "xhr",
        "subdocument", "frame", "ping", "websocket", "webrtc", "font", "media", "other",
        "beacon", "object-subrequest", "inline-script", "inline-font", "popunder",
        "domain", "from", "to", "denyallow", "method", "header", "app", "client", "ctag",
        "dnstype", "dnsrewrite", "badfilter", "redirect", "redirect-rule", "rewrite",
        "removeparam", "queryprune", "csp", "permissions", "replace", "cookie", "hls",
        "jsonprune", "urltransform", "uritransform", "empty", "mp4", "network",
        "elemhide", "ehide", "generichide", "ghide", "specifichide", "shide",
        "genericblock", "content", "jsinject", "urlblock", "extension", "stealth",
        "cname", "ipaddress", "strict-first-party", "strict-third-party",
    }
)  # fmt: skip
_COSMETIC_RE: Final = re.compile(r"#@?(?:\$\?|[?$%])?#|\$@?\$")
_ADBLOCK_HEADER_RE: Final = re.compile(r"\[\s*(?:adblock|adguard|ublock)", re.IGNORECASE)
_DNSMASQ_BLOCK_TARGETS: Final = frozenset({"", "0.0.0.0", "::", "127.0.0.1", "::1", "#"})
_URLHAUS_DEFAULT_URL_COLUMN: Final = 2

# Adblock rules in good order that do not reduce to a host or URL rule: skipped
# and counted by reason, not held against the list (EasyList is mostly these).
_ADBLOCK_NOT_HOST_LEVEL: Final = frozenset(
    {GENERIC_RULE, REGEX_RULE, NARROWING_MODIFIER, UNSUPPORTED_MODIFIER, UNSUPPORTED_PATTERN}
)

_DOMAIN: Final = RuleKind.DOMAIN
_EXACT: Final = RuleKind.EXACT
_URL: Final = RuleKind.URL
_IP: Final = RuleKind.IP
_CIDR: Final = RuleKind.CIDR


class _Reject(Exception):
    """An entry is not a rule; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Skip(Exception):
    """An entry is not a rule and not an error (a comment, ``localhost``...)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class _Acc:
    """Accumulates one parse: rules, rejections and skips."""

    __slots__ = (
        "rules", "rejected_count", "by_reason", "samples", "skipped", "skipped_by", "problem",
    )  # fmt: skip

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.rejected_count = 0
        self.by_reason: dict[str, int] = {}
        self.samples: list[Rejected] = []
        self.skipped = 0
        self.skipped_by: dict[str, int] = {}  # only skips worth naming (cosmetic, header)
        self.problem: str | None = None  # the whole list is wrong (a cut JSON DROP file)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if reason:
            self.skipped_by[reason] = self.skipped_by.get(reason, 0) + 1

    def reject(self, line: int, text: str, reason: str) -> None:
        self.rejected_count += 1
        seen = self.by_reason.get(reason, 0)
        self.by_reason[reason] = seen + 1
        # A few samples, and one of every reason (there are a dozen reasons at most).
        sample = Rejected(line, text[:200], reason)
        if len(self.samples) < MAX_REJECTED_SAMPLES:
            self.samples.append(sample)
        elif not seen:  # make room: a reason with several samples gives one up
            counts: dict[str, int] = {}
            for s in self.samples:
                counts[s.reason] = counts.get(s.reason, 0) + 1
            for i in range(len(self.samples) - 1, -1, -1):
                if counts[self.samples[i].reason] > 1:
                    self.samples[i] = sample
                    break


# --- entries ------------------------------------------------------------------


# What a DNS name in a list is made of (after IDN to punycode); the WHATWG parser
# also lets through ",", "(", ")", "!", ... which no real host has, and which a
# table mistaken for a hosts file is full of ("No.31,Jin-rong").
_PLAUSIBLE_NAME: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def _host_rule(token: str) -> tuple[RuleKind, str]:
    """A host entry as a DOMAIN or IP rule; raises _Reject or _Skip."""
    try:
        key = canonical_host(token)
    except ValueError:
        raise _Reject(INVALID_ENCODING if "\ufffd" in token else INVALID_HOST) from None
    if key[-1].isdigit() or ":" in key:
        kind = _ip_kind(token, key)  # before the local names: "0x7f.1" is no 127.0.0.1
    elif "*" in key:
        raise _Reject(UNSUPPORTED_PATTERN)
    else:
        kind = _DOMAIN
    if kind is _DOMAIN and not _PLAUSIBLE_NAME.fullmatch(key):
        raise _Reject(NOT_PLAUSIBLE)
    if key in _NOT_RULES or (key.startswith("ip6-") and "." not in key):
        raise _Skip
    return kind, key


def _ip_kind(token: str, key: str) -> RuleKind:
    """Vet a host that canonicalized to an IP (or a domain ending in a digit)."""
    if ":" in key:
        if "%" in key:  # a zone ID names a local interface, never a remote host
            raise _Reject(INVALID_HOST)
        return _IP
    if not key.rpartition(".")[2].isdigit():
        return _DOMAIN  # "example.a1": a name whose last label ends in a digit
    # The WHATWG parser reads "106" as 0.0.0.106 and "010.1.1.1" as octal; no
    # list means that, so only a plain dotted quad counts as an IPv4 address.
    if key != token.rstrip("."):
        raise _Reject(NOT_PLAUSIBLE)
    return _IP


def _network_rule(token: str) -> tuple[RuleKind, str]:
    """An address or ``addr/len`` network; a full-length network is an IP rule."""
    if "/" not in token:
        try:
            key = canonical_host(token)
        except ValueError:
            raise _Reject(INVALID_NETWORK) from None
        if not (key[-1].isdigit() or ":" in key) or _ip_kind(token, key) is not _IP:
            raise _Reject(INVALID_NETWORK)
        return _IP, key
    try:
        addr, plen, version = canonical_network(token)
    except ValueError:
        raise _Reject(INVALID_NETWORK) from None
    if plen == (32 if version == 4 else 128):
        return _IP, addr
    return _CIDR, f"{addr}/{plen}"


def _url_key(text: str) -> str:
    try:
        host, key = url_rule_key(text)
    except ValueError:
        raise _Reject(INVALID_ENCODING if "\ufffd" in text else INVALID_URL) from None
    if ":" not in host and not _PLAUSIBLE_NAME.fullmatch(host):
        raise _Reject(INVALID_URL)  # "phish_id,url,..." (a CSV header) is no URL
    return key


# --- per-format line loops ------------------------------------------------------
# Each takes the lines and an accumulator. The big formats (hosts, domains,
# adblock, dnsmasq) run a million lines: their loops try a fast path for the
# common line whose host is already canonical and hand every other line to a
# careful function. The fast path's test, after one canonical_host call:
#   key == token           written in canonical form (so no blanks, no '#', no case)
#   "." in key             not a single label (localhost, ip6-*, bare TLDs)
#   key[-1] not in digits  not an IPv4 address (nor an IPv6 one: a canonical IPv6
#                          with a dot is IPv4-mapped and ends in a digit)
#   "*" not in key         not a wildcard (canonical_host keeps '*')
#   key != local_domain    the one dotted name in _NOT_RULES
# Rule._make skips the NamedTuple's Python-level __new__: ~0.1 s per million.

_DIGITS: Final = "0123456789"


def _parse_hosts(lines: Sequence[str], acc: _Acc) -> None:
    append = acc.rules.append
    canon, new_rule, domain, digits = canonical_host, Rule._make, _DOMAIN, _DIGITS
    local_domain = "localhost.localdomain"
    addresses: set[str] = set()  # first tokens seen to be IP literals ("0.0.0.0")
    for n, raw in enumerate(lines, 1):
        # canonical_host refuses blanks and '#', so key == tok proves a clean token.
        addr, sep, tok = raw.partition(" ")
        if not sep:
            addr, sep, tok = raw.partition("\t")  # URLhaus' host file
        if addr in addresses:
            try:
                key = canon(tok)
            except ValueError:
                key = ""
            if (
                key == tok
                and "." in key
                and key[-1] not in digits
                and "*" not in key
                and key != local_domain
            ):
                append(new_rule((domain, tok, tok, n, False)))
                continue
        _hosts_line(raw, n, acc, addresses)


def _hosts_line(raw: str, n: int, acc: _Acc, addresses: set[str]) -> None:
    if "#" in raw:
        raw = raw[: raw.index("#")]
    parts = raw.split()
    if not parts:
        acc.skipped += 1
        return
    if len(raw) > MAX_LINE_LENGTH:
        acc.reject(n, raw, LINE_TOO_LONG)
        return
    addr = parts[0]
    if addr not in addresses:
        if not _is_ip_literal(addr) or len(parts) == 1:
            if len(parts) > 1 and all(_is_local_name(p) for p in parts[1:]):
                acc.skipped += 1  # "fe80::1%lo0 localhost" and the like
            else:
                acc.reject(n, raw.strip(), INVALID_HOSTS_LINE)
            return
        if len(addresses) < MAX_ADDRESS_CACHE:
            addresses.add(addr)
    if len(parts) == 1:
        acc.reject(n, raw.strip(), INVALID_HOSTS_LINE)
        return
    for tok in parts[1:]:
        try:
            kind, key = _host_rule(tok)
        except _Skip:
            acc.skipped += 1
            continue
        except _Reject as r:
            acc.reject(n, tok, r.reason)
            continue
        if key == tok:
            key = tok  # share one string: a million rules, half the memory
        acc.rules.append(Rule(kind, key, tok, n))


def _is_ip_literal(token: str) -> bool:
    try:
        key = canonical_host(token)
    except ValueError:
        return False
    return ":" in key or (key[-1].isdigit() and key.rpartition(".")[2].isdigit())


def _is_local_name(token: str) -> bool:
    try:
        key = canonical_host(token)
    except ValueError:
        return False
    return key in _NOT_RULES or (key.startswith("ip6-") and "." not in key)


def _parse_domains(
    lines: Sequence[str], acc: _Acc, careful: Callable[[str, int, _Acc], None] | None = None
) -> None:
    """Domain lists; ``careful`` handles each line the fast path does not take."""
    careful = careful or _domains_line
    append = acc.rules.append
    canon, new_rule, domain, digits = canonical_host, Rule._make, _DOMAIN, _DIGITS
    local_domain = "localhost.localdomain"
    for n, raw in enumerate(lines, 1):
        c = raw[:1]
        if c == "*":  # HaGeZi's "wildcard asterisk" lists: "*.example.com"
            tok = raw[2:] if raw[1:2] == "." else ""
        elif c == "=" or c == "!" or not c:  # canonical_host would take these as host characters
            tok = ""
        else:
            tok = raw
        if tok:
            try:
                key = canon(tok)
            except ValueError:
                key = ""
            if (
                key == tok
                and "." in key
                and key[-1] not in digits
                and "*" not in key
                and key != local_domain
            ):
                append(new_rule((domain, tok, raw, n, False)))
                continue
        careful(raw, n, acc)


def _domains_line(raw: str, n: int, acc: _Acc) -> None:
    if "#" in raw:
        raw = raw[: raw.index("#")]
    tok = raw.strip()
    if not tok or tok[0] == "!":
        acc.skipped += 1
        return
    try:
        kind, key = _domains_entry(tok)
    except _Skip:
        acc.skipped += 1
        return
    except _Reject as r:
        acc.reject(n, tok, r.reason)
        return
    if key == tok:
        key = tok
    acc.rules.append(Rule(kind, key, tok, n))


def _domains_entry(tok: str) -> tuple[RuleKind, str]:
    """One entry of a domains list: a host, ``*.host``, ``=host``, an IP or a network."""
    if len(tok) > MAX_LINE_LENGTH:
        raise _Reject(LINE_TOO_LONG)
    if " " in tok or "\t" in tok:
        raise _Reject(INVALID_HOST)
    if "/" in tok:
        if _is_ip_literal(tok.partition("/")[0]):
            return _network_rule(tok)
        raise _Reject(INVALID_HOST)
    if tok[0] == "=":
        kind, key = _host_rule(tok[1:])
        return (_EXACT if kind is _DOMAIN else kind), key
    if tok.startswith("*."):
        kind, key = _host_rule(tok[2:])
        if kind is _DOMAIN:
            return kind, key
        raise _Reject(UNSUPPORTED_PATTERN)
    return _host_rule(tok)


def _parse_networks(lines: Sequence[str], acc: _Acc) -> None:
    records = 0  # JSON-lines DROP records seen, good or bad
    declared: int | None = None  # the count its metadata line gives
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if line[:1] == "{":
            try:
                declared = _drop_metadata_records(line)
            except _Reject:
                records += 1  # a record: parsed below
            else:
                acc.skipped += 1
                continue
        _network_line(line, n, acc)
    if declared is not None and declared != records:
        acc.problem = (
            f"its metadata line declares {declared} records but {records} are present "
            "(cut or padded in transit)"
        )


def _network_line(line: str, n: int, acc: _Acc) -> None:
    """One stripped line of an address or network list."""
    if not line or line[0] in "#;":
        acc.skipped += 1
        return
    try:
        if len(line) > MAX_LINE_LENGTH:
            raise _Reject(LINE_TOO_LONG)
        if line[0] == "{":
            tok = _drop_json_cidr(line)
        else:
            tok = line.split("#", 1)[0].split(";", 1)[0].strip()
            if " " in tok or "\t" in tok:
                fields = tok.split()
                if len(fields) != 2 or not fields[1].isdigit():
                    raise _Reject(INVALID_NETWORK)
                tok = fields[0]  # "80.94.95.112<TAB>10": an address and its score (IPsum)
        kind, key = _network_rule(tok)
    except _Skip:
        acc.skipped += 1
        return
    except _Reject as r:
        acc.reject(n, line, r.reason)
        return
    acc.rules.append(Rule(kind, key, tok, n))


def _json_object(line: str) -> dict[str, object]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise _Reject(INVALID_ROW) from None
    if not isinstance(obj, dict):
        raise _Reject(INVALID_ROW)
    return obj


def _drop_metadata_records(line: str) -> int | None:
    """The record count of JSON DROP's metadata line; raises _Reject for any other line."""
    if '"metadata"' not in line:
        raise _Reject(INVALID_ROW)
    obj = _json_object(line)
    if obj.get("type") != "metadata":
        raise _Reject(INVALID_ROW)
    records = obj.get("records")
    return records if isinstance(records, int) and not isinstance(records, bool) else None


def _drop_json_cidr(line: str) -> str:
    """The network of one line of Spamhaus' JSON-lines DROP."""
    obj = _json_object(line)
    cidr = obj.get("cidr")
    if isinstance(cidr, str):
        return cidr.strip()
    if obj.get("type") == "metadata":
        raise _Skip
    raise _Reject(UNSUPPORTED)


def _parse_urls(lines: Sequence[str], acc: _Acc) -> None:
    for n, raw in enumerate(lines, 1):
        _url_line(raw, n, acc)


def _url_line(raw: str, n: int, acc: _Acc) -> None:
    line = raw.strip()
    if not line or line[0] == "#" or line[0] == "!":
        acc.skipped += 1
        return
    try:
        if len(line) > MAX_LINE_LENGTH:
            raise _Reject(LINE_TOO_LONG)
        tok = line
        if " " in line or "\t" in line:
            # URLs hold no blanks; what follows one must be a comment.
            tok, rest = line.split(None, 1)
            if rest[0] != "#":
                raise _Reject(INVALID_URL)
        key = _url_key(tok)
    except _Reject as r:
        acc.reject(n, line, r.reason)
        return
    acc.rules.append(Rule(_URL, key, tok, n))


def _parse_urlhaus_csv(lines: Sequence[str], acc: _Acc) -> None:
    append = acc.rules.append
    col = _URLHAUS_DEFAULT_URL_COLUMN
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            acc.skipped += 1
            continue
        if line[0] == "#":
            # "# id,dateadded,url,..." names the columns; other comments are prose.
            header = [f.strip().lower() for f in line.lstrip("#").split(",")]
            if len(header) > 1 and "url" in header:
                col = header.index("url")
            acc.skipped += 1
            continue
        try:
            if len(line) > MAX_LINE_LENGTH:
                raise _Reject(LINE_TOO_LONG)
            # One record a line: URLhaus never breaks a field across lines, and a
            # stray quote must not swallow the lines after it.
            try:
                row = next(csv.reader((line,)))
            except csv.Error:
                raise _Reject(INVALID_ROW) from None
            if len(row) <= col:
                raise _Reject(INVALID_ROW)
            url = row[col].strip()
            key = _url_key(url)
        except _Reject as r:
            acc.reject(n, line, r.reason)
            continue
        append(Rule(_URL, key, url, n))


_DNSMASQ_DIRECTIVES: Final = frozenset({"address", "server", "local"})


def _parse_dnsmasq(lines: Sequence[str], acc: _Acc) -> None:
    append = acc.rules.append
    canon, new_rule, domain, digits = canonical_host, Rule._make, _DOMAIN, _DIGITS
    local_domain = "localhost.localdomain"
    directives = _DNSMASQ_DIRECTIVES
    for n, raw in enumerate(lines, 1):
        directive, sep, value = raw.partition("=/")
        if sep and directive in directives:
            name, sep, target = value.partition("/")
            if sep and (not target or (directive == "address" and target in ("0.0.0.0", "::"))):
                try:
                    key = canon(name)
                except ValueError:
                    key = ""
                if (
                    key == name
                    and "." in key
                    and key[-1] not in digits
                    and "*" not in key
                    and key != local_domain
                ):
                    append(new_rule((domain, name, raw, n, False)))
                    continue
        _dnsmasq_line(raw, n, acc)


def _dnsmasq_line(raw: str, n: int, acc: _Acc) -> None:
    line = raw.strip()
    if not line or line[0] == "#":
        acc.skipped += 1
        return
    # '#' is also a dnsmasq value ("server=/a/#"): only a blank starts a comment.
    for sep in (" #", "\t#"):
        if sep in line:
            line = line[: line.index(sep)].rstrip()
    try:
        if len(line) > MAX_LINE_LENGTH:
            raise _Reject(LINE_TOO_LONG)
        directive, _, value = line.partition("=")
        directive = directive.strip().lower()
        if directive not in _DNSMASQ_DIRECTIVES or value[:1] != "/":
            raise _Reject(UNSUPPORTED)
        parts = value.split("/")
        names, target = parts[1:-1], parts[-1].strip()
        if not names:
            raise _Reject(UNSUPPORTED)
        if directive == "address":
            if target not in _DNSMASQ_BLOCK_TARGETS:
                raise _Reject(REDIRECT_RULE)
        elif target:  # server=/a/1.2.3.4 or server=/a/# forwards the query
            raise _Reject(FORWARDING_RULE)
    except _Reject as r:
        acc.reject(n, line, r.reason)
        return
    for name in names:
        try:
            if "*" in name:
                raise _Reject(UNSUPPORTED_PATTERN)
            kind, key = _host_rule(name)
        except _Skip:
            acc.skipped += 1
            continue
        except _Reject as r:
            acc.reject(n, line, r.reason)
            continue
        acc.rules.append(Rule(kind, key, line, n))


def _parse_adblock(lines: Sequence[str], acc: _Acc) -> None:
    append = acc.rules.append
    canon, new_rule, domain, digits = canonical_host, Rule._make, _DOMAIN, _DIGITS
    local_domain = "localhost.localdomain"
    for n, raw in enumerate(lines, 1):
        if raw and raw[0] == "|" and raw[-1] == "^" and raw[1] == "|":  # "||host^"
            host = raw[2:-1]
            try:
                key = canon(host)
            except ValueError:
                key = ""
            if (
                key == host
                and "." in key
                and key[-1] not in digits
                and "*" not in key
                and "$" not in key
                and key != local_domain
            ):
                append(new_rule((domain, key, raw, n, False)))
                continue
        _adblock_line(raw, n, acc)


def _adblock_line(raw: str, n: int, acc: _Acc) -> None:
    line = raw.strip()
    if not line:
        acc.skipped += 1
        return
    try:
        if len(line) > MAX_LINE_LENGTH:
            raise _Reject(LINE_TOO_LONG)
        kind, key, exception = _adblock_rule(line)
    except _Skip as skip:
        acc.skip(skip.reason)
        return
    except _Reject as r:
        if r.reason in _ADBLOCK_NOT_HOST_LEVEL:
            acc.skip(r.reason)  # a sound rule of a kind we do not enforce: counted, no fault
        else:
            acc.reject(n, line, r.reason)
        return
    acc.rules.append(Rule(kind, key, line, n, exception))


def _adblock_rule(line: str) -> tuple[RuleKind, str, bool]:
    """One adblock line (not the plain ``||host^`` fast path); raises _Reject/_Skip."""
    c = line[0]
    if c == "!":
        raise _Skip
    if c == "[" and line[-1] == "]":
        raise _Skip("header")  # [Adblock Plus 2.0] and friends
    if ("#" in line or "$" in line) and _COSMETIC_RE.search(line):
        raise _Skip("cosmetic")  # element hiding, scriptlets, HTML filtering: not network rules
    if c == "#":
        raise _Skip  # a hosts-style comment
    exception = line.startswith("@@")
    body = line[2:] if exception else line
    if not body:
        raise _Reject(GENERIC_RULE)
    if body[0] == "/" and (body[-1] == "/" or "/$" in body) and len(body) > 1:
        raise _Reject(REGEX_RULE)
    pattern, dollar, options = body.rpartition("$")
    if not dollar:
        pattern = body
    elif not pattern:
        raise _Reject(GENERIC_RULE)
    else:
        _check_options(options, exception)
    if pattern.startswith("||"):
        kind, key = _anchored_host_rule(pattern[2:])
    elif pattern.startswith("|") and "://" in pattern:
        kind, key = _URL, _url_key_from_pattern(pattern[1:])  # "|https://host/path|"
    elif pattern.startswith("|") and pattern.endswith(("^", "^|")):
        # AdGuard DNS syntax: "|host^" is that host exactly, not its subdomains.
        host = pattern[1:].removesuffix("|").removesuffix("^")
        if not host or any(c in host for c in "*^|/"):
            raise _Reject(UNSUPPORTED_PATTERN)
        kind, key = _host_rule(host)
        if kind is _DOMAIN:
            kind = _EXACT
    else:
        raise _Reject(GENERIC_RULE)
    return kind, key, exception


def _check_options(options: str, exception: bool) -> None:
    sound = _SOUND_EXCEPTION_OPTIONS if exception else _SOUND_BLOCK_OPTIONS
    for opt in options.split(","):
        name = opt.strip().lower().partition("=")[0]
        if name in sound:
            continue
        if (
            name in _NARROWING_OPTIONS
            or name.lstrip("~") in _NARROWING_OPTIONS
            or name.lstrip("~") in _SOUND_BLOCK_OPTIONS
        ):
            raise _Reject(NARROWING_MODIFIER)
        raise _Reject(UNSUPPORTED_MODIFIER)


def _anchored_host_rule(rest: str) -> tuple[RuleKind, str]:
    """The part after ``||``: ``host^``, ``host``, or ``host/path``."""
    if rest.endswith("^|"):
        rest = rest[:-1]
    slash = rest.find("/")
    if slash == -1:
        if rest.endswith("^"):
            host = rest[:-1]
        elif "." in rest.strip(".") and not rest.endswith("."):
            host = rest  # "||example.com": the host anchor without a separator
        else:
            raise _Reject(GENERIC_RULE)  # "||ads." or "||ad": a prefix of many hosts
        if "*" in host or "^" in host or "|" in host:
            raise _Reject(UNSUPPORTED_PATTERN)
        return _host_rule(host)
    host, path = rest[:slash], rest[slash:]
    if not host or "*" in host or "^" in host:
        raise _Reject(UNSUPPORTED_PATTERN)
    return _URL, _url_key_from_pattern("http://" + host + path)


def _url_key_from_pattern(url: str) -> str:
    """A URL pattern without wildcards, maybe ending in an anchor ``|`` or separator ``^``."""
    if url.endswith("|") or url.endswith("^"):
        url = url[:-1]
    if "*" in url or "^" in url or "|" in url:
        raise _Reject(UNSUPPORTED_PATTERN)
    return _url_key(url)


# --- mixed lists ------------------------------------------------------------------


def _parse_mixed(lines: Sequence[str], acc: _Acc) -> None:
    """A hand-written list: plain domains take the domains fast path, every other
    line the parser of the format its shape votes for."""
    addresses: set[str] = set()

    def careful(raw: str, n: int, acc: _Acc) -> None:
        line = raw.strip()
        fmt = _vote(line) if line else None
        if fmt == "hosts":
            _hosts_line(raw, n, acc, addresses)
        elif fmt == "ips" or fmt == "cidr":
            _network_line(line, n, acc)
        elif fmt == "urls":
            _url_line(line, n, acc)
        elif fmt == "adblock":
            _adblock_line(line, n, acc)
        elif fmt == "dnsmasq":
            _dnsmasq_line(line, n, acc)
        else:  # domains, comments, and what no format claims (rejected with its reason)
            _domains_line(raw, n, acc)

    _parse_domains(lines, acc, careful)


# --- RPZ zone files ---------------------------------------------------------------

# Record types that carry no policy (the zone's own bookkeeping or notes).
_RPZ_SKIP_TYPES: Final = frozenset({"SOA", "NS", "TXT", "MX", "SRV", "PTR", "HINFO", "RRSIG"})
# Local data that replaces the answer: the name is blocked (sent to a walled garden).
_RPZ_DATA_TYPES: Final = frozenset({"A", "AAAA", "HTTPS", "SVCB"})
_RPZ_CLASSES: Final = frozenset({"IN", "CH", "HS", "CS"})
_RPZ_TTL: Final = re.compile(r"\d+[smhdwSMHDW]?(?:\d+[smhdwSMHDW])*")
_RPZ_UNENFORCED: Final = (".rpz-nsip", ".rpz-nsdname", ".rpz-client-ip")


def _zone_line(raw: str) -> str:
    """A zone-file line without its ``;`` comment (outside quoted strings)."""
    if ";" not in raw:
        return raw
    quoted = False
    for i, ch in enumerate(raw):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return raw[:i]
    return raw


def _parse_rpz(lines: Sequence[str], acc: _Acc) -> None:
    origin = ""  # the zone's name, lower case, no trailing dot ("" until known)
    owner = ""  # the last owner name, for lines that start with a blank
    depth = 0  # open parentheses: a record continued over lines (SOA)
    for n, raw in enumerate(lines, 1):
        line = _zone_line(raw)
        if depth:
            depth = max(0, depth + line.count("(") - line.count(")"))
            acc.skipped += 1
            continue
        text = line.strip()
        if not text:
            acc.skipped += 1
            continue
        if len(text) > MAX_LINE_LENGTH:
            acc.reject(n, text, LINE_TOO_LONG)
            continue
        depth = max(0, line.count("(") - line.count(")"))
        tokens = line.replace("(", " ").replace(")", " ").split()
        if not tokens:  # only parentheses (")" closing a record continued over lines)
            acc.skipped += 1
            continue
        if text[0] == "$":
            directive = tokens[0].upper()
            if directive == "$ORIGIN" and len(tokens) > 1:
                origin = tokens[1].lower().rstrip(".")
            elif directive not in ("$TTL", "$ORIGIN"):
                acc.reject(n, text, UNSUPPORTED)  # $INCLUDE, $GENERATE: not in a feed
                continue
            acc.skipped += 1
            continue
        if line[0] in " \t":
            fields = tokens  # the owner of the record before
        else:
            owner, fields = tokens[0], tokens[1:]
        i = 0
        while i < len(fields) and (
            fields[i].upper() in _RPZ_CLASSES or _RPZ_TTL.fullmatch(fields[i])
        ):
            i += 1
        if i >= len(fields):
            acc.reject(n, text, INVALID_ROW)
            continue
        rtype, rdata = fields[i].upper(), fields[i + 1 :]
        if rtype == "SOA" and not origin and owner.endswith(".") and owner != ".":
            origin = owner.lower().rstrip(".")  # no $ORIGIN: the zone is named by its SOA
        try:
            exception = _rpz_action(rtype, rdata)
            trigger = _rpz_trigger(owner, origin)
            if trigger is None:
                raise _Skip  # the zone apex: its SOA and NS
            kind, key = _rpz_rule(trigger)
        except _Skip as skip:
            acc.skip(skip.reason)
            continue
        except _Reject as r:
            acc.reject(n, text, r.reason)
            continue
        acc.rules.append(Rule(kind, key, text, n, exception))


def _rpz_action(rtype: str, rdata: Sequence[str]) -> bool:
    """Whether a record is an exception (passthru); _Skip when it sets no policy."""
    if rtype == "CNAME":
        if len(rdata) != 1:
            raise _Reject(INVALID_ROW)
        target = rdata[0].lower()
        if target == "rpz-passthru.":
            return True
        if target == "rpz-tcp-only.":
            raise _Skip(UNSUPPORTED)
        return False  # ".", "*.", "rpz-drop." or a walled garden: the name is blocked
    if rtype in _RPZ_DATA_TYPES:
        return False
    if rtype in _RPZ_SKIP_TYPES:
        raise _Skip
    raise _Reject(UNSUPPORTED)


def _rpz_trigger(owner: str, origin: str) -> str | None:
    """The trigger an owner name states, relative to the zone; None at the apex."""
    name = owner.lower()
    if name == "@":
        return None
    if name.endswith("."):
        name = name[:-1]
        if not origin:
            raise _Reject(OUTSIDE_ORIGIN)  # an absolute name in a zone we cannot name
        if name == origin:
            return None
        if not name.endswith("." + origin):
            raise _Reject(OUTSIDE_ORIGIN)
        name = name[: -len(origin) - 1]
    elif name == origin:
        return None
    if not name or "\\" in name:
        raise _Reject(INVALID_HOST)
    return name


def _rpz_rule(trigger: str) -> tuple[RuleKind, str]:
    if trigger.endswith(_RPZ_UNENFORCED):
        raise _Skip(UNSUPPORTED_TRIGGER)  # name-server and client triggers: no host to block
    if trigger.endswith(".rpz-ip"):
        return _network_rule(_rpz_network(trigger[: -len(".rpz-ip")]))
    if trigger.startswith("*."):
        kind, key = _host_rule(trigger[2:])
        if kind is not _DOMAIN:
            raise _Reject(UNSUPPORTED_PATTERN)
        return kind, key
    if "*" in trigger:
        raise _Reject(UNSUPPORTED_PATTERN)
    kind, key = _host_rule(trigger)
    return (_EXACT if kind is _DOMAIN else kind), key


def _rpz_network(labels: str) -> str:
    """``32.4.3.2.1`` to ``1.2.3.4/32``; ``48.zz.1.db8.2001`` to ``2001:db8:1::/48``."""
    prefix, _, rest = labels.partition(".")
    parts = rest.split(".")[::-1]
    if not prefix.isdigit() or not rest:
        raise _Reject(INVALID_NETWORK)
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return ".".join(parts) + "/" + prefix
    addr = ":".join("" if p == "zz" else p for p in parts)
    if addr.startswith(":"):
        addr = ":" + addr
    if addr.endswith(":"):
        addr += ":"
    return addr + "/" + prefix


_PARSERS: Final[dict[str, Callable[[Sequence[str], _Acc], None]]] = {
    "hosts": _parse_hosts,
    "domains": _parse_domains,
    "adblock": _parse_adblock,
    "urls": _parse_urls,
    "urlhaus-csv": _parse_urlhaus_csv,
    "ips": _parse_networks,
    "cidr": _parse_networks,
    "dnsmasq": _parse_dnsmasq,
    "mixed": _parse_mixed,
    "rpz": _parse_rpz,
}


# --- detection ----------------------------------------------------------------


def _vote(line: str) -> str | None:
    """Which format one stripped, non-empty line suggests (None: no opinion)."""
    c = line[0]
    if c == "!" or c == ";":
        return None
    if c == "#":
        if _COSMETIC_RE.match(line):
            return "adblock"
        return None
    if c == "{":
        return "cidr" if '"cidr"' in line else None
    if c == "|" or line.startswith("@@") or line.endswith("^"):
        return "adblock"
    if "##" in line or "#@#" in line or "#?#" in line:
        return "adblock"
    if line.startswith(("address=/", "server=/", "local=/")):
        return "dnsmasq"
    if c == '"' and '","' in line and "://" in line:
        return "urlhaus-csv"
    if "://" in line:
        return "urls"
    tokens = line.split("#", 1)[0].split(";", 1)[0].split()
    if not tokens:
        return None
    tok = tokens[0]
    if c == "$" or any(t.upper() in ("CNAME", "SOA") for t in tokens[1:4]):
        return "rpz"  # "$ORIGIN rpz.example.", "evil.example CNAME ."
    if len(tokens) == 2 and tokens[1].isdigit():
        return "ips" if _is_ip_literal(tok) else None  # an address and a count or score
    if len(tokens) > 1:
        if _is_ip_literal(tokens[1]) and len(tokens) > 2:
            return None  # "start end prefix ...": a table of ranges (DShield), no hosts line
        return "hosts" if _is_ip_literal(tok) else None
    if "/" in tok:
        try:
            kind, _ = _network_rule(tok)
        except _Reject:
            return "urls" if "." in tok.partition("/")[0] else None
        return "cidr" if kind is _CIDR else "ips"
    if _is_ip_literal(tok):
        return "ips"
    if tok[0] in "=*" or "." in tok.strip("."):
        return "domains"
    return None


# The plain shapes a mixed list is mostly made of. A list voting mostly adblock or
# dnsmasq keeps its own parser even with other shapes in it: adblock's generic rules
# look like domains ("ads.example.com^$third-party"). A mixed list may hold a few
# adblock or dnsmasq lines; each is parsed as its own format would.
_SHAPES: Final = {
    "domains": "names",
    "ips": "nets",
    "cidr": "nets",
    "hosts": "hosts",
    "urls": "urls",
}


def _detect_lines(lines: Iterable[str]) -> str | None:
    """The format a sample of lines suggests; None when nothing votes."""
    votes: dict[str, int] = {}
    meaningful = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        c = line[0]
        if c == "[" and _ADBLOCK_HEADER_RE.match(line):
            return "adblock"
        if c == "#" and line.lstrip("# \t").lower().startswith("id,dateadded,url"):
            return "urlhaus-csv"
        if (
            c == "<"
            and meaningful == 0
            and ("<html" in line.lower() or "<!doctype" in line.lower())
        ):
            raise ListFormatError("looks like an HTML page, not a list")
        fmt = _vote(line)
        if fmt is None:
            continue
        votes[fmt] = votes.get(fmt, 0) + 1
        meaningful += 1
        if meaningful >= DETECT_SAMPLE_LINES:
            break
    if not votes:
        return None
    if votes.get("rpz"):
        return "rpz"  # its $ORIGIN and SOA lines vote for other formats too
    # A local list mixing shapes (domains with URLs, addresses with hosts lines...) is
    # "mixed": each line is taken for what it is, not rejected for not being the rest.
    plain = sum(count for fmt, count in votes.items() if fmt in _SHAPES)
    shapes = {_SHAPES[fmt] for fmt in votes if fmt in _SHAPES}
    if len(shapes) > 1 and plain > sum(votes.values()) - plain:
        return "mixed"
    # ips and cidr share a parser: they vote as one; the list is "cidr" if it holds networks.
    ips = votes.pop("ips", 0)
    cidr = votes.pop("cidr", 0)
    best = max(votes, key=votes.__getitem__, default=None)
    if ips + cidr and (best is None or ips + cidr > votes[best]):
        return "cidr" if cidr else "ips"
    return best


def detect_format(text: str) -> str:
    """Guess the format of a list from a sample of its first meaningful lines.

    Raises :class:`ListFormatError` when no line looks like any known format.
    """
    sample = text[:DETECT_SAMPLE_CHARS].removeprefix("\ufeff")
    lines = sample.split("\n")
    if len(text) > DETECT_SAMPLE_CHARS and len(lines) > 1:
        lines.pop()  # cut mid-line
    fmt = _detect_lines(lines)
    if fmt is None:
        raise ListFormatError("cannot detect the list format: no line looks like a rule")
    return fmt


# --- decoding and the entry point -----------------------------------------------

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZIP_MAGIC: Final = b"PK\x03\x04"
# Control characters a text list may hold: tab, LF, VT, FF, CR.
_TEXT_CONTROLS: Final = frozenset("\t\n\x0b\x0c\r")


_BAD_CHAR: Final = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
# A NUL or control character (not tab, LF, VT, FF, CR): no entry of any format has one.
_CONTROL: Final = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def _looks_binary(sample: str) -> bool:
    """Mostly not text: control characters or undecodable bytes in too much of a sample,
    or on most of its lines. One garbage line in a good list is not enough."""
    if not sample:
        return False
    if len(_BAD_CHAR.findall(sample)) > MAX_BINARY_RATIO * len(sample):
        return True
    lines = [line for line in sample.split("\n") if line.strip()]
    bad = sum(1 for line in lines if _CONTROL.search(line))
    return bad > MAX_BINARY_LINE_RATIO * len(lines)


def _decode(data: bytes | str, name: str) -> str:
    """Bytes to text; refuses data that looks binary."""
    if isinstance(data, str):
        text = data[1:] if data.startswith("\ufeff") else data
        if _looks_binary(text[:BINARY_SNIFF_BYTES]):
            raise ListFormatError(
                f"list {name!r}: looks binary (control characters), not a text list"
            )
        return text
    if data.startswith(_GZIP_MAGIC) or data.startswith(_ZIP_MAGIC):
        raise ListFormatError(f"list {name!r}: looks compressed (gzip/zip); decompress it first")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", "replace")  # Windows editors save hosts files so
    else:
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(data[:BINARY_SNIFF_BYTES])
        if _looks_binary(head.removeprefix("\ufeff")):
            raise ListFormatError(
                f"list {name!r}: looks binary (NUL, control or non-UTF-8 bytes), not a text list"
            )
        text = data.decode("utf-8-sig", "replace")
    return text[1:] if text.startswith("\ufeff") else text


def _split_lines(text: str) -> list[str]:
    # Only LF, CRLF (and CR for old Mac files) end a line; the rarer separators
    # str.splitlines() honours would shift line numbers away from an editor's.
    if "\r" in text:
        if "\n" not in text:
            text = text.replace("\r", "\n")
        text = text.replace("\r\n", "\n")  # once here, so the fast paths see clean lines
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return lines


def parse_list(data: bytes | str, fmt: str = "auto", *, name: str = "list") -> ParsedList:
    """Parse one list in ``fmt`` (or the detected format) into rules.

    Raises :class:`ListFormatError` when the data looks binary, ``fmt`` is
    unknown, the format cannot be detected, or most entries are rejected.
    A list with no entries at all (blank or comments only) is not an error.
    """
    if fmt != "auto" and fmt not in _PARSERS:
        raise ListFormatError(
            f"list {name!r}: unknown format {fmt!r} (known: {', '.join(FORMATS)})"
        )
    text = _decode(data, name)
    lines = _split_lines(text)
    acc = _Acc()
    # One search over the text (C speed) spares a million-line list the per-line walk.
    blanked = _reject_control_lines(lines, acc) if _CONTROL.search(text) else 0
    if fmt == "auto":
        detected = _detect_lines(lines)
        if detected is None:
            if any(_looks_like_content(line) for line in lines):
                raise ListFormatError(
                    f"list {name!r}: cannot detect the list format: no line looks like a rule"
                )
            # Blank or comments only: nothing to detect, and nothing to parse;
            # pick the format whose comments these are, so they count as skipped.
            detected = _comment_format(lines)
        fmt = detected
    with paused_gc():
        _PARSERS[fmt](lines, acc)
    acc.skipped -= blanked  # each parser counted the blanked lines as blank
    if acc.problem:
        raise ListFormatError(f"list {name!r} (format {fmt!r}): {acc.problem}")
    generic = acc.skipped_by.get(GENERIC_RULE, 0)
    if not acc.rules and generic >= MIN_ENTRIES_FOR_RATIO:
        # Skipping generic adblock rules is no fault, but a list of nothing else holds no
        # rule at all: most likely another format declared as adblock (plain domains).
        raise ListFormatError(
            f"list {name!r} (format {fmt!r}): no host-level rule in it, {generic} generic "
            "(unanchored) rules; is it really in this format?"
        )
    entries = len(acc.rules) + acc.rejected_count
    if entries >= MIN_ENTRIES_FOR_RATIO and acc.rejected_count > MAX_REJECTED_RATIO * entries:
        top = sorted(acc.by_reason.items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{reason}: {count}" for reason, count in top)
        raise ListFormatError(
            f"list {name!r} (format {fmt!r}): {acc.rejected_count} of {entries} entries "
            f"rejected ({reasons}); is it really in this format?"
        )
    return ParsedList(
        format=fmt,
        rules=acc.rules,
        rejected_count=acc.rejected_count,
        rejected_by_reason=acc.by_reason,
        rejected_samples=acc.samples,
        skipped=acc.skipped,
        skipped_by_reason=acc.skipped_by,
    )


def _reject_control_lines(lines: list[str], acc: _Acc) -> int:
    """Reject each line holding a control character and blank it; returns how many."""
    blanked = 0
    for i, line in enumerate(lines):
        if _CONTROL.search(line):
            shown = line.encode("unicode_escape").decode("ascii")
            acc.reject(i + 1, shown, CONTROL_CHARACTERS)
            lines[i] = ""
            blanked += 1
    return blanked


def _comment_format(lines: Sequence[str]) -> str:
    for line in lines:
        line = line.strip()
        if line:
            return {";": "cidr", "!": "adblock"}.get(line[0], "domains")
    return "domains"


def _looks_like_content(line: str) -> bool:
    """Whether a line is more than blank space or a comment in some list format."""
    line = line.strip()
    return bool(line) and line[0] not in "#!;"
