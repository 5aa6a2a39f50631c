"""The version matrix: what the launchers create against the CRDs of each release they support.

Kubeflow 26.03 ships Trainer v2.1.0 and KServe 0.16.0 (../shared/kubeflow-26.03); newer
installs have Trainer v2.2.0/v2.3.0 and KServe 0.20. An API server drops fields its CRD does
not know unless asked for strict field validation, so every object is checked with unknown
fields as errors (k8s_checks, per release), and the launcher path (strict dry run -> the
shape the cluster serves -> strict create) runs end to end against a fake API server that
serves each release's CRDs (k8s_fake).
"""

from __future__ import annotations

import copy
import json

import k8s_scenarios as scenarios
import pytest
from k8s_checks import (
    KUBEFLOW_26_03,
    Releases,
    custom_resource_errors,
    pod_templates,
    schema_errors,
    substituted_trial_spec,
    trainjob_pod_metadata,
    trainjob_pod_spec,
    unknown_fields,
)
from k8s_fake import FakeCluster
from k8s_scenarios import EXPERIMENT_NAME, JOB_NAME, NAMESPACE, TIMEOUT_S

from components.backends.kubernetes import KubernetesBackend
from components.k8s import to_dict
from components.k8s.katib import trial_instance
from components.k8s.security import pod_security_violations
from components.k8s.training_apis import TRAINING_APIS
from components.k8s.waiting import ResourceFailed, ResourceTimeout

TRAINER = ("v2.1.0", "v2.2.0", "v2.3.0")
KSERVE = ("v0.16.0", "v0.20")
# Read from the CRDs themselves (trainjob_types.go): runtimePatches and activeDeadlineSeconds
# came in v2.2.0 and replaced podTemplateOverrides.
SERVED_SHAPE = {"v2.1.0": "podTemplateOverrides", "v2.2.0": "runtimePatches", "v2.3.0": "runtimePatches"}
# The KServe modes whose canary each release serves (0.16 has no spec.canary[]).
CANARY_MODES = {"v0.16.0": {"Knative"}, "v0.20": {"Knative", "Standard"}}
# What a v2.1 pod lacks: the security contexts its override cannot set (the pod still runs as
# the image's user 10001, with requests and limits).
V21_SECURITY_GAPS = ("runAsNonRoot is not true", "allowPrivilegeEscalation is not false",
                     "capabilities do not drop ALL", "seccompProfile is None, not RuntimeDefault",
                     "readOnlyRootFilesystem is not true")
TRAINER_API = TRAINING_APIS["trainer"]


def _backend() -> KubernetesBackend:
    return KubernetesBackend(api=None, env={})  # builds objects only


def _strict_writes(out) -> list[tuple[str, str | None]]:
    """(verb, fieldValidation) of every create and patch: a write that is not strict would be
    kept by a server that drops what it does not know, so a check of the body alone says little."""
    return [(c.verb, c.field_validation) for c in out.cluster.calls if c.verb in ("create", "patch")]


def _trainjob(tmp_path, shape):
    return to_dict(_backend().train_job(scenarios.train_request(tmp_path), NAMESPACE, JOB_NAME, shape))


def _experiment(tmp_path, shape):
    return to_dict(_backend().tune_experiment(scenarios.tune_request(tmp_path), NAMESPACE, EXPERIMENT_NAME, shape))


# -- the shapes against each release's CRD ---------------------------------------------------
@pytest.mark.parametrize("release", TRAINER)
@pytest.mark.parametrize("shape", TRAINER_API.shapes, ids=lambda s: s.name)
def test_each_trainjob_shape_is_exactly_what_its_releases_serve(tmp_path, release, shape):
    """The table in training_apis: a shape validates (no unknown field) against the releases
    that serve it, and the others name its own fields as unknown, which is what makes the dry
    run move to the next shape."""
    releases = Releases(trainer=release)
    job = _trainjob(tmp_path, shape)
    trial = trial_instance(_experiment(tmp_path, shape), f"{EXPERIMENT_NAME}-x", NAMESPACE)
    for obj in (job, trial):
        if SERVED_SHAPE[release] == shape.name:
            assert schema_errors(obj, releases) == []
            assert unknown_fields(obj, releases) == []
        else:
            unknown = unknown_fields(obj, releases)
            assert unknown and set(unknown) <= set(shape.fields)
            assert TRAINER_API.older_than(shape, unknown) == (
                TRAINER_API.shapes[1] if shape is TRAINER_API.shapes[0] else None)


