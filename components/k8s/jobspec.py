"""The one spec of a `kubevae train` run on the cluster, and the pod layout every training API
shares (components.k8s.trainjob and components.k8s.pytorchjob build their jobs from it).

Every run passes `--resume auto` with a checkpoint folder, so a restarted container continues
from its newest valid checkpoint instead of starting over. With more than one pod the
checkpoint folder must be shared (a ReadWriteMany claim): every rank loads the checkpoint that
rank 0 wrote.

Pod layout:
  train container   kubevae train --data /data/splits --out /work/model ... (torchrun with
                    several processes per pod) behind components.k8s.entrypoint: RFC 3339
                    timestamps on every line (Katib orders metrics by them); node 0 uploads
                    /work/model when the run succeeded                      [when output_uri]
  volumes           /tmp scratch, /data (the split), /work, /checkpoints, /dev/shm with GPUs
S3 credentials reach only the containers that move data, as secretKeyRefs into a Secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubernetes.client import (
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1PersistentVolumeClaimVolumeSource,
    V1SecretKeySelector,
    V1Volume,
    V1VolumeMount,
)

from components.k8s.contract import (
    COMMON_LABELS,
    S3_SECRET,
    S3_SECRET_KEYS,
    SETTINGS_CONFIG_MAP,
    check_queue_name,
    queue_labels,
)
from components.k8s.security import Resources, scratch_mount, scratch_volume

DATA_DIR = "/data/splits"
OUT_DIR = "/work/model"
CHECKPOINT_ROOT = "/checkpoints"
# Istio sidecars keep a finished pod Running and block the job's completion (Katib's
# and the Training Operator's docs advise turning injection off for training pods).
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


@dataclass(frozen=True)
class TrainingJob:
    """What one `kubevae train` run on the cluster needs."""

    image: str
    train_args: tuple[str, ...]  # `kubevae train` flags, besides --data/--out/--checkpoint-dir/--resume
    data_uri: str | None = None  # the split folder in object storage (s3:// or minio://)
    output_uri: str | None = None  # where node 0 (the PyTorchJob Master) uploads the model folder
    workers: int = 1  # pods (nodes), node 0 among them
    procs_per_pod: int = 1  # processes per pod (one per GPU)
    resources: Resources = field(default_factory=Resources)
    checkpoint_claim: str | None = None  # a PVC (ReadWriteMany when workers > 1); else an emptyDir
    checkpoint_folder: str = "run"  # the folder under /checkpoints; Katib uses the trial name
    settings_config_map: str = SETTINGS_CONFIG_MAP  # S3_ENDPOINT, MLFLOW_TRACKING_URI, ...
    s3_secret: str = S3_SECRET
    service_account: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # extra variables, e.g. MLFLOW_TRACKING_URI
    component: str = "train"  # app.kubernetes.io/component label
    active_deadline_seconds: int | None = None
    backoff_limit: int = 3
    labels: tuple[tuple[str, str], ...] = ()  # extra labels on the job and its pods, e.g. RUN_LABEL
    queue_name: str = ""  # a Kueue LocalQueue: the job (not its pods) carries QUEUE_LABEL

    def __post_init__(self) -> None:
        check_queue_name(self.queue_name)
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1 pod, got {self.workers}")
        if self.procs_per_pod < 1:
            raise ValueError(f"procs_per_pod: expected >= 1, got {self.procs_per_pod}")
        if self.resources.gpus and self.procs_per_pod > self.resources.gpus:
            raise ValueError(f"procs_per_pod={self.procs_per_pod} exceeds the {self.resources.gpus} "
                             f"GPU(s) per pod: one process per GPU")
        reserved = {"--data", "--dataset", "--out", "--checkpoint-dir", "--resume"} & set(self.train_args)
        if self.data_uri and reserved:
            raise ValueError(f"train_args: {sorted(reserved)} are set by the job; remove them")
        if not self.data_uri and "--dataset" not in self.train_args:
            raise ValueError("training job: give data_uri (a split in object storage) or "
                             "--dataset in train_args")

    @property
    def checkpoint_dir(self) -> str:
        return f"{CHECKPOINT_ROOT}/{self.checkpoint_folder}"


def pod_labels(job: TrainingJob) -> dict[str, str]:
    """The labels of the job's pods (what the NetworkPolicies select)."""
    return {**COMMON_LABELS, "app.kubernetes.io/component": job.component, **dict(job.labels)}


