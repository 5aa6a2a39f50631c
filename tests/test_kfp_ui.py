"""What the Kubeflow UI shows of the compiled pipeline: a description on every component input
and output (the run graph's side panel), readable step names in the run graph."""

import pytest
import yaml

from pipelines.pipeline import STEP_NAMES
from pipelines.submit import compile_pipeline


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    return next(yaml.safe_load_all(path.read_text()))


def _components(spec):
    """The executed components (not the condition-branch groups KFP adds)."""
    return {name: c for name, c in spec["components"].items() if "executorLabel" in c}


def test_every_component_input_and_output_is_described(spec):
    components = _components(spec)
    assert len(components) == len(STEP_NAMES)
    missing = []
    for name, component in components.items():
        for side in ("inputDefinitions", "outputDefinitions"):
            for kind in ("parameters", "artifacts"):
                for field, definition in component.get(side, {}).get(kind, {}).items():
                    if not (definition.get("description") or "").strip():
                        missing.append(f"{name}.{side}.{field}")
    assert not missing, missing


def test_descriptions_say_something_specific(spec):
    components = _components(spec)
    gate = components["comp-gate"]
    assert "challenger" in gate["outputDefinitions"]["parameters"]["Output"]["description"]
    assert "test_neg_elbo" in components["comp-evaluate"]["outputDefinitions"]["artifacts"][
        "metrics"]["description"]
    assert "leakage" in components["comp-split"]["outputDefinitions"]["artifacts"][
        "leakage_report"]["description"].lower()


def _tasks(spec):
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_run_graph_shows_readable_step_names(spec):
    executed = set(_components(spec))  # not the condition and exit-handler groups
    tasks = {name: t for name, t in _tasks(spec).items() if t["componentRef"]["name"] in executed}
    assert set(tasks) == set(STEP_NAMES)
    for name, task in tasks.items():
        shown = task["taskInfo"]["name"]
        assert shown == STEP_NAMES[name] and " " in shown, (name, shown)
