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
from k8s_scenarios import run_all

from components.k8s.security import pod_security_violations

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = {"kubeflow": "overlays/kubeflow", "standalone": "overlays/standalone",
                  "gpu": "overlays/gpu", "workloads": "workloads"}
# standalone: single-user KFP runs every workflow in its own namespace, kubeflow (issue 28, N2)
NAMESPACES = {"kubeflow": "kubeflow-user-example-com", "standalone": "kubeflow"}
CLUSTER_ADMIN = MANIFESTS / "cluster-admin"
SHARED = REPO.parent / "shared"
KFP_RBAC = SHARED / "kfp-api" / "rbac-2.16.0"
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
        assert not by_kind(docs, "Namespace"), "the namespace is the profile's or KFP's, never kubevae's"


def s3_secret_template() -> dict:
    return yaml.safe_load((MANIFESTS / "base" / "s3-secret.template.yaml").read_text())


@needs_kubectl
def test_kserve_reads_the_storage_settings_from_the_secrets_annotations():
    """KServe 0.16 takes a static-key Secret's endpoint from the Secret's serving.kserve.io/s3-*
    annotations; ServiceAccount annotations count only with IRSA (issue 28, B5)."""
    for overlay in NAMESPACES:
        docs = rendered(overlay)
        settings = one(docs, "ConfigMap", "kubevae-settings")["data"]
        account = one(docs, "ServiceAccount", "kubevae-kserve-s3")
        assert account["secrets"] == [{"name": "kubevae-s3"}]
        assert not any(k.startswith("serving.kserve.io/")
                       for k in (account["metadata"].get("annotations") or {})), "ignored there: misleading"
        assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", " ".join(settings)), "settings are not secrets"
    secret = s3_secret_template()
    assert secret["metadata"]["name"] == "kubevae-s3"
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": settings["S3_ENDPOINT"],
        "serving.kserve.io/s3-usehttps": settings["S3_USE_HTTPS"],
        "serving.kserve.io/s3-region": settings["AWS_REGION"]}
    # the kubectl recipe in the template's comment sets the same annotations
    text = (MANIFESTS / "base" / "s3-secret.template.yaml").read_text()
    for key, value in secret["metadata"]["annotations"].items():
        assert f"{key}={value}" in text, key


def _seaweedfs_s3_address() -> tuple[str, set[int]]:
    service = yaml.safe_load((KFP_RBAC / "seaweedfs-service.yaml").read_text())
    s3_target = next(p["targetPort"] for p in service["spec"]["ports"] if p["name"] == "http-s3")
    ports = {p["port"] for p in service["spec"]["ports"] if p["targetPort"] == s3_target}
    meta = service["metadata"]
    return f"{meta['name']}.{meta['namespace']}.svc.cluster.local", ports


