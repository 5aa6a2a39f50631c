"""A Katib Experiment (kubeflow.org/v1beta1, Katib 0.19) whose trials are TrainJobs or PyTorchJobs.

The trial template is the TrainJob of `components.k8s.trainjob` (Katib 0.19 runs TrainJob
trials: primaryContainerName `node`, node 0 as the primary pod), in the shape the cluster's
Trainer serves, or the PyTorchJob of `components.k8s.pytorchjob`, as
`components.k8s.training_apis` chooses, with the search-space
values as `${trialParameters.NAME}` placeholders in the `kubevae train` flags. Katib's StdOut
collector reads the per-epoch `name=value` lines (`epoch=3 ... val_mig=0.21 ...`),
timestamped by the container's entry point. The objective's direction (`objective.type`) comes
from kubevae.study.OBJECTIVES, the same table the local Optuna study reads, and it
is judged on its latest value; the negative ELBO, its reconstruction and KL terms, the active
units and the collapse flag are `additionalMetricNames`. `medianstop` reads the objective per
epoch, as the local median pruner does.

Algorithms: tpe (default), random, grid, bayesianoptimization, hyperband (the local backend runs
each with its Optuna counterpart). Grid needs finite sets, so double ranges become
`grid_points` values (geometric for log ranges). Hyperband varies a resource parameter
(`steps`, optimizer steps, by default) that must be in the search space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from kubeflow.katib import (
    V1beta1AlgorithmSetting,
    V1beta1AlgorithmSpec,
    V1beta1CollectorSpec,
    V1beta1EarlyStoppingSetting,
    V1beta1EarlyStoppingSpec,
    V1beta1Experiment,
    V1beta1ExperimentSpec,
    V1beta1MetricsCollectorSpec,
    V1beta1MetricStrategy,
    V1beta1ObjectiveSpec,
    V1beta1TrialParameterSpec,
    V1beta1TrialTemplate,
)
from kubernetes.client import V1ObjectMeta

from components.k8s import to_dict
from components.k8s.contract import COMMON_LABELS
from components.k8s.jobspec import TrainingJob
from components.k8s.training_apis import TRAINING_APIS, JobShape, TrainingApi
from components.search_space import SearchSpace

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"
TRIAL_PLURAL = "trials"
ALGORITHMS = ("tpe", "random", "grid", "bayesianoptimization", "hyperband")
SEEDED_ALGORITHMS = ("tpe", "random", "bayesianoptimization")  # accept a random_state setting
TRIAL_NAME_PARAMETER = "trialName"  # ${trialSpec.Name}: per-trial checkpoints and MLflow run names


@dataclass(frozen=True)
class Tuning:
    """How Katib searches."""

    algorithm: str = "tpe"
    objective_metric: str = "val_mig"
    objective_type: str = "maximize"  # Tuning.for_objective takes it from the objective
    additional_metrics: tuple[str, ...] = ("val_neg_elbo", "val_recon", "val_kl", "val_psnr",
                                           "val_active_units", "collapsed", "step")
    max_trials: int = 8
    parallel_trials: int = 2
    max_failed_trials: int = 2
    early_stopping: bool = True  # medianstop
    median_min_trials: int = 3
    median_start_step: int = 2
    grid_points: int = 5
    hyperband_resource: str = "steps"
    hyperband_eta: int = 3
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.objective_type not in ("minimize", "maximize"):
            raise ValueError(f"objective_type: expected minimize or maximize, got {self.objective_type!r}")
        if self.max_trials < 1 or self.parallel_trials < 1 or self.max_failed_trials < 0:
            raise ValueError(f"trial counts: expected max_trials >= 1, parallel_trials >= 1, "
                             f"max_failed_trials >= 0; got {self.max_trials}, "
                             f"{self.parallel_trials}, {self.max_failed_trials}")
        if self.parallel_trials > self.max_trials:
            raise ValueError(f"parallel_trials ({self.parallel_trials}) exceeds max_trials ({self.max_trials})")
        if self.max_failed_trials > self.max_trials:
            raise ValueError(f"max_failed_trials ({self.max_failed_trials}) exceeds max_trials ({self.max_trials})")
        if self.objective_metric in self.additional_metrics:
            object.__setattr__(self, "additional_metrics",
                               tuple(m for m in self.additional_metrics if m != self.objective_metric))
        if self.algorithm == "hyperband" and self.objective_metric == "udr":
            raise ValueError("algorithm: hyperband stops trials on their per-epoch objective, but "
                             "udr is scored once, after all seeds of a trial; use tpe, random, "
                             "bayesianoptimization or grid with udr")

    @classmethod
    def for_objective(cls, objective_metric: str, **kwargs: Any) -> Tuning:
        """Tuning whose objective.type is the objective's own direction, and whose additional
        metrics hold the objective's interval bounds where it has one (Katib records only the
        metrics it declares, so the study would otherwise lose them)."""
        from kubevae.study import interval_keys, objective

        spec = objective(objective_metric)
        extra = interval_keys(objective_metric) if spec.interval else ()
        additional = (*kwargs.pop("additional_metrics", cls.additional_metrics), *extra)
        return cls(objective_metric=objective_metric, objective_type=spec.direction,
                   additional_metrics=tuple(additional), **kwargs)


def trial_placeholders(space: SearchSpace) -> dict[str, str]:
    return {name: f"${{trialParameters.{name}}}" for name in space.names}


def build_experiment(name: str, namespace: str | None, space: SearchSpace, trial: TrainingJob,
                     tuning: Tuning = Tuning(), api: TrainingApi = TRAINING_APIS["trainer"],
                     labels: dict[str, str] | None = None, shape: JobShape | None = None) -> V1beta1Experiment:
    """The Experiment. `trial.train_args` holds the fixed `kubevae train` flags; the
    search-space flags are appended as placeholders. Katib's success and failure conditions
    and primary pod labels for the kind are written out, so the template says what it does.
    The trial is the job in `shape` (default: the newest), the one the cluster's controller
    accepted in the tune step's dry run: Katib creates the trials without strict field
    validation, so a field the cluster does not know would be dropped silently."""
    _check_algorithm(space, tuning)
    template_job = replace(trial, train_args=(
        *_without_resource_flag(trial.train_args, tuning),
        *space.train_args(trial_placeholders(space)),
        "--run-name", f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}"),
        checkpoint_folder=f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}", component="tune-trial")
    trial_spec = to_dict(api.build(template_job, shape=shape))  # no name: Katib names the trials
    trial_parameters = [V1beta1TrialParameterSpec(name=n, reference=n, description=f"search-space {n}")
                        for n in space.names]
    trial_parameters.append(V1beta1TrialParameterSpec(
        name=TRIAL_NAME_PARAMETER, reference="${trialSpec.Name}", description="the trial's name"))
    return V1beta1Experiment(
        api_version=API_VERSION, kind=KIND,
        metadata=V1ObjectMeta(name=name, namespace=namespace,
                              labels={**COMMON_LABELS, "app.kubernetes.io/component": "tune",
                                      **(labels or {})}),
        spec=V1beta1ExperimentSpec(
            objective=V1beta1ObjectiveSpec(
                type=tuning.objective_type, objective_metric_name=tuning.objective_metric,
                additional_metric_names=list(tuning.additional_metrics) or None,
                metric_strategies=[V1beta1MetricStrategy(name=tuning.objective_metric, value="latest")]),
            algorithm=_algorithm(space, tuning),
            early_stopping=_early_stopping(tuning),
            metrics_collector_spec=V1beta1MetricsCollectorSpec(collector=V1beta1CollectorSpec(kind="StdOut")),
            max_trial_count=tuning.max_trials, parallel_trial_count=tuning.parallel_trials,
            max_failed_trial_count=tuning.max_failed_trials,
            parameters=space.to_katib(grid_points=tuning.grid_points if tuning.algorithm == "grid" else None),
            trial_template=V1beta1TrialTemplate(
                primary_container_name=api.container, primary_pod_labels=dict(api.primary_pod_labels),
                success_condition=api.success_condition, failure_condition=api.failure_condition,
                trial_parameters=trial_parameters, trial_spec=trial_spec)))


def trial_instance(experiment: dict[str, Any], name: str, namespace: str | None) -> dict[str, Any]:
    """One trial's job as Katib creates it from the Experiment (JSON): the trialSpec with every
    `${trialParameters.X}` replaced (search-space parameters by the lower end of their range or
    their first value, the trial name by `name`), named `name`. What the tune step dry-runs."""
    import json

    spec = experiment["spec"]
    values = {TRIAL_NAME_PARAMETER: name}
    for p in spec.get("parameters") or []:
        space = p.get("feasibleSpace") or {}
        values[p["name"]] = str(space["min"] if "min" in space else (space.get("list") or ["0"])[0])
    text = json.dumps(spec["trialTemplate"]["trialSpec"])
    for p in spec["trialTemplate"]["trialParameters"]:
        reference = p["reference"]
        value = name if reference == "${trialSpec.Name}" else values[reference]
        text = text.replace(f"${{trialParameters.{p['name']}}}", value)
    job = json.loads(text)
    job["metadata"] = {**(job.get("metadata") or {}), "name": name,
                       **({"namespace": namespace} if namespace else {})}
    return job


def hyperband_min_parallel(space: SearchSpace, tuning: Tuning) -> int:
    """Katib's hyperband needs parallelTrialCount >= eta ** s_max, s_max = floor(log_eta(r_l))."""
    resource = next(p for p in space.parameters if p.name == tuning.hyperband_resource)
    s_max = int(math.log(resource.bounds[1]) / math.log(tuning.hyperband_eta))
    return int(math.ceil(tuning.hyperband_eta ** s_max))


