"""The champion/challenger gate over the MLflow Model Registry.

Protocol: the candidate and the current champion (registered model alias `champion`) are
scored the same way on the same frozen test split: mean negative ELBO at beta = 1 in nats per
image (lower is better), with the same seed. The candidate is registered as a new version. It
becomes `champion` when there is no champion, or when it beats the champion by at least
`margin` nats per image; otherwise it is marked `challenger` and the champion stays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubevae import tracking
from kubevae.data.dataset import load_splits
from kubevae.evaluation.bounds import evaluate_images
from kubevae.model import load_model

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC = "test_neg_elbo"


@dataclass
class GateDecision:
    decision: str  # "promoted" or "challenger"
    model_name: str
    version: str
    candidate: float
    champion: float | None
    champion_version: str | None
    margin: float
    metric: str = METRIC

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        champion = "none" if self.champion is None else \
            f"{self.champion:.3f} (version {self.champion_version})"
        verdict = ("**promoted**: the candidate is the new `champion`" if self.promoted else
                   "**not promoted**: the candidate is marked `challenger`; the champion stays")
        return "\n".join([
            f"# Gate: {self.model_name}", "", verdict, "",
            "| | value |", "|---|---|",
            f"| metric (lower is better) | {self.metric}, nats per image |",
            f"| candidate (version {self.version}) | {self.candidate:.3f} |",
            f"| champion | {champion} |",
            f"| required improvement (margin) | {self.margin:.3f} |", ""])


def score(model_dir: str | Path, test_images, seed: int = 0) -> float:
    return float(evaluate_images(load_model(model_dir), test_images, seed=seed)["neg_elbo"])


def test_images(data_dir: str | Path):
    splits = load_splits(data_dir)
    test = splits.get("test")
    if test is None or len(test) == 0:
        raise ValueError(f"{data_dir}: the gate needs a non-empty test split (test/)")
    return test.images


def champion_model_dir(client: MlflowClient, model_name: str) -> tuple[Path, str] | None:
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}@{CHAMPION}"))
    # The pyfunc keeps the model folder (safetensors + config.json) among its artifacts.
    folders = [p.parent for p in (local / "artifacts").rglob("model.safetensors")]
    if len(folders) != 1:
        raise FileNotFoundError(f"models:/{model_name}@{CHAMPION}: expected one model folder "
                                f"among its artifacts, found {len(folders)}")
    return folders[0], version.version


def gate(model_dir: str | Path, data_dir: str | Path, *, model_name: str, margin: float,
         tracker: tracking.Tracker, seed: int = 0) -> GateDecision:
    """Register the candidate and decide whether it replaces the champion (see module doc)."""
    if not tracker.enabled:
        raise tracking.TrackingUnavailable("the gate needs the MLflow Model Registry, but "
                                           "tracking is off or unreachable")
    if margin < 0:
        raise ValueError(f"margin: expected a number of nats >= 0, got {margin}")
    from kubevae import mlflow_model
    from kubevae.model import read_model_config

    client = MlflowClient()
    images = test_images(data_dir)
    candidate = score(model_dir, images, seed)
    found = champion_model_dir(client, model_name)
    champion = score(found[0], images, seed) if found else None

    config, _, _ = read_model_config(model_dir)
    info = mlflow_model.log_pyfunc(model_dir, (config.image_size, config.image_size, config.channels),
                                   config.latent_dim)
    version = mlflow.register_model(info.model_uri, model_name).version
    promoted = champion is None or candidate <= champion - margin
    client.set_registered_model_alias(model_name, CHAMPION if promoted else CHALLENGER, version)
    client.set_model_version_tag(model_name, version, METRIC, f"{candidate:.6f}")
    decision = GateDecision("promoted" if promoted else "challenger", model_name, str(version),
                            candidate, champion, str(found[1]) if found else None, margin)
    tracker.log_metrics({"gate_candidate": candidate, "gate_promoted": float(promoted),
                         **({"gate_champion": champion} if champion is not None else {})})
    tracker.log_dict(decision.as_dict(), "gate.json")
    return decision


# ---- which split a registered version was trained and tested on (scheduled retraining) -------

SPLIT_TAG = "kubevae.split_assignments"      # URI of the assignments.csv of the model's split
SCHEDULE_TIME_TAG = "kubevae.schedule_time"  # the recurring run's schedule time (UTC), if any
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no model / no such alias


def record_split(model_name: str, version: str, assignments_uri: str, *,
                 schedule_time: str = "", tags: dict[str, Any] | None = None,
                 client: MlflowClient | None = None) -> None:
    """Tag a registered version with the split it was trained and tested on, so that the next
    scheduled run (previous_split=champion) pins every item to the same split."""
    client = client or MlflowClient()
    client.set_model_version_tag(model_name, version, SPLIT_TAG, assignments_uri)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, str(value))
    if schedule_time:
        client.set_model_version_tag(model_name, version, SCHEDULE_TIME_TAG, schedule_time)


def champion_split(model_name: str, client: MlflowClient | None = None) -> tuple[str, str] | None:
    """(assignments URI, version) recorded on `models:/NAME@champion`; None with no champion."""
    client = client or MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as e:
        if e.error_code in NOT_FOUND:
            return None
        raise
    uri = version.tags.get(SPLIT_TAG)
    if not uri:
        raise ValueError(f"previous_split=champion: models:/{model_name}@{CHAMPION} (version "
                         f"{version.version}) has no {SPLIT_TAG} tag, so its split is unknown; "
                         "pass previous_split=<URI of the assignments.csv it was trained on>")
    return uri, str(version.version)
