from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def train(splits: Input[Dataset], best_params: Input[Artifact], backend: str, epochs: int,
          batch_size: int, workers: int, gpus_per_worker: int, namespace: str, image: str,
          seed: int, training_api: str, run_id: str, model: Output[Model], metrics: Output[Metrics]):
    """Train the final model with the best parameters: a TrainJob (or PyTorchJob), or torchrun
    locally."""
    import json
    from pathlib import Path

    from components.backends import get_backend
    from components.backends.base import ClusterSettings, TrainRequest

    params = json.loads(Path(best_params.path).read_text())["best_params"]
    result = get_backend(backend).train(TrainRequest(
        name="train", data_dir=splits.path, data_uri=splits.uri, params=params,
        out_dir=model.path, out_uri=model.uri, epochs=epochs, batch_size=batch_size,
        workers=workers, gpus_per_worker=gpus_per_worker, seed=seed,
        cluster=ClusterSettings(namespace=namespace, image=image, training_api=training_api,
                                run_id=run_id)))
    model.metadata.update({k: v for k, v in params.items()})
    model.metadata["framework"] = "pytorch"
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(name, float(value))
