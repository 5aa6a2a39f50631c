"""MLflow tracking, with one behaviour everywhere: the laptop, kfp.local and a cluster.

- The tracking URI comes from MLFLOW_TRACKING_URI. Without it, a local SQLite store
  (runs/mlflow.db, artifacts in runs/mlartifacts; KUBEVAE_RUNS_DIR moves both) is used.
- MLFLOW_RUN_ID set (KFP 2.17's MLflow integration injects it on a cluster): log into that run.
- Nesting: `start_run(parent_run_id=...)` opens a nested run under that parent. Whoever starts
  a run's process passes its parent explicitly: the tune step puts its run on the TuneRequest,
  and the backends give it to each trial as `kubevae train --parent-run-id`. Without one, a run
  nests under its process's enclosing run, MLFLOW_PARENT_RUN_ID (`enclosing_run_id`): the one
  environment variable a launcher sets for the step processes it cannot pass arguments to
  (pipelines/local_run.py for kfp.local's). Library code reads it here and never writes it.
- An unreachable server gives a warning and the work goes on untracked, unless `require=True`
  (`--require-tracking`), which fails fast instead.
- What the UI groups and shows by: the experiment is created with `mlflow.experimentKind` =
  `custom_model_development` (MLflow 3's UI then opens its training-runs view, not the GenAI
  one); every run carries `mlflow.source.name` ("kubevae <step>"), `mlflow.source.type` (JOB
  inside a pipeline, LOCAL by hand) and the checkout's `mlflow.source.git.commit`; nested runs
  carry `mlflow.parentRunId` (MLflow sets it from the parent).
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingUnavailable(RuntimeError):
    pass


def runs_dir() -> Path:
    return Path(os.environ.get("KUBEVAE_RUNS_DIR", "runs")).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = runs_dir() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


# MLflow 3.17's UI opens every experiment in the view its GenAI / Model training switch is on
# (GenAI in a fresh browser) unless the link says which: the training view is this query.
TRAINING_VIEW_QUERY = "?workflowType=machine_learning"


def ui_command() -> str:
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        mlflow_bin = Path(sys.executable).parent / "mlflow"  # the venv's, not one on PATH
        return (f"{mlflow_bin} ui --backend-store-uri {uri}, then open "
                f"http://127.0.0.1:5000/#/experiments{TRAINING_VIEW_QUERY}")
    return f"open {uri.rstrip('/')}/#/experiments{TRAINING_VIEW_QUERY}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast on an HTTP server that does not answer, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):  # noqa: S310
            pass
    except Exception as e:  # any failure means: not usable now
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {e}") from e


class Tracker:
    """A thin wrapper around one active MLflow run; every method is a no-op when disabled."""

    def __init__(self, mlflow_module: Any | None, run: Any | None):
        self._mlflow, self.run = mlflow_module, run

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    @property
    def _api(self) -> Any:
        """The mlflow module, for the calls that _call runs (it runs none when disabled)."""
        if self._mlflow is None:
            raise TrackingUnavailable("tracking is disabled")
        return self._mlflow

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tracking must never take the work down with it
            warnings.warn(f"MLflow {what} failed, continuing without it: {e}", stacklevel=3)
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in _flatten(params).items()}
        self._call("log_params", lambda: self._api.log_params(flat))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)}
        self._call("log_metrics", lambda: self._api.log_metrics(scalars, step=step))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", lambda: self._api.set_tags({k: str(v) for k, v in tags.items()}))

    def log_image(self, image: np.ndarray, name: str) -> None:
        self._call("log_image", lambda: self._api.log_image(image, name))

    def log_figure(self, figure: Any, name: str) -> None:
        self._call("log_figure", lambda: self._api.log_figure(figure, name))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda: self._api.log_artifact(str(path), artifact_path))

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", lambda: self._api.log_artifacts(str(path), artifact_path))

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self._call("log_dict", lambda: self._api.log_dict(obj, name))

    def log_text(self, text: str, name: str) -> None:
        self._call("log_text", lambda: self._api.log_text(text, name))

    def call(self, what: str, fn, *args, **kwargs) -> Any:
        """Run any other MLflow call with the same warn-and-continue policy."""
        return self._call(what, fn, *args, **kwargs)

    def log_data_inputs(self, data_dir: str | Path | None, splits: tuple[str, ...],
                        uri: str | None = None) -> None:
        """Log the splits of `data_dir` this run read as MLflow dataset inputs
        (kubevae.mlflow_datasets; a plain dataset folder is logged as one input)."""
        if self.enabled and data_dir:
            from kubevae import mlflow_datasets

            self._call("log_inputs", mlflow_datasets.log_split_inputs, self, data_dir, splits,
                       split_uri=uri)

    def rename(self, name: str) -> None:
        """Give the run a name that says what came out of it ("gate · promoted v3"). A run that
        KFP's MLflow integration created (MLFLOW_RUN_ID) keeps the name KFP gave it."""
        if self.run_id and not os.environ.get("MLFLOW_RUN_ID"):
            self._call("rename", lambda: self._api.MlflowClient().update_run(self.run_id, name=name))


