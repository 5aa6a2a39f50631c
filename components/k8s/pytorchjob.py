"""A PyTorchJob (kubeflow.org/v1, Training Operator 1.9) that runs `kubevae train`.

One Master and `workers - 1` Workers, `procs_per_pod` processes in each (nprocPerNode; torchrun
starts them from the operator's PET_* variables), restartPolicy OnFailure. Every run passes
`--resume auto` with a checkpoint folder, so a restarted container continues from its newest
valid checkpoint instead of starting over. With more than one pod the checkpoint folder must be
shared (a ReadWriteMany claim): every rank loads the checkpoint that rank 0 wrote.

Pod layout:
  init container fetch-data   object storage -> /data/splits (emptyDir)      [when data_uri]
  container pytorch           kubevae train --data /data/splits --out /work/model ...
                              behind components.k8s.entrypoint: RFC 3339 timestamps on every
                              line (Katib orders metrics by them); the Master uploads
                              /work/model when the run succeeded          [when output_uri]
  volumes                     /tmp scratch, /data, /work, /checkpoints, /dev/shm with GPUs
S3 credentials reach only the containers that move data, as secretKeyRefs into a Secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubeflow.training import (
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
)
from kubernetes.client import (
    V1ConfigMapEnvSource,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvFromSource,
    V1EnvVar,
    V1EnvVarSource,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1PodSpec,
    V1PodTemplateSpec,
    V1SecretKeySelector,
    V1Volume,
    V1VolumeMount,
)

from components.k8s.security import (
    S3_SECRET,
    SETTINGS_CONFIG_MAP,
    Resources,
    container_security_context,
    mlflow_credentials_env,
    pod_security_context,
    scratch_mount,
    scratch_volume,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the Training Operator's default container name; Katib's primary container
PORT_NAME, PORT = "pytorchjob-port", 23456

DATA_DIR = "/data/splits"
OUT_DIR = "/work/model"
CHECKPOINT_ROOT = "/checkpoints"
# Keys of the S3 Secret; the same names KServe's storage initializer reads.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Keys of the settings ConfigMap (manifests/base/settings.env) a pod reads; a TrainJob has no
# envFrom, so it names them one by one.
SETTINGS_KEYS = ("S3_ENDPOINT", "S3_USE_HTTPS", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL",
                 "MLFLOW_TRACKING_URI")
# The KFP run that created a resource: the exit handler finds what a failed run left behind.
RUN_LABEL = "kubevae.io/pipeline-run"
COMMON_LABELS = {"app.kubernetes.io/name": "kubevae", "app.kubernetes.io/part-of": "kubevae"}
# Istio sidecars keep a finished pod Running and block the job's completion (Katib's
# and the Training Operator's docs advise turning injection off for training pods).
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


@dataclass(frozen=True)
class TrainingJob:
    """What one `kubevae train` run on the cluster needs."""

    image: str
    train_args: tuple[str, ...]  # `kubevae train` flags, besides --data/--out/--checkpoint-dir/--resume
    data_uri: str | None = None  # the split folder in object storage (s3:// or minio://)
    output_uri: str | None = None  # where the Master uploads the model folder
    workers: int = 1  # pods: one Master and workers - 1 Workers
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
    labels: tuple[tuple[str, str], ...] = ()  # extra labels on the job, e.g. RUN_LABEL

    def __post_init__(self) -> None:
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


def build_pytorchjob(job: TrainingJob, name: str | None = None, namespace: str | None = None,
                     labels: dict[str, str] | None = None) -> KubeflowOrgV1PyTorchJob:
    """The PyTorchJob. Without `name` it has no metadata name or namespace (a Katib trialSpec
    must not have them)."""
    replicas = {"Master": _replica(job, 1)}
    if job.workers > 1:
        replicas["Worker"] = _replica(job, job.workers - 1)
    metadata = None
    if name is not None:
        metadata = V1ObjectMeta(name=name, namespace=namespace,
                                labels={**job_labels(job), **(labels or {})})
    return KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION, kind=KIND, metadata=metadata,
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(job.procs_per_pod), pytorch_replica_specs=replicas,
            run_policy=KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=job.backoff_limit,
                                              active_deadline_seconds=job.active_deadline_seconds)))


def job_labels(job: TrainingJob) -> dict[str, str]:
    return {**COMMON_LABELS, "app.kubernetes.io/component": job.component, **dict(job.labels)}


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


def _replica(job: TrainingJob, replicas: int) -> KubeflowOrgV1ReplicaSpec:
    spec = V1PodSpec(
        service_account_name=job.service_account,
        automount_service_account_token=False,  # training talks to S3 and MLflow, not the API
        security_context=pod_security_context(),
        init_containers=[_fetch_container(job)] if job.data_uri else None,
        containers=[_train_container(job)],
        volumes=volumes(job),
        tolerations=job.resources.tolerations() or None)
    template = V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels=job_labels(job), annotations=dict(POD_ANNOTATIONS)),
        spec=spec)
    return KubeflowOrgV1ReplicaSpec(replicas=replicas, restart_policy="OnFailure", template=template)


def _train_container(job: TrainingJob) -> V1Container:
    mounts = [scratch_mount(), V1VolumeMount(name="work", mount_path="/work"),
              V1VolumeMount(name="checkpoints", mount_path=CHECKPOINT_ROOT)]
    if job.data_uri:
        mounts.append(V1VolumeMount(name="data", mount_path="/data", read_only=True))
    if job.resources.gpus:
        mounts.append(V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return V1Container(
        name=CONTAINER, image=job.image, image_pull_policy="IfNotPresent",
        command=train_command(job), args=train_args(job),
        env=env_vars(job, with_s3_credentials=bool(job.output_uri)) + mlflow_credentials_env(),
        env_from=[V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=job.settings_config_map))],
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=job.resources.requirements(), security_context=container_security_context(),
        volume_mounts=mounts)


def _fetch_container(job: TrainingJob) -> V1Container:
    return V1Container(
        name="fetch-data", image=job.image, image_pull_policy="IfNotPresent",
        # KFP's launcher uploaded the split (no completion marker) before this step started.
        command=["python", "-m", "kubevae.objectstore", "download", "--no-require-marker",
                 job.data_uri, DATA_DIR],
        env=env_vars(job, with_s3_credentials=True),
        env_from=[V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=job.settings_config_map))],
        resources=Resources(cpu="500m", memory="1Gi").requirements(),
        security_context=container_security_context(),
        volume_mounts=[scratch_mount(), V1VolumeMount(name="data", mount_path="/data")])


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