@needs_kubectl
def test_the_s3_endpoint_is_kubeflows_seaweedfs_service():
    """KFP >= 2.16 has no minio-service: the endpoint names the seaweedfs Service and one of its
    S3 ports (issue 28, B3)."""
    host, ports = _seaweedfs_s3_address()
    assert ports == {8333, 9000}
    settings = one(rendered("kubeflow"), "ConfigMap", "kubevae-settings")["data"]
    endpoints = {"S3_ENDPOINT": settings["S3_ENDPOINT"],
                 "MLFLOW_S3_ENDPOINT_URL": settings["MLFLOW_S3_ENDPOINT_URL"].removeprefix("http://"),
                 "the Secret's annotation": s3_secret_template()["metadata"]["annotations"][
                     "serving.kserve.io/s3-endpoint"]}
    assert settings["MLFLOW_S3_ENDPOINT_URL"].startswith("http://") and settings["S3_USE_HTTPS"] == "0"
    for where, endpoint in endpoints.items():
        name, _, port = endpoint.partition(":")
        assert name == host and int(port) in ports, f"{where}: {endpoint}"
    tracked = subprocess.run(["git", "ls-files", "manifests"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert not [f for f in tracked if "minio-service.kubeflow.svc" in
                "".join(line for line in (REPO / f).read_text().splitlines() if not line.lstrip().startswith("#"))]


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


# What KFP's own pods call with the run's service account (issue 28, B2;
# ../shared/notes/cluster-review-kubeflow-26.03.md): the root DAG driver and the launcher read
# the kfp-launcher ConfigMap (driver/root_dag.go, config/env.go: only NotFound is tolerated), the
# launcher reads the object store's keys (objectstore/object_store.go), and Argo's executor
# reports outputs through WorkflowTaskResults. (group, resource, verb, name or None)
KFP_POD_CALLS = [("", "configmaps", "get", "kfp-launcher"),
                 ("", "secrets", "get", "mlpipeline-minio-artifact"),
                 ("argoproj.io", "workflowtaskresults", "create", None),
                 ("argoproj.io", "workflowtaskresults", "patch", None)]


def rbac_allows(rules: list[dict], group: str, resource: str, verb: str, name: str | None) -> bool:
    """Kubernetes RBAC: a rule allows the request when group, resource and verb match (or '*'),
    and its resourceNames, if any, hold the requested name (a request without a name, such as
    create or list, never matches a rule with resourceNames)."""
    for rule in rules:
        if not (group in rule["apiGroups"] or "*" in rule["apiGroups"]):
            continue
        if not (resource in rule["resources"] or "*" in rule["resources"]):
            continue
        if not (verb in rule["verbs"] or "*" in rule["verbs"]):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


def runner_rules(docs: list[dict], account: str = "kubevae-pipeline-runner") -> list[dict]:
    """Every rule of every Role bound to the service account."""
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "Role")}
    return [rule for b in by_kind(docs, "RoleBinding")
            if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
            for rule in roles[b["roleRef"]["name"]]["rules"]]


def test_the_rbac_check_can_fail():
    rules = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]}]
    assert rbac_allows(rules, "", "secrets", "get", "a")
    assert not rbac_allows(rules, "", "secrets", "get", "b") and not rbac_allows(rules, "", "secrets", "list", None)
    assert not rbac_allows(rules, "", "configmaps", "get", "a")


@needs_kubectl
def test_the_run_service_account_may_make_every_call_of_kfps_own_pods():
    kfp_role = yaml.safe_load((KFP_RBAC / "pipeline-runner-role.yaml").read_text())
    for overlay in NAMESPACES:
        rules = runner_rules(rendered(overlay))
        for call in KFP_POD_CALLS:
            assert rbac_allows(rules, *call), f"{overlay}: {call} is forbidden: the run fails"
            assert rbac_allows(kfp_role["rules"], *call), f"{call}: not a call KFP's own Role grants"
        # nothing beyond: no other Secret or ConfigMap, no listing them
        assert not rbac_allows(rules, "", "secrets", "get", "some-other-secret")
        assert not rbac_allows(rules, "", "secrets", "list", None)
        assert not rbac_allows(rules, "", "configmaps", "get", "some-other-config")


@needs_kubectl
def test_the_only_other_role_is_what_kfps_own_pods_need():
    for overlay, namespace in NAMESPACES.items():
        docs = rendered(overlay)
        roles = {d["metadata"]["name"] for d in by_kind(docs, "Role")}
        assert roles == {"kubevae-pipeline-runner", "kubevae-kfp-runtime"}
        runtime = one(docs, "Role", "kubevae-kfp-runtime")["rules"]
        granted = {(g, r, v, n) for rule in runtime for g in rule["apiGroups"] for r in rule["resources"]
                   for v in rule["verbs"] for n in rule.get("resourceNames") or [None]}
        assert granted == set(KFP_POD_CALLS), "exactly KFP's pods' calls, by name where they name one"
        for binding in by_kind(docs, "RoleBinding"):
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubevae-pipeline-runner",
                                            "namespace": namespace}]


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

    destination = "s3://mlpipeline/private/team-a/kubevae/mlflow"
    args = [a.replace("$(MLFLOW_ARTIFACTS_DESTINATION)", destination) for a in _mlflow_container()["args"]]
    params = server.make_context("server", args).params  # raises on an unknown option or bad value
    assert params["port"] == 5000 and params["serve_artifacts"] is True
    assert params["artifacts_destination"] == destination
    # SQLite takes one writer at a time: one worker (issue 28, D3); components/mlflow-postgres for more
    assert params["backend_store_uri"].startswith("sqlite:") and int(params["workers"]) == 1
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
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
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


