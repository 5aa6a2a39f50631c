from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def evaluate(model: Input[Model], splits: Input[Dataset], best_params: Input[Artifact],
             iwae_k: int, metric_protocol: str, seed: int, metrics: Output[Metrics],
             report: Output[HTML],
             evaluation: Output[Artifact]):
    """Evaluate on the frozen test split: bounds, quality, disentanglement, pictures, report."""
    import json
    import shutil
    from pathlib import Path

    from kubevae import tracking
    from kubevae.evaluation.full import evaluate_model
    from kubevae.hardware import pick_device

    study = json.loads(Path(best_params.path).read_text())
    out = Path(evaluation.path)
    with tracking.start_run("evaluate", tags={"kubevae.step": "evaluate"}) as tracker:
        results = evaluate_model(model.path, splits.path, out, split="test", iwae_k=iwae_k,
                                 seed=seed, tuning_results=study.get("trials"), tracker=tracker,
                                 protocol=metric_protocol,
                                 device=str(pick_device("auto")))
    for name, value in results.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(f"test_{name}", float(value))
    shutil.copyfile(out / "report.html", report.path)
