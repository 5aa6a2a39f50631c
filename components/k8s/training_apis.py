"""The one place where the training API is chosen: `training_api("trainer" | "pytorchjob")`.

- trainer:    a TrainJob (trainer.kubeflow.org/v1alpha1), Kubeflow Trainer v2.3: the default,
              what current Kubeflow installs (Trainer v2 replaced the Training Operator).
- pytorchjob: a PyTorchJob (kubeflow.org/v1), Training Operator 1.9, for older clusters.

Both run the same `kubevae train` behind the same entry point, and both serve as Katib trials.
Each entry says how to build the job, where it lives in the API, which conditions end it,
which pod is its node 0 (Katib's primary pod: it carries the metrics collector), and the
shapes of its job that the controller's releases serve, newest first:

- trainer, runtimePatches        Trainer >= v2.2: the pod settings as one `runtimePatches`
                                 entry, the timeout as `activeDeadlineSeconds`.
- trainer, podTemplateOverrides  Trainer v2.1 (what Kubeflow 26.03 ships): the pod settings as
                                 one `podTemplateOverrides` entry, which cannot carry security
                                 contexts; no `activeDeadlineSeconds`, so the launcher bounds
                                 the job (it deletes it at its timeout).

An API server drops fields its CRD does not know unless it is asked for strict field
validation, so the launchers create with fieldValidation=Strict, and the tune and train steps
start with one strict server-side dry run of the job (`components.k8s.training_jobs.choose_shape`):
the newest shape the cluster accepts is used, for the job and for the trials Katib creates.

Everything that differs between the two APIs is an entry here: the builder, the Katib trial
template (components.k8s.katib), the launcher (components.k8s.training_jobs), the exit
handler's cleanup and the preflight's CRD check read the table, not the API's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.k8s import pytorchjob, trainjob, unknown_fields
from components.k8s.waiting import Target, condition_state

__all__ = ["TRAINING_APIS", "JobShape", "TrainingApi", "training_api", "unknown_fields"]

TRAINING_API_NAMES = ("trainer", "pytorchjob")


def _gjson(condition: str) -> str:
    """Katib's condition expression: a status condition of this type is True."""
    return f'status.conditions.#(type=="{condition}")#|#(status=="True")#'


@dataclass(frozen=True)
class JobShape:
    """One form of a training API's job, and the controller releases that serve it."""

    name: str
    releases: str  # the releases that serve it, as a person installs them ("Trainer >= v2.2")
    fields: tuple[str, ...] = ()  # the spec fields only this shape has (what a server may not know)
    job_deadline: bool = True  # the job carries its own deadline (else the launcher bounds it)
    pod_security: bool = True  # the pods' security contexts can be set
    build_kwargs: tuple[tuple[str, Any], ...] = ()  # what the builder is told to make this shape


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
    builder: Callable[..., Any]  # (TrainingJob, name=None, namespace=None, **shape kwargs) -> object
    shapes: tuple[JobShape, ...]  # newest first; the first is the default
    job_name_label: str  # the label that names the job on each of its pods
    primary: str  # node 0 as a message names it ("The Master")
    primary_pod_labels: dict[str, str] = field(default_factory=dict)  # node 0's pod among them

    def build(self, job: Any, name: str | None = None, namespace: str | None = None,
              shape: JobShape | None = None) -> Any:
        """The job (without `name`: a Katib trialSpec) in `shape`, by default the newest."""
        shape = shape or self.shapes[0]
        if shape not in self.shapes:
            raise ValueError(f"{self.kind}: no shape {shape.name!r} (expected one of "
                             f"{', '.join(s.name for s in self.shapes)})")
        return self.builder(job, name, namespace, **dict(shape.build_kwargs))

    def shape_named(self, name: str) -> JobShape:
        for shape in self.shapes:
            if shape.name == name:
                return shape
        raise ValueError(f"{self.kind}: no shape {name!r} (expected one of {', '.join(s.name for s in self.shapes)})")

    def older_than(self, shape: JobShape, rejected: list[str]) -> JobShape | None:
        """After a server refused `shape` naming `rejected` as unknown fields: the next older
        shape to try, or None when the refusal is not about this shape's own fields (then no
        other shape helps) or there is none."""
        if not any(r == f or r.startswith((f + ".", f + "[")) for r in rejected for f in shape.fields):
            return None
        later = self.shapes[self.shapes.index(shape) + 1:]
        return later[0] if later else None

    def unserved(self, refusals: list[tuple[JobShape, list[str]]]) -> str:
        """What to say when the cluster accepts none of the shapes tried."""
        tried = "; ".join(f"{', '.join(fields) or 'the ' + shape.name + ' shape'} (needs {shape.releases})"
                          for shape, fields in refusals)
        return (f"the cluster's {self.kind} CRD ({self.plural}.{self.group}/{self.version}) does not know "
                f"the fields kubevae needs: {tried}. kubevae's {self.kind} runs on "
                f"{' or on '.join(s.releases for s in self.shapes)}")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def target(self) -> Target:
        return Target(self.kind, self.group, self.version, self.plural)

    def state(self, obj: dict) -> tuple[str | None, str]:
        """The job's verdict from its conditions: succeeded, failed, or None (still running)."""
        return condition_state(obj, self.success, self.failure)

    def primary_selector(self, name: str) -> str:
        """The label selector of node 0's pod of job `name`."""
        return ",".join(f"{k}={v}" for k, v in {self.job_name_label: name, **self.primary_pod_labels}.items())

    @property
    def success_condition(self) -> str:
        return _gjson(self.success)

    @property
    def failure_condition(self) -> str:
        return _gjson(self.failure)


