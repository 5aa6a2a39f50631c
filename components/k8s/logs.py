"""Following a training job's node-0 log into the step's own log.

The tune and train steps run for hours; their KFP log shows node 0's lines (the PyTorchJob
Master, the TrainJob's node-0 pod) as the job prints them, read between the watch's chunks.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes.client.rest import ApiException

from components.k8s.waiting import KubeApi, ResourceFailed

# Pod states that never resolve by waiting: fail at once instead of at the timeout.
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError"}


class LogFollower:
    """Prints the new lines of a job's node-0 container on every poll. Lines are asked for with
    the kubelet's timestamps, and those at or before the last printed one are skipped, so a
    line is printed once even though the reads overlap."""

    def __init__(self, api: KubeApi, namespace: str, where: str, selector: str, container: str,
                 log: Callable[[str], None]):
        self.api, self.namespace, self.where, self.selector = api, namespace, where, selector
        self.container, self.log = container, log
        self.pod: str | None = None
        self.last = ""

    def poll(self) -> None:
        pod = self._pod()
        if pod is None:
            return
        try:
            text = self.api.core.read_namespaced_pod_log(pod, self.namespace, container=self.container,
                                                         timestamps=True)
        except ApiException as e:
            if e.status in (400, 404):  # not started yet (init container), or being replaced
                return
            raise
        for line in (text or "").splitlines():
            stamp, _, message = line.partition(" ")
            key = _sortable_time(stamp)
            if key > self.last:
                self.log(message)
                self.last = key

    def _pod(self) -> str | None:
        if self.pod is None:
            pods = self.api.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
            if not pods.items:
                return None
            self.pod = min(p.metadata.name for p in pods.items)
        try:
            pod = self.api.core.read_namespaced_pod(self.pod, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            self.pod = None  # replaced (a restarted job makes new pods): find it again next time
            return None
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        for s in statuses:
            waiting = s.state.waiting if s.state else None
            if waiting and waiting.reason in FATAL_WAITING:
                raise ResourceFailed(f"{self.where}: pod {self.pod} container "
                                     f"{s.name}: {waiting.reason}: {waiting.message}")
        return self.pod if pod.status.phase != "Pending" else None


def _sortable_time(stamp: str) -> str:
    """RFC 3339 with nanoseconds, fixed width (Go trims trailing zeros, which breaks sorting)."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{(frac if dot else '').ljust(9, '0')}"
