import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO.parent / "shared" / "crds"

# Two cores are shared by everything a test starts; one thread per process keeps them fair.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Every test gets its own MLflow store and runs folder: nothing leaks between tests.
    (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so the whole environment is put
    back afterwards, not only what the test set through monkeypatch.)"""
    saved = dict(os.environ)
    monkeypatch.setenv("KUBEVAE_RUNS_DIR", str(tmp_path / "runs"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def kubevae_cmd(*args: str) -> list[str]:
    """The kubevae CLI as a subprocess command, with this interpreter."""
    return [sys.executable, "-m", "kubevae", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}
    return env
