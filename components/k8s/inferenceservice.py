"""A KServe InferenceService (serving.kserve.io/v1beta1) with the kubevae predictor.

A custom predictor container, `kserve-container`, runs the project image:
    kubevae serve --model /mnt/models --http-port 8080 --model-name NAME
KServe's storage initializer downloads STORAGE_URI (s3://...) into /mnt/models before it
starts, with the credentials and endpoint of the service account's S3 Secret and annotations
(manifests/base/storage). Security settings are on the container, not the pod: that is what
Knative (serverless mode) accepts.

The deployment mode is explicit (the `serving.kserve.io/deploymentMode` annotation), because
how a canary works depends on it (components.k8s.canary.InferenceServiceLauncher):
- Knative:         `canaryTrafficPercent` on the predictor; tag routing is on, so that the
                   canary revision is smoke-tested by its own `latest` URL.
- Standard:        `spec.canary[]` (KServe >= 0.20), a second predictor with a `trafficPercent`,
                   split by Gateway API HTTPRoute weights: needs the Gateway API.
- Standard-direct: Standard mode without canary support (no Gateway API, or KServe < 0.20,
                   where canaryTrafficPercent is silently ignored): an update replaces the model
                   directly, which must be asked for with canary_percent 0.
KServe 0.16 (what Kubeflow 26.03 ships) has no spec.canary[] (nor a predictor `name`): the
launcher writes with strict field validation, so a Standard canary there is refused by the API
server before anything changes, and `unserved` says what to use instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec
from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1HTTPGetAction, V1ObjectMeta, V1Probe

from components.k8s import to_dict
from components.k8s.contract import COMMON_LABELS
from components.k8s.security import Resources, container_security_context, scratch_mount, scratch_volume
from kubevae.objectstore import is_object_uri, s3_uri
from serving.config import ServeConfig

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"  # the name KServe's storage initializer looks for
HTTP_PORT = 8080
MODEL_DIR = "/mnt/models"
# Knative names the predictor service NAME-predictor and its revisions NAME-predictor-00001;
# keep the whole under the 63-character DNS label limit.
MAX_NAME = 45
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# deployment_mode parameter -> the annotation's value
DEPLOYMENT_MODES = {"Knative": "Knative", "Standard": "Standard", "Standard-direct": "Standard"}
CANARY_MODES = ("Knative", "Standard")
LEGACY_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}  # KServe < 0.16 names
# Fields KServe rejects on a spec.canary[] predictor (no autoscaling of its own).
CANARY_EXCLUDED = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                   "autoScaling", "canaryTrafficPercent", "workerSpec")


PREDICTOR_RESOURCES = Resources(cpu="1", memory="2Gi")
# The fields kubevae writes that only some KServe releases serve (Standard mode's canary).
SPEC_CANARY_RELEASE = "KServe >= 0.20 (0.16, what Kubeflow 26.03 ships, has no spec.canary[])"
FIELD_RELEASES = {"spec.canary": SPEC_CANARY_RELEASE, "spec.predictor.name": SPEC_CANARY_RELEASE}
NO_SPEC_CANARY_ADVICE = ("deployment_mode=Standard cannot run a canary on this cluster's KServe; use "
                         "deployment_mode=Standard-direct with canary_percent=0 (the new model replaces "
                         "the old one once it passes the smoke test), or deployment_mode=Knative")


def unserved(fields: list[str]) -> str:
    """What to say when the API server refused a strict write naming `fields` as unknown."""
    needs = sorted({FIELD_RELEASES[f] for f in fields if f in FIELD_RELEASES})
    text = (f"the cluster's InferenceService CRD does not know {', '.join(fields)}"
            + (f" (needs {'; '.join(needs)})" if needs else "") + "; nothing was changed")
    return f"{text}. {NO_SPEC_CANARY_ADVICE}" if needs else text


def check_deployment_mode(mode: str) -> str:
    if mode not in DEPLOYMENT_MODES:
        raise ValueError(f"deployment_mode: expected one of {', '.join(DEPLOYMENT_MODES)} (Knative: canary "
                         f"by canaryTrafficPercent; Standard: spec.canary[] with the Gateway API; "
                         f"Standard-direct: no canary), got {mode!r}")
    return mode


def canary_entry(predictor: dict, name: str, percent: int) -> dict:
    """A spec.canary[] entry (Standard mode): the new predictor, named, without autoscaling."""
    check_name(name)
    return {"predictor": {**{k: v for k, v in predictor.items() if k not in CANARY_EXCLUDED}, "name": name},
            "trafficPercent": percent}
# The server admits this many requests at once (queued or running) and answers 429 past it;
# Knative's containerConcurrency is the same number, so that its queue-proxy holds the rest (or
# the autoscaler adds replicas) instead of forwarding requests the server would refuse.
MAX_PENDING_REQUESTS = ServeConfig(model_dir=MODEL_DIR).max_pending_requests


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        raise ValueError(f"InferenceService name {name!r}: expected lower-case letters, digits and "
                         f"'-', starting with a letter, at most {MAX_NAME} characters")
    return name


def build_inference_service(name: str, namespace: str | None, image: str, storage_uri: str, *,
                            model_name: str | None = None,
                            service_account: str | None = "kubevae-kserve-s3",
                            resources: Resources = PREDICTOR_RESOURCES,
                            canary_percent: int | None = None, min_replicas: int = 1,
                            max_replicas: int = 3,
                            deployment_mode: str = "Knative") -> V1beta1InferenceService:
    check_name(name)
    check_deployment_mode(deployment_mode)
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent: expected 0..100, got {canary_percent}")
    if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
        raise ValueError(f"replicas: expected 0 <= min <= max and max >= 1, got {min_replicas}..{max_replicas}")
    model_name = model_name or name
    labels = {**COMMON_LABELS, "app.kubernetes.io/component": "serve"}
    return V1beta1InferenceService(
        api_version=API_VERSION, kind=KIND,
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=labels,
                              annotations={DEPLOYMENT_MODE: DEPLOYMENT_MODES[deployment_mode],
                                           **({TAG_ROUTING: "true"} if deployment_mode == "Knative" else {})}),
        spec=V1beta1InferenceServiceSpec(predictor=predictor_spec(
            image, storage_uri, model_name, service_account, resources, canary_percent,
            min_replicas, max_replicas, labels)))


def predictor_spec(image: str, storage_uri: str, model_name: str, service_account: str | None,
                   resources: Resources, canary_percent: int | None, min_replicas: int,
                   max_replicas: int, labels: dict[str, str] | None = None) -> V1beta1PredictorSpec:
    container = V1Container(
        name=CONTAINER, image=image, image_pull_policy="IfNotPresent",
        command=["kubevae", "serve"],
        args=["--model", MODEL_DIR, "--http-port", str(HTTP_PORT), "--model-name", model_name,
              "--max-pending-requests", str(MAX_PENDING_REQUESTS)],
        env=[V1EnvVar(name="STORAGE_URI", value=storage_uri), V1EnvVar(name="HOME", value="/tmp")],
        ports=[V1ContainerPort(name="http1", container_port=HTTP_PORT, protocol="TCP")],
        readiness_probe=V1Probe(
            http_get=V1HTTPGetAction(path=f"/v2/models/{model_name}/ready", port=HTTP_PORT),
            initial_delay_seconds=5, period_seconds=10, timeout_seconds=5, failure_threshold=3),
        # kserve's /v2/health/live answers "live" even with no model loaded: probe the model.
        # It answers 404 once the model is unloaded, so the kubelet restarts the container. The
        # server listens only after loading and warming up the model: 30 s + 3 x 10 s to do so.
        liveness_probe=V1Probe(
            http_get=V1HTTPGetAction(path=f"/v2/models/{model_name}/ready", port=HTTP_PORT),
            initial_delay_seconds=30, period_seconds=10, timeout_seconds=5, failure_threshold=3),
        resources=resources.requirements(), security_context=container_security_context(),
        volume_mounts=[scratch_mount()])
    return V1beta1PredictorSpec(
        service_account_name=service_account, containers=[container], volumes=[scratch_volume()],
        # The server never calls the Kubernetes API (KServe's storage initializer reads the S3
        # Secret through the service account's secrets, not through its token).
        automount_service_account_token=False, container_concurrency=MAX_PENDING_REQUESTS,
        labels=labels,  # on the pod: what the NetworkPolicy and AuthorizationPolicy select
        tolerations=resources.tolerations() or None, canary_traffic_percent=canary_percent,
        min_replicas=min_replicas, max_replicas=max_replicas)


def storage_uri_for(model_uri: str) -> str:
    """The storageUri for a model URI: KFP's minio:// artifacts become s3:// (what KServe's
    storage initializer reads); other URIs are used as they are."""
    return s3_uri(model_uri) if is_object_uri(model_uri) else model_uri


def write_inferenceservice(request: Any, out_dir: str | Path) -> Path:
    """Write the InferenceService that deploys `request` (a DeployRequest) as YAML into
    `out_dir`; returns the file. The local backend writes what a cluster would get."""
    import yaml

    from kubevae.storage import atomic_write_text

    cluster = request.cluster
    isvc = build_inference_service(
        request.model_name, cluster.namespace or None, cluster.image,
        storage_uri_for(request.model_uri), service_account=cluster.storage_service_account,
        deployment_mode=cluster.deployment_mode)
    path = Path(out_dir) / "inferenceservice.yaml"
    atomic_write_text(path, yaml.safe_dump(to_dict(isvc), sort_keys=False))
    return path
