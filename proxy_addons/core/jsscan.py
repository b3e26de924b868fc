# One module on purpose (~1,000 lines): one JavaScript tokenizer and the sink rules that
# read its tokens; they change together and the tokenizer's state is their input.
"""What an inline script can do with the text it holds: a small JavaScript tokenizer.

The HTML scanner finds blocked hosts and URLs in a script's text; this module
decides whether that script could *load or inject* anything, so that a host
held as data (an IOC list, app state, a code sample) is reported, not removed.
It never executes JavaScript. It tokenizes the text (strings, template
literals, comments, regular expressions, names, punctuators) well enough to
find call sites, property assignments and string concatenations, and reports
the script's *sinks*:

- code sinks: ``eval``, ``Function``, ``execScript``, ``constructor`` (the
  ``[].constructor.constructor`` idiom), ``setTimeout``/``setInterval`` with
  anything but a function literal, and calls through a computed member whose
  key is not a constant (``window[k](...)``: any function, ``eval`` included);
- markup sinks: ``document.write``, ``innerHTML``, ``insertAdjacentHTML``,
  ``srcdoc``, ``createContextualFragment``, jQuery's ``$(html)``/``.html()``/
  ``.append()``...;
- the creation of an active element (``createElement('script'|'iframe'|...)``,
  or of a name that is not a constant);
- load sinks: ``x.src =``, ``location =``/``.href =``, ``location.assign()``/
  ``replace()``, ``window.open()``, ``import()``/``import ... from``,
  ``importScripts``, ``new Worker``, ``setAttribute('src', ...)``, jQuery's
  ``$.getScript``/``.load``/``$.get``/``$.ajax`` (which run script responses),
  and the requests a page makes by itself: ``fetch``, ``XMLHttpRequest.open``,
  ``navigator.sendBeacon``, ``EventSource``, ``WebSocket`` (an injected
  skimmer's way out with the page's data), each with the constant prefix of its
  URL argument (or none: built at run time).

Names and strings are compared after JS escapes are undone and literal-only
expressions folded (``d["wri" + "te"]``, ``\\u0065val``, ``['a', 'b'].join('.')``,
``'a'.concat('b')``, ``String.fromCharCode(...)``, ``atob('...')``, templates whose
substitutions are literals; see ``_Sinks._term``). The
tokenizer is a heuristic where JavaScript is ambiguous (``/`` after ``)``
is read as division, after ``}`` as a regular expression), so the shapes of
the strongest sinks are also searched in the raw text (``write(``, ``eval(``,
``.src =``...): a script that hides a sink from the tokenizer still has it.
A script the tokenizer cannot read to its end (an unterminated string or
comment), or longer than ``MAX_TOKENIZED_CHARS``, is reported as ``unreadable``;
callers treat that as a sink. A text that only assigns JSON values to plain names
(app state: ``window.__STATE__ = {...};``, ``JSON.parse('...')``) has no sink and
is recognised by Python's JSON decoder, whatever its size, without tokenizing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

# Longest script text analysed token by token (the tokenizer reads ~0.5-1 MB/s of
# minified code); past it the script counts as unreadable, and callers remove it on
# any blocked reference (the old rule): a bound on work, erring towards removal.
# Inline scripts that mention a blocked host are rarely near it; JSON app state of
# any size is recognised without the tokenizer.
MAX_TOKENIZED_CHARS = 256 * 1024


class Kind(StrEnum):
    NAME = "name"
    STRING = "string"
    TEMPLATE = "template"  # one literal chunk of a template: head, middle or tail
    NUMBER = "number"
    REGEX = "regex"
    PUNCT = "punct"


class Token(NamedTuple):
    kind: Kind
    value: str  # names and strings with escapes undone
    start: int
    newline_before: bool = False
    # TEMPLATE: a substitution ``${`` follows this chunk.
    open_substitution: bool = False


class SinkKind(StrEnum):
    CODE = "code"
    MARKUP = "markup"
    CREATE = "create"
    LOAD = "load"


@dataclass(frozen=True, slots=True)
class Sink:
    """A place where the script runs, writes or loads something.

    ``url`` is the constant prefix of a load sink's URL argument, ``complete``
    whether the argument is that constant alone; ``url`` None means the URL is
    built at run time (or is not a literal).
    """

    kind: SinkKind
    name: str
    url: str | None = None
    complete: bool = False


@dataclass(frozen=True, slots=True)
class ScriptTraits:
    """A script's sinks, and its string constants (adjacent literals joined by ``+``)."""

    sinks: tuple[Sink, ...]
    unreadable: bool = False
    strings: tuple[str, ...] = ()

    def first(self, kind: SinkKind) -> Sink | None:
        return next((s for s in self.sinks if s.kind is kind), None)


_CODE_NAMES = frozenset({"eval", "Function", "execScript", "constructor", "AsyncFunction"})
_TIMER_NAMES = frozenset({"setTimeout", "setInterval", "setImmediate"})
_MARKUP_NAMES = frozenset(
    {
        "write", "writeln", "innerHTML", "outerHTML", "insertAdjacentHTML", "srcdoc",
        "createContextualFragment", "setHTMLUnsafe", "parseHTMLUnsafe", "parseFromString",
    }
)  # fmt: skip
# jQuery's methods that parse an HTML string (and run its scripts).
_JQUERY_MARKUP = frozenset(
    {"html", "append", "prepend", "after", "before", "replaceWith", "wrap", "appendTo",
     "prependTo", "insertAfter", "insertBefore", "replaceAll", "parseHTML"}
)  # fmt: skip
_JQUERY = frozenset({"$", "jQuery"})
# Properties whose assignment loads (or navigates to) a URL.
# (Not "data": `this.data =` is everywhere; an <object> is created, which counts.)
_LOAD_PROPERTIES = frozenset({"src", "href", "action", "formAction", "location", "codebase"})
# Properties that load a URL on some elements but hold anything on most objects: a
# load sink only when assigned a literal URL (<object>.data, <img>.srcset, ...).
_CONSTANT_LOAD_PROPERTIES = frozenset({"data", "srcset", "poster", "background"})
# Properties of a location (or a link) that set the host: location.host = 'evil.example'
# navigates there. Judged as "//" + the value.
_HOST_PROPERTIES = frozenset({"host", "hostname"})
# Calls whose first argument is a URL that is loaded, run or navigated to.
_LOAD_CALLS = frozenset(
    {"open", "import", "importScripts", "Worker", "SharedWorker", "register", "getScript",
     "navigate", "load", "showModalDialog", "fetch", "sendBeacon", "EventSource", "WebSocket",
     "Request"}
)  # fmt: skip
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
_LOCATION_CALLS = frozenset({"assign", "replace"})
_JQUERY_LOADS = frozenset({"get", "post", "ajax", "getJSON"})
_ACTIVE_ELEMENTS = frozenset(
    {"script", "iframe", "frame", "object", "embed", "link", "meta", "base", "portal",
     "fencedframe", "svg:script"}
)  # fmt: skip
_URL_ATTRIBUTES = frozenset(
    {"src", "href", "xlink:href", "data", "action", "formaction", "codebase", "srcset"}
)
# Calls that copy an object's properties onto another (an element, window, location):
# with one of them in a script, an object literal's ``src:``/``location:`` is a load.
_COPIERS = frozenset({"assign", "attr", "prop", "extend", "defineProperty", "defineProperties"})
# An attribute node set on an element (its value is set with ``.value =``).
_ATTRIBUTE_NODES = frozenset({"setAttributeNode", "setAttributeNodeNS", "setNamedItem",
                              "setNamedItemNS"})  # fmt: skip
