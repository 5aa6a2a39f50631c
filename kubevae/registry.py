"""The champion/challenger gate over the MLflow Model Registry.

Criterion: the test-split counterpart of the tuning objective, read from the study's one
mapping (kubevae.study.TEST_METRIC): test MIG for val_mig, FactorVAE for val_factor_vae, DCI
disentanglement for val_dci (higher is better); the test negative ELBO for val_neg_elbo and
val_iwae_nll (lower is better). udr has no test counterpart (it scores a setting from several
seeds): each version records its study's UDR as a tag (kubevae.gate.udr) and the candidate's is
compared with the champion's; a champion without that tag cannot be compared, and the candidate
stays a challenger until a person moves the alias.

Scores: candidate and champion (registered model alias `champion`) are scored by the evaluate
step's own functions (kubevae.evaluation.full.model_scores) on the same frozen test split, with
the same seed, metric protocol and sizes: every score the gate records for the candidate is the
value the evaluate step reports for it, and both models are scored on the same images and the
same metric draws (each metric has its own stream from the seed), so their comparison is paired.

Floors (Floors): no model is promoted, the first one included, when
- a score it was judged on is not finite (NaN or infinite);
- it has fewer than `min_active_units` active units (latents whose posterior mean varies,
  Cov_x E[z_u|x] > 0.01);
- its rate, the test KL(q(z|x) || p(z)) in nats per image, is below `min_rate_nats`;
- its reconstruction PSNR is below the PSNR of the test images' mean image (the reconstruction a
  decoder gives that ignores z) plus `min_psnr_gain_db`.
How the defaults were chosen is in Floors' docstring; docs/gate.md has the measurements.

Rule, with a champion: the candidate replaces it when
1. every floor holds;
2. its criterion beats the champion's by at least `margin` (in the criterion's units), on the
   test items as drawn: `gate_margin` means what it always meant;
3. the paired bootstrap over the same test items (kubevae.metrics.bootstrap) gives a
   probability of at least `min_probability` that the candidate is better at all (gain > 0).
   The margin says how large a gain must be; the probability says how sure the test items make
   it that there is a gain. Both must hold. DCI (its importances would be refitted per
   resample) and udr (a study's score, not per item) have no bootstrap: the margin alone decides,
   and the report says so. P(gain >= margin) is reported beside it;
4. the guard holds: the test negative ELBO at beta = 1 may exceed the champion's by at most
   `elbo_tolerance` (a fraction; 0.05 = 5 %). Choosing beta for disentanglement costs some
   likelihood, so the guard is a tolerance, not a requirement to win.
Without a champion, rule 1 alone decides. A candidate that is not promoted is registered as
`challenger`; the champion, if any, stays. The decision report gives every floor with its value,
both models' scores, the bootstrap and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubevae import tracking
from kubevae.data.dataset import Dataset, load_splits
from kubevae.metrics.bootstrap import ModelScores
from kubevae.study import MIN_RATE_NATS

CHAMPION, CHALLENGER = "champion", "challenger"
GUARD_METRIC = "neg_elbo"
TAG_PREFIX = "kubevae.gate."
LOWER_IS_BETTER = ("neg_elbo", "iwae_nll", "recon", "kl")
DEFAULT_ELBO_TOLERANCE = 0.05
DEFAULT_MIN_PROBABILITY = 0.9
DEFAULT_RESAMPLES = 500


@dataclass(frozen=True)
class Floors:
    """What any model must reach to be promoted, the first one included.

    The defaults, from models trained with `kubevae train` (latent size 10, 32 px, lr 1e-3) on
    the built-in sprites and digits and scored as the gate scores them (docs/gate.md has the
    table and the commands): models collapsed to the prior (beta = 64, 600 steps) had 0 active
    units, a rate of 0.001 to 0.011 nats per image and 0.1 to 0.3 dB LESS than the mean image's
    PSNR; models trained only 150 steps at beta = 1 already had all 10 units active, a rate of
    9 nats and 2.0 to 2.8 dB more than the mean image. Each default lies between the two on
    both data sets, and means the same on any data:
    - min_active_units = 1: a model with no active unit encodes nothing;
    - min_rate_nats = 0.5: the study's collapse rule (kubevae.study.MIN_RATE_NATS), so a model
      the search would call collapsed is not promoted either;
    - min_psnr_gain_db = 1.0: the reconstruction must beat the constant mean image by 1 dB (a
      fifth less squared error); relative to the data's own mean image, so it means the same on
      dark sprites and on digits.
    """

    min_active_units: int = 1
    min_rate_nats: float = MIN_RATE_NATS
    min_psnr_gain_db: float = 1.0

    def __post_init__(self) -> None:
        if self.min_active_units < 0:
            raise ValueError(f"min_active_units: expected a count >= 0, got {self.min_active_units}")
        for name in ("min_rate_nats", "min_psnr_gain_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")

    def check(self, scores: Mapping[str, float | None]) -> list[dict[str, Any]]:
        """One row per floor: {"floor", "value", "limit", "passed", "text"}, in this order:
        finite scores, active units, rate, reconstruction."""
        bad = sorted(k for k, v in scores.items() if v is None or not math.isfinite(v))
        psnr, reference = scores.get("psnr"), scores.get("mean_image_psnr")
        rows = [{"floor": "finite", "value": ", ".join(bad) or "all finite", "limit": "all finite",
                 "passed": not bad, "text": "every score is a finite number" if not bad
                 else f"not finite: {', '.join(bad)}"}]

        def row(name, value, limit, text):
            passed = value is not None and math.isfinite(value) and value >= limit
            rows.append({"floor": name, "value": value, "limit": limit, "passed": passed,
                         "text": text})
        row("active_units", scores.get("active_units"), self.min_active_units,
            f"active units >= {self.min_active_units}")
        row("rate", scores.get("kl"), self.min_rate_nats,
            f"rate (test KL, nats per image) >= {self.min_rate_nats:g}")
        limit = None if reference is None else reference + self.min_psnr_gain_db
        row("reconstruction", psnr, float("nan") if limit is None else limit,
            f"PSNR >= the mean image's PSNR ({_fmt(reference)} dB) + {self.min_psnr_gain_db:g} dB")
        return rows


@dataclass(frozen=True)
class Criterion:
    """What the gate compares: a test metric (or the study's udr) and its direction."""

    objective_metric: str  # the search objective it stands for
    metric: str  # mig, factor_vae, dci_disentanglement, neg_elbo, udr
    direction: str  # maximize | minimize
    source: str  # "test split" or "tuning study (validation)"

    @classmethod
    def for_objective(cls, objective_metric: str) -> Criterion:
        from kubevae.study import objective

        spec = objective(objective_metric)
        if spec.test_metric is None:  # udr: a study's score, no single-model test counterpart
            return cls(spec.name, spec.name, spec.direction, "tuning study (validation)")
        return cls(spec.name, spec.test_metric, spec.direction, "test split")

    @property
    def disentanglement_metrics(self) -> tuple[str, ...]:
        """The kubevae.metrics.disentanglement metric to compute for this criterion, if any."""
        from kubevae.metrics import HEADLINE, metric_of

        return (metric_of(self.metric),) if self.metric in HEADLINE.values() else ()


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
    floors: list[dict[str, Any]] = field(default_factory=list)  # Floors.check of the candidate
    failed_floors: list[str] = field(default_factory=list)
    candidate_scores: dict[str, float | None] = field(default_factory=dict)  # = evaluate's
    champion_scores: dict[str, float | None] = field(default_factory=dict)
    min_probability: float = DEFAULT_MIN_PROBABILITY
    comparison: dict[str, Any] | None = None  # the paired bootstrap (PairedComparison.as_dict)
    no_comparison: str = ""  # why there is no bootstrap, when there is a champion and none

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    @property
    def p_better(self) -> float | None:
        return None if self.comparison is None else self.comparison["p_better"]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        if self.promoted:
            verdict = "**promoted**: the candidate is the new `champion`"
        elif self.champion_version is None:
            verdict = ("**not promoted**: the candidate is marked `challenger`; there is no "
                       "champion, so nothing is deployed")
        else:
            verdict = "**not promoted**: the candidate is marked `challenger`; the champion stays"
        better = "higher" if self.direction == "maximize" else "lower"
        champion = "none" if self.champion_version is None else f"version {self.champion_version}"
        lines = [f"# Gate: {self.model_name}", "", verdict, "", f"Reason: {self.reason}", "",
                 "## Floors (the candidate)", "", "| floor | value | required | |", "|---|---|---|---|"]
        for row in self.floors:
            lines.append(f"| {row['floor']} | {_fmt(row['value'])} | {row['text']} | "
                         f"{'holds' if row['passed'] else '**FAILED**'} |")
        lines += ["", "## Scores", "",
                  "| | candidate (version " + self.version + ") | champion (" + champion + ") |",
                  "|---|---|---|",
                  f"| criterion: {self.metric} ({better} is better; {self.criterion_source}; "
                  f"search objective {self.objective_metric}) | {_fmt(self.candidate)} | "
                  f"{_fmt(self.champion)} |",
                  f"| guard: test neg. ELBO at beta = 1, nats per image (lower is better) | "
                  f"{_fmt(self.candidate_neg_elbo)} | {_fmt(self.champion_neg_elbo)} |"]
        for name, value in self.candidate_scores.items():
            if name not in (self.metric, GUARD_METRIC):
                lines.append(f"| {name} | {_fmt(value)} | {_fmt(self.champion_scores.get(name))} |")
        if self.comparison is not None:
            c = self.comparison
            lines += ["", f"Paired bootstrap over the same {c['num_items']} test items "
                      f"({c['num_resamples']} resamples, seed {c['seed']}): P(candidate better) = "
                      f"{c['p_better']:.3f}; P(gain >= margin {self.margin:g}) = "
                      f"{c['p_beats_margin']:.3f}; gain {c['gain']:+.4g}, 95 % interval "
                      f"[{c['gain_low']:+.4g}, {c['gain_high']:+.4g}]."]
        elif self.no_comparison:
            lines += ["", f"No paired bootstrap: {self.no_comparison}."]
        lines += ["", "Rule: every floor must hold. With a champion, the criterion must also beat "
                  f"the champion's by at least {self.margin:g} (the margin) on the test items as "
                  f"drawn, the paired bootstrap must give P(candidate better) >= "
                  f"{self.min_probability:g} (where there is one), and the candidate's negative "
                  f"ELBO may be at most {100 * self.elbo_tolerance:g} % above the champion's.", ""]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


# -- scores ------------------------------------------------------------------------------------
ModelScorer = Callable[[Path, Dataset], ModelScores]  # (model folder, test split) -> its scores


def load_test_split(data_dir: str | Path) -> Dataset:
    splits = load_splits(data_dir)
    test = splits.get("test")
    if test is None or len(test) == 0:
        raise ValueError(f"{data_dir}: the gate needs a non-empty test split (test/)")
    return test


def evaluate_scorer(criterion: Criterion, *, seed: int, protocol: Any, device: str = "cpu",
                    sizes=None) -> ModelScorer:
    """Score a model folder as the evaluate step does (kubevae.evaluation.full.model_scores)."""
    def score(model_dir: Path, dataset: Dataset) -> ModelScores:
        from kubevae.evaluation.full import model_scores
        from kubevae.model import load_model

        if criterion.disentanglement_metrics and not dataset.factor_names:
            raise ValueError(f"gate: criterion {criterion.metric} needs factor columns in the test "
                             f"split ({dataset.path})")
        return model_scores(load_model(model_dir, device=device), dataset, seed=seed,
                            protocol=protocol, sizes=sizes, device=device,
                            metrics=criterion.disentanglement_metrics)
    return score


def count_test_items(splits_dir: str | Path) -> dict[str, int]:
    """How many test items the split has, and how many of them were pinned from the previous
    split (previous_split): the items the champion was itself tested on. Read from
    assignments.csv (kubevae.split writes it); tags on the registered version."""
    path = Path(splits_dir) / "assignments.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the split folder has no assignments.csv (kubevae split "
                                f"writes it)")
    rows = pd.read_csv(path, dtype=str)
    missing = {"split", "how"} - set(rows.columns)
    if missing:
        raise ValueError(f"{path}: expected columns 'split' and 'how', missing {sorted(missing)}")
    test = rows[rows["split"] == "test"]
    return {"kubevae.test_items": len(test),
            "kubevae.test_items_frozen": int((test["how"] == "pinned").sum())}


