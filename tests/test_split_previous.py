"""Which earlier split pins a split, and how it was found: resolved in the core
(kubevae.split.command.resolve_previous_split, `champion` through the model registry) and
written into the leakage report by kubevae.split itself, once."""

from __future__ import annotations

import json

import pytest
from test_split import assignments, frame, write

from kubevae.split import split as run_split
from kubevae.split.command import resolve_previous_split
from kubevae.split.report import REPORT_JSON, REPORT_MD, PreviousSplit


def split(data, out, **kwargs):
    """kubevae.split.split with a given near-duplicate threshold: no calibration (seconds each),
    which nothing here is about."""
    return run_split(data, out, near_dup_threshold=0.95, **kwargs)


def written(out) -> tuple[dict, str]:
    return json.loads((out / REPORT_JSON).read_text()), (out / REPORT_MD).read_text()


def test_a_fresh_split_says_so_in_its_report(tmp_path):
    write(tmp_path / "v1", frame(60))
    report = split(tmp_path / "v1", tmp_path / "s1", previous_split=resolve_previous_split(""))
    on_disk, text = written(tmp_path / "s1")
    assert on_disk == report.report  # written once, as built
    assert on_disk["previous_split_resolution"] == {
        "requested": "", "resolved": "", "source": "none", "pinned_items": 0,
        "text": "A fresh split (no previous_split)."}
    assert text.endswith("## Previous split\n\nA fresh split (no previous_split).\n")


@pytest.mark.slow  # two splits
def test_a_given_previous_split_reports_how_many_items_it_pinned(tmp_path):
    write(tmp_path / "v1", frame(60))
    split(tmp_path / "v1", tmp_path / "s1")
    write(tmp_path / "v2", frame(75))
    given = str(tmp_path / "s1" / "assignments.csv")
    split(tmp_path / "v2", tmp_path / "s2", previous_split=given)  # a plain path: "given"
    resolution, text = written(tmp_path / "s2")
    resolution = resolution["previous_split_resolution"]
    pinned = int((assignments(tmp_path / "s2")["how"] == "pinned").sum())
    assert pinned == 60
    assert resolution == {"requested": given, "resolved": given, "source": "given", "pinned_items": 60,
                          "text": resolution["text"]}
    assert f"Pinned to `{given}` (given): 60 existing items keep their split" in text


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A real MLflow tracking store and model registry (sqlite) as the process's default."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri)


@pytest.mark.slow  # the registry's sqlite store takes about 15 s to set up; two splits
def test_champion_resolves_through_the_registry(tmp_path, registry):
    from kubevae.registry import SPLIT_TAG

    assert resolve_previous_split(" Champion ", "kubevae-sprites") == PreviousSplit(
        "champion", None, "no champion", "kubevae-sprites")
    recorded = str(tmp_path / "s1" / "assignments.csv")
    run = registry.create_run(registry.create_experiment("e"))
    registry.create_registered_model("kubevae-sprites")
    version = registry.create_model_version("kubevae-sprites", f"runs:/{run.info.run_id}/model",
                                            run.info.run_id, tags={SPLIT_TAG: recorded})
    registry.set_registered_model_alias("kubevae-sprites", "champion", version.version)
    previous = resolve_previous_split("champion", "kubevae-sprites")
    assert previous == PreviousSplit("champion", recorded, f"champion version {version.version}",
                                     "kubevae-sprites")
    # the report of a split pinned to it names the champion's version
    write(tmp_path / "v1", frame(60))
    split(tmp_path / "v1", tmp_path / "s1")
    write(tmp_path / "v2", frame(70))
    split(tmp_path / "v2", tmp_path / "s2", previous_split=previous)
    report, text = written(tmp_path / "s2")
    assert report["previous_split_resolution"]["source"] == f"champion version {version.version}"
    assert report["previous_split"] == recorded
    assert f"Pinned to `{recorded}` (champion version {version.version}): 60 existing items" in text


def test_no_champion_yet_splits_fresh_and_says_why(tmp_path):
    write(tmp_path / "v1", frame(60))
    previous = PreviousSplit("champion", None, "no champion", "kubevae-sprites")
    split(tmp_path / "v1", tmp_path / "s1", previous_split=previous)
    report, text = written(tmp_path / "s1")
    assert report["previous_split"] is None and set(assignments(tmp_path / "s1")["how"]) == {"hash"}
    assert report["previous_split_resolution"]["source"] == "no champion"
    assert "`models:/kubevae-sprites@champion` does not exist yet: this run splits fresh" in text


def test_champion_without_a_model_name_names_the_parameter():
    with pytest.raises(ValueError, match=r"^previous_split=champion: model_name \(--model-name\) must name"):
        resolve_previous_split("champion", "")
