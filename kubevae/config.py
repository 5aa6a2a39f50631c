"""Typed configuration, in one place: the model, the objective and the training run.

Each is a dataclass that round-trips through JSON, so that the model folder's config.json, the
CLI flags and the pipeline parameters all describe the same thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kubevae.errors import require

Likelihood = Literal["bernoulli", "gaussian_fixed", "gaussian_learned"]
ObjectiveKind = Literal["beta", "capacity", "tcvae", "factor"]
TcEstimator = Literal["mss", "mws"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
BuiltinDataset = Literal["sprites"]  # kubevae.training.data.BUILTIN_DATASETS

SUPPORTED_IMAGE_SIZES = (28, 32, 64)
SUPPORTED_CHANNELS = (1, 3)


def option(default: Any = None, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A config field that `kubevae train` offers as an option (kubevae.training.command builds
    its parser from these). `cli` may hold: flag (the option's name when it is not the
    field's), group (the help section), metavar, choices (when the type does not say them) and
    negated (a True-by-default switch spelled --no-...). Fields made with plain `field` or a
    bare default are not options (they come from the data or from a model folder)."""
    metadata = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """Architecture, image shape, likelihood and input normalization of a beta-VAE.

    The 64-px default is the architecture of Burgess et al. 2018 as in disentanglement_lib:
    conv 32-32-64-64 (4x4, stride 2), FC 256, latent, and the mirrored decoder. Smaller images
    use the last convolutions of that stack, so that every size reaches a 4x4 (or 7x7) grid.
    """

    image_size: int = 64
    channels: int = 1
    latent_dim: int = option(10, "latent size", group="model")
    likelihood: Likelihood = option("bernoulli", "the pixel likelihood p(x|z)", group="model")
    gaussian_sigma: float = option(
        0.1, "standard deviation of the fixed-variance Gaussian likelihood, in [0, 1] pixel units",
        group="model")
    conv_channels: tuple[int, ...] = option(
        (32, 32, 64, 64), "encoder conv widths, first to last; the decoder mirrors them "
        "(32,32,64,64: Burgess et al. 2018)", group="model", metavar="C1,C2,C3,C4")
    fc_dim: int = 256
    # The encoder sees (x - mean) / std, with statistics fit on the training split only;
    # the likelihood always models x itself, in [0, 1].
    input_mean: tuple[float, ...] = (0.0,)
    input_std: tuple[float, ...] = (1.0,)
    # exp(logvar) is kept in [e^-10, e^10]: outside it the reparameterization under- or overflows.
    logvar_min: float = -10.0
    logvar_max: float = 10.0

    def __post_init__(self) -> None:
        self.conv_channels = tuple(self.conv_channels)
        self.input_mean = tuple(float(v) for v in self.input_mean)
        self.input_std = tuple(float(v) for v in self.input_std)
        if len(self.input_mean) == 1 and self.channels > 1:
            self.input_mean = self.input_mean * self.channels
        if len(self.input_std) == 1 and self.channels > 1:
            self.input_std = self.input_std * self.channels
        self.validate()

    def validate(self) -> None:
        _require(self.image_size in SUPPORTED_IMAGE_SIZES, "image_size",
                 f"one of {SUPPORTED_IMAGE_SIZES}", self.image_size)
        _require(self.channels in SUPPORTED_CHANNELS, "channels", "1 or 3", self.channels)
        _require(self.latent_dim >= 1, "latent_dim", "a positive integer", self.latent_dim)
        _require(self.likelihood in ("bernoulli", "gaussian_fixed", "gaussian_learned"),
                 "likelihood", "bernoulli, gaussian_fixed or gaussian_learned", self.likelihood)
        _require(self.gaussian_sigma > 0, "gaussian_sigma", "a positive number", self.gaussian_sigma)
        _require(len(self.input_mean) == self.channels, "input_mean",
                 f"{self.channels} value(s), one per channel", self.input_mean)
        _require(len(self.input_std) == self.channels and min(self.input_std) > 0, "input_std",
                 f"{self.channels} positive value(s), one per channel", self.input_std)


