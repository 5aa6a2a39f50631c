"""Image grids for people to look at: inputs beside reconstructions, samples, traversals."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [0, 1] -> uint8 N x H x W x C."""
    return (images.detach().float().clamp(0, 1).mul(255).round().byte()
            .permute(0, 2, 3, 1).cpu().numpy())


def grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Tile rows of uint8 N x H x W x C images into one H' x W' x 3 image (grey padding)."""
    n_cols = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    out = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 128, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = rgb
    return out


@torch.no_grad()
def reconstruction_grid(vae, x: torch.Tensor, n: int = 8) -> np.ndarray:
    """Top row: inputs; bottom row: reconstructions from the posterior mean."""
    x = x[:n]
    mu, _ = vae.encode(x)
    return grid([to_uint8_hwc(x), to_uint8_hwc(vae.mean_image(vae.decode(mu)))])


@torch.no_grad()
def samples_grid(vae, n: int = 32, seed: int = 0, per_row: int = 8) -> np.ndarray:
    samples = to_uint8_hwc(vae.sample(n, torch.Generator().manual_seed(seed)))
    return grid([samples[i:i + per_row] for i in range(0, n, per_row)])
