"""The tuning study as a core type: the search objectives, the collapse rule, and the study
itself (its trials, each with its objective's interval), read and written as JSON.

The tune step writes a `Study`, the train, evaluate and gate steps and the local run's summary
read it back; both backends (Optuna locally, Katib on a cluster) produce it. Nothing here
imports torch, a tuner or a Kubernetes SDK.

Search objectives (OBJECTIVES), each with its direction (Katib's `objective.type` and the
Optuna study's direction both read it here):

    val_mig         maximize  MIG (disentanglement_lib: mean codes, 20 bins) on a fixed, seeded
                              sample of the validation split; the default when the data has
                              factor columns (factor_*), e.g. the built-in sprites
    val_factor_vae  maximize  the FactorVAE score, same sample and the evaluate step's protocol
    val_dci         maximize  DCI disentanglement, same sample, random-forest importances
    udr             maximize  Unsupervised Disentanglement Ranking (kubevae.metrics.udr) of
                              `udr_seeds` seeds of the same setting; the default without factors
    val_neg_elbo    minimize  negative ELBO at beta = 1: prefers beta ~ 1; for latent size or
                              learning rate at a fixed beta
    val_iwae_nll    minimize  the IWAE-16 bound: the same caveat

TEST_METRIC maps each objective to its test-split counterpart, the metric the gate compares
(one mapping; the gate reads it).

Collapse rule: a model whose posterior collapsed to the prior (no active unit, or a rate below
MIN_RATE_NATS nats per image) can score deceptively on a disentanglement score (UDR is high when
the few latents that remain agree; MIG's histogram of a constant code is noise), so for every
maximized objective such a trial reports COLLAPSED_SCORE = -1, below any real score (all lie in
[0, 1]), and `collapsed=1` on its metric line. The minimized bounds need no guard: a collapsed
model has a poor bound. When every trial collapsed the search has no real choice; the study
takes the trial with the highest rate (`with_collapse_rule`) and says so (ALL_COLLAPSED_ADVICE):
the final run trains longer than a trial (a collapse early in training often ends), and the
gate judges the model it gives.

Intervals: each trial reports its objective with a 95% interval, `<objective>_lo` and
`<objective>_hi` on its metric line: a percentile bootstrap over the validation sample for the
factor scores, the range of the per-seed scores for udr (kubevae.training.scoring says how).
When the chosen trial's interval overlaps another trial's, the two cannot be told apart on this
sample, and `Study.verdict` says so in plain words.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["maximize", "minimize"]

COLLAPSED_SCORE = -1.0
MIN_RATE_NATS = 0.5
INTERVAL_LEVEL = 0.95
# How the objectives are measured (kubevae.training.scoring, kubevae.training.selection): on a
# fixed seeded sample of the validation split, the same for every epoch and every trial.
SELECTION_SEED = 0
SELECTION_IMAGES = 2_000  # MIG / DCI / FactorVAE sample from the validation split
UDR_IMAGES = 1_000  # disentanglement_lib's num_data_points
INTERVAL_RESAMPLES = 200  # bootstrap resamples of the sample for a trial's interval
MIN_UDR_INTERVAL_SEEDS = 3  # a udr trial's interval is the range over its seeds, from 3 seeds on


# -- the objective table -------------------------------------------------------------------
# Each search objective's test-split counterpart: what the evaluate step reports and the gate
# compares for candidate and champion. val_iwae_nll is judged on the test negative ELBO: the
# IWAE bound is too costly to recompute for both models at every gate. udr has none: it scores
# a setting from several seeds, not one model (the gate compares the studies' UDR instead).
TEST_METRIC: dict[str, str | None] = {
    "val_mig": "mig",
    "val_factor_vae": "factor_vae",
    "val_dci": "dci_disentanglement",
    "udr": None,
    "val_neg_elbo": "neg_elbo",
    "val_iwae_nll": "neg_elbo",
}


@dataclass(frozen=True)
class SearchObjective:
    name: str
    direction: Direction
    needs_factors: bool
    description: str
    interval: str = ""  # how a trial's interval is drawn; "" = none
    interval_level: float | None = INTERVAL_LEVEL  # None: a range, with no stated confidence


    @property
    def test_metric(self) -> str | None:
        """The test-split counterpart (TEST_METRIC)."""
        return TEST_METRIC[self.name]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


BOOTSTRAP = (f"{INTERVAL_LEVEL:.0%} percentile bootstrap over the validation sample (at most "
             f"{SELECTION_IMAGES} images, the same for every trial; {INTERVAL_RESAMPLES} resamples)")
OBJECTIVES: dict[str, SearchObjective] = {o.name: o for o in (
    SearchObjective("val_mig", "maximize", True,
                    "MIG on a fixed seeded validation sample (needs factor columns)", BOOTSTRAP),
    SearchObjective("val_factor_vae", "maximize", True,
                    "FactorVAE score on a fixed seeded validation sample (needs factor columns)",
                    BOOTSTRAP),
    SearchObjective("val_dci", "maximize", True,
                    "DCI disentanglement on a fixed seeded validation sample (needs factor columns)"),
    SearchObjective("udr", "maximize", False,
                    "UDR over udr_seeds seeds per trial; no labels needed",
                    "the range of the seeds' own UDR scores (one score per seed; "
                    f"{MIN_UDR_INTERVAL_SEEDS} seeds or more)", None),
    SearchObjective("val_neg_elbo", "minimize", False,
                    "negative ELBO at beta=1; prefers beta ~ 1 (tune latent size or lr at a fixed beta)"),
    SearchObjective("val_iwae_nll", "minimize", False,
                    "IWAE-16 NLL; prefers beta ~ 1 (tune latent size or lr at a fixed beta)"),
)}
if set(TEST_METRIC) != set(OBJECTIVES):  # one mapping, kept whole
    raise AssertionError(f"TEST_METRIC {sorted(TEST_METRIC)} != OBJECTIVES {sorted(OBJECTIVES)}")


def objective(name: str, *, parameter: str = "objective_metric") -> SearchObjective:
    if name not in OBJECTIVES:
        raise ValueError(f"{parameter}: expected one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def default_objective(has_factors: bool) -> str:
    return "val_mig" if has_factors else "udr"


# -- the collapse rule ---------------------------------------------------------------------
def is_collapsed(active_units: float | None, kl: float | None) -> bool:
    return (active_units is not None and active_units < 1) or (kl is not None and kl < MIN_RATE_NATS)


def guarded(name: str, value: float, active_units: float | None, kl: float | None) -> dict[str, float]:
    """{name: value, "collapsed": 0/1}, value replaced by COLLAPSED_SCORE for a collapsed model
    when the objective is maximized (see the module docstring)."""
    collapsed = is_collapsed(active_units, kl)
    if collapsed and objective(name).direction == "maximize":
        value = COLLAPSED_SCORE
    return {name: float(value), "collapsed": float(collapsed)}


ALL_COLLAPSED_ADVICE = (
    f"every completed trial collapsed (no active unit, or a rate below {MIN_RATE_NATS} nats per "
    "image): "
    "their scores say nothing about disentanglement, so none was chosen on the objective. The "
    "trial with the highest rate (validation KL) was taken instead, as the one closest to "
    "encoding something; the final run trains it for longer, and the gate judges the model "
    "it gives. To get a real choice: lower beta_max (high beta on a short budget collapses "
    "first), raise trial_steps, or raise the learning rate.")


def line_collapsed(line: dict[str, float]) -> bool:
    """A metric line's collapse: its `collapsed` flag, else its active units and KL."""
    if "collapsed" in line:
        return line["collapsed"] >= 0.5
    return is_collapsed(line.get("val_active_units"), line.get("val_kl"))


