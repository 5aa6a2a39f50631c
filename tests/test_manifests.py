"""manifests/: each overlay renders with `kubectl kustomize`; custom resources validate against
../shared/crds, core kinds against the Kubernetes schemas (kubernetes-validate, offline); every
pod template is secure; the RBAC Role allows exactly the API calls the kubernetes backend makes
(recorded by tests/k8s_scenarios.py); no credentials; MLflow is pinned, accepts the manifest's
arguments and keeps foreign Host headers out."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_checks import CRD_FILES, custom_resource_errors, pod_templates
from k8s_scenarios import run_all, s3  # noqa: F401  (the fixture)

from components.k8s.security import pod_security_violations

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = {"kubeflow": "overlays/kubeflow", "standalone": "overlays/standalone",
                  "gpu": "overlays/gpu", "workloads": "workloads"}
NAMESPACES = {"kubeflow": "kubeflow-user-example-com", "standalone": "kubevae"}
KUBECTL = shutil.which("kubectl")
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed here")


@functools.cache
def rendered(name: str) -> list[dict]:
    done = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / KUSTOMIZATIONS[name])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@needs_kubectl
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_each_kustomization_renders_and_every_object_validates(name):
    docs = rendered(name)
    assert docs
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        if (group, doc["kind"]) in CRD_FILES:
            assert custom_resource_errors(doc) == [], f"{doc['kind']} {doc['metadata']['name']}"
        elif group == "security.istio.io":  # no Istio CRD in ../shared/crds: checked below
            assert doc["kind"] == "AuthorizationPolicy" and doc["apiVersion"] == "security.istio.io/v1"
            assert set(doc["spec"]) <= {"selector", "action", "rules"}, doc["spec"]
        else:
            for version in KUBERNETES_VERSIONS:  # raises ValidationError with the reason
                kubernetes_validate.validate(doc, version, strict=True)
        for where, spec in pod_templates(doc):
            assert pod_security_violations(spec, where) == []
    if name in NAMESPACES:
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {NAMESPACES[name]}


@needs_kubectl
def test_the_overlays_hold_the_platform_pieces():
    for overlay in NAMESPACES:
        docs = rendered(overlay)
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert {("ServiceAccount", "kubevae-pipeline-runner"), ("Role", "kubevae-pipeline-runner"),
                ("RoleBinding", "kubevae-pipeline-runner"), ("ServiceAccount", "kubevae-kserve-s3"),
                ("ConfigMap", "kubevae-settings"), ("Deployment", "kubevae-mlflow"),
                ("Service", "kubevae-mlflow"), ("PersistentVolumeClaim", "kubevae-mlflow")} <= kinds
        assert not any(d["kind"].startswith("Cluster") for d in docs), "nothing cluster-wide"
        assert not by_kind(docs, "Secret"), "the S3 Secret is created by hand, never applied from here"
    namespace = one(rendered("standalone"), "Namespace", "kubevae")
    assert namespace["metadata"]["labels"]["katib.kubeflow.org/metrics-collector-injection"] == "enabled"


@needs_kubectl
def test_the_kserve_service_account_carries_the_storage_settings():
    docs = rendered("kubeflow")
    settings = one(docs, "ConfigMap", "kubevae-settings")["data"]
    account = one(docs, "ServiceAccount", "kubevae-kserve-s3")
    assert account["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": settings["S3_ENDPOINT"],
        "serving.kserve.io/s3-usehttps": settings["S3_USE_HTTPS"],
        "serving.kserve.io/s3-region": settings["AWS_REGION"]}
    assert account["secrets"] == [{"name": "kubevae-s3"}]
    assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", " ".join(settings)), "settings are not secrets"


@needs_kubectl
def test_the_gpu_overlay_adds_gpus_and_tolerations_to_every_workload():
    for doc in rendered("gpu"):
        for where, spec in pod_templates(doc):
            container = spec["containers"][0]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", where
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert not any("nvidia.com/gpu" in yaml.safe_dump(d) for d in rendered("workloads"))


# -- RBAC: exactly what the backend calls -----------------------------------------------------
@pytest.fixture(scope="module")
def recorded_calls(tmp_path_factory, s3):  # noqa: F811
    outcomes = run_all(tmp_path_factory.mktemp("scenarios"), s3)
    return {rbac for o in outcomes.values() for rbac in o.cluster.verbs()}


def role_rules(doc: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in doc["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@needs_kubectl
def test_the_role_allows_exactly_the_recorded_api_calls(recorded_calls):
    for overlay in NAMESPACES:
        role = one(rendered(overlay), "Role", "kubevae-pipeline-runner")
        assert role_rules(role) == recorded_calls, (
            f"missing: {sorted(recorded_calls - role_rules(role))}; "
            f"unused: {sorted(role_rules(role) - recorded_calls)}")
    assert ("serving.kserve.io", "inferenceservices", "patch") in recorded_calls  # the canary
    assert ("", "pods/log", "get") in recorded_calls


@needs_kubectl
def test_the_only_other_role_is_what_argo_needs():
    docs = rendered("kubeflow")
    roles = {d["metadata"]["name"] for d in by_kind(docs, "Role")}
    assert roles == {"kubevae-pipeline-runner", "kubevae-argo-executor"}
    assert role_rules(one(docs, "Role", "kubevae-argo-executor")) == {
        ("argoproj.io", "workflowtaskresults", "create"), ("argoproj.io", "workflowtaskresults", "patch")}
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubevae-pipeline-runner",
                                        "namespace": NAMESPACES["kubeflow"]}]


# -- no credentials ------------------------------------------------------------------------
def test_the_secret_template_holds_placeholders_only():
    secret = yaml.safe_load((MANIFESTS / "base" / "s3-secret.template.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())
    assert "data" not in secret


def test_no_credentials_in_the_repository():
    """Every tracked file outside tests/ (whose made-up keys only open the local moto server)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    # AWS key ids, private keys, quoted literals assigned to secret-looking names, and unquoted
    # YAML/env values of secret-looking keys.
    secret_value = re.compile(
        r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|"
        r"(?i:(secret|password|passwd|token|access_key)\w*['\"]?\s*[:=]\s*)['\"](?!REPLACE_WITH_)[^'\"\s$]{12,}['\"]|"
        r"(?im:^\s*[\w-]*(secret|password|token|access_key)[\w-]*\s*[:=][ \t]*(?!REPLACE_WITH_)[A-Za-z0-9/+=]{16,}\s*$)")
    scanned = 0
    for path in tracked:
        file = REPO / path
        if path.startswith("tests/") or not file.is_file() or file.suffix in {".png", ".npy", ".parquet"}:
            continue
        text = file.read_text(errors="ignore")
        scanned += 1
        assert not secret_value.search(text), f"{path} looks like it holds a credential"
    assert scanned > 20
    assert secret_value.search('AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENGbPxRfiCY')  # the check can fail
    assert secret_value.search('password = "hunter2hunter2"')


