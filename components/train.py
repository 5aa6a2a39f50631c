from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def train(splits: Input[Dataset], study: Input[Artifact], backend: str, objective: str,
          train_steps: int, batch_size: int, lr: float, conv_channels: list, val_every_steps: int,
          workers: int,
          gpus_per_worker: int, namespace: str, image: str, seed: int, training_api: str,
          queue_name: str, run_id: str, model: Output[Model], metrics: Output[Metrics]):
    """Train the final model with the best parameters: a TrainJob (or PyTorchJob), or torchrun
    locally.

    Args:
        splits: The split folder; training reads train/ and validates on val/.
        study: The tuning study (kubevae.study.Study as JSON); its chosen trial's parameters
            set beta, latent size, ...
        backend: kubernetes (a TrainJob or PyTorchJob) or local (torchrun).
        objective: The training objective, as the trials had it: beta, tcvae or factor.
        train_steps: Optimizer steps of the final training run.
        batch_size: Global batch size, split over all training processes.
        lr: Adam learning rate (a learning rate the search chose wins).
        conv_channels: Encoder conv widths, as the trials had them (the decoder mirrors them).
        val_every_steps: Validate at the end of the epochs that reach a multiple of this many
            steps, and at the end (0: every epoch).
        workers: Training processes: the job's nodes, or torchrun processes locally.
        gpus_per_worker: GPUs per training process; 0 trains on CPUs.
        namespace: Namespace of the training job; empty = the run's namespace.
        image: The image the training pods run.
        seed: Seed of the training run.
        training_api: On a cluster: trainer (a Kubeflow Trainer v2 TrainJob) or pytorchjob.
        queue_name: On a cluster: the Kueue LocalQueue that admits the training job (its
            kueue.x-k8s.io/queue-name label); empty: no queue.
        run_id: The KFP run; labels what the step creates so that the exit handler finds it.

    Returns:
        model: The model folder: model.safetensors, config.json (model, objective, training
            settings) and metrics.json (the training history).
        metrics: The last epoch's training and validation metrics (val_neg_elbo, ...).
    """
    from components.backends import get_backend
    from components.backends.base import ClusterSettings, TrainingOverrides, TrainRequest
    from kubevae import tracking
    from kubevae.study import Study

    chosen = Study.read(study.path)
    result = get_backend(backend).train(TrainRequest(
        name="train", data_dir=splits.path, data_uri=splits.uri, params=chosen.best_params,
        out_dir=model.path, out_uri=model.uri, steps=train_steps, batch_size=batch_size,
        overrides=TrainingOverrides(objective=objective, lr=lr,
                                    conv_channels=tuple(int(c) for c in conv_channels) or None,
                                    val_every=val_every_steps),
        workers=workers, gpus_per_worker=gpus_per_worker, seed=seed,
        parent_run_id=tracking.enclosing_run_id(),
        cluster=ClusterSettings(namespace=namespace, image=image, training_api=training_api,
                                queue_name=queue_name, run_id=run_id)))
    model.metadata.update(chosen.best_params)
    model.metadata["framework"] = "pytorch"
    model.metadata["objective_metric"] = chosen.objective_metric
    model.metadata["objective"] = objective
    model.metadata["training_api"] = result.training_api
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(name, float(value))
