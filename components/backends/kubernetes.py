"""The kubernetes backend: a Katib Experiment, a TrainJob (or PyTorchJob) and a KServe InferenceService.

Before it creates a TrainJob or an Experiment with TrainJob trials, a step makes one strict
server-side dry run of the job (training_jobs.choose_shape): Trainer >= v2.2 gets runtimePatches
and activeDeadlineSeconds, Trainer v2.1 (Kubeflow 26.03) podTemplateOverrides, and a Trainer
that serves neither fails the step before anything is created. With ClusterSettings.queue_name
the TrainJob or PyTorchJob, and each trial's job, carries Kueue's kueue.x-k8s.io/queue-name
label (on the job, not its pods): Kueue admits it when the LocalQueue's quota allows.

- tune:   a Katib Experiment (tpe by default, medianstop, StdOut metrics) whose trials are
          TrainJobs (or PyTorchJobs: ClusterSettings.training_api) running `kubevae train` on
          the split in object storage; waited on, its optimal trial and every trial read back.
- train:  a TrainJob on the torch runtime (or a PyTorchJob: Master + Workers), restarting
          OnFailure and resuming from checkpoints; node 0's log is streamed into this step's
          log; node 0 uploads the model to the Model artifact's URI, and it is downloaded into
          the artifact's local folder.
- deploy: an InferenceService with the kubevae predictor on the model's s3:// URI, in the
          deployment mode asked for; an existing one is updated through a canary (Knative:
          canaryTrafficPercent; Standard: spec.canary[]) that is smoke-tested, then promoted
          or rolled back, or with canary_percent 0 replaced directly.
- cleanup: what a failed run left behind (its exit handler): Experiments, TrainJobs and
          PyTorchJobs of the run that still run are deleted, its half-rolled canary rolled back.

Pods read data from and write models to S3-compatible storage (the KFP artifact store); their
credentials come from the `kubevae-s3` Secret, the endpoint from the `kubevae-settings`
ConfigMap (manifests/). This step's own pod needs the same two as environment variables to
download the trained model.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.backends.base import (
    ClusterSettings,
    DeployRequest,
    DeployResult,
    TrainRequest,
    TrainResult,
    TuneRequest,
    train_options,
    trial_options,
)
from components.k8s import to_dict, waiting
from components.k8s.canary import CANARY_RUN, InferenceServiceLauncher, canary_in_flight
from components.k8s.contract import RUN_LABEL
from components.k8s.experiments import EXPERIMENT, KatibLauncher
from components.k8s.inferenceservice import build_inference_service, storage_uri_for
from components.k8s.jobspec import TrainingJob
from components.k8s.katib import Tuning, build_experiment, trial_instance
from components.k8s.security import Resources
from components.k8s.training_apis import TRAINING_APIS, JobShape, training_api
from components.k8s.training_jobs import TrainingJobLauncher, choose_shape
from components.search_space import Parameter
from kubevae import objectstore
from kubevae.study import Study
from kubevae.training.command import train_argv

# MLflow settings a step's pod may have (from KFP's MLflow integration or the ConfigMap) that
# the training pods should share. Credentials are never copied into a resource's spec; the
# parent run comes on the request (`--parent-run-id`), not from this pod's environment.
MLFLOW_PASSTHROUGH = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
NAME_LIMIT = 40  # Katib and the Training Operator append suffixes to the names of what they create


@dataclass
class KubernetesOptions:
    """What the request dataclasses do not carry: sizes, and where checkpoints live."""

    trial_resources: Resources = field(default_factory=lambda: Resources(cpu="2", memory="8Gi"))
    train_resources: Resources = field(default_factory=lambda: Resources(cpu="4", memory="16Gi"))
    serve_resources: Resources = field(default_factory=lambda: Resources(cpu="1", memory="2Gi"))
    checkpoint_claim: str | None = None  # a ReadWriteMany PVC; None: an emptyDir per pod
    poll_s: float = 15.0
    deploy_timeout_s: float = 30 * 60  # a revision that is not Ready by then is rolled back


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, api: waiting.KubeApi | None = None, options: KubernetesOptions | None = None,
                 store: Callable[[], Any] = objectstore.client_from_env,
                 smoke: Callable[[str, str], dict[str, Any]] | None = None,
                 clock: Callable[[], float] | None = None, log: Callable[[str], None] = print,
                 suffix: Callable[[], str] = lambda: uuid.uuid4().hex[:6],
                 env: dict[str, str] | None = None):
        self._api, self.options, self._store, self._smoke = api, options or KubernetesOptions(), store, smoke
        self._clock, self.log, self._suffix = clock, log, suffix
        self._env = os.environ if env is None else env

    # -- tune -----------------------------------------------------------------------------
    def tune(self, request: TuneRequest) -> Study:
        namespace = self._namespace(request.cluster.namespace)
        name = self._name(request.name)
        api = training_api(request.cluster.training_api)
        # Katib creates the trials without strict validation and cannot be asked to dry-run:
        # one trial's job is dry-run here, and the Experiment gets the shape the cluster accepts.
        shape = choose_shape(self.api, namespace, api, lambda s: trial_instance(
            to_dict(self.tune_experiment(request, namespace, name, s)), f"{name}-dry-run", namespace), self.log)
        experiment = self.tune_experiment(request, namespace, name, shape)
        katib = KatibLauncher(self.api, namespace, self._waiting(request.cluster), self.log)
        name = katib.create(experiment)
        katib.wait(name)
        space = request.search_space
        study = katib.results(name, request.objective_metric, lambda a: _parse_known(space, a),
                              request.algorithm)
        missing = sorted(set(space.names) - set(study.best_params))
        if missing:
            raise waiting.ResourceFailed(f"Experiment {namespace}/{name}: the optimal trial has no "
                                           f"value for search-space parameter(s) {missing}")
        self.log(f"best trial {study.best_trial}: {study.best_params} "
                 f"{request.objective_metric}={study.best_value:.6g}")
        return study

    def tune_experiment(self, request: TuneRequest, namespace: str | None, name: str,
                        shape: JobShape | None = None):
        """The Katib Experiment that `tune` submits, its trials in `shape` (default: the newest)."""
        _require_object_uri("tune: data_uri", request.data_uri)
        space = request.search_space
        tuning = Tuning.for_objective(request.objective_metric, algorithm=request.algorithm,
                                      max_trials=request.max_trials,
                                      parallel_trials=request.parallel_trials,
                                      max_failed_trials=request.max_failed_trials, seed=request.seed,
                                      grid_points=space.grid_points(request.max_trials))
        fixed = trial_options(request)
        if tuning.algorithm == "hyperband":  # hyperband decides each trial's steps
            fixed.pop(tuning.hyperband_resource)
            space = space.with_parameter(Parameter(tuning.hyperband_resource, "int", 1,
                                                   max(2, request.trial_steps)))
        api = training_api(request.cluster.training_api)
        trial = TrainingJob(
            image=request.cluster.image, train_args=tuple(train_argv(fixed)), data_uri=request.data_uri,
            workers=request.trial_workers, procs_per_pod=max(1, request.gpus_per_worker),
            resources=_with_gpus(self.options.trial_resources, request.gpus_per_worker),
            checkpoint_claim=self.options.checkpoint_claim, s3_secret=request.cluster.s3_secret,
            env=self._mlflow_env(), component="tune-trial", labels=run_labels(request.cluster),
            queue_name=request.cluster.queue_name)
        return build_experiment(name, namespace, space, trial, tuning, api=api,
                                labels=dict(run_labels(request.cluster)), shape=shape)

    # -- train ----------------------------------------------------------------------------
    def train(self, request: TrainRequest) -> TrainResult:
        from kubevae.storage import read_json

        namespace = self._namespace(request.cluster.namespace)
        api = training_api(request.cluster.training_api)
        name = self._name(request.name)
        shape = choose_shape(self.api, namespace, api, lambda s: self.train_job(request, namespace, name, s),
                             self.log)
        job = self.train_job(request, namespace, name, shape)
        if not shape.job_deadline:
            self.log(f"{api.kind} {namespace}/{name}: {shape.releases} has no activeDeadlineSeconds; this "
                     f"step deletes the job if it has not finished within {request.cluster.timeout_seconds}s")
        if not shape.pod_security:
            self.log(f"{api.kind} {namespace}/{name}: {shape.releases} cannot set the pods' security "
                     f"contexts; they run as the image's non-root user with the runtime's defaults")
        launcher = TrainingJobLauncher(api, self.api, namespace, self._waiting(request.cluster), self.log)
        launcher.wait(launcher.create(job))
        count = objectstore.download(self._store(), request.out_uri, request.out_dir)
        self.log(f"downloaded the model ({count} files) from {request.out_uri}")
        return TrainResult(request.out_dir, read_json(Path(request.out_dir) / "metrics.json"),
                           training_api=api.name)

    def train_job(self, request: TrainRequest, namespace: str | None, name: str, shape: JobShape | None = None):
        """The TrainJob or PyTorchJob (request.cluster.training_api) that `train` submits, in
        `shape` (default: the newest)."""
        _require_object_uri("train: data_uri", request.data_uri)
        _require_object_uri("train: out_uri", request.out_uri)
        args = tuple(train_argv(train_options(request)))
        job = TrainingJob(
            image=request.cluster.image, train_args=args, data_uri=request.data_uri,
            output_uri=request.out_uri, workers=request.workers,
            procs_per_pod=max(1, request.gpus_per_worker),
            resources=_with_gpus(self.options.train_resources, request.gpus_per_worker),
            checkpoint_claim=self.options.checkpoint_claim, checkpoint_folder=name,
            s3_secret=request.cluster.s3_secret, env=self._mlflow_env(),
            active_deadline_seconds=request.cluster.timeout_seconds, labels=run_labels(request.cluster),
            queue_name=request.cluster.queue_name)
        return training_api(request.cluster.training_api).build(job, name, namespace, shape)

    # -- deploy ---------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> DeployResult:
        import yaml

        from kubevae.storage import atomic_write_text

        namespace = self._namespace(request.cluster.namespace)
        isvc = self.inference_service(request, namespace)
        manifest = Path(request.manifest_dir) / "inferenceservice.yaml"
        atomic_write_text(manifest, yaml.safe_dump(to_dict(isvc), sort_keys=False))
        wait = self._waiting(request.cluster, min(request.cluster.timeout_seconds, self.options.deploy_timeout_s))
        kserve = InferenceServiceLauncher(self.api, namespace, wait, self.log)
        rollout = kserve.deploy(isvc, lambda url, model: self.smoke_test(url, model, request.model_dir),
                                canary_percent=request.canary_percent, mode=request.cluster.deployment_mode,
                                run_id=request.cluster.run_id, canary_name=f"c{self._suffix()[:5]}")
        return DeployResult(endpoint=rollout.url, manifest_path=str(manifest), status=rollout.status,
                            smoke=rollout.smoke)

    def inference_service(self, request: DeployRequest, namespace: str | None):
        """The InferenceService that `deploy` creates (or updates through a canary)."""
        _require_object_uri("deploy: model_uri", request.model_uri)
        return build_inference_service(request.model_name, namespace, request.cluster.image,
                                       storage_uri_for(request.model_uri),
                                       service_account=request.cluster.storage_service_account,
                                       resources=self.options.serve_resources,
                                       deployment_mode=request.cluster.deployment_mode)

    def cleanup(self, cluster: ClusterSettings, model_name: str) -> list[str]:
        """Delete the unfinished Experiments and jobs labelled with cluster.run_id and roll back
        the canary that run left on `model_name`; returns what was done, one line each."""
        if not cluster.run_id:
            return ["no run id: nothing can be attributed to this run, nothing was touched"]
        namespace = self._namespace(cluster.namespace)
        [(label, value)] = run_labels(cluster)
        actions: list[str] = []
        unfinished = [(EXPERIMENT, waiting.condition_state),
                      *((api.target, api.state) for api in TRAINING_APIS.values())]
        for target, state in unfinished:
            actions += waiting.delete_unfinished(self.api, target, namespace, f"{label}={value}", state)
        kserve = InferenceServiceLauncher(self.api, namespace, self._waiting(
            cluster, min(cluster.timeout_seconds, self.options.deploy_timeout_s)), self.log)
        isvc = kserve.get(model_name) if model_name else None
        annotations = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
        mode = canary_in_flight(isvc) if isvc else None
        if isvc and mode and annotations.get(CANARY_RUN) == cluster.run_id:
            kserve.rollback(model_name, mode)
            actions.append(f"rolled back the {mode} canary of InferenceService {namespace}/{model_name}")
        for line in actions:
            self.log(line)
        return actions or [f"nothing of run {cluster.run_id} was left running in {namespace}"]

    def smoke_test(self, endpoint: str, model_name: str, model_dir: str) -> dict[str, Any]:
        """One V1 and one V2 request against the endpoint."""
        if self._smoke is not None:
            return self._smoke(endpoint, model_name)
        from components.backends.smoke import smoke_test

        return smoke_test(endpoint, model_name)

    # -- helpers --------------------------------------------------------------------------
    @property
    def api(self) -> waiting.KubeApi:
        if self._api is None:
            self._api = waiting.connect()
        return self._api

    def _waiting(self, cluster, timeout_s: float | None = None) -> waiting.Waiting:
        kwargs = {"clock": self._clock} if self._clock else {}
        return waiting.Waiting(timeout_s=timeout_s or cluster.timeout_seconds, poll_s=self.options.poll_s,
                                 **kwargs)

    def _namespace(self, namespace: str) -> str:
        return namespace or waiting.current_namespace()

    def _name(self, base: str) -> str:
        stem = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-") or "kubevae"
        if not stem[0].isalpha():
            stem = f"kv-{stem}"
        suffix = self._suffix()
        return f"{stem[:NAME_LIMIT - len(suffix) - 1].rstrip('-')}-{suffix}"

    def _mlflow_env(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, self._env[k]) for k in MLFLOW_PASSTHROUGH if self._env.get(k))


def run_labels(cluster) -> tuple[tuple[str, str], ...]:
    """The label that ties a resource to its KFP run (a label value: 63 characters at most)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", cluster.run_id)[:63].strip("-_.")
    return ((RUN_LABEL, value),) if value else ()


def _require_object_uri(what: str, uri: str) -> None:
    if not objectstore.is_object_uri(uri):
        raise ValueError(f"{what}: the kubernetes backend needs an object-storage URI "
                         f"(s3://BUCKET/PREFIX or KFP's minio://...), got {uri!r}; run the pipeline "
                         f"on a KFP cluster, or use backend=local")


def _with_gpus(resources: Resources, gpus: int) -> Resources:
    from dataclasses import replace

    return replace(resources, gpus=gpus)


def _parse_known(space, assignments: dict[str, str]) -> dict[str, Any]:
    """A trial's typed values; a trial still pending may have none yet."""
    known = {k: v for k, v in assignments.items() if k in space.names}
    return space.parse(known) if len(known) == len(space.names) else dict(known)
