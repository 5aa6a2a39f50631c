from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def gate(model: Input[Model], splits: Input[Dataset], study: Input[Artifact],
         model_name: str, margin: float, elbo_tolerance: float, min_probability: float,
         min_active_units: int, min_rate: float, min_psnr_gain: float, metric_protocol: str,
         seed: int, schedule_time: str, metrics: Output[Metrics],
         decision_report: Output[Markdown]) -> str:
    """Register the model; promote it to `champion` only if it clears every floor and, with a
    champion, beats it on the test counterpart of the search objective by `margin` with a paired
    bootstrap probability of at least `min_probability`, the negative ELBO as a guard
    (kubevae.registry). The registered version is tagged with the URI of its split's
    assignments.csv (the next scheduled run pins it) and the recurring run's schedule time.

    Args:
        model: The trained model folder (the candidate).
        splits: The split folder; candidate and champion are scored on the same test/.
        study: The tuning study (kubevae.study.Study JSON): its objective sets the criterion.
        model_name: The registered model in the MLflow Model Registry.
        margin: How much the candidate must beat the champion by on the criterion.
        elbo_tolerance: How much worse (a fraction) the candidate's test negative ELBO may be.
        min_probability: The paired bootstrap's P(candidate better) the promotion needs.
        min_active_units: Floor: active units the candidate needs (first model included).
        min_rate: Floor: test KL (nats per image) the candidate needs.
        min_psnr_gain: Floor: dB by which the candidate's test PSNR must beat the mean image's.
        metric_protocol: Disentanglement metric settings: disentanglement_lib or fast.
        seed: Seed of the scoring, the same for candidate and champion (and evaluate).
        schedule_time: A recurring run's schedule time (KFP fills it in), tagged on the version.

    Returns:
        metrics: candidate_test_<score> for every score the gate judged (the evaluate step's
            values) and champion_test_<score>, p_better, floors_failed, margin and promoted.
        decision_report: The decision: the floors, both models' scores, the bootstrap, the
            reason, the verdict.
        Output: "promoted" or "challenger" (the pipeline branches on it).
    """
    import math
    from pathlib import Path

    from kubevae import tracking
    from kubevae.hardware import pick_device
    from kubevae.registry import Floors, count_test_items, record_split
    from kubevae.registry import gate as run_gate
    from kubevae.study import Study
    from kubevae.version_notes import describe_version

    tuning = Study.read(study.path)
    when = tracking.schedule_time(schedule_time)
    assignments = splits.uri.rstrip("/") + "/assignments.csv"
    counts = count_test_items(splits.path)
    floors = Floors(min_active_units=min_active_units, min_rate_nats=min_rate,
                    min_psnr_gain_db=min_psnr_gain)
    with tracking.start_run("gate", require=True, tags={"kubevae.step": "gate"}) as tracker:
        decision = run_gate(model.path, splits.path, model_name=model_name, margin=margin,
                            tracker=tracker, seed=seed, objective_metric=tuning.objective_metric,
                            study_score=tuning.best_value, elbo_tolerance=elbo_tolerance,
                            protocol=metric_protocol, floors=floors,
                            min_probability=min_probability, device=str(pick_device("auto")))
        record_split(model_name, decision.version, assignments, schedule_time=when, tags=counts)
        tracker.set_tags({"kubevae.split_assignments": assignments, "kubevae.schedule_time": when,
                          **counts})
        tracker.log_data_inputs(splits.path, ("test",), uri=splits.uri)
        describe_version(decision, model.path, splits.path, tracker,
                         training_api=model.metadata.get("training_api"))
        tracker.rename(f"gate · {decision.decision} · version {decision.version}")
    for who, scores in (("candidate", decision.candidate_scores), ("champion", decision.champion_scores)):
        for name, value in scores.items():
            if value is not None and math.isfinite(value):
                metrics.log_metric(f"{who}_test_{name}", value)
    if decision.p_better is not None:
        metrics.log_metric("p_better", decision.p_better)
    metrics.log_metric("floors_failed", float(len(decision.failed_floors)))
    metrics.log_metric("margin", decision.margin)
    metrics.log_metric("promoted", float(decision.promoted))
    scored = ("Candidate and champion were scored on the same" if decision.champion_version is not None
              else "No champion yet: the candidate was scored on")
    Path(decision_report.path).write_text(
        decision.markdown() + f"\n{scored} {counts['kubevae.test_items']} test items, "
        f"{counts['kubevae.test_items_frozen']} of them frozen from the previous split. "
        f"Split: `{assignments}`.\n")
    return decision.decision
