"""The whole pipeline end to end with kfp.local on tiny data, twice against one MLflow store:
the first run has no champion, so it must take the `promoted` branch (deploy + smoke test on a
real loopback ModelServer); the second cannot beat the champion by an impossible margin, so it
must take the other branch. kfp.local silently evaluates a condition it cannot resolve as False,
so each test asserts which tasks ran, not only that the run succeeded."""

import pytest
import yaml
from conftest import SHORT_RUN

from pipelines.local_run import run_local

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


def test_first_run_writes_the_inference_service_it_would_apply(first):
    from pathlib import Path

    manifests = list(Path(first["inference_service"]).rglob("*.yaml"))
    assert manifests
    isvc = yaml.safe_load(manifests[0].read_text())
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["name"] == SHORT_RUN["model_name"]


def test_second_run_keeps_the_champion(first, run_dir):
    second = run_local({**SHORT_RUN, "gate_margin": 1e9}, run_dir)
    assert second["branch"] == "not-promoted"
    assert second["gate"] == "challenger"
    assert "smoke_test" not in second
    assert "keep-champion" in second["step_seconds"] and "deploy" not in second["step_seconds"]
    assert "challenger" in second["gate_report"]


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
