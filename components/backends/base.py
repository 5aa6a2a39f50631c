"""What the tune, train and deploy steps ask of a backend, and what they get back.

Two backends implement this: `local` (Optuna, torchrun, the KServe ModelServer on loopback) and
`kubernetes` (a Katib Experiment, a PyTorchJob, a KServe InferenceService). The pipeline
components only ever see these dataclasses, the study they get back (kubevae.study.Study), and
`components.backends.get_backend(name)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.base import IMAGE
from components.k8s.contract import S3_SECRET
from components.search_space import SearchSpace
from kubevae.study import Study


@dataclass
class ClusterSettings:
    """Where and how cluster resources run. Ignored by the local backend."""

    namespace: str = ""  # "" = the namespace this pod runs in
    image: str = IMAGE
    service_account: str = "kubevae-pipeline-runner"
    s3_secret: str = S3_SECRET  # a Secret holding the S3 credentials (never in parameters)
    storage_service_account: str = "kubevae-kserve-s3"
    timeout_seconds: int = 6 * 3600
    training_api: str = "trainer"  # components.k8s.training_apis: trainer (TrainJob) or pytorchjob
    queue_name: str = ""  # a Kueue LocalQueue for the training jobs and trials; "" = none
    deployment_mode: str = "Knative"  # components.k8s.inferenceservice.DEPLOYMENT_MODES
    run_id: str = ""  # the KFP run: labels what it creates, so that its exit handler finds it


@dataclass(frozen=True)
class TrainingOverrides:
    """The `kubevae train` options a step sets on top of the trainer's defaults, typed, for the
    trials (TuneRequest) and the final run (TrainRequest) alike. Names are the trainer's
    (its parser's dest names); None leaves the trainer's default."""

    objective: str | None = None  # the training objective (kubevae.objectives); None: beta
    lr: float | None = None  # a searched lr wins over this one in a trial
    conv_channels: tuple[int, ...] | None = None  # encoder widths; None: the model's default
    val_every: int | None = None  # validate every N steps (0: every epoch); None: the default

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr}")
        if self.conv_channels is not None:
            widths = tuple(int(c) for c in self.conv_channels)
            if not widths or any(c < 1 for c in widths):
                raise ValueError(f"conv_channels: expected positive widths, got {list(self.conv_channels)}")
            object.__setattr__(self, "conv_channels", widths)
        if self.val_every is not None and self.val_every < 0:
            raise ValueError(f"val_every_steps: expected 0 or more steps, got {self.val_every}")

    def options(self) -> dict[str, Any]:
        """{dest: value} of the options set (kubevae.training.command.train_argv takes it)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TuneRequest:
    name: str
    data_dir: str  # the split folder on this machine (the artifact's local path)
    data_uri: str  # the same folder as a URI a pod can read (s3://... on a cluster)
    search_space: SearchSpace
    work_dir: str  # scratch for trial outputs
    algorithm: str = "tpe"
    # One of kubevae.study.OBJECTIVES, each with its direction; never the beta-weighted
    # training loss.
    objective_metric: str = "val_mig"
    max_trials: int = 8
    parallel_trials: int = 1
    max_failed_trials: int = 2
    trial_steps: int = 300  # optimizer steps per trial (hyperband's resource)
    udr_seeds: int = 3  # seeds per trial when objective_metric is udr
    batch_size: int = 64
    # The training options every trial shares; its `objective` (kubevae.objectives) is the
    # loss whose weight the searched `beta` sets (objectives.SEARCHED_WEIGHT).
    overrides: TrainingOverrides = field(default_factory=TrainingOverrides)
    trial_workers: int = 1
    gpus_per_worker: int = 0
    seed: int = 0
    parent_run_id: str | None = None  # the MLflow run every trial nests under (the tune step's)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class TrainRequest:
    name: str
    data_dir: str
    data_uri: str
    params: dict[str, Any]  # search-space values, e.g. {"beta": 4.0, "latent_dim": 10}
    out_dir: str  # the model folder to write (the Model artifact's local path)
    out_uri: str  # the same as a URI a pod can write
    steps: int = 3000  # optimizer steps of the run
    batch_size: int = 64
    workers: int = 1
    gpus_per_worker: int = 0
    seed: int = 0
    overrides: TrainingOverrides = field(default_factory=TrainingOverrides)
    parent_run_id: str | None = None  # the MLflow run the training run nests under
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


def trial_options(request: TuneRequest) -> dict[str, Any]:
    """The `kubevae train` options every trial of a study shares, on either backend (the
    search-space values, data, output and run name come on top)."""
    options: dict[str, Any] = {**request.overrides.options(),
                               "steps": request.trial_steps, "batch_size": request.batch_size,
                               "seed": request.seed, "objective_metric": request.objective_metric,
                               "no_mlflow_model": True, "parent_run_id": request.parent_run_id}
    for name in request.search_space.names:  # a searched value comes with each trial instead
        options.pop(name, None)
    if request.objective_metric == "udr":
        options["udr_seeds"] = request.udr_seeds
    return options


def train_options(request: TrainRequest) -> dict[str, Any]:
    """The `kubevae train` options of the final training run, on either backend."""
    return {"steps": request.steps, "batch_size": request.batch_size, "seed": request.seed,
            "run_name": request.name, "parent_run_id": request.parent_run_id,
            **request.overrides.options(), **request.params}


@dataclass
class TrainResult:
    model_dir: str
    metrics: dict[str, Any]
    training_api: str = ""  # what ran the training: torchrun locally, trainer or pytorchjob


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

    def tune(self, request: TuneRequest) -> Study: ...

    def train(self, request: TrainRequest) -> TrainResult: ...

    def deploy(self, request: DeployRequest) -> DeployResult: ...

    def smoke_test(self, endpoint: str, model_name: str, model_dir: str) -> dict[str, Any]: ...

    def cleanup(self, cluster: ClusterSettings, model_name: str) -> list[str]:
        """What a failed run left behind, removed (the exit handler); one line per action."""
        ...