_ATTRIBUTE_VALUES = frozenset({"value", "nodeValue"})
_ATTRIBUTE_READS = frozenset({"attributes", "getAttributeNode", "getAttributeNodeNS",
                              "getNamedItem", "getNamedItemNS", "createAttribute"})  # fmt: skip
# Functions that load a URL and may be called through an alias, a bind, call/apply or
# another function (``[u].map(fetch)``); "open" and "load" are too common as plain
# properties to count as a value, only when bound or assigned alone.
_ALIASABLE = frozenset(
    {"fetch", "sendBeacon", "Worker", "SharedWorker", "WebSocket", "EventSource",
     "importScripts", "setAttribute", "setAttributeNS", "open", "getScript", "Request"}
)  # fmt: skip
_PROPERTY_LIKE = frozenset({"open"})
# Calls that hand out a property's setter.
_DESCRIPTORS = frozenset({"getOwnPropertyDescriptor", "__lookupSetter__"})
# Objects whose computed property set may navigate (window[k] = u: k = "location").
_WINDOWS = frozenset({"window", "self", "top", "parent", "globalThis", "frames", "opener",
                      "document", "location", "content"})  # fmt: skip
# Values that are never a URL or code (an assignment of one through a computed key
# loads nothing).
_INERT_VALUES = frozenset({"true", "false", "null", "undefined", "void", "typeof"})
# Properties that load, run or write when set (a string naming one makes x[k] = v a sink).
_SETTABLE = _LOAD_PROPERTIES | _CONSTANT_LOAD_PROPERTIES | _MARKUP_NAMES | {"text", "textContent"}
# Names the sink pass looks at (every other name is skipped at once).
_INTERESTING_NAMES = (
    _CODE_NAMES | _TIMER_NAMES | _MARKUP_NAMES | _JQUERY_MARKUP | _JQUERY | _LOAD_PROPERTIES
    | _CONSTANT_LOAD_PROPERTIES | _HOST_PROPERTIES
    | _LOAD_CALLS | _LOCATION_CALLS | _JQUERY_LOADS
    | _COPIERS | _ATTRIBUTE_NODES | _ATTRIBUTE_VALUES | _ALIASABLE | _DESCRIPTORS
    | {"import", "export", "from", "createElement", "createElementNS", "setAttribute",
       "setAttributeNS", "set", "with"}
)  # fmt: skip
# Strings that name a sink (called by name: window["eval"]).
_NAMED_STRINGS = _CODE_NAMES | _MARKUP_NAMES
_KEYWORDS_BEFORE_EXPRESSION = frozenset(
    {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case",
     "do", "else", "yield", "await"}
)  # fmt: skip

# The tokenizer's pieces; every quantifier is possessive (no backtracking). One
# master pattern reads the common tokens; "{", "}", "`" and "/" (braces, template
# chunks, regular expressions) need the tokenizer's state.
_HAS_NEWLINE = re.compile(r"[\n\r\u2028\u2029]")
_TOKEN = re.compile(
    r"(?P<space>[\t\v\f \xa0\ufeff\u1680\u2000-\u200a\u202f\u205f\u3000]++)"
    r"|(?P<newline>[\n\r\u2028\u2029]++)"
    r"|(?P<comment>(?://|<!--)[^\n\r\u2028\u2029]*+)"
    r"|(?P<block>/\*(?:[^*]++|\*(?!/))*+\*/)"
    r"|(?P<string>\"(?:[^\"\\\n\r]++|\\(?:\r\n|[\s\S]))*+\"|'(?:[^'\\\n\r]++|\\(?:\r\n|[\s\S]))*+')"
    r"|(?P<name>(?:[A-Za-z_$\xaa-\uffff]|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]+\})"
    r"(?:[\w$\xaa-\u2027\u202a-\uffff]|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]+\})*+)"
    r"|(?P<number>\.?[0-9][\w.]*+)"
    r"|(?P<special>[{}`/])"
    r"|(?P<punct>>>>=|\.\.\.|===|!==|\*\*=|<<=|>>=|>>>|&&=|\|\|=|\?\?=|=>|==|!=|<=|>=|&&|\|\|"
    r"|\?\?|\?\.(?![0-9])|\*\*|\+\+|--|\+=|-=|\*=|%=|&=|\|=|\^=|<<|>>|[()\[\];,<>+\-*%&|^!~?:=.@#])",
    re.S,
)
_HTML_CLOSE = re.compile(r"[\t\v\f \xa0\ufeff\u1680\u2000-\u200a\u202f\u205f\u3000]*+-->")
_SKIPPABLE = re.compile(r"[\t\v\f \xa0\ufeff\u1680\u2000-\u200a\u202f\u205f\u3000]*+")
_TEMPLATE_CHUNK = re.compile(r"((?:[^`\\$]++|\\[\s\S]|\$(?!\{))*+)(`|\$\{)")
_REGEX = re.compile(r"/(?:[^/\\\[\n\r]++|\\[^\n\r]|\[(?:[^\]\\\n\r]++|\\[^\n\r])*+\])++/[\w$]*+")
_LINE_REST = re.compile(r"[^\n\r\u2028\u2029]*+")
_ESCAPE = re.compile(
    r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|u\{([0-9a-fA-F]+)\}|([0-3][0-7]{0,2}|[4-7][0-7]?)"
    r"|(\r\n|[\s\S]))"
)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
_LINE_CONTINUATIONS = frozenset({"\n", "\r", "\r\n", "\u2028", "\u2029"})


