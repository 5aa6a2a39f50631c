"""A read-only preflight of a namespace before kubevae's first run on a cluster.

`kubevae cluster check --namespace NS` asks the API server (the kubeconfig's current context,
or the pod's service account in a pod: `waiting.connect`) and the namespace's object store
and MLflow server whether a run can work, and prints one table: each row a check, its status
and what to change. Statuses:

  ok               nothing to do
  missing          the run fails here; the row says what to change (exit status 1)
  warn             works with the defaults, but something is off (exit status 0)
  could not check  this identity may not look (forbidden), or the service is not reachable
                   from here; the row says what would let it look

Rows:
- CRDs: the versions served of TrainJob, PyTorchJob, Katib's Experiment and InferenceService,
  read from the CustomResourceDefinitions; for TrainJob whether the served schema has
  `runtimePatches` and `activeDeadlineSeconds` (Trainer >= 2.2) or only `podTemplateOverrides`
  (2.1, which silently prunes kubevae's pod settings), for InferenceService whether
  `spec.canary` exists (KServe >= 0.20). When reading CRDs is forbidden (a namespace user),
  the served versions come from the discovery API and the field checks are "could not check".
- the `torch-distributed` ClusterTrainingRuntime (with --training-api trainer);
- the `kubevae-settings` ConfigMap and the `kubevae-s3` and `kubevae-mlflow-auth` Secrets with
  their keys (never their values: only whether each is set and not a template placeholder),
  and KServe's `serving.kserve.io/s3-*` annotations on `kubevae-s3`;
- the run service account's permissions: one access review per call in
  manifests/base/rbac.yaml, plus the two that KFP's own driver and launcher make under the
  run's service account (configmaps get kfp-launcher, secrets get mlpipeline-minio-artifact).
  A SubjectAccessReview for the service account; when that is forbidden, a
  LocalSubjectAccessReview; when that is forbidden too, the rows say so (a
  SelfSubjectAccessReview answers only for the service account itself, in a pod that runs as
  it);
- S3: the endpoint (the ConfigMap's S3_ENDPOINT, or --s3-endpoint) resolves, the Secret's keys
  may list the pipeline root (the kfp-launcher ConfigMap's defaultPipelineRoot, or
  --s3-prefix), and may write there: one small marker object under
  `<prefix>/kubevae-preflight/`, deleted at once. This is the only write; --no-write skips it.
- MLflow (MLFLOW_TRACKING_URI, or --mlflow-url): GET /health, and an API call with the
  Secret's user and password (and whether it answers without them);
- NetworkPolicies: whether those in the namespace (egress of the smoke test's pod) and in
  istio-system (ingress of the cluster-local gateway) let the smoke test reach the gateway on
  TCP 8081. Selectors are evaluated (matchLabels, matchExpressions, namespaceSelector, ports);
  an ipBlock peer or a named port that cannot be resolved makes the row a warning.

A cluster-local name (`svc.ns.svc.cluster.local`, `kubevae-mlflow`) resolves only inside the
cluster: run elsewhere, the check asks the API for the Service instead, and the row says how to
test the service itself (`kubectl port-forward`, then --s3-endpoint / --mlflow-url).
Apart from the S3 marker nothing is written: the access reviews are questions, not objects.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import socket
import textwrap
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.k8s import trainjob as trainjob_kind
from components.k8s import waiting
from components.k8s.canary import INFERENCESERVICE
from components.k8s.contract import (
    MLFLOW_CREDENTIALS,
    MLFLOW_SECRET_KEYS,
    S3_SECRET,
    S3_SECRET_KEYS,
    SETTINGS_CONFIG_MAP,
    SETTINGS_KEYS,
)
from components.k8s.experiments import EXPERIMENT
from components.k8s.training_apis import TRAINING_API_NAMES, TRAINING_APIS
from kubevae import objectstore

OK, MISSING, WARN, UNKNOWN = "ok", "missing", "warn", "could not check"
# Where each fix is described: docs/cluster.md, "A. Cluster admin" and "B. Namespace owner".
ADMIN = 'docs/cluster.md "A. Cluster admin"'
TRAINER_STEP = "docs/cluster.md step A1"
GATEWAY_STEP = "docs/cluster.md step A2"
NAMESPACE_SETUP = 'docs/cluster.md "B. Namespace owner"'
SECRETS_STEP = "docs/cluster.md step B2"
APPLY_STEP = "docs/cluster.md step B4"
MANIFEST_GATEWAY_POLICY = "manifests/cluster-admin/istio-system-allow-kubevae-to-cluster-local-gateway.yaml"

SERVICE_ACCOUNT = "kubevae-pipeline-runner"
RBAC_FILE = Path(__file__).resolve().parents[2] / "manifests" / "base" / "rbac.yaml"
# What KFP's own pods do under the run's service account (not kubevae's calls): the root DAG
# driver reads the kfp-launcher ConfigMap (and fails on Forbidden), the launcher reads the
# artifact store's Secret. KFP's pipeline-runner Role grants both.
KFP_LAUNCHER_CONFIG_MAP = "kfp-launcher"
KFP_ARTIFACT_STORE = "mlpipeline-minio-artifact"  # the Secret with the artifact store's keys
KFP_CALLS = (("", "configmaps", KFP_LAUNCHER_CONFIG_MAP, ("get",), "KFP's driver"),
             ("", "secrets", KFP_ARTIFACT_STORE, ("get",), "KFP's launcher"))
# KFP's pipeline root when kfp-launcher names none (single-user KFP's default).
KFP_DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
MARKER_FOLDER = "kubevae-preflight"

KSERVE_S3_ANNOTATIONS = ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps",
                         "serving.kserve.io/s3-region")
MLFLOW_SERVER_KEYS = ("MLFLOW_FLASK_SERVER_SECRET_KEY",)  # the server's own, same Secret
PLACEHOLDER = "REPLACE_WITH_"  # the templates' values (manifests/base/*secret.template.yaml)

# The smoke test's path in Knative mode: the predictor's cluster-local URL goes through
# knative-local-gateway, i.e. the cluster-local-gateway pods in istio-system, on port 8081.
ISTIO_NAMESPACE = "istio-system"
GATEWAY_SELECTOR = "app=cluster-local-gateway"
GATEWAY_LABELS = {"app": "cluster-local-gateway", "istio": "cluster-local-gateway"}  # Kubeflow's
GATEWAY_PORT = 8081
# The labels every pipeline step pod carries (KFP's, and pipelines/pipeline.py MLFLOW_CLIENT_LABEL).
STEP_POD_LABELS = {"pipelines.kubeflow.org/v2_component": "true", "kubevae.io/mlflow-client": "true"}
NAME_LABEL = "kubernetes.io/metadata.name"
AUTHZ = "authorization.k8s.io/v1"


@dataclass(frozen=True)
class Crd:
    kind: str
    group: str
    version: str
    plural: str
    needed_for: str

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"


CRDS = {
    **{name: Crd(api.kind, api.group, api.version, api.plural,
                 f"training_api={name}" + (" (the default)" if name == TRAINING_API_NAMES[0] else ""))
       for name, api in TRAINING_APIS.items()},
    "katib": Crd(EXPERIMENT.kind, EXPERIMENT.group, EXPERIMENT.version, EXPERIMENT.plural,
                 "the tune step (Katib)"),
    "kserve": Crd(INFERENCESERVICE.kind, INFERENCESERVICE.group, INFERENCESERVICE.version,
                  INFERENCESERVICE.plural, "the deploy step (KServe)"),
}


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str  # what was found and, unless ok, what to change


@dataclass(frozen=True)
class Options:
    namespace: str
    service_account: str = SERVICE_ACCOUNT
    training_api: str = "trainer"
    write: bool = True
    s3_prefix: str | None = None  # default: kfp-launcher's defaultPipelineRoot
    s3_endpoint: str | None = None  # default: the ConfigMap's S3_ENDPOINT
    mlflow_url: str | None = None  # default: the ConfigMap's MLFLOW_TRACKING_URI
    rbac_file: Path = RBAC_FILE
    timeout_s: float = 10.0


@dataclass
class Kube:
    """The API client (kubeconfig or in-cluster) and whether this process runs in the cluster
    (where cluster-local names resolve)."""

    api_client: Any
    in_cluster: bool


def connect() -> Kube:
    from kubernetes.config import ConfigException

    try:
        kube = waiting.connect()
    except ConfigException as e:
        raise ValueError(f"no Kubernetes credentials: {e} (set KUBECONFIG or the current "
                         "context, or run in a pod)") from None
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and \
        waiting.SERVICE_ACCOUNT_NAMESPACE.exists()
    return Kube(kube.custom.api_client, in_cluster)


class Forbidden(Exception):
    pass


class NotFound(Exception):
    pass


class Unreachable(Exception):
    pass


def _api_call(call: Callable[[], Any]) -> Any:
    """Run one API call: Forbidden / NotFound / Unreachable (with the server's message), else
    the answer (parsed JSON for raw responses)."""
    from kubernetes.client.rest import ApiException

    try:
        answer = call()
    except ApiException as e:
        message = _status_message(e)
        if e.status == 403:
            raise Forbidden(message) from None
        if e.status == 404:
            raise NotFound(message) from None
        raise Unreachable(f"HTTP {e.status}: {message}") from None
    except Exception as e:  # a transport error: no server, TLS, DNS
        raise Unreachable(_describe(e)) from None
    if hasattr(answer, "data") and hasattr(answer, "status") and isinstance(answer.data, bytes):
        return json.loads(answer.data)
    return answer


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    text = f"{type(error).__name__}: {reason or error}"
    return text if len(text) < 300 else text[:297] + "..."


def _status_message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


# -- the table -----------------------------------------------------------------------------
def render(rows: list[Row], width: int = 110) -> str:
    check_w = max(len("CHECK"), *(len(r.check) for r in rows))
    status_w = max(len("STATUS"), *(len(r.status) for r in rows))
    detail_w = max(40, width - check_w - status_w - 4)
    lines = [f"{'CHECK':<{check_w}}  {'STATUS':<{status_w}}  WHAT WAS FOUND / WHAT TO CHANGE",
             f"{'-' * check_w}  {'-' * status_w}  {'-' * min(detail_w, 40)}"]
    for r in rows:
        wrapped = textwrap.wrap(r.detail, detail_w, break_on_hyphens=False, break_long_words=False) or [""]
        lines.append(f"{r.check:<{check_w}}  {r.status:<{status_w}}  {wrapped[0]}")
        lines += [f"{'':<{check_w}}  {'':<{status_w}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def exit_status(rows: Iterable[Row]) -> int:
    return 1 if any(r.status == MISSING for r in rows) else 0


# -- all checks ----------------------------------------------------------------------------
def check(kube: Kube, options: Options) -> list[Row]:
    from kubernetes import client

    ac = kube.api_client
    rows: list[Row] = []
    who = _whoami(client.AuthenticationV1Api(ac))
    if isinstance(who, Row):  # no API server, or it refuses these credentials
        return [who]
    rows.append(Row("Kubernetes API", OK, f"{ac.configuration.host} as {who or 'an unnamed user'}"
                    f"{' (in-cluster)' if kube.in_cluster else ''}."))
    rows += crd_rows(client.ApiextensionsV1Api(ac), client.CustomObjectsApi(ac), options)
    rows.append(runtime_row(client.CustomObjectsApi(ac), options))
    core = client.CoreV1Api(ac)
    settings, settings_row = config_map_row(core, options.namespace)
    rows.append(settings_row)
    s3_secret, s3_rows = s3_secret_rows(core, options.namespace, settings)
    rows += s3_rows
    mlflow_secret, mlflow_row = mlflow_secret_row(core, options.namespace)
    rows.append(mlflow_row)
    rows += rbac_rows(client.AuthorizationV1Api(ac), options, who)
    rows += s3_rows_live(kube, core, options, settings, s3_secret)
    rows += mlflow_rows_live(kube, core, options, settings, mlflow_secret)
    rows.append(network_row(client.NetworkingV1Api(ac), core, options.namespace))
    return rows


def _whoami(authn: Any) -> str | None | Row:
    """The username the API server sees (SelfSubjectReview, Kubernetes >= 1.28); None when the
    server cannot say; a Row when the server cannot be used at all."""
    from kubernetes.client import V1SelfSubjectReview

    try:
        review = _api_call(lambda: authn.create_self_subject_review(V1SelfSubjectReview(
            api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")))
    except (Forbidden, NotFound):
        return None
    except Unreachable as e:
        return Row("Kubernetes API", MISSING,
                   f"cannot use the API server: {e}. Check the kubeconfig's current context "
                   "(kubectl config current-context) or the pod's service account token.")
    user = (review.status.user_info if review.status else None)
    return user.username if user else None


# -- CRDs ----------------------------------------------------------------------------------
def crd_rows(apiext: Any, custom: Any, options: Options) -> list[Row]:
    rows = []
    for key, crd in CRDS.items():
        needed = key not in TRAINING_APIS or key == options.training_api
        served, schema, why = _served(apiext, custom, crd)
        label = f"CRD {crd.kind} {crd.group}"
        if served is None:
            rows.append(Row(label, UNKNOWN, f"neither the CRD nor discovery could be read: {why}"))
            continue
        versions = ", ".join(served) or "none"
        if crd.version not in served:
            if needed:
                rows.append(Row(label, MISSING, f"{crd.version} is not served (served: {versions}); "
                                f"{crd.needed_for} needs {crd.group}/{crd.version}: install it "
                                f"({ADMIN})."))
            else:
                rows.append(Row(label, OK, f"not served (served: {versions}); needed only for "
                                f"{crd.needed_for}."))
            continue
        rows.append(Row(label, OK, f"served: {versions} ({why})."))
        if key == "trainer" and needed:
            rows.append(_trainjob_fields(schema, why))
        if key == "kserve":
            rows.append(_canary_field(schema, why))
    return rows


def _served(apiext: Any, custom: Any, crd: Crd) -> tuple[list[str] | None, dict | None, str]:
    """(served versions, the expected version's spec properties or None, how they were found)."""
    from kubernetes import client

    try:
        obj = _api_call(lambda: apiext.read_custom_resource_definition(crd.name, _preload_content=False))
    except NotFound:
        return [], None, "no CustomResourceDefinition " + crd.name
    except Forbidden:
        pass
    except Unreachable as e:
        return None, None, str(e)
    else:
        served = [v["name"] for v in obj["spec"].get("versions") or [] if v.get("served")]
        spec = None
        for v in obj["spec"].get("versions") or []:
            if v["name"] == crd.version:
                spec = (((v.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties") or {}) \
                    .get("spec") or {}
        return served, spec, "read from the CRD"
    # A namespace user may not read CRDs: the discovery API says which versions are served.
    try:
        groups = _api_call(client.ApisApi(custom.api_client).get_api_versions)
    except (Forbidden, NotFound, Unreachable) as e:
        return None, None, f"reading the CRD is forbidden, discovery failed: {e}"
    versions = [v.version for g in groups.groups or [] if g.name == crd.group for v in g.versions or []]
    served = []
    for version in versions:
        try:
            resources = _api_call(functools.partial(custom.get_api_resources, crd.group, version))
        except (Forbidden, NotFound, Unreachable):
            continue
        if any(r.name == crd.plural for r in resources.resources or []):
            served.append(version)
    return served, None, "from the discovery API: reading CRDs is forbidden"


def _trainjob_fields(spec: dict | None, why: str) -> Row:
    label = "TrainJob fields (Trainer>=2.2)"
    if spec is None:
        return Row(label, UNKNOWN, f"could not read the TrainJob schema ({why}), so whether this "
                   "Trainer has runtimePatches and activeDeadlineSeconds (>= 2.2) or only "
                   "podTemplateOverrides (2.1, which would silently drop kubevae's pod settings) "
                   "is unknown: ask a cluster admin to run this check, or `kubectl get crd "
                   f"{CRDS['trainer'].name} -o yaml`.")
    fields = set(spec.get("properties") or {})
    wanted = {"runtimePatches", "activeDeadlineSeconds"}
    if wanted <= fields:
        return Row(label, OK, "the served TrainJob has runtimePatches and activeDeadlineSeconds.")
    if "podTemplateOverrides" in fields:
        return Row(label, WARN, "Trainer 2.1: the served TrainJob has podTemplateOverrides but no "
                   f"{' or '.join(sorted(wanted - fields))}; kubevae's runtimePatches (volumes, "
                   "security contexts, labels) and timeout would be dropped and its training pods "
                   f"fail. Upgrade Kubeflow Trainer to >= 2.2 (2.3 validated; {TRAINER_STEP}), or use "
                   "--training-api pytorchjob with the Training Operator.")
    return Row(label, WARN, f"the served TrainJob lacks {', '.join(sorted(wanted - fields))}: "
               f"an unknown Trainer version; upgrade to 2.3 ({TRAINER_STEP}).")


def _canary_field(spec: dict | None, why: str) -> Row:
    label = "InferenceService spec.canary"
    if spec is None:
        return Row(label, UNKNOWN, f"could not read the InferenceService schema ({why}); "
                   "deployment_mode=Standard with a canary needs KServe >= 0.20. The default "
                   "(Knative) does not need it.")
    if "canary" in (spec.get("properties") or {}):
        return Row(label, OK, "present (KServe >= 0.20): every deployment_mode works.")
    return Row(label, OK, "absent (KServe < 0.20): use deployment_mode Knative (the default) or "
               "Standard-direct; Standard would refuse a canary update. Upgrade KServe to >= 0.20 "
               f"for Standard canaries ({ADMIN}).")


def runtime_row(custom: Any, options: Options) -> Row:
    label = f"ClusterTrainingRuntime {trainjob_kind.RUNTIME}"
    if options.training_api != "trainer":
        return Row(label, OK, f"not used with --training-api {options.training_api}.")
    group, version = trainjob_kind.GROUP, trainjob_kind.VERSION
    try:
        _api_call(lambda: custom.get_cluster_custom_object(group, version, "clustertrainingruntimes",
                                                           trainjob_kind.RUNTIME))
    except NotFound:
        return Row(label, MISSING, f"not found: the Trainer's default runtimes are not installed; "
                   f"install them with the Trainer ({TRAINER_STEP}).")
    except Forbidden as e:
        return Row(label, UNKNOWN, f"reading ClusterTrainingRuntimes is forbidden ({e}); ask a "
                   f"cluster admin: kubectl get clustertrainingruntime {trainjob_kind.RUNTIME}.")
    except Unreachable as e:
        return Row(label, UNKNOWN, str(e))
    return Row(label, OK, "exists.")


# -- ConfigMap and Secrets -----------------------------------------------------------------
def config_map_row(core: Any, namespace: str) -> tuple[dict[str, str] | None, Row]:
    label = f"ConfigMap {SETTINGS_CONFIG_MAP}"
    try:
        cm = _api_call(lambda: core.read_namespaced_config_map(SETTINGS_CONFIG_MAP, namespace))
    except NotFound:
        return None, Row(label, MISSING, f"not found in {namespace}: apply the kustomize overlay "
                         f"(kubectl apply -k manifests/overlays/kubeflow; {APPLY_STEP}).")
    except (Forbidden, Unreachable) as e:
        return None, Row(label, UNKNOWN, f"cannot read it: {e}")
    data = dict(cm.data or {})
    absent = [k for k in SETTINGS_KEYS if not data.get(k)]
    if absent:
        return data, Row(label, MISSING, f"lacks {', '.join(absent)}: set them in "
                         f"manifests/base/settings.env or an overlay, and apply it ({APPLY_STEP}).")
    return data, Row(label, OK, f"has {', '.join(SETTINGS_KEYS)}.")


def _read_secret(core: Any, namespace: str, name: str) -> tuple[Any, Row | None]:
    label = f"Secret {name}"
    try:
        return _api_call(lambda: core.read_namespaced_secret(name, namespace)), None
    except NotFound:
        return None, Row(label, MISSING, f"not found in {namespace}: create it from "
                         f"manifests/base/{'s3' if name == S3_SECRET else 'mlflow-auth'}"
                         f"-secret.template.yaml ({SECRETS_STEP}).")
    except (Forbidden, Unreachable) as e:
        return None, Row(label, UNKNOWN, f"cannot read it: {e}")


def _secret_values(secret: Any) -> dict[str, str]:
    out = {}
    for key, value in (secret.data or {}).items():
        try:
            out[key] = base64.b64decode(value or "").decode()
        except (ValueError, UnicodeDecodeError):
            out[key] = "?"  # set, but not text
    for key, value in (secret.string_data or {}).items():
        out[key] = value
    return out


def _key_problems(values: Mapping[str, str], keys: Iterable[str]) -> list[str]:
    problems = []
    for key in keys:
        value = values.get(key, "")
        if not value:
            problems.append(f"no {key}")
        elif value.startswith(PLACEHOLDER):
            problems.append(f"{key} is still the template's placeholder")
    return problems


def s3_secret_rows(core: Any, namespace: str, settings: dict[str, str] | None
                   ) -> tuple[dict[str, str] | None, list[Row]]:
    secret, failed = _read_secret(core, namespace, S3_SECRET)
    if failed:
        return None, [failed]
    values = _secret_values(secret)
    rows = []
    problems = _key_problems(values, S3_SECRET_KEYS)
    rows.append(Row(f"Secret {S3_SECRET}", MISSING if problems else OK,
                    f"{'; '.join(problems)}: set the object store's keys ({SECRETS_STEP})."
                    if problems else f"has {', '.join(S3_SECRET_KEYS)}."))
    annotations = dict(secret.metadata.annotations or {}) if secret.metadata else {}
    label = f"Secret {S3_SECRET} KServe annotations"
    absent = [a for a in KSERVE_S3_ANNOTATIONS if not annotations.get(a)]
    endpoint = annotations.get(KSERVE_S3_ANNOTATIONS[0])
    expected = (settings or {}).get("S3_ENDPOINT")
    fix = (f"kubectl -n {namespace} annotate secret {S3_SECRET} "
           f"serving.kserve.io/s3-endpoint={expected or 'HOST:PORT'} serving.kserve.io/s3-usehttps="
           f"{(settings or {}).get('S3_USE_HTTPS', '0')} serving.kserve.io/s3-region="
           f"{(settings or {}).get('AWS_REGION', 'us-east-1')} ({SECRETS_STEP}).")
    if KSERVE_S3_ANNOTATIONS[0] in absent or KSERVE_S3_ANNOTATIONS[1] in absent:
        rows.append(Row(label, MISSING, f"no {', '.join(absent)}: KServe's storage initializer "
                        f"then calls AWS instead of the cluster's store. {fix}"))
    elif absent:
        rows.append(Row(label, WARN, f"no {', '.join(absent)} (KServe's default region applies). {fix}"))
    elif expected and endpoint and _host(endpoint) != _host(expected):
        rows.append(Row(label, WARN, f"s3-endpoint {endpoint} differs from the ConfigMap's "
                        f"S3_ENDPOINT {expected}: the predictor would read another store. {fix}"))
    else:
        rows.append(Row(label, OK, f"s3-endpoint {endpoint}, s3-usehttps, s3-region set."))
    return values, rows


def mlflow_secret_row(core: Any, namespace: str) -> tuple[dict[str, str] | None, Row]:
    secret, failed = _read_secret(core, namespace, MLFLOW_CREDENTIALS)
    if failed:
        return None, failed
    values = _secret_values(secret)
    keys = (*MLFLOW_SECRET_KEYS, *MLFLOW_SERVER_KEYS)
    problems = _key_problems(values, keys)
    if problems:
        return values, Row(f"Secret {MLFLOW_CREDENTIALS}", MISSING,
                           f"{'; '.join(problems)}: see manifests/base/mlflow-auth-secret.template.yaml "
                           f"({SECRETS_STEP}).")
    return values, Row(f"Secret {MLFLOW_CREDENTIALS}", OK, f"has {', '.join(keys)}.")


def _host(endpoint: str) -> str:
    return urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").netloc


# -- RBAC ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    group: str
    resource: str  # with "/subresource"
    name: str | None
    verbs: tuple[str, ...]
    who: str

    @property
    def label(self) -> str:
        what = self.resource + (f".{self.group}" if self.group else "")
        return f"RBAC {what}" + (f" {self.name}" if self.name else "")


def required_calls(rbac_file: Path) -> list[Need]:
    """Every rule of the Roles in manifests/base/rbac.yaml, and KFP's own two reads."""
    needs: dict[tuple[str, str, str | None], tuple[list[str], str]] = {}

    def add(group: str, resource: str, name: str | None, verbs: Iterable[str], who: str) -> None:
        have, _ = needs.setdefault((group, resource, name), ([], who))
        have += [v for v in verbs if v not in have]

    for doc in yaml.safe_load_all(rbac_file.read_text()):
        if not doc or doc.get("kind") != "Role":
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for name in rule.get("resourceNames") or [None]:
                        add(group, resource, name, rule.get("verbs") or [], f"Role {doc['metadata']['name']}")
    for group, resource, name, verbs, who in KFP_CALLS:
        add(group, resource, name, verbs, who)
    return [Need(g, r, n, tuple(verbs), who) for (g, r, n), (verbs, who) in needs.items()]


def rbac_rows(authz: Any, options: Options, who: str | None) -> list[Row]:
    try:
        needs = required_calls(options.rbac_file)
    except OSError as e:
        return [Row("RBAC", UNKNOWN, f"cannot read the Role's rules ({e}); run this from a "
                    "checkout of the project, or pass --rbac manifests/base/rbac.yaml.")]
    ns, sa = options.namespace, options.service_account
    user = f"system:serviceaccount:{ns}:{sa}"
    reviewer = _Reviewer(authz, ns, user, who)
    rows = []
    for need in needs:
        denied, unknown = [], ""
        for verb in need.verbs:
            try:
                if not reviewer.allowed(need, verb):
                    denied.append(verb)
            except (Forbidden, Unreachable) as e:
                unknown = str(e)
                break
        if unknown:
            rows.append(Row(need.label, UNKNOWN, unknown))
        elif denied:
            rule = (f"{{apiGroups: [\"{need.group}\"], resources: [{need.resource}], "
                    + (f"resourceNames: [{need.name}], " if need.name else "")
                    + f"verbs: [{', '.join(need.verbs)}]}}")
            rows.append(Row(need.label, MISSING, f"{user} may not {', '.join(denied)} "
                            f"({need.who} needs it): add {rule} to the Role bound to {sa} "
                            f"(manifests/base/rbac.yaml; {APPLY_STEP})."))
        else:
            rows.append(Row(need.label, OK, f"{', '.join(need.verbs)} allowed ({reviewer.how})."))
    return rows


class _Reviewer:
    """Asks the API server whether the service account may make a call: SubjectAccessReview,
    else LocalSubjectAccessReview, else (only when this process runs as that service account)
    SelfSubjectAccessReview."""

    def __init__(self, authz: Any, namespace: str, user: str, who: str | None):
        self.authz, self.namespace, self.user, self.who = authz, namespace, user, who
        self.modes = ["subject", "local"] + (["self"] if who == user else [])
        self.how = ""

    def allowed(self, need: Need, verb: str) -> bool:
        from kubernetes import client

        resource, _, sub = need.resource.partition("/")
        attrs = client.V1ResourceAttributes(namespace=self.namespace, verb=verb, group=need.group,
                                            resource=resource, subresource=sub or None, name=need.name)
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                  "system:authenticated"]
        forbidden = []
        while self.modes:
            mode = self.modes[0]
            try:
                if mode == "subject":
                    body = client.V1SubjectAccessReview(
                        api_version=AUTHZ, kind="SubjectAccessReview", spec=client.V1SubjectAccessReviewSpec(
                        user=self.user, groups=groups, resource_attributes=attrs))
                    answer = _api_call(functools.partial(self.authz.create_subject_access_review, body))
                    self.how = "SubjectAccessReview"
                elif mode == "local":
                    local = client.V1LocalSubjectAccessReview(
                        api_version=AUTHZ, kind="LocalSubjectAccessReview", metadata=client.V1ObjectMeta(namespace=self.namespace),
                        spec=client.V1SubjectAccessReviewSpec(user=self.user, groups=groups,
                                                              resource_attributes=attrs))
                    answer = _api_call(functools.partial(
                        self.authz.create_namespaced_local_subject_access_review, self.namespace, local))
                    self.how = "LocalSubjectAccessReview"
                else:
                    own = client.V1SelfSubjectAccessReview(
                        api_version=AUTHZ, kind="SelfSubjectAccessReview", spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
                    answer = _api_call(functools.partial(self.authz.create_self_subject_access_review, own))
                    self.how = "SelfSubjectAccessReview, running as the service account"
                return bool(answer.status and answer.status.allowed)
            except (Forbidden, NotFound) as e:
                forbidden.append(f"{mode}: {e}")
                self.modes.pop(0)
        raise Forbidden(f"you ({self.who or 'this identity'}) may not ask whether {self.user} "
                        "may make this call (SubjectAccessReview and LocalSubjectAccessReview are "
                        "forbidden); ask a cluster admin to run this check, or run it in a pod as "
                        "the service account.")


# -- reachability of cluster-local names ---------------------------------------------------
_SERVICE_NAME = re.compile(r"^(?P<svc>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
                           r"(\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.svc(\.cluster\.local)?)?)?$")


def _resolves(host: str, port: int) -> str | None:
    """None when the host resolves, else why not."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return None
    except OSError as e:
        return f"{host} does not resolve ({e})"


def _unresolved(kube: Kube, core: Any, host: str, namespace: str, why: str, label: str,
                flag: str, port: int) -> Row:
    """A row for a name that does not resolve: in the cluster a real failure; elsewhere,
    what the API says about the Service behind a cluster-local name."""
    m = _SERVICE_NAME.match(host)
    if kube.in_cluster or not m:
        return Row(label, MISSING, f"{why}: fix the address in the kubevae-settings ConfigMap "
                   f"({NAMESPACE_SETUP}).")
    svc, svc_ns = m.group("svc"), m.group("ns") or namespace
    forward = (f"kubectl -n {svc_ns} port-forward svc/{svc} {port}, then pass {flag} "
               f"127.0.0.1:{port}" if flag == "--s3-endpoint" else
               f"kubectl -n {svc_ns} port-forward svc/{svc} {port}, then pass {flag} "
               f"http://127.0.0.1:{port}")
    try:
        _api_call(lambda: core.read_namespaced_service(svc, svc_ns))
    except NotFound:
        return Row(label, MISSING, f"no Service {svc} in namespace {svc_ns}, so {host} does not "
                   "exist in the cluster either (Kubeflow >= 26.03 stores artifacts in "
                   "seaweedfs.kubeflow.svc.cluster.local:9000, not minio-service): fix the "
                   f"address in the kubevae-settings ConfigMap ({NAMESPACE_SETUP}).")
    except (Forbidden, Unreachable) as e:
        return Row(label, UNKNOWN, f"{host} resolves only inside the cluster and the Service "
                   f"cannot be read ({e}); run this check in a pod, or {forward}.")
    return Row(label, UNKNOWN, f"the Service {svc_ns}/{svc} exists, but {host} resolves only "
               f"inside the cluster: run this check in a pod, or {forward}.")


# -- S3 ------------------------------------------------------------------------------------
def s3_rows_live(kube: Kube, core: Any, options: Options, settings: dict[str, str] | None,
                 secret: dict[str, str] | None) -> list[Row]:
    label, write_label = "S3 endpoint and read", "S3 write (marker object)"
    endpoint = options.s3_endpoint or (settings or {}).get("S3_ENDPOINT")
    skipped = Row(write_label, UNKNOWN, "skipped: " + ("--no-write" if not options.write
                                                       else "the endpoint is not usable"))
    if not endpoint:
        return [Row(label, UNKNOWN, f"no S3_ENDPOINT (the {SETTINGS_CONFIG_MAP} ConfigMap) and "
                    "no --s3-endpoint"), skipped]
    if secret is None:
        return [Row(label, UNKNOWN, f"no credentials: the {S3_SECRET} Secret could not be read"),
                skipped]
    env = {k: v for k, v in (settings or {}).items() if k in ("S3_USE_HTTPS", "AWS_REGION")}
    env.update({k: secret.get(k, "") for k in S3_SECRET_KEYS})
    env.update(S3_ENDPOINT=endpoint, S3_MAX_RETRIES="1", S3_TIMEOUT=str(options.timeout_s))
    if options.s3_endpoint and "://" in options.s3_endpoint:
        env.pop("S3_USE_HTTPS", None)  # the URL's scheme says it
    try:
        config = objectstore.S3Config.from_env(env)
    except ValueError as e:
        return [Row(label, MISSING, f"{e} ({NAMESPACE_SETUP})"), skipped]
    host, _, port = config.endpoint.rpartition(":") if ":" in config.endpoint else (config.endpoint, "", "")
    port_number = int(port) if port.isdigit() else (443 if config.secure else 80)
    unresolved = _resolves(host, port_number)
    if unresolved:
        return [_unresolved(kube, core, host, options.namespace, unresolved, label, "--s3-endpoint",
                            port_number), skipped]
    prefix_uri, source = _pipeline_root(core, options)
    try:
        bucket, prefix = objectstore.parse_uri(prefix_uri)
    except ValueError as e:
        return [Row(label, MISSING, f"{source}: {e}"), skipped]
    where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    s3 = config.client()
    try:
        with objectstore.errors(where, config.url, "listing"):
            next(iter(s3.list_objects(bucket, prefix=f"{prefix}/" if prefix else None)), None)
    except objectstore.ObjectStoreError as e:
        return [Row(label, MISSING, f"{e} (prefix from {source}). Check the keys in the {S3_SECRET} "
                    f"Secret and their policy ({SECRETS_STEP})."), skipped]
    rows = [Row(label, OK, f"{config.url} answers; the {S3_SECRET} keys may list {where} ({source}).")]
    if not options.write:
        return rows + [Row(write_label, UNKNOWN, "skipped (--no-write): whether the keys may write "
                           f"under {where} was not tested.")]
    key = f"{prefix}/{MARKER_FOLDER}/{uuid.uuid4().hex}.txt".lstrip("/")
    marker = f"s3://{bucket}/{key}"
    body = b"written by `kubevae cluster check` and deleted at once; safe to delete\n"
    try:
        with objectstore.errors(marker, config.url, "writing"):
            s3.put_object(bucket, key, io.BytesIO(body), len(body), content_type="text/plain")
    except objectstore.ObjectStoreError as e:
        return rows + [Row(write_label, MISSING, f"{e}. The pipeline writes its artifacts and "
                           f"models under {where}: give the {S3_SECRET} keys write access there, "
                           f"or point the pipeline root there ({SECRETS_STEP}).")]
    try:
        with objectstore.errors(marker, config.url, "deleting"):
            s3.remove_object(bucket, key)
    except objectstore.ObjectStoreError as e:
        return rows + [Row(write_label, WARN, f"wrote {marker} but could not delete it ({e}); "
                           "delete it by hand.")]
    return rows + [Row(write_label, OK, f"wrote and deleted {marker}.")]


def _pipeline_root(core: Any, options: Options) -> tuple[str, str]:
    """Where the pipeline's artifacts and models go, and how that was found."""
    if options.s3_prefix:
        return options.s3_prefix, "--s3-prefix"
    try:
        cm = _api_call(lambda: core.read_namespaced_config_map(KFP_LAUNCHER_CONFIG_MAP, options.namespace))
    except NotFound:
        return KFP_DEFAULT_PIPELINE_ROOT, f"KFP's default; no {KFP_LAUNCHER_CONFIG_MAP} ConfigMap"
    except (Forbidden, Unreachable):
        return KFP_DEFAULT_PIPELINE_ROOT, f"KFP's default; {KFP_LAUNCHER_CONFIG_MAP} unreadable"
    root = (cm.data or {}).get("defaultPipelineRoot")
    if root:
        return root, f"the {KFP_LAUNCHER_CONFIG_MAP} ConfigMap's defaultPipelineRoot"
    return KFP_DEFAULT_PIPELINE_ROOT, f"KFP's default; {KFP_LAUNCHER_CONFIG_MAP} names none"


# -- MLflow --------------------------------------------------------------------------------
def _http_get(url: str, timeout: float, auth: tuple[str, str] | None = None) -> int:
    """The status code of a GET (urllib raises HTTPError for 4xx/5xx: that is a status too)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def mlflow_rows_live(kube: Kube, core: Any, options: Options, settings: dict[str, str] | None,
                     secret: dict[str, str] | None) -> list[Row]:
    label, auth_label = "MLflow /health", "MLflow credentials"
    url = options.mlflow_url or (settings or {}).get("MLFLOW_TRACKING_URI")
    skipped = Row(auth_label, UNKNOWN, "skipped: the server is not reachable from here")
    if not url:
        return [Row(label, UNKNOWN, f"no MLFLOW_TRACKING_URI (the {SETTINGS_CONFIG_MAP} ConfigMap) "
                    "and no --mlflow-url"), skipped]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [Row(label, MISSING, f"MLFLOW_TRACKING_URI={url!r}: expected http(s)://HOST[:PORT] "
                    f"({NAMESPACE_SETUP})"), skipped]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    unresolved = _resolves(parts.hostname, port)
    if unresolved:
        return [_unresolved(kube, core, parts.hostname, options.namespace, unresolved, label,
                            "--mlflow-url", port), skipped]
    base = url.rstrip("/")
    try:
        health = _http_get(f"{base}/health", options.timeout_s)
    except (OSError, ValueError) as e:
        return [Row(label, MISSING, f"{base}/health: {_describe(e)}; is the kubevae-mlflow "
                    f"Deployment running? (kubectl -n {options.namespace} get pods -l "
                    f"app.kubernetes.io/name=kubevae-mlflow; {APPLY_STEP})"), skipped]
    if health != 200:
        return [Row(label, MISSING, f"{base}/health answered HTTP {health}"), skipped]
    rows = [Row(label, OK, f"{base}/health answers 200.")]
    if secret is None:
        return rows + [Row(auth_label, UNKNOWN, f"the {MLFLOW_CREDENTIALS} Secret could not be read")]
    user, password = (secret.get(k, "") for k in MLFLOW_SECRET_KEYS)
    api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with_auth = _http_get(api, options.timeout_s, (user, password))
        anonymous = _http_get(api, options.timeout_s)
    except (OSError, ValueError) as e:
        return rows + [Row(auth_label, UNKNOWN, f"{api}: {_describe(e)}")]
    if with_auth in (401, 403):
        return rows + [Row(auth_label, MISSING, f"MLflow refuses the {MLFLOW_CREDENTIALS} Secret's "
                           f"user {user!r} (HTTP {with_auth}): the Secret changed after MLflow made its "
                           "admin user; set the password with MLflow's update-password API or "
                           f"recreate the Secret and MLflow's user store ({SECRETS_STEP}).")]
    if with_auth != 200:
        return rows + [Row(auth_label, MISSING, f"{api} answered HTTP {with_auth} with the Secret's "
                           "credentials.")]
    if anonymous == 200:
        return rows + [Row(auth_label, WARN, "the Secret's credentials work, but MLflow answers "
                           "without credentials too: it does not run the basic-auth app "
                           f"(manifests/base/mlflow.yaml, --app-name basic-auth; {APPLY_STEP}).")]
    return rows + [Row(auth_label, OK, f"an API call as {user!r} succeeds; without credentials "
                       f"HTTP {anonymous}.")]


# -- NetworkPolicies -----------------------------------------------------------------------
def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector matches labels ({} or absent matches everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if (op == "In" and not (present and labels[key] in values)) or \
           (op == "NotIn" and present and labels[key] in values) or \
           (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    namespace: str
    namespace_labels: Mapping[str, str]
    pod_labels: Mapping[str, str]
    named_ports: Mapping[str, int] = field(default_factory=dict)  # the target's, when known


def _peer(peer: Mapping[str, Any], other: Endpoint, policy_namespace: str) -> bool | None:
    """Whether a NetworkPolicyPeer matches the other end; None: cannot tell (ipBlock)."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return True if block.get("cidr") in ("0.0.0.0/0", "::/0") and not block.get("except") else None
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.pod_labels)


def _port(entry: Mapping[str, Any], port: int, target: Endpoint) -> bool | None:
    if (entry.get("protocol") or "TCP") != "TCP":
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str) and not wanted.isdigit():
        if wanted not in target.named_ports:
            return None
        wanted = target.named_ports[wanted]
    low = int(wanted)
    return low <= port <= int(entry.get("endPort") or low)


def _any(results: Iterable[bool | None]) -> bool | None:
    """True if any is True; None if none is True but some is unknown; else False."""
    seen_unknown = False
    for r in results:
        if r is True:
            return True
        seen_unknown = seen_unknown or r is None
    return None if seen_unknown else False


def allows(policies: list[dict], direction: str, subject: Endpoint, other: Endpoint, port: int,
           target: Endpoint) -> tuple[bool | None, list[str], list[str]]:
    """Whether the policies of `subject`'s namespace let traffic in (direction "Ingress", from
    `other`) or out ("Egress", to `other`) on TCP `port` (None: cannot tell); the names of the
    policies that isolate `subject` in that direction, and of those that allow the traffic."""
    isolating = []
    for p in policies:
        spec = p.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        if direction in types and selects(spec.get("podSelector"), subject.pod_labels):
            isolating.append(p)
    if not isolating:
        return True, [], []
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")

    def rule_allows(rule: Mapping[str, Any], namespace: str) -> bool | None:
        peers = rule.get(peers_key)
        peer_ok = True if not peers else _any(_peer(q, other, namespace) for q in peers)
        ports = rule.get("ports")
        port_ok = True if not ports else _any(_port(e, port, target) for e in ports)
        if peer_ok is False or port_ok is False:
            return False
        return True if peer_ok and port_ok else None

    verdicts = {p["metadata"]["name"]: _any(rule_allows(rule, p["metadata"].get("namespace") or subject.namespace)
                                            for rule in (p.get("spec") or {}).get(rules_key) or [])
                for p in isolating}
    return _any(verdicts.values()), list(verdicts), [name for name, v in verdicts.items() if v]


def _list_policies(networking: Any, namespace: str) -> list[dict]:
    answer = _api_call(lambda: networking.list_namespaced_network_policy(namespace, _preload_content=False))
    items = answer.get("items") or []
    for item in items:
        item.setdefault("metadata", {}).setdefault("namespace", namespace)
    return items


def _namespace_labels(core: Any, namespace: str) -> Mapping[str, str]:
    try:
        ns = _api_call(lambda: core.read_namespace(namespace))
        return {**(ns.metadata.labels or {}), NAME_LABEL: namespace}
    except (Forbidden, NotFound, Unreachable):
        return {NAME_LABEL: namespace}  # set on every namespace since Kubernetes 1.22


def _gateway(core: Any) -> tuple[Endpoint, str]:
    labels, ports, note = dict(GATEWAY_LABELS), {}, f"Kubeflow's gateway labels {GATEWAY_SELECTOR}"
    try:
        pods = _api_call(lambda: core.list_namespaced_pod(ISTIO_NAMESPACE, label_selector=GATEWAY_SELECTOR,
                                                          limit=1))
        if pods.items:
            pod = pods.items[0]
            labels, note = dict(pod.metadata.labels or {}), f"the labels of pod {pod.metadata.name}"
            ports = {p.name: p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name}
    except (Forbidden, NotFound, Unreachable):
        pass
    return Endpoint(ISTIO_NAMESPACE, _namespace_labels(core, ISTIO_NAMESPACE), labels, ports), note


def network_row(networking: Any, core: Any, namespace: str) -> Row:
    label = f"NetworkPolicy smoke test -> gateway :{GATEWAY_PORT}"
    step = Endpoint(namespace, _namespace_labels(core, namespace), STEP_POD_LABELS)
    try:
        own = _list_policies(networking, namespace)
    except (Forbidden, NotFound, Unreachable) as e:
        return Row(label, UNKNOWN, f"cannot list NetworkPolicies in {namespace}: {e}")
    gateway, gateway_note = _gateway(core)
    egress, egress_by, _ = allows(own, "Egress", step, gateway, GATEWAY_PORT, gateway)
    if egress is False:
        return Row(label, MISSING, f"egress from the pipeline's step pods to the cluster-local gateway "
                   f"(istio-system, TCP {GATEWAY_PORT}) is blocked by {', '.join(egress_by)} in "
                   f"{namespace}: allow it ({NAMESPACE_SETUP}).")
    try:
        istio = _list_policies(networking, ISTIO_NAMESPACE)
    except (Forbidden, NotFound, Unreachable) as e:
        return Row(label, UNKNOWN, f"{namespace}'s policies allow the smoke test's call, but "
                   f"NetworkPolicies in {ISTIO_NAMESPACE} cannot be read ({e}); Kubeflow's own "
                   f"there admit only istio-system and knative-serving: ask a cluster admin to "
                   f"check, or to add {MANIFEST_GATEWAY_POLICY} ({GATEWAY_STEP}).")
    ingress, ingress_by, allowed_by = allows(istio, "Ingress", gateway, step, GATEWAY_PORT, gateway)
    fix = (f"a cluster admin adds a NetworkPolicy in {ISTIO_NAMESPACE} selecting "
           f"{GATEWAY_SELECTOR} with ingress from namespaceSelector {NAME_LABEL}: {namespace} "
           f"on TCP {GATEWAY_PORT}: {MANIFEST_GATEWAY_POLICY} ({GATEWAY_STEP}).")
    if ingress is False:
        return Row(label, MISSING, f"{', '.join(ingress_by)} in {ISTIO_NAMESPACE} isolate the "
                   f"cluster-local gateway ({gateway_note}) and admit nothing from {namespace} on "
                   f"TCP {GATEWAY_PORT}: the smoke test fails and deploy rolls back. Fix: {fix}")
    if ingress is None or egress is None:
        return Row(label, WARN, "a policy with an ipBlock peer or a named port decides this call, "
                   "so it cannot be evaluated from selectors alone: test the call from a pod in "
                   f"{namespace}, or {fix}")
    how = f"allowed by {', '.join(allowed_by)}" if allowed_by else "no policy isolates the gateway"
    return Row(label, OK, f"{how}; no egress policy in {namespace} blocks it.")
