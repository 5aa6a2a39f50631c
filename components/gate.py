from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def gate(model: Input[Model], splits: Input[Dataset], study: Input[Artifact],
         model_name: str, margin: float, elbo_tolerance: float, metric_protocol: str, seed: int,
         schedule_time: str, metrics: Output[Metrics], decision_report: Output[Markdown]) -> str:
    """Register the model; promote it to `champion` only if it beats the champion on the test
    counterpart of the search objective by `margin`, with the negative ELBO as a guard
    (kubevae.registry). The registered version is tagged with the URI of its split's
    assignments.csv (the next scheduled run pins it) and the recurring run's schedule time.

    Args:
        model: The trained model folder (the candidate).
        splits: The split folder; candidate and champion are scored on the same test/.
        study: The tuning study (kubevae.study.Study JSON): its objective sets the criterion.
        model_name: The registered model in the MLflow Model Registry.
        margin: How much the candidate must beat the champion by on the criterion.
        elbo_tolerance: How much worse (a fraction) the candidate's test negative ELBO may be.
        metric_protocol: Disentanglement metric settings: disentanglement_lib or fast.
        seed: Seed of the scoring, the same for candidate and champion.
        schedule_time: A recurring run's schedule time (KFP fills it in), tagged on the version.

    Returns:
        metrics: candidate_test_<criterion> and champion_test_<criterion>, the same for the
            negative ELBO guard, margin and promoted (1 or 0).
        decision_report: The decision: criterion, both scores, the guard, the reason, the verdict.
        Output: "promoted" or "challenger" (the pipeline branches on it).
    """
    from pathlib import Path

    import pandas as pd

    from kubevae import tracking
    from kubevae.registry import gate as run_gate
    from kubevae.registry import record_split
    from kubevae.study import Study
    from kubevae.version_notes import describe_version

    tuning = Study.read(study.path)
    when = tracking.schedule_time(schedule_time)
    assignments = splits.uri.rstrip("/") + "/assignments.csv"
    rows = pd.read_csv(Path(splits.path) / "assignments.csv", dtype=str)
    test = rows[rows["split"] == "test"]
    # Items pinned by previous_split: the test items the champion was itself tested on.
    counts = {"kubevae.test_items": len(test), "kubevae.test_items_frozen": int((test["how"] == "pinned").sum())}
    with tracking.start_run("gate", require=True, tags={"kubevae.step": "gate"}) as tracker:
        decision = run_gate(model.path, splits.path, model_name=model_name, margin=margin,
                            tracker=tracker, seed=seed, objective_metric=tuning.objective_metric,
                            study_score=tuning.best_value, elbo_tolerance=elbo_tolerance,
                            protocol=metric_protocol)
        record_split(model_name, decision.version, assignments, schedule_time=when, tags=counts)
        tracker.set_tags({"kubevae.split_assignments": assignments, "kubevae.schedule_time": when,
                          **counts})
        tracker.log_data_inputs(splits.path, ("test",), uri=splits.uri)
        describe_version(decision, model.path, splits.path, tracker,
                         training_api=model.metadata.get("training_api"))
        tracker.rename(f"gate · {decision.decision} · version {decision.version}")
    if decision.candidate is not None:
        metrics.log_metric(f"candidate_test_{decision.metric}", decision.candidate)
    if decision.champion is not None:
        metrics.log_metric(f"champion_test_{decision.metric}", decision.champion)
    metrics.log_metric("candidate_test_neg_elbo", decision.candidate_neg_elbo)
    if decision.champion_neg_elbo is not None:
        metrics.log_metric("champion_test_neg_elbo", decision.champion_neg_elbo)
    metrics.log_metric("margin", decision.margin)
    metrics.log_metric("promoted", float(decision.promoted))
    scored = ("Candidate and champion were scored on the same" if decision.champion_version is not None
              else "No champion yet: the candidate was scored on")
    Path(decision_report.path).write_text(
        decision.markdown() + f"\n{scored} {counts['kubevae.test_items']} test items, "
        f"{counts['kubevae.test_items_frozen']} of them frozen from the previous split. "
        f"Split: `{assignments}`.\n")
    return decision.decision