# How deep literal-only expressions are folded (parentheses, arrays, templates).
_FOLD_DEPTH = 8
_DECODERS = frozenset({"atob", "unescape", "decodeURI", "decodeURIComponent"})
_PERCENT_ESCAPE = re.compile(r"%u([0-9a-fA-F]{4})|%([0-9a-fA-F]{2})")


def _decode_call(name: str, value: str) -> str | None:
    """What ``atob``/``unescape``/``decodeURI(Component)`` return for a literal (None:
    they throw, or the value is not a literal's)."""
    if name == "atob":
        try:
            data = base64.b64decode("".join(value.split()) + "==", validate=False)
        except (binascii.Error, ValueError):
            return None
        return data.decode("latin-1")
    if name == "unescape":
        return _PERCENT_ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), value)
    return urllib.parse.unquote(value, errors="replace")


def _unescape(m: re.Match[str]) -> str:
    hx, u4, ub, octal, other = m.groups()
    code = hx or u4 or ub
    if code is not None:
        value = int(code, 16)
        return chr(value) if value <= 0x10FFFF else "\ufffd"
    if octal is not None:
        return chr(int(octal, 8) & 0xFF)
    return "" if other in _LINE_CONTINUATIONS else _SIMPLE.get(other, other)


def cook(raw: str) -> str:
    """A string literal's value: JS escapes undone."""
    return _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw


def tokenize(text: str) -> tuple[list[Token], bool]:
    """The tokens of ``text``; the flag is true if the text could not be read to its end."""
    tokens: list[Token] = []
    append = tokens.append
    make = tuple.__new__  # (a NamedTuple's own constructor is Python code: 5x slower)
    n = len(text)
    pos = 0
    newline = True
    braces: list[bool] = []  # per open "{": True when it opened a template substitution
    NAME, STRING, PUNCT, NUMBER = Kind.NAME, Kind.STRING, Kind.PUNCT, Kind.NUMBER
    while pos < n:
        if newline and text.startswith("-->", pos):  # an HTML-like comment (Annex B)
            pos = _LINE_REST.match(text, pos).end()  # type: ignore[union-attr]
            continue
        # One C-level scan until a token that needs the tokenizer's state, then resume.
        resume = -1
        for m in _TOKEN.finditer(text, pos):
            group = m.lastgroup
            if group == "space":
                continue
            start = m.start()
            if start != pos and not _SKIPPABLE.fullmatch(text, pos, start):
                resume = pos  # an unmatched character in between: handled below
                break
            pos = m.end()
            if group == "name":
                value = m.group()
                if "\\" in value:
                    value = cook(value)
                append(make(Token, (NAME, value, start, newline, False)))
            elif group == "punct":
                append(make(Token, (PUNCT, m.group(), start, newline, False)))
            elif group == "string":
                append(make(Token, (STRING, cook(m.group()[1:-1]), start, newline, False)))
            elif group == "newline":
                newline = True
                if (close := _HTML_CLOSE.match(text, pos)) is not None:
                    resume = close.end() - 3  # "-->" after a line's spaces (Annex B)
                    break
                continue
            elif group == "comment":
                continue
            elif group == "block":
                if _HAS_NEWLINE.search(text, start, pos):
                    newline = True
                    if (close := _HTML_CLOSE.match(text, pos)) is not None:
                        resume = close.end() - 3
                        break
                continue
            elif group == "number":
                append(make(Token, (NUMBER, m.group(), start, newline, False)))
            else:  # "special": "{", "}", "`", "/"
                c = m.group()
                if c == "{":
                    braces.append(False)
                    append(make(Token, (PUNCT, c, start, newline, False)))
                elif c == "}" and not (braces and braces[-1]):
                    if braces:
                        braces.pop()
                    append(make(Token, (PUNCT, c, start, newline, False)))
                else:
                    resume = start  # a regular expression or a template chunk
                    break
            newline = False
        else:
            if pos < n and not _SKIPPABLE.fullmatch(text, pos, n):
                resume = pos
            else:
                break
        pos = resume
        if newline and text.startswith("-->", pos):
            continue  # (read at the top of the loop)
        c = text[pos]
        if c == "/" and not text.startswith("/*", pos) and not text.startswith("//", pos):
            if _regex_allowed(tokens):
                r = _REGEX.match(text, pos)
                if r is None:
                    return tokens, True
                append(make(Token, (Kind.REGEX, r.group(), pos, newline, False)))
                pos = r.end()
            else:
                end = pos + 2 if text.startswith("/=", pos) else pos + 1
                append(make(Token, (PUNCT, text[pos:end], pos, newline, False)))
                pos = end
        elif c == "`" or c == "}":
            if c == "}":
                braces.pop()
            t = _TEMPLATE_CHUNK.match(text, pos + 1)
            if t is None:
                return tokens, True
            substitution = t.group(2) == "${"
            if substitution:
                braces.append(True)
            append(make(Token, (Kind.TEMPLATE, cook(t.group(1)), pos, newline, substitution)))
            pos = t.end()
        elif c in "'\"" or text.startswith("/*", pos):
            return tokens, True  # an unterminated string or comment
        else:
            pos += 1  # a character JavaScript does not allow here: skip it
            continue
        newline = False
    return tokens, any(braces)


def _regex_allowed(tokens: list[Token]) -> bool:
    """Whether a ``/`` here starts a regular expression (rather than dividing)."""
    if not tokens:
        return True
    prev = tokens[-1]
    if prev.kind is Kind.PUNCT:
        if prev.value == ")":
            return _after_condition(tokens)
        return prev.value != "]"
    if prev.kind is Kind.NAME:
        return prev.value in _KEYWORDS_BEFORE_EXPRESSION
    return prev.kind is Kind.TEMPLATE and prev.open_substitution


# Statements whose parenthesised head may be followed by a regular expression
# (``if (a) /re/.test(b)``): reading that "/" as division would let an attacker hide
# the code after it inside what the tokenizer takes for a string.
_CONDITION_KEYWORDS = frozenset({"if", "while", "for", "with"})
_PAREN_LOOKBACK = 4096


def _after_condition(tokens: list[Token]) -> bool:
    """Whether the ")" ending ``tokens`` closes an ``if``/``while``/``for``/``with`` head."""
    depth = 0
    for k in range(len(tokens) - 1, max(-1, len(tokens) - 1 - _PAREN_LOOKBACK), -1):
        tok = tokens[k]
        if tok.kind is not Kind.PUNCT:
            continue
        if tok.value == ")":
            depth += 1
        elif tok.value == "(":
            depth -= 1
            if depth == 0:
                before = tokens[k - 1] if k else None
                return (
                    before is not None
                    and before.kind is Kind.NAME
                    and before.value in _CONDITION_KEYWORDS
                )
    return False


