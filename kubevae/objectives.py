"""Training objectives, separate from the model (as in pythae): the encoder and decoder live in
kubevae.model; an objective only turns a batch's reconstruction NLL and posterior into a loss.

Convention (the source of much confusion in public VAE code): the reconstruction term is the
negative log-likelihood SUMMED over pixels and channels, the KL is SUMMED over latent
dimensions, and both are then AVERAGED over the batch. Losses are therefore in nats per image,
beta = 1 is the true (negative) ELBO, and beta means what Higgins et al. 2017 meant. Code that
averages over pixels instead silently divides the reconstruction term by H*W*C, which is the same
as multiplying beta by that factor.

    kind      loss (w(t): the KL warm-up)              what the search's `beta` sets
    beta      recon + w * beta * KL                    beta on the KL (Higgins et al. 2017)
    capacity  recon + w * gamma * |KL - C(t)|          nothing: its weight is gamma
    tcvae     recon + w * (KL + (beta - 1) * TC)       beta on the total correlation
    factor    recon + w * (KL + beta * TC_D)           FactorVAE's gamma on the TC

- capacity (Burgess et al. 2018): C(t) = C_max * min(1, t / capacity_steps); capacity_steps
  defaults to a third of the run (`with_schedule`).
- tcvae (Chen et al. 2018): the KL splits, in expectation over the data, into the index-code
  mutual information, the total correlation TC = KL(q(z) || prod_d q(z_d)) and the
  dimension-wise KL. With weight 1 on the other two, recon + MI + beta * TC + dimKL equals
  recon + KL + (beta - 1) * TC; the closed-form KL carries less noise than the three sampled
  terms (disentanglement_lib's beta_tc_vae computes it so too). TC comes from `tc_terms`, which
  also reports MI and dimKL for the logs.
- factor (Kim & Mnih 2018): TC_D = E[logit_0(z) - logit_1(z)] is the TC that a discriminator
  (`Discriminator`, its own Adam) estimates by the density-ratio trick: it learns to tell
  q(z) from prod_d q(z_d), whose samples are the batch's codes permuted per dimension
  (`permute_dims`). The discriminator steps after the VAE (`Objective.update`).
- w(t) = min(1, t / warmup_steps) is an optional linear KL warm-up (w = 1 when off).

Several processes (DDP): each estimates the TC on its own share of the batch, so a tcvae or
factor run on 2 processes is not step-for-step the 1-process run (a beta or capacity run is).
The discriminator's gradients are averaged over the processes like the VAE's (`distribute`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kubevae.config import ObjectiveConfig
from kubevae.errors import ParameterError
from kubevae.model import LOG_2PI, kl_divergence

# The ObjectiveConfig field that the search's `beta` sets, per kind (None: no such weight).
SEARCHED_WEIGHT: dict[str, str | None] = {"beta": "beta", "capacity": None, "tcvae": "beta",
                                          "factor": "beta"}


def searched_weight(kind: str) -> str:
    """The weight a search over `beta` varies for this objective; an error for capacity."""
    if kind not in SEARCHED_WEIGHT:
        raise ParameterError("objective", f"one of {sorted(SEARCHED_WEIGHT)}", kind)
    weight = SEARCHED_WEIGHT[kind]
    if weight is None:
        raise ParameterError("objective", "an objective whose weight the search's beta sets "
                             "(beta, tcvae or factor; capacity's weight is gamma)", kind)
    return weight


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf. Training stops: a skipped step would hide the cause."""


