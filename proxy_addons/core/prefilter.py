"""Cheap necessary conditions for the scanner's regular expressions.

Python's ``re`` tries a pattern at every position unless the pattern starts with
a literal; a case-insensitive alternation such as a signature list reads a
5 MB script at ~60 ns per character (0.3 s). Every match of most patterns
contains one of a few literal strings, and ``str.__contains__`` finds a literal
at memory speed: if none is in the text, the pattern cannot match, and the
regular expression never runs. When a pattern has no such literal (or one
shorter than ``MIN_LITERAL_CHARS``), the caller runs it as before.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

# The parser behind re.compile (private, without type stubs): its tree tells which
# literals a pattern requires. On a Python without it, every pattern simply runs.
_parser: Any
_c: Any
try:
    _parser = importlib.import_module("re._parser")
    _c = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover
    _parser = _c = None

# Shorter literals are too common to rule anything out.
MIN_LITERAL_CHARS = 3
# Alternatives kept per required set (``(?:a|b|...)``): more is no cheaper than the regex.
_MAX_ALTERNATIVES = 16
# Characters that ``re.IGNORECASE`` matches to an ASCII letter but ``str.lower`` maps
# elsewhere (or to two characters): İ ı ſ K (computed over all of Unicode).
_ASCII_FOLDS = {0x130: "i", 0x131: "i", 0x17F: "s", 0x212A: "k"}
_HAS_ASCII_FOLD = re.compile("[\u0130\u0131\u017f\u212a]")


def fold_ascii_case(text: str) -> str:
    """``text`` lower-cased so that every case-insensitive match of an ASCII literal
    in ``text`` is that literal, lower-cased, in the result."""
    if not text.isascii() and _HAS_ASCII_FOLD.search(text):
        text = text.translate(_ASCII_FOLDS)
    return text.lower()


def required_literals(pattern: str, flags: int = 0) -> frozenset[str] | None:
    """Lower-cased ASCII strings one of which every match of ``pattern`` contains.

    None when no such set is known (the caller must run the pattern). Sound for
    ``re.IGNORECASE`` when searched in ``fold_ascii_case(text)``.
    """
    if _parser is None:
        return None
    try:
        tree = _parser.parse(pattern, flags)
    except (re.error, RecursionError, OverflowError):
        return None
    try:
        found = _sequence(list(tree))
    except RecursionError:
        return None
    if found is None or min(map(len, found)) < MIN_LITERAL_CHARS:
        return None
    return found


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """The set that rules more out: the longer shortest literal, then fewer alternatives."""
    if a is None:
        return b
    if b is None:
        return a
    ka = (min(map(len, a)), -len(a))
    kb = (min(map(len, b)), -len(b))
    return a if ka >= kb else b


def _sequence(items: Iterable[tuple[Any, Any]]) -> frozenset[str] | None:
    """Required literals of a concatenation: its best run of literal characters or
    its best required sub-item."""
    best: frozenset[str] | None = None
    run: list[str] = []

    def flush() -> None:
        nonlocal best
        if run:
            best = _better(best, frozenset({"".join(run)}))
            run.clear()

    for op, av in items:
        if op is _c.LITERAL and isinstance(av, int) and av < 128:
            run.append(chr(av).lower())
            continue
        flush()
        inner: frozenset[str] | None = None
        if op is _c.SUBPATTERN:
            inner = _sequence(av[-1])
        elif op is _c.ATOMIC_GROUP:
            inner = _sequence(av)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            least, _most, sub = av
            if least >= 1:
                inner = _sequence(sub)
        elif op is _c.BRANCH:
            alternatives: set[str] = set()
            for branch in av[1]:
                got = _sequence(branch)
                if got is None:
                    alternatives.clear()
                    break
                alternatives |= got
            if alternatives and len(alternatives) <= _MAX_ALTERNATIVES:
                inner = frozenset(alternatives)
        # Anything else (classes, assertions, anchors, backreferences) requires no
        # literal; it only ends the current run.
        if inner is not None and min(map(len, inner)) >= 1:
            best = _better(best, inner)
    flush()
    return best
