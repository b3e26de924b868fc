"""The compile worker's job and result cross a pipe as JSON and come back as the same values."""

from __future__ import annotations

import json

import pytest

from proxy_addons.core.model import ListSpec, Mode
from proxy_addons.refresh.job import Candidate, CompileJob, CompileResult, ValidationReport


def test_job_round_trips_through_json() -> None:
    job = CompileJob(
        cache_dir="/var/cache/jg",
        specs=(
            ListSpec("feed", url="https://feeds.example/x.txt", mode=Mode.MONITOR, refresh=600),
            ListSpec("allow", path="allow.txt", allow=True),
        ),
        candidates=(Candidate("feed", "/var/cache/jg/feeds/feed.body.1.part", "text/plain", 12),),
        canaries=("example.com",),
        force=True,
        rebuild=True,
    )
    assert CompileJob.from_json(job.to_json()) == job
    assert json.loads(job.to_json())["specs"][0]["mode"] == "monitor"  # plain JSON on the pipe


def test_result_round_trips_through_json() -> None:
    result = CompileResult(
        validations={"feed": ValidationReport(True, entries={"domain": 3}, distinct=3, same=True)},
        snapshot="/var/cache/jg/snapshots/block-1.jgs",
        load_errors={"gone": "not fetched"},
        released=["feed"],
        rules=3,
        seconds=0.25,
        seq=4,
    )
    back = CompileResult.from_json(result.to_json())
    assert back == result and isinstance(back.validations["feed"], ValidationReport)


def test_a_result_with_an_unknown_field_is_refused() -> None:
    # A worker of another version: refused loudly (the refresher reports the rebuild
    # failed and keeps the snapshot in force), never half-read.
    with pytest.raises(TypeError):
        CompileResult.from_json('{"validations": {}, "surprise": 1}')
