"""Kubernetes resources for training, tuning and serving, and the launchers that run them.

Reusable beyond kubevae: the builders take an image and a command's flags, the launchers take
any Katib Experiment, TrainJob, PyTorchJob or InferenceService.

The resources:
- contract:         the cluster contract: Secret, ConfigMap and their keys, the labels
- jobspec:          the one spec of a `kubevae train` run (TrainingJob) and the pod layout
- trainjob:         a TrainJob (trainer.kubeflow.org/v1alpha1, Trainer v2) running that spec
- pytorchjob:       a PyTorchJob (kubeflow.org/v1, Training Operator 1.9) running the same
- training_apis:    the table of the two training APIs: builder, resource, conditions, node 0
- katib:            a Katib Experiment whose trials are that TrainJob or PyTorchJob
- inferenceservice: a KServe InferenceService with the kubevae predictor
- security:         restricted Pod Security Standard contexts, resources, GPU tolerations

The workloads in manifests/ are rendered from the kubernetes backend by components.backends.render.

Running them:
- waiting:          the API client, strict creates, watching one object to its end, cleanup
- logs:             node 0's log followed into the step's log
- training_jobs:    choose the job shape the cluster serves, run a training job
- experiments:      run a Katib Experiment, read its trials back as the study
- canary:           create or update an InferenceService through a smoke-tested canary
- preflight:        `kubevae cluster check`, a read-only check of a namespace
"""

from __future__ import annotations

import re
from typing import Any


def to_dict(obj: Any) -> Any:
    """The JSON form of an SDK model object (kubernetes, kubeflow-training, katib, kserve, and
    kubeflow-trainer-api's pydantic models)."""
    from kubernetes.client import ApiClient
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        # the generated to_dict: camelCase, unset fields left out (kubeflow-trainer-api's generated
        # models define it; pydantic's BaseModel, all mypy knows of obj here, does not)
        return obj.to_dict()  # type: ignore[attr-defined]
    return ApiClient().sanitize_for_serialization(obj)


def unknown_fields(message: str) -> list[str]:
    """The fields an API server's strict field validation named as unknown in its answer
    (`strict decoding error: unknown field "spec.runtimePatches", unknown field ...`), in
    order; the message may be the Status body as JSON text (quotes escaped)."""
    return re.findall(r'unknown field \\?"([^"\\]+)\\?"', message)
