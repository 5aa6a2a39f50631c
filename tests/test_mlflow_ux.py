"""What MLflow shows people, against a real SQLite store: datasets as run inputs (name, digest,
source, profile, context), the experiment kind that opens the training view, the source tags,
readable run names, and model versions that describe themselves."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from kubevae import mlflow_datasets, tracking
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data.dataset import write_dataset
from kubevae.ingest import ingest
from kubevae.model import VAE, save_model
from kubevae.registry import CHALLENGER, CHAMPION, Floors, gate
from kubevae.split import split
from kubevae.storage import read_json
from kubevae.version_notes import describe_version


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def one_store_for_the_module(store, monkeypatch):
    """One SQLite store for these tests (creating one takes seconds); each test its own runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ingest("builtin://sprites?n=300&seed=1", root / "raw")
    split(root / "raw", root / "split", fractions=(0.8, 0.1, 0.1))
    return root / "raw", root / "split"


def _inputs(run_id: str) -> dict[str, tuple]:
    run = MlflowClient().get_run(run_id)
    return {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags})
            for i in run.inputs.dataset_inputs}


def test_ingested_dataset_is_a_run_input_with_digest_source_and_card(folders):
    raw, _ = folders
    with tracking.start_run("ingest", tags={"kubevae.step": "ingest"}) as tracker:
        mlflow_datasets.log_ingested(tracker, raw, "builtin://sprites?n=300&seed=1")
    inputs = _inputs(tracker.run_id)
    assert len(inputs) == 1
    dataset, tags = next(iter(inputs.values()))
    info = read_json(raw / "dataset.json")
    assert dataset.digest == info["content_sha256"][:16]
    assert dataset.source_type == "kubevae"
    assert json.loads(dataset.source) == {"uri": "builtin://sprites?n=300&seed=1"}
    profile = json.loads(dataset.profile)
    assert profile["num_items"] == profile["accepted"] == profile["seen"] == 300
    assert profile["quarantined"] == 0 and profile["content_sha256"] == info["content_sha256"]
    assert profile["factors"]["shape"] == 3
    schema = json.loads(dataset.schema)["mlflow_tensorspec"]
    assert "image" in schema["features"] and "factors" in schema["targets"]
    assert tags["mlflow.data.context"] == "ingested"


def test_split_run_logs_its_source_and_every_split_with_the_leakage_verdict(folders):
    raw, split_dir = folders
    with tracking.start_run("split") as tracker:
        mlflow_datasets.log_split_outputs(tracker, split_dir, parent_dir=raw)
    inputs = _inputs(tracker.run_id)
    contexts = {tags["mlflow.data.context"]: ds for ds, tags in inputs.values()}
    assert set(contexts) == {"source", "train", "validation", "test"}
    raw_digest = read_json(raw / "dataset.json")["content_sha256"][:16]
    assert contexts["source"].digest == raw_digest
    counts = {c: json.loads(ds.profile)["num_items"] for c, ds in contexts.items()}
    assert counts["train"] + counts["validation"] + counts["test"] == counts["source"] == 300
    test_profile = json.loads(contexts["test"].profile)
    assert test_profile["leakage_check"] == "PASSED" and test_profile["split"] == "test"
    assert test_profile["parent_content_sha256"].startswith(raw_digest)
    assert json.loads(contexts["test"].source)["uri"].endswith("test")


def test_training_reads_show_the_same_digests_as_the_split_run(folders):
    _, split_dir = folders
    with tracking.start_run("train") as tracker:
        tracker.log_data_inputs(split_dir, ("train", "val"))
    # MLflow keeps one record per (name, digest) in an experiment, with the source it was first
    # logged with (the split run's); a fresh experiment shows the source given here.
    with tracking.start_run("evaluate", experiment="kubevae-s3") as evaluation:
        evaluation.log_data_inputs(split_dir, ("test",), uri="s3://bucket/split")
    train = {tags["mlflow.data.context"]: ds for ds, tags in _inputs(tracker.run_id).values()}
    test = {tags["mlflow.data.context"]: ds for ds, tags in _inputs(evaluation.run_id).values()}
    assert set(train) == {"training", "validation"} and set(test) == {"evaluation"}
    for name, ds in (("train", train["training"]), ("test", test["evaluation"])):
        assert ds.digest == read_json(split_dir / name / "dataset.json")["content_sha256"][:16]
    assert test["evaluation"].source_type == "s3"
    assert json.loads(test["evaluation"].source) == {"uri": "s3://bucket/split/test"}


