"""The backend is chosen in one place, components/backends/__init__.py (`get_backend`): no other
module imports a backend's module, names a backend's class or branches on a backend's name, and
every component that takes a `backend` parameter hands it to get_backend."""

import ast
from pathlib import Path

import pytest

from components.backends import BACKENDS, get_backend

REPO = Path(__file__).resolve().parents[1]
SEARCHED = ("kubevae", "components", "pipelines", "serving", "benchmarks")
CHOOSER = "components/backends/__init__.py"
BACKEND_MODULES = {spec.split(":")[0] for spec in BACKENDS.values()}
BACKEND_CLASSES = {spec.split(":")[1] for spec in BACKENDS.values()}
# Code that builds with one backend's own builders and chooses nothing, each with the reason.
BUILDS_WITH_ONE_BACKEND = {
    "components/backends/render.py": "renders the Kubernetes backend's templates into manifests/",
}


def _subject(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {s for e in node.elts for s in _strings(e)}
    return set()


def backend_choices(source: str, where: str) -> list[str]:
    """Every place in `source` that picks a backend by itself."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module in BACKEND_MODULES or \
                isinstance(node, ast.Import) and {a.name for a in node.names} & BACKEND_MODULES:
            found.append(f"{line}: imports a backend's module")
        elif _subject(node) in BACKEND_CLASSES and not isinstance(node, ast.ImportFrom):
            found.append(f"{line}: names {_subject(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                any(node.value.startswith(m) for m in BACKEND_MODULES):
            found.append(f"{line}: spells a backend's module {node.value!r}")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any("backend" in _subject(o).lower() for o in operands) and \
                    set().union(*map(_strings, operands)) & set(BACKENDS):
                found.append(f"{line}: branches on the backend's name")
    return found


def test_no_module_but_the_chooser_picks_a_backend():
    found = []
    for folder in SEARCHED:
        for path in sorted((REPO / folder).rglob("*.py")):
            where = str(path.relative_to(REPO))
            inside = where.startswith("components/backends/") and where != CHOOSER
            if where == CHOOSER or inside or where in BUILDS_WITH_ONE_BACKEND:
                continue
            found += backend_choices(path.read_text(), where)
    assert found == []


@pytest.mark.parametrize("source", [
    'if backend == "kubernetes":\n    from components.backends.kubernetes import KubernetesBackend\n',
    'tools = {"local": "components.backends.local:LocalBackend"}\n',
    'def f(args):\n    return "torchrun" if args.backend in ("local",) else "trainer"\n',
    'from components.backends import local\nb = local.LocalBackend()\n',
])
def test_the_check_finds_a_second_chooser(source):
    assert backend_choices(source, "second.py")


def test_every_component_with_a_backend_parameter_hands_it_to_get_backend():
    takers = []
    for path in sorted((REPO / "components").glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef) or "backend" not in {a.arg for a in fn.args.args}:
                continue
            takers.append(fn.name)
            calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call) and _subject(c.func) == "get_backend"]
            assert any(_subject(a) == "backend" for c in calls for a in c.args), \
                f"{path.name}:{fn.name} takes `backend` but does not pass it to get_backend"
    assert {"tune", "train", "deploy", "smoke_test", "cleanup"} <= set(takers)


def test_get_backend_builds_each_backend_by_name_and_refuses_others():
    for name, spec in BACKENDS.items():
        backend = get_backend(name)
        assert (backend.name, type(backend).__name__) == (name, spec.split(":")[1])
    with pytest.raises(ValueError, match=r"backend: expected one of \['kubernetes', 'local'\], got 'docker'"):
        get_backend("docker")


def test_the_local_backend_has_nothing_to_clean_up():
    from components.backends.base import ClusterSettings

    assert get_backend("local").cleanup(ClusterSettings(run_id="r"), "m") == [
        "backend=local: no cluster resources; nothing to clean up"]
