"""`kubevae pipeline upload|submit|schedule|schedules` through the real kfp.Client (kfp 2.17.0)
against a loopback server that holds every request to KFP's v2beta1 REST specification
(tests/kfp_api_server.py): method + path, query parameters and JSON bodies (unknown fields and
wrong types fail), and answers validated against the specification's responses."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import kubevae_cmd, subprocess_env
from kfp_api_server import KfpApiServer

from kubevae.cli import main
from pipelines import submit
from pipelines.pipeline import PARAMETERS

TOKEN = "valid-token"


@pytest.fixture
def kfp(monkeypatch, tmp_path):
    monkeypatch.setenv("KFP_EXISTING_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    with KfpApiServer(token=TOKEN) as server:
        yield server
    assert server.violations == []  # every request the client sent matched the spec


def cli(*args: str) -> int:
    return main(["pipeline", *args])


def raw_request(server: KfpApiServer, method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(server.url + path, method=method,  # noqa: S310 (loopback http)
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback http)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_server_rejects_what_the_spec_does_not_allow(tmp_path, monkeypatch):
    """The checks can fail: an unknown field, a wrong type, an undeclared route and an
    undeclared query parameter are each refused and recorded."""
    with KfpApiServer(token=TOKEN) as server:
        ok, created = raw_request(server, "POST", "/apis/v2beta1/experiments",
                                  {"display_name": "e", "namespace": "kubeflow"})
        assert ok == 200 and created["experiment_id"]
        assert server.violations == []
        cases = [("POST", "/apis/v2beta1/experiments", {"display_name": "x", "colour": "red"}, "colour"),
                 ("POST", "/apis/v2beta1/recurringruns",
                  {"display_name": "r", "no_catchup": "yes"}, "no_catchup"),
                 ("POST", "/apis/v2beta1/recurringruns",
                  {"display_name": "r", "trigger": {"cron_schedule": {"cron": 5}}}, "cron"),
                 ("POST", "/apis/v2beta1/recurringruns", {"max_concurrency": "one"}, "max_concurrency"),
                 ("POST", "/apis/v2beta1/recurring_runs", {}, "no such route"),
                 ("GET", "/apis/v2beta1/experiments?colour=red", None, "colour")]
        for method, path, body, word in cases:
            before = len(server.violations)
            status, answer = raw_request(server, method, path, body)
            assert status in (400, 404), (path, body)
            assert word in answer["message"] and set(answer) == {"code", "message", "details"}
            assert len(server.violations) > before and word in server.violations[-1]
        # An int64 sent as a number is valid protobuf JSON, as a string too.
        for value in (1, "1"):
            status, _ = raw_request(server, "POST", "/apis/v2beta1/recurringruns",
                                    {"max_concurrency": value, "experiment_id": "missing"})
            assert status == 404  # past the body check, refused for the unknown experiment


def test_upload_creates_the_pipeline_then_adds_named_versions(kfp, capsys):
    assert cli("upload", "--host", kfp.url, "--name", "kubevae") == 0
    first = kfp.calls("UploadPipeline")
    assert len(first) == 1 and first[0]["query"]["name"] == "kubevae"
    assert first[0]["body"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubevae"
    assert "created pipeline 'kubevae'" in capsys.readouterr().out

    assert cli("upload", "--host", kfp.url, "--name", "kubevae") == 0
    added = kfp.calls("UploadPipelineVersion")
    name = submit.version_name()
    assert len(added) == 1 and added[0]["query"]["name"] == name
    assert name.startswith("0.1.0-") and len(name.split("-")[1]) == 12  # package + commit
    pipeline_id = next(iter(kfp.store.pipelines))
    assert added[0]["query"]["pipelineid"] == pipeline_id
    assert f"added version to pipeline 'kubevae' ({pipeline_id}): version {name!r}" in capsys.readouterr().out
    assert len(kfp.store.pipelines) == 1 and len(kfp.store.versions) == 2

    # The same commit again: KFP answers 409 and the user reads why.
    assert cli("upload", "--host", kfp.url, "--name", "kubevae") == 2
    err = capsys.readouterr().err
    assert err.startswith("kubevae pipeline: error: HTTP 409")
    assert f"already has a version named {name!r}" in err and "Traceback" not in err


def test_submit_creates_or_finds_the_experiment_and_runs_as_the_service_account(kfp):
    run_id = submit.submit(kfp.url, {"train_steps": 2, "latent_dims": [3, 5], "tune_lr": True},
                           namespace="team-a", experiment="retraining")
    assert run_id in kfp.store.runs
    submit.submit(kfp.url, {}, namespace="team-a", experiment="retraining")
    created = kfp.calls("ExperimentService_CreateExperiment")
    assert len(created) == 1 and created[0]["body"] == {"display_name": "retraining",
                                                        "namespace": "team-a"}
    listed = kfp.calls("ExperimentService_ListExperiments")
    assert len(listed) == 2 and all(c["query"]["namespace"] == "team-a" for c in listed)
    run = kfp.calls("RunService_CreateRun")[0]["body"]
    assert run["service_account"] == submit.SERVICE_ACCOUNT
    assert run["experiment_id"] == next(iter(kfp.store.experiments))
    assert run["runtime_config"]["parameters"] == {"train_steps": 2, "latent_dims": [3, 5], "tune_lr": True}
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == set(PARAMETERS)
    assert "platform_spec" in run["pipeline_spec"]  # the Secret / ConfigMap wiring travels along


def test_schedule_creates_a_recurring_run_one_at_a_time_without_catchup(kfp):
    recurring_id = submit.schedule(kfp.url, "0 3 * * 1", {"train_steps": 4})
    body = kfp.calls("RecurringRunService_CreateRecurringRun")[0]["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    assert body["mode"] == "ENABLE" and body["service_account"] == submit.SERVICE_ACCOUNT
    assert body["display_name"] == "kubevae-retrain"
    assert body["runtime_config"]["parameters"] == {"previous_split": "champion", "train_steps": 4}
    assert "pipeline_spec" in body and "pipeline_version_reference" not in body
    assert kfp.store.recurring_runs[recurring_id]["status"] == "ENABLED"

    # A user's own previous_split wins over the default; a second schedule of the same name
    # is refused before anything is created.
    with pytest.raises(submit.KfpError, match="already has a recurring run"):
        submit.schedule(kfp.url, "0 3 * * 1", {"previous_split": "s3://b/split/assignments.csv"})
    submit.schedule(kfp.url, "0 0 4 * * 2", {"previous_split": "s3://b/split/assignments.csv"},
                    name="other")
    other = kfp.calls("RecurringRunService_CreateRecurringRun")[-1]["body"]
    assert other["runtime_config"]["parameters"] == {"previous_split": "s3://b/split/assignments.csv"}
    assert other["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 2"
    with pytest.raises(ValueError, match="--cron"):
        submit.schedule(kfp.url, "0 3 * *", {}, name="bad")


def test_schedule_and_submit_can_run_an_uploaded_version(kfp):
    first = submit.upload(kfp.url, "kubevae")
    second = submit.upload(kfp.url, "kubevae", version="0.1.0-abc")
    submit.schedule(kfp.url, "0 3 * * 1", {}, pipeline="kubevae", version=first.version_name)
    body = kfp.calls("RecurringRunService_CreateRecurringRun")[-1]["body"]
    assert body["pipeline_version_reference"] == {"pipeline_id": first.pipeline_id,
                                                  "pipeline_version_id": first.version_id}
    assert "pipeline_spec" not in body
    # Without --version: the newest.
    submit.submit(kfp.url, {"train_steps": 1}, pipeline="kubevae")
    run = kfp.calls("RunService_CreateRun")[-1]["body"]
    assert run["pipeline_version_reference"]["pipeline_version_id"] == second.version_id
    with pytest.raises(submit.KfpError, match="no such version"):
        submit.submit(kfp.url, {}, pipeline="kubevae", version="9.9.9-nope")
    with pytest.raises(submit.KfpError, match="no such pipeline"):
        submit.submit(kfp.url, {}, pipeline="someone-else")


def test_schedules_list_disable_enable_delete(kfp, capsys):
    submit.upload(kfp.url, "kubevae")
    assert cli("schedule", "--host", kfp.url, "--cron", "0 3 * * 1", "--pipeline", "kubevae") == 0
    recurring_id = capsys.readouterr().out.strip().rsplit(" ", 1)[1]
    assert cli("schedules", "--host", kfp.url) == 0
    listing = capsys.readouterr().out
    assert recurring_id in listing and "ENABLED" in listing and "'0 0 3 * * 1'" in listing
    for change, status in (("disable", "DISABLED"), ("enable", "ENABLED")):
        assert cli("schedules", "--host", kfp.url, change, recurring_id) == 0
        assert kfp.store.recurring_runs[recurring_id]["status"] == status
    assert cli("schedules", "--host", kfp.url, "delete", recurring_id) == 0
    assert recurring_id not in kfp.store.recurring_runs
    assert f"deleted recurring run {recurring_id}" in capsys.readouterr().out
    assert cli("schedules", "--host", kfp.url, "delete", recurring_id) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and f"recurring run {recurring_id!r} not found" in err
    assert [c["method"] for c in kfp.requests if c["path"].startswith("/apis/v2beta1/recurringruns/")] \
        == ["POST", "POST", "DELETE", "DELETE"]


@pytest.mark.parametrize("namespace, status, words", [
    ("other-team", 403, "not authorized to access namespace 'other-team'"),
    ("nowhere", 404, "namespace 'nowhere' not found"),
])
def test_namespace_errors_reach_the_user(kfp, capsys, namespace, status, words):
    assert cli("submit", "--host", kfp.url, "--namespace", namespace) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kubevae pipeline: error: HTTP {status}") and words in err
    assert "--namespace" in err and "Traceback" not in err


@pytest.mark.slow
def test_an_expired_token_is_a_clear_error_not_a_traceback(kfp, tmp_path):
    """A subprocess, as a user runs it: one line on stderr, exit status 2, and no retries."""
    result = subprocess.run(kubevae_cmd("pipeline", "schedule", "--host", kfp.url, "--cron", "0 3 * * 1"),
                            capture_output=True, text=True, timeout=120,
                            env=subprocess_env(KFP_EXISTING_TOKEN="expired-token", HOME=str(tmp_path)))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "kubevae pipeline: error" in line]
    assert errors and errors[0].startswith("kubevae pipeline: error: HTTP 401")
    assert "Jwt is expired" in errors[0] and "KFP_EXISTING_TOKEN" in errors[0]
    assert "Traceback" not in result.stderr
    assert len(kfp.requests) == 1  # the health check, once: kfp.Client's 5 x 5 s retries are off
    assert kfp.store.recurring_runs == {}


def test_an_unreachable_host_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli("submit", "--host", f"http://127.0.0.1:{port}") == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after urllib3's retry warnings
    assert last.startswith("kubevae pipeline: error: cannot reach the KFP API at") and "--host" in last