def admits(policy: dict, labels: dict, namespace_labels: dict | None = None, port: int | None = None) -> bool:
    """Whether a pod with `labels` (in the policy's namespace, or in one with `namespace_labels`)
    may connect to the pods the NetworkPolicy selects (on `port`, when given)."""
    for rule in policy["spec"]["ingress"]:
        if port is not None and rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
            continue
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
@pytest.mark.slow
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
    for labels in (pods["train"], pods["trial"], {}):
        assert not admits(policy, labels), labels  # nothing else in the namespace calls it directly


@needs_kubectl
def test_the_pipelines_smoke_test_reaches_the_predictor_directly_in_standard_mode():
    """Standard mode's address is the predictor's Service, port 8080, called from the deploy and
    smoke-test steps, which have no sidecar (issue 28, N1)."""
    from components.k8s.inferenceservice import HTTP_PORT
    from pipelines.pipeline import MLFLOW_CLIENT_LABEL

    step = dict([MLFLOW_CLIENT_LABEL])  # every step's pod, the smoke test's and deploy's included
    policy = one(rendered("standalone"), "NetworkPolicy", "kubevae-predictor")
    assert HTTP_PORT == 8080
    assert admits(policy, step, port=HTTP_PORT)
    assert not admits(policy, step, port=9090), "the predictor's port only"
    assert not admits(policy, step, {"kubernetes.io/metadata.name": "elsewhere"}, port=HTTP_PORT)
    assert not admits(policy, {"app": "other"}, port=HTTP_PORT)
    # Istio: a request without a peer identity (no sidecar) passes only a rule on that port
    authz = one(rendered("kubeflow"), "AuthorizationPolicy", "kubevae-predictor")
    open_rules = [r for r in authz["spec"]["rules"] if "from" not in r]
    assert [r["to"] for r in open_rules] == [[{"operation": {"ports": [str(HTTP_PORT)]}}]]
    assert all("when" not in r for r in authz["spec"]["rules"])


@needs_kubectl
def test_the_kubeflow_overlay_allows_the_predictor_from_the_gateways_knative_and_its_own_port():
    """Identities: only the gateways and Knative; the rule without one is the port-8080 rule of
    Standard mode's direct calls (the NetworkPolicy narrows it; see the test above)."""
    docs = rendered("kubeflow")
    policy = one(docs, "AuthorizationPolicy", "kubevae-predictor")
    assert matches(policy["spec"]["selector"], workload_pod_labels()["predictor"])
    assert policy["spec"]["action"] == "ALLOW"
    assert sum("from" not in rule for rule in policy["spec"]["rules"]) == 1
    sources = [f["source"] for rule in policy["spec"]["rules"] for f in rule.get("from", [])]
    assert sorted(p for s in sources for p in s.get("principals", [])) == [
        "cluster.local/ns/istio-system/sa/cluster-local-gateway-service-account",
        "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
    assert [n for s in sources for n in s.get("namespaces", [])] == ["knative-serving"]
    assert all("to" not in rule for rule in policy["spec"]["rules"] if "from" in rule)
    assert not by_kind(rendered("standalone"), "AuthorizationPolicy"), "Istio only in Kubeflow"


def test_the_standalone_namespace_labels_are_a_patch_with_katib_and_the_restricted_standard():
    """The admin patches KFP's namespace (issue 28, N2); kubevae never applies a Namespace."""
    patch = yaml.safe_load((CLUSTER_ADMIN / "standalone-namespace-labels.yaml").read_text())
    assert set(patch) == {"metadata"} and set(patch["metadata"]) == {"labels"}, "labels only"
    labels = patch["metadata"]["labels"]
    assert labels["katib.kubeflow.org/metrics-collector-injection"] == "enabled"
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACES["standalone"], **patch["metadata"]}}
    kubernetes_validate.validate(namespace, KUBERNETES_VERSIONS[-1], strict=True)


