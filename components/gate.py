from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def gate(model: Input[Model], splits: Input[Dataset], model_name: str, margin: float, seed: int,
         schedule_time: str, metrics: Output[Metrics], decision_report: Output[Markdown]) -> str:
    """Register the model; promote it to `champion` only if it beats the champion by `margin`.
    The registered version is tagged with the URI of its split's assignments.csv (the next
    scheduled run pins it) and the recurring run's schedule time.

    Args:
        model: The trained model folder (the candidate).
        splits: The split folder; candidate and champion are scored on the same test/.
        model_name: The registered model in the MLflow Model Registry.
        margin: Nats per image the candidate must beat the champion by to be promoted.
        seed: Seed of the scoring, the same for candidate and champion.
        schedule_time: A recurring run's schedule time (KFP fills it in), tagged on the version.

    Returns:
        metrics: candidate_test_neg_elbo, champion_test_neg_elbo (when there is a champion),
            margin and promoted (1 or 0).
        decision_report: The decision: candidate and champion scores, the margin, the verdict.
        Output: "promoted" or "challenger" (the pipeline branches on it).
    """
    from pathlib import Path

    import pandas as pd

    from kubevae import tracking
    from kubevae.registry import gate as run_gate
    from kubevae.registry import record_split
    from kubevae.version_notes import describe_version

    when = tracking.schedule_time(schedule_time)
    assignments = splits.uri.rstrip("/") + "/assignments.csv"
    rows = pd.read_csv(Path(splits.path) / "assignments.csv", dtype=str)
    test = rows[rows["split"] == "test"]
    # Items pinned by previous_split: the test items the champion was itself tested on.
    counts = {"kubevae.test_items": len(test), "kubevae.test_items_frozen": int((test["how"] == "pinned").sum())}
    with tracking.start_run("gate", require=True, tags={"kubevae.step": "gate"}) as tracker:
        decision = run_gate(model.path, splits.path, model_name=model_name, margin=margin,
                            tracker=tracker, seed=seed)
        record_split(model_name, decision.version, assignments, schedule_time=when, tags=counts)
        tracker.set_tags({"kubevae.split_assignments": assignments, "kubevae.schedule_time": when,
                          **counts})
        tracker.log_data_inputs(splits.path, ("test",), uri=splits.uri)
        describe_version(decision, model.path, splits.path, tracker,
                         training_api=model.metadata.get("training_api"))
        tracker.rename(f"gate · {decision.decision} · version {decision.version}")
    metrics.log_metric("candidate_test_neg_elbo", decision.candidate)
    if decision.champion is not None:
        metrics.log_metric("champion_test_neg_elbo", decision.champion)
    metrics.log_metric("margin", decision.margin)
    metrics.log_metric("promoted", float(decision.promoted))
    scored = ("Candidate and champion were scored on the same" if decision.champion is not None
              else "No champion yet: the candidate was scored on")
    Path(decision_report.path).write_text(
        decision.markdown() + f"\n{scored} {counts['kubevae.test_items']} test items, "
        f"{counts['kubevae.test_items_frozen']} of them frozen from the previous split. "
        f"Split: `{assignments}`.\n")
    return decision.decision
