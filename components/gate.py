from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def gate(model: Input[Model], splits: Input[Dataset], model_name: str, margin: float, seed: int,
         metrics: Output[Metrics], decision_report: Output[Markdown]) -> str:
    """Register the model; promote it to `champion` only if it beats the champion by `margin`.

    Returns "promoted" or "challenger" (one string output: the pipeline branches on it)."""
    from pathlib import Path

    from kubevae import tracking
    from kubevae.registry import gate as run_gate

    with tracking.start_run("gate", require=True, tags={"kubevae.step": "gate"}) as tracker:
        decision = run_gate(model.path, splits.path, model_name=model_name, margin=margin,
                            tracker=tracker, seed=seed)
    metrics.log_metric("candidate_test_neg_elbo", decision.candidate)
    if decision.champion is not None:
        metrics.log_metric("champion_test_neg_elbo", decision.champion)
    metrics.log_metric("promoted", float(decision.promoted))
    Path(decision_report.path).write_text(decision.markdown())
    return decision.decision
