"""A recording fake of the Kubernetes API for the launcher tests.

It has the methods of kubernetes.client.CustomObjectsApi and CoreV1Api that the launchers
(and the Katib and Training SDK clients inside them) call, and nothing else: a call the fake
does not know fails the test, so the recorded calls are the complete list that the RBAC Role
must allow. Objects live in a dict store; statuses are scripted per resource plural and
delivered one per watch call, and a watch with nothing to deliver advances the fake clock by
its timeout, as a real watch would block.

Creates and patches meet the CRDs of the releases the fake serves (`releases`, the newest by
default; k8s_checks.KUBEFLOW_26_03 for Kubeflow 26.03's Trainer v2.1.0 and KServe 0.16.0) as
an API server does: with fieldValidation=Strict a field the CRD does not declare is refused
(400, `strict decoding error: unknown field "spec.x"`); without it the field is dropped and the
request succeeds with a warning (`warnings`). dryRun=All validates and runs the admission
checks (`admission`) but stores nothing.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from k8s_checks import NEWEST, Releases, label_errors, prune_unknown, unknown_fields
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from components.k8s.waiting import KubeApi

EPOCH = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)
GONE = object()  # a scripted update: the watch expires with 410 Gone


@dataclass(frozen=True)
class Call:
    verb: str
    group: str  # "" for the core API
    version: str
    resource: str  # plural, with "/subresource" for subresources
    namespace: str
    name: str | None
    body: Any = None
    dry_run: str | None = None
    field_validation: str | None = None

    @property
    def rbac(self) -> tuple[str, str, str]:
        return self.group, self.resource, self.verb


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Thread:  # what async_req=True returns
    def __init__(self, value: Any):
        self.value = value

    def get(self, timeout: Any = None) -> Any:
        return self.value


class _WatchResponse:
    def __init__(self, events: list[dict]):
        self.events = events

    def stream(self, amt=None, decode_content=False):
        for event in self.events:
            yield (json.dumps(event) + "\n").encode()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class _Json:
    def __init__(self, obj: Any):
        self.data = json.dumps(obj)


def stamp(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _matches(obj: dict, field_selector: str | None, label_selector: str | None) -> bool:
    for selector, get in ((field_selector, lambda k: {"metadata.name": obj["metadata"]["name"]}.get(k)),
                          (label_selector, lambda k: (obj["metadata"].get("labels") or {}).get(k))):
        for term in filter(None, (selector or "").split(",")):
            key, _, value = term.partition("=")
            if get(key) != value:
                return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what CustomObjectsApi.patch sends): null deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeCluster:
    def __init__(self, clock: FakeClock | None = None, releases: Releases = NEWEST):
        self.clock = clock or FakeClock()
        self.releases = releases
        self.warnings: list[str] = []  # what a real server sends in Warning headers
        # plural -> check(body) that returns a denial message or None (an admission webhook)
        self.admission: dict[str, Callable[[dict], str | None]] = {}
        # Field paths ("spec.podTemplateOverrides") that the served CRDs lack on top of the
        # release's: a CRD older than any in ../shared/crds.
        self.undeclared: set[str] = set()
        self.calls: list[Call] = []
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.pods: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
        self._versions = itertools.count(100)
        self.custom = _CustomObjectsApi(self)
        self.core = _CoreV1Api(self)

    def api(self) -> KubeApi:
        return KubeApi(custom=self.custom, core=self.core)

    # -- scripting ------------------------------------------------------------------------
    def script(self, plural: str, *updates: Any) -> None:
        """Status updates (dicts merged into .status, callables obj -> status dict, or GONE)
        delivered to the newest object of `plural`, one per watch call."""
        self.scripts[plural].extend(updates)

    def put(self, group: str, plural: str, namespace: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, resourceVersion=str(next(self._versions)),
                    generation=meta.get("generation", 1),
                    creationTimestamp=meta.get("creationTimestamp", stamp(self.clock.now)))
        self.objects[(group, plural, namespace, meta["name"])] = obj
        return obj

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], phase: str = "Running",
                waiting: str | None = None, container: str = "pytorch") -> None:
        status: dict[str, Any] = {"phase": phase, "containerStatuses": [
            {"name": container, "ready": phase == "Running", "restartCount": 0, "image": "img",
             "imageID": "", "state": {"waiting": {"reason": waiting, "message": "scripted"}} if waiting
             else {"running": {"startedAt": stamp(0)}}}]}
        self.pods[(namespace, name)] = {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": name, "namespace": namespace, "labels": labels},
                                        "spec": {"containers": [{"name": container, "image": "img"}]},
                                        "status": status}

    def log(self, namespace: str, pod: str, at: float, line: str) -> None:
        self.logs[(namespace, pod)].append((at, line))

    def created(self, plural: str) -> list[dict]:
        """The bodies of the creates that were meant to persist (not dry runs)."""
        return [c.body for c in self.calls if c.verb == "create" and c.resource == plural and not c.dry_run]

    def dry_runs(self, plural: str) -> list[dict]:
        return [c.body for c in self.calls if c.verb == "create" and c.resource == plural and c.dry_run]

    def verbs(self) -> set[tuple[str, str, str]]:
        return {c.rbac for c in self.calls}

    # -- internals ------------------------------------------------------------------------
    def record(self, verb: str, group: str, version: str, resource: str, namespace: str,
               name: str | None = None, body: Any = None, dry_run: str | None = None,
               field_validation: str | None = None) -> None:
        self.calls.append(Call(verb, group, version, resource, namespace, name, copy.deepcopy(body),
                               dry_run, field_validation))

    def admit(self, plural: str, obj: dict, field_validation: str | None) -> dict:
        """What the API server makes of a written object: a strict write with fields the CRD
        does not declare is refused; otherwise they are dropped (with a warning); then the
        admission check of `plural` runs."""
        unknown = unknown_fields(obj, self.releases) + [p for p in sorted(self.undeclared) if _has(obj, p)]
        kind, version = obj.get("kind", ""), obj.get("apiVersion", "").rpartition("/")[2]
        if unknown and field_validation == "Strict":
            raise _status_error(400, "Bad Request", "BadRequest",
                                f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding '
                                f'error: {", ".join(f"unknown field {json.dumps(u)}" for u in unknown)}')
        if unknown:
            self.warnings += [f"unknown field {json.dumps(u)}" for u in unknown]
            obj = prune_unknown(obj, self.releases)
            for path in self.undeclared:
                *parents, last = path.split(".")
                holder = functools.reduce(lambda o, k: o.get(k) or {}, parents, obj)
                holder.pop(last, None)
        invalid = label_errors(obj.get("metadata"))
        if invalid:  # the API server validates every object's metadata (422, nothing written)
            group = obj.get("apiVersion", "").rpartition("/")[0]
            raise _status_error(422, "Unprocessable Entity", "Invalid",
                                f'{kind}.{group} "{obj["metadata"].get("name")}" is invalid: {"; ".join(invalid)}')
        check = self.admission.get(plural)
        denial = check(obj) if check else None
        if denial:
            raise _status_error(400, "Bad Request", "BadRequest",
                                f'admission webhook "validate.{plural}" denied the request: {denial}')
        return obj

    def newest(self, plural: str) -> dict | None:
        candidates = [o for (g, p, ns, n), o in self.objects.items() if p == plural]
        return max(candidates, key=lambda o: int(o["metadata"]["resourceVersion"]), default=None)

    def bump(self, obj: dict) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))


def _has(obj: Any, path: str) -> bool:
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def _status_error(status: int, reason: str, status_reason: str, message: str) -> ApiException:
    e = ApiException(status=status, reason=reason)
    e.body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": message, "reason": status_reason, "code": status})
    return e


def _not_found(kind: str, name: str) -> ApiException:
    e = ApiException(status=404, reason="Not Found")
    e.body = json.dumps({"kind": "Status", "reason": "NotFound", "message": f'{kind} "{name}" not found'})
    return e


class _CustomObjectsApi:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, dry_run=None,
                                        field_validation=None, **kwargs):
        assert dry_run in (None, "All"), f"dryRun={dry_run!r}: the API server accepts only All"
        body = ApiClient().sanitize_for_serialization(body)
        name = body["metadata"]["name"]
        self.c.record("create", group, version, plural, namespace, name, body, dry_run, field_validation)
        body = self.c.admit(plural, body, field_validation)
        if (group, plural, namespace, name) in self.c.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        if dry_run:
            return {**copy.deepcopy(body), "metadata": {**body["metadata"], "namespace": namespace}}
        return copy.deepcopy(self.c.put(group, plural, namespace, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, async_req=False, **kwargs):
        self.c.record("get", group, version, plural, namespace, name)
        obj = self.c.objects.get((group, plural, namespace, name))
        if obj is None:
            raise _not_found(plural, name)
        return _Thread(copy.deepcopy(obj)) if async_req else copy.deepcopy(obj)

    def list_namespaced_custom_object(self, group, version, namespace, plural, field_selector=None,
                                      label_selector=None, watch=False, timeout_seconds=None,
                                      async_req=False, **kwargs):
        if watch:
            self.c.record("watch", group, version, plural, namespace)
            return self._watch(group, plural, namespace, field_selector, timeout_seconds)
        self.c.record("list", group, version, plural, namespace)
        items = [copy.deepcopy(o) for (g, p, ns, n), o in sorted(self.c.objects.items())
                 if (g, p, ns) == (group, plural, namespace) and _matches(o, field_selector, label_selector)]
        result = {"items": items, "metadata": {"resourceVersion": str(next(self.c._versions))}}
        return _Thread(result) if async_req else result

    def _watch(self, group, plural, namespace, field_selector, timeout_seconds):
        script = self.c.scripts[plural]
        target = self.c.newest(plural)
        if not script or target is None:
            self.c.clock.advance(timeout_seconds or 1)  # nothing happens: the watch times out
            return _WatchResponse([])
        update = script.popleft()
        if update is GONE:
            return _WatchResponse([{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                                 "reason": "Expired", "message": "too old"}}])
        status = update(target) if callable(update) else update
        target["status"] = merge_patch(target.get("status") or {}, status)
        self.c.bump(target)
        self.c.clock.advance(1)
        if not _matches(target, field_selector, None) or target["metadata"]["namespace"] != namespace:
            return _WatchResponse([])
        return _WatchResponse([{"type": "MODIFIED", "object": copy.deepcopy(target)}])

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, dry_run=None,
                                       field_validation=None, **kwargs):
        assert dry_run is None, "the launchers never dry-run a patch"
        self.c.record("patch", group, version, plural, namespace, name, body, dry_run, field_validation)
        key = (group, plural, namespace, name)
        if key not in self.c.objects:
            raise _not_found(plural, name)
        obj = self.c.objects[key]
        patched = self.c.admit(plural, merge_patch(obj, body), field_validation)
        if patched.get("spec") != obj.get("spec"):
            patched["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        self.c.objects[key] = patched
        self.c.bump(patched)
        return copy.deepcopy(patched)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None, **kwargs):
        self.c.record("delete", group, version, plural, namespace, name)
        if self.c.objects.pop((group, plural, namespace, name), None) is None:
            raise _not_found(plural, name)
        return {"kind": "Status", "status": "Success"}


class _CoreV1Api:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster
        self.client = ApiClient()

    def list_namespaced_pod(self, namespace, label_selector=None, async_req=False, **kwargs):
        self.c.record("list", "", "v1", "pods", namespace)
        items = [p for (ns, _), p in sorted(self.c.pods.items())
                 if ns == namespace and _matches(p, None, label_selector)]
        result = self.client.deserialize(_Json({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                                "items": items}), "V1PodList")
        return _Thread(result) if async_req else result

    def read_namespaced_pod(self, name, namespace, **kwargs):
        self.c.record("get", "", "v1", "pods", namespace, name)
        pod = self.c.pods.get((namespace, name))
        if pod is None:
            raise _not_found("pods", name)
        return self.client.deserialize(_Json(pod), "V1Pod")

    def read_namespaced_pod_log(self, name, namespace, container=None, timestamps=False, **kwargs):
        self.c.record("get", "", "v1", "pods/log", namespace, name)
        if (namespace, name) not in self.c.pods:
            raise _not_found("pods", name)
        lines = [(f"{stamp(t)} " if timestamps else "") + text
                 for t, text in self.c.logs[(namespace, name)] if t <= self.c.clock.now]
        return "".join(line + "\n" for line in lines)


def status_updates(*conditions: str, **extra: Any) -> dict:
    """A status with these condition types True (in order), plus extra fields."""
    return {"conditions": [{"type": t, "status": "True", "reason": t, "message": f"{t} (scripted)",
                            "lastTransitionTime": stamp(0)} for t in conditions], **extra}


def failed(reason: str, message: str) -> dict:
    return {"conditions": [{"type": "Created", "status": "True"},
                           {"type": "Failed", "status": "True", "reason": reason, "message": message}]}


ScriptedStatus = Callable[[dict], dict]
