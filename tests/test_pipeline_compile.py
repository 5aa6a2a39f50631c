"""The compiled pipeline: what the Kubeflow UI loads."""

import pytest
import yaml

from pipelines.pipeline import PARAMETERS
from pipelines.submit import compile_pipeline, to_kfp_cron


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    # The pipeline spec, then the Kubernetes platform spec (Secrets, ConfigMaps) as a 2nd document.
    pipeline, platform = yaml.safe_load_all(path.read_text())
    return {**pipeline, "platforms": platform["platforms"]}


def test_every_parameter_has_a_default_and_a_description(spec):
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(PARAMETERS)
    for name, definition in inputs.items():
        assert "defaultValue" in definition, name
        assert definition.get("description"), name
    assert inputs["backend"]["defaultValue"] == "kubernetes"
    assert inputs["training_api"]["defaultValue"] == "trainer"  # a TrainJob: current Kubeflow
    assert inputs["deployment_mode"]["defaultValue"] == "Knative"


def _body(spec):
    """The exit handler's DAG: every step but the cleanup runs inside it."""
    return spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def _all_tasks(spec):
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_dag_order(spec):
    tasks = _body(spec)
    deps = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert deps["ingest"] == set()
    assert deps["split"] == {"ingest"}
    assert deps["tune"] == {"split"}
    assert deps["train"] == {"split", "tune"}
    assert deps["evaluate"] == {"split", "train", "tune"}
    assert deps["gate"] == {"split", "train", "tune"}  # the study says what the gate judges
    # The deploy branch and its Else both hang off the gate's decision.
    branch_groups = [name for name in tasks if name.startswith("condition-branches")]
    assert len(branch_groups) == 1 and deps[branch_groups[0]] == {"gate", "train"}
    branches = spec["components"]["comp-" + branch_groups[0]]["dag"]["tasks"]
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in branches.items()}
    assert any("== 'promoted'" in c and "!" not in c for c in conditions.values())
    assert any(c.startswith("!(") for c in conditions.values())
    promoted = next(n for n, c in conditions.items() if not c.startswith("!("))
    inner = spec["components"]["comp-" + promoted]["dag"]["tasks"]
    assert set(inner) == {"deploy", "smoke-test"}
    assert inner["smoke-test"]["dependentTasks"] == ["deploy"]


def test_components_run_in_the_project_image_without_installing_kfp(spec):
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"].startswith("ghcr.io/kubevae/kubevae"), name
        assert "pip install" not in " ".join(container["command"]), name


