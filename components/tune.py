from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.base import component


@component
def tune(splits: Input[Dataset], backend: str, algorithm: str, objective_metric: str,
         objective: str, beta_min: float, beta_max: float, latent_dims: list, lr: float, tune_lr: bool,
         conv_channels: list,
         max_trials: int, parallel_trials: int, max_failed_trials: int, trial_steps: int,
         udr_seeds: int, batch_size: int, trial_workers: int, gpus_per_worker: int,
         namespace: str, image: str, seed: int, training_api: str, queue_name: str, run_id: str,
         study: Output[Artifact], metrics: Output[Metrics], study_plot: Output[HTML]):
    """Search beta and latent size: Katib on a cluster, an Optuna study locally.

    Args:
        splits: The split folder; trials train on train/ and are judged on val/.
        backend: kubernetes (a Katib Experiment) or local (an Optuna study).
        algorithm: Search algorithm: tpe, random, grid, bayesianoptimization or hyperband.
        objective_metric: The validation objective, with its own direction (auto: val_mig
            when the data has factor columns, else udr).
        objective: The training objective of every trial: beta, tcvae or factor; the searched
            beta is its weight (kubevae.objectives.SEARCHED_WEIGHT).
        beta_min: Smallest beta of the log-uniform search range.
        beta_max: Largest beta of the log-uniform search range.
        latent_dims: Latent sizes to search (categorical).
        lr: Adam learning rate of every trial (unless tune_lr searches it).
        tune_lr: Also search the learning rate.
        conv_channels: Encoder conv widths of every trial (the decoder mirrors them).
        max_trials: Trials in all.
        parallel_trials: Trials at the same time.
        max_failed_trials: The search stops after this many failed trials.
        trial_steps: Optimizer steps per trial (hyperband's resource).
        udr_seeds: Seeds per trial when the objective is udr.
        batch_size: Global batch size of each trial.
        trial_workers: Training processes per trial.
        gpus_per_worker: GPUs per training process; 0 trains on CPUs.
        namespace: Namespace of the Katib Experiment; empty = the run's namespace.
        image: The image the trials run.
        seed: Seed of the search and of every trial.
        training_api: On a cluster: trainer (TrainJob trials) or pytorchjob.
        queue_name: On a cluster: the Kueue LocalQueue that admits each trial's job (its
            kueue.x-k8s.io/queue-name label); empty: no queue.
        run_id: The KFP run; labels what the step creates so that the exit handler finds it.

    Returns:
        study: The study (kubevae.study.Study as JSON): the objective and its direction,
            every trial with its objective's interval, the chosen trial and its parameters.
        metrics: The best objective value (best_<objective>) and its interval
            (best_<objective>_lo, _hi), the best parameters (best_beta, best_latent_dim, ...),
            indistinguishable_trials (how many other trials' intervals overlap the chosen
            one's) and all_trials_collapsed (1 when every trial collapsed: then the
            least-collapsed trial is taken, the run goes on, and the study report says what
            to change).
        study_plot: The study as a page: the objective against beta with intervals, the rate
            against the distortion, every trial.
    """
    from pathlib import Path

    from components.backends import get_backend
    from components.backends.base import ClusterSettings, TrainingOverrides, TuneRequest
    from components.search_space import default_search_space
    from components.study import resolve_objective, study_metrics, study_report
    from kubevae import tracking
    from kubevae.objectives import searched_weight

    searched_weight(objective)  # refuses an objective that beta does not weigh (capacity)
    objective_metric = resolve_objective(objective_metric, splits.path)
    space = default_search_space(beta_min, beta_max, [int(d) for d in latent_dims], tune_lr=tune_lr)
    work = Path(study.path).parent / "trials"
    with tracking.start_run("tune", tags={"kubevae.step": "tune"}) as tracker:
        result = get_backend(backend).tune(TuneRequest(
            name="kubevae-tune", data_dir=splits.path, data_uri=splits.uri, search_space=space,
            work_dir=str(work), algorithm=algorithm, objective_metric=objective_metric,
            overrides=TrainingOverrides(objective=objective, lr=lr,
                                        conv_channels=tuple(int(c) for c in conv_channels) or None),
            max_trials=max_trials, parallel_trials=parallel_trials,
            max_failed_trials=max_failed_trials, trial_steps=trial_steps, udr_seeds=udr_seeds,
            batch_size=batch_size, trial_workers=trial_workers, gpus_per_worker=gpus_per_worker,
            seed=seed, parent_run_id=tracker.run_id,  # every trial nests under this run
            cluster=ClusterSettings(namespace=namespace, image=image,
                                               training_api=training_api, queue_name=queue_name,
                                               run_id=run_id)))
        result = result.with_collapse_rule()
        verdict = result.verdict()
        if verdict:
            print(f"tune: WARNING: {verdict}", flush=True)
        if result.all_collapsed:
            tracker.set_tags({"kubevae.all_trials_collapsed": "true"})
        summary = study_metrics(result)
        tracker.log_params({f"best.{k}": v for k, v in result.best_params.items()})
        tracker.log_metrics({**summary, "trials": len(result.trials)})
        tracker.log_dict(result.to_dict(), "study.json")
        html = study_report(result)
        tracker.log_text(html, "study.html")
        tracker.rename(f"tune · {len(result.trials)} trials · "
                       + ("all collapsed · took " if result.all_collapsed else "best ")
                       + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in result.best_params.items()))
    result.write(study.path)
    Path(study_plot.path).write_text(html)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    for name, value in result.best_params.items():
        metrics.log_metric("best_" + name, float(value))