# The TrainJob shapes, newest first (Trainer's trainjob_types.go: runtimePatches and
# activeDeadlineSeconds came in v2.2.0 and replaced podTemplateOverrides).
RUNTIME_PATCHES = JobShape(
    name=trainjob.RUNTIME_PATCHES, releases="Kubeflow Trainer >= v2.2",
    fields=("spec.runtimePatches", "spec.activeDeadlineSeconds"),
    build_kwargs=(("shape", trainjob.RUNTIME_PATCHES),))
POD_TEMPLATE_OVERRIDES = JobShape(
    name=trainjob.POD_TEMPLATE_OVERRIDES, releases="Kubeflow Trainer v2.1 (what Kubeflow 26.03 ships)",
    fields=("spec.podTemplateOverrides",), job_deadline=False, pod_security=False,
    build_kwargs=(("shape", trainjob.POD_TEMPLATE_OVERRIDES),))
PYTORCHJOB_V1 = JobShape(name="pytorchjob-v1", releases="Training Operator 1.9")

TRAINING_APIS = {
    "trainer": TrainingApi(
        name="trainer", kind=trainjob.KIND, group=trainjob.GROUP, version=trainjob.VERSION,
        plural=trainjob.PLURAL, container=trainjob.NODE, success=trainjob.SUCCESS,
        failure=trainjob.FAILURE, job_name_label=trainjob.JOBSET_NAME_LABEL, primary="Node 0",
        primary_pod_labels=dict(trainjob.NODE0_LABELS),
        builder=trainjob.build_trainjob, shapes=(RUNTIME_PATCHES, POD_TEMPLATE_OVERRIDES)),
    "pytorchjob": TrainingApi(
        name="pytorchjob", kind=pytorchjob.KIND, group=pytorchjob.GROUP, version=pytorchjob.VERSION,
        plural=pytorchjob.PLURAL, container=pytorchjob.CONTAINER, success=pytorchjob.SUCCESS,
        failure=pytorchjob.FAILURE, job_name_label=pytorchjob.JOB_NAME_LABEL, primary="The Master",
        primary_pod_labels=dict(pytorchjob.MASTER_LABELS),
        builder=pytorchjob.build_pytorchjob, shapes=(PYTORCHJOB_V1,)),
}


def training_api(name: str) -> TrainingApi:
    if name not in TRAINING_APIS:
        raise ValueError(f"training_api: expected one of {', '.join(TRAINING_API_NAMES)} (trainer: a "
                         f"Kubeflow Trainer v2 TrainJob; pytorchjob: Training Operator 1.9), got {name!r}")
    return TRAINING_APIS[name]
