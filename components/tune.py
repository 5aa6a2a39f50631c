from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.base import component


@component
def tune(splits: Input[Dataset], backend: str, algorithm: str, objective_metric: str,
         beta_min: float, beta_max: float, latent_dims: list, tune_lr: bool,
         max_trials: int, parallel_trials: int, max_failed_trials: int, trial_epochs: int,
         batch_size: int, trial_workers: int, gpus_per_worker: int, namespace: str, image: str,
         seed: int, training_api: str, run_id: str, best_params: Output[Artifact], metrics: Output[Metrics],
         study_plot: Output[HTML]):
    """Search beta and latent size: Katib on a cluster, an Optuna study locally."""
    import json
    import os
    from dataclasses import asdict
    from pathlib import Path

    from components.backends import get_backend
    from components.backends.base import ClusterSettings, TuneRequest
    from components.search_space import default_search_space
    from components.study import study_report
    from kubevae import tracking

    space = default_search_space(beta_min, beta_max, [int(d) for d in latent_dims], tune_lr=tune_lr)
    work = Path(best_params.path).parent / "trials"
    with tracking.start_run("tune", tags={"kubevae.step": "tune"}) as tracker:
        if tracker.run_id:  # every trial becomes a nested run of this one
            os.environ["MLFLOW_PARENT_RUN_ID"] = tracker.run_id
        result = get_backend(backend).tune(TuneRequest(
            name="kubevae-tune", data_dir=splits.path, data_uri=splits.uri, search_space=space,
            work_dir=str(work), algorithm=algorithm, objective_metric=objective_metric,
            max_trials=max_trials, parallel_trials=parallel_trials,
            max_failed_trials=max_failed_trials, trial_epochs=trial_epochs, batch_size=batch_size,
            trial_workers=trial_workers, gpus_per_worker=gpus_per_worker, seed=seed,
            cluster=ClusterSettings(namespace=namespace, image=image, training_api=training_api,
                                    run_id=run_id)))
        summary = {"best_params": result.best_params, "best_value": result.best_value,
                   "objective_metric": objective_metric,
                   "trials": [asdict(t) for t in result.trials]}
        tracker.log_params({f"best.{k}": v for k, v in result.best_params.items()})
        tracker.log_metrics({"best_" + objective_metric: result.best_value,
                             "trials": len(result.trials)})
        tracker.log_dict(summary, "study.json")
        html = study_report(summary)
        tracker.log_text(html, "study.html")
    Path(best_params.path).write_text(json.dumps(summary, indent=2))
    Path(study_plot.path).write_text(html)
    metrics.log_metric("best_" + objective_metric, result.best_value)
    for name, value in result.best_params.items():
        metrics.log_metric("best_" + name, float(value))
