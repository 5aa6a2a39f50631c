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
    monkeypatch.setenv("KUBEVAE_RUNS_DIR", str(tmp_path / "runs"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


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