def _check_algorithm(space: SearchSpace, tuning: Tuning) -> None:
    if tuning.algorithm != "hyperband":
        return
    if tuning.hyperband_resource not in space.names:
        raise ValueError(f"hyperband: the search space needs the resource parameter "
                         f"{tuning.hyperband_resource!r} (e.g. Parameter('epochs', 'int', 1, 9))")
    needed = hyperband_min_parallel(space, tuning)
    if tuning.parallel_trials < needed:
        raise ValueError(f"hyperband: parallel_trials must be at least {needed} for this resource range "
                         f"(Katib's rule: eta ** s_max), got {tuning.parallel_trials}")


def _algorithm(space: SearchSpace, tuning: Tuning) -> V1beta1AlgorithmSpec:
    settings: list[tuple[str, Any]] = []
    if tuning.algorithm in SEEDED_ALGORITHMS and tuning.seed is not None:
        settings.append(("random_state", tuning.seed))
    if tuning.algorithm == "hyperband":
        resource = next(p for p in space.parameters if p.name == tuning.hyperband_resource)
        settings += [("resource_name", tuning.hyperband_resource), ("eta", tuning.hyperband_eta),
                     ("r_l", int(resource.bounds[1]))]
    return V1beta1AlgorithmSpec(
        algorithm_name=tuning.algorithm,
        algorithm_settings=[V1beta1AlgorithmSetting(name=k, value=str(v)) for k, v in settings] or None)


def _early_stopping(tuning: Tuning) -> V1beta1EarlyStoppingSpec | None:
    if not tuning.early_stopping:
        return None
    return V1beta1EarlyStoppingSpec(algorithm_name="medianstop", algorithm_settings=[
        V1beta1EarlyStoppingSetting(name="min_trials_required", value=str(tuning.median_min_trials)),
        V1beta1EarlyStoppingSetting(name="start_step", value=str(tuning.median_start_step))])


def _without_resource_flag(args: tuple[str, ...], tuning: Tuning) -> tuple[str, ...]:
    """Hyperband sets --steps per trial; a fixed --steps would contradict it."""
    if tuning.algorithm != "hyperband":
        return args
    from kubevae.training.command import flag as train_flag

    flag = train_flag(tuning.hyperband_resource)
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        out.append(a)
    return tuple(out)
