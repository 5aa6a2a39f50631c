"""The kubernetes backend driven through every path against the recording fake API.

tests/test_k8s_launchers.py asserts what each scenario did; tests/test_manifests.py takes the
union of the API calls they recorded and compares it with the RBAC Role in manifests/.
Object storage is a real S3-compatible server (moto) on loopback: the `s3` fixture of
tests/conftest.py, whose settings an S3 below holds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from k8s_checks import NEWEST, Releases
from k8s_fake import GONE, FakeCluster, failed, stamp, status_updates

from components.backends.base import ClusterSettings, DeployRequest, TrainRequest, TuneRequest
from components.backends.kubernetes import KubernetesBackend, KubernetesOptions
from components.search_space import default_search_space
from kubevae import objectstore

NAMESPACE = "team-a"
SUFFIX = "abc123"
BUCKET = "mlpipeline"
DATA_URI = f"minio://{BUCKET}/v2/artifacts/run-1/split/splits"
MODEL_URI = f"minio://{BUCKET}/v2/artifacts/run-1/train/model"
IMAGE = "registry.example.com/kubevae:test"
TIMEOUT_S = 3600


@dataclass
class S3:
    env: dict[str, str]

    def client(self):
        return objectstore.client_from_env(self.env)


@dataclass
class Outcome:
    cluster: FakeCluster
    result: Any = None
    error: BaseException | None = None
    log: list[str] = field(default_factory=list)
    smoke_urls: list[str] = field(default_factory=list)


def cluster_settings() -> ClusterSettings:
    return ClusterSettings(namespace=NAMESPACE, image=IMAGE, timeout_seconds=TIMEOUT_S, run_id="run-1")


def _backend(cluster: FakeCluster, out: Outcome, s3: S3 | None = None,
             smoke: Callable[[str, str], dict] | None = None) -> KubernetesBackend:
    def recording_smoke(url: str, model: str) -> dict:
        out.smoke_urls.append(url)
        return smoke(url, model) if smoke else {"v1": "ok", "v2": "ok"}

    return KubernetesBackend(api=cluster.api(), options=KubernetesOptions(poll_s=30),
                             store=(s3.client if s3 else lambda: None), smoke=recording_smoke,
                             clock=cluster.clock, log=out.log.append, suffix=lambda: SUFFIX,
                             env={"MLFLOW_TRACKING_URI": "http://kubevae-mlflow:5000",
                                  # the step pod's own nesting: never copied to the jobs
                                  "MLFLOW_PARENT_RUN_ID": "pod-env-parent",
                                  "MLFLOW_TRACKING_PASSWORD": "x"})


def _run(out: Outcome, action: Callable[[], Any]) -> Outcome:
    try:
        out.result = action()
    except Exception as e:  # the tests assert which error
        out.error = e
    return out


# -- tune ---------------------------------------------------------------------------------
def tune_request(tmp: Path, algorithm: str = "tpe", parallel: int = 2, api: str = "trainer",
                 queue_name: str = "") -> TuneRequest:
    return TuneRequest(name="kubevae-tune", data_dir=str(tmp / "splits"), data_uri=DATA_URI,
                       search_space=default_search_space(latent_dims=(4, 10)), work_dir=str(tmp / "trials"),
                       algorithm=algorithm, max_trials=3, parallel_trials=parallel, max_failed_trials=1,
                       trial_steps=4, objective_metric="val_neg_elbo", parent_run_id="tune-run-1",
                       cluster=replace(cluster_settings(), training_api=api, queue_name=queue_name))


EXPERIMENT_NAME = f"kubevae-tune-{SUFFIX}"


def _trial(name: str, beta: str, dim: str, state: str, value: str | None, created: int) -> dict:
    metrics = [{"name": "val_neg_elbo", "latest": value, "min": value, "max": value}] if value else []
    return {"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
            "metadata": {"name": name, "labels": {"katib.kubeflow.org/experiment": EXPERIMENT_NAME},
                         "creationTimestamp": stamp(created)},
            "spec": {"parameterAssignments": [{"name": "beta", "value": beta},
                                              {"name": "latent_dim", "value": dim}]},
            "status": {"conditions": [{"type": "Created", "status": "True"},
                                      {"type": state, "status": "True"}],
                       "observation": {"metrics": metrics}}}


def tune_succeeds(tmp: Path, api: str = "trainer", releases: Releases = NEWEST, queue_name: str = "") -> Outcome:
    cluster = FakeCluster(releases=releases)
    out = Outcome(cluster)
    for t in (_trial(f"{EXPERIMENT_NAME}-aaaa", "0.7", "4", "Succeeded", "830.5", 1),
              _trial(f"{EXPERIMENT_NAME}-bbbb", "3.2", "10", "Succeeded", "812.25", 2),
              _trial(f"{EXPERIMENT_NAME}-cccc", "12.0", "4", "EarlyStopped", "901.0", 3)):
        cluster.put("kubeflow.org", "trials", NAMESPACE, t)
    optimal = {"bestTrialName": f"{EXPERIMENT_NAME}-bbbb",
               "parameterAssignments": [{"name": "beta", "value": "3.2"}, {"name": "latent_dim", "value": "10"}],
               "observation": {"metrics": [{"name": "val_neg_elbo", "latest": "812.25", "min": "812.25",
                                            "max": "812.25"}]}}
    cluster.script("experiments",
                   status_updates("Created", "Running", trialsRunning=2),
                   GONE,  # the watch expires once: the launcher must re-list and go on
                   status_updates("Created", "Running", trialsSucceeded=2, trialsRunning=1),
                   status_updates("Created", "Succeeded", trialsSucceeded=2, trialsEarlyStopped=1,
                                  currentOptimalTrial=optimal))
    return _run(out, lambda: _backend(cluster, out).tune(tune_request(tmp, api=api, queue_name=queue_name)))


def tune_fails(tmp: Path) -> Outcome:
    cluster = FakeCluster()
    out = Outcome(cluster)
    cluster.script("experiments", status_updates("Created", "Running"),
                   failed("ExperimentMaxFailedTrialsReached", "Experiment has reached the maximum "
                                                              "number of failed trials"))
    return _run(out, lambda: _backend(cluster, out).tune(tune_request(tmp)))


def tune_times_out(tmp: Path) -> Outcome:
    cluster = FakeCluster()
    out = Outcome(cluster)
    cluster.script("experiments", status_updates("Created", "Running"))  # then nothing, ever
    return _run(out, lambda: _backend(cluster, out).tune(tune_request(tmp)))


# -- train --------------------------------------------------------------------------------
# Each train scenario runs against both training APIs: a TrainJob (Trainer v2, the default) and
# a PyTorchJob (Training Operator 1.9).
JOB_NAME = f"train-{SUFFIX}"
MASTER_POD = f"{JOB_NAME}-master-0"
NODE0_POD = f"{JOB_NAME}-node-0-0-x7k2p"  # JobSet's Job "<jobset>-node-0", completion index 0
PLURALS = {"trainer": "trainjobs", "pytorchjob": "pytorchjobs"}
SUCCEEDED = {"trainer": "Complete", "pytorchjob": "Succeeded"}


def train_request(tmp: Path, out_uri: str = MODEL_URI, api: str = "trainer", queue_name: str = "") -> TrainRequest:
    return TrainRequest(name="train", data_dir=str(tmp / "splits"), data_uri=DATA_URI,
                        params={"beta": 3.2, "latent_dim": 10}, out_dir=str(tmp / "model"),
                        out_uri=out_uri, steps=3, batch_size=128, workers=2, gpus_per_worker=1,
                        parent_run_id="train-step-run-1",
                        cluster=replace(cluster_settings(), training_api=api, queue_name=queue_name))


def node0_pod(api: str) -> str:
    return NODE0_POD if api == "trainer" else MASTER_POD


def _node0(cluster: FakeCluster, api: str, waiting: str | None = None) -> None:
    """Node 0's pod with the labels its controller gives it, and a worker pod beside it."""
    if api == "trainer":
        common = {"jobset.sigs.k8s.io/jobset-name": JOB_NAME, "jobset.sigs.k8s.io/replicatedjob-name": "node"}
        cluster.add_pod(NAMESPACE, NODE0_POD, {**common, "batch.kubernetes.io/job-completion-index": "0"},
                        waiting=waiting, container="node")
        cluster.add_pod(NAMESPACE, f"{JOB_NAME}-node-0-1-q9w8e",
                        {**common, "batch.kubernetes.io/job-completion-index": "1"}, container="node")
    else:
        cluster.add_pod(NAMESPACE, MASTER_POD, {"training.kubeflow.org/job-name": JOB_NAME,
                                                "training.kubeflow.org/job-role": "master",
                                                "training.kubeflow.org/replica-type": "master"},
                        waiting=waiting)


