"""The DAG: ingest -> split -> tune -> train -> evaluate -> gate -> (deploy -> smoke test).

Every top-level parameter has a default and a description; the Kubeflow UI's run form shows
them. `backend` chooses how the cluster-facing steps run: `kubernetes` (Katib, a TrainJob or
PyTorchJob, KServe) on a cluster, `local` (Optuna, torchrun, a loopback ModelServer) on a laptop;
on a cluster `training_api` chooses the training job's API and `deployment_mode` KServe's mode.

Run hygiene: steps that are safe to repeat retry with backoff (RETRIED); every step has a pod
deadline (TIMEOUTS, kfp.kubernetes.set_timeout) and CPU and memory requests and limits
(RESOURCES); an exit handler (components/cleanup.py) deletes what a failed run left running on
the cluster and rolls back its half-rolled canary. kfp.local runs the exit handler and the
retries, and ignores the Kubernetes-only settings.

KFP backends (docs/kfp-versions.md): `kubevae_pipeline` (pipeline_for("2.16"), the default)
compiles to YAML that KFP 2.16 and 2.17 API servers both read. pipeline_for("2.17") adds the
run's active deadline and TTLs (PIPELINE_CONFIG), which only a 2.17 backend knows: a 2.16 API
server parses the platform spec strictly, fails on the unknown `pipelineConfig` fields and then
drops the WHOLE Kubernetes platform spec without an error (no Secrets, ConfigMap, labels or
step deadlines), so that YAML must never reach a 2.16 backend.
"""


import functools
from typing import Any

from kfp import dsl, kubernetes

from components.base import IMAGE
from components.cleanup import cleanup
from components.deploy import deploy
from components.evaluate import evaluate
from components.gate import gate
from components.ingest import ingest
from components.k8s.contract import (
    MLFLOW_CREDENTIALS,
    MLFLOW_SECRET_KEYS,
    S3_SECRET,
    SETTINGS_CONFIG_MAP,
    SETTINGS_KEYS,  # the keys the training pods read too
)
from components.k8s.contract import S3_SECRET_KEYS as SECRET_KEYS
from components.keep_champion import keep_champion
from components.smoke_test import smoke_test
from components.split import split
from components.train import train
from components.tune import tune
from pipelines.kfp_versions import DEFAULT_KFP_BACKEND, KFP_BACKENDS

PIPELINE_NAME = "kubevae"
# Every step pod reads the S3 credentials from this Secret and the endpoints from this ConfigMap
# (manifests/base): credentials never travel as pipeline parameters. kfp.local ignores both.
# MLflow requires authentication (manifests/base/mlflow.yaml): every step reads its user and
# password from the MLFLOW_CREDENTIALS Secret; the label lets the steps' pods through MLflow's
# NetworkPolicy (manifests/base/networkpolicy.yaml).
MLFLOW_CLIENT_LABEL = ("kubevae.io/mlflow-client", "true")

