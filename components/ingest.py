from kfp.dsl import Dataset, Markdown, Output

from components.base import component


@component
def ingest(source_uri: str, image_size: int, max_bad_fraction: float, schedule_time: str,
           dataset: Output[Dataset], card: Output[Markdown]):
    """Read images (+ metadata) from a bucket, a folder or built-in data into a dataset folder.
    A recurring run's schedule time goes into the dataset card and the MLflow run."""
    import shutil
    from pathlib import Path

    from kubevae import tracking
    from kubevae.ingest import ingest as run_ingest

    when = tracking.schedule_time(schedule_time)
    with tracking.start_run("ingest", tags={"kubevae.step": "ingest",
                                            "kubevae.schedule_time": when}) as tracker:
        report = run_ingest(source_uri, dataset.path, image_size=image_size or None,
                            max_bad_fraction=max_bad_fraction, schedule_time=when or None)
        counts = report.counts()
        tracker.log_params({"source_uri": source_uri, "image_size": image_size})
        tracker.log_metrics(counts)
        tracker.log_artifact(Path(dataset.path) / "card.md")
    dataset.metadata.update(counts)
    shutil.copyfile(Path(dataset.path) / "card.md", card.path)