def test_katibs_metrics_collector_gets_a_security_context_under_the_restricted_standard():
    """katib-config's init.controller.injectSecurityContext (default false) copies the trial's
    first container's securityContext into the sidecar (issue 28, N2)."""
    fragment = yaml.safe_load((CLUSTER_ADMIN / "katib-config-inject-security-context.yaml").read_text())
    assert (fragment["apiVersion"], fragment["kind"]) == ("config.kubeflow.org/v1beta1", "KatibConfig")
    assert fragment["init"] == {"controller": {"injectSecurityContext": True}} and set(fragment) == {
        "apiVersion", "kind", "init"}, "only that setting: merged into the admin's katib-config"
    guide = (REPO / "docs" / "cluster.md").read_text()
    assert "katib-config-inject-security-context.yaml" in guide and "injectSecurityContext" in guide


@needs_kubectl
def test_the_standalone_overlay_lives_where_single_user_kfp_runs_workflows():
    docs = rendered("standalone")
    assert {d["metadata"]["namespace"] for d in docs} == {"kubeflow"}
    assert not by_kind(docs, "Namespace")


@needs_kubectl
def test_mlflow_requires_authentication_with_credentials_from_a_secret():
    from mlflow.server.auth.config import read_auth_config

    from components.k8s.contract import MLFLOW_CREDENTIALS, MLFLOW_SECRET_KEYS
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


# What Kubeflow's profile controller lets a namespace's SeaweedFS keys reach in mlpipeline
# (pipelines-profile-controller/sync.py, put_user_policy).
def namespace_prefixes(namespace: str) -> list[str]:
    return ["artifacts/", f"private-artifacts/{namespace}/", f"private/{namespace}/", "shared/"]


def _destination(docs: list[dict]) -> tuple[str, str]:
    bucket, _, prefix = one(docs, "ConfigMap", "kubevae-settings")["data"][
        "MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").partition("/")
    return bucket, prefix


