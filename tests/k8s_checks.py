"""Offline checks of Kubernetes objects: CRD schemas, Katib's admission rules, pod security.

- TrainJob, PyTorchJob and InferenceService validate against the OpenAPI v3 schema of the CRD version
  they name (../shared/crds), made strict: an object schema with properties accepts no other
  keys unless it says x-kubernetes-preserve-unknown-fields (the API server would silently drop
  them; `kubectl apply --validate=strict` rejects them).
- Which release's CRDs: `Releases(trainer=..., kserve=...)`, the newest by default (Trainer
  v2.3.0, KServe 0.20); `KUBEFLOW_26_03` is what Kubeflow 26.03 ships (Trainer v2.1.0, KServe
  0.16.0). `unknown_fields` lists the fields an API server's strict field validation would name
  (`spec.runtimePatches`), `prune_unknown` drops them as its default validation does; the fake
  API (k8s_fake) uses both.
- A Katib Experiment has no schema (its CRD preserves unknown fields); `katib_violations`
  implements the rules of Katib's validating webhook listed in ../shared/crds/README.md, and
  the trial template's PyTorchJob, with every placeholder substituted as the webhook does,
  validates against the schema of its kind (TrainJob or PyTorchJob).
- A TrainJob's pods are what the Trainer makes of the runtime it names (../shared/runtimes):
  `trainjob_pod_spec` applies spec.trainer to the runtime's `node` container and the
  runtimePatches (Trainer >= v2.2) or podTemplateOverrides (v2.1) to its pod template, as the
  Trainer does, and the security checks run on that.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from conftest import CRDS

RUNTIMES = CRDS.parent / "runtimes"

CRD_FILES = {
    ("kubeflow.org", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("kubeflow.org", "Experiment"): "kubeflow.org_experiments.yaml",
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer.kubeflow.org_clustertrainingruntimes.yaml",
}
RUNTIME_FILES = {"torch-distributed": "torch_distributed.yaml"}
# Where each release's CRDs are (../shared/crds/README.md); the top folder holds the newest.
TRAINER_RELEASES = {"v2.1.0": CRDS / "trainer-v2.1.0", "v2.2.0": CRDS / "trainer-v2.2.0", "v2.3.0": CRDS}
KSERVE_RELEASES = {"v0.16.0": CRDS / "kserve-v0.16.0", "v0.20": CRDS}
FAMILIES = {("trainer.kubeflow.org", "TrainJob"): "trainer",
            ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer",
            ("serving.kserve.io", "InferenceService"): "kserve"}


@dataclass(frozen=True)
class Releases:
    """The controller releases whose CRDs an object is checked against."""

    trainer: str = "v2.3.0"
    kserve: str = "v0.20"

    def __post_init__(self) -> None:
        assert self.trainer in TRAINER_RELEASES and self.kserve in KSERVE_RELEASES, self

    def folder(self, group: str, kind: str) -> Path:
        family = FAMILIES.get((group, kind))
        if family == "trainer":
            return TRAINER_RELEASES[self.trainer]
        if family == "kserve":
            return KSERVE_RELEASES[self.kserve]
        return CRDS

    def runtime_file(self, name: str) -> Path:
        folder = TRAINER_RELEASES[self.trainer]
        return (RUNTIMES if folder == CRDS else folder) / RUNTIME_FILES[name]


NEWEST = Releases()
KUBEFLOW_26_03 = Releases(trainer="v2.1.0", kserve="v0.16.0")
# Katib's default suggestion and early-stopping services (katib-config in Katib 0.19).
KATIB_ALGORITHMS = {"random", "tpe", "multivariate-tpe", "cmaes", "grid", "hyperband",
                    "bayesianoptimization", "sobol", "enas", "darts", "pbt"}
KATIB_EARLY_STOPPING = {"medianstop"}
KATIB_COLLECTORS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"}
KATIB_META_KEYS = {"Name", "Namespace", "Kind", "APIVersion", "Labels", "Annotations"}
PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?")


@functools.cache
def crd(group: str, kind: str, releases: Releases = NEWEST) -> dict:
    path = releases.folder(group, kind) / CRD_FILES[(group, kind)]
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)


def openapi_schema(group: str, kind: str, version: str, releases: Releases = NEWEST) -> dict:
    for v in crd(group, kind, releases)["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{kind}: the CRD has no version {version}")


@functools.cache
def _validator(group: str, kind: str, version: str, releases: Releases = NEWEST) -> jsonschema.Validator:
    return jsonschema.Draft7Validator(strict(openapi_schema(group, kind, version, releases)))


def strict(schema: Any) -> Any:
    """No unknown keys where the schema lists properties (like the API server's strict field
    validation), except under x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    # metadata is `type: object` in CRDs; the API server validates it with ObjectMeta rules.
    return out


