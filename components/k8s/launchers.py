"""Submit Katib Experiments, TrainJobs, PyTorchJobs and InferenceServices, and wait for them.

Reusable for any such resource, not only kubevae's. Every call goes through a `KubeApi`
(a CustomObjectsApi and a CoreV1Api, or fakes with the same methods): the tests pass a
recording fake, and the RBAC Role in manifests/ grants exactly the calls made here:

  experiments.kubeflow.org          create, get, list, watch, delete
  trials.kubeflow.org               list                     (every trial of the study)
  trainjobs.trainer.kubeflow.org    create, list, watch, delete
  pytorchjobs.kubeflow.org          create, get, list, watch, delete
  inferenceservices.serving.kserve.io  create, get, list, watch, patch, delete
  pods                              get, list                (node 0's pod and its state)
  pods/log                          get                      (streamed into the step's log)

Waiting lists the object, then watches it from that resourceVersion in chunks of `poll_s`
seconds (re-listing when the watch expires with 410 Gone); between chunks the new log lines of
the job's node 0 (the PyTorchJob Master, the TrainJob's node-0 pod) are printed. A TrainJob ends
with its Complete or Failed condition. A timeout deletes the Experiment or job (so that it stops
holding GPUs) and raises ResourceTimeout; a failure raises ResourceFailed with the
resource's own reason, message and where to look.

Every create and patch asks for strict field validation (fieldValidation=Strict): by default an
API server drops the fields its CRD does not know and answers 201, so a job meant for a newer
controller would run without its pod settings. `choose_shape` makes one strict server-side dry
run (dryRun=All) of a training job per shape its TrainingApi knows, newest first, and returns
the newest the cluster accepts: the tune and train steps call it before they create anything.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from components.k8s import inferenceservice as isvc_kind
from components.k8s import katib as katib_kind
from components.k8s import pytorchjob as job_kind
from components.k8s import to_dict, unknown_fields
from components.k8s import trainjob as trainjob_kind
from components.k8s.training_apis import JobShape, TrainingApi
from kubevae.study import Study, Trial, trial_from_line
from kubevae.study import objective as search_objective

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Unknown fields are an error, not silently dropped (the API server's default is Warn).
STRICT = "Strict"
# Pod states that never resolve by waiting: fail at once instead of at the timeout.
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError"}


class ResourceFailed(RuntimeError):
    pass


class ResourceTimeout(TimeoutError):
    pass


@dataclass
class KubeApi:
    """The Kubernetes API surface the launchers use."""

    custom: Any  # kubernetes.client.CustomObjectsApi or a fake with its methods
    core: Any  # kubernetes.client.CoreV1Api or a fake with its methods


def connect() -> KubeApi:
    """In a pod: its service account. Elsewhere: the current kubeconfig context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api_client = client.ApiClient()
    return KubeApi(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))


def current_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (a Kubeflow profile namespace for pipeline steps)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


@dataclass(frozen=True)
class Waiting:
    timeout_s: float = 6 * 3600
    poll_s: float = 15.0
    clock: Callable[[], float] = time.monotonic


NO_RUSH = Waiting()  # the default: six hours, polled every 15 s


@dataclass
class Target:
    """Where a custom resource lives in the API."""

    kind: str
    group: str
    version: str
    plural: str


EXPERIMENT = Target(katib_kind.KIND, katib_kind.GROUP, katib_kind.VERSION, katib_kind.PLURAL)
PYTORCHJOB = Target(job_kind.KIND, job_kind.GROUP, job_kind.VERSION, job_kind.PLURAL)
TRAINJOB = Target(trainjob_kind.KIND, trainjob_kind.GROUP, trainjob_kind.VERSION, trainjob_kind.PLURAL)
INFERENCESERVICE = Target(isvc_kind.KIND, isvc_kind.GROUP, isvc_kind.VERSION, isvc_kind.PLURAL)


