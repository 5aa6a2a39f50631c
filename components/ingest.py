from kfp.dsl import Dataset, Markdown, Output

from components.base import component


@component
def ingest(source_uri: str, image_size: int, max_bad_fraction: float,
           dataset: Output[Dataset], card: Output[Markdown]):
    """Read images (+ metadata) from a bucket, a folder or built-in data into a dataset folder."""
    import shutil
    from pathlib import Path

    from kubevae import tracking
    from kubevae.ingest import ingest as run_ingest

    with tracking.start_run("ingest", tags={"kubevae.step": "ingest"}) as tracker:
        report = run_ingest(source_uri, dataset.path, image_size=image_size or None,
                            max_bad_fraction=max_bad_fraction)
        counts = report.counts()
        tracker.log_params({"source_uri": source_uri, "image_size": image_size})
        tracker.log_metrics(counts)
        tracker.log_artifact(Path(dataset.path) / "card.md")
    dataset.metadata.update(counts)
    shutil.copyfile(Path(dataset.path) / "card.md", card.path)
