"""The core stays pure: importing it in a fresh interpreter pulls in neither mitmproxy nor aiohttp."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Modules that must exist; every other module in proxy_addons.core is checked too.
REQUIRED = ("canon", "engine", "index", "guard", "model", "errors")
OPTIONAL = ("formats", "htmlscan")
FORBIDDEN = ("mitmproxy", "aiohttp")

_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    import proxy_addons.core as core

    forbidden = {forbidden!r}
    names = list({required!r})
    names += [m.name for m in pkgutil.iter_modules(core.__path__) if m.name not in names]
    seen, report = set(), {{}}
    for name in names:
        importlib.import_module("proxy_addons.core." + name)
        pulled = sorted(
            m for m in sys.modules if m.split(".")[0] in forbidden and m not in seen
        )
        seen.update(pulled)
        report[name] = pulled
    print(json.dumps(report))
    """
)


def _probe() -> dict[str, list[str]]:
    code = _PROBE.format(forbidden=FORBIDDEN, required=REQUIRED)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_core_imports_neither_mitmproxy_nor_aiohttp() -> None:
    import pkgutil

    import proxy_addons.core as core

    report = _probe()
    present = {m.name for m in pkgutil.iter_modules(core.__path__)}
    expected = set(REQUIRED) | (set(OPTIONAL) & present)
    assert expected <= set(report), f"not imported: {expected - set(report)}"
    offenders = {name: pulled for name, pulled in report.items() if pulled}
    assert not offenders, f"core modules pull in {FORBIDDEN}: {offenders}"
