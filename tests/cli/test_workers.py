"""The pure parts of ``jectguard run --workers``: the count, each worker's command line."""

from __future__ import annotations

import pytest

from proxy_addons.cli.workers import WorkerContext, parse_workers, worker_argv, worker_role


@pytest.mark.parametrize("text", ["0", "-1", "257", "two", "", "1.5"])
def test_bad_worker_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--workers"):
        parse_workers(text)


def test_auto_is_the_cores_this_process_may_use() -> None:
    import os

    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    assert parse_workers("3") == 3


def test_one_refresher_and_one_admin_api() -> None:
    base = ["python", "jectguard", "run", "--admin-port", "9000"]
    assert worker_argv(base, 0, "refresh") == [*base, "--refresh-role", "refresh"]
    assert worker_argv(base, 1, "refresh") == [
        *base,
        "--refresh-role",
        "watch",
        "--admin-port",
        "0",
    ]
    # Lists named on the command line: every worker loads them, none refreshes.
    assert worker_role("off", 1) == "off"
    assert worker_role("watch", 0) == "watch"


def test_worker_context_comes_from_the_supervisor_only() -> None:
    assert WorkerContext.from_env({}) is None
    ctx = WorkerContext.from_env(
        {"JECTGUARD_WORKER_INDEX": "1", "JECTGUARD_WORKER_COUNT": "2", "JECTGUARD_WORKER_DIR": "/x"}
    )
    assert ctx is not None and (ctx.index, ctx.count, str(ctx.directory)) == (1, 2, "/x")