# -- MLflow ---------------------------------------------------------------------------------
def _mlflow_container() -> dict:
    docs = list(yaml.safe_load_all((MANIFESTS / "base" / "mlflow.yaml").read_text()))
    return one(docs, "Deployment", "kubevae-mlflow")["spec"]["template"]["spec"]["containers"][0]


def test_mlflow_is_pinned_to_a_fixed_release_with_its_security_options():
    container = _mlflow_container()
    image, _, tag = container["image"].rpartition(":")
    assert image == "ghcr.io/mlflow/mlflow"
    major, minor, patch = map(int, re.match(r"v(\d+)\.(\d+)\.(\d+)", tag).groups())
    assert (major, minor) == (3, 17), "pinned to the project's MLflow 3.17.x"
    assert (major, minor) >= (3, 11)  # CVE-2026-2614 (3.10.0), CVE-2026-2651 and CVE-2026-4137 (3.11.0)
    args = " ".join(container["args"])
    for option in ("--allowed-hosts=", "--cors-allowed-origins=", "--x-frame-options=", "--serve-artifacts",
                   "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)", "--backend-store-uri=sqlite:////mlflow/"):
        assert option in args
    assert "--disable-security-middleware" not in args and "--allowed-hosts=*" not in args
    import mlflow

    assert mlflow.__version__.startswith(f"{major}.{minor}."), "the venv's MLflow matches the server's"


