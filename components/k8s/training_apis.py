"""The one place where the training API is chosen: `training_api("trainer" | "pytorchjob")`.

- trainer:    a TrainJob (trainer.kubeflow.org/v1alpha1), Kubeflow Trainer v2.3: the default,
              what current Kubeflow installs (Trainer v2 replaced the Training Operator).
- pytorchjob: a PyTorchJob (kubeflow.org/v1), Training Operator 1.9, for older clusters.

Both run the same `kubevae train` behind the same entry point, and both serve as Katib trials.
Each entry says how to build the job, where it lives in the API, which conditions end it and
which pod is its node 0 (Katib's primary pod: it carries the metrics collector).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.k8s import pytorchjob, trainjob

TRAINING_API_NAMES = ("trainer", "pytorchjob")


def _gjson(condition: str) -> str:
    """Katib's condition expression: a status condition of this type is True."""
    return f'status.conditions.#(type=="{condition}")#|#(status=="True")#'


@dataclass(frozen=True)
class TrainingApi:
    name: str
    kind: str
    group: str
    version: str
    plural: str
    container: str  # the training container; Katib's primaryContainerName
    success: str  # condition types that end the job
    failure: str
    build: Callable[..., Any]  # (TrainingJob, name=None, namespace=None) -> SDK object
    primary_pod_labels: dict[str, str] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def success_condition(self) -> str:
        return _gjson(self.success)

    @property
    def failure_condition(self) -> str:
        return _gjson(self.failure)


TRAINING_APIS = {
    "trainer": TrainingApi(
        name="trainer", kind=trainjob.KIND, group=trainjob.GROUP, version=trainjob.VERSION,
        plural=trainjob.PLURAL, container=trainjob.NODE, success=trainjob.SUCCESS,
        failure=trainjob.FAILURE, primary_pod_labels=dict(trainjob.NODE0_LABELS),
        build=trainjob.build_trainjob),
    "pytorchjob": TrainingApi(
        name="pytorchjob", kind=pytorchjob.KIND, group=pytorchjob.GROUP, version=pytorchjob.VERSION,
        plural=pytorchjob.PLURAL, container=pytorchjob.CONTAINER, success="Succeeded",
        failure="Failed", primary_pod_labels={"training.kubeflow.org/job-role": "master"},
        build=pytorchjob.build_pytorchjob),
}


def training_api(name: str) -> TrainingApi:
    if name not in TRAINING_APIS:
        raise ValueError(f"training_api: expected one of {', '.join(TRAINING_API_NAMES)} (trainer: a "
                         f"Kubeflow Trainer v2 TrainJob; pytorchjob: Training Operator 1.9), got {name!r}")
    return TRAINING_APIS[name]
