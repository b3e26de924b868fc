"""What a proxy process knows about the snapshot it serves: one record, read by every surface.

The follower (:class:`proxy_addons.refresh.refresher.Follower`) builds a
:class:`SnapshotHealth` after each poll; ``/readyz``, ``/api/status`` and
``/metrics`` render it, and each fault it meets is one :class:`SnapshotEvent`
in the event stream. No I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class SnapshotState(enum.StrEnum):
    CURRENT = "current"  # serving what the pointer names; the published file is intact
    STALE = "stale"  # the pointer names a snapshot this process could not load yet (retrying)
    DAMAGED = "damaged"  # the published file served changed or vanished; its verified copy serves


class SnapshotFault(enum.StrEnum):
    LOAD_FAILED = "load_failed"  # the snapshot the pointer names would not load
    CHANGED = "changed"  # the published file served no longer matches its checksum
    MISSING = "missing"  # the published file served was removed
    REPAIRED = "repaired"  # the refresher wrote the verified bytes back over a damaged file


@dataclass(frozen=True, slots=True)
class SnapshotEvent:
    """One fault (or repair), for the event stream."""

    fault: SnapshotFault
    snapshot: str | None  # the file concerned
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        """The fields of its ``error`` event."""
        return {
            "source": "snapshot",
            "fault": self.fault.value,
            "snapshot": self.snapshot,
            "reason": self.detail,
        }


@dataclass(frozen=True, slots=True)
class SnapshotHealth:
    """Which snapshot is served, which one the pointer names, and what is wrong, since when."""

    state: SnapshotState = SnapshotState.CURRENT
    serving: str | None = None  # file name of the snapshot served (None: lists compiled in memory)
    pointer: str | None = None  # file name the pointer names
    reason: str | None = None  # why not current
    since: float | None = None  # when the oldest problem in force began
    behind_since: float | None = None  # when the pointer first named a snapshot not served
    attempts: int = 0  # loads of the pointer's snapshot tried and failed
    next_retry: float | None = None
    damage: str | None = None  # what is wrong with the published file served
    faults: tuple[tuple[SnapshotFault, int], ...] = ()  # counts since start

    def behind_seconds(self, now: float) -> float:
        """How long the pointer has named a snapshot this process does not serve (0: in sync)."""
        return max(0.0, now - self.behind_since) if self.behind_since is not None else 0.0

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "state": self.state.value,
            "serving": self.serving,
            "pointer": self.pointer,
            "reason": self.reason,
            "since": self.since,
            "behind_seconds": round(self.behind_seconds(now), 1),
            "attempts": self.attempts,
            "next_retry_in": round(max(0.0, self.next_retry - now), 1)
            if self.next_retry is not None
            else None,
            "damage": self.damage,
            "faults": {f.value: n for f, n in self.faults},
        }


IN_SYNC: Final = SnapshotHealth()

__all__ = ["IN_SYNC", "SnapshotEvent", "SnapshotFault", "SnapshotHealth", "SnapshotState"]