@dataclass
class Posterior:
    """q(z|x) of a batch and the code drawn from it: mu, logvar and z, each N x D."""

    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor

    @classmethod
    def sample(cls, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> Posterior:
        mu, logvar = mu.float(), logvar.float()
        return cls(mu, logvar, mu + torch.exp(0.5 * logvar) * eps.to(mu.device, torch.float32))

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per image, closed form, summed over latents. Shape: N."""
        return kl_divergence(self.mu, self.logvar).sum(dim=1)


@dataclass
class LossTerms:
    loss: torch.Tensor
    recon: torch.Tensor  # mean over the batch of the per-image reconstruction NLL (nats)
    kl: torch.Tensor  # mean over the batch of the per-image KL (nats)
    kl_weight: float  # the multiplier on the KL term at this step (beta * w or gamma * w)
    capacity: float  # C(t), 0 but for the capacity objective
    tc: torch.Tensor | None = None  # the total-correlation estimate (tcvae, factor)
    tc_weight: float = 0.0  # its multiplier: (beta - 1) * w for tcvae, beta * w for factor

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.loss), "recon": float(self.recon), "kl": float(self.kl),
               "kl_weight": self.kl_weight, "capacity": self.capacity}
        if self.tc is not None:
            out.update(tc=float(self.tc), tc_weight=self.tc_weight)
        return out


def with_schedule(config: ObjectiveConfig, total_steps: int,
                  dataset_size: int | None = None) -> ObjectiveConfig:
    """The config resolved for a run of total_steps over dataset_size training images: C
    reaches C_max a third of the way through unless capacity_steps says otherwise, and the TC
    estimator's N is the training split's size unless dataset_size_tc says otherwise."""
    if config.capacity_steps == 0:
        config = dataclasses.replace(config, capacity_steps=max(1, total_steps // 3))
    if config.dataset_size_tc == 0 and dataset_size:
        config = dataclasses.replace(config, dataset_size_tc=dataset_size)
    return config


# -- the total correlation, by sampling (Chen et al. 2018) ---------------------------------------
def log_density_gaussian(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) elementwise."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def log_importance_weights(batch_size: int, dataset_size: int, estimator: str,
                           device: torch.device | None = None) -> torch.Tensor:
    """log w[i, j]: the weight of q(z_i | x_j) in the estimate of q(z_i), B x B.

    mws (minibatch-weighted): 1 / (N B) for every j, as Chen et al.'s eq. and code.
    mss (minibatch-stratified): 1/N on j = i, (N - M) / (N M) on one other sample (the next,
    cyclically) standing for the rest of the data, 1/M on the M - 1 others (M = B - 1): each
    row sums to one. (Chen et al.'s code sets that one sample with a strided index that gives
    one row two of them; the rows here follow the paper.)"""
    if batch_size < 2:
        raise ParameterError("batch_size", "at least 2 per process for a TC estimate", batch_size)
    if dataset_size < batch_size:
        raise ParameterError("dataset_size_tc", f"at least the batch ({batch_size})", dataset_size)
    n, b = float(dataset_size), batch_size
    if estimator == "mws":
        return torch.full((b, b), -math.log(n * b), device=device)
    if estimator != "mss":
        raise ParameterError("tc_estimator", "mss or mws", estimator)
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, device=device, dtype=torch.float64)
    rows = torch.arange(b, device=device)
    weights[rows, rows] = 1.0 / n
    weights[rows, (rows + 1) % b] = (n - m) / (n * m)
    return weights.log().float()


def tc_terms(posterior: Posterior, dataset_size: int, estimator: str = "mss") -> dict[str, torch.Tensor]:
    """Batch estimates (nats per image) of the index-code MI, the total correlation and the
    dimension-wise KL of Chen et al.'s decomposition, from the codes z drawn from q(z|x).

    log q(z_i) and log q(z_i,d) are importance-weighted mixtures of the batch's posteriors
    (log_importance_weights). The estimate of q(z) is poor when the posteriors barely overlap
    within a batch: at batch 64 the TC comes out low (about -0.4 nats against a true 0.31 for
    3 correlated Gaussian latents, -0.15 at batch 256, -0.05 at 1024: measured against the
    closed form by tests/test_objectives.py). mws's value is also offset by (D - 1) log N, a
    constant: only its gradient means something. (The evaluation's TC of a trained
    model, all its points as one batch, is kubevae.metrics.unsupervised.)"""
    z, mu, logvar = posterior.z, posterior.mu, posterior.logvar
    b = z.shape[0]
    log_q_pairs = log_density_gaussian(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # B x B x D
    log_w = log_importance_weights(b, dataset_size, estimator, z.device)
    log_qz = torch.logsumexp(log_w + log_q_pairs.sum(dim=2), dim=1)
    log_qz_product = torch.logsumexp(log_w[:, :, None] + log_q_pairs, dim=1).sum(dim=1)
    log_qz_given_x = log_density_gaussian(z, mu, logvar).sum(dim=1)
    log_pz = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    return {"mi": (log_qz_given_x - log_qz).mean(), "tc": (log_qz - log_qz_product).mean(),
            "dim_kl": (log_qz_product - log_pz).mean()}


# -- the total correlation, by a discriminator (Kim & Mnih 2018) ---------------------------------
def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Each latent dimension shuffled across the batch on its own: samples of prod_d q(z_d)."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, order)


class Discriminator(nn.Module):
    """z -> 2 logits: class 0 "drawn from q(z)", class 1 "from the permuted codes". Trained to
    optimality, logit_0 - logit_1 is log q(z) / prod_d q(z_d), whose mean over q(z) is the TC."""

    def __init__(self, latent_dim: int, width: int = 1000, depth: int = 6):
        super().__init__()
        layers: list[nn.Module] = []
        size = latent_dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.LeakyReLU(0.2)]
            size = width
        self.net = nn.Sequential(*layers, nn.Linear(size, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_ratio(self, z: torch.Tensor) -> torch.Tensor:
        logits = self(z)
        return logits[:, 0] - logits[:, 1]


def discriminator_loss(discriminator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of telling the codes (class 0) from their per-dimension permutation (1)."""
    z = z.detach()
    logits = discriminator(torch.cat([z, permute_dims(z)]))
    labels = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).long().to(z.device)
    return F.cross_entropy(logits, labels)


