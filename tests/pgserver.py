"""A real PostgreSQL server for tests: Debian's package, a temporary cluster, a free port.

``postgres_url()`` is a context manager yielding ``postgresql://...`` of a fresh
cluster that is always stopped and removed. PostgreSQL refuses to run as root,
so as root the cluster runs as ``nobody`` (``runuser``). Missing binaries skip
the test, or fail it where it is required (``CI``, ``JG_REQUIRE_POSTGRES``):
scripts/bootstrap.sh installs Debian's ``postgresql``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port as _free_port

START_TIMEOUT = 30


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI") or os.environ.get("JG_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = os.geteuid() == 0
    prefix = ["runuser", "-u", "nobody", "--"] if root else []
    work = Path(tempfile.mkdtemp(prefix="jg-pg-", dir="/tmp"))
    data = work / "data"
    port = _free_port()
    try:
        if root:
            shutil.chown(work, "nobody")
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "jgtest", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", str(START_TIMEOUT),
             "-l", str(work / "log"), "-o", f"-p {port} -k {work} -c listen_addresses=127.0.0.1",
             "start"],
            check=True, capture_output=True, timeout=START_TIMEOUT + 10,
        )  # fmt: skip
        try:
            yield f"postgresql://jgtest@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                 "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