def all_collapsed(lines: list[dict[str, float]]) -> bool:
    """True when there is at least one completed trial and every one of them collapsed, read
    from each trial's last metric line."""
    return bool(lines) and all(line_collapsed(line) for line in lines)


def least_collapsed(lines: list[dict[str, float]]) -> int:
    """The index of the line with the highest rate (val_kl), ties broken by the lower negative
    ELBO: the trial nearest to leaving collapse."""
    def key(i: int) -> tuple[float, float]:
        line = lines[i]
        return (line.get("val_kl", float("-inf")), -line.get("val_neg_elbo", float("inf")))
    return max(range(len(lines)), key=key)


# -- the study -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A trial's objective lies in [low, high] with confidence `level`; `method` says how the
    interval was drawn (SearchObjective.interval)."""

    low: float
    high: float
    level: float | None = INTERVAL_LEVEL  # None: a range (e.g. over seeds), no stated confidence
    method: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"interval: expected finite low <= high, got [{self.low}, {self.high}]")

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}]"


def interval_keys(objective_metric: str) -> tuple[str, str]:
    """The metric-line names of an objective's interval bounds."""
    return f"{objective_metric}_lo", f"{objective_metric}_hi"


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # COMPLETE, PRUNED, FAIL
    # The trial's last metric line: val_neg_elbo, val_recon, val_kl, val_psnr,
    # val_active_units, step, the objective and its interval bounds, collapsed, ...
    metrics: dict[str, float] = field(default_factory=dict)
    interval: Interval | None = None

    @property
    def collapsed(self) -> bool:
        return line_collapsed(self.metrics) if self.metrics else False


def trial_from_line(number: int, params: dict[str, Any], value: float | None, state: str,
                    line: dict[str, float], objective_metric: str) -> Trial:
    """A trial from its last metric line: the interval comes from `<objective>_lo/_hi`, when
    the line has them (a collapsed trial's score is a flag, not an estimate: no interval)."""
    lo, hi = interval_keys(objective_metric)
    interval = None
    if lo in line and hi in line and not line_collapsed(line) and \
            all(math.isfinite(line[k]) for k in (lo, hi)):
        spec = objective(objective_metric)
        interval = Interval(float(line[lo]), float(line[hi]), spec.interval_level, spec.interval)
    return Trial(number, dict(params), value, state, dict(line), interval)


STUDY_FORMAT = "kubevae-study/2"
READABLE_FORMATS = ("kubevae-study/1", STUDY_FORMAT)  # /1 had no intervals


