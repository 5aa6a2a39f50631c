"""Run the whole pipeline on this machine with kfp.local, and summarize it.

kfp.local's SubprocessRunner runs each component in a subprocess of this Python environment.
A parent MLflow run is opened here; every step logs into a nested run under it
(MLFLOW_PARENT_RUN_ID, inherited by the step processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfp import dsl, local
from kfp.local import placeholder_utils

from components.study import objective_text
from kubevae import tracking
from pipelines.pipeline import kubevae_pipeline


def run_local(arguments: dict[str, Any], run_dir: str | Path, *,
              schedule_time: str = "") -> dict[str, Any]:
    """`schedule_time` stands in for a recurring run's schedule time (empty: a one-off run)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("KUBEVAE_RUNS_DIR", tracking.PARENT_RUN_ENV,
                                            "MLFLOW_TRACKING_URI")}
    # The steps run as subprocesses and inherit these: one store for the whole run (a
    # tracking server when MLFLOW_TRACKING_URI is set, else SQLite in the run folder).
    os.environ["KUBEVAE_RUNS_DIR"] = str(run_dir)
    os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    try:
        with _schedule_time_resolved(schedule_time):
            return _run(arguments, run_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _schedule_time_resolved(value: str) -> Iterator[None]:
    """kfp.local 2.17 cannot resolve KFP's schedule-time placeholder (it fails with an
    IndexError); the KFP backend does. Resolve it here as the backend would."""
    original = placeholder_utils.resolve_individual_placeholder

    def resolve(element: str, *args: Any, **kwargs: Any) -> str:
        if element == dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER:
            return value
        return original(element, *args, **kwargs)

    placeholder_utils.resolve_individual_placeholder = resolve
    try:
        yield
    finally:
        placeholder_utils.resolve_individual_placeholder = original


def _run(arguments: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    root = run_dir / "pipeline-root"
    before = set(root.iterdir()) if root.exists() else set()
    start = time.time()
    with tracking.start_run("pipeline", tags={"kubevae.step": "pipeline"}) as parent:
        if parent.run_id:
            os.environ[tracking.PARENT_RUN_ENV] = parent.run_id
        parent.log_params(arguments)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True)
        kubevae_pipeline(**arguments)
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            raise RuntimeError(f"{root}: kfp.local wrote no run folder")
        summary = summarize(new[-1], start)
        # The runs table shows the pipeline row collapsed: its Dataset column names the splits.
        parent.log_data_inputs(new[-1] / "split" / "splits", ("train", "val", "test"))
        parent.log_dict(summary, "summary.json")
    summary["mlflow_ui"] = tracking.ui_command()
    summary["mlflow_store"] = tracking.tracking_uri()
    return summary


def summarize(run_root: Path, start: float) -> dict[str, Any]:
    """Read what each step wrote: the study, test metrics, the gate, the smoke test."""
    from components.study import has_factors
    from kubevae.study import Study

    tasks = {p.name: p for p in run_root.iterdir() if p.is_dir()}
    study = Study.read(tasks["tune"] / "study")
    evaluation = json.loads((tasks["evaluate"] / "evaluation" / "metrics.json").read_text())
    summary: dict[str, Any] = {
        "run_root": str(run_root),
        "study": study.to_dict(),
        "best_params": study.best_params,
        "objective": {study.objective_metric: study.best_value},
        "chosen_trial": study.best_trial,
        "all_trials_collapsed": study.all_collapsed,
        "verdict": study.verdict(),
        "report": str(tasks["evaluate"] / "report"),
        "test_metrics": {k: v for k, v in evaluation.items() if isinstance(v, (int, float))},
        "not_applicable": not_applicable(has_factors(tasks["split"] / "splits")),
        "gate": _output(tasks["gate"]),
        "gate_report": (tasks["gate"] / "decision_report").read_text(),
        "gate_reason": _reason((tasks["gate"] / "decision_report").read_text()),
        "model_path": str(tasks["train"] / "model"),
        "branch": "promoted" if "deploy" in tasks else "not-promoted",
        "step_seconds": step_seconds(tasks, start),
    }
    if "smoke-test" in tasks:
        summary["smoke_test"] = _output(tasks["smoke-test"])
        summary["smoke_report"] = (tasks["smoke-test"] / "result").read_text()
        summary["inference_service"] = str(tasks["deploy"] / "inference_service")
    return summary


def _reason(decision_report: str) -> str:
    """The gate's reason, as its decision report states it ("Reason: ...")."""
    return next((line.removeprefix("Reason: ").strip() for line in decision_report.splitlines()
                 if line.startswith("Reason: ")), "")


# The test metrics the summary shows, and which of them need factor columns.
SHOWN_METRICS = (("mig", "MIG", True), ("factor_vae", "FactorVAE", True),
                 ("psnr", "PSNR dB", False), ("kl", "rate (KL)", False),
                 ("active_units", "active units", False), ("neg_elbo", "neg. ELBO", False))


def not_applicable(factors: bool) -> dict[str, str]:
    """{metric: why it does not apply to this data}."""
    if factors:
        return {}
    why = ("the data has no factor columns (factor_*), so there is no ground truth to score "
           "disentanglement against")
    return {name: why for name, _, needs_factors in SHOWN_METRICS if needs_factors}


def step_seconds(tasks: dict[str, Path], start: float) -> dict[str, float]:
    """Each step's wall time, from the order in which the steps finished (they run one by one)."""
    finished = sorted((p.joinpath("executor_output.json").stat().st_mtime, name)
                      for name, p in tasks.items() if p.joinpath("executor_output.json").exists())
    seconds, last = {}, start
    for when, name in finished:
        seconds[name] = round(when - last, 1)
        last = when
    seconds["total"] = round(last - start, 1)
    return seconds


def _output(task_dir: Path) -> Any:
    output = json.loads((task_dir / "executor_output.json").read_text())
    return output.get("parameterValues", {}).get("Output")


def _trial_line(trial, study, mark: str) -> str:
    m = trial.metrics
    return (f"  trial {trial.number}: beta={_fmt(trial.params.get('beta'))} "
            f"latent={trial.params.get('latent_dim')}  rate={_fmt(m.get('val_kl'), '.1f')} "
            f"active={_fmt(m.get('val_active_units'), '.0f')} PSNR={_fmt(m.get('val_psnr'), '.1f')}  "
            f"{study.objective_metric}={objective_text(trial) or '-'} ({trial.state.lower()}){mark}")


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def print_summary(summary: dict[str, Any]) -> None:
    from kubevae.study import Study

    study = Study.from_dict(summary["study"], source="summary")
    collapsed = study.all_collapsed
    test = summary["test_metrics"]
    skipped = summary.get("not_applicable", {})
    mark = "  <- taken (least collapsed)" if collapsed else "  <- chosen"
    chosen = study.chosen
    shown = [f"{label}={test[k]:.4g}" for k, label, _ in SHOWN_METRICS
             if k not in skipped and isinstance(test.get(k), (int, float))]
    reasons = sorted(set(skipped.values()))
    lines = ["", "=" * 72, "kubevae pipeline: summary", "=" * 72,
             f"search          : {study.objective_metric} ({study.direction}d), "
             f"{len(study.trials)} trials, algorithm {study.algorithm or '?'}",
             *[_trial_line(t, study, mark if t.number == study.best_trial else "") for t in study.trials],
             *([f"intervals       : {study.objective.interval}"] if study.objective.interval else []),
             f"{'taken' if collapsed else 'chosen':<16}: " + " ".join(
                 f"{k}={_fmt(v)}" for k, v in study.best_params.items())
             + (f" ({study.objective_metric}={objective_text(chosen)})" if chosen else ""),
             *([f"WARNING         : {summary['verdict']}"] if summary.get("verdict") else []),
             "final model     : test " + ", ".join(shown),
             *([f"not applicable  : {', '.join(label for k, label, _ in SHOWN_METRICS if k in skipped)}: "
                + "; ".join(reasons)] if skipped else []),
             f"report          : {summary.get('report', '')}",
             f"gate decision   : {summary['gate']}  (branch taken: {summary['branch']})",
             *([f"gate reason     : {summary['gate_reason']}"] if summary.get("gate_reason") else []),
             f"model           : {summary['model_path']}",
             f"smoke test      : {summary.get('smoke_test', 'not run (model not promoted)')}",
             f"MLflow store    : {summary['mlflow_store']}",
             f"MLflow UI       : {summary['mlflow_ui']}",
             f"step seconds    : {summary['step_seconds']}",
             "=" * 72]
    print("\n".join(lines), flush=True)