# Raw-text shapes of the strongest sinks, for what the tokenizer may not see. (No
# leading look-behind: _shapes checks the character before, which keeps the search fast.)
_CODE_WORDS = ("eval", "Function", "execScript", "setTimeout", "setInterval", "constructor")
_CODE_SHAPE = re.compile(
    r"(?:eval|Function|execScript)\s*(?:\(|\.\s*(?:call|apply|bind)\b)"
    r"|(?:setTimeout|setInterval)\s*\(\s*[\"'`]"
    r"|\.\s*constructor\s*(?:\(|\.\s*constructor)|\[\s*[\"'`]constructor[\"'`]\s*\]\s*[(\[]"
)
_MARKUP_WORDS = ("write", "insertAdjacentHTML", "createContextualFragment", "setHTMLUnsafe",
                 "innerHTML", "outerHTML", "srcdoc")  # fmt: skip
_MARKUP_SHAPE = re.compile(
    r"(?:write|writeln|insertAdjacentHTML|createContextualFragment|setHTMLUnsafe)\s*\("
    r"|\.\s*(?:innerHTML|outerHTML|srcdoc)\s*\+?=(?!=)"
)
_LOAD_WORDS = ("src", "href", "host", "action", "location", "import", "open", "Worker", "getScript",
               "fetch", "sendBeacon", "EventSource", "WebSocket", "setAttribute")  # fmt: skip
_LOAD_SHAPE = re.compile(
    r"\.\s*(?:src|href|host|hostname|action|location)\s*\+?=(?!=)|location\s*\+?=(?!=)"
    r"|(?:import|importScripts|open|Worker|SharedWorker|getScript|fetch|sendBeacon"
    r"|EventSource|WebSocket)\s*[(`]"
    r"|\[\s*[\"'`](?:src|href|action|location)[\"'`]\s*\]\s*\+?=(?!=)"
    r"|location\s*\.\s*(?:assign|replace)\s*\("
    r"|setAttribute(?:NS\s*\([^,)]*,|\s*\()\s*[\"'`](?:src|href|xlink:href|data|action|formaction"
    r"|codebase|srcset)[\"'`]"
)


def _shapes(pattern: re.Pattern[str], words: tuple[str, ...], text: str) -> list[str]:
    """Matches of a sink shape not preceded by a name character (cheap words gate it)."""
    if not any(w in text for w in words):
        return []
    out = []
    for m in pattern.finditer(text):
        at = m.start()
        if at and m.group()[0] not in ".[" and (text[at - 1].isalnum() or text[at - 1] in "_$"):
            continue
        out.append(m.group())
    return out


# Assignments of JSON values (app state: window.__STATE__ = {...};), which hold no sink.
_DATA_TARGET = re.compile(
    r"[\s;]*+(?:(?:var|let|const)\s++)?+([A-Za-z_$][\w$]*+(?:\s*+\.\s*+[A-Za-z_$][\w$]*+"
    r"|\s*+\[\s*+\"[^\"\\]*+\"\s*+\])*+)\s*+=\s*+(JSON\s*+\.\s*+parse\s*+\(\s*+)?"
)
_DATA_END = re.compile(r"\s*+\)")
_TARGET_NAMES = re.compile(r"[A-Za-z_$][\w$]*")
_JSON = json.JSONDecoder()


def _json_assignments(text: str) -> bool:
    """Whether the whole text is assignments of JSON values to plain (non-sink) names."""
    pos, n = 0, len(text)
    while True:
        m = _DATA_TARGET.match(text, pos)
        if m is None:
            return text[pos:].strip(" \t\n\r\f\v;") == ""
        if any(name in _INTERESTING_NAMES for name in _TARGET_NAMES.findall(m.group(1))):
            return False
        try:
            value, pos = _JSON.raw_decode(text, m.end())
        except ValueError:
            return False
        if m.group(2):
            if not isinstance(value, str):
                return False
            close = _DATA_END.match(text, pos)
            if close is None:
                return False
            pos = close.end()
        if pos >= n:
            return True


def analyse(text: str, *, limit: int = MAX_TOKENIZED_CHARS) -> ScriptTraits:
    """The sinks of a script's text (see the module docstring).

    A text longer than ``limit`` is not tokenized: it is ``unreadable``.
    """
    sinks: list[Sink] = []
    strings: list[str] = []
    if "=" in text[:256] and _json_assignments(text):
        return ScriptTraits(())
    unreadable = len(text) > min(limit, MAX_TOKENIZED_CHARS)
    if not unreadable:
        tokens, unreadable = tokenize(text)
        _Sinks(tokens, sinks, strings).find()
    kinds = {s.kind for s in sinks}
    code = _shapes(_CODE_SHAPE, _CODE_WORDS, text)
    if code and SinkKind.CODE not in kinds:
        sinks.append(Sink(SinkKind.CODE, code[0].strip("(.[]\"'` ")))
    markup = _shapes(_MARKUP_SHAPE, _MARKUP_WORDS, text)
    if markup and SinkKind.MARKUP not in kinds:
        sinks.append(Sink(SinkKind.MARKUP, markup[0].strip("(.=+ ")))
    loads = sum(1 for s in sinks if s.kind is SinkKind.LOAD)
    shapes = _shapes(_LOAD_SHAPE, _LOAD_WORDS, text)
    if len(shapes) > loads:
        # More load shapes in the text than load sinks among the tokens: one is hidden
        # from the tokenizer (or sits in a string or comment). Count it as a load of a
        # URL built at run time.
        sinks.append(Sink(SinkKind.LOAD, shapes[0].strip("(.=+ ")))
    return ScriptTraits(tuple(sinks), unreadable, tuple(strings))


