"""The record of what is in force: one typed document, written with each snapshot.

The refresher writes it beside a snapshot (``<snapshot>.info.json``) and into the
store's ``current`` pointer; ``jectguard rollback`` rewrites the pointer with the
target's record plus the sources it holds. ``jectguard lists``, the admin API
(``/api/status``, ``/api/lists``) and the dashboard read only this record for
"what is in force", so they cannot disagree. Pure: JSON in, JSON out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ListRecord:
    """One block list as compiled into the snapshot."""

    name: str
    rules: int  # distinct rules taken from this list
    digest: str | None = None  # sha256 of the body (or file) compiled; None: unknown (old record)
    history: tuple[
        int, ...
    ] = ()  # distinct counts accepted, oldest first: the size guard's baseline
    fetched: bool = False  # a URL source (its body is archived for rollback)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "digest": self.digest,
            "history": list(self.history),
            "fetched": self.fetched,
        }

    @classmethod
    def from_json(cls, name: str, doc: Any) -> ListRecord:
        if isinstance(doc, int | float) and not isinstance(
            doc, bool
        ):  # records before 0.x: a count
            return cls(name, int(doc), history=(int(doc),))
        if not isinstance(doc, Mapping):
            raise ValueError(f"list {name!r}: not an object")
        history = tuple(int(n) for n in doc.get("history") or () if _count(n))
        digest = doc.get("digest")
        return cls(
            name,
            int(doc.get("rules", 0)),
            digest if isinstance(digest, str) else None,
            history,
            bool(doc.get("fetched", False)),
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """A source a rollback holds: bodies it refuses until the feed publishes another one."""

    name: str
    refused: tuple[str, ...]  # body digests rolled back (the bad ones)
    reason: str
    since: float
    restored: str | None = None  # digest of the body put back in force

    def as_dict(self) -> dict[str, Any]:
        return {
            "refused": list(self.refused),
            "reason": self.reason,
            "since": self.since,
            "restored": self.restored,
        }

    @classmethod
    def from_json(cls, name: str, doc: Any) -> Hold:
        if not isinstance(doc, Mapping):
            raise ValueError(f"hold {name!r}: not an object")
        restored = doc.get("restored")
        return cls(
            name,
            tuple(str(d) for d in doc.get("refused") or ()),
            str(doc.get("reason") or "rolled back"),
            float(doc.get("since") or 0.0),
            restored if isinstance(restored, str) else None,
        )


@dataclass(frozen=True, slots=True)
class InForce:
    """What the snapshot in force was built from, and what is held back from it."""

    snapshot: str  # file name in the store
    published_at: float | None = None
    content: str | None = None  # digest of everything compiled: an equal one publishes nothing
    fingerprint: str | None = None
    inputs: dict[str, list[int] | None] = field(default_factory=dict)
    rules: int | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    refused_count: int = 0
    compile_seconds: float | None = None
    lists: dict[str, ListRecord] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    rolled_back_from: str | None = None
    rolled_back_at: float | None = None
    # Why this snapshot replaced the previous current file though nothing changed.
    repaired: str | None = None

    def with_holds(self, holds: Iterable[Hold]) -> InForce:
        return replace(self, holds={h.name: h for h in holds})

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "published_at": self.published_at,
            "content": self.content,
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "rules": self.rules,
            "by_kind": self.by_kind,
            "refused_count": self.refused_count,
            "compile_seconds": self.compile_seconds,
            "lists": {n: r.as_dict() for n, r in self.lists.items()},
            "holds": {n: h.as_dict() for n, h in self.holds.items()},
            "rolled_back_from": self.rolled_back_from,
            "rolled_back_at": self.rolled_back_at,
            "repaired": self.repaired,
        }

    @classmethod
    def from_json(cls, doc: Any, snapshot: str | None = None) -> InForce:
        """Read a record (ValueError if it is not one); ``snapshot`` names it when the doc does not."""
        if not isinstance(doc, Mapping):
            raise ValueError("not an object")
        name = doc.get("snapshot", snapshot)
        if not isinstance(name, str):
            raise ValueError("no snapshot name")
        lists = doc.get("lists") or {}
        holds = doc.get("holds") or {}
        if not isinstance(lists, Mapping) or not isinstance(holds, Mapping):
            raise ValueError("lists and holds must be objects")
        inputs = doc.get("inputs") or {}
        by_kind = doc.get("by_kind") or {}
        return cls(
            snapshot=name,
            published_at=_float(doc.get("published_at")),
            content=doc.get("content") if isinstance(doc.get("content"), str) else None,
            fingerprint=doc.get("fingerprint") if isinstance(doc.get("fingerprint"), str) else None,
            inputs=dict(inputs) if isinstance(inputs, Mapping) else {},
            rules=int(doc["rules"]) if _count(doc.get("rules")) else None,
            by_kind={str(k): int(v) for k, v in by_kind.items()}
            if isinstance(by_kind, Mapping)
            else {},
            refused_count=int(doc.get("refused_count") or 0),
            compile_seconds=_float(doc.get("compile_seconds")),
            lists={str(n): ListRecord.from_json(str(n), d) for n, d in lists.items()},
            holds={str(n): Hold.from_json(str(n), d) for n, d in holds.items()},
            rolled_back_from=_str(doc.get("rolled_back_from")),
            rolled_back_at=_float(doc.get("rolled_back_at")),
            repaired=_str(doc.get("repaired")),
        )


def _count(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _float(v: Any) -> float | None:
    return float(v) if _count(v) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None
