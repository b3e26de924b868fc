"""The compile worker runs behind every normal process in the CPU queue.

A 1M-rule compile takes ~7 s of CPU; at nice 5 it raised the proxy's p99 latency
3-4x on 2 CPUs (``benchmarks/bench_refresh.py``); at SCHED_IDLE the compile's
seconds are as quiet as before it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")


def test_the_real_compile_worker_lowers_itself_to_sched_idle_before_its_job() -> None:
    # The worker as run_rebuild starts it; its job never comes (stdin stays open), so
    # it waits after lowering its priority, where its policy can be read from outside.
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addons.refresh.refresher"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        policy = os.sched_getscheduler(proc.pid)
        while policy != os.SCHED_IDLE and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            policy = os.sched_getscheduler(proc.pid)
        assert policy == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the parent is untouched
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdin is not None
        proc.stdin.close()


def test_lower_priority_in_a_process_already_idle_leaves_it_runnable() -> None:
    # Called twice (a worker that spawns another): still SCHED_IDLE, no error.
    probe = (
        "import os\n"
        "from proxy_addons.refresh.refresher import lower_priority\n"
        "lower_priority(); lower_priority()\n"
        "print(os.sched_getscheduler(0))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == os.SCHED_IDLE
