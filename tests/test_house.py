"""The house rules a newcomer relies on (docs/architecture.md), checked on the source tree.

Each rule here was broken once: paths to the cache rebuilt in four modules, exit
codes defined per command, an index's raw metadata read by its users, a command
module skipped when it failed to import, long modules with no word on why.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_addons.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "proxy_addons"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
# A module longer than this says at its top why it is one module.
LONG_MODULE_LINES = 600


def _rel(p: Path) -> str:
    return p.relative_to(PACKAGE).as_posix()


def test_the_package_is_packages_only() -> None:
    # The flat modules were moved into packages that name what they are for.
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat == []
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == {"core", "lists", "refresh", "addons", "admin", "telemetry", "cli"}


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_long_modules_say_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text.count("\n") > LONG_MODULE_LINES:
        assert "One module on purpose" in "\n".join(text.splitlines()[:8]), _rel(path)


def test_only_the_layout_names_cache_paths() -> None:
    joined = re.compile(r'/\s*"(feeds|snapshots|campaign|admin-token|ledger\.sqlite3)"')
    offenders = [
        f"{_rel(p)}:{n}"
        for p in SOURCES
        if _rel(p) != "lists/layout.py"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if joined.search(line)
    ]
    assert offenders == []


def test_only_the_index_reads_its_metadata() -> None:
    offenders = [
        f"{_rel(p)}:{n}"
        for p in SOURCES
        if _rel(p) != "core/index.py"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.meta\b(?!data)|getattr\([^)]*[\"']meta[\"']", line)
    ]
    assert offenders == []


def test_one_set_of_exit_codes() -> None:
    defined = re.compile(r"^EXIT_\w+(:\s*\w+)?\s*=\s*\d", re.M)
    offenders = [_rel(p) for p in SOURCES if defined.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_every_command_is_one_module_in_the_table() -> None:
    helpers = {"__init__", "__main__", "common", "workers", "dispatch"}  # run's parts
    modules = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - helpers
    assert {c.module.rsplit(".", 1)[1] for c in COMMANDS} == modules
    for c in COMMANDS:
        mod = importlib.import_module(c.module)
        assert callable(mod.add_arguments) and callable(mod.main), c.module


@pytest.mark.parametrize("package", ["core", "lists", "refresh", "telemetry", "admin"])
def test_only_addons_and_cli_import_mitmproxy(package: str) -> None:
    # The refresher's worker, the commands and the admin app run without mitmproxy (a
    # worker process starts faster, `jectguard strip` stays light, the app is tested alone).
    code = (
        "import importlib, pkgutil, sys\n"
        f"import proxy_addons.{package} as p\n"
        "for m in pkgutil.iter_modules(p.__path__):\n"
        f"    importlib.import_module('proxy_addons.{package}.' + m.name)\n"
        "assert 'mitmproxy' not in sys.modules, 'mitmproxy imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]


LAYERS = ("core", "lists", "refresh", "telemetry", "admin", "addons", "cli")


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_packages_import_only_the_layers_below(path: Path) -> None:
    # core <- lists <- refresh <- telemetry <- admin <- addons <- cli: a reader can take
    # the packages in this order, and a cycle (lists importing refresh) cannot come back.
    own = _rel(path).split("/", 1)[0]
    if own not in LAYERS:
        return
    imported = re.findall(
        r"^\s*(?:from|import) proxy_addons\.(\w+)", path.read_text(encoding="utf-8"), re.M
    )
    above = [p for p in imported if p in LAYERS and LAYERS.index(p) > LAYERS.index(own)]
    assert above == [], f"{_rel(path)} imports {above}"


# Who may turn list text into rules, and rules into an index. Configured lists take one
# path whatever loads them (``build_engine``, a cold start, the refresher's worker):
# lists/files.parse_lists, then core/engine.compile_block. The others parse one thing
# that is no configured list, or a download once (its validation's parse is handed on).
PARSERS = {
    "lists/files.py": "the one loop from configured lists to parsed ones",
    "refresh/validate.py": "a download is parsed once, when validated",
    "cli/inspect.py": "one file, shown, never compiled",
    "lists/campaign.py": "the proxy's own campaign list (its own small index)",
}
COMPILERS = {
    "core/engine.py": "compile_block and allow_index",
    "lists/campaign.py": "the proxy's own campaign list (its own small index)",
}


def _callers(pattern: str) -> set[str]:
    call = re.compile(rf"(?<![\w.]){pattern}\(")
    return {
        _rel(p)
        for p in SOURCES
        for line in p.read_text(encoding="utf-8").splitlines()
        if call.search(line) and not line.lstrip().startswith("def ")
    }


def test_one_way_to_build_an_engine() -> None:
    assert _callers("parse_list") <= set(PARSERS)
    assert _callers("(compile_index|split_exceptions)") <= set(COMPILERS)
    assert "refresh/refresher.py" not in _callers("(parse_list|compile_index|split_exceptions)")


# Each worker module, and what its process does with a page (decode, scan, encode).
WORKERS = {
    "proxy_addons.addons.campaign_worker": (
        "page = gzip.compress(b'<html><script src=//x.test/a.js></script>')\n"
        "view = w.PageView(0.0, 'c', 'http://site.test/', 'text/html', 'gzip', page)\n"
        "w.observe_view(w.DetectorSettings().detector(), view)  # decodes, reads references\n"
    ),
    "proxy_addons.addons.strip_worker": (
        "from proxy_addons.core.htmlscan import Scanner\n"
        "match = type('Match', (), {'list': 'l', 'rule': 'x.test'})()\n"
        "scanner = Scanner(lambda url: match if '//x.test/' in url else None)\n"
        "page = gzip.compress(b'<html><script src=//x.test/a.js></script><p>kept</p>')\n"
        "header = {'content_encoding': 'gzip', 'content_type': 'text/html', 'limit': 2**20,\n"
        "          'page_url': 'http://site.test/', 'comment': True, 'remove': True}\n"
        "reply, (raw,) = w._scan(scanner, header, [page])  # decodes, strips, encodes again\n"
        "assert reply['changed'] and gzip.decompress(raw).endswith(b'<p>kept</p>'), reply\n"
    ),
}


@pytest.mark.parametrize("module", sorted(WORKERS))
def test_worker_processes_do_not_import_mitmproxy(module: str) -> None:
    # A worker is started by `spawn`: it imports its own module (and the package above it)
    # afresh. mitmproxy there costs start-up time and memory for nothing it uses.
    code = (
        f"import gzip, sys\nimport {module} as w\n"
        + WORKERS[module]
        + "assert 'mitmproxy' not in sys.modules, 'mitmproxy imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
