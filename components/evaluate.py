from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def evaluate(model: Input[Model], splits: Input[Dataset], study: Input[Artifact],
             iwae_k: int, metric_protocol: str, seed: int, metrics: Output[Metrics],
             report: Output[HTML],
             evaluation: Output[Artifact]):
    """Evaluate on the frozen test split: bounds, quality, disentanglement, pictures, report.

    Args:
        model: The trained model folder.
        splits: The split folder; evaluation reads test/ only.
        study: The tuning study (kubevae.study.Study JSON; its trials feed the report's tuning
            plots).
        iwae_k: Importance samples for the IWAE bound.
        metric_protocol: Disentanglement metric settings: disentanglement_lib or fast.
        seed: Seed of every sampled quantity.

    Returns:
        metrics: Every scalar test metric as test_<name> (test_neg_elbo, test_iwae_nll,
            test_mig, ...): the same names in every run, so runs compare side by side.
        report: The evaluation report: the metrics table, reconstructions, samples, latent
            traversals, training curves and the tuning plot.
        evaluation: The evaluation folder: metrics.json, the pictures and report.html.
    """
    import shutil
    from pathlib import Path

    from kubevae import tracking
    from kubevae.evaluation.full import evaluate_model
    from kubevae.evaluation.report import scalar_metrics
    from kubevae.hardware import pick_device
    from kubevae.study import Study

    tuning = Study.read(study.path)
    out = Path(evaluation.path)
    with tracking.start_run("evaluate", tags={"kubevae.step": "evaluate"}) as tracker:
        results = evaluate_model(model.path, splits.path, out, split="test", iwae_k=iwae_k,
                                 seed=seed, tuning_results=tuning, tracker=tracker,
                                 protocol=metric_protocol,
                                 device=str(pick_device("auto")))
        tracker.log_data_inputs(splits.path, ("test",), uri=splits.uri)
        if "neg_elbo" in results:
            tracker.rename(f"evaluate · test neg ELBO {results['neg_elbo']:.1f}")
    for name, value in scalar_metrics(results).items():  # finite numbers, no booleans
        metrics.log_metric(f"test_{name}", value)
    shutil.copyfile(out / "report.html", report.path)
