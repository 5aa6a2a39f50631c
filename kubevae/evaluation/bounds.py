"""Likelihood bounds and reconstruction quality, per image, independent of beta.

- negative ELBO at beta = 1: E_q[-log p(x|z)] + KL(q(z|x) || p(z)), one posterior sample, in
  nats per image (the same pixel-sum convention as kubevae.objectives);
- IWAE bound (Burda et al. 2016) with k importance samples:
      -log p(x) <= -log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x),
  batched over samples (k x N latents decoded at once, in chunks), never one image at a time.
  On average it is <= the negative ELBO and does not increase with k;
- PSNR in dB of the posterior-mean reconstruction, for images in [0, 1]; beside it the PSNR of
  the images' own mean image (mean_image_psnr), what a decoder that ignores z can reach: a
  reconstruction below it has learned less than the average picture;
- active units (Burda et al. 2016): latent u is active when Cov_x(E_q[z_u]) > 0.01
  (kubevae.metrics.unsupervised.active_units, the one definition).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kubevae.metrics.unsupervised import ACTIVE_UNIT_THRESHOLD
from kubevae.metrics.unsupervised import active_units as active_units_of_means
from kubevae.model import VAE, kl_divergence

LOG_2PI = math.log(2 * math.pi)


def elbo_terms(vae: VAE, x: torch.Tensor, eps: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction NLL, KL) per image, from one posterior sample (eps ~ N(0, I))."""
    params, mu, logvar = vae(x, eps)
    return -vae.log_likelihood(x, params), kl_divergence(mu.float(), logvar.float()).sum(dim=1)


def neg_elbo(vae: VAE, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    recon, kl = elbo_terms(vae, x, eps)
    return recon + kl


def iwae_nll(vae: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
             max_decoded: int = 4096) -> torch.Tensor:
    """The IWAE-k estimate of -log p(x) per image (nats). Shape: N."""
    if k < 1:
        raise ValueError(f"k: expected at least 1 importance sample, got {k}")
    mu, logvar = vae.encode(x)
    mu, logvar = mu.float(), logvar.float()
    n, d = mu.shape
    std = torch.exp(0.5 * logvar)
    per_chunk = max(1, max_decoded // max(n, 1))
    log_weights = []
    for start in range(0, k, per_chunk):
        s = min(per_chunk, k - start)
        eps = torch.randn(s, n, d, generator=generator, device=mu.device) if generator is None \
            else torch.randn(s, n, d, generator=generator).to(mu.device)
        z = mu + std * eps  # s x N x D
        params = vae.decode(z.reshape(s * n, d))
        log_px_z = vae.log_likelihood(x.repeat(s, 1, 1, 1), params).view(s, n)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(dim=2)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(dim=2)
        log_weights.append(log_px_z + log_pz - log_qz)
    log_w = torch.cat(log_weights, dim=0)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB, for images in [0, 1]; capped at 100 dB for exact copies."""
    mse = (x - x_hat).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def mean_image_psnr(images_uint8, batch_size: int = 1024) -> float:
    """The mean PSNR (dB) of the images against their own mean image."""
    if len(images_uint8) == 0:
        raise ValueError("images: expected at least one image, got 0")
    total = sum((VAE.to_unit(_tensor(images_uint8[start:start + batch_size])).double().sum(dim=0)
                 for start in range(0, len(images_uint8), batch_size)),
                torch.zeros((), dtype=torch.float64))
    mean = (total / len(images_uint8)).float()
    summed = 0.0
    for start in range(0, len(images_uint8), batch_size):
        x = VAE.to_unit(_tensor(images_uint8[start:start + batch_size])).float()
        summed += float(psnr(x, mean.expand_as(x)).sum())
    return summed / len(images_uint8)


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across images (N x D input)."""
    return active_units_of_means(mu.double().cpu().numpy(), threshold) if len(mu) else 0


@torch.no_grad()
def evaluate_images(vae: VAE, images_uint8: torch.Tensor | np.ndarray, *, batch_size: int = 256,
                    iwae_k: int = 0, seed: int = 0, device: str | torch.device = "cpu",
                    max_images: int | None = None, per_image: bool = False) -> dict[str, Any]:
    """Mean bounds and quality over a set of uint8 N x H x W x C images (beta-independent).
    With per_image, result["per_image"] holds each image's negative ELBO (and IWAE NLL) as
    float64 arrays, for paired comparisons of two models on the same images."""
    images = images_uint8  # numpy (often a read-only memory map) or a tensor; sliced per batch
    if max_images is not None:
        images = images[:max_images]
    if len(images) == 0:
        raise ValueError("images: expected at least one image to evaluate, got 0")
    was_training = vae.training
    vae.eval()
    generator = torch.Generator().manual_seed(seed)
    sums = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0, "psnr": 0.0, "iwae_nll": 0.0}
    mus, kl_dims = [], torch.zeros(vae.config.latent_dim, dtype=torch.float64)
    items: dict[str, list[np.ndarray]] = {"neg_elbo": [], "iwae_nll": []}
    for start in range(0, len(images), batch_size):
        x = VAE.to_unit(_tensor(images[start:start + batch_size]).to(device))
        mu, logvar = vae.encode(x)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        recon, kl = elbo_terms(vae, x, eps)
        x_hat = vae.mean_image(vae.decode(mu))
        sums["recon"] += float(recon.sum())
        sums["kl"] += float(kl.sum())
        sums["neg_elbo"] += float((recon + kl).sum())
        sums["psnr"] += float(psnr(x, x_hat).sum())
        items["neg_elbo"].append((recon + kl).double().cpu().numpy())
        if iwae_k > 0:
            bound = iwae_nll(vae, x, iwae_k, generator)
            sums["iwae_nll"] += float(bound.sum())
            items["iwae_nll"].append(bound.double().cpu().numpy())
        mus.append(mu.float().cpu())
        kl_dims += kl_divergence(mu.float(), logvar.float()).sum(dim=0).double().cpu()
    vae.train(was_training)
    n = len(images)
    result: dict[str, Any] = {k: v / n for k, v in sums.items() if k != "iwae_nll" or iwae_k > 0}
    result["active_units"] = active_units(torch.cat(mus))
    result["kl_per_dim"] = (kl_dims / n).tolist()
    result["num_images"] = n
    if iwae_k > 0:
        result["iwae_k"] = iwae_k
    if per_image:
        result["per_image"] = {k: np.concatenate(v) for k, v in items.items() if v}
    return result


def _tensor(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch
