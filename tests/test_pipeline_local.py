"""The whole pipeline end to end with kfp.local on tiny data: the run has no champion, so it
must take the `promoted` branch (deploy + smoke test on a real loopback ModelServer).
kfp.local silently evaluates a condition it cannot resolve as False, so each test asserts which
tasks ran, not only that the run succeeded. The other branch (a second run that cannot beat the
champion, so it keeps it) is the second run of tests/test_retraining.py, which also checks which
tasks ran: one pipeline run fewer in the suite."""

import pytest
import yaml
from conftest import SHORT_RUN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(pipeline_run):
    return pipeline_run["run_dir"]


@pytest.fixture(scope="module")
def first(pipeline_run):
    """The session's shared run (tests/conftest.py), also looked at by tests/test_browser.py."""
    return pipeline_run["summary"]


def test_first_run_promotes_and_serves(first):
    assert first["branch"] == "promoted"
    assert first["gate"] == "promoted"
    assert first["smoke_test"] == "passed"
    assert "V1" in first["smoke_report"] and "V2" in first["smoke_report"]
    assert set(first["best_params"]) >= {"beta", "latent_dim"}
    assert first["best_params"]["latent_dim"] in SHORT_RUN["latent_dims"]
    assert first["test_metrics"]["neg_elbo"] > 0
    for step in ("ingest", "split", "tune", "train", "evaluate", "gate", "deploy", "smoke-test"):
        assert step in first["step_seconds"], step


def test_the_final_run_validates_as_often_as_the_pipeline_says(first):
    import json
    from pathlib import Path

    history = json.loads((Path(first["model_path"]) / "metrics.json").read_text())["history"]
    assert len(history) >= 2
    validated = [r["step"] for r in history if "val_neg_elbo" in r]
    assert validated == [SHORT_RUN["train_steps"]]  # no epoch reached step 16 before the last


def test_first_run_writes_the_inference_service_it_would_apply(first):
    from pathlib import Path

    manifests = list(Path(first["inference_service"]).rglob("*.yaml"))
    assert manifests
    isvc = yaml.safe_load(manifests[0].read_text())
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["name"] == SHORT_RUN["model_name"]


def test_mlflow_has_a_parent_run_with_nested_step_runs(first, run_dir):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["kubevae"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("kubevae.step") == "pipeline"]
    assert parents
    parent_id = parents[-1].info.run_id
    children = {r.data.tags.get("kubevae.step") for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert {"ingest", "split", "tune", "train", "evaluate", "gate"} <= children
    # The trials nest one level further, under the tune step's run (on the TuneRequest).
    [tune] = [r for r in runs if r.data.tags.get("kubevae.step") == "tune"
              and r.data.tags.get("mlflow.parentRunId") == parent_id]
    trials = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == tune.info.run_id]
    assert len(trials) == SHORT_RUN["max_trials"] and all(n.startswith("trial") for n in trials)