@dataclass
class ObjectiveConfig:
    """The training objective; see kubevae.objectives for the formulas, and for which weight the
    search's `beta` sets in each (OBJECTIVES there).

    Defaults and their sources (losses SUMMED over pixels and latents, as all of these):
    - beta = 4: Higgins et al. 2017 and YannDubs/disentangling-vae `hyperparam.ini` ("beta as
      in paper"); the pipeline searches beta log-uniformly over [1, 16], the range of
      disentanglement_lib's beta-VAE grid {1, 2, 4, 6, 8, 16} (Locatello et al. 2019). In
      tcvae it is the weight on the total correlation (Chen et al. 2018; disentanglement_lib's
      grid 1..10), in factor FactorVAE's gamma (Kim & Mnih 2018; disentanglement_lib's grid
      10..100).
    - capacity (Burgess et al. 2018, AnnealedVAE in disentanglement_lib `vae.py`):
      gamma = 1000 and C_max = 25 nats (disentanglement_lib; Burgess / YannDubs use 25, public
      configs 5-30); C reaches C_max after `capacity_steps`. disentanglement_lib reaches it at
      step 100,000 of 300,000, so the default (0) is a third of the run's steps: a short run
      still completes the schedule instead of stopping halfway up it.
    - tcvae's estimator: minibatch-stratified sampling (mss) by default, the one whose weights
      sum to one; mws is Chen et al.'s first estimator. Both need the dataset's size N, which is
      the training split's unless `dataset_size_tc` says otherwise.
    - factor's discriminator: 6 layers of 1000 units, Adam at 1e-4 with betas (0.5, 0.9), as
      Kim & Mnih 2018 and disentanglement_lib.
    """

    kind: ObjectiveKind = option(
        "beta", "beta: beta-VAE; capacity: Burgess et al.; tcvae: beta-TCVAE (beta on the total "
        "correlation); factor: FactorVAE (beta is its gamma on the total correlation)",
        flag="--objective", group="objective")
    beta: float = option(
        4.0, "the objective's searched weight: on the KL (beta), on the total correlation "
        "(tcvae: Chen et al.'s beta; factor: Kim & Mnih's gamma)", group="objective")
    gamma: float = option(1000.0, "capacity objective weight", group="objective")
    capacity_max: float = option(25.0, "C_max in nats (capacity)", group="objective")
    capacity_steps: int = option(0, "steps for C to reach C_max (0: a third of the run)",
                                 group="objective")
    # Linear KL warm-up over this many steps (0 = off); applies to every objective.
    warmup_steps: int = option(0, "KL warm-up steps (0 = off)", group="objective")
    tc_estimator: TcEstimator = option(
        "mss", "tcvae: minibatch-stratified (mss) or minibatch-weighted (mws) sampling",
        group="objective")
    dataset_size_tc: int = option(
        0, "tcvae: the dataset size N of the estimator (0: the training split's size)",
        group="objective")
    discriminator_lr: float = option(1e-4, "factor: the discriminator's Adam learning rate",
                                     group="objective")
    discriminator_width: int = option(1000, "factor: units per discriminator layer",
                                      group="objective")
    discriminator_depth: int = option(6, "factor: discriminator layers", group="objective")

    def __post_init__(self) -> None:
        _require(self.kind in ("beta", "capacity", "tcvae", "factor"), "objective",
                 "beta, capacity, tcvae or factor", self.kind)
        _require(self.beta >= 0, "beta", "a number >= 0", self.beta)
        _require(self.gamma >= 0, "gamma", "a number >= 0", self.gamma)
        _require(self.capacity_max >= 0, "capacity_max", "a number >= 0", self.capacity_max)
        _require(self.capacity_steps >= 0, "capacity_steps",
                 "an integer >= 0 (0: a third of the run)", self.capacity_steps)
        _require(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0", self.warmup_steps)
        _require(self.tc_estimator in ("mss", "mws"), "tc_estimator", "mss or mws",
                 self.tc_estimator)
        _require(self.dataset_size_tc >= 0, "dataset_size_tc",
                 "an integer >= 0 (0: the training split's size)", self.dataset_size_tc)
        _require(self.discriminator_lr > 0, "discriminator_lr", "a positive number",
                 self.discriminator_lr)
        _require(self.discriminator_width >= 1, "discriminator_width", "a positive integer",
                 self.discriminator_width)
        _require(self.discriminator_depth >= 1, "discriminator_depth", "a positive integer",
                 self.discriminator_depth)


@dataclass
class TrainConfig:
    """One training run. `batch_size` is the global batch, split evenly over the processes,
    so that a run gives the same result on one process or on several.

    Budget: `steps` optimizer steps when set (it wins over `epochs`, which then only says how
    often validation runs: once per pass over the data); otherwise `epochs` full passes.
    lr = 5e-4: Adam as in 1Konny/Beta-VAE and YannDubs/disentangling-vae (disentanglement_lib
    uses 1e-4 over 300,000 steps; the short budgets here need the larger end of 1e-4..5e-4).
    """

    data: str | None = option(
        None, "a dataset folder (kubevae ingest) or split folder (kubevae split)", group="data",
        source=True)
    dataset: BuiltinDataset | None = option(None, "a built-in dataset", group="data", source=True)
    dataset_size: int = option(
        20_000, "how many built-in images to generate (737280 = the full sprites factorial)",
        group="data")
    out: str = option("runs/model", "the model folder to write", group="output")
    checkpoint_dir: str | None = option(None, "where checkpoints go (None: OUT.ckpt)",
                                        group="output")
    checkpoint_every: int = option(500, "steps between checkpoints", group="output")
    keep_checkpoints: int = option(3, "checkpoints kept (the newest)", group="output")
    resume: str | None = option(
        None, "'auto': continue from the newest valid checkpoint; or a checkpoint path",
        group="output")
    epochs: int = option(10, "full passes, when --steps is not given", group="budget")
    steps: int | None = option(None, "optimizer steps for the whole run; wins over --epochs",
                               group="budget")
    batch_size: int = option(64, "the GLOBAL batch, split evenly over the processes",
                             group="budget")
    lr: float = option(5e-4, "Adam learning rate", group="budget")
    weight_decay: float = option(0.0, "Adam weight decay", group="budget")
    warmup_lr_steps: int = 100
    seed: int = option(0, "seed of the data order, the noise and the initialization",
                       group="budget")
    deterministic: bool = option(False, "use deterministic algorithms only", group="budget")
    device: Device = option("auto", "where to train", group="budget")
    precision: Precision = option(
        "auto", "auto: bf16 autocast where the CPU (avx512_bf16, AMX) or GPU has it, else fp32; "
        "fp32 under --deterministic (kubevae.hardware.choose_precision)", group="budget")
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    iwae_k: int = option(
        0, "importance samples for val IWAE (0 = off; 16 when the objective is val_iwae_nll)",
        group="validation")
    # Validation runs at the end of an epoch: every epoch (0), or only at the end of the epochs
    # that reach a multiple of val_every steps, and always after the last step. A short run of
    # small epochs spends much of its time validating (the quick profile's figures:
    # docs/measurements.md).
    val_every: int = option(
        0, "validate at the end of the epochs that reach a multiple of STEPS, and after the last "
        "step (0: every epoch; a trial's median stopping reads the objective each time it is "
        "validated)", group="validation", metavar="STEPS")
    # The search objective computed on the validation split every epoch (None: bounds only),
    # and the seeds a `udr` trial trains (kubevae.training.selection).
    objective_metric: str | None = option(
        None, "the search objective to compute and print every epoch", group="validation")
    udr_seeds: int = option(3, "seeds trained for --objective-metric udr", group="validation")
    eval_batches: int | None = None
    tracking: bool = option(True, "do not log to MLflow at all", group="validation",
                            flag="--no-tracking", negated=True)
    require_tracking: bool = option(False, "fail if MLflow is unreachable (default: warn and go on)",
                                    group="validation")
    log_images: bool = True
    log_mlflow_model: bool = option(True, "do not log the pyfunc model to MLflow",
                                    group="validation", flag="--no-mlflow-model", negated=True)
    experiment: str = option("kubevae", "MLflow experiment name", group="validation")
    parent_run_id: str | None = option(
        None, "the MLflow run this run nests under (the tuning run for a trial; default: the "
        "process's enclosing run, kubevae.tracking)", group="validation")

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", "a positive integer", self.epochs)
        _require(self.steps is None or self.steps >= 1, "steps", "a positive integer", self.steps)
        _require(self.udr_seeds >= 2, "udr_seeds", "at least 2 seeds (UDR compares pairs)",
                 self.udr_seeds)
        _require(self.batch_size >= 1, "batch_size", "a positive integer", self.batch_size)
        _require(self.lr > 0, "lr", "a positive number", self.lr)
        _require(self.precision in ("auto", "fp32", "bf16"), "precision", "auto, fp32 or bf16",
                 self.precision)
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 "device", "auto, cpu or cuda", self.device)
        _require(self.val_every >= 0, "val_every", "an integer >= 0 (0: every epoch)",
                 self.val_every)
        _require(self.checkpoint_every >= 1, "checkpoint_every", "a positive integer",
                 self.checkpoint_every)
        _require(self.resume in (None, "auto", "never") or bool(self.resume), "resume",
                 "'auto' or a checkpoint path", self.resume)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def model_config_from_dict(d: dict[str, Any], *, source: str = "config") -> ModelConfig:
    return _from_dict(ModelConfig, d, source)


def objective_config_from_dict(d: dict[str, Any], *, source: str = "config") -> ObjectiveConfig:
    return _from_dict(ObjectiveConfig, d, source)


def _from_dict(cls: type, d: dict[str, Any], source: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; "
                         f"expected some of {sorted(known)}")
    return cls(**d)


# Field names, not flags: each caller reports them as its user spelled them (kubevae.errors).
_require = require
