"""Property tests for the list parsers: round trips, and no crash on any input."""

from __future__ import annotations

import codecs
import contextlib

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy_addons.core.canon import canonical_host
from proxy_addons.core.errors import CanonError, ListFormatError
from proxy_addons.core.formats import FORMATS, MAX_REJECTED_SAMPLES, detect_format, parse_list
from proxy_addons.core.model import ParsedList, RuleKind

_LABEL = st.one_of(
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9_-]{0,12}[a-zA-Z0-9])?", fullmatch=True),
    st.sampled_from(["bücher", "MÜNCHEN", "пример", "例え", "ελλάδα", "straße"]),
)
_TLD = st.one_of(
    st.from_regex(r"[a-zA-Z]{2,8}", fullmatch=True), st.sampled_from(["рф", "中国", "xn--p1ai"])
)


@st.composite
def domains(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
    name = ".".join([*labels, draw(_TLD)])
    if draw(st.booleans()):
        name += "."
    try:
        key = canonical_host(name)
    except CanonError:
        assume(False)
    assume(key != "localhost.localdomain")
    return name


# How each format writes "block this domain", and the key it should give.
WRITERS = {
    "hosts": (lambda d: f"0.0.0.0 {d}", lambda d: canonical_host(d)),
    "domains": (lambda d: d, lambda d: canonical_host(d)),
    "adblock": (lambda d: f"||{d}^", lambda d: canonical_host(d)),
    "dnsmasq": (lambda d: f"address=/{d}/0.0.0.0", lambda d: canonical_host(d)),
    "urls": (lambda d: f"http://{d}/", lambda d: canonical_host(d) + "/"),
}


def _invariants(p: ParsedList) -> None:
    assert p.format in FORMATS
    assert p.rejected_count == sum(p.rejected_by_reason.values())
    assert len(p.rejected_samples) <= MAX_REJECTED_SAMPLES
    assert len(p.rejected_samples) == min(p.rejected_count, MAX_REJECTED_SAMPLES)
    for r in p.rules:
        assert r.line >= 1 and r.key
        if r.kind in (RuleKind.DOMAIN, RuleKind.EXACT, RuleKind.IP):
            assert canonical_host(r.key) == r.key  # keys are canonical already


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(sorted(WRITERS)),
    names=st.lists(domains(), min_size=1, max_size=20),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    header=st.booleans(),
)
def test_domains_round_trip_in_every_format(
    fmt: str, names: list[str], newline: str, bom: bool, header: bool
) -> None:
    write, expect = WRITERS[fmt]
    lines = [write(d) for d in names]
    if header:
        lines.insert(0, "! comment" if fmt == "adblock" else "# comment")
    data = newline.join(lines).encode("utf-8")
    if bom:
        data = codecs.BOM_UTF8 + data
    for given_fmt in (fmt, "auto"):
        p = parse_list(data, given_fmt)
        assert p.format == fmt
        assert [r.key for r in p.rules] == [expect(d) for d in names]
        assert [r.line for r in p.rules] == [i + 1 + header for i in range(len(names))]
        assert p.rejected_count == 0
        _invariants(p)


_FRAGMENT_PREFIXES = [
    "", "0.0.0.0 ", "127.0.0.1\t", ":: ", "||", "@@||", "|http://", "|https://", "address=/",
    "local=/", "server=/", "http://", "https://", '{"cidr":"', '{"type":"metadata"', '"1","d","',
    "=", "*.", "# id,dateadded,url\n", "[Adblock Plus 2.0]\n", "!", ";", "#", "/", "$",
]  # fmt: skip
_FRAGMENT_SUFFIXES = [
    "", "^", "^$third-party", "^$script", "^|", "/", "/0.0.0.0", "/1.2.3.4", '"}', "/24 ; SBL1",
    '","online"', "##.ad", "#@#x", " # c", "/", "$$x", "/$", ".", "^$domain=a.b", "%00",
]  # fmt: skip
_CHARS = st.sampled_from(
    list("abcxyzABC019.-_/:*$^|#;!@[]{}\"',= \t%~?&\\")
    + ["ü", "ß", "例", "\u0000", "\ufffd", "\u200b", "\x7f", "\u2028", "\r"]
)


@st.composite
def lines(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    body = draw(st.text(alphabet=_CHARS, max_size=30))
    return (
        draw(st.sampled_from(_FRAGMENT_PREFIXES)) + body + draw(st.sampled_from(_FRAGMENT_SUFFIXES))
    )


def _parse_or_refuse(data: bytes | str, fmt: str) -> None:
    try:
        p = parse_list(data, fmt)
    except ListFormatError:
        return
    _invariants(p)


@settings(max_examples=250, deadline=None)
@given(
    text=st.lists(lines(), max_size=25).map("\n".join),
    fmt=st.sampled_from(("auto", *FORMATS)),
)
def test_listlike_text_never_crashes(text: str, fmt: str) -> None:
    _parse_or_refuse(text, fmt)
    _parse_or_refuse(text.encode("utf-8", "surrogatepass"), fmt)
    with contextlib.suppress(ListFormatError):
        detect_format(text)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), fmt=st.sampled_from(("auto", *FORMATS)))
def test_arbitrary_bytes_never_crash(data: bytes, fmt: str) -> None:
    _parse_or_refuse(data, fmt)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=500), fmt=st.sampled_from(("auto", *FORMATS)))
def test_arbitrary_text_never_crashes(text: str, fmt: str) -> None:
    _parse_or_refuse(text, fmt)
