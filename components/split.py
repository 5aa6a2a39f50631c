from kfp.dsl import Dataset, Input, Markdown, Output

from components.base import component


@component
def split(dataset: Input[Dataset], train_fraction: float, val_fraction: float,
          test_fraction: float, group_column: str, previous_split: str,
          splits: Output[Dataset], leakage_report: Output[Markdown]):
    """Leakage-safe split: groups, exact and near duplicates, stable under appended data."""
    import shutil
    from pathlib import Path

    from kubevae import tracking
    from kubevae.split import split as run_split

    with tracking.start_run("split", tags={"kubevae.step": "split"}) as tracker:
        report = run_split(dataset.path, splits.path,
                           fractions=(train_fraction, val_fraction, test_fraction),
                           group_column=group_column or None,
                           previous_split=previous_split or None)
        tracker.log_metrics(report.counts())
        for name in ("leakage_report.md", "leakage_report.json", "assignments.csv", "stats.json"):
            tracker.log_artifact(Path(splits.path) / name)
    splits.metadata.update(report.counts())
    shutil.copyfile(Path(splits.path) / "leakage_report.md", leakage_report.path)
