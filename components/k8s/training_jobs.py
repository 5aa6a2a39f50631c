"""Run a training job (a TrainJob or a PyTorchJob, as its TrainingApi entry says): choose the
shape the cluster serves, create it, wait for it while node 0's log streams into the step's log,
delete it at the timeout (it holds GPUs).

`choose_shape` makes one strict server-side dry run (dryRun=All) of a training job per shape
its TrainingApi knows, newest first, and returns the newest the cluster accepts: the tune and
train steps call it before they create anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from components.k8s import to_dict, unknown_fields
from components.k8s.logs import LogFollower
from components.k8s.training_apis import JobShape, TrainingApi
from components.k8s.waiting import (
    NO_RUSH,
    STRICT,
    KubeApi,
    ResourceFailed,
    ResourceTimeout,
    Waiting,
    create,
    delete,
    describe_api_error,
    wait_for,
)


class TrainingJobLauncher:
    """Create a training job of `training`'s API, wait for its success or failure condition,
    and stream node 0's log. No SDK client: the CustomObjectsApi calls are few and plain."""

    def __init__(self, training: TrainingApi, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        self.training, self.api, self.namespace, self.waiting, self.log = training, api, namespace, waiting, log

    def create(self, job: Any) -> str:
        return create(self.api, self.training.target, self.namespace, job, self.log)["metadata"]["name"]

    def wait(self, name: str) -> dict:
        """Wait for success, printing node 0's log as it grows; the final job (JSON). Deleted
        at the timeout; a failure says where to look."""
        t = self.training
        where = f"{t.kind} {self.namespace}/{name}"
        logs = LogFollower(self.api, self.namespace, where, t.primary_selector(name), t.container, self.log)
        try:
            final = wait_for(self.api, t.target, self.namespace, name, t.state, self.waiting, between=logs.poll)
        except ResourceTimeout:
            logs.poll()
            self.delete(name)
            raise
        except ResourceFailed as e:
            logs.poll()
            raise ResourceFailed(f"{e}. {t.primary}'s log above; all pods: "
                                 f"`kubectl -n {self.namespace} get pods -l {t.job_name_label}={name}`") from None
        logs.poll()  # the last lines
        return final

    def delete(self, name: str) -> None:
        delete(self.api, self.training.target, self.namespace, name, self.log)


# -- which shape of a training job the cluster serves ----------------------------------------
def choose_shape(api: KubeApi, namespace: str, training: TrainingApi, build: Callable[[JobShape], Any],
                 log: Callable[[str], None] = print) -> JobShape:
    """The newest shape of `training`'s job that the cluster accepts. `build(shape)` makes the
    job (with a name) in that shape; each is created with dryRun=All and strict field
    validation, so nothing is persisted, and the controller's admission webhook sees it too.
    A refusal that names the shape's own fields as unknown moves to the next older shape; any
    other refusal, or one of the last shape, raises ResourceFailed naming the fields and the
    releases that serve them. An API with one shape needs no dry run."""
    if len(training.shapes) == 1:
        return training.shapes[0]
    refusals: list[tuple[JobShape, list[str]]] = []
    shape: JobShape | None = training.shapes[0]
    while shape is not None:
        body = to_dict(build(shape))
        where = f"{training.kind} {namespace}/{body['metadata']['name']}"
        try:
            api.custom.create_namespaced_custom_object(training.group, training.version, namespace,
                                                       training.plural, body, dry_run="All",
                                                       field_validation=STRICT)
        except ApiException as e:
            rejected = unknown_fields(f"{e.reason} {e.body}")
            if e.status != 400 or not rejected:
                raise ResourceFailed(describe_api_error(
                    f"dry run of {where} (nothing was created)", e)) from e
            refusals.append((shape, rejected))
            older = training.older_than(shape, rejected)
            if older is None:
                raise ResourceFailed(f"dry run of {where} (nothing was created): "
                                     f"{training.unserved(refusals)}") from e
            log(f"{where}: the cluster does not know {', '.join(rejected)} ({shape.releases}); "
                f"trying the {older.name} shape ({older.releases})")
            shape = older
            continue
        log(f"{where}: the cluster accepts the {shape.name} shape ({shape.releases}; dry run)")
        return shape
    raise AssertionError("unreachable: the loop returns or raises")
