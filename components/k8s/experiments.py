"""Run a Katib Experiment: create it, wait for it (a progress line whenever the trial counts
change), read its trials back as the study (kubevae.study.Study), delete it at the timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from components.k8s import katib
from components.k8s.waiting import (
    NO_RUSH,
    KubeApi,
    ResourceFailed,
    ResourceTimeout,
    Target,
    Waiting,
    condition_state,
    create,
    delete,
    sdk_configuration,
    wait_for,
)
from kubevae.study import Study, Trial, trial_from_line
from kubevae.study import objective as search_objective

EXPERIMENT = Target(katib.KIND, katib.GROUP, katib.VERSION, katib.PLURAL)


class KatibLauncher:
    """Create an Experiment with KatibClient, wait for it, read its optimal trial."""

    TRIAL_STATES = {"Succeeded": "COMPLETE", "EarlyStopped": "PRUNED", "Failed": "FAIL",
                    "MetricsUnavailable": "FAIL", "Killed": "FAIL"}

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        from kubeflow.katib import KatibClient

        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        self.client = KatibClient(client_configuration=sdk_configuration(), namespace=namespace)
        self.client.custom_api, self.client.core_api = api.custom, api.core

    def create(self, experiment) -> str:
        # not KatibClient.create_experiment: it cannot ask for strict field validation
        return create(self.api, EXPERIMENT, self.namespace, experiment, self.log)["metadata"]["name"]

    def wait(self, name: str) -> dict:
        last = [""]

        def progress(obj: dict) -> None:
            s = obj.get("status") or {}
            line = (f"Experiment {name}: {condition_state(obj)[1]}; trials: {s.get('trialsSucceeded', 0)} "
                    f"succeeded, {s.get('trialsRunning', 0)} running, {s.get('trialsEarlyStopped', 0)} "
                    f"early-stopped, {s.get('trialsFailed', 0)} failed")
            if line != last[0]:
                self.log(line)
                last[0] = line

        try:
            return wait_for(self.api, EXPERIMENT, self.namespace, name, condition_state, self.waiting,
                            on_update=progress)
        except ResourceTimeout:
            self.delete(name)
            raise
        except ResourceFailed as e:
            raise ResourceFailed(f"{e}. Failed trials: `kubectl -n {self.namespace} get trials "
                                 f"-l katib.kubeflow.org/experiment={name}`") from None

    def results(self, name: str, objective_metric: str,
                parse: Callable[[dict[str, str]], dict[str, Any]] = dict, algorithm: str = "") -> Study:
        """The Experiment's trials (in creation order, numbered from 0) as the study, its
        optimal trial chosen; `parse` types a trial's parameter assignments."""
        optimal = self.client.get_optimal_hyperparameters(name, self.namespace)
        if optimal is None:
            raise ResourceFailed(f"Experiment {self.namespace}/{name} has no optimal trial: no trial "
                                 f"reported {objective_metric}")
        if _metric(optimal.observation, objective_metric) is None:
            raise ResourceFailed(f"Experiment {self.namespace}/{name}: the optimal trial has no "
                                 f"{objective_metric} observation")
        katib_trials = sorted(self.client.list_trials(name, self.namespace),
                              key=lambda t: (str(t.metadata.creation_timestamp or ""), t.metadata.name))
        names = [t.metadata.name for t in katib_trials]
        if optimal.best_trial_name not in names:
            raise ResourceFailed(f"Experiment {self.namespace}/{name}: the optimal trial "
                                 f"{optimal.best_trial_name} is not among its trials {names}")
        trials = [self._trial(i, t, objective_metric, parse) for i, t in enumerate(katib_trials)]
        return Study(objective_metric, trials, best_trial=names.index(optimal.best_trial_name),
                     direction=search_objective(objective_metric).direction, algorithm=algorithm)

    def delete(self, name: str) -> None:
        delete(self.api, EXPERIMENT, self.namespace, name, self.log)

    def _trial(self, number: int, trial, objective_metric: str,
               parse: Callable[[dict[str, str]], dict[str, Any]]) -> Trial:
        status = trial.status
        conditions = [c for c in (status.conditions if status else None) or [] if c.status == "True"]
        state = next((self.TRIAL_STATES[c.type] for c in reversed(conditions) if c.type in self.TRIAL_STATES),
                     "RUNNING")
        observation = status.observation if status else None
        return trial_from_line(number, parse({a.name: a.value for a in trial.spec.parameter_assignments or []}),
                               _metric(observation, objective_metric), state, _metrics(observation),
                               objective_metric)


def _metrics(observation) -> dict[str, float]:
    names = [m.name for m in (observation.metrics if observation else None) or []]
    values = {name: _metric(observation, name) for name in names}
    return {k: v for k, v in values.items() if v is not None}


def _metric(observation, name: str) -> float | None:
    for m in (observation.metrics if observation else None) or []:
        if m.name == name and m.latest not in (None, "", "unavailable"):
            try:
                return float(m.latest)
            except ValueError:
                return None
    return None