def _model_in_s3(s3: S3, uri: str) -> None:
    """What node 0's entry point uploads when `kubevae train` succeeded (with its completion
    marker, written last)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, content in (("config.json", b'{"latent_dim": 10}'), ("model.safetensors", b"\0" * 64),
                              ("metrics.json", json.dumps({"val_neg_elbo": 805.5, "epoch": 3}).encode())):
            (Path(tmp) / name).write_bytes(content)
        objectstore.upload(s3.client(), tmp, uri)


def train_succeeds(tmp: Path, s3: S3, api: str = "trainer", releases: Releases = NEWEST,
                   queue_name: str = "") -> Outcome:
    cluster = FakeCluster(releases=releases)
    out = Outcome(cluster)
    _node0(cluster, api)
    for t, line in enumerate(["epoch=1 step=10 val_neg_elbo=900.1", "epoch=2 step=20 val_neg_elbo=850.2",
                              "epoch=3 step=30 val_neg_elbo=805.5"]):
        cluster.log(NAMESPACE, node0_pod(api), at=10 * t, line=line)
    cluster.log(NAMESPACE, f"{JOB_NAME}-node-0-1-q9w8e", at=0, line="a worker's line, never streamed")
    _model_in_s3(s3, MODEL_URI)
    running = status_updates("Created", "Running") if api == "pytorchjob" else {"conditions": []}
    cluster.script(PLURALS[api], running,
                   lambda obj: (cluster.clock.advance(30), running)[1],
                   status_updates("Created", "Running", SUCCEEDED[api]) if api == "pytorchjob"
                   else status_updates(SUCCEEDED[api]))
    return _run(out, lambda: _backend(cluster, out, s3).train(train_request(tmp, api=api, queue_name=queue_name)))


def train_fails(tmp: Path, s3: S3, api: str = "trainer") -> Outcome:
    cluster = FakeCluster()
    out = Outcome(cluster)
    _node0(cluster, api)
    cluster.log(NAMESPACE, node0_pod(api), at=0, line="RuntimeError: CUDA out of memory")
    message = ("PyTorchJob train-abc123 is failed because 1 Master replica(s) failed." if api == "pytorchjob"
               else "jobset failed: job train-abc123-node-0 has failed (BackoffLimitExceeded)")
    cluster.script(PLURALS[api], status_updates("Created", "Running"), failed("JobFailed", message))
    return _run(out, lambda: _backend(cluster, out, s3).train(train_request(tmp, api=api)))


def train_times_out(tmp: Path, s3: S3, api: str = "trainer", releases: Releases = NEWEST) -> Outcome:
    cluster = FakeCluster(releases=releases)
    out = Outcome(cluster)
    _node0(cluster, api)
    cluster.script(PLURALS[api], status_updates("Created", "Running"))
    return _run(out, lambda: _backend(cluster, out, s3).train(train_request(tmp, api=api)))


def train_image_missing(tmp: Path, s3: S3, api: str = "trainer") -> Outcome:
    cluster = FakeCluster()
    out = Outcome(cluster)
    _node0(cluster, api, waiting="ImagePullBackOff")
    cluster.script(PLURALS[api], status_updates("Created"))
    return _run(out, lambda: _backend(cluster, out, s3).train(train_request(tmp, api=api)))


# -- deploy -------------------------------------------------------------------------------
SERVICE_URL = f"http://kubevae.{NAMESPACE}.svc.cluster.local"
CANARY_URL = f"http://latest-kubevae-predictor.{NAMESPACE}.example.com"  # the tag's status URL
# What the smoke test calls from inside the cluster: Knative's cluster-local Service of the tag.
CANARY_CLUSTER_URL = f"http://latest-kubevae-predictor.{NAMESPACE}.svc.cluster.local"


CANARY_NAME = f"c{SUFFIX[:5]}"
STANDARD_CANARY_URL = f"http://kubevae-{CANARY_NAME}-predictor.{NAMESPACE}.svc.cluster.local"


def deploy_request(tmp: Path, mode: str = "Knative", canary: int = 20) -> DeployRequest:
    return DeployRequest(model_name="kubevae", model_dir=str(tmp / "model"), model_uri=MODEL_URI,
                         manifest_dir=str(tmp / "isvc"), canary_percent=canary,
                         cluster=replace(cluster_settings(), deployment_mode=mode))


def _ready(tagged: bool = False) -> Callable[[dict], dict]:
    def status(obj: dict) -> dict:
        traffic = [{"revisionName": "kubevae-predictor-00001", "percent": 80, "tag": "prev"},
                   {"revisionName": "kubevae-predictor-00002", "percent": 20, "tag": "latest",
                    "latestRevision": True, "url": CANARY_URL}] if tagged else []
        return {"observedGeneration": obj["metadata"]["generation"],
                "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
                "address": {"url": SERVICE_URL}, "url": f"http://kubevae.{NAMESPACE}.example.com",
                "components": {"predictor": {"traffic": traffic}}}
    return status


def _standard_ready(canary_ready: bool = True) -> Callable[[dict], dict]:
    """Standard mode: Ready, and the spec.canary[] predictor's own status."""
    def status(obj: dict) -> dict:
        canaries = [{"name": c["predictor"]["name"], "ready": canary_ready, "trafficPercent": c["trafficPercent"]}
                    for c in obj["spec"].get("canary") or []]
        return {**_ready()(obj), "deploymentMode": "Standard", "canaryStatuses": canaries}
    return status


