"""What the tune, train and deploy steps ask of a backend, and what they get back.

Two backends implement this: `local` (Optuna, torchrun, the KServe ModelServer on loopback) and
`kubernetes` (a Katib Experiment, a PyTorchJob, a KServe InferenceService). The pipeline
components only ever see these dataclasses and `components.backends.get_backend(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from components.base import IMAGE
from components.search_space import SearchSpace


@dataclass
class ClusterSettings:
    """Where and how cluster resources run. Ignored by the local backend."""

    namespace: str = ""  # "" = the namespace this pod runs in
    image: str = IMAGE
    service_account: str = "kubevae-pipeline-runner"
    s3_secret: str = "kubevae-s3"  # a Secret holding the S3 credentials (never in parameters)
    storage_service_account: str = "kubevae-kserve-s3"
    timeout_seconds: int = 6 * 3600
    training_api: str = "trainer"  # components.k8s.training_apis: trainer (TrainJob) or pytorchjob
    deployment_mode: str = "Knative"  # components.k8s.inferenceservice.DEPLOYMENT_MODES
    run_id: str = ""  # the KFP run: labels what it creates, so that its exit handler finds it


@dataclass
class TuneRequest:
    name: str
    data_dir: str  # the split folder on this machine (the artifact's local path)
    data_uri: str  # the same folder as a URI a pod can read (s3://... on a cluster)
    search_space: SearchSpace
    work_dir: str  # scratch for trial outputs
    algorithm: str = "tpe"
    objective_metric: str = "val_neg_elbo"  # minimized; never the beta-weighted loss
    max_trials: int = 8
    parallel_trials: int = 1
    max_failed_trials: int = 2
    trial_epochs: int = 2
    batch_size: int = 64
    trial_workers: int = 1
    gpus_per_worker: int = 0
    seed: int = 0
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # COMPLETE, PRUNED, FAIL


@dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_value: float
    trials: list[TrialRecord]


@dataclass
class TrainRequest:
    name: str
    data_dir: str
    data_uri: str
    params: dict[str, Any]  # search-space values, e.g. {"beta": 4.0, "latent_dim": 10}
    out_dir: str  # the model folder to write (the Model artifact's local path)
    out_uri: str  # the same as a URI a pod can write
    epochs: int = 10
    batch_size: int = 64
    workers: int = 1
    gpus_per_worker: int = 0
    seed: int = 0
    extra_args: list[str] = field(default_factory=list)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class TrainResult:
    model_dir: str
    metrics: dict[str, Any]


@dataclass
class DeployRequest:
    model_name: str
    model_dir: str
    model_uri: str  # storageUri of the InferenceService (s3://...)
    manifest_dir: str  # where the InferenceService YAML that is applied gets written
    canary_percent: int = 10
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class DeployResult:
    endpoint: str  # a URL, or local+<model folder> for the local backend
    manifest_path: str
    status: str  # "ready", "promoted", "replaced", "rolled_back"
    smoke: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def tune(self, request: TuneRequest) -> TuneResult: ...

    def train(self, request: TrainRequest) -> TrainResult: ...

    def deploy(self, request: DeployRequest) -> DeployResult: ...

    def smoke_test(self, endpoint: str, model_name: str, model_dir: str) -> dict[str, Any]: ...
