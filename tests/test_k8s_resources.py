"""The resources the kubernetes backend generates: valid against the CRDs in ../shared/crds and
Katib's webhook rules, secure, and identical to the templates committed in manifests/workloads."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
from k8s_checks import (
    custom_resource_errors,
    katib_violations,
    pod_templates,
    schema_errors,
    substituted_trial_spec,
)

from components.backends import render
from components.k8s import to_dict
from components.k8s.jobspec import TrainingJob
from components.k8s.katib import Tuning, build_experiment
from components.k8s.pytorchjob import build_pytorchjob
from components.k8s.security import Resources, pod_security_violations
from components.search_space import Parameter, SearchSpace, default_search_space

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "manifests" / "workloads"


@pytest.fixture(scope="module")
def generated():
    return render.workloads()


def test_generated_workloads_validate_and_are_secure(generated):
    assert set(generated) == {"katib-experiment.yaml", "katib-experiment-pytorchjob.yaml", "trainjob.yaml",
                              "pytorchjob.yaml", "inferenceservice.yaml"}
    for name, obj in generated.items():
        assert custom_resource_errors(obj) == [], name
        templates = pod_templates(obj)
        assert templates, name
        for where, spec in templates:
            assert pod_security_violations(spec, where) == []


@pytest.mark.parametrize("name,kind,container,success,labels", [
    ("katib-experiment.yaml", "TrainJob", "node", "Complete",
     {"jobset.sigs.k8s.io/replicatedjob-name": "node", "batch.kubernetes.io/job-completion-index": "0"}),
    ("katib-experiment-pytorchjob.yaml", "PyTorchJob", "pytorch", "Succeeded",
     {"training.kubeflow.org/job-role": "master"}),
])
def test_katib_trial_template_is_a_valid_job(generated, name, kind, container, success, labels):
    experiment = generated[name]
    assert katib_violations(experiment) == []
    trial = substituted_trial_spec(experiment)
    # no name or namespace (Katib names each trial), the job labels Katib keeps on the trial job
    assert trial["kind"] == kind and set(trial["metadata"]) == {"labels"}
    assert trial["metadata"]["labels"]["app.kubernetes.io/component"] == "tune-trial"
    assert schema_errors(trial) == []
    template = experiment["spec"]["trialTemplate"]
    assert template["primaryContainerName"] == container
    assert template["primaryPodLabels"] == labels
    assert template["successCondition"] == f'status.conditions.#(type=="{success}")#|#(status=="True")#'
    assert template["failureCondition"] == 'status.conditions.#(type=="Failed")#|#(status=="True")#'


def test_the_default_training_api_is_a_trainjob_on_the_torch_runtime(generated):
    from k8s_checks import trainjob_pod_spec

    job = generated["trainjob.yaml"]
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    pod = trainjob_pod_spec(job)
    [node] = pod["containers"]
    assert node["name"] == "node" and node["image"] == job["spec"]["trainer"]["image"]
    assert pod["securityContext"]["runAsNonRoot"] is True  # from the runtime patch
    assert pod_security_violations(pod) == []
    import kubernetes_validate  # the merged pod is a valid Kubernetes pod

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-0"},
                                  "spec": pod}, kubernetes_validate.latest_version(), strict=True)


def test_a_runtime_patch_cannot_add_a_container(generated):
    from k8s_checks import trainjob_pod_spec

    job = copy.deepcopy(generated["trainjob.yaml"])
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "fetch-data"}]
    with pytest.raises(AssertionError, match="fetch-data"):
        trainjob_pod_spec(job)


def test_the_trainjob_schema_check_rejects_wrong_types_and_unknown_fields(generated):
    job = copy.deepcopy(generated["trainjob.yaml"])
    job["spec"]["trainer"]["numNodes"] = "2"
    job["spec"]["trainer"]["podTemplateOverrides"] = []  # removed in Trainer 2.2
    errors = schema_errors(job)
    assert any("numNodes" in e for e in errors) and any("podTemplateOverrides" in e for e in errors)


def test_the_settings_keys_are_the_configmaps():
    from components.k8s.contract import SETTINGS_KEYS

    lines = (REPO / "manifests" / "base" / "settings.env").read_text().splitlines()
    keys = {line.split("=")[0] for line in lines if line and not line.startswith("#")}
    assert set(SETTINGS_KEYS) <= keys and "MLFLOW_ARTIFACTS_DESTINATION" not in SETTINGS_KEYS


def test_committed_templates_are_what_the_code_generates(tmp_path):
    render.render(tmp_path)
    committed = sorted(p.name for p in WORKLOADS.iterdir())
    assert committed == sorted(p.name for p in tmp_path.iterdir())
    for name in committed:
        assert (WORKLOADS / name).read_text() == (tmp_path / name).read_text(), \
            f"manifests/workloads/{name} is stale: run `python -m components.backends.render manifests/workloads`"


# -- the checks can fail -------------------------------------------------------------------
def test_the_schema_check_rejects_wrong_types_and_unknown_fields(generated):
    job = copy.deepcopy(generated["pytorchjob.yaml"])
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    job["spec"]["runPolicy"]["cleanPodPolicie"] = "None"
    errors = schema_errors(job)
    assert any("replicas" in e and "not of type 'integer'" in e for e in errors)
    assert any("cleanPodPolicie" in e for e in errors)
    isvc = copy.deepcopy(generated["inferenceservice.yaml"])
    isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert any("containerPort" in e for e in schema_errors(isvc))


@pytest.mark.parametrize("mutate,expected", [
    (lambda e: e["spec"].update(parallelTrialCount=99), "parallelTrialCount must not exceed"),
    (lambda e: e["spec"].update(maxTrialCount=0), "maxTrialCount must be greater than 0"),
    (lambda e: e["spec"]["algorithm"].update(algorithmName="simulated-annealing"), "not a Katib algorithm"),
    (lambda e: e["spec"]["objective"].pop("objectiveMetricName"), "objectiveMetricName must be specified"),
    (lambda e: e["spec"]["parameters"][0]["feasibleSpace"].pop("max"), "min and max must be specified"),
    (lambda e: e["spec"]["parameters"][1]["feasibleSpace"].update(min="1"), "not supported for categorical"),
    (lambda e: e["spec"]["trialTemplate"].pop("successCondition"), "successCondition and failureCondition"),
    (lambda e: e["spec"]["trialTemplate"]["trialParameters"][0].update(reference="gamma"), "not in spec.parameters"),
    (lambda e: e["spec"]["trialTemplate"]["trialParameters"].pop(0), "not in trialParameters"),
    (lambda e: e["spec"]["trialTemplate"]["trialSpec"].update(metadata={"name": "x"}), "must be omitted"),
    (lambda e: e["spec"]["trialTemplate"].pop("primaryContainerName"), "primaryContainerName must be specified"),
])
def test_the_katib_check_enforces_the_webhook_rules(generated, mutate, expected):
    experiment = copy.deepcopy(generated["katib-experiment.yaml"])
    mutate(experiment)
    assert any(expected in p for p in katib_violations(experiment)), katib_violations(experiment)


def test_an_unused_trial_parameter_is_caught():
    experiment = build_experiment("x", None, default_search_space(), TrainingJob(
        image="img", train_args=("--epochs", "1"), data_uri="s3://b/p"))
    from components.k8s import to_dict

    e = to_dict(experiment)
    e["spec"]["trialTemplate"]["trialParameters"].append({"name": "unused", "reference": "beta"})
    assert any("unused" in p or "duplicate" in p for p in katib_violations(e))


@pytest.mark.parametrize("mutate,expected", [
    (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
    (lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda s: s["containers"][0]["resources"].pop("limits"), "no limits.cpu"),
    (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    (lambda s: s["initContainers"][0]["securityContext"].pop("seccompProfile") and s.pop("securityContext"),
     "seccompProfile"),
])
def test_the_security_check_rejects_each_broken_rule(generated, mutate, expected):
    spec = copy.deepcopy(generated["pytorchjob.yaml"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"])
    mutate(spec)
    assert any(expected in p for p in pod_security_violations(spec)), pod_security_violations(spec)


# -- builders ------------------------------------------------------------------------------
def test_multi_process_pods_run_torchrun_and_single_ones_plain_kubevae():
    from components.k8s import to_dict

    def command(job):
        return to_dict(build_pytorchjob(job, "j", "ns"))["spec"]["pytorchReplicaSpecs"]["Master"][
            "template"]["spec"]["containers"][0]["command"]

    one = TrainingJob(image="img", train_args=("--dataset", "sprites"))
    two = TrainingJob(image="img", train_args=("--dataset", "sprites"), procs_per_pod=2,
                      resources=Resources(gpus=2))
    assert command(one)[-3:] == ["--", "kubevae", "train"]
    assert command(two)[-5:] == ["--", "torchrun", "--no-python", "kubevae", "train"]
    assert to_dict(build_pytorchjob(two, "j", "ns"))["spec"]["nprocPerNode"] == "2"


@pytest.mark.parametrize("kwargs,message", [
    ({"workers": 0}, "workers"),
    ({"procs_per_pod": 2, "resources": Resources(gpus=1)}, "one process per GPU"),
    ({"train_args": ("--out", "/x"), "data_uri": "s3://b/p"}, "set by the job"),
    ({"train_args": ("--epochs", "1")}, "give data_uri"),
])
def test_training_job_rejects_contradictions(kwargs, message):
    args = {"image": "img", "train_args": ("--dataset", "sprites"), **kwargs}
    with pytest.raises(ValueError, match=message):
        TrainingJob(**args)


def test_tuning_rejects_bad_counts_and_algorithms():
    with pytest.raises(ValueError, match="parallel_trials"):
        Tuning(max_trials=2, parallel_trials=3)
    with pytest.raises(ValueError, match="algorithm"):
        Tuning(algorithm="annealing")


# -- the search space ------------------------------------------------------------------------
def test_one_search_space_for_katib_and_optuna():
    space = default_search_space(beta_min=0.5, beta_max=16.0, latent_dims=(10, 4, 6), tune_lr=True)
    katib = {p.name: p for p in space.to_katib()}
    assert katib["beta"].feasible_space.distribution == "logUniform"
    assert (katib["beta"].feasible_space.min, katib["beta"].feasible_space.max) == ("0.5", "16.0")
    assert katib["latent_dim"].parameter_type == "categorical"
    assert katib["latent_dim"].feasible_space.list == ["4", "6", "10"]
    assert katib["lr"].feasible_space.distribution == "logUniform"

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [space.suggest(study.ask()) for _ in range(200)]
    betas = [v["beta"] for v in values]
    assert 0.5 <= min(betas) and max(betas) <= 16.0
    assert sum(b < 2.83 for b in betas) == pytest.approx(100, abs=25)  # log-uniform: half below sqrt(0.5*16)
    assert {v["latent_dim"] for v in values} == {4, 6, 10}
    flags = space.train_args(values[0])
    assert flags[::2] == ["--beta", "--latent-dim", "--lr"]
    assert space.parse({"beta": "2.5", "latent_dim": "6", "lr": "0.001"}) == {"beta": 2.5, "latent_dim": 6, "lr": 0.001}


def test_search_space_errors_name_the_parameter():
    with pytest.raises(ValueError, match="'beta'.*min > 0"):
        Parameter("beta", "double", 0.0, 4.0, log=True)
    with pytest.raises(ValueError, match="'latent_dim'.*non-empty"):
        Parameter("latent_dim", "categorical", values=())
    with pytest.raises(ValueError, match="'momentum'.*must be one of"):
        Parameter("momentum", "double", 0.1, 0.9)
    with pytest.raises(ValueError, match="duplicate"):
        SearchSpace((Parameter("beta", "double", 1, 2), Parameter("beta", "double", 1, 3)))
    with pytest.raises(ValueError, match="'latent_dim': '7' is not one of"):
        default_search_space().parse({"beta": "1.0", "latent_dim": "7"})


def test_the_local_backend_writes_the_inferenceservice_a_cluster_would_get(tmp_path):
    import yaml

    from components.backends.base import ClusterSettings, DeployRequest
    from components.k8s.inferenceservice import write_inferenceservice

    request = DeployRequest(model_name="kubevae", model_dir=str(tmp_path), manifest_dir=str(tmp_path),
                            model_uri="minio://mlpipeline/v2/artifacts/run/model",
                            cluster=ClusterSettings(namespace="team-a", image="registry.example.com/kubevae:1"))
    path = write_inferenceservice(request, tmp_path / "out")
    isvc = yaml.safe_load(path.read_text())
    assert custom_resource_errors(isvc) == []
    container = isvc["spec"]["predictor"]["containers"][0]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/run/model"} in container["env"]
    assert container["image"] == "registry.example.com/kubevae:1" and isvc["metadata"]["namespace"] == "team-a"
    with pytest.raises(ValueError, match="InferenceService name"):
        write_inferenceservice(DeployRequest(model_name="Bad_Name", model_dir="", model_uri="s3://b/m",
                                             manifest_dir=""), tmp_path)


@pytest.mark.parametrize("objective_metric", ["val_mig", "val_factor_vae", "val_dci", "udr",
                                              "val_neg_elbo", "val_iwae_nll"])
def test_every_objective_builds_a_valid_experiment_with_its_direction(objective_metric):
    from components.backends.base import TuneRequest
    from components.backends.kubernetes import KubernetesBackend
    from kubevae.study import OBJECTIVES

    request = TuneRequest(name="t", data_dir="", data_uri="s3://b/splits", work_dir="",
                          search_space=default_search_space(), objective_metric=objective_metric,
                          parallel_trials=2, trial_steps=500)
    experiment = to_dict(KubernetesBackend(api=None, env={}).tune_experiment(request, "ns", "t-1"))
    assert custom_resource_errors(experiment) == [] and katib_violations(experiment) == []
    objective = experiment["spec"]["objective"]
    assert objective["objectiveMetricName"] == objective_metric
    assert objective["type"] == OBJECTIVES[objective_metric].direction
    assert {"val_neg_elbo", "val_recon", "val_kl", "val_active_units"} - {objective_metric} <= \
        set(objective["additionalMetricNames"])
    from test_k8s_launchers import node0_container

    args = node0_container(experiment["spec"]["trialTemplate"]["trialSpec"])["args"]
    assert args[args.index("--objective-metric") + 1] == objective_metric
    assert args[args.index("--steps") + 1] == "500"
    assert ("--udr-seeds" in args) == (objective_metric == "udr")
    # What the trial runs is exactly what the trainer's parser accepts.
    from kubevae.training.command import parser

    parsed = parser().parse_args(["1" if a.startswith("${") else a for a in args])
    assert parsed.objective_metric == objective_metric and parsed.steps == 500


def test_a_categorical_hyperband_resource_is_refused_naming_the_parameter():
    # Katib's hyperband reads the resource's max; a categorical one used to end in a bare
    # TypeError from math.log(None).
    from components.k8s.katib import hyperband_min_parallel

    space = default_search_space().with_parameter(Parameter("steps", "categorical", values=(100, 200)))
    with pytest.raises(ValueError, match="parameter 'steps': a categorical parameter has no min/max"):
        hyperband_min_parallel(space, Tuning(algorithm="hyperband"))


def test_hyperband_with_udr_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="hyperband .* udr"):
        Tuning.for_objective("udr", algorithm="hyperband")