# -- the launcher path, end to end -----------------------------------------------------------
@pytest.mark.parametrize("release", TRAINER)
def test_train_chooses_the_shape_the_clusters_trainer_serves_and_nothing_is_dropped(tmp_path, s3, release):
    releases = Releases(trainer=release)
    out = scenarios.train_succeeds(tmp_path, s3, releases=releases)
    assert out.error is None, out.error
    cluster = out.cluster
    [job] = cluster.created("trainjobs")
    stored = cluster.objects[("trainer.kubeflow.org", "trainjobs", NAMESPACE, JOB_NAME)]
    assert {k: v for k, v in stored.items() if k not in ("metadata", "status")} == \
        {k: v for k, v in job.items() if k != "metadata"}  # the server kept every field
    assert cluster.warnings == []
    assert custom_resource_errors(job, releases) == []
    creates = [(c.dry_run, c.field_validation) for c in cluster.calls if c.verb == "create"]
    dry_runs = cluster.dry_runs("trainjobs")
    if release == "v2.1.0":  # runtimePatches refused, podTemplateOverrides accepted
        assert [("runtimePatches" in d["spec"], "podTemplateOverrides" in d["spec"]) for d in dry_runs] == \
            [(True, False), (False, True)]
        assert creates == [("All", "Strict"), ("All", "Strict"), (None, "Strict")]
        assert "podTemplateOverrides" in job["spec"] and "activeDeadlineSeconds" not in job["spec"]
        assert any(f"deletes the job if it has not finished within {TIMEOUT_S}s" in line for line in out.log)
    else:
        assert [("runtimePatches" in d["spec"]) for d in dry_runs] == [True]
        assert creates == [("All", "Strict"), (None, "Strict")]
        assert job["spec"]["activeDeadlineSeconds"] == TIMEOUT_S and "podTemplateOverrides" not in job["spec"]
    assert dry_runs[-1] == job  # the job created is the one the cluster accepted
    # The pods as that release's Trainer makes them: the volumes, service account, labels and
    # the Istio opt-out the first run needs (B4: without them /data is not writable).
    pod = trainjob_pod_spec(job, releases=releases)
    [node] = pod["containers"]
    assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/tmp", "/work", "/checkpoints", "/data"}
    assert {v["name"] for v in pod["volumes"]} >= {"scratch", "work", "checkpoints", "data"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    meta = trainjob_pod_metadata(job)
    assert meta["labels"]["app.kubernetes.io/component"] == "train"
    assert meta["labels"]["kubevae.io/pipeline-run"] == "run-1"
    assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}
    violations = pod_security_violations(pod)
    if release == "v2.1.0":
        assert violations and all(v.endswith(V21_SECURITY_GAPS) for v in violations), violations
        assert any("cannot set the pods' security contexts" in line for line in out.log)
    else:
        assert violations == []