def _existing_service(cluster: FakeCluster, mode: str = "Knative", **annotations: str) -> None:
    cluster.put("serving.kserve.io", "inferenceservices", NAMESPACE, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "kubevae", "generation": 1,
                     "annotations": {"serving.kserve.io/deploymentMode": mode.split("-")[0], **annotations}},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": IMAGE,
                                               "env": [{"name": "STORAGE_URI", "value": "s3://mlpipeline/old"}]}]}},
        "status": _ready()({"metadata": {"generation": 1}})})


def _failing_smoke(message: str) -> Callable[[str, str], dict]:
    """A smoke test that fails the way a broken predictor does."""
    def broken(url: str, model: str) -> dict:
        raise RuntimeError(message)
    return broken


def _deploy(tmp: Path, *states: Any, mode: str = "Knative", canary: int = 20, existing: bool = True,
            smoke_error: str | None = None, releases: Releases = NEWEST) -> Outcome:
    """One deploy on a fake cluster (serving the CRDs of `releases`): an InferenceService
    already serving (unless `existing` is False), the statuses the controller reports after
    each change (`states`), and a smoke test that passes, or fails with `smoke_error`."""
    cluster = FakeCluster(releases=releases)
    out = Outcome(cluster)
    if existing:
        _existing_service(cluster, mode)
    if states:
        cluster.script("inferenceservices", *states)
    backend = _backend(cluster, out, smoke=_failing_smoke(smoke_error) if smoke_error else None)
    return _run(out, lambda: backend.deploy(deploy_request(tmp, mode, canary)))