@needs_kubectl
def test_mlflows_artifacts_go_where_the_namespaces_keys_may_write(tmp_path):
    """Issue 28, B7: the prefix lies inside what the namespace's keys allow, follows the
    overlay's namespace, and the MLflow key's policy allows exactly that prefix."""
    import json
    import os

    assert not any(p.startswith("kubevae/") for p in namespace_prefixes("x")), "the old prefix was outside"
    # an overlay whose namespace was changed the way the guide says (sed on namespace:)
    text = (MANIFESTS / "overlays" / "kubeflow" / "kustomization.yaml").read_text()
    (tmp_path / "kustomization.yaml").write_text(
        text.replace("namespace: kubeflow-user-example-com", "namespace: team-a").replace(
            "../../base", os.path.relpath(MANIFESTS / "base", tmp_path)).replace(
            "authorizationpolicy.yaml", os.path.relpath(MANIFESTS / "overlays" / "kubeflow" /
                                                         "authorizationpolicy.yaml", tmp_path)))
    done = subprocess.run([KUBECTL, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    renamed = [d for d in yaml.safe_load_all(done.stdout) if d]
    policy_text = (MANIFESTS / "base" / "mlflow-s3-policy.json").read_text()
    for docs in [rendered(overlay) for overlay in NAMESPACES] + [renamed]:
        [namespace] = {d["metadata"]["namespace"] for d in docs}
        bucket, prefix = _destination(docs)
        assert bucket == "mlpipeline" and prefix == f"private/{namespace}/kubevae/mlflow"
        assert any(f"{prefix}/".startswith(allowed) for allowed in namespace_prefixes(namespace)), prefix
        policy = json.loads(policy_text.replace("NAMESPACE", namespace))
        resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}/{prefix}/*"}
        assert all(s["Effect"] == "Allow" and "Condition" not in s for s in policy["Statement"])
        assert {a for s in policy["Statement"] for a in s["Action"]} <= {
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}


def test_the_mlflow_keys_are_made_with_seaweedfs_iam_api_and_get_only_their_prefix():
    container = _mlflow_container()
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "kubevae-mlflow-s3", "key": key}
    for text in ((MANIFESTS / "base" / "mlflow-s3-secret.template.yaml").read_text(),
                 (REPO / "docs" / "cluster.md").read_text()):
        assert not re.search(r"^[#\s]*mc admin", text, re.M), "MinIO's admin client: SeaweedFS has no such API"
        assert "aws iam --endpoint-url" in text and "put-user-policy" in text and "create-access-key" in text


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


# -- cluster-admin pieces and optional components (issue 28) -----------------------------------
def _render_with(tmp_path, overlay: str, components: list[str], namespace: str) -> list[dict]:
    import os

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, tmp_path)],
        "components": [os.path.relpath(MANIFESTS / "components" / c, tmp_path) for c in components]}))
    done = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_istio_system_policy_lets_the_pipeline_pods_reach_the_cluster_local_gateway():
    """Kubeflow 26.03 admits to istio-system's gateways only istio-system and knative-serving on
    8080; the smoke test's Knative path goes to cluster-local-gateway:8081 (issue 28, B6)."""
    from pipelines.pipeline import MLFLOW_CLIENT_LABEL

    text = (CLUSTER_ADMIN / "istio-system-allow-kubevae-to-cluster-local-gateway.yaml").read_text()
    assert "REPLACE_WITH_NAMESPACE" in text, "the admin sets the namespace"
    namespace = NAMESPACES["kubeflow"]
    policy = yaml.safe_load(text.replace("REPLACE_WITH_NAMESPACE", namespace))
    kubernetes_validate.validate(policy, KUBERNETES_VERSIONS[-1], strict=True)
    assert policy["metadata"]["namespace"] == "istio-system" and policy["spec"]["policyTypes"] == ["Ingress"]
    gateway = {"app": "cluster-local-gateway", "istio": "cluster-local-gateway"}
    assert matches(policy["spec"]["podSelector"], gateway)
    assert not matches(policy["spec"]["podSelector"], {"app": "istiod"})
    stock = [yaml.safe_load((SHARED / "kubeflow-26.03" / f).read_text()) for f in (
        "istio-system-allow-knative-to-istio-gateways.yaml", "istio-system-default-allow-same-namespace.yaml")]
    profile = {"kubernetes.io/metadata.name": namespace}
    step = dict([MLFLOW_CLIENT_LABEL])
    assert not any(admits(p, step, profile, port=8081) for p in stock), "why the policy is needed"
    assert admits(policy, step, profile, port=8081)
    assert not admits(policy, step, profile, port=8080)
    assert not admits(policy, {"app": "other"}, profile, port=8081), "kubevae's step pods only"
    assert not admits(policy, step, {"kubernetes.io/metadata.name": "other-profile"}, port=8081)
    guide = (REPO / "docs" / "cluster.md").read_text()
    assert "istio-system-allow-kubevae-to-cluster-local-gateway.yaml" in guide and "REPLACE_WITH_NAMESPACE" in guide


@needs_kubectl
def test_the_kfp_mlflow_integration_component_admits_kfps_callers_only(tmp_path):
    """KFP 2.17's MLflow plugin calls from the API server in kubeflow and from unlabelled driver
    pods (issue 28, D1): opt-in, MLflow's port only."""
    namespace = NAMESPACES["kubeflow"]
    api_server, kubeflow = {"app": "ml-pipeline"}, {"kubernetes.io/metadata.name": "kubeflow"}
    driver = {"workflows.argoproj.io/workflow": "kubevae-x7k2p", "workflows.argoproj.io/completed": "false"}
    base = by_kind(rendered("kubeflow"), "NetworkPolicy")
    mlflow_pod = one(rendered("kubeflow"), "Deployment", "kubevae-mlflow")["spec"]["template"]["metadata"]["labels"]

    def reach(policies, labels, namespace_labels=None):
        return any(matches(p["spec"]["podSelector"], mlflow_pod) and admits(p, labels, namespace_labels, port=5000)
                   for p in policies)

    assert not reach(base, api_server, kubeflow) and not reach(base, driver), "closed without the component"
    docs = _render_with(tmp_path, "kubeflow", ["kfp-mlflow-integration"], namespace)
    policies = by_kind(docs, "NetworkPolicy")
    for doc in policies:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    added = one(docs, "NetworkPolicy", "kubevae-mlflow-kfp")
    assert added["metadata"]["namespace"] == namespace
    assert reach(policies, api_server, kubeflow) and reach(policies, driver)
    assert not reach(policies, api_server, {"kubernetes.io/metadata.name": "other"})
    assert not reach(policies, {"app": "ml-pipeline-ui"}, kubeflow)
    assert not reach(policies, driver, {"kubernetes.io/metadata.name": "other-profile"})
    assert not reach(policies, workload_pod_labels()["predictor"]), "the predictor never calls MLflow"
    assert [p["port"] for r in added["spec"]["ingress"] for p in r["ports"]] == [5000]


@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(NAMESPACES))
def test_the_postgres_component_renders_restricted_and_moves_mlflow_off_sqlite(tmp_path, overlay):
    """Issue 28, D3: PostgreSQL for MLflow's tracking store; credentials only from a Secret."""
    from mlflow.cli import server

    namespace = NAMESPACES[overlay]
    docs = _render_with(tmp_path, overlay, ["mlflow-postgres"], namespace)
    assert not by_kind(docs, "Secret")
    for doc in docs:
        if doc["apiVersion"].startswith("security.istio.io"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        assert doc["metadata"]["namespace"] == namespace
        for where, spec in pod_templates(doc):
            assert pod_security_violations(spec, where) == []
    database = one(docs, "StatefulSet", "kubevae-mlflow-postgres")
    pod = database["spec"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "kubevae-mlflow-postgres", "key": key}
    assert re.fullmatch(r"postgres:\d+\.\d+", container["image"]), "a pinned release"
    service = one(docs, "Service", "kubevae-mlflow-postgres")
    assert matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    # only MLflow reaches it
    guard = one(docs, "NetworkPolicy", "kubevae-mlflow-postgres")
    mlflow = one(docs, "Deployment", "kubevae-mlflow")["spec"]["template"]
    assert matches(guard["spec"]["podSelector"], pod["metadata"]["labels"])
    assert admits(guard, mlflow["metadata"]["labels"], port=5432)
    assert not admits(guard, {"kubevae.io/mlflow-client": "true"}, port=5432)
    # MLflow: the database URI from the Secret's keys, more than one worker, still parses
    [mlflow_container] = mlflow["spec"]["containers"]
    mlflow_env = {e["name"]: e for e in mlflow_container["env"]}
    uri = next(a for a in mlflow_container["args"] if a.startswith("--backend-store-uri="))
    for variable in re.findall(r"\$\((\w+)\)", uri):
        assert mlflow_env[variable]["valueFrom"]["secretKeyRef"]["name"] == "kubevae-mlflow-postgres"
    assert "@kubevae-mlflow-postgres:5432/mlflow" in uri
    args = [re.sub(r"\$\((\w+)\)", "x", a) for a in mlflow_container["args"]]
    params = server.make_context("server", args).params
    assert params["backend_store_uri"].startswith("postgresql://") and int(params["workers"]) > 1


def test_the_postgres_secret_template_holds_placeholders_only():
    folder = MANIFESTS / "components" / "mlflow-postgres"
    secret = yaml.safe_load((folder / "postgres-secret.template.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    assert secret["metadata"]["name"] == "kubevae-mlflow-postgres" and "data" not in secret
    assert set(secret["stringData"]) == {"POSTGRES_USER", "POSTGRES_PASSWORD"}
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())
    assert "postgres-secret.template.yaml" not in (folder / "kustomization.yaml").read_text().split("resources:")[1]

