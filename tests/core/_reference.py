"""Reference element lists from selectolax's Lexbor backend, for the differential tests.

Lexbor does not expose namespaces, so an element's namespace is derived from
its ancestors the way tree construction assigns it: a child of an SVG/MathML
element is foreign unless its parent is an HTML integration point (or a MathML
text integration point), where children are HTML except ``svg``/``math`` roots.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from proxy_addons.core.htmlscan import Element

# The elements compared: what the scanner reports (plus base, which it reads).
COMPARED = ("script", "iframe", "object", "embed", "meta", "base")
URL_ATTRS = ("src", "href", "xlink:href", "data", "http-equiv", "content")

HTML, SVG, MATH = "html", "svg", "math"
_SVG_IP = {"foreignobject", "desc", "title"}
_MATH_TEXT_IP = {"mi", "mo", "mn", "ms", "mtext"}

Key = tuple[str, tuple[tuple[str, str], ...], str | None]


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


def key(name: str, attrs: dict[str, Any], text: str | None) -> Key:
    picked = tuple(
        (k, _norm(str(attrs[k] if attrs[k] is not None else ""))) for k in URL_ATTRS if k in attrs
    )
    return (name, picked, None if text is None else _norm(text))


def _child_ns(parent_ns: str, parent: Any, tag: str) -> str:
    ptag = (parent.tag or "").lower() if parent is not None else ""
    if parent_ns == HTML:
        return SVG if tag == "svg" else MATH if tag == "math" else HTML
    if parent_ns == SVG:
        if ptag in _SVG_IP:
            return SVG if tag == "svg" else MATH if tag == "math" else HTML
        return SVG
    # MathML parent
    if ptag in _MATH_TEXT_IP and tag not in ("mglyph", "malignmark"):
        return SVG if tag == "svg" else MATH if tag == "math" else HTML
    if ptag == "annotation-xml":
        enc = (parent.attributes.get("encoding") or "").lower()
        if tag == "svg":
            return SVG
        if enc in ("text/html", "application/xhtml+xml"):
            return MATH if tag == "math" else HTML
    return MATH


def _text(node: Any) -> str:
    parts = []
    child = node.child
    while child is not None:
        if child.is_text_node:
            parts.append(child.text_content or "")
        child = child.next
    return "".join(parts)


def _walk(top: Any, top_ns: str, out: list[Key]) -> None:
    """Pre-order, document order, iterative (documents may nest thousands deep)."""
    stack: list[tuple[Any, str, bool]] = [(top, top_ns, False)]
    while stack:
        node, ns, emit = stack.pop()
        if emit:
            tag = (node.tag or "").lower()
            if tag in COMPARED and (ns == HTML or (tag == "script" and ns == SVG)):
                text = _text(node) if tag == "script" else None
                out.append(key(tag, dict(node.attributes), text))
            if tag == "template" and ns == HTML:
                for frag in reversed(node.template_fragments()):
                    stack.append((frag, HTML, False))
        pending: list[tuple[Any, str, bool]] = []
        child = node.child
        while child is not None:
            if child.is_element_node:
                tag = (child.tag or "").lower()
                parent = node if node.is_element_node else None
                pending.append((child, _child_ns(ns, parent, tag), True))
            child = child.next
        stack.extend(reversed(pending))


def lexbor_elements(doc: str, *, scripting: bool) -> list[Key]:
    tree = LexborHTMLParser(doc, scripting=scripting)
    out: list[Key] = []
    root = tree.root
    if root is not None:
        if root.tag and root.tag.lower() in COMPARED:
            out.append(key(root.tag.lower(), dict(root.attributes), _text(root)))
        _walk(root, HTML, out)
    return out


def reference(doc: str) -> Counter[Key]:
    """Elements either reading builds (scripting on or off), as a max-union multiset."""
    return Counter(lexbor_elements(doc, scripting=True)) | Counter(
        lexbor_elements(doc, scripting=False)
    )


def scanner_keys(
    elements: list[Element], *, include: tuple[str, ...] = ("", "noscript")
) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for el in elements:
        if el.alternative not in include:
            continue
        name = "script" if el.name == "svg:script" else el.name
        if name not in COMPARED:
            continue
        out[key(name, el.attrs, el.text if name == "script" else None)] += 1
    return out
