"""The proxy's helper processes queue behind it for the CPU, the background one last.

A real ``jectguard run`` starts its HTML scan workers (a page waits for them: nice +10,
so the event loop serving everyone else goes first) and its campaign detector (nothing
waits for it: nice 19, behind the scan workers; at nice 0 it took ~30% of a CPU beside
the scan of a 5 MB page on 2 CPUs, and the page waited, benchmarks/bench_stall.py).
Read from outside, as the kernel schedules them.
"""

from __future__ import annotations

import os
import time

import psutil

from proxy_addons.addons.campaign_worker import NICENESS as CAMPAIGN_NICENESS
from proxy_addons.addons.strip_worker import WORKER_MODULE, WORKER_NICENESS

from .conftest import Proxy

WAIT = 60.0  # the helpers start beside the proxy; imports take seconds on busy cores


def _helpers(proxy: Proxy) -> tuple[list[psutil.Process], list[psutil.Process]]:
    scan, campaign = [], []
    for child in psutil.Process(proxy.proc.pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if WORKER_MODULE in cmd:
            scan.append(child)
        elif "multiprocessing" in cmd and "resource_tracker" not in cmd:
            campaign.append(child)
    return scan, campaign


def test_scan_workers_run_behind_the_proxy_and_the_campaign_detector_behind_them(
    proxy: Proxy,
) -> None:
    deadline = time.monotonic() + WAIT
    scan, campaign = _helpers(proxy)
    while not (scan and campaign) and time.monotonic() < deadline:
        time.sleep(0.2)
        scan, campaign = _helpers(proxy)
    assert scan and len(campaign) == 1, (scan, campaign)
    base = os.getpriority(os.PRIO_PROCESS, proxy.proc.pid)  # the tests may run niced
    assert base == os.getpriority(os.PRIO_PROCESS, 0)  # the proxy itself is untouched
    expected_scan = min(19, base + WORKER_NICENESS)
    # a worker lowers itself as it starts: give it that moment
    while time.monotonic() < deadline and any(
        os.getpriority(os.PRIO_PROCESS, w.pid) != expected_scan for w in scan
    ):
        time.sleep(0.1)
    assert {os.getpriority(os.PRIO_PROCESS, w.pid) for w in scan} == {expected_scan}
    detector = campaign[0].pid
    while time.monotonic() < deadline and os.getpriority(os.PRIO_PROCESS, detector) != 19:
        time.sleep(0.1)
    assert os.getpriority(os.PRIO_PROCESS, detector) == CAMPAIGN_NICENESS == 19
    assert CAMPAIGN_NICENESS > WORKER_NICENESS