def test_typed_report_artifacts(spec):
    outputs = {name: c.get("outputDefinitions", {}).get("artifacts", {})
               for name, c in spec["components"].items()}
    assert outputs["comp-split"]["leakage_report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["comp-evaluate"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["comp-evaluate"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["comp-train"]["model"]["artifactType"]["schemaTitle"] == "system.Model"


@pytest.mark.parametrize("given,expected", [("0 3 * * 1", "0 0 3 * * 1"),
                                            ("30 0 3 * * 1", "30 0 3 * * 1")])
def test_cron_is_converted_to_kfp_six_fields(given, expected):
    assert to_kfp_cron(given) == expected


def test_bad_cron_names_the_flag():
    with pytest.raises(ValueError, match="--cron: expected 5 fields"):
        to_kfp_cron("* * *")


def test_credentials_come_from_a_secret_never_from_parameters(spec):
    for name in spec["root"]["inputDefinitions"]["parameters"]:
        assert not any(word in name for word in ("secret", "password", "token", "access_key")), name
    platform = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(spec["deploymentSpec"]["executors"])
    with_s3 = set()
    for name, executor in platform.items():
        secrets = {s["secretName"]: {e["secretKey"] for e in s["keyToEnv"]} for s in executor["secretAsEnv"]}
        # MLflow requires authentication: every step reads its credentials from the Secret
        assert secrets.pop("kubevae-mlflow-auth") == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, name
        assert executor["podMetadata"]["labels"] == {"kubevae.io/mlflow-client": "true"}, name
        if secrets:
            assert secrets == {"kubevae-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}, name
            with_s3.add(name)
    # S3 keys only for the steps that read or write object storage themselves
    assert with_s3 == {"exec-ingest", "exec-split", "exec-tune", "exec-train"}, with_s3


def test_steps_with_side_effects_are_never_cached(spec):
    tasks = _all_tasks(spec)
    for name in ("ingest", "gate", "deploy", "smoke-test", "keep-champion", "cleanup"):
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    assert tasks["train"]["cachingOptions"]["enableCache"] is True


# -- run hygiene ---------------------------------------------------------------------------------
def test_the_exit_handler_cleans_up_after_every_step_with_the_runs_final_status(spec):
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "cleanup"}
    cleanup = root["cleanup"]
    assert cleanup["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # also after a failure
    assert cleanup["dependentTasks"] == ["exit-handler-1"]
    params = cleanup["inputs"]["parameters"]
    assert params["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # The same run id labels what tune, train and deploy create, so that cleanup finds it.
    tasks = _all_tasks(spec)
    for name in ("tune", "train", "deploy"):
        assert tasks[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_safe_steps_retry_with_backoff_and_others_do_not(spec):
    tasks = _all_tasks(spec)
    for name in ("ingest", "split", "evaluate", "smoke-test"):
        assert tasks[name]["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "60s", "backoffFactor": 2.0,
                                              "backoffMaxDuration": "1800s"}, name
    for name in ("tune", "train", "gate", "deploy", "keep-champion", "cleanup"):
        assert "retryPolicy" not in tasks[name], name  # they create or change cluster state


def test_every_step_has_a_timeout_and_only_the_2_17_compile_a_run_deadline_and_ttls(spec, tmp_path):
    from pipelines.pipeline import TIMEOUTS

    executors = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len(spec["deploymentSpec"]["executors"]) == len(TIMEOUTS)
    for name, executor in executors.items():
        assert int(executor["activeDeadlineSeconds"]) == TIMEOUTS[name.removeprefix("exec-")], name
    assert int(executors["exec-tune"]["activeDeadlineSeconds"]) > 6 * 3600  # beyond the backend's own wait
    # The default runs on a 2.16 backend, whose PipelineConfig lacks these (tests/test_kfp_versions.py).
    assert "pipelineConfig" not in spec["platforms"]["kubernetes"]
    _, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", "2.17").read_text())
    config = platform["platforms"]["kubernetes"]["pipelineConfig"]
    assert config == {"activeDeadlineSeconds": 86400, "resourceTtlOnSuccess": 86400, "resourceTtlOnFailure": 604800}


def test_an_unknown_kfp_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--kfp-backend: expected one of 2.16, 2.17, got '2.15'"):
        compile_pipeline(tmp_path / "p.yaml", "2.15")


def _quantity(text: str) -> float:
    """A Kubernetes CPU or memory quantity in cores or bytes ("250m", "2", "512Mi", "4Gi")."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def test_every_step_requests_and_limits_cpu_and_memory(spec):
    """A namespace with a ResourceQuota admits only pods that state their requests (and limits,
    when the quota has limits.*); without requests a pod runs BestEffort."""
    from pipelines.pipeline import RESOURCES, TIMEOUTS

    assert set(RESOURCES) == set(TIMEOUTS)  # every step, the exit handler's cleanup included
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(RESOURCES)
    for label, executor in executors.items():
        name = label.removeprefix("exec-")
        resources = executor["container"]["resources"]
        cpu, cpu_limit, memory, memory_limit = RESOURCES[name]
        assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"],
                resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == RESOURCES[name], name
        assert 0 < _quantity(cpu) <= _quantity(cpu_limit), name
        assert 256 * 2**20 <= _quantity(memory) <= _quantity(memory_limit), name  # torch + mlflow import
    # The metric computations are the heavy steps; the steps that wait on the cluster are light.
    assert _quantity(RESOURCES["evaluate"][0]) > _quantity(RESOURCES["train"][0])
    assert _quantity(RESOURCES["gate"][2]) >= _quantity(RESOURCES["evaluate"][2])


# -- --kfp-backend through the CLI ---------------------------------------------------------------
def _platform(path):
    return list(yaml.safe_load_all(path.read_text()))[1]["platforms"]["kubernetes"]


def test_compile_writes_the_2_16_yaml_by_default_and_the_2_17_one_on_request(tmp_path, capsys):
    from kubevae.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path / "default.yaml")]) == 0
    assert main(["pipeline", "compile", "--out", str(tmp_path / "new.yaml"), "--kfp-backend", "2.17"]) == 0
    out = capsys.readouterr().out
    assert "(for KFP 2.16 and 2.17)" in out and "(for KFP 2.17 only)" in out
    assert "pipelineConfig" not in _platform(tmp_path / "default.yaml")
    assert _platform(tmp_path / "new.yaml")["pipelineConfig"]["activeDeadlineSeconds"] == 86400


def test_submit_and_schedule_send_the_yaml_of_the_chosen_backend(monkeypatch, tmp_path, capsys):
    from kfp_api_server import KfpApiServer

    from kubevae.cli import main

    monkeypatch.setenv("KFP_EXISTING_TOKEN", "valid-token")
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiServer(token="valid-token") as kfp:
        host = ["--host", kfp.url]
        assert main(["pipeline", "submit", *host]) == 0
        assert main(["pipeline", "submit", *host, "--kfp-backend", "2.17"]) == 0
        assert main(["pipeline", "schedule", *host, "--cron", "0 3 * * 1", "--name", "a"]) == 0
        assert main(["pipeline", "schedule", *host, "--cron", "0 3 * * 1", "--name", "b",
                     "--kfp-backend", "2.17"]) == 0
        # --kfp-backend means nothing for an uploaded version: refused before any request
        before = len(kfp.requests)
        assert main(["pipeline", "submit", *host, "--pipeline", "kubevae", "--kfp-backend", "2.16"]) == 2
        assert "--kfp-backend applies to the package compiled now" in capsys.readouterr().err
        assert len(kfp.requests) == before
    assert kfp.violations == []
    sent = [call["body"]["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
            for call in kfp.calls("RunService_CreateRun") + kfp.calls("RecurringRunService_CreateRecurringRun")]
    assert ["pipelineConfig" in platform for platform in sent] == [False, True, False, True]
