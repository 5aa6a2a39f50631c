"""The champion/challenger gate over the MLflow Model Registry.

The gate judges what the search optimized. Its criterion is the test-split counterpart of the
tuning objective (kubevae.training.selection.OBJECTIVES[...].test_metric):

    val_mig -> test MIG          val_factor_vae -> test FactorVAE score
    val_dci -> test DCI disentanglement (higher is better for all three)
    val_neg_elbo -> test negative ELBO,  val_iwae_nll -> test negative ELBO (lower is better;
                    the IWAE bound is too costly to recompute for both models at every gate)
    udr -> the validation UDR of the tuning study. UDR scores a setting from several seeds, so a
           single model has no test counterpart; each version records its study's UDR as a tag
           (kubevae.gate.udr) and the candidate's is compared with the champion's. A champion
           without that tag (tuned another way) cannot be compared: the candidate stays a
           challenger until a person moves the alias.

Guard: the negative ELBO at beta = 1 on the test split, in nats per image, against regressions in
reconstruction: the candidate may be worse than the champion by at most `elbo_tolerance` (a
fraction of the champion's value; 0.05 = 5 %). Choosing beta for disentanglement costs some
likelihood, so the guard is a tolerance, not a requirement to win.

Protocol: candidate and champion (registered model alias `champion`) are scored the same way on
the same frozen test split with the same seed and metric protocol. The candidate is registered as
a new version; it becomes `champion` when there is no champion, or when its criterion beats the
champion's by at least `margin` (in the criterion's units) AND the guard holds; otherwise it is
marked `challenger` and the champion stays. The decision report records the criterion, both
scores, the guard and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
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
GUARD_METRIC = "neg_elbo"
TAG_PREFIX = "kubevae.gate."
LOWER_IS_BETTER = ("neg_elbo", "iwae_nll")
DEFAULT_ELBO_TOLERANCE = 0.05


@dataclass(frozen=True)
class Criterion:
    """What the gate compares: a test metric (or the study's udr) and its direction."""

    objective_metric: str  # the search objective it stands for
    metric: str  # mig, factor_vae, dci_disentanglement, neg_elbo, udr
    direction: str  # maximize | minimize
    source: str  # "test split" or "tuning study (validation)"

    @classmethod
    def for_objective(cls, objective_metric: str) -> Criterion:
        from kubevae.training.selection import objective

        spec = objective(objective_metric)
        if spec.name == "udr":
            return cls(spec.name, "udr", "maximize", "tuning study (validation)")
        if spec.test_metric is None:
            raise ValueError(f"objective_metric: {spec.name!r} has no test-split metric for the gate")
        metric = "neg_elbo" if spec.test_metric in LOWER_IS_BETTER else spec.test_metric
        return cls(spec.name, metric, spec.direction, "test split")


@dataclass
class GateDecision:
    decision: str  # "promoted" or "challenger"
    model_name: str
    version: str
    candidate: float | None  # the criterion's score
    champion: float | None
    champion_version: str | None
    margin: float
    metric: str = GUARD_METRIC
    direction: str = "minimize"
    objective_metric: str = "val_neg_elbo"
    criterion_source: str = "test split"
    candidate_neg_elbo: float | None = None
    champion_neg_elbo: float | None = None
    elbo_tolerance: float = DEFAULT_ELBO_TOLERANCE
    reason: str = ""

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        def fmt(v: float | None) -> str:
            return "none" if v is None else f"{v:.4f}"

        verdict = ("**promoted**: the candidate is the new `champion`" if self.promoted else
                   "**not promoted**: the candidate is marked `challenger`; the champion stays")
        better = "higher" if self.direction == "maximize" else "lower"
        champion = "none" if self.champion_version is None else f"version {self.champion_version}"
        return "\n".join([
            f"# Gate: {self.model_name}", "", verdict, "", f"Reason: {self.reason}", "",
            "| | candidate (version " + self.version + ") | champion (" + champion + ") |",
            "|---|---|---|",
            f"| criterion: {self.metric} ({better} is better; {self.criterion_source}; "
            f"search objective {self.objective_metric}) | {fmt(self.candidate)} | {fmt(self.champion)} |",
            f"| guard: test neg. ELBO at beta = 1, nats per image (lower is better) | "
            f"{fmt(self.candidate_neg_elbo)} | {fmt(self.champion_neg_elbo)} |", "",
            f"Rule: promote when there is no champion, or when the criterion beats the champion's "
            f"by at least {self.margin:g} and the candidate's negative ELBO is at most "
            f"{100 * self.elbo_tolerance:g} % above the champion's.", ""])


# -- scores ------------------------------------------------------------------------------------
def test_split(data_dir: str | Path):
    splits = load_splits(data_dir)
    test = splits.get("test")
    if test is None or len(test) == 0:
        raise ValueError(f"{data_dir}: the gate needs a non-empty test split (test/)")
    return test


def test_images(data_dir: str | Path):
    return test_split(data_dir).images


def score(model_dir: str | Path, test_images, seed: int = 0) -> float:
    """The guard: mean negative ELBO at beta = 1 (nats per image)."""
    return float(evaluate_images(load_model(model_dir), test_images, seed=seed)["neg_elbo"])


def criterion_score(metric: str, model_dir: str | Path, dataset, seed: int = 0,
                    protocol: str = "disentanglement_lib") -> float:
    """One model's criterion on the test split, drawn as the evaluate step draws it (the same
    seed and protocol give the same MIG as kubevae.evaluation.full)."""
    from kubevae.evaluation.full import model_scores
    from kubevae.metrics import metric_of

    if metric == "neg_elbo":
        return score(model_dir, dataset.images, seed)
    if not dataset.factor_names:
        raise ValueError(f"gate: criterion {metric} needs factor columns in the test split "
                         f"({dataset.path})")
    scores = model_scores(load_model(model_dir), dataset, seed=seed, protocol=protocol,
                          metrics=(metric_of(metric),))
    return scores.scores[metric]


Scorer = Callable[[str, Path, Any], float]  # (metric, model_dir, test dataset) -> score


def decide(criterion: Criterion, candidate: float | None, champion: float | None,
           candidate_elbo: float, champion_elbo: float | None, *, margin: float,
           elbo_tolerance: float, has_champion: bool) -> tuple[bool, str]:
    """(promoted, reason) from the scores alone (see the module docstring)."""
    if not has_champion:
        return True, "no champion yet"
    if candidate is None:
        return False, f"the candidate has no {criterion.metric} score"
    if champion is None:
        return False, (f"the champion has no {criterion.metric} score to compare with (it was "
                       f"tuned for another objective); move the alias by hand to override")
    if criterion.direction == "maximize":
        wins, gain = candidate >= champion + margin, candidate - champion
    else:
        wins, gain = candidate <= champion - margin, champion - candidate
    if not wins:
        return False, f"{criterion.metric} improves by {gain:.4g}, less than the margin {margin:g}"
    if criterion.metric != GUARD_METRIC and champion_elbo is not None:
        limit = champion_elbo * (1 + elbo_tolerance)
        if candidate_elbo > limit:
            return False, (f"{criterion.metric} improves by {gain:.4g}, but the negative ELBO "
                           f"{candidate_elbo:.2f} exceeds the champion's {champion_elbo:.2f} by more "
                           f"than {100 * elbo_tolerance:g} % (limit {limit:.2f})")
    return True, f"{criterion.metric} improves by {gain:.4g} (margin {margin:g}); guard holds"


# -- the registry ------------------------------------------------------------------------------
def champion_model_dir(client: MlflowClient, model_name: str) -> tuple[Path, Any] | None:
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
    return folders[0], version


def register(model_dir: str | Path, model_name: str) -> str:
    """Log the model folder as a pyfunc and register it: returns the new version."""
    from kubevae import mlflow_model
    from kubevae.model import read_model_config

    config, _, _ = read_model_config(model_dir)
    info = mlflow_model.log_pyfunc(model_dir, (config.image_size, config.image_size, config.channels),
                                   config.latent_dim)
    return str(mlflow.register_model(info.model_uri, model_name).version)


def tag_version(client: MlflowClient, model_name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(model_name, version, key, str(value))


def gate(model_dir: str | Path, data_dir: str | Path, *, model_name: str, margin: float,
         tracker: tracking.Tracker, seed: int = 0, objective_metric: str = "val_neg_elbo",
         study_score: float | None = None, elbo_tolerance: float = DEFAULT_ELBO_TOLERANCE,
         protocol: str = "disentanglement_lib", scorer: Scorer | None = None) -> GateDecision:
    """Register the candidate and decide whether it replaces the champion (see module doc).

    `study_score` is the tuning study's best value (the candidate's criterion for udr).
    `scorer(metric, model_dir, test_dataset)` replaces criterion_score (tests)."""
    if not tracker.enabled:
        raise tracking.TrackingUnavailable("the gate needs the MLflow Model Registry, but "
                                           "tracking is off or unreachable")
    if margin < 0:
        raise ValueError(f"margin: expected a number >= 0, got {margin}")
    if not 0 <= elbo_tolerance:
        raise ValueError(f"elbo_tolerance: expected a fraction >= 0, got {elbo_tolerance}")
    criterion = Criterion.for_objective(objective_metric)
    scorer = scorer or (lambda metric, path, data: criterion_score(metric, path, data, seed, protocol))
    client = MlflowClient()
    dataset = test_split(data_dir)

    candidate_elbo = scorer(GUARD_METRIC, Path(model_dir), dataset)
    candidate = study_score if criterion.metric == "udr" else (
        candidate_elbo if criterion.metric == GUARD_METRIC else scorer(criterion.metric, Path(model_dir), dataset))
    found = champion_model_dir(client, model_name)
    champion = champion_elbo = None
    if found:
        champion_elbo = scorer(GUARD_METRIC, found[0], dataset)
        if criterion.metric == "udr":
            recorded = found[1].tags.get(TAG_PREFIX + "udr")
            champion = float(recorded) if recorded is not None else None
        elif criterion.metric == GUARD_METRIC:
            champion = champion_elbo
        else:
            champion = scorer(criterion.metric, found[0], dataset)

    promoted, reason = decide(criterion, candidate, champion, candidate_elbo, champion_elbo,
                              margin=margin, elbo_tolerance=elbo_tolerance, has_champion=bool(found))
    version = register(model_dir, model_name)
    client.set_registered_model_alias(model_name, CHAMPION if promoted else CHALLENGER, version)
    tag_version(client, model_name, version, {
        "test_neg_elbo": f"{candidate_elbo:.6f}", TAG_PREFIX + "criterion": criterion.metric,
        TAG_PREFIX + "objective_metric": objective_metric,
        TAG_PREFIX + criterion.metric: None if candidate is None else f"{candidate:.6f}"})
    decision = GateDecision(
        "promoted" if promoted else "challenger", model_name, version, candidate, champion,
        str(found[1].version) if found else None, margin, metric=criterion.metric,
        direction=criterion.direction, objective_metric=objective_metric,
        criterion_source=criterion.source, candidate_neg_elbo=candidate_elbo,
        champion_neg_elbo=champion_elbo, elbo_tolerance=elbo_tolerance, reason=reason)
    tracker.log_metrics({k: v for k, v in {
        "gate_candidate": candidate, "gate_champion": champion, "gate_promoted": float(promoted),
        "gate_candidate_neg_elbo": candidate_elbo, "gate_champion_neg_elbo": champion_elbo}.items()
        if v is not None})
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
