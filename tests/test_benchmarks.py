"""The benchmarks keep working as the package changes.

A benchmark is run by hand, rarely, so an import it makes of a renamed or moved
name breaks silently (``bench_stall.py --scan-only`` imported a function the
restructure had renamed). Every ``from proxy_addons... import ...`` in every
benchmark, including those inside the scripts a benchmark hands to a proxy as a
string, must name something that exists.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _imports(tree: ast.AST, where: str) -> list[tuple[str, str, str]]:
    """(module, name or "", where) for each import of proxy_addons in ``tree``, and in the
    string constants of it that parse as Python and import proxy_addons themselves."""
    found: list[tuple[str, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proxy_addons"):
            assert node.module is not None
            found += [(node.module, a.name, f"{where}:{node.lineno}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name, "", f"{where}:{node.lineno}")
                for a in node.names
                if a.name.startswith("proxy_addons")
            ]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "import" in node.value
            and "proxy_addons" in node.value
        ):
            try:
                inner = ast.parse(node.value)
            except SyntaxError:
                continue
            found += _imports(inner, f"{where}:{node.lineno} (script)")
    return found


def _all_imports() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        out += _imports(ast.parse(path.read_text(), filename=str(path)), path.name)
    return out


def test_the_benchmarks_import_proxy_addons() -> None:
    # The check below must have something to check: most benchmarks use the package.
    assert len({w.split(":")[0] for _, _, w in _all_imports()}) >= 8


@pytest.mark.parametrize(("module", "name", "where"), _all_imports())
def test_every_name_a_benchmark_imports_exists(module: str, name: str, where: str) -> None:
    mod = importlib.import_module(module)
    if name and name != "*":
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
            f"{where}: {module} has no {name}"
        )