# -- run hygiene --------------------------------------------------------------------------------
HOUR = 3600
# Pod deadline of each step (component name -> seconds). tune and train wait for Katib and the
# training job up to ClusterSettings.timeout_seconds (6 h) and then delete them: a little more.
TIMEOUTS = {"ingest": 2 * HOUR, "split": 1 * HOUR, "tune": 7 * HOUR, "train": 7 * HOUR,
            "evaluate": 2 * HOUR, "gate": HOUR // 2, "deploy": HOUR, "smoke-test": HOUR // 4,
            "keep-champion": HOUR // 6, "cleanup": HOUR}
# Steps safe to run again after a failure (no side effects beyond their own outputs):
# num_retries, first backoff, backoff factor, longest total retry time.
RETRY = (2, "60s", 2.0, "1800s")
RETRIED = ("ingest", "split", "evaluate", "smoke-test")
# CPU and memory of each step's pod (component name -> cpu request, cpu limit, memory request,
# memory limit): a namespace with a ResourceQuota admits only pods that state them, and a pod
# without requests runs BestEffort (evicted first). Sized for the `full` profile (the 737,280
# sprites of builtin://sprites, 3 GB of uint8 pixels). tune and train run on the cluster through
# Katib and the training job (their pods' sizes: components/backends/kubernetes.py), so their
# own pods mostly wait; backend=local on a cluster trains inside them and needs more than this.
RESOURCES = {
    "ingest": ("2", "2", "2Gi", "6Gi"),  # 2 decoding workers (kubevae.ingest), bounded shards in flight
    "split": ("1", "2", "2Gi", "8Gi"),  # one process; the manifest's hashes and the shard copy
    "tune": ("500m", "1", "1Gi", "4Gi"),  # waits on Katib; reads the split's metadata, the study
    "train": ("500m", "1", "1Gi", "4Gi"),  # waits on the TrainJob; moves the model folder
    "evaluate": ("2", "4", "4Gi", "12Gi"),  # IWAE bound and disentanglement_lib metrics on test/
    "gate": ("2", "4", "4Gi", "12Gi"),  # the same scoring, for candidate and champion
    "deploy": ("250m", "1", "1Gi", "2Gi"),  # creates the InferenceService and waits on it
    "smoke-test": ("250m", "1", "1Gi", "2Gi"),  # a few HTTP requests to the endpoint
    "keep-champion": ("250m", "1", "1Gi", "2Gi"),  # one MLflow tag and a report
    "cleanup": ("250m", "1", "1Gi", "2Gi"),  # lists and deletes the run's cluster resources
}
# The run's own deadline and TTLs need a KFP 2.17 backend (pipeline_for("2.17")).
PIPELINE_CONFIG = dsl.PipelineConfig(
    ttl_seconds_after_success=24 * HOUR,  # the run's Argo Workflow (pods, logs) kept a day,
    ttl_seconds_after_failure=7 * 24 * HOUR,  # a week when it failed, for inspection
    active_deadline_seconds=24 * HOUR)  # no run holds the cluster longer than a day

# name: (default, description). One table feeds the pipeline signature's docstring and the
# tests that check every parameter is described.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "source_uri": ("builtin://sprites?n=20000", "Where the images come from: s3://bucket/prefix, minio://bucket/prefix, a folder, builtin://sprites or builtin://digits."),
    "image_size": (0, "Resize images to this square size (28, 32 or 64); 0 keeps their size."),
    "max_bad_fraction": (0.01, "Fail ingest when more than this fraction of files is quarantined."),
    "train_fraction": (0.8, "Fraction of groups in the training split."),
    "val_fraction": (0.1, "Fraction of groups in the validation split (tuning objective)."),
    "test_fraction": (0.1, "Fraction of groups in the frozen test split (gate)."),
    "group_column": ("", "Metadata column that groups images (patient, device, session); empty for none."),
    "previous_split": ("", "Pins every existing item to an earlier split: `champion` (the split recorded on the registered champion; none yet: a fresh split; the default of `kubevae pipeline schedule`), the URI of an earlier assignments.csv, or empty for a fresh split."),
    "pinned_copies": ("exclude", "With previous_split: when new data shows items pinned to different splits to be copies or one group, `exclude` keeps the later split's items (test > val > train; the frozen test items stay) and excludes the others, naming them in the leakage report, so a scheduled retraining does not fail on every run over a link in old data; `fail` fails the split step."),
    "mirror_copies": (True, "Mirror images count as copies in the split (saved flips are augmentations in many data sets); false: only unflipped edits do."),
    "backend": ("kubernetes", "Where cluster-facing steps run: kubernetes (Katib, a TrainJob or PyTorchJob, KServe) or local."),
    "training_api": ("trainer", "Training job on the cluster, for training and Katib trials: trainer (a Kubeflow Trainer v2 TrainJob on the torch-distributed runtime) or pytorchjob (Training Operator 1.9)."),
    "queue_name": ("", "Kueue LocalQueue (in the run's namespace) that admits the TrainJob or PyTorchJob and each Katib trial's job, as the kueue.x-k8s.io/queue-name label on the job; empty: no queue, the jobs start at once."),
    "algorithm": ("tpe", "Search algorithm: tpe, random, grid, bayesianoptimization or hyperband (Katib's; locally Optuna's TPE, random, GP, GridSampler, HyperbandPruner over steps)."),
    "objective_metric": ("auto", "Tuning objective, with its own direction: auto (val_mig when the data has factor_* columns, else udr), val_mig, val_factor_vae, val_dci, udr (maximized); val_neg_elbo or val_iwae_nll (minimized; they prefer beta ~ 1: use them to tune latent size or lr at a fixed beta)."),
    "objective": ("beta", "Training objective of the trials and the final run; the searched beta is its weight: beta (beta-VAE, beta on the KL), tcvae (beta-TCVAE, Chen et al. 2018: beta on the total correlation) or factor (FactorVAE, Kim & Mnih 2018: beta is its gamma on the total correlation, estimated by a discriminator; the literature's gammas are 10 to 100, so raise beta_min and beta_max)."),
    "udr_seeds": (3, "Seeds each trial trains when objective_metric is udr (UDR compares them)."),
    "beta_min": (1.0, "Smallest beta of the log-uniform search range (summed losses; disentanglement_lib's grid spans 1..16)."),
    "beta_max": (16.0, "Largest beta of the log-uniform search range."),
    "latent_dims": ([4, 6, 10], "Latent sizes to search (categorical)."),
    "lr": (5e-4, "Adam learning rate of the trials and the final run (5e-4: the trainer's default, the top of the literature's 1e-4 to 5e-4 for 300,000-step budgets; short budgets learn faster with more: the quick profile uses 1e-3). With tune_lr the search chooses it instead."),
    "tune_lr": (False, "Also search the learning rate (log-uniform 1e-4 to 5e-4, Adam's literature range)."),
    "conv_channels": ([32, 32, 64, 64], "Encoder conv widths of the trials and the final model, first to last; the decoder mirrors them (32, 32, 64, 64: Burgess et al. 2018, disentanglement_lib). 32 and 28 px use the last three or two."),
    "max_trials": (12, "Katib maxTrialCount / Optuna trials."),
    "parallel_trials": (3, "Katib parallelTrialCount / concurrent Optuna trials."),
    "max_failed_trials": (3, "Katib maxFailedTrialCount: the search stops after this many failures."),
    "trial_steps": (3000, "Optimizer steps per tuning trial (hyperband's resource)."),
    "train_steps": (30000, "Optimizer steps of the final training run."),
    "val_every_steps": (0, "How often the final training run validates: at the end of the epochs that reach a multiple of this many steps, and at the end; 0: every epoch. Trials validate every epoch (median stopping reads each epoch)."),
    "batch_size": (64, "Global batch size, split over all training processes (64: disentanglement_lib, Burgess et al.)."),
    "workers": (2, "Training processes: TrainJob nodes (or PyTorchJob Master + Workers), or torchrun processes locally."),
    "trial_workers": (1, "Processes per tuning trial."),
    "gpus_per_worker": (0, "GPUs per training process (nvidia.com/gpu); 0 trains on CPUs."),
    "iwae_k": (50, "Importance samples for the IWAE bound in evaluation."),
    "metric_protocol": ("disentanglement_lib", "Disentanglement metric settings: disentanglement_lib (its sample counts and classifiers) or fast (the same sample counts; DCI's importances from a random forest instead of gradient boosting, seconds instead of minutes, so its DCI is not comparable to published numbers)."),
    "gate_margin": (0.0, "How much the candidate must beat the champion by on the test counterpart of the search objective (MIG, FactorVAE, DCI points; nats for the bounds)."),
    "gate_elbo_tolerance": (0.05, "Guard: the candidate's test negative ELBO (beta = 1) may exceed the champion's by at most this fraction."),
    "gate_min_probability": (0.9, "With a champion, the candidate also needs at least this probability of being better on the criterion, from a paired bootstrap over the same test items (none for DCI and udr: the margin alone decides)."),
    "gate_min_active_units": (1, "Floor for every model, the first included: active units (latents whose posterior mean varies over the test images)."),
    "gate_min_rate": (0.5, "Floor: the test KL (rate) in nats per image; a collapsed model has about 0.001 (the study's collapse rule uses the same 0.5)."),
    "gate_min_psnr_gain": (1.0, "Floor: dB by which the test reconstruction PSNR must beat that of the test images' mean image (what a decoder that ignores z gives)."),
    "model_name": ("kubevae-sprites", "Registered model name in MLflow and the InferenceService name."),
    "canary_percent": (10, "Traffic share of the canary when an InferenceService is updated; 0 replaces the model directly."),
    "deployment_mode": ("Knative", "KServe deployment mode: Knative (canary by canaryTrafficPercent), Standard (canary by spec.canary[], KServe >= 0.20 with the Gateway API) or Standard-direct (no canary support: canary_percent must be 0)."),
    "namespace": ("", "Namespace for Katib, the training job and the InferenceService; empty = the run's namespace."),
    "image": (IMAGE, "The project image for trials, training pods and the predictor."),
    "seed": (0, "Random seed for the search, training and evaluation."),
}