def job_labels(job: TrainingJob) -> dict[str, str]:
    """The labels of the job object: its pods' labels and, with a queue, Kueue's queue label
    (on the job only: Kueue admits the job, and its pod integration would queue labelled pods)."""
    return {**pod_labels(job), **queue_labels(job.queue_name)}


def train_mounts(job: TrainingJob, data_read_only: bool) -> list[V1VolumeMount]:
    """The train container's mounts of `volumes(job)`; /data is read-only where another
    container (an init container) downloads the split."""
    mounts = [scratch_mount(), V1VolumeMount(name="work", mount_path="/work"),
              V1VolumeMount(name="checkpoints", mount_path=CHECKPOINT_ROOT)]
    if job.data_uri:
        mounts.append(V1VolumeMount(name="data", mount_path="/data", read_only=data_read_only or None))
    if job.resources.gpus:
        mounts.append(V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return mounts


def train_command(job: TrainingJob, fetch_data: bool = False) -> list[str]:
    """kubevae train (under torchrun with several processes per pod), behind the entry point
    that timestamps its lines for Katib and uploads the model folder from node 0. With
    `fetch_data` the entry point also downloads the split first (where no init container can)."""
    train = ["kubevae", "train"] if job.procs_per_pod == 1 else \
        ["torchrun", "--no-python", "kubevae", "train"]  # nnodes, ranks, master from PET_* env
    download = ["--download", f"{job.data_uri}={DATA_DIR}"] if fetch_data and job.data_uri else []
    upload = ["--upload", f"{OUT_DIR}={job.output_uri}"] if job.output_uri else []
    return ["python", "-m", "components.k8s.entrypoint", *download, *upload, "--", *train]


def train_args(job: TrainingJob) -> list[str]:
    data = ["--data", DATA_DIR] if job.data_uri else []
    return [*data, "--out", OUT_DIR, "--checkpoint-dir", job.checkpoint_dir, "--resume", "auto",
            *job.train_args]


def env_vars(job: TrainingJob, with_s3_credentials: bool) -> list[V1EnvVar]:
    env = [V1EnvVar(name="HOME", value="/tmp"), V1EnvVar(name="PYTHONUNBUFFERED", value="1")]
    env += [V1EnvVar(name=k, value=v) for k, v in job.env]
    if with_s3_credentials:
        env += [V1EnvVar(name=key, value_from=V1EnvVarSource(
            secret_key_ref=V1SecretKeySelector(name=job.s3_secret, key=key))) for key in S3_SECRET_KEYS]
    return env


def volumes(job: TrainingJob) -> list[V1Volume]:
    volumes = [scratch_volume(), V1Volume(name="work", empty_dir=V1EmptyDirVolumeSource(size_limit="5Gi"))]
    if job.data_uri:
        volumes.append(V1Volume(name="data", empty_dir=V1EmptyDirVolumeSource(size_limit="50Gi")))
    if job.checkpoint_claim:
        volumes.append(V1Volume(name="checkpoints", persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
            claim_name=job.checkpoint_claim)))
    else:  # survives container restarts (OnFailure restarts in place), not the loss of the pod
        volumes.append(V1Volume(name="checkpoints", empty_dir=V1EmptyDirVolumeSource(size_limit="10Gi")))
    if job.resources.gpus:  # NCCL and DataLoader workers need more than the default 64 MiB
        volumes.append(V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit="2Gi")))
    return volumes
