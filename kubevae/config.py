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
ObjectiveKind = Literal["beta", "capacity"]

SUPPORTED_IMAGE_SIZES = (28, 32, 64)
SUPPORTED_CHANNELS = (1, 3)


@dataclass
class ModelConfig:
    """Architecture, image shape, likelihood and input normalization of a beta-VAE.

    The 64-px default is the architecture of Burgess et al. 2018 as in disentanglement_lib:
    conv 32-32-64-64 (4x4, stride 2), FC 256, latent, and the mirrored decoder. Smaller images
    use the last convolutions of that stack, so that every size reaches a 4x4 (or 7x7) grid.
    """

    image_size: int = 64
    channels: int = 1
    latent_dim: int = 10
    likelihood: Likelihood = "bernoulli"
    # Standard deviation of the fixed-variance Gaussian likelihood, in [0, 1] pixel units.
    gaussian_sigma: float = 0.1
    conv_channels: tuple[int, ...] = (32, 32, 64, 64)
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
    """The training objective; see kubevae.objectives for the formulas.

    Defaults and their sources (losses SUMMED over pixels and latents, as all of these):
    - beta = 4: Higgins et al. 2017 and YannDubs/disentangling-vae `hyperparam.ini` ("beta as
      in paper"); the pipeline searches beta log-uniformly over [1, 16], the range of
      disentanglement_lib's beta-VAE grid {1, 2, 4, 6, 8, 16} (Locatello et al. 2019).
    - capacity (Burgess et al. 2018, AnnealedVAE in disentanglement_lib `vae.py`):
      gamma = 1000 and C_max = 25 nats (disentanglement_lib; Burgess / YannDubs use 25, public
      configs 5-30); C reaches C_max after `capacity_steps`. disentanglement_lib reaches it at
      step 100,000 of 300,000, so the default (0) is a third of the run's steps: a short run
      still completes the schedule instead of stopping halfway up it.
    """

    kind: ObjectiveKind = "beta"
    beta: float = 4.0
    # Capacity control (Burgess et al. 2018): gamma * |KL - C(t)|, C rising linearly to capacity_max.
    gamma: float = 1000.0
    capacity_max: float = 25.0
    capacity_steps: int = 0  # 0: a third of the run (kubevae.objectives.with_schedule)
    # Linear KL warm-up over this many steps (0 = off); applies to both objectives.
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _require(self.kind in ("beta", "capacity"), "objective", "beta or capacity", self.kind)
        _require(self.beta >= 0, "beta", "a number >= 0", self.beta)
        _require(self.gamma >= 0, "gamma", "a number >= 0", self.gamma)
        _require(self.capacity_max >= 0, "capacity_max", "a number >= 0", self.capacity_max)
        _require(self.capacity_steps >= 0, "capacity_steps",
                 "an integer >= 0 (0: a third of the run)", self.capacity_steps)
        _require(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0", self.warmup_steps)


@dataclass
class TrainConfig:
    """One training run. `batch_size` is the global batch, split evenly over the processes,
    so that a run gives the same result on one process or on several.

    Budget: `steps` optimizer steps when set (it wins over `epochs`, which then only says how
    often validation runs: once per pass over the data); otherwise `epochs` full passes.
    lr = 5e-4: Adam as in 1Konny/Beta-VAE and YannDubs/disentangling-vae (disentanglement_lib
    uses 1e-4 over 300,000 steps; the short budgets here need the larger end of 1e-4..5e-4).
    """

    data: str | None = None
    dataset: str | None = None
    dataset_size: int = 20_000
    out: str = "runs/model"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_lr_steps: int = 100
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto, fp32 or bf16: see kubevae.hardware.choose_precision
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    iwae_k: int = 0
    # Validation runs at the end of an epoch: every epoch (0), or only at the end of the epochs
    # that reach a multiple of val_every steps, and always after the last step. A short run of
    # small epochs spends much of its time validating: in the quick profile a pass over the
    # validation split took as long as 9 training steps (pipelines/profiles.py).
    val_every: int = 0
    # The search objective computed on the validation split every epoch (None: bounds only),
    # and the seeds a `udr` trial trains (kubevae.training.selection).
    objective_metric: str | None = None
    udr_seeds: int = 3
    eval_batches: int | None = None
    tracking: bool = True
    require_tracking: bool = False
    log_images: bool = True
    log_mlflow_model: bool = True
    experiment: str = "kubevae"
    parent_run_id: str | None = None  # the MLflow run to nest under (None: kubevae.tracking's default)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", "a positive integer", self.epochs)
        _require(self.steps is None or self.steps >= 1, "steps", "a positive integer", self.steps)
        _require(self.udr_seeds >= 2, "udr_seeds", "at least 2 seeds (UDR compares pairs)",
                 self.udr_seeds)
        _require(self.batch_size >= 1, "batch_size", "a positive integer", self.batch_size)
        _require(self.lr > 0, "lr", "a positive number", self.lr)
        _require(self.precision in ("auto", "fp32", "bf16"), "precision", "auto, fp32 or bf16",
                 self.precision)
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