# -- the decision ------------------------------------------------------------------------------
def compare(criterion: Criterion, candidate: ModelScores, champion: ModelScores, *, margin: float,
            num_resamples: int, seed: int) -> tuple[dict[str, Any] | None, str]:
    """The paired bootstrap of the criterion, or (None, why there is none)."""
    from kubevae.metrics.bootstrap import paired_bootstrap

    if criterion.metric not in candidate.resamplers or criterion.metric not in champion.resamplers:
        if criterion.source != "test split":
            return None, "udr is the tuning study's score, not a score per test item"
        if criterion.metric.startswith("dci_"):
            return None, "DCI refits its classifiers on every draw, so it is not resampled"
        return None, f"no per-item {criterion.metric} scores for both models"
    (score_a, n_a), (score_b, n_b) = candidate.resamplers[criterion.metric], champion.resamplers[criterion.metric]
    if n_a != n_b:
        return None, f"the two models were scored on different numbers of items ({n_a}, {n_b})"
    result = paired_bootstrap(score_a, score_b, n_a, direction=criterion.direction, margin=margin,
                              num_resamples=num_resamples, seed=seed)
    return result.as_dict(), ""


def decide(criterion: Criterion, candidate: float | None, champion: float | None,
           candidate_elbo: float | None, champion_elbo: float | None, *, margin: float,
           elbo_tolerance: float, has_champion: bool, failed_floors: list[str] | None = None,
           p_better: float | None = None, min_probability: float = DEFAULT_MIN_PROBABILITY,
           incomparable: str = "") -> tuple[bool, str]:
    """(promoted, reason) from the scores alone (see the module docstring). `incomparable`:
    why the champion cannot be scored on the candidate's test items, if it cannot."""
    if failed_floors:
        return False, f"a floor failed: {'; '.join(failed_floors)}"
    if not has_champion:
        return True, "no champion yet, and every floor holds"
    if incomparable:
        return False, incomparable
    if candidate is None:
        return False, f"the candidate has no {criterion.metric} score"
    if champion is None:
        return False, (f"the champion has no {criterion.metric} score to compare with (it was "
                       f"tuned for another objective); move the alias by hand to override")
    gain = candidate - champion if criterion.direction == "maximize" else champion - candidate
    if gain < margin:
        return False, f"{criterion.metric} improves by {gain:.4g}, less than the margin {margin:g}"
    if p_better is not None and p_better < min_probability:
        return False, (f"{criterion.metric} improves by {gain:.4g} (margin {margin:g}), but the "
                       f"paired bootstrap gives P(better) = {p_better:.3f}, below "
                       f"{min_probability:g}: the test items cannot tell the two apart")
    if criterion.metric != GUARD_METRIC and champion_elbo is not None and candidate_elbo is not None:
        limit = champion_elbo * (1 + elbo_tolerance)
        if candidate_elbo > limit:
            return False, (f"{criterion.metric} improves by {gain:.4g}, but the negative ELBO "
                           f"{candidate_elbo:.2f} exceeds the champion's {champion_elbo:.2f} by more "
                           f"than {100 * elbo_tolerance:g} % (limit {limit:.2f})")
    sure = "" if p_better is None else f", P(better) = {p_better:.3f}"
    return True, f"{criterion.metric} improves by {gain:.4g} (margin {margin:g}{sure}); guard holds"