@pytest.mark.parametrize("release", TRAINER)
def test_tune_dry_runs_a_trial_and_gives_katib_a_trial_template_its_trainer_keeps_whole(tmp_path, release):
    releases = Releases(trainer=release)
    out = scenarios.tune_succeeds(tmp_path, releases=releases)
    assert out.error is None, out.error
    cluster = out.cluster
    [experiment] = cluster.created("experiments")
    assert [(c.resource, c.field_validation) for c in cluster.calls if c.verb == "create" and not c.dry_run] == \
        [("experiments", "Strict")]
    assert custom_resource_errors(experiment, releases) == []  # Katib's rules; trial strict per release
    for where, pod in pod_templates(experiment, releases):
        assert [v for v in pod_security_violations(pod, where) if not v.endswith(V21_SECURITY_GAPS)] == []
    trial_spec = experiment["spec"]["trialTemplate"]["trialSpec"]
    assert SERVED_SHAPE[release] in trial_spec["spec"]
    # Katib creates each trial without strict validation: nothing of it may be dropped.
    trial = substituted_trial_spec(experiment)
    assert unknown_fields(trial, releases) == []
    dry_runs = cluster.dry_runs("trainjobs")
    assert [d["metadata"]["name"] for d in dry_runs] == [f"{EXPERIMENT_NAME}-dry-run"] * len(dry_runs)
    assert len(dry_runs) == (2 if release == "v2.1.0" else 1)
    assert "${trialParameters" not in json.dumps(dry_runs[-1])
    # what was dry-run is the trial Katib will create from this Experiment's template
    assert dry_runs[-1] == trial_instance(experiment, f"{EXPERIMENT_NAME}-dry-run", NAMESPACE)
    assert cluster.created("trainjobs") == []  # the trials are Katib's to create


def test_a_trainer_that_serves_neither_shape_fails_before_anything_is_created(tmp_path, s3):
    """A TrainJob CRD with neither runtimePatches nor podTemplateOverrides: the step fails at
    the dry run, naming the fields and the Trainer releases that have them."""
    for step in ("train", "tune"):
        cluster = FakeCluster(releases=KUBEFLOW_26_03)
        cluster.undeclared = {"spec.podTemplateOverrides"}
        out = scenarios.Outcome(cluster)
        backend = scenarios._backend(cluster, out, s3)
        scenarios._run(out, lambda: backend.train(scenarios.train_request(tmp_path / step))  # noqa: B023
                       if step == "train" else backend.tune(scenarios.tune_request(tmp_path / step)))  # noqa: B023
        assert isinstance(out.error, ResourceFailed), (step, out.error)
        message = str(out.error)
        for text in ("spec.runtimePatches", "spec.podTemplateOverrides", "Kubeflow Trainer >= v2.2",
                     "Kubeflow Trainer v2.1", "nothing was created"):
            assert text in message, (step, message)
        assert len(cluster.dry_runs("trainjobs")) == 2
        assert cluster.created("trainjobs") == [] and cluster.created("experiments") == []
        assert cluster.objects == {}


def test_a_dry_run_refused_for_another_reason_fails_with_the_servers_message(tmp_path, s3):
    cluster = FakeCluster()
    cluster.admission["trainjobs"] = lambda body: 'ClusterTrainingRuntime.trainer.kubeflow.org "torch-distributed" not found'
    out = scenarios.Outcome(cluster)
    scenarios._run(out, lambda: scenarios._backend(cluster, out, s3).train(scenarios.train_request(tmp_path)))
    assert isinstance(out.error, ResourceFailed)
    assert "dry run of TrainJob" in str(out.error) and "torch-distributed" in str(out.error)
    assert len(cluster.dry_runs("trainjobs")) == 1 and cluster.created("trainjobs") == []


def test_on_trainer_v21_the_step_bounds_the_job_it_cannot_give_a_deadline(tmp_path, s3):
    out = scenarios.train_times_out(tmp_path, s3, releases=KUBEFLOW_26_03)
    assert isinstance(out.error, ResourceTimeout)
    [job] = out.cluster.created("trainjobs")
    assert "activeDeadlineSeconds" not in job["spec"]
    assert [c.verb for c in out.cluster.calls if c.resource == "trainjobs"][-1] == "delete"
    assert out.cluster.clock.now >= TIMEOUT_S


def test_every_create_and_patch_asks_for_strict_field_validation(tmp_path, s3):
    outcomes = scenarios.run_all(tmp_path, s3)
    writes = [(name, c.verb, c.resource, c.field_validation) for name, out in outcomes.items()
              for c in out.cluster.calls if c.verb in ("create", "patch")]
    assert {verb for _, verb, _, _ in writes} == {"create", "patch"}
    assert {resource for _, _, resource, _ in writes} >= {"experiments", "trainjobs", "pytorchjobs",
                                                          "inferenceservices"}
    assert [w for w in writes if w[3] != "Strict"] == []


