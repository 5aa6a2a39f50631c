"""The beta-VAE: a convolutional encoder, a mirrored decoder and the likelihood of pixels.

The objective lives apart, in kubevae.objectives (as in pythae): this module only maps images to
a diagonal Gaussian posterior q(z|x), latents to likelihood parameters p(x|z), and scores x
under them. A model is saved as a folder: model.safetensors (weights, never pickle),
config.json (architecture, image shape, likelihood, latent size, objective, normalization) and
metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kubevae import images as pixels
from kubevae.config import (
    ModelConfig,
    ObjectiveConfig,
    model_config_from_dict,
    objective_config_from_dict,
    to_dict,
)
from kubevae.storage import FILE_MODE, atomic_dir, atomic_write_json, read_json

MODEL_FORMAT = "kubevae-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOG_2PI = math.log(2 * math.pi)
# What a model folder may ask for, checked before anything is built: the sizes stay far above
# any model kubevae trains (the 64-px default has about 0.5 M parameters) and far below what
# would exhaust a machine. Weights must be float32 and finite.
LIMITS = {"latent_dim": (1, 4096), "fc_dim": (1, 16384), "conv_channels": (1, 2048),
          "gaussian_sigma": (1e-6, 10.0), "logvar_min": (-50.0, 50.0), "logvar_max": (-50.0, 50.0)}
MAX_PARAMETERS = 50_000_000
WEIGHT_DTYPE = torch.float32


N_CONVS = {64: 4, 32: 3, 28: 2}  # stride-2 convolutions per image size


def conv_plan(config: ModelConfig) -> tuple[tuple[int, ...], int]:
    """The conv channels used for this image size and the side of the last feature map.

    64 px: 4 stride-2 convs to 4x4; 32 px: 3 to 4x4; 28 px: 2 to 7x7 (28 does not halve to 4).
    """
    n_convs = N_CONVS[config.image_size]
    channels = tuple(config.conv_channels[-n_convs:])
    return channels, config.image_size // 2**n_convs


class Encoder(nn.Module):
    """x (normalized, N x C x H x W) -> posterior mean and log-variance (N x D each)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        channels, side = conv_plan(config)
        layers: list[nn.Module] = []
        in_ch = config.channels
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.ReLU()]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * side * side, config.fc_dim), nn.ReLU())
        self.head = nn.Linear(config.fc_dim, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.fc(self.convs(x))).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """z (N x D) -> likelihood parameters per pixel (logits, or Gaussian means), N x C x H x W."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        channels, side = conv_plan(config)
        self.side, self.first_channels = side, channels[-1]
        self.fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.fc_dim), nn.ReLU(),
            nn.Linear(config.fc_dim, channels[-1] * side * side), nn.ReLU())
        layers: list[nn.Module] = []
        mirrored = list(reversed(channels)) + [config.channels]
        for i, (in_ch, out_ch) in enumerate(zip(mirrored[:-1], mirrored[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
            if i < len(mirrored) - 2:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.first_channels, self.side, self.side)
        return self.deconvs(h)


class VAE(nn.Module):
    # Buffers (register_buffer): declared so that type checkers see tensors, not Module | Tensor.
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        shape = (1, config.channels, 1, 1)
        self.register_buffer("input_mean", torch.tensor(config.input_mean).view(shape))
        self.register_buffer("input_std", torch.tensor(config.input_std).view(shape))
        if config.likelihood == "gaussian_learned":
            # One learned log-sigma per channel: per-pixel variances let the model shrink the
            # variance of easy pixels without bound, which makes the likelihood diverge.
            self.log_sigma = nn.Parameter(torch.full(shape, math.log(config.gaussian_sigma)))

    # -- the posterior and the prior --------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [0, 1], N x C x H x W -> (mu, logvar), logvar clamped to a safe range."""
        mu, logvar = self.encoder((x - self.input_mean) / self.input_std)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + sigma * eps: a sample whose gradient flows to mu and logvar."""
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar

    # -- the likelihood p(x|z) --------------------------------------------------------------
    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image, summed over pixels and channels (nats). Shape: N."""
        params = params.float()
        if self.config.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(params, x, reduction="none")
        else:
            log_sigma = self.log_sigma if self.config.likelihood == "gaussian_learned" else \
                torch.full_like(params[:1, :, :1, :1], math.log(self.config.gaussian_sigma))
            ll = -0.5 * (((x - params) / log_sigma.exp()) ** 2 + LOG_2PI) - log_sigma
        return ll.flatten(1).sum(dim=1)

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) as an image in [0, 1]."""
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(params.float())
        return params.float().clamp(0.0, 1.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (means of p(x|z)) for z drawn from the prior N(0, I)."""
        device = self.input_mean.device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        return self.mean_image(self.decode(z))

    @staticmethod
    def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x C -> float N x C x H x W in [0, 1] (kubevae.images.to_unit)."""
        return pixels.to_unit(images_uint8)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per latent dimension, closed form. Shape: N x D."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


# -- the model folder -----------------------------------------------------------------------
def save_model(out_dir: str | Path, vae: VAE, objective: ObjectiveConfig,
               metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically: it appears whole or not at all."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    config = {"format": MODEL_FORMAT, "model": to_dict(vae.config),
              "objective": to_dict(objective), **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
        os.chmod(tmp / WEIGHTS_FILE, FILE_MODE)  # safetensors writes 0600; the others are 0644
        atomic_write_json(tmp / CONFIG_FILE, config)
        atomic_write_json(tmp / METRICS_FILE, metrics or {})
    return out_dir


def read_model_config(model_dir: str | Path) -> tuple[ModelConfig, ObjectiveConfig, dict[str, Any]]:
    path = Path(model_dir) / CONFIG_FILE
    raw = read_json(path)
    if raw.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: field 'format' is {raw.get('format')!r}, expected {MODEL_FORMAT!r}")
    for key in ("model", "objective"):
        if not isinstance(raw.get(key), dict):
            raise ValueError(f"{path}: field {key!r} is missing or not an object")
    for key, cls in (("model", ModelConfig), ("objective", ObjectiveConfig)):
        check_field_types(raw[key], cls, source=f"{path} field {key!r}")
    check_model_limits(raw["model"], source=f"{path} field 'model'")
    return (model_config_from_dict(raw["model"], source=f"{path} field 'model'"),
            objective_config_from_dict(raw["objective"], source=f"{path} field 'objective'"), raw)


def check_field_types(values: dict[str, Any], cls: type, *, source: str) -> None:
    """Each field has the JSON type of its dataclass default: an integer (not a bool) for int
    fields, a finite number for float fields, text for text, a list of those for tuples."""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.default is dataclasses.MISSING:
            continue
        default, value = f.default, values[f.name]
        if isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) > 0 and \
                all(_is_type(v, type(default[0])) for v in value)
            expected = f"a non-empty list of {_type_name(type(default[0]), plural=True)}"
        else:
            ok, expected = _is_type(value, type(default)), _type_name(type(default))
        if not ok:
            raise ValueError(f"{source}: {f.name!r} is {value!r}; expected {expected}")


def _is_type(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _type_name(kind: type, plural: bool = False) -> str:
    names = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
             str: ("text", "texts"), bool: ("true or false", "booleans")}
    return names.get(kind, (kind.__name__, kind.__name__))[plural]


def check_model_limits(values: dict[str, Any], *, source: str) -> None:
    """Ranges, and the parameter count (counted on the meta device: nothing is allocated)."""
    for name, (low, high) in LIMITS.items():
        if name not in values:
            continue
        for v in (values[name] if isinstance(values[name], (list, tuple)) else [values[name]]):
            if not low <= v <= high:
                raise ValueError(f"{source}: {name!r} is {values[name]!r}; expected values in "
                                 f"[{low:g}, {high:g}]")
    low, high = values.get("logvar_min", -10.0), values.get("logvar_max", 10.0)
    if low >= high:
        raise ValueError(f"{source}: logvar_min {low!r} must be below logvar_max {high!r}")
    config = model_config_from_dict(values, source=source)
    if len(config.conv_channels) < N_CONVS[config.image_size]:
        raise ValueError(f"{source}: 'conv_channels' has {len(config.conv_channels)} value(s); "
                         f"{config.image_size} px images need {N_CONVS[config.image_size]}")
    with torch.device("meta"):
        count = sum(p.numel() for p in VAE(config).parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{source}: the network it describes has {count:,} parameters; the "
                         f"limit is {MAX_PARAMETERS:,}")


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> VAE:
    """Build the VAE from config.json and load its safetensors weights. Everything is checked
    before it is used: config.json's types and ranges before the network is built, the weight
    file's names, shapes and dtypes (its header) before a tensor is read, and the values
    (finite) before they are loaded."""
    model_dir = Path(model_dir)
    config, _, _ = read_model_config(model_dir)
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: weights file not found")
    with torch.device("meta"):
        expected = VAE(config).state_dict()
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                      for name in f.keys()}
    except Exception as e:  # a malformed header, whatever safetensors raises for it
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    check_state_dict(expected, {n: shape for n, (shape, _) in header.items()}, source=str(weights_path))
    wrong = {n: d for n, (_, d) in header.items() if d != "F32"}
    if wrong:
        name, dtype = next(iter(sorted(wrong.items())))
        raise ValueError(f"{weights_path}: tensor {name!r} is {dtype}; expected F32 (float32) "
                         f"for every tensor ({len(wrong)} are not)")
    state = load_file(str(weights_path))
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{weights_path}: tensor {name!r} has {bad} NaN/Inf value(s); "
                             "expected finite weights")
    vae = VAE(config)
    vae.load_state_dict(state)
    return vae.to(device).eval()


def check_state_dict(expected: VAE | dict[str, Any], state: dict[str, Any], *, source: str) -> None:
    """Names and shapes of `state` (tensors, or shapes) against a VAE or its state dict."""
    expected = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: tensors do not match config.json: missing {missing}, "
                         f"unexpected {unexpected}")
    for name, tensor in expected.items():
        shape = tuple(getattr(state[name], "shape", state[name]))
        if shape != tuple(tensor.shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {shape}, "
                             f"but config.json implies {tuple(tensor.shape)}")
