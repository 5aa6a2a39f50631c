from kfp.dsl import Dataset, Markdown, Output

from components.base import component


@component
def ingest(source_uri: str, image_size: int, max_bad_fraction: float, schedule_time: str,
           dataset: Output[Dataset], card: Output[Markdown]):
    """Read images (+ metadata) from a bucket, a folder or built-in data into a dataset folder.

    Args:
        source_uri: Where the images come from: s3://bucket/prefix, minio://bucket/prefix, a
            folder, builtin://sprites or builtin://digits.
        image_size: Resize images to this square size; 0 keeps their size.
        max_bad_fraction: Fail when more than this fraction of the files is quarantined.
        schedule_time: A recurring run's schedule time (KFP fills it in); it goes into the
            dataset card and the MLflow run.

    Returns:
        dataset: The dataset folder: uint8 image shards, manifest.parquet (one row per image
            with its sha256 and perceptual hash), card.json, quarantine.csv.
        card: The dataset card: counts (seen = accepted + quarantined), quarantine reasons,
            image shape and content sha256.
    """
    import shutil
    from pathlib import Path

    from kubevae import mlflow_datasets, tracking
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
        mlflow_datasets.log_ingested(tracker, dataset.path, source_uri)
        tracker.rename(f"ingest · {report.accepted} images, {report.quarantined} quarantined")
    dataset.metadata.update(counts)
    shutil.copyfile(Path(dataset.path) / "card.md", card.path)
