"""Training objectives for beta-VAEs, separate from the model.

Convention (the source of much confusion in public VAE code): the reconstruction term is the
negative log-likelihood SUMMED over pixels and channels, the KL is SUMMED over latent
dimensions, and both are then AVERAGED over the batch. Losses are therefore in nats per image,
beta = 1 is the true (negative) ELBO, and beta means what Higgins et al. 2017 meant. Code that
averages over pixels instead silently divides the reconstruction term by H*W*C, which is the same
as multiplying beta by that factor.

- beta-VAE (Higgins et al. 2017):      recon + w(t) * beta * KL
- capacity (Burgess et al. 2018):      recon + w(t) * gamma * |KL - C(t)|,
                                       C(t) = C_max * min(1, t / capacity_steps)
  capacity_steps defaults to a third of the run (`with_schedule`), see ObjectiveConfig.
- w(t) = min(1, t / warmup_steps) is an optional linear KL warm-up (w = 1 when off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kubevae.config import ObjectiveConfig


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf. Training stops: a skipped step would hide the cause."""


@dataclass
class LossTerms:
    loss: torch.Tensor
    recon: torch.Tensor  # mean over the batch of the per-image reconstruction NLL (nats)
    kl: torch.Tensor  # mean over the batch of the per-image KL (nats)
    kl_weight: float  # the multiplier on the KL term at this step (beta * w or gamma * w)
    capacity: float  # C(t), 0 for the beta objective

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.loss), "recon": float(self.recon), "kl": float(self.kl),
                "kl_weight": self.kl_weight, "capacity": self.capacity}


def with_schedule(config: ObjectiveConfig, total_steps: int) -> ObjectiveConfig:
    """The config with its capacity schedule resolved for a run of total_steps: C reaches C_max
    a third of the way through unless capacity_steps says otherwise."""
    if config.capacity_steps > 0:
        return config
    return dataclasses.replace(config, capacity_steps=max(1, total_steps // 3))


class Objective:
    def __init__(self, config: ObjectiveConfig):
        if config.kind == "capacity" and config.capacity_steps < 1:
            raise ValueError("capacity_steps: unresolved; use with_schedule(config, total_steps)")
        self.config = config

    def warmup(self, step: int) -> float:
        if self.config.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.config.warmup_steps)

    def capacity(self, step: int) -> float:
        if self.config.kind != "capacity":
            return 0.0
        return self.config.capacity_max * min(1.0, step / self.config.capacity_steps)

    def __call__(self, recon_nll: torch.Tensor, kl: torch.Tensor, step: int) -> LossTerms:
        """recon_nll and kl are per image (shape N); step counts optimizer steps from 0."""
        recon, kl_mean = recon_nll.mean(), kl.mean()
        check_finite(step, recon=recon, kl=kl_mean)
        w = self.warmup(step)
        if self.config.kind == "beta":
            weight, capacity = self.config.beta * w, 0.0
            loss = recon + weight * kl_mean
        else:
            weight, capacity = self.config.gamma * w, self.capacity(step)
            loss = recon + weight * (kl_mean - capacity).abs()
        check_finite(step, loss=loss)
        return LossTerms(loss, recon.detach(), kl_mean.detach(), weight, capacity)


def check_finite(step: int, **terms: torch.Tensor) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"step {step}: loss term '{name}' is {float(value)} (not finite); training "
                f"stopped. Lower --lr, check the input data, or resume from an earlier checkpoint.")
