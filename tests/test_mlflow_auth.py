"""The cluster's MLflow settings on a real `mlflow server --app-name basic-auth` (loopback):
without credentials nothing changes (a run, the champion alias, a registered model's deletion
are all refused), with the credentials the pipeline's pods read from the Secret everything
works. Opt-in (KUBEVAE_MLFLOW_SERVER_TESTS=1): an MLflow server takes one to several minutes to
start on the shared CI machines, too slow for the suite; tests/test_manifests.py checks the
manifest's side (arguments, Secret keys, auth settings) on every run."""

import os

import httpx
import pytest
from conftest import MLFLOW_PASSWORD, MLFLOW_USER

# The server (the `mlflow_url` fixture) and its admin user come from tests/conftest.py.
USER, PASSWORD = MLFLOW_USER, MLFLOW_PASSWORD
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("KUBEVAE_MLFLOW_SERVER_TESTS"),
    reason="starts a real MLflow server (minutes here); set KUBEVAE_MLFLOW_SERVER_TESTS=1")]


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
