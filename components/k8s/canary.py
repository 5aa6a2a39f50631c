"""Serve a model through a KServe InferenceService: create it, or update it through a canary
that is smoke-tested and then promoted or rolled back, in the deployment mode's own way; roll
back a canary a failed run left half-rolled.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from components.k8s import inferenceservice as isvc_kind
from components.k8s import to_dict, unknown_fields
from components.k8s.waiting import (
    NO_RUSH,
    STRICT,
    KubeApi,
    ResourceFailed,
    Target,
    Waiting,
    create,
    delete,
    describe_api_error,
    wait_for,
)

INFERENCESERVICE = Target(isvc_kind.KIND, isvc_kind.GROUP, isvc_kind.VERSION, isvc_kind.PLURAL)


@dataclass
class Rollout:
    status: str  # "ready" (new service), "promoted" (canary took all traffic), "replaced"
    # (canary_percent 0), "rolled_back" (the previous model serves again)
    url: str
    smoke: dict[str, Any]


CANARY_RUN = "kubevae.io/canary-run"  # annotation: the KFP run whose canary is in flight


class InferenceServiceLauncher:
    """Create an InferenceService, or update one: through a canary that is smoke-tested, then
    promoted (all traffic) or rolled back (all traffic to the previous model), or, with
    canary_percent 0, directly (smoke-tested, and the previous predictor restored on failure).

    The canary follows the deployment mode (components.k8s.inferenceservice):
      Knative          predictor.canaryTrafficPercent; promote: remove it; roll back: 0
      Standard         spec.canary[] = [{predictor: {name: C, ...}, trafficPercent}]; promote:
                       the stable predictor becomes the canary's (named C), canary removed;
                       roll back: canary removed
      Standard-direct  no canary: an update with canary_percent > 0 fails before any change
    While a canary is in flight the service carries the CANARY_RUN annotation, so that the
    run's exit handler can roll back a canary that its failed run left half-rolled."""

    def __init__(self, api: KubeApi, namespace: str, waiting: Waiting = NO_RUSH,
                 log: Callable[[str], None] = print):
        self.api, self.namespace, self.waiting, self.log = api, namespace, waiting, log
        t = INFERENCESERVICE
        self._path = (t.group, t.version, namespace, t.plural)

    def get(self, name: str) -> dict | None:
        try:
            return self.api.custom.get_namespaced_custom_object(*self._path, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise ResourceFailed(describe_api_error(f"reading InferenceService {self.namespace}/{name}", e)) from e

    def deploy(self, isvc, smoke: Callable[[str, str], dict[str, Any]], canary_percent: int = 10,
               mode: str = "Knative", run_id: str = "", canary_name: str = "canary") -> Rollout:
        isvc_kind.check_deployment_mode(mode)
        body = to_dict(isvc)
        name = body["metadata"]["name"]
        model = _model_name(body)
        if not 0 <= canary_percent < 100:
            raise ValueError(f"canary_percent: expected 0 (replace directly) or a canary of 1..99 percent, "
                             f"got {canary_percent}")
        existing = self.get(name)
        if existing is None:
            return self._first(name, body, model, smoke)
        running = _deployment_mode(existing)
        if running and running != isvc_kind.DEPLOYMENT_MODES[mode]:
            raise ResourceFailed(f"InferenceService {self.namespace}/{name} runs in deployment mode {running}, "
                                 f"but deployment_mode={mode}: KServe cannot switch an existing service; "
                                 f"use deployment_mode={running} or delete the service first")
        if canary_percent == 0:
            return self._direct(name, body, existing, model, smoke)
        if mode not in isvc_kind.CANARY_MODES:
            raise ResourceFailed(
                f"deployment_mode={mode} has no canary (spec.canary[] needs KServe >= 0.20 in Standard mode "
                f"with the Gateway API; canaryTrafficPercent works only in Knative mode), but "
                f"canary_percent={canary_percent}: nothing was changed. Set canary_percent=0 to replace "
                f"the served model directly, or deployment_mode=Knative or Standard")
        meta = {"labels": body["metadata"].get("labels"),
                "annotations": {**(body["metadata"].get("annotations") or {}), CANARY_RUN: run_id or "unknown"}}
        if mode == "Knative":
            predictor = {**body["spec"]["predictor"], "canaryTrafficPercent": canary_percent}
            patch = {"metadata": meta, "spec": {"predictor": predictor}}
        else:
            patch = {"metadata": meta, "spec": {"canary": [isvc_kind.canary_entry(
                body["spec"]["predictor"], canary_name, canary_percent)]}}
        patched = self._patch(name, patch)
        self.log(f"InferenceService {self.namespace}/{name}: {mode} canary with {canary_percent}% of the traffic")
        try:
            ready = self._wait_ready(name, patched["metadata"]["generation"],
                                     canary_name if mode == "Standard" else None)
            url = canary_url(ready) if mode == "Knative" else standard_canary_url(ready, canary_name)
            result = smoke(url, model)
        except Exception as e:  # not ready, failed, timed out, or the smoke test failed
            self.log(f"InferenceService {self.namespace}/{name}: canary rejected ({e}); rolling back")
            back = self.rollback(name, mode)
            return Rollout("rolled_back", service_url(back), {"error": str(e)})
        promote: dict[str, Any]
        if mode == "Knative":
            promote = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        else:
            promote = {"spec": {"predictor": {**body["spec"]["predictor"], "name": canary_name}, "canary": None}}
        promote["metadata"] = {"annotations": {CANARY_RUN: None}}
        promoted = self._patch(name, promote)
        final = self._wait_ready(name, promoted["metadata"]["generation"])
        self.log(f"InferenceService {self.namespace}/{name}: canary promoted to all traffic")
        return Rollout("promoted", service_url(final), result)

    def rollback(self, name: str, mode: str) -> dict:
        """All traffic back to the previous model; the service once Ready again."""
        canary = {"canaryTrafficPercent": 0} if mode == "Knative" else None
        patch = {"metadata": {"annotations": {CANARY_RUN: None}},
                 "spec": {"predictor": canary} if mode == "Knative" else {"canary": None}}
        rolled = self._patch(name, patch)
        return self._wait_ready(name, rolled["metadata"]["generation"])

    def _direct(self, name: str, body: dict, existing: dict, model: str, smoke) -> Rollout:
        previous = existing["spec"]["predictor"]
        self.log(f"InferenceService {self.namespace}/{name}: canary_percent=0, replacing the model directly "
                 f"(no canary: the new model takes all traffic once Ready)")
        predictor = {**body["spec"]["predictor"], "canaryTrafficPercent": None}
        patched = self._patch(name, {"metadata": {"labels": body["metadata"].get("labels")},
                                     "spec": {"predictor": predictor}})
        try:
            ready = self._wait_ready(name, patched["metadata"]["generation"])
            url = service_url(ready)
            result = smoke(url, model)
        except Exception as e:
            self.log(f"InferenceService {self.namespace}/{name}: new model rejected ({e}); restoring the previous one")
            restore = {k: None for k in predictor if k not in previous}
            restored = self._patch(name, {"spec": {"predictor": {**restore, **previous}}})
            back = self._wait_ready(name, restored["metadata"]["generation"])
            return Rollout("rolled_back", service_url(back), {"error": str(e)})
        return Rollout("replaced", url, result)

    def _first(self, name: str, body: dict, model: str, smoke) -> Rollout:
        created = create(self.api, INFERENCESERVICE, self.namespace, body, self.log)
        ready = self._wait_ready(name, created["metadata"].get("generation", 1))
        url = service_url(ready)
        try:
            result = smoke(url, model)
        except Exception as e:
            # nothing to fall back to: do not leave a broken service behind
            delete(self.api, INFERENCESERVICE, self.namespace, name, self.log)
            raise ResourceFailed(f"InferenceService {self.namespace}/{name} failed its smoke test at {url}: "
                                 f"{e}; it was deleted") from e
        return Rollout("ready", url, result)

    def _patch(self, name: str, patch: dict) -> dict:
        try:
            return self.api.custom.patch_namespaced_custom_object(*self._path, name, patch,
                                                                  field_validation=STRICT)
        except ApiException as e:
            where = f"patching InferenceService {self.namespace}/{name}"
            rejected = unknown_fields(f"{e.reason} {e.body}") if e.status == 400 else []
            if rejected:  # a field this cluster's KServe does not serve: nothing was changed
                raise ResourceFailed(f"{where}: {isvc_kind.unserved(rejected)}") from e
            raise ResourceFailed(describe_api_error(where, e)) from e

    def _wait_ready(self, name: str, generation: int, canary: str | None = None) -> dict:
        return wait_for(self.api, INFERENCESERVICE, self.namespace, name,
                        lambda obj: ready_state(obj, generation, canary), self.waiting)


def _deployment_mode(obj: dict) -> str | None:
    """Knative or Standard: the annotation, else what KServe reports (legacy names normalized)."""
    mode = ((obj.get("metadata") or {}).get("annotations") or {}).get(isvc_kind.DEPLOYMENT_MODE) \
        or (obj.get("status") or {}).get("deploymentMode")
    return isvc_kind.LEGACY_MODES.get(mode, mode) if mode else None


def canary_in_flight(obj: dict) -> str | None:
    """The deployment mode of a canary this service holds (Knative or Standard), else None."""
    spec = obj.get("spec") or {}
    if spec.get("canary"):
        return "Standard"
    if (spec.get("predictor") or {}).get("canaryTrafficPercent") not in (None, 100):
        return "Knative"
    return None


def standard_canary_url(obj: dict, canary: str) -> str:
    """A spec.canary[] predictor's own Service, in-cluster: KServe names it NAME-CANARY-predictor."""
    meta = obj.get("metadata") or {}
    return f"http://{meta['name']}-{canary}-predictor.{meta.get('namespace')}.svc.cluster.local"


def ready_state(obj: dict, generation: int, canary: str | None = None) -> tuple[str | None, str]:
    """Ready once KServe has reconciled `generation` (the spec we wrote) and says Ready=True
    (and, for a spec.canary[] predictor, its canaryStatuses entry is ready)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration", 0) < generation:  # older conditions say nothing about it
        return None, f"generation {generation} not reconciled yet"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("PredictorReady", "Ready"):
        c = conditions.get(kind) or {}
        if c.get("status") == "False" and c.get("reason") == "RevisionFailed":
            return "failed", f"{kind}: {c.get('reason')}: {c.get('message', '')}"
    ready = conditions.get("Ready") or {}
    if ready.get("status") == "True":
        if canary is not None:
            entry = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == canary), None)
            if not (entry and entry.get("ready")):
                return None, f"canary {canary} not ready yet"
        return "succeeded", "Ready"
    return None, f"Ready={ready.get('status', 'Unknown')} {ready.get('reason', '')}".strip()


def service_url(obj: dict) -> str:
    """The cluster-local address of the service (reachable from the pipeline's pods)."""
    status = obj.get("status") or {}
    url = ((status.get("address") or {}).get("url")) or status.get("url")
    if not url:
        raise ResourceFailed(f"InferenceService {obj['metadata']['name']} is Ready but has no URL")
    return url


def canary_url(obj: dict) -> str:
    """The newest revision alone (tag routing's `latest` tag), addressed in-cluster.

    Its status URL (latest-NAME-predictor.NS.example.com) is the external domain, which usually
    does not resolve inside a pod; Knative also makes a cluster-local Service per tag, named
    like the URL's first label."""
    predictor = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    namespace = (obj.get("metadata") or {}).get("namespace")
    for target in predictor.get("traffic") or []:
        if target.get("tag") == "latest" and target.get("url"):
            host = urllib.parse.urlsplit(target["url"]).hostname or ""
            if namespace and host:
                return f"http://{host.split('.')[0]}.{namespace}.svc.cluster.local"
            return target["url"]
    return service_url(obj)


def _model_name(body: dict) -> str:
    args = body["spec"]["predictor"]["containers"][0].get("args") or []
    return args[args.index("--model-name") + 1] if "--model-name" in args else body["metadata"]["name"]