def _input_mismatch(champion_dir: Path, dataset: Dataset, version: str) -> str:
    """Why the champion cannot be scored on `dataset`, or "": a model for other image shapes
    (the data changed under the same model name). Promoting the candidate would also change
    what the serving endpoint accepts, so the gate refuses and says how to go on."""
    from kubevae.model import read_model_config

    config, _, _ = read_model_config(champion_dir)
    wanted = (config.image_size, config.image_size, config.channels)
    held = tuple(int(v) for v in dataset.images.shape[1:])
    if held == wanted:
        return ""
    return (f"champion version {version} takes {'x'.join(map(str, wanted))} images and this test "
            f"split holds {'x'.join(map(str, held))}: the two cannot be scored on the same items, "
            f"and promoting would change what the endpoint accepts; train under another "
            f"model_name, or move the alias by hand")


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


def _check_settings(margin: float, elbo_tolerance: float, min_probability: float,
                    num_resamples: int) -> None:
    if not margin >= 0:
        raise ValueError(f"margin (gate_margin): expected a number >= 0, got {margin}")
    if not elbo_tolerance >= 0:
        raise ValueError(f"elbo_tolerance (gate_elbo_tolerance): expected a fraction >= 0, got "
                         f"{elbo_tolerance}")
    if not 0 <= min_probability <= 1:
        raise ValueError(f"min_probability (gate_min_probability): expected a probability in "
                         f"[0, 1], got {min_probability}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples: expected a positive number, got {num_resamples}")