# -- the fake API server itself ---------------------------------------------------------------
def test_the_fake_server_drops_unknown_fields_unless_strict_as_an_api_server_does(tmp_path):
    from kubernetes.client.rest import ApiException

    job = _trainjob(tmp_path, TRAINER_API.shapes[0])  # runtimePatches, for a Trainer v2.1 server
    cluster = FakeCluster(releases=KUBEFLOW_26_03)
    with pytest.raises(ApiException) as refused:
        cluster.custom.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs",
                                                       copy.deepcopy(job), field_validation="Strict")
    assert refused.value.status == 400
    assert 'strict decoding error: unknown field "spec.activeDeadlineSeconds", unknown field ' \
           '"spec.runtimePatches"' in json.loads(refused.value.body)["message"]
    assert cluster.objects == {}
    stored = cluster.custom.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE,
                                                            "trainjobs", copy.deepcopy(job))
    assert "runtimePatches" not in stored["spec"] and "activeDeadlineSeconds" not in stored["spec"]
    assert stored["spec"]["trainer"] == job["spec"]["trainer"]
    assert cluster.warnings == ['unknown field "spec.activeDeadlineSeconds"', 'unknown field "spec.runtimePatches"']


# -- KServe -----------------------------------------------------------------------------------
@pytest.mark.parametrize("release", KSERVE)
@pytest.mark.parametrize("mode", ["Knative", "Standard", "Standard-direct"])
def test_the_inferenceservice_of_every_mode_is_kept_whole_by_each_kserve(tmp_path, release, mode):
    releases = Releases(kserve=release)
    out = scenarios._deploy(tmp_path, scenarios._ready(), mode=mode, existing=False, releases=releases)
    assert out.error is None, out.error
    [isvc] = out.cluster.created("inferenceservices")
    assert custom_resource_errors(isvc, releases) == [] and unknown_fields(isvc, releases) == []
    assert out.cluster.warnings == []
    assert _strict_writes(out) == [("create", "Strict")]


@pytest.mark.parametrize("release", KSERVE)
@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_a_canary_runs_where_the_kserve_release_serves_it_and_is_refused_unchanged_elsewhere(
        tmp_path, release, mode):
    releases = Releases(kserve=release)
    ready = scenarios._standard_ready() if mode == "Standard" else scenarios._ready(tagged=True)
    after = scenarios._standard_ready() if mode == "Standard" else scenarios._ready()
    cluster_before = FakeCluster(releases=releases)
    scenarios._existing_service(cluster_before, mode)
    before = copy.deepcopy(next(iter(cluster_before.objects.values())))
    out = scenarios._deploy(tmp_path, ready, after, after, mode=mode, releases=releases)
    stored = out.cluster.objects[("serving.kserve.io", "inferenceservices", NAMESPACE, "kubevae")]
    if mode in CANARY_MODES[release]:
        assert out.error is None, out.error
        assert out.result.status == "promoted"
        assert out.cluster.warnings == []
        assert _strict_writes(out) == [("patch", "Strict"), ("patch", "Strict")]  # canary, promotion
        assert schema_errors({**stored, "status": {}}, releases) == []
    else:
        assert isinstance(out.error, ResourceFailed), out.error
        message = str(out.error)
        for text in ("spec.canary", "KServe >= 0.20", "nothing was changed", "Standard-direct",
                     "canary_percent=0"):
            assert text in message, message
        assert out.smoke_urls == []
        assert {k: v for k, v in stored.items() if k != "metadata"} == \
            {k: v for k, v in before.items() if k != "metadata"}
        assert stored["metadata"].get("annotations") == before["metadata"].get("annotations")


@pytest.mark.parametrize("release", KSERVE)
def test_standard_direct_replaces_the_model_on_each_kserve(tmp_path, release):
    out = scenarios._deploy(tmp_path, scenarios._ready(), mode="Standard-direct", canary=0,
                            releases=Releases(kserve=release))
    assert out.error is None, out.error
    assert out.result.status == "replaced" and out.cluster.warnings == []
    assert _strict_writes(out) == [("patch", "Strict")]