def schema_errors(obj: dict, releases: Releases = NEWEST) -> list[str]:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    validator = _validator(group, obj.get("kind", ""), version, releases)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


def custom_resource_errors(obj: dict, releases: Releases = NEWEST) -> list[str]:
    """Every problem the API server (metadata, schema) or Katib's webhook would find."""
    group = obj.get("apiVersion", "").rpartition("/")[0]
    kind = obj.get("kind")
    if (group, kind) == ("kubeflow.org", "Experiment"):
        problems = katib_violations(obj) + label_errors(obj.get("metadata"))
        trial = substituted_trial_spec(obj)
        if trial is not None:
            problems += [f"trialSpec: {p}" for p in schema_errors(trial, releases)
                         + label_errors(trial.get("metadata"))]
        return problems
    if (group, kind) in CRD_FILES:
        return schema_errors(obj, releases) + label_errors(obj.get("metadata"))
    raise AssertionError(f"no CRD here for {group}/{kind}")


# apimachinery's ValidateLabels (what an API server checks on every object's metadata): the key
# a qualified name (an optional DNS subdomain prefix and '/', then a name), the value a label value.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_errors(metadata: dict | None) -> list[str]:
    """The API server's complaints about an object's metadata.labels, as it words them."""
    problems = []
    for key, value in ((metadata or {}).get("labels") or {}).items():
        prefix, _, name = key.rpartition("/")
        if not (len(name) <= 63 and _LABEL_NAME.match(name)) or \
                (prefix and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix))):
            problems.append(f"metadata.labels: Invalid value: {key!r}: name part must consist of "
                            "alphanumeric characters, '-', '_' or '.' (a qualified name)")
        if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            problems.append(f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty "
                            "string or consist of at most 63 alphanumeric characters, '-', '_' or '.', "
                            "and must start and end with an alphanumeric character")
    return problems


