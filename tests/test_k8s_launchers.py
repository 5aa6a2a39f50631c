"""The kubernetes backend against a recording fake Kubernetes API and a real S3 server (moto):
what it submits validates, its waits handle Succeeded, Failed and timeout, and an update of a
served model goes through a canary that is promoted or rolled back."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import datetime

import k8s_scenarios as scenarios
import pytest
import yaml
from k8s_checks import custom_resource_errors, pod_templates
from k8s_scenarios import (
    BUCKET,
    CANARY_CLUSTER_URL,
    EXPERIMENT_NAME,
    IMAGE,
    JOB_NAME,
    MODEL_URI,
    NAMESPACE,
    PLURALS,
    SERVICE_URL,
    TIMEOUT_S,
    deploy_canary_promoted,
    deploy_canary_revision_fails,
    deploy_canary_rolled_back,  # noqa: F401
    deploy_create_smoke_fails,
    deploy_creates,
    train_fails,
    train_image_missing,
    train_succeeds,
    train_times_out,
    tune_fails,
    tune_succeeds,
    tune_times_out,
)

from components.k8s import entrypoint
from components.k8s.security import pod_security_violations
from components.k8s.waiting import ResourceFailed, ResourceTimeout
from kubevae import objectstore

APIS = ("trainer", "pytorchjob")

KATIB_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")  # Katib's default filter


def verbs(outcome, resource):
    return [c.verb for c in outcome.cluster.calls if c.resource == resource]


def assert_valid(obj):
    assert custom_resource_errors(obj) == []
    templates = pod_templates(obj)
    assert templates
    for where, spec in templates:
        assert pod_security_violations(spec, where) == []


def node0_container(job: dict) -> dict:
    """The training container of node 0 as the cluster will run it (TrainJob or PyTorchJob)."""
    from k8s_checks import trainjob_pod_spec

    if job["kind"] == "TrainJob":
        return trainjob_pod_spec(job)["containers"][0]
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


# -- tune ---------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_tune_submits_a_valid_experiment_and_reads_back_the_optimal_trial(tmp_path, api):
    out = tune_succeeds(tmp_path, api=api)
    assert out.error is None, out.error
    [experiment] = out.cluster.created("experiments")
    assert_valid(experiment)
    spec = experiment["spec"]
    assert experiment["metadata"] == {**experiment["metadata"], "name": EXPERIMENT_NAME, "namespace": NAMESPACE}
    assert spec["algorithm"]["algorithmName"] == "tpe"
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    assert spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    assert spec["objective"]["objectiveMetricName"] == "val_neg_elbo"
    assert spec["objective"]["type"] == "minimize"
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (3, 2, 1)
    beta = next(p for p in spec["parameters"] if p["name"] == "beta")
    assert beta["feasibleSpace"]["distribution"] == "logUniform"
    trial = spec["trialTemplate"]["trialSpec"]
    assert trial["kind"] == {"trainer": "TrainJob", "pytorchjob": "PyTorchJob"}[api]
    container = node0_container(trial)
    args = container["args"]
    assert args[args.index("--beta") + 1] == "${trialParameters.beta}"
    assert args[args.index("--steps") + 1] == "4"
    assert args[args.index("--objective-metric") + 1] == "val_neg_elbo"
    assert set(spec["objective"]["additionalMetricNames"]) >= {"val_recon", "val_kl", "val_active_units"}
    # every trial nests under the run on the request (the tune step's), not the pod's env
    assert args[args.index("--parent-run-id") + 1] == "tune-run-1"
    env = {e["name"]: e for e in container["env"]}
    assert "MLFLOW_PARENT_RUN_ID" not in env
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://kubevae-mlflow:5000"
    # credentials never go into a spec: the trial reads them from the MLflow Secret
    assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kubevae-mlflow-auth", "key": "MLFLOW_TRACKING_PASSWORD"}
    if api == "trainer":  # every node downloads the split itself: no init containers in a TrainJob
        assert f"{DATA_URI_EXPECTED}=/data/splits" in container["command"]
        assert spec["trialTemplate"]["primaryContainerName"] == "node"
        assert spec["trialTemplate"]["primaryPodLabels"] == {
            "jobset.sigs.k8s.io/replicatedjob-name": "node", "batch.kubernetes.io/job-completion-index": "0"}
        assert spec["trialTemplate"]["successCondition"] == 'status.conditions.#(type=="Complete")#|#(status=="True")#'
    else:
        master = trial["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert master["initContainers"][0]["command"][-2:] == [DATA_URI_EXPECTED, "/data/splits"]
        assert spec["trialTemplate"]["primaryContainerName"] == "pytorch"
    assert experiment["metadata"]["labels"]["kubevae.io/pipeline-run"] == "run-1"

    result = out.result
    assert result.best_params == {"beta": 3.2, "latent_dim": 10}
    assert result.best_value == pytest.approx(812.25)
    assert [(t.params, t.value, t.state) for t in result.trials] == [
        ({"beta": 0.7, "latent_dim": 4}, 830.5, "COMPLETE"),
        ({"beta": 3.2, "latent_dim": 10}, 812.25, "COMPLETE"),
        ({"beta": 12.0, "latent_dim": 4}, 901.0, "PRUNED")]
    # The watch expired once (410 Gone): the launcher listed again and went on.
    assert verbs(out, "experiments") == ["create", "list", "watch", "watch", "list", "watch", "watch", "get"]


DATA_URI_EXPECTED = f"minio://{BUCKET}/v2/artifacts/run-1/split/splits"


def test_tune_failure_raises_with_katibs_reason(tmp_path):
    out = tune_fails(tmp_path)
    assert isinstance(out.error, ResourceFailed)
    assert "ExperimentMaxFailedTrialsReached" in str(out.error)
    assert f"katib.kubeflow.org/experiment={EXPERIMENT_NAME}" in str(out.error)
    assert "delete" not in verbs(out, "experiments")  # kept for inspection


def test_tune_timeout_deletes_the_experiment(tmp_path):
    out = tune_times_out(tmp_path)
    assert isinstance(out.error, ResourceTimeout)
    assert f"{TIMEOUT_S}s" in str(out.error)
    assert verbs(out, "experiments")[-1] == "delete"
    assert out.cluster.clock.now >= TIMEOUT_S


@pytest.mark.parametrize("algorithm,parallel", [("random", 2), ("grid", 2), ("bayesianoptimization", 2),
                                                ("hyperband", 3)])
def test_every_algorithm_builds_a_valid_experiment(tmp_path, algorithm, parallel):
    from k8s_fake import FakeCluster
    from k8s_scenarios import _backend, tune_request

    cluster = FakeCluster()
    from k8s_scenarios import Outcome

    backend = _backend(cluster, Outcome(cluster))
    request = tune_request(tmp_path, algorithm=algorithm, parallel=parallel)
    with pytest.raises(ResourceTimeout):  # nothing is scripted: it only has to be submitted
        backend.tune(request)
    [experiment] = cluster.created("experiments")
    assert_valid(experiment)
    assert experiment["spec"]["algorithm"]["algorithmName"] == algorithm
    if algorithm == "hyperband":
        names = [p["name"] for p in experiment["spec"]["parameters"]]
        assert "steps" in names
        args = node0_container(experiment["spec"]["trialTemplate"]["trialSpec"])["args"]
        assert args.count("--steps") == 1 and args[args.index("--steps") + 1] == "${trialParameters.steps}"
    if algorithm == "grid":
        beta = next(p for p in experiment["spec"]["parameters"] if p["name"] == "beta")
        # As many values as the trials can cover, as the local backend's grid (at least 2).
        points = request.search_space.grid_points(request.max_trials)
        assert beta["parameterType"] == "categorical" and len(beta["feasibleSpace"]["list"]) == points
        [searched] = [p for p in request.search_space.parameters if p.name == "beta"]
        assert points >= 2 and float(beta["feasibleSpace"]["list"][0]) == searched.min


def test_hyperband_needs_enough_parallel_trials(tmp_path):
    from k8s_fake import FakeCluster
    from k8s_scenarios import Outcome, _backend, tune_request

    cluster = FakeCluster()
    with pytest.raises(ValueError, match="parallel_trials must be at least 3"):
        _backend(cluster, Outcome(cluster)).tune(tune_request(tmp_path, algorithm="hyperband", parallel=2))
    assert cluster.calls == []


# -- train --------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_train_submits_a_valid_job_streams_node0s_log_and_downloads_the_model(tmp_path, s3, api):
    out = train_succeeds(tmp_path, s3, api=api)
    assert out.error is None, out.error
    [job] = out.cluster.created(PLURALS[api])
    assert_valid(job)
    assert job["metadata"]["name"] == JOB_NAME
    assert job["metadata"]["labels"]["kubevae.io/pipeline-run"] == "run-1"
    if api == "trainer":
        trainer = job["spec"]["trainer"]
        assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                             "name": "torch-distributed"}
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
        assert job["spec"]["activeDeadlineSeconds"] == TIMEOUT_S
        from k8s_checks import trainjob_pod_spec

        pod = trainjob_pod_spec(job)
        env = {e["name"]: e for e in trainer["env"]}
        assert env["S3_ENDPOINT"]["valueFrom"]["configMapKeyRef"]["name"] == "kubevae-settings"
    else:
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
        assert {r["restartPolicy"] for r in replicas.values()} == {"OnFailure"}
        assert job["spec"]["nprocPerNode"] == "1"
        pod = replicas["Master"]["template"]["spec"]
    container = node0_container(job)
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["command"][-2:] == ["kubevae", "train"]
    assert f"/work/model={MODEL_URI}" in container["command"]
    args = container["args"]
    assert args[args.index("--resume") + 1] == "auto"  # a restarted pod continues from its checkpoint
    assert args[args.index("--checkpoint-dir") + 1] == f"/checkpoints/{JOB_NAME}"
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in container["volumeMounts"]
    assert args[args.index("--beta") + 1] == "3.2" and args[args.index("--latent-dim") + 1] == "10"
    assert args[args.index("--parent-run-id") + 1] == "train-step-run-1"
    assert "MLFLOW_PARENT_RUN_ID" not in {e["name"] for e in container["env"]}
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_refs == {**{k: {"name": "kubevae-s3", "key": k} for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                           **{k: {"name": "kubevae-mlflow-auth", "key": k}
                              for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}}
    # Each line of node 0 once, in order, although the log reads overlap; no other pod's lines.
    assert [line for line in out.log if line.startswith("epoch=")] == [
        "epoch=1 step=10 val_neg_elbo=900.1", "epoch=2 step=20 val_neg_elbo=850.2",
        "epoch=3 step=30 val_neg_elbo=805.5"]
    assert not any("worker's line" in line for line in out.log)
    assert out.result.metrics == {"val_neg_elbo": 805.5, "epoch": 3}
    assert out.result.training_api == api  # what the model's metadata records
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "metrics.json",
                                                                      "model.safetensors"]
    # a TrainJob is first dry-run (which shape the cluster's Trainer serves); a PyTorchJob has one
    expected = (["create"] if api == "trainer" else []) + ["create", "list", "watch", "watch", "watch"]
    assert verbs(out, PLURALS[api]) == expected
    creates = [c for c in out.cluster.calls if c.verb == "create"]
    assert [(c.dry_run, c.field_validation) for c in creates] == \
        ([("All", "Strict")] if api == "trainer" else []) + [(None, "Strict")]


@pytest.mark.parametrize("api", APIS)
def test_train_failure_raises_with_the_controllers_message_and_shows_the_log(tmp_path, s3, api):
    out = train_fails(tmp_path, s3, api=api)
    assert isinstance(out.error, ResourceFailed)
    assert ("1 Master replica(s) failed" if api == "pytorchjob" else "BackoffLimitExceeded") in str(out.error)
    assert "RuntimeError: CUDA out of memory" in out.log
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("api", APIS)
def test_train_timeout_deletes_the_job(tmp_path, s3, api):
    out = train_times_out(tmp_path, s3, api=api)
    assert isinstance(out.error, ResourceTimeout)
    assert verbs(out, PLURALS[api])[-1] == "delete"


@pytest.mark.parametrize("api", APIS)
def test_train_stops_at_once_when_the_image_cannot_be_pulled(tmp_path, s3, api):
    out = train_image_missing(tmp_path, s3, api=api)
    assert isinstance(out.error, ResourceFailed)
    assert "ImagePullBackOff" in str(out.error)
    assert out.cluster.clock.now < 60


def test_an_unknown_training_api_is_refused_before_any_call(tmp_path, s3):
    from k8s_fake import FakeCluster
    from k8s_scenarios import Outcome, _backend, train_request

    cluster = FakeCluster()
    with pytest.raises(ValueError, match="training_api: expected one of trainer, pytorchjob"):
        _backend(cluster, Outcome(cluster), s3).train(train_request(tmp_path, api="mpijob"))
    assert cluster.calls == []


def test_train_refuses_a_local_output_path(tmp_path, s3):
    from k8s_fake import FakeCluster
    from k8s_scenarios import Outcome, _backend, train_request

    cluster = FakeCluster()
    with pytest.raises(ValueError, match="out_uri: the kubernetes backend needs an object-storage URI"):
        _backend(cluster, Outcome(cluster), s3).train(train_request(tmp_path, out_uri=str(tmp_path / "m")))
    assert cluster.calls == []


# -- deploy -------------------------------------------------------------------------------
def test_deploy_creates_a_valid_service_and_smoke_tests_it(tmp_path):
    out = deploy_creates(tmp_path)
    assert out.error is None, out.error
    [isvc] = out.cluster.created("inferenceservices")
    assert_valid(isvc)
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["command"] == ["kubevae", "serve"]
    assert container["args"] == ["--model", "/mnt/models", "--http-port", "8080", "--model-name", "kubevae",
                                 "--max-pending-requests", "16"]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/run-1/train/model"} in container["env"]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "kubevae-kserve-s3"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/kubevae/ready"
    # kserve's /v2/health/live stays "live" after an unload: the liveness probe asks the model
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/models/kubevae/ready"
    predictor = isvc["spec"]["predictor"]
    assert predictor["automountServiceAccountToken"] is False
    assert predictor["containerConcurrency"] == 16  # = the server's --max-pending-requests
    assert (out.result.status, out.result.endpoint) == ("ready", SERVICE_URL)
    assert out.smoke_urls == [SERVICE_URL]
    assert yaml.safe_load(open(out.result.manifest_path)) == isvc


def test_deploy_deletes_a_new_service_that_fails_its_smoke_test(tmp_path):
    out = deploy_create_smoke_fails(tmp_path)
    assert isinstance(out.error, ResourceFailed) and "HTTP 500" in str(out.error)
    assert verbs(out, "inferenceservices")[-1] == "delete"


def test_update_goes_through_a_canary_that_is_promoted(tmp_path):
    out = deploy_canary_promoted(tmp_path)
    assert out.error is None, out.error
    patches = [c.body for c in out.cluster.calls if c.verb == "patch"]
    assert patches[0]["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert patches[1]["spec"] == {"predictor": {"canaryTrafficPercent": None}}  # promote: field removed
    assert patches[1]["metadata"] == {"annotations": {"kubevae.io/canary-run": None}}  # no canary in flight
    stored = out.cluster.objects[("serving.kserve.io", "inferenceservices", NAMESPACE, "kubevae")]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/run-1/train/model"} in \
        stored["spec"]["predictor"]["containers"][0]["env"]
    assert out.smoke_urls == [CANARY_CLUSTER_URL]  # the new revision alone, by its tag
    assert (out.result.status, out.result.endpoint) == ("promoted", SERVICE_URL)
    assert "create" not in verbs(out, "inferenceservices")


def test_update_whose_canary_fails_the_smoke_test_is_rolled_back(tmp_path):
    out = deploy_canary_rolled_back(tmp_path)
    assert out.error is None, out.error
    patches = [c.body for c in out.cluster.calls if c.verb == "patch"]
    assert patches[-1]["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    assert out.result.status == "rolled_back" and "HTTP 503" in out.result.smoke["error"]


def test_update_whose_canary_revision_fails_is_rolled_back_without_a_smoke_test(tmp_path):
    out = deploy_canary_revision_fails(tmp_path)
    assert out.error is None, out.error
    assert out.result.status == "rolled_back" and "ModuleNotFoundError" in out.result.smoke["error"]
    assert out.smoke_urls == []


def _patches(out):
    return [c.body for c in out.cluster.calls if c.verb == "patch"]


def _stored(out):
    return out.cluster.objects[("serving.kserve.io", "inferenceservices", NAMESPACE, "kubevae")]


def test_the_deployment_mode_is_explicit(tmp_path):
    for mode, annotation in (("Knative", "Knative"), ("Standard", "Standard"), ("Standard-direct", "Standard")):
        from k8s_fake import FakeCluster

        cluster = FakeCluster()
        cluster.script("inferenceservices", scenarios._ready())
        out = scenarios.Outcome(cluster)
        scenarios._run(out, lambda: scenarios._backend(cluster, out).deploy(  # noqa: B023 (run at once)
            scenarios.deploy_request(tmp_path / mode, mode)))  # noqa: B023
        assert out.error is None, out.error
        [isvc] = cluster.created("inferenceservices")
        assert_valid(isvc)
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == annotation
        assert ("serving.kserve.io/enable-tag-routing" in annotations) == (mode == "Knative")


def test_standard_mode_canary_is_a_spec_canary_entry_that_is_promoted(tmp_path):
    out = scenarios.deploy_standard_canary_promoted(tmp_path)
    assert out.error is None, out.error
    canary, promote = _patches(out)
    [entry] = canary["spec"]["canary"]
    assert entry["trafficPercent"] == 20 and entry["predictor"]["name"] == scenarios.CANARY_NAME
    assert not {"minReplicas", "maxReplicas", "canaryTrafficPercent"} & set(entry["predictor"])  # KServe's rule
    assert "canaryTrafficPercent" not in canary["spec"].get("predictor", {})  # Knative's field: never in Standard
    assert canary["metadata"]["annotations"]["kubevae.io/canary-run"] == "run-1"
    stored = _stored(out)
    from k8s_checks import schema_errors

    assert schema_errors({**stored, "status": {}}) == []  # the patched service still validates
    assert out.smoke_urls == [scenarios.STANDARD_CANARY_URL]  # the canary's own Service
    assert promote["spec"]["canary"] is None and promote["spec"]["predictor"]["name"] == scenarios.CANARY_NAME
    assert "canary" not in stored["spec"] and stored["spec"]["predictor"]["name"] == scenarios.CANARY_NAME
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/run-1/train/model"} in \
        stored["spec"]["predictor"]["containers"][0]["env"]
    assert "kubevae.io/canary-run" not in stored["metadata"]["annotations"]
    assert (out.result.status, out.result.endpoint) == ("promoted", SERVICE_URL)


def test_standard_mode_canary_that_fails_the_smoke_test_is_removed(tmp_path):
    out = scenarios.deploy_standard_canary_rolled_back(tmp_path)
    assert out.error is None, out.error
    assert _patches(out)[-1]["spec"] == {"canary": None}
    stored = _stored(out)
    assert "canary" not in stored["spec"]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/old"} in stored["spec"]["predictor"]["containers"][0]["env"]
    assert out.result.status == "rolled_back" and "HTTP 500" in out.result.smoke["error"]


def test_without_canary_support_a_canary_request_fails_before_any_change(tmp_path):
    out = scenarios.deploy_without_canary_support_refuses_a_canary(tmp_path)
    assert isinstance(out.error, ResourceFailed)
    assert "has no canary" in str(out.error) and "canary_percent=0" in str(out.error)
    assert _patches(out) == [] and "create" not in verbs(out, "inferenceservices")


def test_without_canary_support_canary_percent_0_replaces_directly_and_says_so(tmp_path):
    out = scenarios.deploy_direct_replaces(tmp_path)
    assert out.error is None, out.error
    assert out.result.status == "replaced" and out.smoke_urls == [SERVICE_URL]
    assert any("replacing the model directly" in line for line in out.log)
    [patch] = _patches(out)
    assert "canary" not in patch["spec"]


def test_a_direct_replacement_that_fails_the_smoke_test_restores_the_previous_model(tmp_path):
    out = scenarios.deploy_direct_rolled_back(tmp_path)
    assert out.error is None, out.error
    assert out.result.status == "rolled_back" and "HTTP 503" in out.result.smoke["error"]
    assert {"name": "STORAGE_URI", "value": "s3://mlpipeline/old"} in _stored(out)["spec"]["predictor"]["containers"][0]["env"]


def test_a_service_in_another_mode_is_not_switched(tmp_path):
    from k8s_fake import FakeCluster

    cluster = FakeCluster()
    scenarios._existing_service(cluster, "Knative")
    out = scenarios.Outcome(cluster)
    scenarios._run(out, lambda: scenarios._backend(cluster, out).deploy(scenarios.deploy_request(tmp_path, "Standard")))
    assert isinstance(out.error, ResourceFailed) and "runs in deployment mode Knative" in str(out.error)
    assert _patches(out) == []


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_cleanup_deletes_what_the_failed_run_left_running_and_rolls_back_its_canary(tmp_path, mode):
    out = scenarios.cleanup_after_a_failed_run(tmp_path, mode)
    assert out.error is None, out.error
    deleted = sorted((c.resource, c.name) for c in out.cluster.calls if c.verb == "delete")
    assert deleted == [("experiments", "kubevae-tune-abc123"), ("trainjobs", "train-abc123")]
    assert ("trainer.kubeflow.org", "trainjobs", NAMESPACE, "train-other") in out.cluster.objects
    stored = _stored(out)
    if mode == "Knative":
        assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 0
    else:
        assert "canary" not in stored["spec"]
    assert "kubevae.io/canary-run" not in stored["metadata"]["annotations"]
    assert len(out.result) == 3 and any(f"rolled back the {mode} canary" in a for a in out.result)


def test_cleanup_without_a_run_id_touches_nothing(tmp_path):
    from dataclasses import replace

    from k8s_fake import FakeCluster

    cluster = FakeCluster()
    out = scenarios.Outcome(cluster)
    actions = scenarios._backend(cluster, out).cleanup(replace(scenarios.cluster_settings(), run_id=""), "kubevae")
    assert cluster.calls == [] and "nothing was touched" in actions[0]


# -- what runs inside the pods -----------------------------------------------------------
def test_entrypoint_timestamps_lines_as_katib_reads_them_and_uploads_on_rank_0(tmp_path, s3):
    folder = tmp_path / "model"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(); "
              "(p / 'metrics.json').write_text('{}'); print('epoch=1 step=5 val_neg_elbo=812.3 val_kl=4.5')")
    uri = f"s3://{BUCKET}/entrypoint/rank0"
    out = io.StringIO()
    code = entrypoint.run([sys.executable, "-c", script, str(folder)], [(str(folder), uri)], out=out,
                          env={**s3.env, "RANK": "0"})
    assert code == 0
    line = out.getvalue().splitlines()[0]
    stamp, _, rest = line.partition(" ")
    assert datetime.fromisoformat(stamp).tzinfo is not None  # Katib parses it as RFC 3339
    metrics = {m.group(1): float(m.group(2)) for m in KATIB_METRIC.finditer(rest)}
    assert metrics == {"epoch": 1, "step": 5, "val_neg_elbo": 812.3, "val_kl": 4.5}
    assert [o.object_name for o in s3.client().list_objects(BUCKET, "entrypoint/rank0/", recursive=True)] == \
        ["entrypoint/rank0/.kubevae-complete.json", "entrypoint/rank0/metrics.json"]


def test_entrypoint_downloads_the_split_before_the_command(tmp_path, s3):
    """A TrainJob node fetches the KFP split artifact itself (uploaded by KFP without a
    completion marker) before `kubevae train` starts."""
    client = s3.client()
    client.put_object(BUCKET, "kfp/split/splits/stats.json", io.BytesIO(b'{"n": 3}'), 8)
    data = tmp_path / "data" / "splits"
    script = f"import pathlib; print(pathlib.Path({str(data / 'stats.json')!r}).read_text())"
    out = io.StringIO()
    code = entrypoint.run([sys.executable, "-c", script], [], out=out, env={**s3.env, "PET_NODE_RANK": "1"},
                          downloads=[(f"minio://{BUCKET}/kfp/split/splits", str(data))])
    assert code == 0
    lines = out.getvalue().splitlines()
    assert "downloaded 1 files" in lines[0] and lines[1].endswith('{"n": 3}')


def test_entrypoint_passes_failures_through_and_workers_never_upload(tmp_path, s3):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "x").write_text("x")
    uri = f"s3://{BUCKET}/entrypoint/worker"
    assert entrypoint.run([sys.executable, "-c", "raise SystemExit(3)"], [(str(folder), uri)],
                          out=io.StringIO(), env={**s3.env, "RANK": "0"}) == 3
    assert entrypoint.run([sys.executable, "-c", "pass"], [(str(folder), uri)], out=io.StringIO(),
                          env={**s3.env, "RANK": "1"}) == 0
    assert entrypoint.run([sys.executable, "-c", "pass"], [(str(folder), uri)], out=io.StringIO(),
                          env={**s3.env, "PET_NODE_RANK": "1"}) == 0  # a TrainJob's node 1
    assert list(s3.client().list_objects(BUCKET, "entrypoint/worker/", recursive=True)) == []


def test_objectstore_round_trip_through_the_command_line(tmp_path, s3):
    src = tmp_path / "splits"
    (src / "train").mkdir(parents=True)
    (src / "train" / "images-00000.npy").write_bytes(b"\x93NUMPY" + b"\0" * 100)
    (src / "stats.json").write_text('{"mean": [0.5]}')
    env = {**s3.env, "PATH": "/usr/bin:/bin"}
    uri = f"minio://{BUCKET}/roundtrip/splits"
    for argv in (["upload", str(src), uri], ["download", uri, str(tmp_path / "copy")]):
        done = subprocess.run([sys.executable, "-m", "kubevae.objectstore", *argv], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "copy" / "train" / "images-00000.npy").read_bytes() == \
        (src / "train" / "images-00000.npy").read_bytes()
    assert (tmp_path / "copy" / "stats.json").read_text() == '{"mean": [0.5]}'


def test_objectstore_download_of_nothing_fails_and_leaves_no_folder(tmp_path, s3):
    with pytest.raises(FileNotFoundError, match="no objects under"):
        objectstore.download(s3.client(), f"s3://{BUCKET}/missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_objectstore_refuses_keys_that_leave_the_folder():
    with pytest.raises(ValueError, match="leaves the target folder"):
        objectstore._relative_key("prefix/../../etc/passwd", "prefix")
    with pytest.raises(ValueError, match="expected s3://BUCKET/PREFIX"):
        objectstore.parse_uri("/local/path")


@pytest.mark.parametrize("objective_metric", ["val_mig", "val_factor_vae", "val_dci", "val_neg_elbo", "udr"])
def test_katib_records_the_objectives_interval_bounds_where_it_has_them(objective_metric):
    """Katib keeps only the metrics an Experiment declares: without the bounds, a cluster
    study's trials would have no interval while the local study's have one."""
    from components.k8s.katib import Tuning
    from kubevae.study import interval_keys, objective

    tuning = Tuning.for_objective(objective_metric)
    bounds = set(interval_keys(objective_metric))
    if objective(objective_metric).interval:
        assert bounds <= set(tuning.additional_metrics)
    else:
        assert not bounds & set(tuning.additional_metrics)
    assert objective_metric not in tuning.additional_metrics
