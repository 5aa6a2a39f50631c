"""`kubevae cluster check` against loopback servers: a small fake Kubernetes API server that the
real kubernetes client reaches over HTTP through a kubeconfig (serving the real CRDs of
../shared/crds, discovery, Secrets, ConfigMaps, NetworkPolicies and access reviews answered from
RBAC rules), moto's S3 server (the session's, tests/k8s_scenarios.py) and an MLflow stand-in that
answers /health and refuses API calls without the right basic-auth credentials, as MLflow's
basic-auth app does (the opt-in test at the end runs the real `mlflow server --app-name
basic-auth` instead, KUBEVAE_MLFLOW_SERVER_TESTS=1).

tests/k8s_fake.py (the recording fake of the launchers' calls) has none of the endpoints the
preflight reads (CRDs, discovery, Secrets, access reviews), so this file serves its own over
HTTP; like that fake it records every call, and the tests check that the only writes are the
access reviews (questions, not objects) and the S3 marker.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CRDS
from conftest import MLFLOW_PASSWORD as REAL_MLFLOW_PASSWORD  # the real `mlflow server
from conftest import MLFLOW_USER as REAL_MLFLOW_USER  # --app-name basic-auth` (opt-in: mlflow_url)
from k8s_scenarios import BUCKET

from components.k8s import preflight
from kubevae import cli

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests" / "base"
KUBEFLOW = CRDS.parent / "kubeflow-26.03"
NS = "team-a"
SA = "kubevae-pipeline-runner"
CALLER = "alice@example.com"
MLFLOW_USER, MLFLOW_PASSWORD = "kubevae", "a-test-password-only-for-loopback"
PIPELINE_ROOT = f"minio://{BUCKET}/private-artifacts/{NS}/v2/artifacts"
EVERYTHING = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}
CRD_FILES = {
    "trainjobs.trainer.kubeflow.org": CRDS / "trainer.kubeflow.org_trainjobs.yaml",
    "clustertrainingruntimes.trainer.kubeflow.org": CRDS / "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "pytorchjobs.kubeflow.org": CRDS / "kubeflow.org_pytorchjobs.yaml",
    "experiments.kubeflow.org": CRDS / "kubeflow.org_experiments.yaml",
    "inferenceservices.serving.kserve.io": CRDS / "serving.kserve.io_inferenceservices.yaml",
}


def load(path: Path) -> Any:
    return copy.deepcopy(_parsed(path))


@functools.cache
def _parsed(path: Path) -> Any:  # the CRDs are large: parsed once per session
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def allows(rules: list[tuple[str | None, dict]], namespace: str | None, group: str, resource: str,
           verb: str, name: str | None) -> bool:
    """RBAC: a (namespace or None for cluster-wide, PolicyRule) grant allows the call."""
    for scope, rule in rules:
        if scope is not None and scope != namespace:
            continue
        if not any(g in ("*", group) for g in rule.get("apiGroups") or [""]):
            continue
        if not any(r in ("*", resource) for r in rule.get("resources") or []):
            continue
        if not any(v in ("*", verb) for v in rule.get("verbs") or []):
            continue
        if rule.get("resourceNames") and name not in rule["resourceNames"]:
            continue
        return True
    return False


@dataclass
class Cluster:
    """What the fake API server serves: objects by (group, namespace, resource, name)."""

    crds: dict[str, dict] = field(default_factory=dict)
    objects: dict[tuple[str, str | None, str, str], dict] = field(default_factory=dict)
    caller: list[tuple[str | None, dict]] = field(default_factory=lambda: [(None, EVERYTHING)])
    service_account: list[tuple[str | None, dict]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def put(self, group: str, namespace: str | None, resource: str, obj: dict) -> None:
        self.objects[(group, namespace, resource, obj["metadata"]["name"])] = obj

    def secret(self, name: str, data: dict[str, str], annotations: dict[str, str] | None = None) -> None:
        self.put("", NS, "secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def config_map(self, name: str, data: dict[str, str]) -> None:
        self.put("", NS, "configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": name, "namespace": NS}, "data": data})

    def policies(self, namespace: str, docs: list[dict]) -> None:
        for doc in docs:
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = namespace
            self.put("networking.k8s.io", namespace, "networkpolicies", doc)

    def writes(self) -> list[tuple[str, str]]:
        reviews = ("subjectaccessreviews", "localsubjectaccessreviews", "selfsubjectaccessreviews",
                   "selfsubjectreviews")
        return [(m, p) for m, p in self.calls if m != "GET" and not p.endswith(reviews)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": reason, "message": message, "code": code})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        c = self.server.cluster
        url = urllib.parse.urlsplit(self.path)
        c.calls.append((method, url.path))
        if self.headers.get("Authorization") != "Bearer caller-token":
            return self._status(401, "Unauthorized", "Unauthorized")
        parts = url.path.strip("/").split("/")
        if parts == ["apis"]:
            return self._send(200, self._groups())
        if parts[0] == "apis" and len(parts) == 3:
            return self._send(200, self._resources(parts[1], parts[2]))
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
        if len(rest) > 2:
            resource += "/" + rest[2]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if resource in ("selfsubjectreviews", "selfsubjectaccessreviews"):  # every user may ask
            return self._review(resource, body, c.caller, CALLER)
        verb = "create" if method == "POST" else ("get" if name else "list")
        if not allows(c.caller, namespace, group, resource, verb, name):
            return self._status(403, "Forbidden", f'User "{CALLER}" cannot {verb} resource '
                                f'"{resource}" in API group "{group}"'
                                + (f' in the namespace "{namespace}"' if namespace else " at the cluster scope"))
        if resource in ("subjectaccessreviews", "localsubjectaccessreviews"):
            return self._review(resource, body, c.service_account, f"system:serviceaccount:{NS}:{SA}")
        if group == "apiextensions.k8s.io":
            return self._one(c.crds.get(name or ""), resource, name)
        if name is None:
            query = urllib.parse.parse_qs(url.query)
            selector = dict(t.split("=", 1) for t in query.get("labelSelector", [""])[0].split(",") if t)
            items = [o for (g, ns, r, _), o in sorted(c.objects.items(), key=lambda kv: kv[0][3])
                     if (g, ns, r) == (group, namespace, resource)
                     and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        return self._one(c.objects.get((group, namespace, resource, name)), resource, name)

    def _one(self, obj: dict | None, resource: str, name: str | None) -> None:
        if obj is None:
            return self._status(404, "NotFound", f'{resource} "{name}" not found')
        return self._send(200, obj)

    def _review(self, resource: str, body: dict, rules: list, user: str) -> None:
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        asked_resource = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        asked = spec.get("user", user)
        allowed = asked == user and allows(rules, attrs.get("namespace"), attrs.get("group", ""),
                                           asked_resource, attrs.get("verb", ""), attrs.get("name"))
        status = {"allowed": allowed} if resource != "selfsubjectreviews" else {
            "userInfo": {"username": user, "groups": ["system:authenticated"]}}
        return self._send(201, {**body, "status": status})

    def _served(self) -> list[tuple[str, str, dict]]:
        return [(crd["spec"]["group"], v["name"], crd) for crd in self.server.cluster.crds.values()
                for v in crd["spec"]["versions"] if v.get("served")]

    def _groups(self) -> dict:
        groups: dict[str, list[str]] = {}
        for group, version, _ in self._served():
            groups.setdefault(group, []).append(version)
        for builtin in ("apiextensions.k8s.io", "authorization.k8s.io", "networking.k8s.io"):
            groups.setdefault(builtin, ["v1"])
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for g, vs in groups.items()]}

    def _resources(self, group: str, version: str) -> dict:
        resources = [{"name": crd["spec"]["names"]["plural"], "singularName": crd["spec"]["names"]["singular"],
                      "namespaced": crd["spec"]["scope"] == "Namespaced", "kind": crd["spec"]["names"]["kind"],
                      "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"]}
                     for g, v, crd in self._served() if (g, v) == (group, version)]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
                "resources": resources}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster: Cluster, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        self.cluster = cluster


@pytest.fixture
def serve():
    servers = []

    def start(cluster: Any, handler: type[BaseHTTPRequestHandler] = _Handler) -> str:
        server = _Server(cluster, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _MlflowStandIn(BaseHTTPRequestHandler):
    """MLflow's basic-auth app as the preflight meets it: /health is open, the REST API answers
    401 without the admin's user and password (checked against a real server in
    test_against_a_real_mlflow_server)."""

    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{MLFLOW_USER}:{MLFLOW_PASSWORD}".encode()).decode()
        path = urllib.parse.urlsplit(self.path).path
        if path == "/health":
            code, body = 200, b"OK"
        elif path.startswith("/api/2.0/mlflow/"):
            ok = self.headers.get("Authorization") == expected or self.server.cluster == "anonymous-ok"
            code, body = (200, b'{"experiments": []}') if ok else (401, b"Unauthorized")
        else:
            code, body = 404, b"Not Found"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Setup:
    cluster: Cluster
    api_url: str
    kubeconfig: Path


def healthy(s3_env: dict[str, str], mlflow_url: str) -> Cluster:
    """A cluster set up as docs/cluster.md says: Trainer 2.3, KServe 0.20, the project's Role
    plus KFP's two reads, both Secrets, and an istio-system policy admitting the namespace."""
    c = Cluster(crds={name: load(path) for name, path in CRD_FILES.items()})
    c.put("trainer.kubeflow.org", None, "clustertrainingruntimes", load(CRDS.parent / "runtimes" / "torch_distributed.yaml"))
    settings = dict(line.split("=", 1) for line in (MANIFESTS / "settings.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    settings.update(S3_ENDPOINT=s3_env["S3_ENDPOINT"], S3_USE_HTTPS="0", AWS_REGION="us-east-1",
                    MLFLOW_TRACKING_URI=mlflow_url)
    c.config_map(preflight.SETTINGS_CONFIG_MAP, settings)
    c.config_map(preflight.KFP_LAUNCHER_CONFIG_MAP, {"defaultPipelineRoot": PIPELINE_ROOT})
    c.secret(preflight.S3_SECRET, {"AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
                                   "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"]},
             {"serving.kserve.io/s3-endpoint": s3_env["S3_ENDPOINT"], "serving.kserve.io/s3-usehttps": "0",
              "serving.kserve.io/s3-region": "us-east-1"})
    c.secret(preflight.MLFLOW_CREDENTIALS, {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
                                            "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
                                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 32})
    c.service_account = role_rules() + kfp_rules()
    for ns in (NS, "istio-system"):
        c.put("", None, "namespaces", {"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
    c.policies(NS, load_all(MANIFESTS / "networkpolicy.yaml"))
    c.policies("istio-system", stock_istio_policies() + [admin_policy()])
    return c


def role_rules() -> list[tuple[str | None, dict]]:
    return [(NS, rule) for doc in load_all(MANIFESTS / "rbac.yaml") if doc["kind"] == "Role"
            for rule in doc["rules"]]


def kfp_rules() -> list[tuple[str | None, dict]]:
    return [(NS, {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kfp-launcher"], "verbs": ["get"]}),
            (NS, {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mlpipeline-minio-artifact"],
                  "verbs": ["get"]})]


def stock_istio_policies() -> list[dict]:
    """Kubeflow 26.03's NetworkPolicies in istio-system, as shipped."""
    return [load(KUBEFLOW / "istio-system-default-allow-same-namespace.yaml"),
            load(KUBEFLOW / "istio-system-allow-knative-to-istio-gateways.yaml")]


def admin_policy() -> dict:
    """The cluster admin's step A2 (docs/cluster.md): the namespace's step pods may reach the
    cluster-local gateway on 8081."""
    text = (REPO / "manifests" / "cluster-admin" / "istio-system-allow-kubevae-to-cluster-local-gateway.yaml").read_text()
    return yaml.safe_load(text.replace("REPLACE_WITH_NAMESPACE", NS))


@pytest.fixture
def mlflow(serve):
    return serve("basic-auth", _MlflowStandIn)


@pytest.fixture
def setup(s3, mlflow, serve, tmp_path, monkeypatch):
    cluster = healthy(s3.env, mlflow)
    url = serve(cluster)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "loopback", "cluster": {"server": url}}],
        "users": [{"name": "alice", "user": {"token": "caller-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "loopback", "user": "alice", "namespace": NS}}]}))
    use_kubeconfig(monkeypatch, kubeconfig)
    return Setup(cluster, url, kubeconfig)


def use_kubeconfig(monkeypatch, path: Path) -> None:
    """KUBECONFIG as the user sets it (the client reads the variable once, at import)."""
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def run_check(capsys, *extra: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """`kubevae cluster check` as a user runs it: exit status, {check: (status, detail)}, output."""
    code = cli.main(["cluster", "check", "--namespace", NS, *extra])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    return code, parse_table(captured.out), captured.out


def parse_table(out: str) -> dict[str, tuple[str, str]]:
    """The printed table back into {check: (status, detail)} (continuation lines joined)."""
    lines = out.splitlines()
    header = lines[0]
    status_at, detail_at = header.index("STATUS"), header.index("WHAT WAS FOUND")
    rows: dict[str, tuple[str, str]] = {}
    last = None
    for line in lines[2:]:
        if not line.strip():
            break
        check = line[:status_at].strip()
        if check:
            last = check
            rows[check] = (line[status_at:detail_at].strip(), line[detail_at:].strip())
        elif last:
            status, detail = rows[last]
            rows[last] = (status, f"{detail} {line[detail_at:].strip()}")
    return rows


def marker_objects(s3) -> list[str]:
    return [o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)
            if preflight.MARKER_FOLDER in o.object_name]


EXPECTED_ROWS = {
    "Kubernetes API", "CRD TrainJob trainer.kubeflow.org", "TrainJob fields (Trainer>=2.2)",
    "CRD PyTorchJob kubeflow.org", "CRD Experiment kubeflow.org", "CRD InferenceService serving.kserve.io",
    "InferenceService spec.canary", "ClusterTrainingRuntime torch-distributed", "ConfigMap kubevae-settings",
    "Secret kubevae-s3", "Secret kubevae-s3 KServe annotations", "Secret kubevae-mlflow-auth",
    "RBAC experiments.kubeflow.org", "RBAC trials.kubeflow.org", "RBAC trainjobs.trainer.kubeflow.org",
    "RBAC pytorchjobs.kubeflow.org", "RBAC inferenceservices.serving.kserve.io", "RBAC pods", "RBAC pods/log",
    "RBAC workflowtaskresults.argoproj.io", "RBAC configmaps kfp-launcher",
    "RBAC secrets mlpipeline-minio-artifact", "S3 endpoint and read", "S3 write (marker object)",
    "MLflow /health", "MLflow credentials", "NetworkPolicy smoke test -> gateway :8081",
}


def test_a_healthy_cluster_is_all_ok_and_nothing_but_the_marker_is_written(setup, s3, capsys):
    code, rows, out = run_check(capsys)
    assert set(rows) == EXPECTED_ROWS, out
    assert rows["Kubernetes API"] == ("ok", f"{setup.api_url} as {CALLER}.")
    assert {check: status for check, (status, _) in rows.items() if status != "ok"} == {}, out
    assert code == 0
    assert "wrote and deleted s3://mlpipeline/private-artifacts/team-a/v2/artifacts/kubevae-preflight/" \
        in rows["S3 write (marker object)"][1]
    assert marker_objects(s3) == []  # deleted again
    assert "SubjectAccessReview" in rows["RBAC pods/log"][1]
    assert "read from the CRD" in rows["CRD TrainJob trainer.kubeflow.org"][1]
    assert "0 missing" in out and "nothing missing" in out
    # read-only: every request was a GET or an access review; never a Secret value printed
    assert setup.cluster.writes() == []
    assert ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews") in setup.cluster.calls
    assert MLFLOW_PASSWORD not in out and s3.env["AWS_SECRET_ACCESS_KEY"] + " " not in out


def test_no_write_skips_the_marker_and_says_so(setup, s3, capsys):
    code, rows, _ = run_check(capsys, "--no-write")
    assert code == 0
    assert rows["S3 write (marker object)"][0] == "could not check"
    assert "skipped (--no-write)" in rows["S3 write (marker object)"][1]
    assert rows["S3 endpoint and read"][0] == "ok"


def test_trainer_2_1_warns_that_runtime_patches_would_be_dropped(setup, capsys):
    setup.cluster.crds["trainjobs.trainer.kubeflow.org"] = load(CRDS / "trainer-v2.1.0" / "trainer.kubeflow.org_trainjobs.yaml")
    code, rows, out = run_check(capsys)
    status, detail = rows["TrainJob fields (Trainer>=2.2)"]
    assert status == "warn", out
    assert "Trainer 2.1" in detail and "runtimePatches" in detail and "activeDeadlineSeconds" in detail
    assert "docs/cluster.md step A1" in detail
    assert rows["CRD TrainJob trainer.kubeflow.org"][0] == "ok"  # v1alpha1 is served all the same
    assert code == 0  # a warning, not a missing piece


def test_trainer_2_2_has_the_fields(setup, capsys):
    setup.cluster.crds["trainjobs.trainer.kubeflow.org"] = load(CRDS / "trainer-v2.2.0" / "trainer.kubeflow.org_trainjobs.yaml")
    setup.cluster.crds["inferenceservices.serving.kserve.io"] = load(CRDS / "kserve-v0.16.0" / "serving.kserve.io_inferenceservices.yaml")
    code, rows, _ = run_check(capsys)
    assert rows["TrainJob fields (Trainer>=2.2)"][0] == "ok"
    assert rows["InferenceService spec.canary"][0] == "ok"
    assert "absent (KServe < 0.20)" in rows["InferenceService spec.canary"][1]
    assert code == 0


def test_missing_kserve_annotations_on_the_s3_secret(setup, s3, capsys):
    setup.cluster.secret(preflight.S3_SECRET, {"AWS_ACCESS_KEY_ID": s3.env["AWS_ACCESS_KEY_ID"],
                                               "AWS_SECRET_ACCESS_KEY": s3.env["AWS_SECRET_ACCESS_KEY"]})
    code, rows, out = run_check(capsys)
    status, detail = rows["Secret kubevae-s3 KServe annotations"]
    assert status == "missing", out
    assert "serving.kserve.io/s3-endpoint" in detail and "serving.kserve.io/s3-usehttps" in detail
    assert f"kubectl -n {NS} annotate secret kubevae-s3 serving.kserve.io/s3-endpoint={s3.env['S3_ENDPOINT']}" in detail
    assert "docs/cluster.md step B2" in detail
    assert code == 1


def test_missing_region_annotation_is_a_warning_and_template_placeholders_are_missing(setup, s3, capsys):
    setup.cluster.secret(preflight.S3_SECRET, {"AWS_ACCESS_KEY_ID": s3.env["AWS_ACCESS_KEY_ID"],
                                               "AWS_SECRET_ACCESS_KEY": s3.env["AWS_SECRET_ACCESS_KEY"]},
                         {"serving.kserve.io/s3-endpoint": s3.env["S3_ENDPOINT"], "serving.kserve.io/s3-usehttps": "0"})
    setup.cluster.secret(preflight.MLFLOW_CREDENTIALS, {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
                                                        "MLFLOW_TRACKING_PASSWORD": "REPLACE_WITH_PASSWORD"})
    code, rows, out = run_check(capsys)
    assert rows["Secret kubevae-s3 KServe annotations"][0] == "warn", out
    status, detail = rows["Secret kubevae-mlflow-auth"]
    assert status == "missing"
    assert "MLFLOW_TRACKING_PASSWORD is still the template's placeholder" in detail
    assert "no MLFLOW_FLASK_SERVER_SECRET_KEY" in detail
    assert "REPLACE_WITH_PASSWORD" not in detail.replace("still the template's placeholder", "")
    assert rows["MLflow credentials"][0] == "missing"  # the placeholder is not MLflow's password
    assert code == 1


def test_a_role_without_kfp_launcher_is_missing(setup, capsys):
    # manifests/base/rbac.yaml's Role as it was before KFP's reads were added: every kubevae
    # call, the artifact Secret, but not the kfp-launcher ConfigMap
    setup.cluster.service_account = [g for g in setup.cluster.service_account
                                     if "configmaps" not in g[1]["resources"]]
    code, rows, out = run_check(capsys)
    status, detail = rows["RBAC configmaps kfp-launcher"]
    assert status == "missing", out
    assert f"system:serviceaccount:{NS}:{SA} may not get" in detail
    assert "resourceNames: [kfp-launcher]" in detail and "docs/cluster.md step B4" in detail
    assert rows["RBAC secrets mlpipeline-minio-artifact"][0] == "ok"
    assert rows["RBAC trainjobs.trainer.kubeflow.org"][0] == "ok"
    assert code == 1


def test_a_role_missing_one_verb_names_it(setup, capsys):
    rules = []
    for scope, rule in setup.cluster.service_account:
        if "inferenceservices" in rule["resources"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != "patch"]}
        rules.append((scope, rule))
    setup.cluster.service_account = rules
    code, rows, _ = run_check(capsys)
    status, detail = rows["RBAC inferenceservices.serving.kserve.io"]
    assert status == "missing" and "may not patch (" in detail
    assert code == 1


def test_an_unwritable_prefix_is_missing(setup, s3, capsys):
    """Keys like a Kubeflow namespace's: they may read the bucket and write only another
    prefix. moto checks IAM policies while its auth is switched on (for this test only)."""
    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    iam = boto3.client("iam", endpoint_url=f"http://{s3.env['S3_ENDPOINT']}", region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    user = f"preflight-{os.getpid()}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="namespace", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:GetBucketLocation"],
             "Resource": ["arn:aws:s3:::mlpipeline", "arn:aws:s3:::mlpipeline/*"]},
            {"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
             "Resource": ["arn:aws:s3:::mlpipeline/private-artifacts/other-namespace/*"]}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    setup.cluster.secret(preflight.S3_SECRET, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                                               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]},
                         {"serving.kserve.io/s3-endpoint": s3.env["S3_ENDPOINT"], "serving.kserve.io/s3-usehttps": "0",
                          "serving.kserve.io/s3-region": "us-east-1"})
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        code, rows, out = run_check(capsys)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = before
    assert rows["S3 endpoint and read"][0] == "ok", out
    status, detail = rows["S3 write (marker object)"]
    assert status == "missing", out
    assert "AccessDenied" in detail and "s3://mlpipeline/private-artifacts/team-a/v2/artifacts" in detail
    assert code == 1
    assert marker_objects(s3) == []
    # the same keys may write where their policy says: the check follows --s3-prefix
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        code, rows, out = run_check(capsys, "--s3-prefix", "s3://mlpipeline/private-artifacts/other-namespace")
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = before
    assert rows["S3 write (marker object)"][0] == "ok", out


def test_a_missing_bucket_is_missing(setup, capsys):
    setup.cluster.config_map(preflight.KFP_LAUNCHER_CONFIG_MAP, {"defaultPipelineRoot": "minio://no-such-bucket/v2"})
    code, rows, out = run_check(capsys)
    status, detail = rows["S3 endpoint and read"]
    assert status == "missing" and "NoSuchBucket" in detail, out
    assert rows["S3 write (marker object)"][0] == "could not check"
    assert code == 1


def test_forbidden_crd_reads_fall_back_to_discovery(setup, capsys):
    """A namespace user (Kubeflow's edit role): no CRDs, no SubjectAccessReview, nothing in
    istio-system; LocalSubjectAccessReview in the namespace is allowed."""
    setup.cluster.caller = [(NS, EVERYTHING), (None, {"apiGroups": ["trainer.kubeflow.org"],
                                                      "resources": ["clustertrainingruntimes"],
                                                      "verbs": ["get", "list"]})]
    code, rows, out = run_check(capsys)
    for crd in ("CRD TrainJob trainer.kubeflow.org", "CRD PyTorchJob kubeflow.org",
                "CRD Experiment kubeflow.org", "CRD InferenceService serving.kserve.io"):
        assert rows[crd][0] == "ok", out
        assert "from the discovery API: reading CRDs is forbidden" in rows[crd][1]
    assert rows["TrainJob fields (Trainer>=2.2)"][0] == "could not check"
    assert "runtimePatches" in rows["TrainJob fields (Trainer>=2.2)"][1]
    assert rows["InferenceService spec.canary"][0] == "could not check"
    assert "LocalSubjectAccessReview" in rows["RBAC pods/log"][1] and rows["RBAC pods/log"][0] == "ok"
    assert rows["NetworkPolicy smoke test -> gateway :8081"][0] == "could not check"
    assert "istio-system cannot be read" in rows["NetworkPolicy smoke test -> gateway :8081"][1]
    assert code == 0
    # it did try the CRD first, and was refused
    assert ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainjobs.trainer.kubeflow.org") \
        in setup.cluster.calls
    assert setup.cluster.writes() == []


def test_discovery_finds_an_unserved_crd_missing(setup, capsys):
    setup.cluster.caller = [(NS, EVERYTHING)]
    del setup.cluster.crds["experiments.kubeflow.org"]
    code, rows, out = run_check(capsys)
    status, detail = rows["CRD Experiment kubeflow.org"]
    assert status == "missing", out
    assert "v1beta1 is not served" in detail and 'docs/cluster.md "A. Cluster admin"' in detail
    assert rows["ClusterTrainingRuntime torch-distributed"][0] == "could not check"  # forbidden here
    assert code == 1


def test_without_any_review_permission_the_rbac_rows_say_so(setup, capsys):
    setup.cluster.caller = [(NS, {"apiGroups": ["", "networking.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]})]
    code, rows, out = run_check(capsys)
    status, detail = rows["RBAC configmaps kfp-launcher"]
    assert status == "could not check", out
    assert f"you ({CALLER}) may not ask whether system:serviceaccount:{NS}:{SA}" in detail
    assert code == 0


def test_a_missing_runtime_and_crd_with_training_api_choice(setup, capsys):
    del setup.cluster.objects[("trainer.kubeflow.org", None, "clustertrainingruntimes", "torch-distributed")]
    del setup.cluster.crds["pytorchjobs.kubeflow.org"]
    code, rows, out = run_check(capsys)
    assert rows["ClusterTrainingRuntime torch-distributed"][0] == "missing", out
    assert rows["CRD PyTorchJob kubeflow.org"][0] == "ok"  # not needed with training_api=trainer
    assert code == 1
    code, rows, out = run_check(capsys, "--training-api", "pytorchjob")
    assert rows["ClusterTrainingRuntime torch-distributed"][0] == "ok", out
    assert rows["CRD PyTorchJob kubeflow.org"][0] == "missing"
    assert "TrainJob fields (Trainer>=2.2)" not in rows
    assert code == 1


def test_stock_kubeflow_istio_policies_block_the_smoke_test(setup, capsys):
    for key in [k for k in setup.cluster.objects if k[1] == "istio-system" and k[2] == "networkpolicies"]:
        del setup.cluster.objects[key]
    setup.cluster.policies("istio-system", stock_istio_policies())
    code, rows, out = run_check(capsys)
    status, detail = rows["NetworkPolicy smoke test -> gateway :8081"]
    assert status == "missing", out
    assert "default-allow-same-namespace-istio-system" in detail and "allow-knative-to-istio-gateways" in detail
    assert "kubernetes.io/metadata.name: team-a on TCP 8081" in detail
    assert "istio-system-allow-kubevae-to-cluster-local-gateway.yaml (docs/cluster.md step A2)" in detail
    assert code == 1


def test_an_egress_policy_in_the_namespace_blocks_the_smoke_test(setup, capsys):
    setup.cluster.policies(NS, [{"metadata": {"name": "default-deny-egress"},
                                 "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                                          "egress": [{"to": [{"namespaceSelector": {"matchLabels": {
                                              "kubernetes.io/metadata.name": "kube-system"}}}],
                                              "ports": [{"protocol": "UDP", "port": 53}]}]}}])
    code, rows, out = run_check(capsys)
    status, detail = rows["NetworkPolicy smoke test -> gateway :8081"]
    assert status == "missing" and "default-deny-egress" in detail, out
    assert code == 1