# -- what the API server does with fields its CRD does not know -----------------------------
def _walk_unknown(obj: Any, schema: dict, path: str, found: list[tuple[Any, Any, str]]) -> None:
    """(container, key, path) of every field of `obj` that `schema` does not declare."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields") \
            or schema.get("x-kubernetes-int-or-string"):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                if not path and key == "metadata":
                    continue  # ObjectMeta: the API server's own rules, not the CRD's schema
                _walk_unknown(value, props[key], where, found)
            elif isinstance(extra, dict):
                _walk_unknown(value, extra, where, found)
            elif props is not None and extra is not True:
                found.append((obj, key, where))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            _walk_unknown(item, schema["items"], f"{path}[{i}]", found)


def _unknown(obj: dict, releases: Releases) -> list[tuple[Any, Any, str]]:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    if (group, obj.get("kind")) not in CRD_FILES:
        return []  # a kind without a CRD here (Trials): nothing known to prune
    found: list[tuple[Any, Any, str]] = []
    body = {k: v for k, v in obj.items() if k != "status"}  # status is its own subresource
    _walk_unknown(body, openapi_schema(group, obj["kind"], version, releases), "", found)
    return found


def unknown_fields(obj: dict, releases: Releases = NEWEST) -> list[str]:
    """The fields of `obj` its CRD (of these releases) does not declare, as the API server's
    strict field validation names them: `spec.runtimePatches`, `spec.a[0].b`."""
    return [where for _, _, where in _unknown(obj, releases)]


def prune_unknown(obj: dict, releases: Releases = NEWEST) -> dict:
    """`obj` without the fields its CRD does not declare: what the API server stores when it
    is not asked for strict field validation (it answers 201 and at most warns)."""
    out = copy.deepcopy(obj)
    for container, key, _ in _unknown(out, releases):
        container.pop(key, None)
    return out


def substituted_trial_spec(experiment: dict) -> dict | None:
    template = (experiment.get("spec") or {}).get("trialTemplate") or {}
    if "trialSpec" not in template:
        return None
    text = json.dumps(template["trialSpec"])
    for p in template.get("trialParameters") or []:
        text = text.replace(f"${{trialParameters.{p.get('name')}}}", "test-value")
    return json.loads(text)


def katib_violations(e: dict) -> list[str]:
    """Katib 0.19's experiment validating webhook (pkg/webhook/v1beta1/experiment/validator),
    the rules that do not need a running cluster."""
    problems: list[str] = []
    name = (e.get("metadata") or {}).get("name") or ""
    if not NAME.match(name):
        problems.append(f"metadata.name {name!r} does not match {NAME.pattern}")
    spec = e.get("spec") or {}
    max_trials, parallel, max_failed = (spec.get("maxTrialCount"), spec.get("parallelTrialCount"),
                                        spec.get("maxFailedTrialCount"))
    if max_failed is not None and max_failed < 0:
        problems.append("spec.maxFailedTrialCount must not be negative")
    if max_trials is not None and max_trials <= 0:
        problems.append("spec.maxTrialCount must be greater than 0")
    if parallel is not None and parallel <= 0:
        problems.append("spec.parallelTrialCount must be greater than 0")
    if None not in (max_failed, max_trials) and max_failed > max_trials:
        problems.append("spec.maxFailedTrialCount must not exceed spec.maxTrialCount")
    if None not in (parallel, max_trials) and parallel > max_trials:
        problems.append("spec.parallelTrialCount must not exceed spec.maxTrialCount")
    objective = spec.get("objective")
    if not objective:
        return problems + ["spec.objective must be specified"]
    if objective.get("type") not in ("minimize", "maximize"):
        problems.append(f"spec.objective.type must be minimize or maximize, got {objective.get('type')!r}")
    if not objective.get("objectiveMetricName"):
        problems.append("spec.objective.objectiveMetricName must be specified")
    if objective.get("objectiveMetricName") in (objective.get("additionalMetricNames") or []):
        problems.append("spec.objective.additionalMetricNames must not contain objectiveMetricName")
    algorithm = (spec.get("algorithm") or {}).get("algorithmName")
    if algorithm not in KATIB_ALGORITHMS:
        problems.append(f"spec.algorithm.algorithmName {algorithm!r} is not a Katib algorithm")
    if spec.get("earlyStopping") is not None:
        if spec["earlyStopping"].get("algorithmName") not in KATIB_EARLY_STOPPING:
            problems.append(f"spec.earlyStopping.algorithmName {spec['earlyStopping'].get('algorithmName')!r} unknown")
    if spec.get("resumePolicy", "") not in ("", "Never", "LongRunning", "FromVolume"):
        problems.append(f"spec.resumePolicy {spec.get('resumePolicy')!r} is invalid")
    problems += _parameter_violations(spec.get("parameters") or [])
    if not spec.get("parameters") and not spec.get("nasConfig"):
        problems.append("spec.parameters or spec.nasConfig must be specified")
    problems += _trial_template_violations(spec)
    collector = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
    if collector not in KATIB_COLLECTORS:
        problems.append(f"metrics collector kind {collector!r} is invalid")
    return problems


def _parameter_violations(parameters: list[dict]) -> list[str]:
    problems = []
    for i, p in enumerate(parameters):
        where = f"spec.parameters[{i}] ({p.get('name')})"
        kind = p.get("parameterType")
        if kind not in ("int", "double", "categorical", "discrete", ""):
            problems.append(f"{where}: parameterType {kind!r} is not supported")
        space = p.get("feasibleSpace") or {}
        if space.get("distribution", "") not in ("", "uniform", "logUniform", "normal", "logNormal"):
            problems.append(f"{where}: distribution {space.get('distribution')!r} is not supported")
        if not any(space.get(k) for k in ("min", "max", "list", "step", "distribution")):
            problems.append(f"{where}: feasibleSpace must be specified")
        elif kind in ("int", "double"):
            if space.get("list"):
                problems.append(f"{where}: feasibleSpace.list is not supported for {kind}")
            if not space.get("min") or not space.get("max"):
                problems.append(f"{where}: feasibleSpace.min and max must be specified for {kind}")
        elif kind in ("categorical", "discrete"):
            if space.get("min") or space.get("max") or space.get("step"):
                problems.append(f"{where}: min, max and step are not supported for {kind}")
    return problems


def _trial_template_violations(spec: dict) -> list[str]:
    template = spec.get("trialTemplate")
    if not template:
        return ["spec.trialTemplate must be specified"]
    problems = []
    if not template.get("primaryContainerName"):
        problems.append("spec.trialTemplate.primaryContainerName must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        problems.append("spec.trialTemplate: successCondition and failureCondition must be specified")
    if template.get("trialParameters") is None:
        return problems + ["spec.trialTemplate.trialParameters must be specified"]
    if ("trialSpec" in template) == ("configMap" in template):
        return problems + ["spec.trialTemplate: exactly one of trialSpec and configMap"]
    if "configMap" in template:
        return problems  # resolved from the cluster; nothing more to check offline
    text = json.dumps(template["trialSpec"])
    names = {p.get("name") for p in spec.get("parameters") or []}
    seen_names, seen_refs = set(), set()
    for i, p in enumerate(template["trialParameters"]):
        where = f"spec.trialTemplate.trialParameters[{i}]"
        name, ref = p.get("name") or "", p.get("reference") or ""
        if not name or not ref or "{" in name or "}" in name:
            problems.append(f"{where}: name and reference must be set, name without braces")
            continue
        if name in seen_names or ref in seen_refs:
            problems.append(f"{where}: duplicate name {name!r} or reference {ref!r}")
            continue
        seen_names.add(name)
        seen_refs.add(ref)
        if names and not _is_meta_reference(ref) and ref not in names:
            problems.append(f"{where}: reference {ref!r} is not in spec.parameters")
        placeholder = f"${{trialParameters.{name}}}"
        if placeholder not in text:
            problems.append(f"{where}: {placeholder} is not used in the trialSpec")
            return problems
        text = text.replace(placeholder, "test-value")
    leftover = PLACEHOLDER.findall(text)
    if leftover:
        problems.append(f"spec.trialTemplate: placeholders {leftover} are not in trialParameters")
    run_spec = json.loads(text)
    meta = run_spec.get("metadata") or {}
    if meta.get("name") or meta.get("namespace"):
        problems.append("spec.trialTemplate.trialSpec: metadata.name and namespace must be omitted")
    if not run_spec.get("apiVersion") or not run_spec.get("kind"):
        problems.append("spec.trialTemplate.trialSpec: apiVersion and kind must be specified")
    return problems


def _is_meta_reference(ref: str) -> bool:
    m = re.fullmatch(r"\$\{trialSpec\.(.+)\}", ref)
    if not m:
        return False
    key = m.group(1)
    sub = re.fullmatch(r"(.+)\[(.+)\]", key)
    return key in KATIB_META_KEYS or bool(sub and sub.group(1) in KATIB_META_KEYS)


def pod_templates(obj: dict, releases: Releases = NEWEST) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template inside a workload or custom resource."""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    spec = obj.get("spec") or {}
    if kind == "PyTorchJob":
        return [(f"PyTorchJob {name} {r}", s["template"]["spec"])
                for r, s in (spec.get("pytorchReplicaSpecs") or {}).items()]
    if kind == "TrainJob":
        return [(f"TrainJob {name} node", trainjob_pod_spec(obj, releases=releases))]
    if kind == "Experiment":
        trial = substituted_trial_spec(obj)
        return [(f"Experiment {name} trial {w}", s) for w, s in pod_templates(trial, releases)] if trial else []
    if kind == "InferenceService":
        predictor = copy.deepcopy(spec.get("predictor") or {})
        return [(f"InferenceService {name} predictor", predictor)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [(f"{kind} {name}", spec["template"]["spec"])]
    if kind == "CronJob":
        return [(f"CronJob {name}", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "Pod":
        return [(f"Pod {name}", spec)]
    return []


@functools.cache
def runtime(name: str, releases: Releases = NEWEST) -> dict:
    return yaml.safe_load(releases.runtime_file(name).read_text())


def _merge_named(base: list[dict], patches: list[dict]) -> list[dict]:
    """Strategic merge of lists keyed by name: patch entries update the same-named entry."""
    out = [copy.deepcopy(b) for b in base]
    for p in patches:
        same = next((b for b in out if b.get("name") == p.get("name")), None)
        if same is None:
            out.append(copy.deepcopy(p))
        else:
            for key, value in p.items():
                same[key] = _merge_named(same.get(key) or [], value) if key in ("volumeMounts", "env") \
                    else copy.deepcopy(value)
    return out


def _pod_patches(spec: dict, replicated_job: str) -> list[dict]:
    """The pod templates (metadata, spec) that a TrainJob's runtime patches (Trainer >= v2.2)
    or pod template overrides (v2.1) lay over `replicated_job`'s pods, in order."""
    patches = []
    for patch in spec.get("runtimePatches") or []:
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rj in template.get("replicatedJobs") or []:
            if rj["name"] == replicated_job:
                patches.append(((rj.get("template") or {}).get("spec") or {}).get("template") or {})
    for override in spec.get("podTemplateOverrides") or []:
        if replicated_job in {t["name"] for t in override.get("targetJobs") or []}:
            patches.append(override)
    return patches


def trainjob_pod_spec(trainjob: dict, replicated_job: str = "node", releases: Releases = NEWEST) -> dict:
    """The pod spec the Trainer (of `releases`) makes for `replicated_job` of a TrainJob: the
    runtime's pod template, spec.trainer on its `node` container (image, command, args, env,
    resources), then every runtime patch (Trainer >= v2.2) or pod template override (v2.1):
    pod fields replace, containers/volumes merge by name. A patch or override that names a
    container the runtime lacks is an error: the Trainer cannot add one."""
    spec = trainjob["spec"]
    ref = spec["runtimeRef"]
    rt = runtime(ref["name"], releases)
    assert (ref.get("kind", "ClusterTrainingRuntime"), ref.get("apiGroup", "trainer.kubeflow.org")) == \
        (rt["kind"], rt["apiVersion"].split("/")[0]), f"runtimeRef {ref} does not name {rt['kind']} {ref['name']}"
    [job] = [j for j in rt["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == replicated_job]
    pod = copy.deepcopy(job["template"]["spec"]["template"]["spec"])
    trainer = spec.get("trainer") or {}
    [node] = [c for c in pod["containers"] if c["name"] == "node"]
    for key, field in (("image", "image"), ("command", "command"), ("args", "args"),
                       ("resourcesPerNode", "resources")):
        if key in trainer:
            node[field] = copy.deepcopy(trainer[key])
    node["env"] = _merge_named(node.get("env") or [], trainer.get("env") or [])
    for template in _pod_patches(spec, replicated_job):
        for key, value in (template.get("spec") or {}).items():
            if key in ("containers", "initContainers"):
                have = {c["name"] for c in pod.get(key) or []}
                unknown = {c["name"] for c in value} - have
                assert not unknown, f"runtime patch names {key} {sorted(unknown)} the runtime lacks"
                pod[key] = _merge_named(pod.get(key) or [], value)
            elif key == "volumes":
                pod[key] = _merge_named(pod.get(key) or [], value)
            else:
                pod[key] = copy.deepcopy(value)
    return pod


def trainjob_pod_metadata(trainjob: dict, replicated_job: str = "node") -> dict[str, dict[str, str]]:
    """The labels and annotations that the runtime patches or pod template overrides put on
    `replicated_job`'s pods (what the NetworkPolicies and Istio read)."""
    metadata: dict[str, dict[str, str]] = {"labels": {}, "annotations": {}}
    for template in _pod_patches(trainjob["spec"], replicated_job):
        for key, values in metadata.items():
            values.update((template.get("metadata") or {}).get(key) or {})
    return metadata