# -- the objective --------------------------------------------------------------------------------
def tc_multiplier(kind: str, beta):
    """The weight on the TC term before the warm-up: beta - 1 in tcvae, beta in factor."""
    return beta - 1.0 if kind == "tcvae" else beta


def penalized_loss(kind: str, recon, kl, beta, w=1.0, tc=None):
    """The table at the top for beta, tcvae and factor, on batch means; beta may be a tensor
    (one per model when several are trained stacked under torch.func.vmap)."""
    if kind == "beta":
        return recon + w * beta * kl
    if kind not in ("tcvae", "factor") or tc is None:
        raise ValueError(f"penalized_loss: {kind!r} needs its TC estimate (or is not beta, "
                         "tcvae or factor)")
    return recon + w * kl + w * tc_multiplier(kind, beta) * tc


class Objective:
    """The loss of one objective; for factor it also owns the discriminator and its optimizer."""

    def __init__(self, config: ObjectiveConfig, latent_dim: int | None = None,
                 device: torch.device | str = "cpu"):
        if config.kind == "capacity" and config.capacity_steps < 1:
            raise ValueError("capacity_steps: unresolved; use with_schedule(config, total_steps)")
        if config.kind == "tcvae" and config.dataset_size_tc < 1:
            raise ValueError("dataset_size_tc: unresolved; use with_schedule(config, total_steps, "
                             "dataset_size)")
        self.config = config
        self.discriminator: Discriminator | None = None
        self.trained_discriminator: nn.Module | None = None  # the module its optimizer steps
        if config.kind == "factor":
            if latent_dim is None:
                raise ValueError("the factor objective needs latent_dim (its discriminator's input)")
            self.discriminator = Discriminator(latent_dim, config.discriminator_width,
                                               config.discriminator_depth).to(device)
            self.trained_discriminator = self.discriminator
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                              lr=config.discriminator_lr, betas=(0.5, 0.9))

    @property
    def estimates_tc(self) -> bool:
        """Whether its loss terms carry a total-correlation estimate (tcvae, factor)."""
        return self.config.kind in ("tcvae", "factor")

    def distribute(self, wrap) -> None:
        """Train the discriminator through `wrap(module)` (DistributedDataParallel), so that its
        gradients are averaged over the processes; the VAE's TC term reads the bare module."""
        if self.discriminator is not None:
            self.trained_discriminator = wrap(self.discriminator)

    def warmup(self, step: int) -> float:
        if self.config.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.config.warmup_steps)

    def capacity(self, step: int) -> float:
        if self.config.kind != "capacity":
            return 0.0
        return self.config.capacity_max * min(1.0, step / self.config.capacity_steps)

    def __call__(self, recon_nll: torch.Tensor, posterior: Posterior, step: int) -> LossTerms:
        """recon_nll per image (shape N), the batch's posterior; step counts optimizer steps."""
        recon, kl = recon_nll.mean(), posterior.kl().mean()
        check_finite(step, recon=recon, kl=kl)
        w, kind, beta = self.warmup(step), self.config.kind, self.config.beta
        tc, tc_weight, capacity = None, 0.0, 0.0
        if kind == "beta":
            weight = beta * w
            loss = penalized_loss(kind, recon, kl, beta, w)
        elif kind == "capacity":
            weight, capacity = self.config.gamma * w, self.capacity(step)
            loss = recon + weight * (kl - capacity).abs()
        else:
            if kind == "tcvae":
                tc = tc_terms(posterior, self.config.dataset_size_tc, self.config.tc_estimator)["tc"]
            else:
                tc = self.tc_discriminated(posterior.z)
            check_finite(step, tc=tc)
            weight, tc_weight = w, tc_multiplier(kind, beta) * w
            loss = penalized_loss(kind, recon, kl, beta, w, tc)
        check_finite(step, loss=loss)
        return LossTerms(loss, recon.detach(), kl.detach(), weight, capacity,
                         None if tc is None else tc.detach(), tc_weight)

    def tc_discriminated(self, z: torch.Tensor) -> torch.Tensor:
        """FactorVAE's TC estimate: the discriminator's mean log density ratio on the codes."""
        if self.discriminator is None:
            raise ValueError(f"objective {self.config.kind!r} has no discriminator")
        return self.discriminator.log_ratio(z).mean()

    def update(self, posterior: Posterior) -> float | None:
        """After the VAE's step: one discriminator step on the batch's codes (factor only).
        Returns its loss. The VAE's backward left gradients on the discriminator; they go."""
        if self.trained_discriminator is None:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss = discriminator_loss(self.trained_discriminator, posterior.z)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the objective: the discriminator and its optimizer."""
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.discriminator is None or not state:
            return
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


def check_finite(step: int, **terms: torch.Tensor) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"step {step}: loss term '{name}' is {float(value)} (not finite); training "
                f"stopped. Lower --lr, check the input data, or resume from an earlier checkpoint.")