def test_a_port_range_and_an_ipblock(setup, capsys):
    admin = admin_policy()
    admin["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 8000, "endPort": 8100}]
    setup.cluster.policies("istio-system", [admin])
    code, rows, out = run_check(capsys)
    assert rows["NetworkPolicy smoke test -> gateway :8081"][0] == "ok", out
    admin["spec"]["ingress"][0] = {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 8081}]}
    setup.cluster.policies("istio-system", [admin])
    code, rows, out = run_check(capsys)
    assert rows["NetworkPolicy smoke test -> gateway :8081"][0] == "warn", out


def test_wrong_mlflow_password_and_anonymous_mlflow(setup, serve, capsys):
    setup.cluster.secret(preflight.MLFLOW_CREDENTIALS, {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
                                                        "MLFLOW_TRACKING_PASSWORD": "not-the-password",
                                                        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 32})
    code, rows, out = run_check(capsys)
    assert rows["MLflow /health"][0] == "ok", out
    assert rows["MLflow credentials"][0] == "missing" and "HTTP 401" in rows["MLflow credentials"][1]
    assert code == 1
    open_mlflow = serve("anonymous-ok", _MlflowStandIn)
    code, rows, out = run_check(capsys, "--mlflow-url", open_mlflow)
    assert rows["MLflow credentials"][0] == "warn", out
    assert "basic-auth" in rows["MLflow credentials"][1]


