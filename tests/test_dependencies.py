"""pyproject.toml declares what the code imports: every third-party module the package imports
comes from a distribution in [project].dependencies, every one tests/ and benchmarks/ import
from those or the `test` extra, and nothing is declared that nothing imports (but for the
packages named below, which are used without an import)."""

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kubevae", "components", "pipelines", "serving")
# Declared although never imported: what they are for.
USED_WITHOUT_IMPORT = {
    "pyarrow": "pandas' parquet engine (manifest.parquet)",
    "flask-wtf": "MLflow's basic-auth app, started by tests/test_mlflow_auth.py",
    "pytest-xdist": "a pytest plugin: make test runs the suite with -n 2 --dist loadfile",
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return ({_name(r) for r in project["dependencies"]},
            {_name(r) for r in project["optional-dependencies"]["test"]})


def _imports(*folders: str) -> dict[str, set[str]]:
    """{top-level module: files} of the absolute imports that are neither stdlib nor ours."""
    local = set(PACKAGES) | {p.stem for p in (REPO / "tests").glob("*.py")} | {"benchmarks"}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - local - set(sys.stdlib_module_names):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@cache
def _distributions(module: str) -> set[str]:
    return {_name(d) for d in _installed().get(module, [])}


@cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's RECORD: once


def test_every_imported_package_is_declared():
    runtime, test = _declared()
    undeclared = {m: sorted(files)[:3] for m, files in _imports(*PACKAGES).items()
                  if not _distributions(m) & runtime}
    assert undeclared == {}, "imported by the package but not in [project].dependencies"
    undeclared = {m: sorted(files)[:3] for m, files in _imports("tests", "benchmarks").items()
                  if not _distributions(m) & (runtime | test)}
    assert undeclared == {}, "imported by tests/benchmarks but in neither dependencies nor the test extra"


def test_every_declared_package_is_imported_where_it_is_declared():
    runtime, test = _declared()
    by_package = {d for m in _imports(*PACKAGES) for d in _distributions(m)}
    by_tests = {d for m in _imports("tests", "benchmarks") for d in _distributions(m)}
    assert runtime - by_package - set(USED_WITHOUT_IMPORT) == set(), \
        "declared as a dependency but the package never imports it (a test-only one belongs in the test extra)"
    assert test - by_tests - by_package - set(USED_WITHOUT_IMPORT) == set()
