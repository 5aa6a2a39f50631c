"""The training API is chosen in one place, components/k8s/training_apis.py (`training_api`):
the builders, the launcher, Katib's trial template, the exit handler's cleanup and the preflight's
CRD rows read its table; no other module branches on an API's name."""

from __future__ import annotations

import ast
from pathlib import Path

from components.k8s.training_apis import TRAINING_APIS

REPO = Path(__file__).resolve().parents[1]
TABLE = "components/k8s/training_apis.py"
# Checks of one API's own install, each with the reason it names that API.
ABOUT_ONE_API = {
    "components/k8s/preflight.py": "the Trainer's TrainJob fields and its ClusterTrainingRuntime",
}


def name_branches(source: str, where: str) -> list[str]:
    """Every comparison in `source` with a training API's name."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
            if names & set(TRAINING_APIS):
                found.append(f"{where}:{node.lineno}: compares with {sorted(names & set(TRAINING_APIS))}")
    return found


def test_no_module_but_the_table_branches_on_the_training_apis_name():
    found = []
    for path in sorted((REPO / "components").rglob("*.py")):
        where = str(path.relative_to(REPO))
        if where not in (TABLE, *ABOUT_ONE_API):
            found += name_branches(path.read_text(), where)
    assert found == []


def test_the_check_finds_a_branch_on_the_name():
    source = 'def launcher(api):\n    return "a" if api.name == "trainer" else "b"\n'
    assert name_branches(source, "x.py") == ["x.py:2: compares with ['trainer']"]
    assert name_branches('ok = key in ("trainer", "pytorchjob")\n', "y.py") != []