def test_a_broken_dataset_folder_warns_and_the_step_goes_on(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    with tracking.start_run("ingest") as tracker:
        with pytest.warns(UserWarning, match="content_sha256"):
            mlflow_datasets.log_ingested(tracker, tmp_path, "s3://b/p")
    assert _inputs(tracker.run_id) == {}


def test_experiment_opens_in_the_training_view_and_runs_carry_source_tags():
    parent_tags = {"kubevae.step": "pipeline"}
    with tracking.start_run("pipeline", tags=parent_tags) as parent:
        pass
    experiment = mlflow.get_experiment_by_name("kubevae")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tags = MlflowClient().get_run(parent.run_id).data.tags
    assert tags["mlflow.source.name"] == "kubevae pipeline"
    assert tags["mlflow.source.type"] == "LOCAL"

    with tracking.start_run("trial-3", tags={"kubevae.step": "train"},
                            parent_run_id=parent.run_id) as child:
        child.rename("trial 3 · done")
    run = MlflowClient().get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["mlflow.source.type"] == "JOB"
    assert run.data.tags["mlflow.source.name"] == "kubevae train"
    assert run.info.run_name == "trial 3 · done"


def test_the_enclosing_run_is_kfps_task_run_on_a_cluster_else_the_launchers_parent(monkeypatch):
    # What the train step puts on its TrainRequest as the training job's parent run.
    assert tracking.enclosing_run_id() is None
    monkeypatch.setenv("MLFLOW_PARENT_RUN_ID", "pipeline-run")  # pipelines/local_run.py
    assert tracking.enclosing_run_id() == "pipeline-run"
    monkeypatch.setenv("MLFLOW_RUN_ID", "kfp-task-run")  # KFP's MLflow integration
    assert tracking.enclosing_run_id() == "kfp-task-run"


def test_an_experiment_made_before_gets_the_kind_tag():
    tracking.set_uri_in_process(mlflow, tracking.tracking_uri())
    experiment_id = mlflow.create_experiment(f"older-{np.random.default_rng().integers(1 << 30)}")
    name = mlflow.get_experiment(experiment_id).name
    assert tracking.ensure_experiment(mlflow, name) == experiment_id
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_training_run_names_say_beta_and_latent_size():
    assert tracking.training_run_name("trial-3", 2.0841, 8) == "trial 3 · β=2.08 · z=8"


# -- registered versions ---------------------------------------------------------------------

def _split_with_report(root):
    rng = np.random.default_rng(0)
    images = (rng.random((48, 28, 28, 1)) > 0.7).astype(np.uint8) * 255
    manifest = pd.DataFrame({"item_id": [f"i{i}" for i in range(48)], "sha256": [str(i) for i in range(48)]})
    for name in ("train", "val", "test"):
        write_dataset(root / "split" / name, images, manifest)
    (root / "split" / "leakage_report.json").write_text(json.dumps(
        {"passed": True, "cross_split": {"groups": 0, "exact_duplicates": 0, "near_duplicates": 0}}))
    return root / "split"


def _model_dir(root, name: str, beta: float, seed: int):
    torch.manual_seed(seed)
    model_dir = root / name
    save_model(model_dir, VAE(ModelConfig(image_size=28, latent_dim=3)), ObjectiveConfig(beta=beta),
               metrics={"val_neg_elbo": 501.5, "val_active_units": 2},
               extra={"training": {"world_size": 2, "epochs": 3, "batch_size": 32, "lr": 1e-3, "seed": 0}})
    return model_dir


def test_versions_describe_the_decision_the_data_and_the_run(tmp_path):
    split_dir = _split_with_report(tmp_path)
    with tracking.start_run("pipeline") as pipeline:
        pass
    client = MlflowClient()
    import os
    os.environ["MLFLOW_PARENT_RUN_ID"] = pipeline.run_id
    decisions = []
    for i, margin in enumerate((0.5, 1e9)):  # the first becomes champion, the second cannot
        model_dir = _model_dir(tmp_path, f"model{i}", beta=4.0, seed=i)
        with tracking.start_run("gate", require=True) as tracker:
            # Untrained models: the floors would refuse both (tests/test_gate.py); off here.
            decision = gate(model_dir, split_dir, model_name="ux", margin=margin, tracker=tracker,
                            floors=Floors(min_active_units=0, min_rate_nats=0.0,
                                          min_psnr_gain_db=-100.0))
            text = describe_version(decision, model_dir, split_dir, tracker, training_api="torchrun")
        decisions.append((decision, text))

    (first, first_text), (second, second_text) = decisions
    assert first.promoted and not second.promoted
    assert str(client.get_model_version_by_alias("ux", CHAMPION).version) == first.version
    assert str(client.get_model_version_by_alias("ux", CHALLENGER).version) == second.version

    version = client.get_model_version("ux", second.version)
    assert version.description == second_text
    assert "Kept as `challenger`" in second_text
    assert f"champion (version {first.version})" in second_text
    assert f"{second.candidate:.3f}" in second_text and f"{second.champion:.3f}" in second_text
    assert "1000000000.000" in second_text  # the margin it would have needed
    test_digest = read_json(split_dir / "test" / "dataset.json")["content_sha256"][:16]
    assert f"`{test_digest}`" in second_text
    assert "Split leakage check: PASSED" in second_text
    assert pipeline.run_id in second_text and "torchrun, 2 process(es)" in second_text
    assert "val_neg_elbo" in second_text
    assert version.tags["beta"] == "4" and version.tags["latent_dim"] == "3"
    assert version.tags["objective"] == "beta" and version.tags["training_api"] == "torchrun"
    assert version.tags["test_data_digest"] == test_digest and version.tags["leakage_check"] == "PASSED"
    assert "Promoted to `champion`" in client.get_model_version("ux", first.version).description


def test_a_refused_first_model_is_described_as_not_promoted_with_the_floor(tmp_path):
    split_dir = _split_with_report(tmp_path)
    model_dir = _model_dir(tmp_path, "untrained", beta=4.0, seed=0)
    with tracking.start_run("gate", require=True) as tracker:
        decision = gate(model_dir, split_dir, model_name="ux-refused", margin=0.0, tracker=tracker)
        text = describe_version(decision, model_dir, split_dir, tracker, training_api="torchrun")
    assert not decision.promoted and decision.failed_floors
    assert "Not promoted" in text and "no champion" in text and "None" not in text.split("\n")[0]
    assert decision.failed_floors[0] in text
