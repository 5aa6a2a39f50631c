"""Scheduled retraining, simulated: two local pipeline runs in a row (kfp.local) against one
MLflow store and one object store (moto's S3 server on loopback), with 20% more images in the
bucket before the second run. Both runs pass `previous_split=champion`, the default of
`kubevae pipeline schedule`:
- the first finds no champion, splits fresh and says so in the leakage report; its gate
  promotes the model and tags the version with the URI of the split's assignments.csv;
- the second resolves `champion` to that URI and pins every old item to its split (none moves);
  its gate scores candidate and champion on the same test items, every old test item among
  them; with an unreachable margin it keeps the champion, and the registry ends that way.
Tiny data and budgets: the point is the wiring between runs, not the model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_s3_ingest import encoded, images, new_bucket, s3_env, upload, use_env

from pipelines.local_run import run_local

MODEL = "kubevae-retrain-sim"
FIRST, ADDED = 100, 20  # 20% more before the second run
MONDAYS = ("2026-12-07T03:00:00Z", "2026-12-14T03:00:00Z")  # what KFP's placeholder resolves to
# The gate's floors off: a 20-step model encodes nothing (the floors refuse it, as
# tests/test_gate.py shows), and this test is about the split the runs share, not the model.
NO_FLOORS = {"gate_min_active_units": 0, "gate_min_rate": 0.0, "gate_min_psnr_gain": -100.0}
BUDGET = {"backend": "local", "previous_split": "champion", "latent_dims": [2], "max_trials": 1,
          "parallel_trials": 1, "trial_steps": 10, "train_steps": 20, "batch_size": 32, "workers": 1,
          "iwae_k": 2, "metric_protocol": "fast", "model_name": MODEL, **NO_FLOORS}

pytestmark = pytest.mark.slow


def objects(start: int, stop: int) -> dict[str, bytes]:
    pixels = images(stop, seed=11)[start:stop]
    return {f"incoming/img-{i:04d}.png": encoded(p, "x.png") for i, p in zip(range(start, stop), pixels, strict=True)}


def assignments(summary: dict) -> pd.DataFrame:
    return pd.read_csv(Path(summary["run_root"]) / "split" / "splits" / "assignments.csv", dtype=str)


def leakage(summary: dict) -> tuple[dict, str]:
    folder = Path(summary["run_root"]) / "split" / "splits"
    return json.loads((folder / "leakage_report.json").read_text()), (folder / "leakage_report.md").read_text()


@pytest.fixture(scope="module")
def runs(moto_endpoint, tmp_path_factory):
    bucket = new_bucket()
    upload(moto_endpoint, bucket, objects(0, FIRST))
    run_dir = tmp_path_factory.mktemp("retraining")
    with pytest.MonkeyPatch.context() as env:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            env.delenv(var, raising=False)
        use_env(env, s3_env(moto_endpoint))
        arguments = {**BUDGET, "source_uri": f"s3://{bucket}/incoming"}
        first = run_local(dict(arguments), run_dir, schedule_time=MONDAYS[0])
        upload(moto_endpoint, bucket, objects(FIRST, FIRST + ADDED))
        second = run_local({**arguments, "gate_margin": 1e9}, run_dir, schedule_time=MONDAYS[1])
    return first, second, run_dir


def test_the_first_run_has_no_champion_and_splits_fresh(runs):
    first, _, _ = runs
    report, text = leakage(first)
    assert report["previous_split_resolution"]["source"] == "no champion"
    assert report["previous_split_resolution"]["resolved"] == ""
    assert "does not exist yet: this run splits fresh" in text
    rows = assignments(first)
    assert len(rows) == FIRST and set(rows["how"]) == {"hash"}
    assert first["gate"] == "promoted" and first["branch"] == "promoted"
    assert "No champion yet: the candidate was scored on" in first["gate_report"]


def test_the_second_run_pins_the_champions_split_and_no_old_item_moves(runs):
    first, second, _ = runs
    report, text = leakage(second)
    recorded = str(Path(first["run_root"]) / "split" / "splits" / "assignments.csv")
    resolution = report["previous_split_resolution"]
    assert resolution["source"] == "champion version 1" and resolution["resolved"] == recorded
    assert resolution["pinned_items"] == FIRST and f"Pinned to `{recorded}`" in text
    old = assignments(first).set_index("item_id")["split"]
    new = assignments(second).set_index("item_id")
    assert len(new) == FIRST + ADDED  # every new image placed, nothing excluded
    assert (new.loc[old.index, "split"] == old).all()
    assert set(new.loc[old.index, "how"]) == {"pinned"}
    assert set(new.drop(old.index)["how"]) <= {"hash", "inherited"}


def test_the_gate_compares_on_the_frozen_test_items(runs):
    first, second, _ = runs
    old_test = set(assignments(first).query("split == 'test'")["item_id"])
    scored = Path(second["run_root"]) / "split" / "splits" / "test" / "manifest.parquet"
    assert old_test and old_test <= set(pd.read_parquet(scored)["item_id"])
    n_test = int((assignments(second)["split"] == "test").sum())
    assert (f"Candidate and champion were scored on the same {n_test} test items, "
            f"{len(old_test)} of them frozen") in second["gate_report"]


def test_the_registry_ends_as_the_gate_decided(runs):
    first, second, run_dir = runs
    from mlflow.tracking import MlflowClient

    from kubevae.registry import SPLIT_TAG, champion_split

    assert second["gate"] == "challenger" and second["branch"] == "not-promoted"
    # The not-promoted branch ran, and only it: keep-champion, no deploy, no smoke test.
    assert "keep-champion" in second["step_seconds"] and "deploy" not in second["step_seconds"]
    assert "smoke_test" not in second and "challenger" in second["gate_report"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert (str(champion.version), str(challenger.version)) == ("1", "2")  # ints in mlflow 3
    for version, summary in ((champion, first), (challenger, second)):
        assert version.tags[SPLIT_TAG] == str(Path(summary["run_root"]) / "split" / "splits" / "assignments.csv")
        assert float(version.tags["test_neg_elbo"]) > 0
    assert challenger.tags["kubevae.test_items_frozen"] == str(
        int((assignments(first)["split"] == "test").sum()))
    assert champion_split(MODEL, client) == (champion.tags[SPLIT_TAG], "1")
    assert (champion.tags["kubevae.schedule_time"], challenger.tags["kubevae.schedule_time"]) == MONDAYS


def test_each_run_records_its_schedule_time_in_mlflow_and_the_dataset_card(runs):
    from mlflow.tracking import MlflowClient

    first, second, run_dir = runs
    for summary, monday in ((first, MONDAYS[0]), (second, MONDAYS[1])):
        card = json.loads((Path(summary["run_root"]) / "ingest" / "dataset" / "card.json").read_text())
        assert card["card"]["schedule_time"] == monday
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kubevae")
    runs_by_step = {}
    for run in client.search_runs([experiment.experiment_id]):
        runs_by_step.setdefault(run.data.tags.get("kubevae.step"), []).append(
            run.data.tags.get("kubevae.schedule_time"))
    assert sorted(runs_by_step["ingest"]) == sorted(MONDAYS)
    assert sorted(runs_by_step["gate"]) == sorted(MONDAYS)


def test_a_champion_without_a_recorded_split_is_a_clear_error(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from kubevae.registry import champion_split

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert champion_split("nothing-yet", client) is None
    client.create_registered_model("old")
    assert champion_split("old", client) is None  # a model but no champion alias
    with mlflow.start_run() as run:
        pass
    version = client.create_model_version("old", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("old", "champion", version.version)
    with pytest.raises(ValueError, match="has no kubevae.split_assignments tag"):
        champion_split("old", client)


def test_the_schedule_time_reaches_the_dataset_card(tmp_path):
    from kubevae import tracking
    from kubevae.ingest import ingest

    assert tracking.schedule_time("{{$.pipeline_job_schedule_time_utc}}") == ""  # kfp.local
    assert tracking.schedule_time(" 2026-12-07T03:00:00Z ") == "2026-12-07T03:00:00Z"
    ingest("builtin://sprites?n=20&seed=1", tmp_path / "data", schedule_time="2026-12-07T03:00:00Z")
    card = json.loads((tmp_path / "data" / "card.json").read_text())["card"]
    assert card["schedule_time"] == "2026-12-07T03:00:00Z"
    assert "| schedule_time | 2026-12-07T03:00:00Z |" in (tmp_path / "data" / "card.md").read_text()


def test_the_compiled_pipeline_passes_kfps_schedule_time_to_ingest_and_gate(tmp_path):
    from pipelines.submit import compile_pipeline

    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    # The steps sit in the root DAG or in a sub-DAG (the exit handler's).
    dags = [spec["root"]] + list(spec["components"].values())
    tasks = {name: task for dag in dags for name, task in dag.get("dag", {}).get("tasks", {}).items()}
    for name in ("ingest", "gate"):
        value = tasks[name]["inputs"]["parameters"]["schedule_time"]
        assert value == {"runtimeValue": {"constant": "{{$.pipeline_job_schedule_time_utc}}"}}
    split = tasks["split"]["inputs"]["parameters"]
    assert split["model_name"]["componentInputParameter"].endswith("model_name")
    assert tasks["split"]["cachingOptions"] == {}  # `champion` resolves anew on every run