@dataclass
class Study:
    """The search: its objective and direction, every trial, the chosen one."""

    objective_metric: str
    trials: list[Trial]
    best_trial: int | None  # the chosen trial's number
    direction: Direction = "maximize"
    algorithm: str = ""
    # Every completed trial collapsed: the chosen trial is the least-collapsed one, not a
    # choice on the objective (ALL_COLLAPSED_ADVICE).
    all_collapsed: bool = False

    def __post_init__(self) -> None:
        expected = objective(self.objective_metric).direction
        if self.direction != expected:
            raise ValueError(f"study: objective {self.objective_metric} is {expected}d, "
                             f"got direction {self.direction!r}")
        if self.best_trial is not None and self.chosen is None:
            raise ValueError(f"study: best_trial {self.best_trial} is not among the trials "
                             f"{[t.number for t in self.trials]}")

    @property
    def objective(self) -> SearchObjective:
        return objective(self.objective_metric)

    @property
    def chosen(self) -> Trial | None:
        return next((t for t in self.trials if t.number == self.best_trial), None)

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.chosen.params) if self.chosen else {}

    @property
    def best_value(self) -> float:
        chosen = self.chosen
        return float("nan") if chosen is None or chosen.value is None else float(chosen.value)

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    # -- the collapse rule and the noise rule ------------------------------------------
    def with_collapse_rule(self) -> Study:
        """When every completed trial collapsed, take the least-collapsed one and mark the
        study. Applied to both backends' studies: Katib, too, would otherwise pick one of
        several equal -1 scores."""
        complete = self.complete
        if not all_collapsed([t.metrics for t in complete]):
            return dataclasses.replace(self, all_collapsed=False)
        chosen = complete[least_collapsed([t.metrics for t in complete])]
        return dataclasses.replace(self, best_trial=chosen.number, all_collapsed=True)

    def indistinguishable(self) -> list[int]:
        """The other completed, non-collapsed trials whose interval overlaps the chosen one's:
        on this sample they cannot be told apart from it."""
        chosen = self.chosen
        if chosen is None or chosen.interval is None or self.all_collapsed:
            return []
        return [t.number for t in self.complete
                if t.number != chosen.number and not t.collapsed and t.interval is not None
                and t.interval.overlaps(chosen.interval)]

    def verdict(self) -> str | None:
        """In plain words, why the choice means little; None when it stands."""
        if self.all_collapsed:
            return ALL_COLLAPSED_ADVICE[0].upper() + ALL_COLLAPSED_ADVICE[1:]
        chosen = self.chosen
        if chosen is None:
            return None
        collapsed = [t.number for t in self.complete if t.collapsed]
        notes = []
        if collapsed:
            notes.append(f"trial(s) {_numbers(collapsed)} collapsed (no active unit or a rate "
                         f"below {MIN_RATE_NATS} nats), so the choice was among the others only")
        ties = self.indistinguishable()
        if ties:
            others = "; ".join(f"trial {t.number} {t.value:.4g} {t.interval}" for t in self.trials
                               if t.number in ties and t.value is not None)
            notes.append(
                f"the chosen trial {chosen.number} ({self.objective_metric} {chosen.value:.4g} "
                f"{chosen.interval}) cannot be told apart from {others}: their "
                "intervals overlap, so their order may be noise, not a better beta; more "
                "trial steps, more validation images or more seeds narrow the intervals")
        elif chosen.interval is None and self.objective.direction == "maximize" and len(self.complete) > 1:
            notes.append("the trials reported no interval, so whether the difference is "
                         "more than noise is unknown")
        if not notes:
            return None
        text = "; ".join(notes) + "."
        return text[0].upper() + text[1:]

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"format": STUDY_FORMAT, **dataclasses.asdict(self)}
        d["best_params"], d["best_value"] = self.best_params, self.best_value  # for readers
        d["indistinguishable"] = self.indistinguishable()
        return d

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "study") -> Study:
        if not isinstance(d, dict) or d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{source}: expected a {STUDY_FORMAT} study (written by the tune step), "
                             f"got format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}")
        missing = sorted({"trials", "objective_metric", "best_trial"} - set(d))
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        try:
            trials = [_trial_from_dict(t) for t in d["trials"]]
            return cls(objective_metric=d["objective_metric"], trials=trials,
                       best_trial=d["best_trial"],
                       direction=d.get("direction", objective(d["objective_metric"]).direction),
                       algorithm=d.get("algorithm", ""), all_collapsed=bool(d.get("all_collapsed")))
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    def write(self, path: str | Path) -> None:
        from kubevae.storage import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> Study:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the study: {e}") from None
        return cls.from_dict(json.loads(text), source=str(path))


def _trial_from_dict(t: dict[str, Any]) -> Trial:
    interval = t.get("interval")
    return Trial(number=int(t["number"]), params=dict(t["params"]), value=t.get("value"),
                 state=str(t["state"]), metrics=dict(t.get("metrics") or {}),
                 interval=Interval(**interval) if interval else None)


def _numbers(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)
