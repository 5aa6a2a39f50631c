"""The one batched encoder: posterior means and log-variances of uint8 images.

Every place that needs codes (the evaluate step, the gate, the trials' scorers, UDR) encodes
through `encode`, in eval mode and in batches, into float64 numpy arrays (what the metrics take).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from kubevae.model import VAE


@torch.no_grad()
def encode(vae: VAE, images_uint8, *, batch_size: int = 256, device: str | torch.device = "cpu",
           progress_desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar), each float64 [N, D], of uint8 N x H x W x C images (a numpy array, a
    memory map or a tensor), `batch_size` at a time. The model is put in eval mode meanwhile."""
    batches = range(0, len(images_uint8), batch_size)
    starts: Iterable[int] = batches
    if progress_desc and len(batches) > 1:
        from kubevae.progress import progress

        starts = progress(batches, desc=progress_desc, total=len(batches))
    was_training = vae.training
    vae.eval()
    mus, logvars = [], []
    try:
        for start in starts:
            batch = images_uint8[start:start + batch_size]
            batch = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
            mu, logvar = vae.encode(VAE.to_unit(batch.to(device)))
            mus.append(mu.double().cpu().numpy())
            logvars.append(logvar.double().cpu().numpy())
    finally:
        vae.train(was_training)
    if not mus:
        d = vae.config.latent_dim
        return np.zeros((0, d)), np.zeros((0, d))
    return np.concatenate(mus), np.concatenate(logvars)


def mean_representation(vae: VAE, device: str | torch.device = "cpu", batch_size: int = 256):
    """representation_fn(images_uint8_NHWC) -> E_q[z|x] as float64 [n, D] (what the metrics take)."""
    def represent(images_uint8: np.ndarray) -> np.ndarray:
        return encode(vae, images_uint8, batch_size=batch_size, device=device)[0]
    return represent
