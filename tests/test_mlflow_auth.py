"""The cluster's MLflow settings on a real `mlflow server --app-name basic-auth` (loopback):
without credentials nothing changes (a run, the champion alias, a registered model's deletion
are all refused), with the credentials the pipeline's pods read from the Secret everything
works. Opt-in (KUBEVAE_MLFLOW_SERVER_TESTS=1): an MLflow server takes one to several minutes to
start on the shared CI machines, too slow for the suite; tests/test_manifests.py checks the
manifest's side (arguments, Secret keys, auth settings) on every run."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.local import free_port

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"

USER, PASSWORD = "kubevae", "a-test-password-only-for-loopback"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("KUBEVAE_MLFLOW_SERVER_TESTS"),
    reason="starts a real MLflow server (minutes here); set KUBEVAE_MLFLOW_SERVER_TESTS=1")]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    # the manifest's settings, with the user store moved from the PVC into the scratch folder
    ini = (MANIFESTS / "base" / "mlflow-auth.ini").read_text()
    assert "sqlite:////mlflow/basic_auth.db" in ini
    (root / "basic_auth.ini").write_text(ini.replace("sqlite:////mlflow/basic_auth.db",
                                                     f"sqlite:///{root}/basic_auth.db"))
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": USER, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "0" * 32}
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def api(url: str, method: str, path: str, auth=None, **body) -> httpx.Response:
    return httpx.request(method, f"{url}/api/2.0/mlflow/{path}", json=body or None, auth=auth, timeout=60)


def test_without_credentials_nothing_changes_and_with_them_the_pipelines_client_works(mlflow_url, monkeypatch):
    from mlflow import MlflowClient

    # what the pipeline's pods do: MLFLOW_TRACKING_USERNAME / PASSWORD from the Secret
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.create_experiment("kubevae-auth-test")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_neg_elbo", 812.0)
    client.create_registered_model("kubevae")
    version = client.create_model_version("kubevae", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("kubevae", "champion", version.version)

    anonymous = [
        api(mlflow_url, "POST", "runs/create", experiment_id=experiment),
        api(mlflow_url, "POST", "registered-models/alias", name="kubevae", alias="champion", version="1"),
        api(mlflow_url, "DELETE", "registered-models/delete", name="kubevae"),
        api(mlflow_url, "POST", "experiments/create", name="x"),
        api(mlflow_url, "GET", "registered-models/get", name="kubevae"),
    ]
    assert [r.status_code for r in anonymous] == [401] * len(anonymous)
    wrong = api(mlflow_url, "DELETE", "registered-models/delete", name="kubevae", auth=(USER, "wrong"))
    assert wrong.status_code == 401
    # nothing moved: the gate still finds the champion it set
    assert client.get_model_version_by_alias("kubevae", "champion").version == version.version
    assert httpx.get(f"{mlflow_url}/health").status_code == 200  # the probes need no credentials
