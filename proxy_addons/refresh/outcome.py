"""The refresh pipeline's one vocabulary: what a download did, what the refresh did with
the source, and the result the metrics and events count.

Three string sets used to say this in three modules (``new``/``not_modified``/``failed``
in the fetcher, ``updated``/``unchanged``/``held_back``/``failed`` in the refresher,
``success``/``failure``/``held_back`` on ``jectguard_refreshes_total``). They are
StrEnums here, and the only mapping between them is :attr:`Outcome.result`. Being
StrEnums they compare equal to, and serialize as, the strings they replace: status
documents, events and metric labels are unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Fetch(StrEnum):
    """What one download of a feed produced (``FetchResult.status``)."""

    NEW = "new"  # a body that differs from the one in force: validate it next
    NOT_MODIFIED = "not_modified"  # 304, or the same content
    FAILED = "failed"  # no usable answer


class Result(StrEnum):
    """The ``result`` label of ``jectguard_refreshes_total`` and of refresh events."""

    SUCCESS = "success"
    FAILURE = "failure"
    HELD_BACK = "held_back"


class Outcome(StrEnum):
    """What one refresh did with one source (the metrics' result is derived from it)."""

    UPDATED = "updated"  # a new body is in force
    UNCHANGED = "unchanged"  # 304, or the same content as the body in force
    HELD_BACK = "held_back"  # a body came but a check refused it; the last good one stays
    FAILED = "failed"  # no usable answer, or the new body could not be published
    DEFERRED = "deferred"  # not fetched yet (its fetch is not allowed before a later time)

    @property
    def result(self) -> Result | None:
        """What the metrics count for this outcome (None: nothing ran, nothing counted)."""
        return _RESULTS.get(self)


_RESULTS: dict[Outcome, Result] = {
    Outcome.UPDATED: Result.SUCCESS,
    Outcome.UNCHANGED: Result.SUCCESS,
    Outcome.HELD_BACK: Result.HELD_BACK,
    Outcome.FAILED: Result.FAILURE,
}

__all__ = ["Fetch", "Outcome", "Result"]