def deploy_creates(tmp: Path) -> Outcome:
    missing = {"observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "False", "reason": "RevisionMissing"}]}
    return _deploy(tmp, missing, _ready(), existing=False)


def deploy_create_smoke_fails(tmp: Path) -> Outcome:
    return _deploy(tmp, _ready(), existing=False, smoke_error="V2 infer returned HTTP 500")


def deploy_canary_promoted(tmp: Path) -> Outcome:
    stale = lambda obj: {"observedGeneration": obj["metadata"]["generation"] - 1}  # noqa: E731
    return _deploy(tmp, stale, _ready(tagged=True), _ready())


def deploy_canary_rolled_back(tmp: Path) -> Outcome:
    return _deploy(tmp, _ready(tagged=True), _ready(), smoke_error="V1 predict returned HTTP 503")


def deploy_canary_revision_fails(tmp: Path) -> Outcome:
    failed_revision = lambda obj: {"observedGeneration": obj["metadata"]["generation"], "conditions": [  # noqa: E731
        {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed",
         "message": "Container failed with: ModuleNotFoundError"},
        {"type": "Ready", "status": "False", "reason": "RevisionFailed"}]}
    return _deploy(tmp, failed_revision, _ready())


def deploy_standard_canary_promoted(tmp: Path) -> Outcome:
    return _deploy(tmp, _standard_ready(canary_ready=False), _standard_ready(), _standard_ready(),
                   mode="Standard")


def deploy_standard_canary_rolled_back(tmp: Path) -> Outcome:
    return _deploy(tmp, _standard_ready(), _standard_ready(), mode="Standard",
                   smoke_error="V2 infer returned HTTP 500")


def deploy_without_canary_support_refuses_a_canary(tmp: Path) -> Outcome:
    return _deploy(tmp, mode="Standard-direct", canary=20)


def deploy_direct_replaces(tmp: Path) -> Outcome:
    return _deploy(tmp, _ready(), mode="Standard-direct", canary=0)


def deploy_direct_rolled_back(tmp: Path) -> Outcome:
    return _deploy(tmp, _ready(), _ready(), mode="Standard-direct", canary=0,
                   smoke_error="V1 predict returned HTTP 503")


# -- the exit handler's cleanup ----------------------------------------------------------------
RUN = {"kubevae.io/pipeline-run": "run-1"}


def _labelled(kind: str, api_version: str, name: str, labels: dict, conditions: list[str]) -> dict:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "labels": labels},
            "status": status_updates(*conditions)}