# -- watching one object -------------------------------------------------------------------
def wait_for(api: KubeApi, target: Target, namespace: str, name: str,
             state: Callable[[dict], tuple[str | None, str]], waiting: Waiting,
             on_update: Callable[[dict], None] = lambda obj: None,
             between: Callable[[], None] = lambda: None) -> dict:
    """Wait until `state(obj)` says "succeeded" (returns the object) or "failed" (raises
    ResourceFailed with its message); ResourceTimeout after waiting.timeout_s."""
    from kubernetes import watch

    where = f"{target.kind} {namespace}/{name}"
    deadline = waiting.clock() + waiting.timeout_s
    obj, version = _list_one(api, target, namespace, name)
    while True:
        if obj is not None:
            on_update(obj)
            verdict, message = state(obj)
            if verdict == "succeeded":
                return obj
            if verdict == "failed":
                raise ResourceFailed(f"{where} failed: {message}")
        remaining = deadline - waiting.clock()
        if remaining <= 0:
            raise ResourceTimeout(f"{where} did not finish within {waiting.timeout_s:.0f}s "
                                  f"(last state: {state(obj)[1] if obj else 'not found'})")
        between()
        stream = watch.Watch().stream(
            api.custom.list_namespaced_custom_object, target.group, target.version, namespace,
            target.plural, field_selector=f"metadata.name={name}", resource_version=version,
            timeout_seconds=max(1, int(min(remaining, waiting.poll_s))))
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise ResourceFailed(f"{where} was deleted while waiting for it")
                if event["type"] in ("ADDED", "MODIFIED"):
                    obj = event["raw_object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    break  # judge it at the top of the loop
        except ApiException as e:
            if e.status != 410:
                raise
            obj, version = _list_one(api, target, namespace, name)  # the watch expired: re-list
        finally:
            stream.close()


def _list_one(api: KubeApi, target: Target, namespace: str, name: str) -> tuple[dict | None, str]:
    listing = api.custom.list_namespaced_custom_object(
        target.group, target.version, namespace, target.plural, field_selector=f"metadata.name={name}")
    items = listing.get("items") or []
    return (items[0] if items else None), listing.get("metadata", {}).get("resourceVersion", "")


def condition_state(obj: dict, success: str = "Succeeded", failure: str = "Failed") -> tuple[str | None, str]:
    """A Katib/Training Operator style verdict from status.conditions."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = [c for c in conditions if c.get("status") == "True"]
    for c in true:
        if c.get("type") == failure:
            return "failed", f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    for c in true:
        if c.get("type") == success:
            return "succeeded", c.get("message", success)
    latest = true[-1]["type"] if true else "Pending"
    return None, latest


def delete_unfinished(api: KubeApi, target: Target, namespace: str, label_selector: str,
                      state: Callable[[dict], tuple[str | None, str]]) -> list[str]:
    """Delete the objects with these labels that have not finished (finished ones stay, for
    inspection); one line per deletion. A kind the cluster does not serve is skipped."""
    try:
        listing = api.custom.list_namespaced_custom_object(target.group, target.version, namespace,
                                                           target.plural, label_selector=label_selector)
    except ApiException as e:
        if e.status == 404:  # the CRD is not installed (no Training Operator, say)
            return []
        raise
    done = []
    for obj in listing.get("items") or []:
        name = obj["metadata"]["name"]
        verdict, latest = state(obj)
        if verdict is not None:
            continue
        try:
            api.custom.delete_namespaced_custom_object(target.group, target.version, namespace, target.plural, name)
            done.append(f"deleted {target.kind} {namespace}/{name} (it was still {latest})")
        except ApiException as e:
            done.append(_describe_api_error(f"could not delete {target.kind} {namespace}/{name}", e))
    return done


def _describe_api_error(action: str, error: BaseException) -> str:
    cause = error if isinstance(error, ApiException) else error.__cause__ or error.__context__
    if isinstance(cause, ApiException):
        return f"{action}: HTTP {cause.status} {cause.reason}: {cause.body}"
    return f"{action}: {error}"


def _dummy_configuration():
    from kubernetes.client import Configuration

    return Configuration()  # the SDK clients' own transport is replaced by the KubeApi's


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
                raise ResourceFailed(_describe_api_error(
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


# -- Katib ---------------------------------------------------------------------------------
class KatibLauncher:
    """Create an Experiment with KatibClient, wait for it, read its optimal trial."""

    TRIAL_STATES = {"Succeeded": "COMPLETE", "EarlyStopped": "PRUNED", "Failed": "FAIL",
                    "MetricsUnavailable": "FAIL", "Killed": "FAIL"}

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        from kubeflow.katib import KatibClient

        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        self.client = KatibClient(client_configuration=_dummy_configuration(), namespace=namespace)
        self.client.custom_api, self.client.core_api = api.custom, api.core

    def create(self, experiment) -> str:
        name = experiment.metadata.name
        try:  # not KatibClient.create_experiment: it cannot ask for strict field validation
            self.api.custom.create_namespaced_custom_object(
                EXPERIMENT.group, EXPERIMENT.version, self.namespace, EXPERIMENT.plural, to_dict(experiment),
                field_validation=STRICT)
        except Exception as e:
            raise ResourceFailed(_describe_api_error(f"creating Experiment {self.namespace}/{name}", e)) from e
        self.log(f"created Experiment {self.namespace}/{name}")
        return name

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
        try:
            self.client.delete_experiment(name, self.namespace)
            self.log(f"deleted Experiment {self.namespace}/{name}")
        except Exception as e:  # the timeout is the error worth reporting; say this one too
            self.log(_describe_api_error(f"could not delete Experiment {self.namespace}/{name}", e))

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


# -- PyTorchJob ----------------------------------------------------------------------------
class PyTorchJobLauncher:
    """Create a PyTorchJob with TrainingClient, wait for it, stream the Master's log."""

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        from kubeflow.training import TrainingClient

        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        self.client = TrainingClient(client_configuration=_dummy_configuration(), namespace=namespace,
                                     job_kind=job_kind.KIND)
        self.client.custom_api, self.client.core_api = api.custom, api.core

    def create(self, job) -> str:
        name = job.metadata.name
        try:  # not TrainingClient.create_job: it cannot ask for strict field validation
            self.api.custom.create_namespaced_custom_object(
                PYTORCHJOB.group, PYTORCHJOB.version, self.namespace, PYTORCHJOB.plural, to_dict(job),
                field_validation=STRICT)
        except Exception as e:
            raise ResourceFailed(_describe_api_error(f"creating PyTorchJob {self.namespace}/{name}", e)) from e
        self.log(f"created PyTorchJob {self.namespace}/{name}")
        return name

    def wait(self, name: str, container: str = job_kind.CONTAINER):
        """Wait for Succeeded, printing the Master's log as it grows; the final job (SDK model)."""
        def master() -> list[str]:
            return [p.metadata.name for p in self.client.get_job_pods(name, self.namespace, is_master=True)]

        logs = _LogFollower(self.api, self.namespace, f"PyTorchJob {self.namespace}/{name}", master,
                            container, self.log)
        _wait_job(self.api, PYTORCHJOB, self.namespace, name, condition_state, self.waiting, logs, self.delete,
                  f"Master log above; all pods: `kubectl -n {self.namespace} get pods "
                  f"-l training.kubeflow.org/job-name={name}`")
        return self.client.get_job(name, self.namespace)

    def delete(self, name: str) -> None:
        try:
            self.client.delete_job(name, self.namespace)
            self.log(f"deleted PyTorchJob {self.namespace}/{name}")
        except Exception as e:
            self.log(_describe_api_error(f"could not delete PyTorchJob {self.namespace}/{name}", e))


def _wait_job(api: KubeApi, target: Target, namespace: str, name: str, state, waiting: Waiting,
              logs: _LogFollower, delete: Callable[[str], None], hint: str) -> dict:
    """Wait for a training job, streaming node 0's log; delete it at the timeout (it holds
    GPUs), and say where to look when it failed."""
    try:
        final = wait_for(api, target, namespace, name, state, waiting, between=logs.poll)
    except ResourceTimeout:
        logs.poll()
        delete(name)
        raise
    except ResourceFailed as e:
        logs.poll()
        raise ResourceFailed(f"{e}. {hint}") from None
    logs.poll()  # the last lines
    return final


class TrainJobLauncher:
    """Create a TrainJob (Kubeflow Trainer v2), wait for its Complete or Failed condition, and
    stream node 0's log. No SDK client: the CustomObjectsApi calls are few and plain."""

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        t = TRAINJOB
        self._path = (t.group, t.version, namespace, t.plural)

    def create(self, job) -> str:
        body = to_dict(job)
        name = body["metadata"]["name"]
        try:
            self.api.custom.create_namespaced_custom_object(*self._path, body, field_validation=STRICT)
        except ApiException as e:
            raise ResourceFailed(_describe_api_error(f"creating TrainJob {self.namespace}/{name}", e)) from e
        self.log(f"created TrainJob {self.namespace}/{name}")
        return name

    def wait(self, name: str, container: str = trainjob_kind.NODE) -> dict:
        """Wait for Complete, printing node 0's log as it grows; the final TrainJob (JSON)."""
        def node0() -> list[str]:
            pods = self.api.core.list_namespaced_pod(self.namespace,
                                                     label_selector=trainjob_kind.node0_selector(name))
            return sorted(p.metadata.name for p in pods.items)

        where = f"TrainJob {self.namespace}/{name}"
        logs = _LogFollower(self.api, self.namespace, where, node0, container, self.log)
        state = lambda obj: condition_state(obj, trainjob_kind.SUCCESS, trainjob_kind.FAILURE)  # noqa: E731
        return _wait_job(self.api, TRAINJOB, self.namespace, name, state, self.waiting, logs, self.delete,
                         f"Node 0's log above; all pods: `kubectl -n {self.namespace} get pods "
                         f"-l {trainjob_kind.JOBSET_NAME_LABEL}={name}`")

    def delete(self, name: str) -> None:
        try:
            self.api.custom.delete_namespaced_custom_object(*self._path, name)
            self.log(f"deleted TrainJob {self.namespace}/{name}")
        except ApiException as e:
            self.log(_describe_api_error(f"could not delete TrainJob {self.namespace}/{name}", e))


class _LogFollower:
    """Prints the new lines of a job's node-0 container on every poll. Lines are asked for with
    the kubelet's timestamps, and those at or before the last printed one are skipped, so a
    line is printed once even though the reads overlap."""

    def __init__(self, api: KubeApi, namespace: str, where: str, find_pods: Callable[[], list[str]],
                 container: str, log: Callable[[str], None]):
        self.api, self.namespace, self.where, self.find_pods = api, namespace, where, find_pods
        self.container, self.log = container, log
        self.pod: str | None = None
        self.last = ""

    def poll(self) -> None:
        pod = self._pod()
        if pod is None:
            return
        try:
            text = self.api.core.read_namespaced_pod_log(pod, self.namespace, container=self.container,
                                                         timestamps=True)
        except ApiException as e:
            if e.status in (400, 404):  # not started yet (init container), or being replaced
                return
            raise
        for line in (text or "").splitlines():
            stamp, _, message = line.partition(" ")
            key = _sortable_time(stamp)
            if key > self.last:
                self.log(message)
                self.last = key

    def _pod(self) -> str | None:
        if self.pod is None:
            pods = self.find_pods()
            if not pods:
                return None
            self.pod = pods[0]
        try:
            pod = self.api.core.read_namespaced_pod(self.pod, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            self.pod = None  # replaced (a restarted job makes new pods): find it again next time
            return None
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        for s in statuses:
            waiting = s.state.waiting if s.state else None
            if waiting and waiting.reason in FATAL_WAITING:
                raise ResourceFailed(f"{self.where}: pod {self.pod} container "
                                     f"{s.name}: {waiting.reason}: {waiting.message}")
        return self.pod if pod.status.phase != "Pending" else None


def _sortable_time(stamp: str) -> str:
    """RFC 3339 with nanoseconds, fixed width (Go trims trailing zeros, which breaks sorting)."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{(frac if dot else '').ljust(9, '0')}"


# -- InferenceService ----------------------------------------------------------------------
@dataclass
class Rollout:
    status: str  # "ready" (new service), "promoted" (canary took all traffic), "replaced"
    # (canary_percent 0), "rolled_back" (the previous model serves again)
    url: str
    smoke: dict[str, Any]


CANARY_RUN = "kubevae.io/canary-run"  # annotation: the KFP run whose canary is in flight


class InferenceServiceLauncher:
    """Create an InferenceService, or update one: through a canary that is smoke-tested, then
    promoted (all traffic) or rolled back (all traffic to the previous model), or, with
    canary_percent 0, directly (smoke-tested, and the previous predictor restored on failure).

    The canary follows the deployment mode (components.k8s.inferenceservice):
      Knative          predictor.canaryTrafficPercent; promote: remove it; roll back: 0
      Standard         spec.canary[] = [{predictor: {name: C, ...}, trafficPercent}]; promote:
                       the stable predictor becomes the canary's (named C), canary removed;
                       roll back: canary removed
      Standard-direct  no canary: an update with canary_percent > 0 fails before any change
    While a canary is in flight the service carries the CANARY_RUN annotation, so that the
    run's exit handler can roll back a canary that its failed run left half-rolled."""

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        t = INFERENCESERVICE
        self._path = (t.group, t.version, namespace, t.plural)

    def get(self, name: str) -> dict | None:
        try:
            return self.api.custom.get_namespaced_custom_object(*self._path, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise ResourceFailed(_describe_api_error(f"reading InferenceService {self.namespace}/{name}", e)) from e

    def deploy(self, isvc, smoke: Callable[[str, str], dict[str, Any]], canary_percent: int = 10,
               mode: str = "Knative", run_id: str = "", canary_name: str = "canary") -> Rollout:
        isvc_kind.check_deployment_mode(mode)
        body = to_dict(isvc)
        name = body["metadata"]["name"]
        model = _model_name(body)
        if not 0 <= canary_percent < 100:
            raise ValueError(f"canary_percent: expected 0 (replace directly) or a canary of 1..99 percent, "
                             f"got {canary_percent}")
        existing = self.get(name)
        if existing is None:
            return self._first(name, body, model, smoke)
        running = _deployment_mode(existing)
        if running and running != isvc_kind.DEPLOYMENT_MODES[mode]:
            raise ResourceFailed(f"InferenceService {self.namespace}/{name} runs in deployment mode {running}, "
                                 f"but deployment_mode={mode}: KServe cannot switch an existing service; "
                                 f"use deployment_mode={running} or delete the service first")
        if canary_percent == 0:
            return self._direct(name, body, existing, model, smoke)
        if mode not in isvc_kind.CANARY_MODES:
            raise ResourceFailed(
                f"deployment_mode={mode} has no canary (spec.canary[] needs KServe >= 0.20 in Standard mode "
                f"with the Gateway API; canaryTrafficPercent works only in Knative mode), but "
                f"canary_percent={canary_percent}: nothing was changed. Set canary_percent=0 to replace "
                f"the served model directly, or deployment_mode=Knative or Standard")
        meta = {"labels": body["metadata"].get("labels"),
                "annotations": {**(body["metadata"].get("annotations") or {}), CANARY_RUN: run_id or "unknown"}}
        if mode == "Knative":
            predictor = {**body["spec"]["predictor"], "canaryTrafficPercent": canary_percent}
            patch = {"metadata": meta, "spec": {"predictor": predictor}}
        else:
            patch = {"metadata": meta, "spec": {"canary": [isvc_kind.canary_entry(
                body["spec"]["predictor"], canary_name, canary_percent)]}}
        patched = self._patch(name, patch)
        self.log(f"InferenceService {self.namespace}/{name}: {mode} canary with {canary_percent}% of the traffic")
        try:
            ready = self._wait_ready(name, patched["metadata"]["generation"],
                                     canary_name if mode == "Standard" else None)
            url = canary_url(ready) if mode == "Knative" else standard_canary_url(ready, canary_name)
            result = smoke(url, model)
        except Exception as e:  # not ready, failed, timed out, or the smoke test failed
            self.log(f"InferenceService {self.namespace}/{name}: canary rejected ({e}); rolling back")
            back = self.rollback(name, mode)
            return Rollout("rolled_back", service_url(back), {"error": str(e)})
        promote: dict[str, Any]
        if mode == "Knative":
            promote = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        else:
            promote = {"spec": {"predictor": {**body["spec"]["predictor"], "name": canary_name}, "canary": None}}
        promote["metadata"] = {"annotations": {CANARY_RUN: None}}
        promoted = self._patch(name, promote)
        final = self._wait_ready(name, promoted["metadata"]["generation"])
        self.log(f"InferenceService {self.namespace}/{name}: canary promoted to all traffic")
        return Rollout("promoted", service_url(final), result)

    def rollback(self, name: str, mode: str) -> dict:
        """All traffic back to the previous model; the service once Ready again."""
        canary = {"canaryTrafficPercent": 0} if mode == "Knative" else None
        patch = {"metadata": {"annotations": {CANARY_RUN: None}},
                 "spec": {"predictor": canary} if mode == "Knative" else {"canary": None}}
        rolled = self._patch(name, patch)
        return self._wait_ready(name, rolled["metadata"]["generation"])

    def _direct(self, name: str, body: dict, existing: dict, model: str, smoke) -> Rollout:
        previous = existing["spec"]["predictor"]
        self.log(f"InferenceService {self.namespace}/{name}: canary_percent=0, replacing the model directly "
                 f"(no canary: the new model takes all traffic once Ready)")
        predictor = {**body["spec"]["predictor"], "canaryTrafficPercent": None}
        patched = self._patch(name, {"metadata": {"labels": body["metadata"].get("labels")},
                                     "spec": {"predictor": predictor}})
        try:
            ready = self._wait_ready(name, patched["metadata"]["generation"])
            url = service_url(ready)
            result = smoke(url, model)
        except Exception as e:
            self.log(f"InferenceService {self.namespace}/{name}: new model rejected ({e}); restoring the previous one")
            restore = {k: None for k in predictor if k not in previous}
            restored = self._patch(name, {"spec": {"predictor": {**restore, **previous}}})
            back = self._wait_ready(name, restored["metadata"]["generation"])
            return Rollout("rolled_back", service_url(back), {"error": str(e)})
        return Rollout("replaced", url, result)

    def _first(self, name: str, body: dict, model: str, smoke) -> Rollout:
        try:
            created = self.api.custom.create_namespaced_custom_object(*self._path, body, field_validation=STRICT)
        except ApiException as e:
            raise ResourceFailed(_describe_api_error(f"creating InferenceService {self.namespace}/{name}", e)) from e
        self.log(f"created InferenceService {self.namespace}/{name}")
        ready = self._wait_ready(name, created["metadata"].get("generation", 1))
        url = service_url(ready)
        try:
            result = smoke(url, model)
        except Exception as e:
            self._delete(name)  # nothing to fall back to: do not leave a broken service behind
            raise ResourceFailed(f"InferenceService {self.namespace}/{name} failed its smoke test at {url}: "
                                 f"{e}; it was deleted") from e
        return Rollout("ready", url, result)

    def _patch(self, name: str, patch: dict) -> dict:
        try:
            return self.api.custom.patch_namespaced_custom_object(*self._path, name, patch,
                                                                  field_validation=STRICT)
        except ApiException as e:
            where = f"patching InferenceService {self.namespace}/{name}"
            rejected = unknown_fields(f"{e.reason} {e.body}") if e.status == 400 else []
            if rejected:  # a field this cluster's KServe does not serve: nothing was changed
                raise ResourceFailed(f"{where}: {isvc_kind.unserved(rejected)}") from e
            raise ResourceFailed(_describe_api_error(where, e)) from e

    def _delete(self, name: str) -> None:
        try:
            self.api.custom.delete_namespaced_custom_object(*self._path, name)
            self.log(f"deleted InferenceService {self.namespace}/{name}")
        except ApiException as e:
            self.log(_describe_api_error(f"could not delete InferenceService {self.namespace}/{name}", e))

    def _wait_ready(self, name: str, generation: int, canary: str | None = None) -> dict:
        return wait_for(self.api, INFERENCESERVICE, self.namespace, name,
                        lambda obj: ready_state(obj, generation, canary), self.waiting)


def _deployment_mode(obj: dict) -> str | None:
    """Knative or Standard: the annotation, else what KServe reports (legacy names normalized)."""
    mode = ((obj.get("metadata") or {}).get("annotations") or {}).get(isvc_kind.DEPLOYMENT_MODE) \
        or (obj.get("status") or {}).get("deploymentMode")
    return isvc_kind.LEGACY_MODES.get(mode, mode) if mode else None


def canary_in_flight(obj: dict) -> str | None:
    """The deployment mode of a canary this service holds (Knative or Standard), else None."""
    spec = obj.get("spec") or {}
    if spec.get("canary"):
        return "Standard"
    if (spec.get("predictor") or {}).get("canaryTrafficPercent") not in (None, 100):
        return "Knative"
    return None


def standard_canary_url(obj: dict, canary: str) -> str:
    """A spec.canary[] predictor's own Service, in-cluster: KServe names it NAME-CANARY-predictor."""
    meta = obj.get("metadata") or {}
    return f"http://{meta['name']}-{canary}-predictor.{meta.get('namespace')}.svc.cluster.local"


def ready_state(obj: dict, generation: int, canary: str | None = None) -> tuple[str | None, str]:
    """Ready once KServe has reconciled `generation` (the spec we wrote) and says Ready=True
    (and, for a spec.canary[] predictor, its canaryStatuses entry is ready)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration", 0) < generation:  # older conditions say nothing about it
        return None, f"generation {generation} not reconciled yet"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("PredictorReady", "Ready"):
        c = conditions.get(kind) or {}
        if c.get("status") == "False" and c.get("reason") == "RevisionFailed":
            return "failed", f"{kind}: {c.get('reason')}: {c.get('message', '')}"
    ready = conditions.get("Ready") or {}
    if ready.get("status") == "True":
        if canary is not None:
            entry = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == canary), None)
            if not (entry and entry.get("ready")):
                return None, f"canary {canary} not ready yet"
        return "succeeded", "Ready"
    return None, f"Ready={ready.get('status', 'Unknown')} {ready.get('reason', '')}".strip()


def service_url(obj: dict) -> str:
    """The cluster-local address of the service (reachable from the pipeline's pods)."""
    status = obj.get("status") or {}
    url = ((status.get("address") or {}).get("url")) or status.get("url")
    if not url:
        raise ResourceFailed(f"InferenceService {obj['metadata']['name']} is Ready but has no URL")
    return url


def canary_url(obj: dict) -> str:
    """The newest revision alone (tag routing's `latest` tag), addressed in-cluster.

    Its status URL (latest-NAME-predictor.NS.example.com) is the external domain, which usually
    does not resolve inside a pod; Knative also makes a cluster-local Service per tag, named
    like the URL's first label."""
    predictor = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    namespace = (obj.get("metadata") or {}).get("namespace")
    for target in predictor.get("traffic") or []:
        if target.get("tag") == "latest" and target.get("url"):
            host = urllib.parse.urlsplit(target["url"]).hostname or ""
            if namespace and host:
                return f"http://{host.split('.')[0]}.{namespace}.svc.cluster.local"
            return target["url"]
    return service_url(obj)


def _model_name(body: dict) -> str:
    args = body["spec"]["predictor"]["containers"][0].get("args") or []
    return args[args.index("--model-name") + 1] if "--model-name" in args else body["metadata"]["name"]
