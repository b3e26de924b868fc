"""What the refresher hands its compile worker, and what the worker answers: typed values.

The worker is another process (compiling a million rules must not stall the proxy's
event loop), so both cross a pipe as JSON; :meth:`CompileJob.to_json` and
:meth:`CompileResult.from_json` are the only places that see the JSON. Everything
else reads attributes, so a field added on one side is a field the other side has.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from proxy_addons.core.model import ListSpec, Mode


@dataclass(frozen=True, slots=True)
class Candidate:
    """A downloaded body waiting to be validated (in a temp file beside the body in force)."""

    name: str
    tmp: str
    content_type: str | None = None
    previous_total: int | None = None  # entries of the body in force (the size guard's base)


@dataclass(frozen=True, slots=True)
class CompileJob:
    """Validate these candidates, commit the accepted ones, compile every block list, publish."""

    cache_dir: str
    specs: tuple[ListSpec, ...]
    candidates: tuple[Candidate, ...] = ()
    canaries: tuple[str, ...] = ()
    force: bool = False  # override the size guard
    rebuild: bool = False  # publish even with no candidate (inputs changed, snapshot damaged)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["specs"] = [{**dataclasses.asdict(s), "mode": s.mode.value} for s in self.specs]
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str | bytes) -> CompileJob:
        doc = json.loads(text)
        return cls(
            cache_dir=str(doc["cache_dir"]),
            specs=tuple(ListSpec(**{**d, "mode": Mode(d["mode"])}) for d in doc["specs"]),
            candidates=tuple(Candidate(**c) for c in doc["candidates"]),
            canaries=tuple(doc["canaries"]),
            force=bool(doc["force"]),
            rebuild=bool(doc["rebuild"]),
        )


@dataclass(slots=True)
class ValidationReport:
    """The validation of one candidate, as the refresher records it."""

    accepted: bool
    reason: str | None = None  # why it is held back
    entries: dict[str, int] = field(default_factory=dict)  # by rule kind
    rejected: int = 0
    refused: int = 0
    forced: bool = False
    distinct: int = 0
    same: bool = False  # accepted, and byte for byte the body in force
    error: str | None = None  # accepted, but not published (the snapshot was not written)


@dataclass(slots=True)
class CompileResult:
    """What one rebuild did: validations, the snapshot published (or why not)."""

    validations: dict[str, ValidationReport] = field(default_factory=dict)
    snapshot: str | None = None  # the snapshot published, if one was
    load_errors: dict[str, str] = field(default_factory=dict)  # lists left out, and why
    not_published: str | None = None
    publish_error: str | None = None  # the cache could not be written
    repaired: str | None = None  # the snapshot in force was damaged and republished
    released: list[str] = field(default_factory=list)  # holds a new body ended
    held_out: list[str] = field(default_factory=list)  # lists a rollback keeps out
    rules: int | None = None
    refused: int = 0
    seconds: float | None = None
    error: str | None = None  # the worker itself failed: nothing was taken
    seq: int = 0  # the refresher's rebuild number (the latest result wins)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> CompileResult:
        doc: dict[str, Any] = json.loads(text)
        doc["validations"] = {
            k: ValidationReport(**v) for k, v in doc.get("validations", {}).items()
        }
        return cls(**doc)


__all__ = ["Candidate", "CompileJob", "CompileResult", "ValidationReport"]
