"""A TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2.1 to v2.3) that runs `kubevae train`.

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
GPU tolerations, the scratch/data/work/checkpoint volumes and their mounts, the Istio opt-out,
the labels the NetworkPolicies select) comes in the shape the cluster's Trainer serves
(`shape`; components.k8s.training_apis says which releases serve which, and the launchers find
out with a dry run):
  runtimePatches        (Trainer >= v2.2) one `runtimePatches` entry owned by MANAGER, and
                        `activeDeadlineSeconds` as the job's timeout
  podTemplateOverrides  (Trainer v2.1) one `podTemplateOverrides` entry for the `node` job: the
                        same labels, annotations, service account, tolerations, volumes and
                        mounts, but no security contexts (v2.1 cannot override them: the pods
                        run as the image's user 10001 under the runtime's defaults) and no
                        deadline (the launcher deletes the job at its timeout)
Either can change containers the runtime has but cannot add one, so the split is downloaded by
the entry point instead of an init container. Every run passes `--resume auto`
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
from kubernetes.client import V1ConfigMapKeySelector, V1EnvVar, V1EnvVarSource

from components.k8s import to_dict
from components.k8s.contract import SETTINGS_KEYS
from components.k8s.jobspec import (
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
    container_security_context,
    mlflow_credentials_env,
    pod_security_context,
)

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime of a Trainer install
RUNTIME_KIND = "ClusterTrainingRuntime"
NODE = "node"  # the runtime's replicated job and container; Katib's primary container
MANAGER = "kubevae.io/pipeline"  # owner of our runtime patch
RUNTIME_PATCHES, POD_TEMPLATE_OVERRIDES = "runtimePatches", "podTemplateOverrides"  # the shapes
# Trainer 2.3's conditions, and the labels of node 0's pod (JobSet's and the Job's).
SUCCESS, FAILURE = "Complete", "Failed"
NODE0_LABELS = {"jobset.sigs.k8s.io/replicatedjob-name": NODE,
                "batch.kubernetes.io/job-completion-index": "0"}
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the TrainJob (its JobSet's name)


def build_trainjob(job: TrainingJob, name: str | None = None, namespace: str | None = None,
                   runtime: str = RUNTIME, shape: str = RUNTIME_PATCHES) -> dict[str, Any]:
    """The TrainJob (JSON) in `shape`. Without `name` it has no metadata name or namespace (a
    Katib trialSpec must not have them), only the job's labels, which Katib keeps on each
    trial's job. Everything but the pod settings is the same in every shape."""
    metadata = IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=namespace, labels=job_labels(job))
    body = to_dict(TrainerV1alpha1TrainJob(
        api_version=API_VERSION, kind=KIND, metadata=metadata,
        spec=TrainerV1alpha1TrainJobSpec(
            runtime_ref=TrainerV1alpha1RuntimeRef(api_group=GROUP, kind=RUNTIME_KIND, name=runtime),
            trainer=TrainerV1alpha1Trainer(
                image=job.image, command=train_command(job, fetch_data=True), args=train_args(job),
                env=[_typed(IoK8sApiCoreV1EnvVar, e) for e in trainer_env(job)],
                num_nodes=job.workers, num_proc_per_node=job.procs_per_pod,
                resources_per_node=_typed(IoK8sApiCoreV1ResourceRequirements,
                                          job.resources.requirements())))))
    body["spec"] = dict(sorted({**body["spec"], **pod_settings(job, shape)}.items()))
    return body


def pod_settings(job: TrainingJob, shape: str) -> dict[str, Any]:
    """The spec fields that carry the pod settings (and the deadline) in `shape`."""
    if shape == RUNTIME_PATCHES:
        fields: dict[str, Any] = {RUNTIME_PATCHES: [to_dict(_runtime_patch(job))]}
        if job.active_deadline_seconds is not None:
            fields["activeDeadlineSeconds"] = job.active_deadline_seconds
        return fields
    if shape == POD_TEMPLATE_OVERRIDES:
        return {POD_TEMPLATE_OVERRIDES: [_pod_template_override(job)]}
    raise ValueError(f"TrainJob shape: expected {RUNTIME_PATCHES} or {POD_TEMPLATE_OVERRIDES}, got {shape!r}")


def trainer_env(job: TrainingJob) -> list[V1EnvVar]:
    """The node container's variables: every node downloads the split, node 0 uploads."""
    settings = [V1EnvVar(name=key, value_from=V1EnvVarSource(config_map_key_ref=V1ConfigMapKeySelector(
        name=job.settings_config_map, key=key, optional=True))) for key in SETTINGS_KEYS]
    return [*env_vars(job, with_s3_credentials=True), *mlflow_credentials_env(), *settings]


def _runtime_patch(job: TrainingJob) -> TrainerV1alpha1RuntimePatch:
    pod = TrainerV1alpha1PodSpecPatch(
        service_account_name=job.service_account,
        security_context=_typed(IoK8sApiCoreV1PodSecurityContext, pod_security_context()),
        tolerations=[_typed(IoK8sApiCoreV1Toleration, t) for t in job.resources.tolerations()] or None,
        volumes=[_typed(IoK8sApiCoreV1Volume, v) for v in volumes(job)],
        containers=[TrainerV1alpha1ContainerPatch(
            name=NODE, security_context=_typed(IoK8sApiCoreV1SecurityContext, container_security_context()),
            volume_mounts=[_typed(IoK8sApiCoreV1VolumeMount, m) for m in train_mounts(job, data_read_only=False)])])
    template = TrainerV1alpha1PodTemplatePatch(
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=pod_labels(job),
                                                         annotations=dict(POD_ANNOTATIONS)),
        spec=pod)
    return TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        training_runtime_spec=TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=TrainerV1alpha1JobSetTemplatePatch(spec=TrainerV1alpha1JobSetSpecPatch(
                replicated_jobs=[TrainerV1alpha1ReplicatedJobPatch(
                    name=NODE, template=TrainerV1alpha1JobTemplatePatch(
                        spec=TrainerV1alpha1JobSpecPatch(template=template)))]))))


def _pod_template_override(job: TrainingJob) -> dict[str, Any]:
    """Trainer v2.1's PodTemplateOverride for the `node` job (the Trainer API models of 2.3 have
    no type for it): what the runtime patch carries, less the security contexts, which v2.1's
    override has no field for."""
    spec: dict[str, Any] = {
        "serviceAccountName": job.service_account,
        "tolerations": to_dict(job.resources.tolerations()) or None,
        "volumes": to_dict(volumes(job)),
        "containers": [{"name": NODE, "volumeMounts": to_dict(train_mounts(job, data_read_only=False))}]}
    return {"targetJobs": [{"name": NODE}],
            "metadata": {"labels": pod_labels(job), "annotations": dict(POD_ANNOTATIONS)},
            "spec": {k: v for k, v in spec.items() if v is not None}}


def _typed(model: Any, obj: Any) -> Any:
    """A kubernetes-client object as the Trainer API's own typed model of the same type."""
    return model.from_dict(to_dict(obj))

