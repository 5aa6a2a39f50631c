"""What the tune, train and deploy steps ask of a backend, and what they get back.

Two backends implement this: `local` (Optuna, torchrun, the KServe ModelServer on loopback) and
`kubernetes` (a Katib Experiment, a PyTorchJob, a KServe InferenceService). The pipeline
components only ever see these dataclasses and `components.backends.get_backend(name)`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from components.base import IMAGE
from components.k8s.security import S3_SECRET
from components.search_space import SearchSpace


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
    # One of kubevae.training.selection.OBJECTIVES, each with its direction; never the
    # beta-weighted training loss.
    objective_metric: str = "val_mig"
    # The training objective of every trial (kubevae.objectives): the searched `beta` is its
    # weight (objectives.SEARCHED_WEIGHT).
    objective: str = "beta"
    max_trials: int = 8
    parallel_trials: int = 1
    max_failed_trials: int = 2
    trial_steps: int = 300  # optimizer steps per trial (hyperband's resource)
    udr_seeds: int = 3  # seeds per trial when objective_metric is udr
    batch_size: int = 64
    lr: float | None = None  # None: the trainer's default; a searched lr wins
    conv_channels: tuple[int, ...] | None = None  # None: the model's default widths
    trial_workers: int = 1
    gpus_per_worker: int = 0
    seed: int = 0
    parent_run_id: str | None = None  # the MLflow run every trial nests under (the tune step's)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # COMPLETE, PRUNED, FAIL
    # The trial's last metric line: val_neg_elbo, val_recon, val_kl, val_active_units, step, ...
    metrics: dict[str, float] = field(default_factory=dict)


STUDY_FORMAT = "kubevae-study/1"


@dataclass
class TuneResult:
    """The study: what the tune step writes and the train and evaluate steps (and the local
    run's summary) read back. One typed definition; `write` / `read` round-trip it as JSON."""

    best_params: dict[str, Any]
    best_value: float
    trials: list[TrialRecord]
    objective_metric: str = "val_mig"
    direction: str = "maximize"
    best_trial: int | None = None  # the chosen trial's number
    algorithm: str = ""
    # Every completed trial collapsed: best_* is the least-collapsed trial, not a choice on the
    # objective (kubevae.training.selection.ALL_COLLAPSED_ADVICE).
    all_collapsed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"format": STUDY_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "study") -> TuneResult:
        if not isinstance(d, dict) or d.get("format") != STUDY_FORMAT:
            raise ValueError(f"{source}: expected a {STUDY_FORMAT} study (written by the tune step), "
                             f"got format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"best_params", "best_value", "trials", "objective_metric"} - set(d))
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        values = {k: v for k, v in d.items() if k in known}
        values["trials"] = [TrialRecord(**t) for t in d["trials"]]
        return cls(**values)

    def write(self, path: str | Path) -> None:
        from kubevae.storage import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> TuneResult:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))

    @property
    def chosen(self) -> TrialRecord | None:
        return next((t for t in self.trials if t.number == self.best_trial), None)


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
    options: dict[str, Any] = field(default_factory=dict)  # more `kubevae train` options (dest: value)
    parent_run_id: str | None = None  # the MLflow run the training run nests under
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


def trial_options(request: TuneRequest) -> dict[str, Any]:
    """The `kubevae train` options every trial of a study shares, on either backend (the
    search-space values, data, output and run name come on top)."""
    options: dict[str, Any] = {"steps": request.trial_steps, "batch_size": request.batch_size,
                               "seed": request.seed, "objective_metric": request.objective_metric,
                               "objective": request.objective,
                               "no_mlflow_model": True, "parent_run_id": request.parent_run_id}
    if request.lr is not None and "lr" not in {p.name for p in request.search_space.parameters}:
        options["lr"] = request.lr  # a searched lr comes with each trial's parameters instead
    if request.conv_channels:
        options["conv_channels"] = request.conv_channels
    if request.objective_metric == "udr":
        options["udr_seeds"] = request.udr_seeds
    return options


def train_options(request: TrainRequest) -> dict[str, Any]:
    """The `kubevae train` options of the final training run, on either backend."""
    return {"steps": request.steps, "batch_size": request.batch_size, "seed": request.seed,
            "run_name": request.name, "parent_run_id": request.parent_run_id,
            **request.options, **request.params}


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

    def tune(self, request: TuneRequest) -> TuneResult: ...

    def train(self, request: TrainRequest) -> TrainResult: ...

    def deploy(self, request: DeployRequest) -> DeployResult: ...

    def smoke_test(self, endpoint: str, model_name: str, model_dir: str) -> dict[str, Any]: ...

    def cleanup(self, cluster: ClusterSettings, model_name: str) -> list[str]:
        """What a failed run left behind, removed (the exit handler); one line per action."""
        ...
