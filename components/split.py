from kfp.dsl import Dataset, Input, Markdown, Output

from components.base import component


@component
def split(dataset: Input[Dataset], train_fraction: float, val_fraction: float,
          test_fraction: float, group_column: str, previous_split: str, model_name: str,
          splits: Output[Dataset], leakage_report: Output[Markdown],
          pinned_copies: str = "exclude", mirror_copies: bool = True):
    """Leakage-safe split: groups, exact and near duplicates, stable under appended data.

    Args:
        dataset: The ingested dataset folder.
        train_fraction: Fraction of groups in the training split.
        val_fraction: Fraction of groups in the validation split (the tuning objective).
        test_fraction: Fraction of groups in the frozen test split (the gate).
        group_column: Metadata column that groups images (patient, device, session); empty for
            none.
        previous_split: Empty (a fresh split), the URI of an earlier assignments.csv, or
            `champion`: the split recorded on the registered model `model_name`@champion (none
            yet: split fresh). The leakage report says which it was
            (kubevae.split.command.resolve_previous_split).
        model_name: The registered model whose champion's split `champion` pins.
        pinned_copies: What to do when new data shows pinned items of different splits to be
            copies or one group (a link the earlier split missed): `exclude` (the default)
            keeps the later split's items (test > val > train) and excludes the others,
            naming each pair in the leakage report; `fail` fails the step. Exclude is the
            default because a scheduled retraining (previous_split=champion) pins the same
            items every run, so `fail` would fail every run on a link in old data; excluding
            the train-side copy keeps the new model from training on a copy of a frozen test
            item, while the test split stays the same for champion and challenger (the
            champion trained on the copy: the report says so).
        mirror_copies: Mirror images count as copies (saved flips are augmentations in many
            data sets); false: only unflipped edits do.

    Returns:
        splits: The split folder: train/, val/ and test/ dataset folders, assignments.csv,
            stats.json (normalization fit on train only) and the leakage report.
        leakage_report: The leakage report: items and groups per split, duplicate clusters,
            and what is shared across splits (all zero, or the step fails).
    """
    import shutil
    from pathlib import Path

    from kubevae import mlflow_datasets, tracking
    from kubevae.split import split as run_split
    from kubevae.split.command import names_champion, resolve_previous_split

    # Resolving the champion needs the registry: no silent fresh split when MLflow is down.
    with tracking.start_run("split", require=names_champion(previous_split),
                            tags={"kubevae.step": "split"}) as tracker:
        previous = resolve_previous_split(previous_split, model_name)
        report = run_split(dataset.path, splits.path,
                           fractions=(train_fraction, val_fraction, test_fraction),
                           group_column=group_column or None, previous_split=previous,
                           pinned_copies=pinned_copies, mirror_copies=mirror_copies)
        out = Path(splits.path)
        tracker.log_metrics(report.counts())
        tracker.set_tags({"kubevae.previous_split": previous.resolved or "",
                          "kubevae.previous_split_source": previous.source})
        for name in ("leakage_report.md", "leakage_report.json", "assignments.csv", "stats.json"):
            tracker.log_artifact(out / name)
        mlflow_datasets.log_split_outputs(tracker, splits.path, parent_dir=dataset.path,
                                          split_uri=splits.uri)
        tracker.rename("split · " + " / ".join(f"{k} {v}" for k, v in report.items.items())
                       + f" · leakage {'PASSED' if report.passed else 'FAILED'}")
    splits.metadata.update(report.counts())
    shutil.copyfile(out / "leakage_report.md", leakage_report.path)