def test_cluster_local_names_outside_the_cluster(setup, capsys):
    """The manifests' old endpoint (no Service behind it in Kubeflow 26.03) is missing; an
    existing Service's name, which resolves only in the cluster, is "could not check" with the
    port-forward to use."""
    settings = dict(setup.cluster.objects[("", NS, "configmaps", preflight.SETTINGS_CONFIG_MAP)]["data"])
    settings["S3_ENDPOINT"] = "minio-service.kubeflow.svc.cluster.local:9000"
    settings["MLFLOW_TRACKING_URI"] = "http://kubevae-mlflow:5000"
    setup.cluster.config_map(preflight.SETTINGS_CONFIG_MAP, settings)
    setup.cluster.put("", NS, "services", {"metadata": {"name": "kubevae-mlflow", "namespace": NS}})
    code, rows, out = run_check(capsys)
    status, detail = rows["S3 endpoint and read"]
    assert status == "missing", out
    assert "no Service minio-service in namespace kubeflow" in detail
    status, detail = rows["MLflow /health"]
    assert status == "could not check", out
    assert f"kubectl -n {NS} port-forward svc/kubevae-mlflow 5000, then pass --mlflow-url http://127.0.0.1:5000" in detail
    assert code == 1


def test_an_unreachable_api_server(tmp_path, monkeypatch, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "caller-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}]}))
    use_kubeconfig(monkeypatch, kubeconfig)
    code, rows, out = run_check(capsys)
    assert rows == {"Kubernetes API": ("missing", rows["Kubernetes API"][1])}, out
    assert "cannot use the API server" in rows["Kubernetes API"][1]
    assert code == 1


def test_the_step_pod_labels_match_the_pipeline():
    from pipelines.pipeline import MLFLOW_CLIENT_LABEL

    key, value = MLFLOW_CLIENT_LABEL
    assert preflight.STEP_POD_LABELS[key] == value


def test_required_calls_are_the_roles_and_kfps(tmp_path):
    needs = {(n.group, n.resource, n.name): n.verbs for n in preflight.required_calls(preflight.RBAC_FILE)}
    for _, rule in role_rules():  # every Role in manifests/base/rbac.yaml
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    assert set(rule["verbs"]) <= set(needs[(group, resource, name)])
    # KFP's two reads are checked even against a Role file that lacks them
    only_kubevae = tmp_path / "rbac.yaml"
    only_kubevae.write_text(yaml.safe_dump_all([d for d in load_all(MANIFESTS / "rbac.yaml")
                                                if d["metadata"]["name"] == "kubevae-pipeline-runner"]))
    needs = {(n.group, n.resource, n.name): n.verbs for n in preflight.required_calls(only_kubevae)}
    assert needs[("", "configmaps", "kfp-launcher")] == ("get",)
    assert needs[("", "secrets", "mlpipeline-minio-artifact")] == ("get",)
    assert ("trainer.kubeflow.org", "trainjobs", None) in needs


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KUBEVAE_MLFLOW_SERVER_TESTS"),
                    reason="starts a real MLflow server (minutes here); set KUBEVAE_MLFLOW_SERVER_TESTS=1")
def test_against_a_real_mlflow_server(setup, mlflow_url, capsys):
    """The stand-in's answers are MLflow's: the manifest's basic-auth server, its admin user."""
    def secret(password: str) -> None:
        setup.cluster.secret(preflight.MLFLOW_CREDENTIALS, {"MLFLOW_TRACKING_USERNAME": REAL_MLFLOW_USER,
                                                            "MLFLOW_TRACKING_PASSWORD": password,
                                                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 32})

    secret(REAL_MLFLOW_PASSWORD)
    code, rows, out = run_check(capsys, "--mlflow-url", mlflow_url)
    assert rows["MLflow /health"][0] == "ok", out
    assert rows["MLflow credentials"] == ("ok", f"an API call as {REAL_MLFLOW_USER!r} succeeds; without "
                                          "credentials HTTP 401."), out
    assert code == 0
    secret("not-the-password")
    code, rows, out = run_check(capsys, "--mlflow-url", mlflow_url)
    assert rows["MLflow credentials"][0] == "missing" and "HTTP 401" in rows["MLflow credentials"][1], out
    assert code == 1