def test_mlflow_accepts_the_manifests_arguments_and_its_hosts_rule_keeps_foreign_hosts_out():
    """The Deployment's arguments parsed by the same MLflow release's `mlflow server` command,
    and its --allowed-hosts judged by MLflow's own Host-header check. (Starting the server
    itself takes about a minute on these shared machines, too slow for the suite.)"""
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    args = [a.replace("$(MLFLOW_ARTIFACTS_DESTINATION)", "s3://mlpipeline/kubevae/mlflow")
            for a in _mlflow_container()["args"]]
    params = server.make_context("server", args).params  # raises on an unknown option or bad value
    assert params["port"] == 5000 and params["serve_artifacts"] is True
    assert params["artifacts_destination"] == "s3://mlpipeline/kubevae/mlflow"
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    for host in ("kubevae-mlflow:5000", "kubevae-mlflow", "kubevae-mlflow.team-a.svc:5000",
                 "kubevae-mlflow.kubeflow-user-example-com.svc.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("attacker.example.com", "kubevae-mlflow.evil.com:5000", "10.0.0.7:5000", ""):
        assert not is_allowed_host_header(allowed, host), host


# -- the image ------------------------------------------------------------------------------
def test_the_image_is_pinned_non_root_and_installs_what_make_install_does():
    from components.k8s.security import RUN_AS_USER

    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", base)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert re.search(rf"^USER {RUN_AS_USER}:{RUN_AS_USER}$", dockerfile, re.M), "pods run as this user"
    assert "pip install -c constraints.txt ." in dockerfile
    katib = re.search(r"--no-deps (kubeflow-katib==\S+)", makefile).group(1)
    assert f"pip install --no-deps {katib}" in dockerfile, "same katib step as the Makefile"
    assert "[test]" not in dockerfile


@needs_kubectl
def test_the_shared_checkpoints_component_adds_a_valid_rwx_claim(tmp_path):
    import os

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "kubevae",
        "resources": [os.path.relpath(MANIFESTS / "overlays" / "standalone", tmp_path)],
        "components": [os.path.relpath(MANIFESTS / "components" / "shared-checkpoints", tmp_path)]}))
    done = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    claim = one([d for d in yaml.safe_load_all(done.stdout) if d], "PersistentVolumeClaim", "kubevae-checkpoints")
    kubernetes_validate.validate(claim, KUBERNETES_VERSIONS[-1], strict=True)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["metadata"]["namespace"] == "kubevae"


# -- who may reach what (issue 14: MLflow and the predictor were open to anyone) ---------------
def matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists) on labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e["values"],
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def workload_pod_labels() -> dict[str, dict]:
    """The pod labels of the generated workloads: training, trial and predictor pods."""
    docs = {d["kind"]: d for d in rendered("workloads")}
    job = docs["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    trial = docs["Experiment"]["spec"]["trialTemplate"]["trialSpec"]["spec"]["pytorchReplicaSpecs"]
    isvc = docs["InferenceService"]
    # KServe adds component=predictor to the labels the predictor spec asks for
    predictor = {**isvc["spec"]["predictor"]["labels"], "component": "predictor"}
    return {"train": job, "trial": trial["Master"]["template"]["metadata"]["labels"], "predictor": predictor}


def admits(policy: dict, labels: dict, namespace_labels: dict | None = None) -> bool:
    """Whether a pod with `labels` (in the policy's namespace, or in one with `namespace_labels`)
    may connect to the pods the NetworkPolicy selects."""
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            in_namespace = "namespaceSelector" not in peer
            if namespace_labels is None and not in_namespace:
                continue
            if namespace_labels is not None and (in_namespace or not matches(peer["namespaceSelector"], namespace_labels)):
                continue
            if "podSelector" not in peer or matches(peer["podSelector"], labels):
                return True
    return False


@needs_kubectl
def test_only_the_pipeline_trial_and_training_pods_reach_mlflow():
    from pipelines.pipeline import MLFLOW_CLIENT_LABEL

    docs = rendered("standalone")
    policy = one(docs, "NetworkPolicy", "kubevae-mlflow")
    mlflow_pod = one(docs, "Deployment", "kubevae-mlflow")["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"], mlflow_pod) and policy["spec"]["policyTypes"] == ["Ingress"]
    pods = workload_pod_labels()
    step = dict([MLFLOW_CLIENT_LABEL])  # what every pipeline step's pod carries
    assert admits(policy, step) and admits(policy, pods["train"]) and admits(policy, pods["trial"])
    assert not admits(policy, pods["predictor"]), "the predictor never calls MLflow"
    assert not admits(policy, {"app": "other"})
    assert not admits(policy, step, {"kubernetes.io/metadata.name": "elsewhere"}), "no other namespace"
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == [5000]


@needs_kubectl
def test_only_the_gateways_and_knative_reach_the_predictor():
    policy = one(rendered("standalone"), "NetworkPolicy", "kubevae-predictor")
    pods = workload_pod_labels()
    assert matches(policy["spec"]["podSelector"], pods["predictor"])
    assert not matches(policy["spec"]["podSelector"], pods["train"])
    istio = {"kubernetes.io/metadata.name": "istio-system"}
    assert admits(policy, {"istio": "ingressgateway"}, istio)
    assert admits(policy, {"istio": "cluster-local-gateway"}, istio)
    assert admits(policy, {"app": "activator"}, {"kubernetes.io/metadata.name": "knative-serving"})
    assert not admits(policy, {"app": "istiod"}, istio)
    for labels in (pods["train"], pods["trial"], {"kubevae.io/mlflow-client": "true"}, {}):
        assert not admits(policy, labels), labels  # nothing in the namespace calls it directly