def cleanup_after_a_failed_run(tmp: Path, mode: str = "Knative") -> Outcome:
    """A run failed while its Experiment and one TrainJob still ran and its canary was half
    rolled; a finished TrainJob of the run and another run's TrainJob are left alone."""
    cluster = FakeCluster()
    out = Outcome(cluster)
    cluster.put("kubeflow.org", "experiments", NAMESPACE, _labelled(
        "Experiment", "kubeflow.org/v1beta1", "kubevae-tune-abc123", RUN, ["Created", "Running"]))
    for name, labels, conditions in (("train-abc123", RUN, []), ("train-old", RUN, ["Complete"]),
                                     ("train-other", {"kubevae.io/pipeline-run": "run-2"}, [])):
        cluster.put("trainer.kubeflow.org", "trainjobs", NAMESPACE, _labelled(
            "TrainJob", "trainer.kubeflow.org/v1alpha1", name, labels, conditions))
    _existing_service(cluster, mode, **{"kubevae.io/canary-run": "run-1"})
    isvc = cluster.objects[("serving.kserve.io", "inferenceservices", NAMESPACE, "kubevae")]
    if mode == "Knative":
        isvc["spec"]["predictor"]["canaryTrafficPercent"] = 20
    else:
        isvc["spec"]["canary"] = [{"predictor": {"name": "cabc12", "containers": []}, "trafficPercent": 20}]
    cluster.script("inferenceservices", _standard_ready() if mode == "Standard" else _ready())
    return _run(out, lambda: _backend(cluster, out).cleanup(cluster_settings(), "kubevae"))


SCENARIOS = {
    "tune_succeeds": tune_succeeds, "tune_fails": tune_fails, "tune_times_out": tune_times_out,
    "tune_succeeds_pytorchjob": functools.partial(tune_succeeds, api="pytorchjob"),
    **{f"{scenario.__name__}{'' if api == 'trainer' else '_' + api}": functools.partial(scenario, api=api)
       for scenario in (train_succeeds, train_fails, train_times_out, train_image_missing)
       for api in ("trainer", "pytorchjob")},
    "deploy_creates": deploy_creates,
    "deploy_create_smoke_fails": deploy_create_smoke_fails, "deploy_canary_promoted": deploy_canary_promoted,
    "deploy_canary_rolled_back": deploy_canary_rolled_back,
    "deploy_canary_revision_fails": deploy_canary_revision_fails,
    "deploy_standard_canary_promoted": deploy_standard_canary_promoted,
    "deploy_standard_canary_rolled_back": deploy_standard_canary_rolled_back,
    "deploy_without_canary_support_refuses_a_canary": deploy_without_canary_support_refuses_a_canary,
    "deploy_direct_replaces": deploy_direct_replaces, "deploy_direct_rolled_back": deploy_direct_rolled_back,
    "cleanup_after_a_failed_run": cleanup_after_a_failed_run,
    "cleanup_after_a_failed_run_standard": functools.partial(cleanup_after_a_failed_run, mode="Standard"),
}


def run_all(tmp: Path, s3: S3) -> dict[str, Outcome]:
    import inspect

    outcomes = {}
    for name, scenario in SCENARIOS.items():
        folder = tmp / name
        folder.mkdir()
        needs_s3 = "s3" in inspect.signature(scenario).parameters
        outcomes[name] = scenario(folder, s3) if needs_s3 else scenario(folder)
    return outcomes
