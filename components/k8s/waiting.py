"""Talking to the API server about custom resources: connect, create strictly, watch one
object until it finishes, delete what a run left unfinished.

Every call goes through a `KubeApi` (a CustomObjectsApi and a CoreV1Api, or fakes with the same
methods): the tests pass a recording fake (tests/k8s_fake.py), and the RBAC Role in manifests/
grants exactly the calls the launchers make (components.k8s.training_jobs, .experiments, .canary).

Waiting lists the object, then watches it from that resourceVersion in chunks of `poll_s`
seconds (re-listing when the watch expires with 410 Gone); between chunks the caller may do
something (print node 0's new log lines). A failure raises ResourceFailed with the resource's
own reason and message, a timeout ResourceTimeout.

Every create and patch asks for strict field validation (fieldValidation=Strict): by default an
API server drops the fields its CRD does not know and answers 201, so a job meant for a newer
controller would run without its pod settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from components.k8s import to_dict

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Unknown fields are an error, not silently dropped (the API server's default is Warn).
STRICT = "Strict"
# A verdict on an object: ("succeeded" | "failed" | None, what it says)
State = Callable[[dict], tuple[str | None, str]]


class ResourceFailed(RuntimeError):
    pass


class ResourceTimeout(TimeoutError):
    pass


@dataclass
class KubeApi:
    """The Kubernetes API surface the launchers use."""

    custom: Any  # kubernetes.client.CustomObjectsApi or a fake with its methods
    core: Any  # kubernetes.client.CoreV1Api or a fake with its methods


def connect() -> KubeApi:
    """In a pod: its service account. Elsewhere: the current kubeconfig context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api_client = client.ApiClient()
    return KubeApi(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))


def current_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (a Kubeflow profile namespace for pipeline steps)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


@dataclass(frozen=True)
class Waiting:
    timeout_s: float = 6 * 3600
    poll_s: float = 15.0
    clock: Callable[[], float] = time.monotonic


NO_RUSH = Waiting()  # the default: six hours, polled every 15 s


@dataclass(frozen=True)
class Target:
    """Where a custom resource lives in the API."""

    kind: str
    group: str
    version: str
    plural: str


def create(api: KubeApi, target: Target, namespace: str, body: Any, log: Callable[[str], None]) -> dict:
    """Create `body` (an SDK object or JSON) with strict field validation; the created object."""
    body = to_dict(body)
    name = body["metadata"]["name"]
    try:
        created = api.custom.create_namespaced_custom_object(target.group, target.version, namespace,
                                                             target.plural, body, field_validation=STRICT)
    except ApiException as e:
        raise ResourceFailed(describe_api_error(f"creating {target.kind} {namespace}/{name}", e)) from e
    log(f"created {target.kind} {namespace}/{name}")
    return created


def delete(api: KubeApi, target: Target, namespace: str, name: str, log: Callable[[str], None]) -> None:
    """Delete one object, saying so; a failure is said, not raised (a timeout or failure is
    the error worth reporting)."""
    try:
        api.custom.delete_namespaced_custom_object(target.group, target.version, namespace, target.plural, name)
        log(f"deleted {target.kind} {namespace}/{name}")
    except ApiException as e:
        log(describe_api_error(f"could not delete {target.kind} {namespace}/{name}", e))


# -- watching one object -------------------------------------------------------------------
def wait_for(api: KubeApi, target: Target, namespace: str, name: str,
             state: State, waiting: Waiting,
             on_update: Callable[[dict], None] = lambda obj: None,
             between: Callable[[], None] = lambda: None) -> dict:
    """Wait until `state(obj)` says "succeeded" (returns the object) or "failed" (raises
    ResourceFailed with its message); ResourceTimeout after waiting.timeout_s."""
    from kubernetes import watch

    where = f"{target.kind} {namespace}/{name}"
    deadline = waiting.clock() + waiting.timeout_s
    obj, version = _list_one(api, target, namespace, name)
    while True:
        if obj is not None:
            on_update(obj)
            verdict, message = state(obj)
            if verdict == "succeeded":
                return obj
            if verdict == "failed":
                raise ResourceFailed(f"{where} failed: {message}")
        remaining = deadline - waiting.clock()
        if remaining <= 0:
            raise ResourceTimeout(f"{where} did not finish within {waiting.timeout_s:.0f}s "
                                  f"(last state: {state(obj)[1] if obj else 'not found'})")
        between()
        stream = watch.Watch().stream(
            api.custom.list_namespaced_custom_object, target.group, target.version, namespace,
            target.plural, field_selector=f"metadata.name={name}", resource_version=version,
            timeout_seconds=max(1, int(min(remaining, waiting.poll_s))))
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise ResourceFailed(f"{where} was deleted while waiting for it")
                if event["type"] in ("ADDED", "MODIFIED"):
                    obj = event["raw_object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    break  # judge it at the top of the loop
        except ApiException as e:
            if e.status != 410:
                raise
            obj, version = _list_one(api, target, namespace, name)  # the watch expired: re-list
        finally:
            stream.close()


def _list_one(api: KubeApi, target: Target, namespace: str, name: str) -> tuple[dict | None, str]:
    listing = api.custom.list_namespaced_custom_object(
        target.group, target.version, namespace, target.plural, field_selector=f"metadata.name={name}")
    items = listing.get("items") or []
    return (items[0] if items else None), listing.get("metadata", {}).get("resourceVersion", "")


def condition_state(obj: dict, success: str = "Succeeded", failure: str = "Failed") -> tuple[str | None, str]:
    """A Katib/Training Operator style verdict from status.conditions."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = [c for c in conditions if c.get("status") == "True"]
    for c in true:
        if c.get("type") == failure:
            return "failed", f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    for c in true:
        if c.get("type") == success:
            return "succeeded", c.get("message", success)
    latest = true[-1]["type"] if true else "Pending"
    return None, latest


def delete_unfinished(api: KubeApi, target: Target, namespace: str, label_selector: str,
                      state: State) -> list[str]:
    """Delete the objects with these labels that have not finished (finished ones stay, for
    inspection); one line per deletion. A kind the cluster does not serve is skipped."""
    try:
        listing = api.custom.list_namespaced_custom_object(target.group, target.version, namespace,
                                                           target.plural, label_selector=label_selector)
    except ApiException as e:
        if e.status == 404:  # the CRD is not installed (no Training Operator, say)
            return []
        raise
    done = []
    for obj in listing.get("items") or []:
        name = obj["metadata"]["name"]
        verdict, latest = state(obj)
        if verdict is not None:
            continue
        try:
            api.custom.delete_namespaced_custom_object(target.group, target.version, namespace, target.plural, name)
            done.append(f"deleted {target.kind} {namespace}/{name} (it was still {latest})")
        except ApiException as e:
            done.append(describe_api_error(f"could not delete {target.kind} {namespace}/{name}", e))
    return done


def describe_api_error(action: str, error: BaseException) -> str:
    cause = error if isinstance(error, ApiException) else error.__cause__ or error.__context__
    if isinstance(cause, ApiException):
        return f"{action}: HTTP {cause.status} {cause.reason}: {cause.body}"
    return f"{action}: {error}"


def sdk_configuration():
    from kubernetes.client import Configuration

    return Configuration()  # the SDK clients' own transport is replaced by the KubeApi's
