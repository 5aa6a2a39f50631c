import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO.parent / "shared" / "crds"

# Two cores are shared by everything a test starts; one thread per process keeps them fair.
torch.set_num_threads(1)

# Hypothesis profiles. `ci`, the suite's default: fixed seeds (derandomize) and no example
# database, so the same examples run every time and a red CI means the behaviour changed; each
# test keeps its own example count (the split properties: tests/test_split_properties.py's
# `examples`). `long` (make test-properties, --hypothesis-profile=long): at least 500 examples per
# property, fresh random seeds every run, and failures kept in .hypothesis/ and replayed first
# next time. `ci` is loaded unless another profile is already active (--hypothesis-profile is
# applied after this file is read, and wins; CI=1 makes hypothesis load its own `ci`, replaced here).
LONG_EXAMPLES = 500
# No deadline in ci (as hypothesis's own ci profile): a slow shared machine is not a change.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("long", derandomize=False, max_examples=LONG_EXAMPLES, print_blob=True,
                          database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "examples")))
if settings.get_current_profile_name() == "default":
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Every test gets its own MLflow store and runs folder: nothing leaks between tests.
    (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so the whole environment is put
    back afterwards, not only what the test set through monkeypatch.)"""
    saved = dict(os.environ)
    _forget_mlflow_uri()
    monkeypatch.setenv("KUBEVAE_RUNS_DIR", str(tmp_path / "runs"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    yield
    _forget_mlflow_uri()
    os.environ.clear()
    os.environ.update(saved)


def _forget_mlflow_uri() -> None:
    """MLflow keeps the URI a test set in the process (kubevae.tracking.set_uri_in_process), and
    it outranks MLFLOW_TRACKING_URI: a later test on the same worker would read that store."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)


# One short pipeline run (kfp.local, tiny data) serves every test that looks at a finished run:
# tests/test_pipeline_local.py (branches, MLflow nesting) and tests/test_browser.py (the pages and
# the MLflow UI). Two trials, so the study and the nesting of trials under the tuning run show.
SHORT_RUN = {
    "source_uri": "builtin://sprites?n=600&seed=3",
    "backend": "local",
    "latent_dims": [2, 3],
    "max_trials": 2,
    "parallel_trials": 1,
    "trial_steps": 10,
    "train_steps": 20,
    "val_every_steps": 16,  # epochs of 15 steps: the final run validates once, at step 20
    "batch_size": 32,
    "workers": 1,
    "iwae_k": 2,
    "model_name": "kubevae-e2e",
    # The 20-step models encode nothing; the gate's floors would refuse them (tests/test_gate.py
    # shows they do). This run is about promoting and serving, so the floors are off here.
    "gate_min_active_units": 0,
    "gate_min_rate": 0.0,
    "gate_min_psnr_gain": -100.0,
}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, worker_id):
    """The first run of SHORT_RUN into a fresh folder and MLflow store (SQLite in the folder):
    {"run_dir", "summary", "tasks"} (tasks: the kfp.local folder of each step's outputs).
    Tests only read it: nothing adds runs to its store. Under pytest-xdist (make test) the
    first worker to ask makes it and the others wait for it and read it: the folder above the
    workers' temporary folders is shared, and a file lock orders them (pytest-xdist's recipe
    for a session fixture made once)."""
    from filelock import FileLock

    from pipelines.local_run import run_local

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    run_dir, done = shared / "pipeline", shared / "pipeline-summary.json"
    with FileLock(str(shared / "pipeline.lock")):
        if done.is_file():
            summary = json.loads(done.read_text())
        else:
            # Session fixtures run before the per-test environment reset below.
            with pytest.MonkeyPatch.context() as env:
                for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
                    env.delenv(var, raising=False)
                run_dir.mkdir()
                summary = run_local(dict(SHORT_RUN), run_dir)
            done.write_text(json.dumps(summary))
    return {"run_dir": run_dir, "summary": summary, "tasks": Path(summary["run_root"])}


def kubevae_cmd(*args: str) -> list[str]:
    """The kubevae CLI as a subprocess command, with this interpreter."""
    return [sys.executable, "-m", "kubevae", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}
    return env


# One S3-compatible server (moto) on loopback for every test that needs object storage: the
# ingest tests (their own buckets, test_s3_ingest.py) and the cluster tests (the KFP bucket, `s3`).
# Session scope: under pytest-xdist each worker starts one.
@pytest.fixture(scope="session")
def moto_endpoint():
    """host:port of the session's moto server."""
    from moto.server import ThreadedMotoServer

    from serving.local import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint):
    """The session's moto server as a cluster's object store: the S3 settings a pod reads
    (k8s_scenarios.S3), with the KFP bucket (k8s_scenarios.BUCKET) made."""
    from k8s_scenarios import BUCKET, S3
    from minio import Minio

    env = {"S3_ENDPOINT": moto_endpoint, "S3_USE_HTTPS": "0", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    Minio(moto_endpoint, "testing", "testing", secure=False, region="us-east-1").make_bucket(BUCKET)
    return S3(env)


# A real `mlflow server --app-name basic-auth` with the manifest's settings, for the opt-in tests
# (KUBEVAE_MLFLOW_SERVER_TESTS=1) of tests/test_mlflow_auth.py and tests/test_cluster_preflight.py.
MLFLOW_USER, MLFLOW_PASSWORD = "kubevae", "a-test-password-only-for-loopback"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    import subprocess
    import time

    import httpx

    from serving.local import free_port

    root = tmp_path_factory.mktemp("mlflow-auth")
    # the manifest's settings, with the user store moved from the PVC into the scratch folder
    ini = (REPO / "manifests" / "base" / "mlflow-auth.ini").read_text()
    assert "sqlite:////mlflow/basic_auth.db" in ini
    (root / "basic_auth.ini").write_text(ini.replace("sqlite:////mlflow/basic_auth.db",
                                                     f"sqlite:///{root}/basic_auth.db"))
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_USER, "MLFLOW_AUTH_ADMIN_PASSWORD": MLFLOW_PASSWORD,
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