def _pipeline(
    source_uri: str = PARAMETERS["source_uri"][0],
    image_size: int = PARAMETERS["image_size"][0],
    max_bad_fraction: float = PARAMETERS["max_bad_fraction"][0],
    train_fraction: float = PARAMETERS["train_fraction"][0],
    val_fraction: float = PARAMETERS["val_fraction"][0],
    test_fraction: float = PARAMETERS["test_fraction"][0],
    group_column: str = PARAMETERS["group_column"][0],
    previous_split: str = PARAMETERS["previous_split"][0],
    pinned_copies: str = PARAMETERS["pinned_copies"][0],
    mirror_copies: bool = PARAMETERS["mirror_copies"][0],
    backend: str = PARAMETERS["backend"][0],
    training_api: str = PARAMETERS["training_api"][0],
    queue_name: str = PARAMETERS["queue_name"][0],
    algorithm: str = PARAMETERS["algorithm"][0],
    objective_metric: str = PARAMETERS["objective_metric"][0],
    objective: str = PARAMETERS["objective"][0],
    udr_seeds: int = PARAMETERS["udr_seeds"][0],
    beta_min: float = PARAMETERS["beta_min"][0],
    beta_max: float = PARAMETERS["beta_max"][0],
    latent_dims: list = PARAMETERS["latent_dims"][0],
    lr: float = PARAMETERS["lr"][0],
    tune_lr: bool = PARAMETERS["tune_lr"][0],
    conv_channels: list = PARAMETERS["conv_channels"][0],
    max_trials: int = PARAMETERS["max_trials"][0],
    parallel_trials: int = PARAMETERS["parallel_trials"][0],
    max_failed_trials: int = PARAMETERS["max_failed_trials"][0],
    trial_steps: int = PARAMETERS["trial_steps"][0],
    train_steps: int = PARAMETERS["train_steps"][0],
    val_every_steps: int = PARAMETERS["val_every_steps"][0],
    batch_size: int = PARAMETERS["batch_size"][0],
    workers: int = PARAMETERS["workers"][0],
    trial_workers: int = PARAMETERS["trial_workers"][0],
    gpus_per_worker: int = PARAMETERS["gpus_per_worker"][0],
    iwae_k: int = PARAMETERS["iwae_k"][0],
    metric_protocol: str = PARAMETERS["metric_protocol"][0],
    gate_margin: float = PARAMETERS["gate_margin"][0],
    gate_elbo_tolerance: float = PARAMETERS["gate_elbo_tolerance"][0],
    gate_min_probability: float = PARAMETERS["gate_min_probability"][0],
    gate_min_active_units: int = PARAMETERS["gate_min_active_units"][0],
    gate_min_rate: float = PARAMETERS["gate_min_rate"][0],
    gate_min_psnr_gain: float = PARAMETERS["gate_min_psnr_gain"][0],
    model_name: str = PARAMETERS["model_name"][0],
    canary_percent: int = PARAMETERS["canary_percent"][0],
    deployment_mode: str = PARAMETERS["deployment_mode"][0],
    namespace: str = PARAMETERS["namespace"][0],
    image: str = PARAMETERS["image"][0],
    seed: int = PARAMETERS["seed"][0],
):
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # labels what the run creates on the cluster
    exit_task = step(cleanup(backend=backend, namespace=namespace, run_id=run_id,
                             model_name=model_name), cache=False, s3=False)
    with dsl.ExitHandler(exit_task, name="run"):
        # KFP resolves the placeholder to a recurring run's schedule time.
        raw = step(ingest(source_uri=source_uri, image_size=image_size,
                          max_bad_fraction=max_bad_fraction,
                          schedule_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER), cache=False)
        # Not cached: previous_split=champion resolves anew on every run.
        splits = step(split(dataset=raw.outputs["dataset"], train_fraction=train_fraction,
                            val_fraction=val_fraction, test_fraction=test_fraction,
                            group_column=group_column, previous_split=previous_split,
                            model_name=model_name, pinned_copies=pinned_copies,
                            mirror_copies=mirror_copies), cache=False)
        study = step(tune(splits=splits.outputs["splits"], backend=backend, algorithm=algorithm,
                     objective_metric=objective_metric, objective=objective,
                     beta_min=beta_min, beta_max=beta_max,
                     latent_dims=latent_dims, lr=lr, tune_lr=tune_lr,
                     conv_channels=conv_channels, max_trials=max_trials,
                     parallel_trials=parallel_trials, max_failed_trials=max_failed_trials,
                     trial_steps=trial_steps, udr_seeds=udr_seeds, batch_size=batch_size,
                     trial_workers=trial_workers,
                     gpus_per_worker=gpus_per_worker, namespace=namespace, image=image, seed=seed,
                     training_api=training_api, queue_name=queue_name, run_id=run_id))
        trained = step(train(splits=splits.outputs["splits"], study=study.outputs["study"],
                        backend=backend, objective=objective, train_steps=train_steps, batch_size=batch_size, lr=lr,
                        conv_channels=conv_channels, val_every_steps=val_every_steps,
                        workers=workers,
                        gpus_per_worker=gpus_per_worker, namespace=namespace, image=image, seed=seed,
                        training_api=training_api, queue_name=queue_name, run_id=run_id))
        step(evaluate(model=trained.outputs["model"], splits=splits.outputs["splits"],
                 study=study.outputs["study"], iwae_k=iwae_k,
                 metric_protocol=metric_protocol, seed=seed), s3=False)
        decision = step(gate(model=trained.outputs["model"], splits=splits.outputs["splits"],
                             study=study.outputs["study"], model_name=model_name,
                             margin=gate_margin, elbo_tolerance=gate_elbo_tolerance,
                             min_probability=gate_min_probability,
                             min_active_units=gate_min_active_units, min_rate=gate_min_rate,
                             min_psnr_gain=gate_min_psnr_gain,
                             metric_protocol=metric_protocol, seed=seed,
                             schedule_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER),
                        cache=False, s3=False)
        # kfp.local resolves a condition only on a task's single "Output": gate returns one string.
        with dsl.If(decision.outputs["Output"] == "promoted", name="promoted"):
            served = step(deploy(model=trained.outputs["model"], model_name=model_name,
                                 backend=backend, namespace=namespace, image=image,
                                 canary_percent=canary_percent, deployment_mode=deployment_mode,
                                 run_id=run_id), cache=False, s3=False)
            step(smoke_test(endpoint=served.outputs["Output"], model=trained.outputs["model"],
                            model_name=model_name, backend=backend), cache=False, s3=False)
        with dsl.Else(name="not-promoted"):
            step(keep_champion(decision_report=decision.outputs["decision_report"],
                               model_name=model_name), cache=False, s3=False)


