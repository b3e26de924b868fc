"""The JavaScript sink finder: which scripts can load, write or run what they hold."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.jsscan import MAX_TOKENIZED_CHARS, Kind, SinkKind, analyse, tokenize


def kinds(script: str) -> set[SinkKind]:
    return {s.kind for s in analyse(script).sinks}


def loads(script: str) -> list[tuple[str, str | None, bool]]:
    return [(s.name, s.url, s.complete) for s in analyse(script).sinks if s.kind is SinkKind.LOAD]


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ("eval(x)", SinkKind.CODE),
        ("window.eval(x)", SinkKind.CODE),
        ("new Function('a', body)", SinkKind.CODE),
        ("setTimeout('go()', 1)", SinkKind.CODE),
        ("setInterval(code, 1)", SinkKind.CODE),
        ("setTimeout((c), 1)", SinkKind.CODE),
        ("setTimeout(('location=\"//a.test/\"'))", SinkKind.CODE),
        ("var c = a[0]; setTimeout(c)", SinkKind.CODE),
        ("setTimeout(this.f, 1)", SinkKind.CODE),
        ("function c() {} c = p; setTimeout(c)", SinkKind.CODE),
        ("window['ev' + 'al'](x)", SinkKind.CODE),
        ("window['\\x65val'](x)", SinkKind.CODE),
        ("\\u0065val(x)", SinkKind.CODE),
        ("top[k](x)", SinkKind.CODE),
        ("[].constructor.constructor(c)()", SinkKind.CODE),
        ("[]['constructor']['constructor'](c)()", SinkKind.CODE),
        ("el.setAttribute('onclick', c)", SinkKind.CODE),
        ("document.write(s)", SinkKind.MARKUP),
        ("document['wri' + 'te'](s)", SinkKind.MARKUP),
        ("d.body.innerHTML += s", SinkKind.MARKUP),
        ("el.insertAdjacentHTML('beforeend', s)", SinkKind.MARKUP),
        ("f.srcdoc = s", SinkKind.MARKUP),
        ("$(s).appendTo('body')", SinkKind.MARKUP),
        ("document.createElement('script')", SinkKind.CREATE),
        ("document.createElement('IFRAME')", SinkKind.CREATE),
        ("document.createElement(tag)", SinkKind.CREATE),
        ("document.createElementNS(ns, 'script')", SinkKind.CREATE),
        ("s.src = u", SinkKind.LOAD),
        ("s['src'] = u", SinkKind.LOAD),
        ("location = u", SinkKind.LOAD),
        ("top.location.href = u", SinkKind.LOAD),
        ("location.replace(u)", SinkKind.LOAD),
        ("import(u)", SinkKind.LOAD),
        ("new Worker(u)", SinkKind.LOAD),
        ("fetch(u)", SinkKind.LOAD),
        ("x.open('GET', u)", SinkKind.LOAD),
        ("navigator.sendBeacon(u, d)", SinkKind.LOAD),
        ("el.setAttribute('src', u)", SinkKind.LOAD),
        ("el.setAttribute(name, u)", SinkKind.LOAD),
        ("$.getScript(u)", SinkKind.LOAD),
    ],
)
def test_sinks(script: str, kind: SinkKind) -> None:
    assert kind in kinds(script), analyse(script)


@pytest.mark.parametrize(
    "script",
    [
        'var hosts = ["gumblar.cn", "martuz.cn"]; hosts.forEach(h => console.log(h));',
        "setTimeout(function () { run() }, 10); setTimeout(() => run(), 10); setTimeout(async () => 1)",
        "function check() {} setTimeout(check, 500); const tick = () => 1; setInterval(tick, 9)",
        "var go = function () {}; setTimeout(go); setTimeout(this.tick.bind(this), 5)",
        "setTimeout((a, b) => a + b, 1); setTimeout(x => x)",
        "class A { constructor(x) { this.x = x } }",
        "x instanceof Function; Function.prototype.call.bind(f)",
        "a.href === b.href; if (a.src == b) {}",
        "document.createElement('div'); el.setAttribute('class', 'x')",
        "Object.assign({}, o); s.replace(/a/g, 'b'); m.get(k)",
        "el.textContent = s; el.title = s; el.classList.add('ioc')",
        "var data = {src: 'x'}; this.data = data",
        "a[0](x); f[1](y)",
    ],
)
def test_no_sinks(script: str) -> None:
    assert kinds(script) == set(), analyse(script)


def test_erring_towards_a_sink() -> None:
    # A sink's call shape counts even in a comment (the tokenizer's reading of "/" is a
    # heuristic an attacker could steer), and so does a string naming a sink (el[s] = x).
    assert kinds("// eval(x) in a comment\n/* document.write(y) */ var z = 1") == {
        SinkKind.CODE, SinkKind.MARKUP,
    }  # fmt: skip
    assert kinds("var s = 'innerHTML'") == {SinkKind.MARKUP}
    assert kinds('var t = "eval is evil"') == set()


def test_load_sinks_keep_their_constant_url_prefix() -> None:
    assert loads("s.src = 'http://a.test/x.js'") == [("src", "http://a.test/x.js", True)]
    assert loads("s.src = 'http://' + 'a.test/x.js'") == [("src", "http://a.test/x.js", True)]
    assert loads("location.href = '/warn?u=' + u") == [("href", "/warn?u=", False)]
    assert loads("s.src = `https://${h}/x.js`") == [("src", "https://", False)]
    assert loads("s.src = 'http://a.test/'.replace('a', b)") == [("src", None, False)]
    assert loads("s.src = u") == [("src", None, False)]
    assert loads("o.data = 'http://a.test/x.swf'") == [("data", "http://a.test/x.swf", True)]
    assert loads("this.data = state; o.data = f(x)") == []
    assert loads("x.open('POST', 'http://a.test/c')") == [("open", "http://a.test/c", True)]
    assert loads("window.open('http://a.test/')") == [("open", "http://a.test/", True)]
    assert loads('import x from "http://a.test/m.js"') == [("import", "http://a.test/m.js", True)]


def test_tokenizer_reads_strings_templates_comments_and_regexes() -> None:
    tokens, unreadable = tokenize(
        "a = 'x\\x27y' + \"q\" /* eval( */ // write(\n"
        "b = `t${ `in${1}` }u` / 2; c = /[/]eval(/g; <!-- eval(\n--> write(\n"
        "d = a / b / c; e = x ? /re/ : 1; return /x/.test(y)"
    )
    assert not unreadable
    values = [t.value for t in tokens]
    assert "x'y" in values and "eval" not in values and "write" not in values
    regexes = [t.value for t in tokens if t.kind is Kind.REGEX]
    assert regexes == ["/[/]eval(/g", "/re/", "/x/"]
    templates = [(t.value, t.open_substitution) for t in tokens if t.kind is Kind.TEMPLATE]
    assert templates == [("t", True), ("in", True), ("", False), ("u", False)]


@pytest.mark.parametrize(
    ("script", "values"),
    [
        ("--> eval(x)\nb", ["b"]),
        ("a\n  --> eval(x)\nb", ["a", "b"]),
        ("a /* x\n */ --> eval(x)\nb", ["a", "b"]),
        ("a /* x */ --> b", ["a", "--", ">", "b"]),  # not at a line's start: operators
        ("a-->b", ["a", "--", ">", "b"]),
        ("a <!-- b\nc", ["a", "c"]),
    ],
)
def test_html_like_comments(script: str, values: list[str]) -> None:
    assert [t.value for t in tokenize(script)[0]] == values


@pytest.mark.parametrize(
    "script", ["var a = 1 /* open", "var a = `${1", "var s = 'open", "x = /[/"]
)
def test_unterminated_scripts_are_unreadable(script: str) -> None:
    assert analyse(script).unreadable


def test_too_long_is_unreadable() -> None:
    assert analyse("a;" * (MAX_TOKENIZED_CHARS // 2 + 1)).unreadable
    assert analyse("a;" * 100, limit=10).unreadable


def test_json_app_state_is_data_without_tokenizing() -> None:
    state = "window.__STATE__ = " + '{"a": ["gumblar.cn", {"src": "x"}], "b": "</p>"}' * 1 + ";"
    assert analyse(state).sinks == () and not analyse(state).unreadable
    assert analyse("var s = JSON.parse('{\"a\": 1}'); window.x = [1, 2]").sinks == ()
    # An assignment to a sink is no data, whatever its value.
    assert kinds('window.location = "http://a.test/"') == {SinkKind.LOAD}
    assert kinds('x = {"a": 1}; eval(y)') == {SinkKind.CODE}


# A sink after a stretch of tricky but valid code is still found.
_ATOMS = [
    "a / b", "a / b / c", "x = /re/g", "(a) / 2", "[1] / 2", "'str\\'\"'", '"s\\"t"',
    "`t${a}u`", "`a${`b${c}`}`", "/* c */", "// c\n", "<!-- c\n", "\n--> c\n", "x = {a: 1}",
    "if (a) {}", "f(a, b)", "a.b.c", "a ? b : c", "x = `${'`'}`", "y = '/*'", "z = '//'",
    "w = /'/", 'v = /"/', "u = /`/", "q = a++ / 2", "r = typeof /x/", "s = ']('",
]  # fmt: skip
_SINKS = {
    "eval(p)": SinkKind.CODE,
    "document.write(p)": SinkKind.MARKUP,
    "s.src = p": SinkKind.LOAD,
    "location.href = p": SinkKind.LOAD,
    "w[k](p)": SinkKind.CODE,
    "document.createElement('script')": SinkKind.CREATE,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_ATOMS), max_size=12), st.sampled_from(sorted(_SINKS)))
def test_a_sink_after_valid_code_is_found(atoms: list[str], sink: str) -> None:
    script = ";\n".join([*atoms, sink]) + ";"
    traits = analyse(script)
    assert traits.unreadable or _SINKS[sink] in {s.kind for s in traits.sinks}, script


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_read_without_error(text: str) -> None:
    traits = analyse(text)
    assert isinstance(traits.unreadable, bool)