DISABLED = Tracker(None, None)


PARENT_RUN_ENV = "MLFLOW_PARENT_RUN_ID"


def enclosing_run_id() -> str | None:
    """The MLflow run this process's work belongs to, for the runs it starts elsewhere (a
    training job's): the run KFP's MLflow integration made for this task (MLFLOW_RUN_ID, on a
    cluster), else the run the launcher nested this process under (MLFLOW_PARENT_RUN_ID)."""
    return os.environ.get("MLFLOW_RUN_ID") or os.environ.get(PARENT_RUN_ENV) or None


@contextlib.contextmanager
def start_run(run_name: str, *, experiment: str = "kubevae", require: bool = False,
              enabled: bool = True, tags: dict[str, Any] | None = None,
              parent_run_id: str | None = None) -> Iterator[Tracker]:
    """Open the MLflow run this process should log into (see the module docstring), nested
    under `parent_run_id` when given, else under the process's MLFLOW_PARENT_RUN_ID if set."""
    if not enabled:
        yield DISABLED
        return
    try:
        import mlflow

        uri = tracking_uri()
        check_reachable(uri)
        set_uri_in_process(mlflow, uri)
        run = _open_run(mlflow, run_name, experiment, tags or {}, parent_run_id)
    except Exception as e:
        if require:
            raise TrackingUnavailable(f"MLflow tracking failed and --require-tracking is set: {e}") from e
        warnings.warn(f"MLflow tracking is off for this run: {e}", stacklevel=3)
        yield DISABLED
        return
    tracker = Tracker(mlflow, run)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.call("end_run", mlflow.end_run, status=status)


def set_uri_in_process(mlflow: Any, uri: str) -> None:
    """Point this process's MLflow at `uri`. mlflow.set_tracking_uri also exports
    MLFLOW_TRACKING_URI, which would pin every later run in this process (and its children) to
    this store even after KUBEVAE_RUNS_DIR changes: keep the environment as the user set it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _open_run(mlflow: Any, run_name: str, experiment: str, tags: dict[str, Any],
              parent_run_id: str | None) -> Any:
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or ensure_experiment(mlflow, experiment)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV)
    return mlflow.start_run(run_name=run_name, experiment_id=experiment_id,
                            parent_run_id=parent or None, nested=bool(parent),
                            tags={**source_tags(tags.get("kubevae.step", run_name), bool(parent)),
                                  **{k: str(v) for k, v in tags.items()}})


def source_tags(step: str, in_pipeline: bool) -> dict[str, str]:
    """The mlflow.source.* tags: which kubevae entry point ran, how, and from which commit.
    (MLflow's own guess names the KFP executor or __main__.py, and finds no commit in an image.)"""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    tags = {MLFLOW_SOURCE_NAME: f"kubevae {step}",
            MLFLOW_SOURCE_TYPE: "JOB" if in_pipeline or os.environ.get("KFP_POD_NAME") else "LOCAL"}
    commit, branch = _git_checkout()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        if branch:
            tags[MLFLOW_GIT_BRANCH] = branch
    return tags


def _git_checkout() -> tuple[str | None, str | None]:
    """The commit (and branch) of the kubevae checkout, or KUBEVAE_GIT_COMMIT in an image."""
    if os.environ.get("KUBEVAE_GIT_COMMIT"):
        return os.environ["KUBEVAE_GIT_COMMIT"], None
    try:
        from mlflow.utils.git_utils import get_git_branch, get_git_commit

        here = str(Path(__file__).resolve().parent)
        return get_git_commit(here), get_git_branch(here)
    except Exception:  # no git, or not a checkout
        return None, None


def ensure_experiment(mlflow: Any, name: str) -> str:
    """The experiment's id; created (or, made by an older kubevae, tagged) as a training-runs
    experiment so that MLflow 3's UI opens its training view."""
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if EXPERIMENT_KIND_TAG not in existing.tags:
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG,
                                                     EXPERIMENT_KIND)
        return existing.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        # A local store keeps artifacts beside the database, not in the current folder.
        artifact_location = (runs_dir() / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        # Another step created it at the same moment (parallel trials): use that one.
        existing = mlflow.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def schedule_time(value: str | None) -> str:
    """A recurring run's schedule time as KFP resolved it (`{{$.pipeline_job_schedule_time_utc}}`),
    or "" where nothing resolved it (kfp.local passes the placeholder through unchanged)."""
    value = (value or "").strip()
    return "" if value.startswith("{{") else value


def training_run_name(name: str, beta: float, latent_dim: int) -> str:
    """'trial-3' -> 'trial 3 · β=2.1 · z=8': the runs table tells trials apart at a glance."""
    return f"{name.replace('-', ' ')} · β={beta:.3g} · z={latent_dim}"