# What the Kubeflow UI's run graph calls each step (the task names stay the component names).
STEP_NAMES = {
    "ingest": "Ingest images", "split": "Split without leakage",
    "tune": "Tune beta and latent size", "train": "Train final model",
    "evaluate": "Evaluate on test split", "gate": "Gate against champion",
    "deploy": "Deploy to KServe", "smoke-test": "Smoke-test endpoint",
    "keep-champion": "Keep champion", "cleanup": "Clean up after the run",
}


def step(task, *, cache: bool = True, s3: bool = True):
    """Wire a task to the cluster's storage and MLflow settings; `cache=False` for steps with
    side effects or changing inputs (a re-ingest must see new objects under the same source
    URI); `s3=False` for steps that never touch object storage themselves (KFP's launcher moves
    their artifacts with its own credentials; MLflow proxies its artifacts): no S3 keys."""
    task.set_display_name(STEP_NAMES.get(task.component_spec.name, task.component_spec.name))
    if s3:
        kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in SECRET_KEYS})
    kubernetes.use_secret_as_env(task, MLFLOW_CREDENTIALS, {k: k for k in MLFLOW_SECRET_KEYS})
    kubernetes.add_pod_label(task, *MLFLOW_CLIENT_LABEL)
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {k: k for k in SETTINGS_KEYS})
    task.set_caching_options(cache)
    name = task.component_spec.name.replace("_", "-")
    kubernetes.set_timeout(task, TIMEOUTS[name])  # KeyError: a new step needs a deadline here
    cpu, cpu_limit, memory, memory_limit = RESOURCES[name]  # and its size here
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory).set_memory_limit(memory_limit)
    if name in RETRIED:
        num_retries, backoff, factor, longest = RETRY
        task.set_retry(num_retries, backoff_duration=backoff, backoff_factor=factor,
                       backoff_max_duration=longest)
    return task


# KFP reads each parameter's description from the docstring's Args section (the UI shows it).
_pipeline.__doc__ = "The kubevae pipeline.\n\nArgs:\n" + "\n".join(
    f"    {name}: {description}" for name, (_, description) in PARAMETERS.items())
DESCRIPTION = ("Ingest images, split them without leakage, tune and train a beta-VAE, gate it "
               "against the champion and serve it with KServe.")


@functools.cache
def pipeline_for(kfp_backend: str = DEFAULT_KFP_BACKEND):
    """The pipeline for a KFP backend version: "2.16" (YAML that 2.16 and 2.17 both read) or
    "2.17" (adds the run's active deadline and TTLs; a 2.16 backend would silently drop the
    whole Kubernetes platform spec of that YAML)."""
    if kfp_backend not in KFP_BACKENDS:
        raise ValueError(f"--kfp-backend: expected one of {', '.join(KFP_BACKENDS)}, "
                         f"got {kfp_backend!r}")
    config = PIPELINE_CONFIG if kfp_backend == "2.17" else None
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION,
                        pipeline_config=config)(_pipeline)


kubevae_pipeline = pipeline_for(DEFAULT_KFP_BACKEND)
