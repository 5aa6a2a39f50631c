"""A PyTorchJob (kubeflow.org/v1, Training Operator 1.9) that runs `kubevae train`, for
clusters that still run the Training Operator (components.k8s.training_apis).

One Master and `workers - 1` Workers, `procs_per_pod` processes in each (nprocPerNode; torchrun
starts them from the operator's PET_* variables), restartPolicy OnFailure. The run itself is
the shared spec of components.k8s.jobspec; here the split comes by an init container:

  init container fetch-data   object storage -> /data/splits (emptyDir)      [when data_uri]
  container pytorch           the train container of jobspec, /data read-only
"""

from __future__ import annotations

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
    V1EnvFromSource,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1VolumeMount,
)

from components.k8s.jobspec import (
    DATA_DIR,
    POD_ANNOTATIONS,
    TrainingJob,
    env_vars,
    job_labels,
    pod_labels,
    train_args,
    train_command,
    train_mounts,
    volumes,
)
from components.k8s.security import (
    Resources,
    container_security_context,
    mlflow_credentials_env,
    pod_security_context,
    scratch_mount,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the Training Operator's default container name; Katib's primary container
PORT_NAME, PORT = "pytorchjob-port", 23456
SUCCESS, FAILURE = "Succeeded", "Failed"
# The Training Operator's labels on every pod of a job, and on the Master's.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
MASTER_LABELS = {"training.kubeflow.org/job-role": "master"}


def build_pytorchjob(job: TrainingJob, name: str | None = None,
                     namespace: str | None = None) -> KubeflowOrgV1PyTorchJob:
    """The PyTorchJob. Without `name` it has no metadata name or namespace (a Katib trialSpec
    must not have them), only the job's labels, which Katib keeps on each trial's job."""
    replicas = {"Master": _replica(job, 1)}
    if job.workers > 1:
        replicas["Worker"] = _replica(job, job.workers - 1)
    metadata = V1ObjectMeta(name=name, namespace=namespace, labels=job_labels(job))
    return KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION, kind=KIND, metadata=metadata,
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(job.procs_per_pod), pytorch_replica_specs=replicas,
            run_policy=KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=job.backoff_limit,
                                              active_deadline_seconds=job.active_deadline_seconds)))


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
        metadata=V1ObjectMeta(labels=pod_labels(job), annotations=dict(POD_ANNOTATIONS)),
        spec=spec)
    return KubeflowOrgV1ReplicaSpec(replicas=replicas, restart_policy="OnFailure", template=template)


def _train_container(job: TrainingJob) -> V1Container:
    return V1Container(
        name=CONTAINER, image=job.image, image_pull_policy="IfNotPresent",
        command=train_command(job), args=train_args(job),
        env=env_vars(job, with_s3_credentials=bool(job.output_uri)) + mlflow_credentials_env(),
        env_from=[V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=job.settings_config_map))],
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=job.resources.requirements(), security_context=container_security_context(),
        volume_mounts=train_mounts(job, data_read_only=True))


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