class _Sinks:
    """One pass over the tokens, collecting sinks."""

    def __init__(self, tokens: list[Token], out: list[Sink], strings: list[str]) -> None:
        self.t = tokens
        self.out = out
        self.strings = strings
        self.jquery = any(t.kind is Kind.NAME and t.value in _JQUERY for t in tokens)
        # with (location) href = u: a bare name may be any object's property.
        self.with_ = any(
            t.kind is Kind.NAME and t.value == "with" and self._is(k + 1, "(")
            for k, t in enumerate(tokens)
        )
        self.copies = False  # the script calls Object.assign, $.attr, ... (see _COPIERS)
        self.literal_keys: list[tuple[str, int]] = []  # {src: value}: (key, value index)
        self.computed_sets: list[tuple[int, int]] = []  # x[k] = v: ("[", "]") indices
        self._functions: set[str] | None = None
        self._values: set[str] = set()  # names also assigned something else

    def _close_paren(self, i: int) -> int:
        """The index of the ")" matching the "(" at ``i`` (or past the end)."""
        t = self.t
        depth = 0
        for k in range(i, min(len(t), i + 4096)):
            if t[k].kind is Kind.PUNCT:
                if t[k].value in ("(", "[", "{"):
                    depth += 1
                elif t[k].value in (")", "]", "}"):
                    depth -= 1
                    if depth == 0:
                        return k
        return len(t)

    def _functions_declared(self) -> set[str]:
        """Names this script binds to a function (``function f``, ``f = () => ...``)."""
        if self._functions is None:
            t = self.t
            names: set[str] = set()
            other: set[str] = set()  # also given something else: it may hold a string
            for k, tok in enumerate(t):
                if tok.kind is not Kind.NAME:
                    continue
                if tok.value == "function" and self._name_at(k + 1) is not None:
                    names.add(t[k + 1].value)
                elif self._assigned(k + 1):
                    (names if self._function_literal(k + 2) else other).add(tok.value)
            self._functions = names - other
            self._values = other
        return self._functions

    def _function_literal(self, i: int) -> bool:
        """Whether a function expression starts at ``i`` (function, async, an arrow)."""
        head = self._name_at(i)
        if head in ("function", "async"):
            return True
        if head is not None:
            return self._is(i + 1, "=>")
        return self._is(i, "(") and self._is(self._close_paren(i) + 1, "=>")

    def _function_at(self, i: int) -> bool:
        """Whether the argument at ``i`` is a function, not a string to run: a function
        expression, a name this script binds to one, or ``x.method.bind(...)``."""
        if self._function_literal(i):
            return True
        name = self._name_at(i)
        if name is None:
            return False
        if name in self._functions_declared() and (self._is(i + 1, ",") or self._is(i + 1, ")")):
            return True
        k = i
        while self._is(k + 1, ".") and self._name_at(k + 2) is not None:
            k += 2
            if self.t[k].value == "bind" and self._is(k + 1, "("):
                return True
        return False

    def _is(self, i: int, value: str) -> bool:
        t = self.t
        return 0 <= i < len(t) and t[i].kind is Kind.PUNCT and t[i].value == value

    def _name_at(self, i: int) -> str | None:
        t = self.t
        return t[i].value if 0 <= i < len(t) and t[i].kind is Kind.NAME else None

    def _literal(self, i: int) -> bool:
        return 0 <= i < len(self.t) and self.t[i].kind in (Kind.STRING, Kind.TEMPLATE)

    def constant(self, i: int) -> tuple[str | None, bool, int]:
        """The constant prefix of the expression at ``i`` (literals joined by ``+``).

        Returns (prefix, whether the expression is that constant alone, the index
        after the constant part). The prefix is None when the expression does not
        start with a literal, or when the literal is then transformed (a method
        call): the value is computed at run time.
        """
        t = self.t
        parts: list[str] = []
        while True:
            folded = self._term(i, 0)
            if folded is not None:
                value, i = folded
                parts.append(value)
            elif self._literal(i):  # a template with a substitution computed at run time
                parts.append(t[i].value)
                return "".join(parts), False, i + 1
            else:
                break
            if self._is(i, "+") and (self._literal(i + 1) or self._term(i + 1, 0) is not None):
                i += 1
                continue
            break
        if not parts:
            return None, False, i
        prefix = "".join(parts)
        if (
            i >= len(t)
            or (t[i].kind is Kind.PUNCT and t[i].value in ",;)]}:")
            or t[i].newline_before
        ):
            return prefix, True, i
        if self._is(i, "+"):
            return prefix, False, i
        return None, False, i

    def _term(self, i: int, depth: int) -> tuple[str, int] | None:
        """The value of the literal-only term at ``i`` and the index after it, or None.

        Folded as JavaScript evaluates them: a string, a template whose substitutions
        are literal-only, ``[...].join(...)``, ``.concat(...)``, ``String.fromCharCode``
        of numbers, ``atob``/``unescape``/``decodeURI(Component)`` of a literal, and
        parentheses around any of these (nested ``_FOLD_DEPTH`` deep at most).
        """
        t, n = self.t, len(self.t)
        if i >= n or depth > _FOLD_DEPTH:
            return None
        tok = t[i]
        value: str | None = None
        if tok.kind is Kind.STRING:
            value, i = tok.value, i + 1
        elif tok.kind is Kind.TEMPLATE:
            parts, j, chunk = [tok.value], i + 1, tok
            while chunk.open_substitution:
                inner = self._sum(j, depth + 1)
                if inner is None or inner[1] >= n or t[inner[1]].kind is not Kind.TEMPLATE:
                    return None
                chunk = t[inner[1]]
                parts += (inner[0], chunk.value)
                j = inner[1] + 1
            value, i = "".join(parts), j
        elif self._is(i, "["):
            items, j = [], i + 1
            while not self._is(j, "]"):
                inner = self._sum(j, depth + 1)
                if inner is None:
                    return None
                items.append(inner[0])
                j = inner[1] + 1 if self._is(inner[1], ",") else inner[1]
                if not (self._is(j, "]") or self._is(j - 1, ",")):
                    return None
            if not (
                self._is(j + 1, ".") and self._name_at(j + 2) == "join" and self._is(j + 3, "(")
            ):
                return None
            sep, j = ",", j + 4
            if not self._is(j, ")"):
                inner = self._sum(j, depth + 1)
                if inner is None or not self._is(inner[1], ")"):
                    return None
                sep, j = inner
            value, i = sep.join(items), j + 1
        elif self._is(i, "("):
            inner = self._sum(i + 1, depth + 1)
            if inner is None or not self._is(inner[1], ")"):
                return None
            value, i = inner[0], inner[1] + 1
        elif tok.kind is Kind.NAME and tok.value == "String":
            if not (self._is(i + 1, ".") and self._name_at(i + 2) == "fromCharCode"
                    and self._is(i + 3, "(")):  # fmt: skip
                return None
            codes, j = [], i + 4
            while j < n and t[j].kind is Kind.NUMBER:
                try:
                    code = int(t[j].value, 0)
                except ValueError:
                    return None
                codes.append(chr(code & 0xFFFF))
                j += 1
                if self._is(j, ","):
                    j += 1
            if not self._is(j, ")"):
                return None
            value, i = "".join(codes), j + 1
        elif tok.kind is Kind.NAME and tok.value in _DECODERS and self._is(i + 1, "("):
            inner = self._sum(i + 2, depth + 1)
            if inner is None or not self._is(inner[1], ")"):
                return None
            value = _decode_call(tok.value, inner[0])
            if value is None:
                return None
            i = inner[1] + 1
        if value is None:
            return None
        # 'a'.concat('b', 'c'), any number of times.
        while self._is(i, ".") and self._name_at(i + 1) == "concat" and self._is(i + 2, "("):
            j, parts = i + 3, [value]
            while not self._is(j, ")"):
                inner = self._sum(j, depth + 1)
                if inner is None:
                    return None
                parts.append(inner[0])
                j = inner[1] + 1 if self._is(inner[1], ",") else inner[1]
                if not (self._is(j, ")") or self._is(j - 1, ",")):
                    return None
            value, i = "".join(parts), j + 1
        return value, i

    def _sum(self, i: int, depth: int) -> tuple[str, int] | None:
        """Literal-only terms joined by ``+`` from ``i``: their value and the index after."""
        first = self._term(i, depth)
        if first is None:
            return None
        parts, i = [first[0]], first[1]
        while self._is(i, "+"):
            nxt = self._term(i + 1, depth)
            if nxt is None:
                return None
            parts.append(nxt[0])
            i = nxt[1]
        return "".join(parts), i

    def _arguments(self, open_paren: int) -> list[int]:
        """Token indices where each argument of the call at ``open_paren`` starts."""
        t = self.t
        starts = [open_paren + 1]
        depth = 0
        for i in range(open_paren, min(len(t), open_paren + 4096)):
            tok = t[i]
            if tok.kind is not Kind.PUNCT:
                continue
            if tok.value in ("(", "[", "{"):
                depth += 1
            elif tok.value in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    break
            elif tok.value == "," and depth == 1:
                starts.append(i + 1)
        return starts

    def _load(self, name: str, at: int) -> None:
        url, complete, _ = self.constant(at)
        self.out.append(Sink(SinkKind.LOAD, name, url, complete))

    def find(self) -> None:
        t = self.t
        out = self.out
        strings = self.strings
        brackets: list[int] = []
        imports = False
        chained_to = -1  # literals up to here belong to a chain already read
        last = len(t) - 1
        NAME, PUNCT, STRING, TEMPLATE = Kind.NAME, Kind.PUNCT, Kind.STRING, Kind.TEMPLATE
        for i, tok in enumerate(t):
            kind = tok.kind
            if kind is PUNCT:
                if tok.value == "[":
                    brackets.append(i)
                elif tok.value == "]" and brackets:
                    self._computed(brackets.pop(), i)
                continue
            if kind is STRING or kind is TEMPLATE:
                if kind is STRING and self._object_key(i):
                    self.literal_keys.append((tok.value, i + 2))
                if i <= chained_to:
                    continue
                if (i < last and t[i + 1].value == "+" and t[i + 1].kind is PUNCT) or (
                    kind is TEMPLATE and tok.open_substitution
                ):
                    value, complete, chained_to = self.constant(i)
                    chained_to -= 1
                    strings.append(
                        "".join(t[k].value for k in range(i, chained_to + 1) if self._literal(k))
                    )
                else:
                    value, complete = tok.value, True
                    strings.append(value)
                if complete and value in _NAMED_STRINGS:
                    self._string(value)
                continue
            if kind is not NAME:
                continue
            name = tok.value
            if self._object_key(i):
                self.literal_keys.append((name, i + 2))
            if name not in _INTERESTING_NAMES:
                continue
            if name in ("import", "export"):
                imports = True
                if name == "import" and self._literal(i + 1):
                    self._load("import", i + 1)  # import "url";
                    continue
            elif name == "from" and imports and self._literal(i + 1):
                self._load("import", i + 1)  # import x from "url"; export * from "url"
                continue
            if name in _JQUERY and self._is(i + 1, "("):
                out.append(Sink(SinkKind.MARKUP, name + "()"))
                if len(self._arguments(i + 1)) > 1:
                    self.copies = True  # $('<img>', {src: u})
                continue
            member = self._is(i - 1, ".") or self._is(i - 1, "?.")
            self._named(name, i, i - 2 if member else -1)
        if self.copies:
            for key, at in self.literal_keys:
                self._property(key, at)
        if self.computed_sets:
            names_a_property = any(s.strip() in _SETTABLE for s in strings)
            for open_bracket, close in self.computed_sets:
                if names_a_property or self._hidden_key(open_bracket, close):
                    self._load("computed assignment", close + 2)

    def _hidden_key(self, open_bracket: int, close: int) -> bool:
        """Whether ``x[key] = v`` may set ``location`` or an element's ``src``: the key is
        computed (a call, a concatenation: ``self[atob('bG9j...')]``), or the object is
        a window or ``location``. A plain name (``counts[host] = n``) is not, unless the
        script holds the name of such a property as a string (checked by the caller)."""
        t = self.t
        owner = self._name_at(open_bracket - 1)
        if owner in _WINDOWS and not self._is(open_bracket - 2, "."):
            return True
        # A key made of names and indices only (i, row.id, hosts[i]) holds a value the
        # script computed from its data; a call, a literal or an operator may build any
        # name.
        return any(
            not (
                t[k].kind in (Kind.NAME, Kind.NUMBER)
                or self._is(k, ".")
                or self._is(k, "[")
                or self._is(k, "]")
            )  # fmt: skip
            for k in range(open_bracket + 1, close)
        )

    def _object_key(self, i: int) -> bool:
        """Whether the name or string at ``i`` is an object literal's key (``{src: v}``)."""
        return self._is(i + 1, ":") and (self._is(i - 1, "{") or self._is(i - 1, ","))

    def _property(self, key: str, at: int) -> None:
        """A property ``key`` set to the value at ``at`` on an object that may be an
        element, ``window`` or ``location`` (copied by Object.assign, $.attr...)."""
        low = key.strip()
        if low in _LOAD_PROPERTIES or low.lower() in _URL_ATTRIBUTES:
            self._load(low, at)
        elif low in _CONSTANT_LOAD_PROPERTIES:
            url, complete, _ = self.constant(at)
            if url is not None:
                self.out.append(Sink(SinkKind.LOAD, low, url, complete))
        elif low.lower().startswith("on"):
            self.out.append(Sink(SinkKind.CODE, low))
        elif low in _MARKUP_NAMES or low in ("html", "text/html"):
            self.out.append(Sink(SinkKind.MARKUP, low))

    def _passed_on(self, i: int, name: str) -> bool:
        """Whether the function named at ``i`` is bound, called through ``call``/``apply``
        or handed on as a value (``f = fetch``, ``.then(fetch)``, ``Reflect.apply(fetch,
        ...)``) rather than called or tested (``if (window.fetch)``, ``typeof fetch``)."""
        if self._is(i + 1, ".") and self._name_at(i + 2) in ("bind", "call", "apply"):
            return True
        t = self.t
        if name in _PROPERTY_LIKE:  # only alone: var o = x.open;
            k = i
            while self._is(k - 1, ".") and self._name_at(k - 2) is not None:
                k -= 2
            return self._is(k - 1, "=") and (self._is(i + 1, ";") or self._is(i + 1, ","))
        nxt = t[i + 1] if i + 1 < len(t) else None
        if not (
            nxt is None or nxt.newline_before
            or (nxt.kind is Kind.PUNCT and nxt.value in (",", ")", "]", ";", "}"))
        ):  # fmt: skip
            return False
        k = i
        while self._is(k - 1, ".") and self._name_at(k - 2) is not None:
            k -= 2
        if k == 0:
            return False
        prev = t[k - 1]
        if prev.kind is Kind.NAME:
            return prev.value == "return"
        if prev.kind is not Kind.PUNCT or prev.value not in ("=", "(", ",", "[", ":", "?"):
            return False
        return not (prev.value == "(" and self._name_at(k - 2) in _CONDITION_KEYWORDS)

    def _inert(self, i: int) -> bool:
        """Whether the value at ``i`` is a number, a boolean, null or undefined."""
        t = self.t
        if not 0 <= i < len(t):
            return True
        tok = t[i]
        if tok.kind is Kind.NUMBER:
            return True
        if tok.kind is Kind.NAME:
            return tok.value in _INERT_VALUES
        return tok.kind is Kind.PUNCT and tok.value in ("!", "-", "~")

    def _destructured(self, i: int) -> bool:
        """Whether the name at ``i`` is a target inside ``[a, b] = ...``/``({a: b} = ...)``."""
        if not (self._is(i - 1, "[") or self._is(i - 1, ",") or self._is(i - 1, ":")
                or self._is(i - 1, "{") or self._is(i - 1, "...")):  # fmt: skip
            return False
        t = self.t
        depth = 0
        for k in range(i + 1, min(len(t), i + 256)):
            if t[k].kind is not Kind.PUNCT:
                continue
            v = t[k].value
            if v in ("(", "[", "{"):
                depth += 1
            elif v in (")", "]", "}"):
                depth -= 1
                if depth < 0:
                    if v == ")":
                        return False
                    if self._is(k + 1, "="):
                        return True
                    if self._is(k + 1, ",") or self._is(k + 1, "]") or self._is(k + 1, "}"):
                        depth = 0  # a nested pattern: look at the enclosing one
                        continue
                    return False
            elif v in (";", "=>") and depth == 0:
                return False
        return False

    def _computed(self, open_bracket: int, close: int) -> None:
        """``x[key]`` followed by a call or an assignment."""
        t = self.t
        if self._is(close + 1, "("):
            key, complete, _ = self.constant(open_bracket + 1)
            number = close == open_bracket + 2 and t[open_bracket + 1].kind is Kind.NUMBER
            if key is not None and complete:
                self._named(key, close, open_bracket - 1)
            elif not number:
                self.out.append(Sink(SinkKind.CODE, "computed call"))
        elif self._is(close + 1, "=") or self._is(close + 1, "+="):
            key, complete, _ = self.constant(open_bracket + 1)
            if key is not None and complete:
                self._named(key, close, open_bracket - 1)
            elif not self._inert(close + 2):
                self.computed_sets.append((open_bracket, close))

    def _string(self, value: str) -> None:
        """A constant string: a sink's name held as data may be called by name."""
        if value in _CODE_NAMES:
            self.out.append(Sink(SinkKind.CODE, value))
        elif value in _MARKUP_NAMES:
            self.out.append(Sink(SinkKind.MARKUP, value))

    def _assigned(self, i: int) -> bool:
        return self._is(i, "=") or self._is(i, "+=")

    def _named(self, name: str, i: int, owner: int) -> None:
        """``name`` at token ``i`` (the name, or a computed key's ``]``); ``owner`` is
        the index of the object it is a member of (-1: a plain identifier)."""
        out = self.out
        # f(x) or a tagged template f`x` (f is called with the template's strings).
        paren = self._is(i + 1, "(")
        call = paren or (i + 1 < len(self.t) and self.t[i + 1].kind is Kind.TEMPLATE)
        arg = i + 2 if paren else i + 1
        if call and name in _COPIERS:
            self.copies = True
        if (
            name in _LOAD_PROPERTIES and not call and not self._assigned(i + 1)
            and not self._is(i + 1, ":")
            and (name == "location" or owner >= 0 or self.with_) and self._destructured(i)
        ):  # fmt: skip
            out.append(Sink(SinkKind.LOAD, name))  # [location] = [u]
            return
        if name == "constructor":
            # [].constructor.constructor("code")(), f.constructor("code"): not a class's
            # constructor() method, which is no member access.
            if owner >= 0 and (call or self._name_at(i + 2) == "constructor"):
                out.append(Sink(SinkKind.CODE, name))
        elif name == "Function":
            if not self._is(i + 1, ".") and self._name_at(i - 1) != "instanceof":
                out.append(Sink(SinkKind.CODE, name))
        elif name in _CODE_NAMES:
            out.append(Sink(SinkKind.CODE, name))
        elif name in _MARKUP_NAMES:
            out.append(Sink(SinkKind.MARKUP, name))
        elif name in _TIMER_NAMES and call:
            if not (paren and self._function_at(i + 2)):
                # A string (or what may be one) runs. "(variable)": a bare name, most
                # often a callback parameter (see htmlscan's data-block loaders).
                bare = (
                    paren
                    and self._name_at(i + 2) is not None
                    and (self._is(i + 3, ",") or self._is(i + 3, ")"))
                    and self._name_at(i + 2) not in self._values  # (var c = p.text)
                )
                out.append(Sink(SinkKind.CODE, name + "(variable)" if bare else name))
        elif name in _LOAD_PROPERTIES and self._assigned(i + 1):
            if name == "location" or owner >= 0 or self.with_:
                self._load(name, i + 2)
        elif name in _HOST_PROPERTIES and self._assigned(i + 1) and (owner >= 0 or self.with_):
            host, complete, _ = self.constant(i + 2)
            url = None if host is None else "//" + host
            out.append(Sink(SinkKind.LOAD, name, url, complete))
        elif name in _ATTRIBUTE_VALUES and owner >= 0 and self._assigned(i + 1):
            # el.attributes.src.value = u, el.getAttributeNode('src').value = u
            back = range(max(0, owner - 8), owner + 1)
            if any(self._name_at(k) in _ATTRIBUTE_READS for k in back):
                self._load(name, i + 2)
        elif name in _CONSTANT_LOAD_PROPERTIES and owner >= 0 and self._assigned(i + 1):
            url, complete, _ = self.constant(i + 2)
            if url is not None:  # obj.data = "http://...": judged; obj.data = state: not
                self.out.append(Sink(SinkKind.LOAD, name, url, complete))
        elif not call:
            if name in _ALIASABLE and self._passed_on(i, name):
                out.append(Sink(SinkKind.LOAD, name))  # called elsewhere, with any URL
            elif name in _TIMER_NAMES and self._passed_on(i, name):
                out.append(Sink(SinkKind.CODE, name))  # t = setTimeout; t("code")
            return
        elif not paren:
            if name in _LOAD_CALLS:
                self._load(name, arg)  # fetch`//host/c`
        elif name in _DESCRIPTORS:
            # Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, 'src').set
            for at in self._arguments(i + 1):
                key, complete, _ = self.constant(at)
                if key is not None and complete and key.strip() in _SETTABLE:
                    out.append(Sink(SinkKind.LOAD, f"{name}({key.strip()})"))
                    break
        elif name in _ATTRIBUTE_NODES:
            out.append(Sink(SinkKind.LOAD, name))  # its value was set elsewhere
        elif name == "set" and self._name_at(owner) == "Reflect":
            args = self._arguments(i + 1)
            if len(args) > 2:
                key, complete, _ = self.constant(args[1])
                if key is None or not complete:
                    self._load("Reflect.set", args[2])
                else:
                    self._property(key, args[2])
        elif name in ("attr", "prop") and self.jquery:
            args = self._arguments(i + 1)
            key, complete, _ = self.constant(args[0])
            if len(args) > 1:
                if key is None or not complete:
                    self._load(name, args[1])
                else:
                    self._property(key, args[1])
        elif name in ("createElement", "createElementNS"):
            args = self._arguments(i + 1)
            at = args[1] if name == "createElementNS" and len(args) > 1 else args[0]
            value, complete, _ = self.constant(at)
            if value is None or not complete or value.strip().lower() in _ACTIVE_ELEMENTS:
                out.append(Sink(SinkKind.CREATE, name))
        elif name in ("setAttribute", "setAttributeNS"):
            self._set_attribute(name, i)
        elif name == "open":
            # window.open(url) or an XMLHttpRequest's open(method, url).
            args = self._arguments(i + 1)
            method, complete, _ = self.constant(args[0])
            if complete and method is not None and method.strip().upper() in _HTTP_METHODS:
                self._load(name, args[1] if len(args) > 1 else len(self.t))
            else:
                self._load(name, args[0])
        elif name in _LOAD_CALLS:
            self._load(name, i + 2)
        elif name in _LOCATION_CALLS and (
            self._name_at(owner) == "location"
            or (owner < 0 and self.with_)
            or len(self._arguments(i + 1)) == 1
            and not self._is(i + 2, ")")
        ):
            # location.replace(u); l.replace(u) with one argument (a string's replace
            # takes two): l may be location.
            self._load("location." + name, i + 2)
        elif name in _JQUERY_LOADS and self._name_at(owner) in _JQUERY:
            self._load(name, i + 2)
        elif name in _JQUERY_MARKUP and self.jquery:
            out.append(Sink(SinkKind.MARKUP, name))

    def _set_attribute(self, name: str, i: int) -> None:
        args = self._arguments(i + 1)
        k = 1 if name == "setAttributeNS" else 0
        if len(args) <= k + 1:
            return
        attr, complete, _ = self.constant(args[k])
        low = attr.strip().lower() if attr is not None and complete else None
        if low is None:
            self._load(name, args[k + 1])  # which attribute is set is decided at run time
        elif low.startswith("on"):
            self.out.append(Sink(SinkKind.CODE, f"{name}({low})"))
        elif low == "srcdoc":
            self.out.append(Sink(SinkKind.MARKUP, f"{name}(srcdoc)"))
        elif low in _URL_ATTRIBUTES:
            self._load(f"{name}({low})", args[k + 1])