@needs_kubectl
def test_the_kubeflow_overlay_allows_the_predictor_only_from_the_gateways_and_knative():
    docs = rendered("kubeflow")
    policy = one(docs, "AuthorizationPolicy", "kubevae-predictor")
    assert matches(policy["spec"]["selector"], workload_pod_labels()["predictor"])
    assert policy["spec"]["action"] == "ALLOW"
    sources = [f["source"] for rule in policy["spec"]["rules"] for f in rule["from"]]
    assert sorted(p for s in sources for p in s.get("principals", [])) == [
        "cluster.local/ns/istio-system/sa/cluster-local-gateway-service-account",
        "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
    assert [n for s in sources for n in s.get("namespaces", [])] == ["knative-serving"]
    assert all("to" not in rule and "when" not in rule for rule in policy["spec"]["rules"])
    assert not by_kind(rendered("standalone"), "AuthorizationPolicy"), "Istio only in Kubeflow"


@needs_kubectl
def test_the_standalone_namespace_enforces_the_restricted_pod_security_standard():
    labels = one(rendered("standalone"), "Namespace", "kubevae")["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode


@needs_kubectl
def test_mlflow_requires_authentication_with_credentials_from_a_secret():
    from mlflow.server.auth.config import read_auth_config

    from components.k8s.security import MLFLOW_CREDENTIALS, MLFLOW_SECRET_KEYS
    from pipelines.pipeline import MLFLOW_CREDENTIALS as PIPELINE_CREDENTIALS
    from pipelines.pipeline import MLFLOW_SECRET_KEYS as PIPELINE_KEYS

    docs = rendered("standalone")
    pod = one(docs, "Deployment", "kubevae-mlflow")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in
            ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")}
    # the admin user MLflow creates is the one the pipeline's pods log in as
    assert (PIPELINE_CREDENTIALS, PIPELINE_KEYS) == (MLFLOW_CREDENTIALS, MLFLOW_SECRET_KEYS)
    assert [refs["MLFLOW_AUTH_ADMIN_USERNAME"], refs["MLFLOW_AUTH_ADMIN_PASSWORD"]] == [
        {"name": MLFLOW_CREDENTIALS, "key": key} for key in MLFLOW_SECRET_KEYS]
    assert refs["MLFLOW_FLASK_SERVER_SECRET_KEY"]["name"] == MLFLOW_CREDENTIALS
    # the auth settings file: mounted where MLFLOW_AUTH_CONFIG_PATH points, users on the PVC
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    ini = config_map["data"][config_path.name]
    import os
    from unittest import mock
    with mock.patch.dict(os.environ, {"MLFLOW_AUTH_CONFIG_PATH": str(MANIFESTS / "base" / "mlflow-auth.ini")}):
        os.environ.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
        config = read_auth_config()
    assert ini == (MANIFESTS / "base" / "mlflow-auth.ini").read_text()
    assert config.database_uri == "sqlite:////mlflow/basic_auth.db"  # on the PVC, kept across restarts
    assert config.admin_password is None, "the password comes from the Secret, never the file"
    assert config.default_permission in ("READ", "NO_PERMISSIONS")


def test_mlflow_s3_keys_reach_only_its_own_prefix():
    import json

    container = _mlflow_container()
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "kubevae-mlflow-s3", "key": key}
    settings = dict(line.split("=", 1) for line in (MANIFESTS / "base" / "settings.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    bucket, _, prefix = settings["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").partition("/")
    policy = json.loads((MANIFESTS / "base" / "mlflow-s3-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{prefix}/*"}
    listing = next(s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"])
    assert all(p.startswith(prefix) for p in listing["Condition"]["StringLike"]["s3:prefix"])
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])


@pytest.mark.parametrize("template,keys", [
    ("mlflow-auth-secret.template.yaml", {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                          "MLFLOW_FLASK_SERVER_SECRET_KEY"}),
    ("mlflow-s3-secret.template.yaml", {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})])
def test_the_mlflow_secret_templates_hold_placeholders_only(template, keys):
    secret = yaml.safe_load((MANIFESTS / "base" / template).read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    assert set(secret["stringData"]) == keys and "data" not in secret
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())
    assert template not in (MANIFESTS / "base" / "kustomization.yaml").read_text()
