"""A TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer 2.3) that runs `kubevae train`.

The job names the torch runtime in `runtimeRef` (the `torch-distributed` ClusterTrainingRuntime
a Trainer install provides, ../shared/runtimes/torch_distributed.yaml); the Trainer fills the
runtime's `node` container from `spec.trainer`:
  image, command, args  the project image; the entry point (components.k8s.entrypoint), which
                        downloads the split, runs `kubevae train` (torchrun when several
                        processes per node) and uploads the model from node 0
  numNodes              pods; numProcPerNode processes in each (one per GPU)
  resourcesPerNode      CPU, memory and GPUs of each node
  env                   the S3 Secret's keys and the settings ConfigMap's keys, one by one
                        (a Trainer container has no envFrom)
The torch runtime injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT; kubevae.training.distributed maps them (or torchrun reads them).

What the pod template needs beyond that (service account, pod and container security contexts,
GPU tolerations, the scratch/data/work/checkpoint volumes and their mounts, the Istio opt-out)
goes into one `runtimePatches` entry owned by MANAGER. A runtime patch can change containers
the runtime has but cannot add one, so the split is downloaded by the entry point instead of an
init container. `activeDeadlineSeconds` is the job's timeout. Every run passes `--resume auto`
with a checkpoint folder: a restarted container (the runtime's Jobs restart OnFailure) continues
from its newest valid checkpoint; with a shared claim, so does a replaced pod.
"""

from __future__ import annotations

from typing import Any

from kubeflow_trainer_api.models import (
    IoK8sApiCoreV1EnvVar,
    IoK8sApiCoreV1PodSecurityContext,
    IoK8sApiCoreV1ResourceRequirements,
    IoK8sApiCoreV1SecurityContext,
    IoK8sApiCoreV1Toleration,
    IoK8sApiCoreV1Volume,
    IoK8sApiCoreV1VolumeMount,
    IoK8sApimachineryPkgApisMetaV1ObjectMeta,
    TrainerV1alpha1ContainerPatch,
    TrainerV1alpha1JobSetSpecPatch,
    TrainerV1alpha1JobSetTemplatePatch,
    TrainerV1alpha1JobSpecPatch,
    TrainerV1alpha1JobTemplatePatch,
    TrainerV1alpha1PodSpecPatch,
    TrainerV1alpha1PodTemplatePatch,
    TrainerV1alpha1ReplicatedJobPatch,
    TrainerV1alpha1RuntimePatch,
    TrainerV1alpha1RuntimeRef,
    TrainerV1alpha1Trainer,
    TrainerV1alpha1TrainingRuntimeSpecPatch,
    TrainerV1alpha1TrainJob,
    TrainerV1alpha1TrainJobSpec,
)
from kubernetes.client import V1ConfigMapKeySelector, V1EnvVar, V1EnvVarSource, V1VolumeMount

from components.k8s import to_dict
from components.k8s.pytorchjob import (
    CHECKPOINT_ROOT,
    POD_ANNOTATIONS,
    SETTINGS_KEYS,
    TrainingJob,
    env_vars,
    job_labels,
    train_args,
    train_command,
    volumes,
)
from components.k8s.security import (
    container_security_context,
    mlflow_credentials_env,
    pod_security_context,
    scratch_mount,
)

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime of a Trainer install
RUNTIME_KIND = "ClusterTrainingRuntime"
NODE = "node"  # the runtime's replicated job and container; Katib's primary container
MANAGER = "kubevae.io/pipeline"  # owner of our runtime patch
# Trainer 2.3's conditions, and the labels of node 0's pod (JobSet's and the Job's).
SUCCESS, FAILURE = "Complete", "Failed"
NODE0_LABELS = {"jobset.sigs.k8s.io/replicatedjob-name": NODE,
                "batch.kubernetes.io/job-completion-index": "0"}
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"


def build_trainjob(job: TrainingJob, name: str | None = None, namespace: str | None = None,
                   runtime: str = RUNTIME) -> TrainerV1alpha1TrainJob:
    """The TrainJob. Without `name` it has no metadata (a Katib trialSpec must not have it)."""
    metadata = None
    if name is not None:
        metadata = IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=namespace,
                                                           labels=job_labels(job))
    return TrainerV1alpha1TrainJob(
        api_version=API_VERSION, kind=KIND, metadata=metadata,
        spec=TrainerV1alpha1TrainJobSpec(
            runtime_ref=TrainerV1alpha1RuntimeRef(api_group=GROUP, kind=RUNTIME_KIND, name=runtime),
            trainer=TrainerV1alpha1Trainer(
                image=job.image, command=train_command(job, fetch_data=True), args=train_args(job),
                env=[_typed(IoK8sApiCoreV1EnvVar, e) for e in trainer_env(job)],
                num_nodes=job.workers, num_proc_per_node=job.procs_per_pod,
                resources_per_node=_typed(IoK8sApiCoreV1ResourceRequirements,
                                          job.resources.requirements())),
            runtime_patches=[_runtime_patch(job)],
            active_deadline_seconds=job.active_deadline_seconds))


def trainer_env(job: TrainingJob) -> list[V1EnvVar]:
    """The node container's variables: every node downloads the split, node 0 uploads."""
    settings = [V1EnvVar(name=key, value_from=V1EnvVarSource(config_map_key_ref=V1ConfigMapKeySelector(
        name=job.settings_config_map, key=key, optional=True))) for key in SETTINGS_KEYS]
    return [*env_vars(job, with_s3_credentials=True), *mlflow_credentials_env(), *settings]


def _runtime_patch(job: TrainingJob) -> TrainerV1alpha1RuntimePatch:
    mounts = [scratch_mount(), V1VolumeMount(name="work", mount_path="/work"),
              V1VolumeMount(name="checkpoints", mount_path=CHECKPOINT_ROOT)]
    if job.data_uri:
        mounts.append(V1VolumeMount(name="data", mount_path="/data"))
    if job.resources.gpus:
        mounts.append(V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    pod = TrainerV1alpha1PodSpecPatch(
        service_account_name=job.service_account,
        security_context=_typed(IoK8sApiCoreV1PodSecurityContext, pod_security_context()),
        tolerations=[_typed(IoK8sApiCoreV1Toleration, t) for t in job.resources.tolerations()] or None,
        volumes=[_typed(IoK8sApiCoreV1Volume, v) for v in volumes(job)],
        containers=[TrainerV1alpha1ContainerPatch(
            name=NODE, security_context=_typed(IoK8sApiCoreV1SecurityContext, container_security_context()),
            volume_mounts=[_typed(IoK8sApiCoreV1VolumeMount, m) for m in mounts])])
    template = TrainerV1alpha1PodTemplatePatch(
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=job_labels(job),
                                                         annotations=dict(POD_ANNOTATIONS)),
        spec=pod)
    return TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        training_runtime_spec=TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=TrainerV1alpha1JobSetTemplatePatch(spec=TrainerV1alpha1JobSetSpecPatch(
                replicated_jobs=[TrainerV1alpha1ReplicatedJobPatch(
                    name=NODE, template=TrainerV1alpha1JobTemplatePatch(
                        spec=TrainerV1alpha1JobSpecPatch(template=template)))]))))


def _typed(model: Any, obj: Any) -> Any:
    """A kubernetes-client object as the Trainer API's own typed model of the same type."""
    return model.from_dict(to_dict(obj))


def node0_selector(name: str) -> str:
    """The label selector of node 0's pod of TrainJob `name` (the JobSet has its name)."""
    return ",".join(f"{k}={v}" for k, v in {JOBSET_NAME_LABEL: name, **NODE0_LABELS}.items())