# A script that re-types a data block (which then runs when inserted again) or sets a
# created script's text.
_RETYPE = re.compile(r"\.\s*type\s*=(?!=)|(?:setAttribute|removeAttribute)\s*\(\s*[\"'`]type[\"'`]")
_RAW_WRITE = re.compile(r"\bwrite(?:ln)?\s*\(")
_SCRIPT_TEXT = re.compile(
    r"\.\s*(?:text|textContent|innerText|innerHTML)\s*\+?=(?!=)|createTextNode\s*\("
)


def data_loader(text: str, *, limit: int = MAX_TOKENIZED_CHARS) -> str | None:
    """How a script may run the text of another element (a data block), or None.

    An eval-like sink (not a timer given a bare name, most often a callback), a
    ``document.write``, a created element given text, or a re-typed element
    (``p.type = 'text/javascript'``, inserted again, runs). A script that cannot be
    read to its end (a syntax error runs nothing) is no loader; one longer than
    ``limit`` is judged by the shapes of its sinks in the raw text (eval(, write(...).
    """
    if "type" in text and _RETYPE.search(text):
        return "type"
    if "=" in text[:256] and _json_assignments(text):
        return None
    if len(text) > min(limit, MAX_TOKENIZED_CHARS):
        code = _shapes(_CODE_SHAPE, _CODE_WORDS, text)
        if code:
            return code[0].strip("(.[]\"'` ")
        return "write" if "write" in text and _RAW_WRITE.search(text) else None
    traits = analyse(text, limit=limit)
    if traits.unreadable:
        return None
    for sink in traits.sinks:
        if sink.kind is SinkKind.CODE and not sink.name.endswith("(variable)"):
            return sink.name
        if sink.kind is SinkKind.MARKUP and sink.name in ("write", "writeln"):
            return sink.name
        if sink.kind is SinkKind.CREATE and _SCRIPT_TEXT.search(text):
            return sink.name
    return None