def gate(model_dir: str | Path, data_dir: str | Path, *, model_name: str, margin: float,
         tracker: tracking.Tracker, seed: int = 0, objective_metric: str = "val_neg_elbo",
         study_score: float | None = None, elbo_tolerance: float = DEFAULT_ELBO_TOLERANCE,
         protocol: Any = "disentanglement_lib", floors: Floors | None = None,
         min_probability: float = DEFAULT_MIN_PROBABILITY,
         num_resamples: int = DEFAULT_RESAMPLES, device: str = "cpu",
         scorer: ModelScorer | None = None) -> GateDecision:
    """Register the candidate and decide whether it replaces the champion (see module doc).

    `study_score` is the tuning study's best value (the candidate's criterion for udr).
    `scorer(model_dir, test_dataset)` replaces evaluate_scorer (tests plant scores with it)."""
    _check_settings(margin, elbo_tolerance, min_probability, num_resamples)
    if not tracker.enabled:
        raise tracking.TrackingUnavailable("the gate needs the MLflow Model Registry, but "
                                           "tracking is off or unreachable")
    floors = floors or Floors()
    criterion = Criterion.for_objective(objective_metric)
    scorer = scorer or evaluate_scorer(criterion, seed=seed, protocol=protocol, device=device)
    client = MlflowClient()
    dataset = load_test_split(data_dir)

    candidate = scorer(Path(model_dir), dataset)
    if criterion.metric == "udr" and study_score is not None:
        candidate.scores["udr"] = study_score
    checks = floors.check(candidate.scores)
    failed = [row["text"] if row["floor"] == "finite" else f"{row['text']} (got {_fmt(row['value'])})"
              for row in checks if not row["passed"]]
    found = champion_model_dir(client, model_name)
    champion: ModelScores | None = None
    comparison, no_comparison = None, ""
    incomparable = _input_mismatch(found[0], dataset, str(found[1].version)) if found else ""
    if found and not incomparable:
        champion = scorer(found[0], dataset)
        if criterion.metric == "udr":
            recorded = found[1].tags.get(TAG_PREFIX + "udr")
            if recorded is not None:
                champion.scores["udr"] = float(recorded)
        if not failed:
            comparison, no_comparison = compare(criterion, candidate, champion, margin=margin,
                                                num_resamples=num_resamples, seed=seed)

    def criterion_of(s: ModelScores | None) -> float | None:
        return None if s is None else s.scores.get(criterion.metric)

    promoted, reason = decide(
        criterion, criterion_of(candidate), criterion_of(champion),
        candidate.scores.get(GUARD_METRIC), None if champion is None else champion.scores.get(GUARD_METRIC),
        margin=margin, elbo_tolerance=elbo_tolerance, has_champion=bool(found), failed_floors=failed,
        p_better=None if comparison is None else comparison["p_better"], min_probability=min_probability,
        incomparable=incomparable)
    version = register(model_dir, model_name)
    client.set_registered_model_alias(model_name, CHAMPION if promoted else CHALLENGER, version)
    decision = GateDecision(
        "promoted" if promoted else "challenger", model_name, version, criterion_of(candidate),
        criterion_of(champion), str(found[1].version) if found else None, margin,
        metric=criterion.metric, direction=criterion.direction, objective_metric=objective_metric,
        criterion_source=criterion.source, candidate_neg_elbo=candidate.scores.get(GUARD_METRIC),
        champion_neg_elbo=None if champion is None else champion.scores.get(GUARD_METRIC),
        elbo_tolerance=elbo_tolerance, reason=reason, floors=checks,
        failed_floors=[row["floor"] for row in checks if not row["passed"]],
        candidate_scores=dict(candidate.scores),
        champion_scores={} if champion is None else dict(champion.scores),
        min_probability=min_probability, comparison=comparison,
        no_comparison=no_comparison if found and not failed else "")
    record(client, tracker, decision, criterion)
    return decision


