"""The cluster contract: what manifests/base creates in a namespace and what kubevae's pods,
the pipeline and the preflight check read from it, named once.

  Secret kubevae-s3                S3_SECRET_KEYS (the names KServe's storage initializer reads)
  Secret kubevae-mlflow-auth       MLFLOW_SECRET_KEYS (MLflow's clients read them; never a parameter)
  ConfigMap kubevae-settings       SETTINGS_KEYS (endpoints and settings, manifests/base/settings.env)
  labels                           COMMON_LABELS on everything kubevae creates; RUN_LABEL ties a
                                   resource to its KFP run (the exit handler finds what a failed run
                                   left behind); QUEUE_LABEL hands a training job to a Kueue LocalQueue
"""

from __future__ import annotations

import re

S3_SECRET = "kubevae-s3"  # noqa: S105 (a Secret's name, not its value)
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SETTINGS_CONFIG_MAP = "kubevae-settings"
# A TrainJob's container has no envFrom, so it names these one by one.
SETTINGS_KEYS = ("S3_ENDPOINT", "S3_USE_HTTPS", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL",
                 "MLFLOW_TRACKING_URI")
# MLflow requires authentication (manifests/base/mlflow.yaml).
MLFLOW_CREDENTIALS = "kubevae-mlflow-auth"
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

COMMON_LABELS = {"app.kubernetes.io/name": "kubevae", "app.kubernetes.io/part-of": "kubevae"}
RUN_LABEL = "kubevae.io/pipeline-run"
# Kueue admits a job whose own metadata carries this label into that LocalQueue. It goes on the
# TrainJob or PyTorchJob only, never on its pods: Kueue's pod integration would queue each pod too.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A LocalQueue is named by a DNS-1123 label (which is also a valid label value).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_queue_name(queue_name: str) -> str:
    """`queue_name` as given when it is empty (no queue) or a LocalQueue's name; else ValueError."""
    if queue_name and (len(queue_name) > 63 or not _DNS_LABEL.match(queue_name)):
        raise ValueError(f"queue_name: expected the name of a Kueue LocalQueue in the run's namespace "
                         f"(a DNS label: at most 63 lowercase letters, digits and '-', starting and "
                         f"ending with a letter or digit) or empty for no queue, got {queue_name!r}")
    return queue_name


def queue_labels(queue_name: str) -> dict[str, str]:
    """The label that hands a job to the LocalQueue `queue_name`; none when it is empty."""
    return {QUEUE_LABEL: check_queue_name(queue_name)} if queue_name else {}
