"""Pod security and resources shared by every pod kubevae creates.

Every pod meets the *restricted* Pod Security Standard (runAsNonRoot, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp), runs with a read-only root
filesystem (scratch space is an emptyDir on /tmp) and declares requests and limits.
`pod_security_violations` checks a pod spec against the same rules; the manifest tests run it
over every pod template in the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes.client import (
    V1Capabilities,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1PodSecurityContext,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from components.k8s.contract import MLFLOW_CREDENTIALS, MLFLOW_SECRET_KEYS

# The non-root user of the project image (see Dockerfile). Numeric, so that the kubelet can
# verify runAsNonRoot without reading /etc/passwd in the image.
RUN_AS_USER = 10001
GPU_RESOURCE = "nvidia.com/gpu"
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/tmp"

# Pod Security Standards, "restricted" profile (Kubernetes v1.30+).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def pod_security_context() -> V1PodSecurityContext:
    return V1PodSecurityContext(run_as_non_root=True, run_as_user=RUN_AS_USER,
                                run_as_group=RUN_AS_USER, fs_group=RUN_AS_USER,
                                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def container_security_context() -> V1SecurityContext:
    """Complete on the container too: KServe/Knative only accept container-level settings."""
    return V1SecurityContext(run_as_non_root=True, run_as_user=RUN_AS_USER,
                             run_as_group=RUN_AS_USER, allow_privilege_escalation=False,
                             read_only_root_filesystem=True,
                             capabilities=V1Capabilities(drop=["ALL"]),
                             seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def scratch_volume(size_limit: str = "2Gi") -> V1Volume:
    return V1Volume(name=SCRATCH_VOLUME,
                    empty_dir=V1EmptyDirVolumeSource(size_limit=size_limit))


def mlflow_credentials_env(secret: str = MLFLOW_CREDENTIALS) -> list[V1EnvVar]:
    """MLFLOW_TRACKING_USERNAME / PASSWORD as secretKeyRefs, for the pods that log to MLflow."""
    return [V1EnvVar(name=key, value_from=V1EnvVarSource(secret_key_ref=V1SecretKeySelector(
        name=secret, key=key))) for key in MLFLOW_SECRET_KEYS]


def scratch_mount() -> V1VolumeMount:
    return V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH_PATH)


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container. GPUs are limits (the device plugin sets the
    request equal) plus a toleration for the usual GPU node taint."""

    cpu: str = "1"
    memory: str = "4Gi"
    cpu_limit: str | None = None  # default: same as the request
    memory_limit: str | None = None
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"gpus: expected >= 0, got {self.gpus}")

    def requirements(self) -> V1ResourceRequirements:
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits = {"cpu": self.cpu_limit or self.cpu, "memory": self.memory_limit or self.memory}
        if self.gpus:
            limits[GPU_RESOURCE] = str(self.gpus)
        return V1ResourceRequirements(requests=requests, limits=limits)

    def tolerations(self) -> list[V1Toleration]:
        return gpu_tolerations(self.gpus)


def gpu_tolerations(gpus: int) -> list[V1Toleration]:
    if not gpus:
        return []
    return [V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]


# -- the check ---------------------------------------------------------------------------
def pod_security_violations(pod_spec: dict[str, Any], where: str = "pod") -> list[str]:
    """Every way a pod spec (JSON form) breaks the restricted Pod Security Standard or this
    project's rules (read-only root filesystem, requests and limits). Empty = compliant."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{where}: {flag} is set")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"{where}: volume {volume.get('name')!r} uses {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append(f"{where}: securityContext.runAsUser is 0")
    containers = [("container", c) for c in pod_spec.get("containers") or []] + \
                 [("initContainer", c) for c in pod_spec.get("initContainers") or []]
    if not containers:
        problems.append(f"{where}: no containers")
    for kind, c in containers:
        problems += _container_violations(c, pod_sc, f"{where} {kind} {c.get('name')!r}")
    return problems


def _container_violations(c: dict[str, Any], pod_sc: dict[str, Any], where: str) -> list[str]:
    sc = c.get("securityContext") or {}
    problems = []

    def effective(key: str) -> Any:
        return sc[key] if key in sc else pod_sc.get(key)

    if effective("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    if sc.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser is 0")
    if sc.get("privileged"):
        problems.append(f"{where}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append(f"{where}: capabilities do not drop ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        problems.append(f"{where}: adds capabilities {caps.get('add')}")
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    for port in c.get("ports") or []:
        if port.get("hostPort"):
            problems.append(f"{where}: hostPort {port['hostPort']}")
    resources = c.get("resources") or {}
    for section in ("requests", "limits"):
        for name in ("cpu", "memory"):
            if name not in (resources.get(section) or {}):
                problems.append(f"{where}: no {section}.{name}")
    return problems