def record(client: MlflowClient, tracker: tracking.Tracker, decision: GateDecision,
           criterion: Criterion) -> None:
    """Tag the registered version and log the gate run: every candidate score (the evaluate
    step's values), the champion's, the floors, the bootstrap and gate.json."""
    candidate = decision.candidate
    tags = {"test_neg_elbo": _tag(decision.candidate_neg_elbo),
            TAG_PREFIX + "criterion": criterion.metric,
            TAG_PREFIX + "objective_metric": decision.objective_metric,
            TAG_PREFIX + criterion.metric: None if candidate is None else _tag(candidate),
            TAG_PREFIX + "failed_floors": ",".join(decision.failed_floors) or "none",
            TAG_PREFIX + "p_better": None if decision.p_better is None else f"{decision.p_better:.4f}"}
    tags.update({f"{TAG_PREFIX}test_{k}": _tag(v) for k, v in decision.candidate_scores.items()
                 if k != "udr"})
    tag_version(client, decision.model_name, decision.version, tags)
    metrics = {"gate_candidate": candidate, "gate_champion": decision.champion,
               "gate_promoted": float(decision.promoted),
               "gate_candidate_neg_elbo": decision.candidate_neg_elbo,
               "gate_champion_neg_elbo": decision.champion_neg_elbo,
               "gate_p_better": decision.p_better,
               "gate_floors_failed": float(len(decision.failed_floors))}
    metrics.update({f"gate_candidate_{k}": v for k, v in decision.candidate_scores.items()})
    metrics.update({f"gate_champion_{k}": v for k, v in decision.champion_scores.items()})
    tracker.log_metrics({k: float(v) for k, v in metrics.items()
                         if v is not None and math.isfinite(float(v))})
    tracker.log_dict(decision.as_dict(), "gate.json")


def _tag(value: float | None) -> str | None:
    return None if value is None else f"{value:.6f}" if math.isfinite(value) else str(value)


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
