"""Pixels: the one home of kubevae's image conversions, and image grids for people to look at.

Conversions (every other module calls these; none writes its own):
    to_unit         uint8 N x H x W x C tensor -> float N x C x H x W in [0, 1] (the model's input)
    to_uint8_hwc    float N x C x H x W tensor in [0, 1] -> uint8 N x H x W x C array (its output)
    unit_float      uint8 [0, 255] or float [0, 1] N x H x W x C array -> float32 [0, 1]
    to_uint8        float [0, 1] (or uint8) array -> uint8, rounded and clipped
    png_bytes       uint8 H x W x C array -> PNG bytes;  from_png: PNG bytes -> uint8 H x W x C
torch is imported only by the functions that take tensors, so that kubevae.client (httpx and
numpy) can use the array ones without it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


# -- conversions ------------------------------------------------------------------------------
def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1] (a channels_last view: no copy
    until the division, which runs wherever the tensor already is)."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [0, 1] -> uint8 N x H x W x C (contiguous, on the CPU)."""
    import torch

    return (images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
            .permute(0, 2, 3, 1).contiguous().cpu().numpy())


def unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] N x H x W x C -> float32 [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32, copy=False)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], rounded and clipped; uint8 passes through."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images.astype(np.float64) * 255), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 H x W x C (C = 1 or 3) -> PNG (grayscale or RGB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """PNG -> uint8 H x W x C (grayscale gets C = 1). Untrusted input: see serving.codec, which
    checks the header's size and mode before it decodes."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


# -- grids ------------------------------------------------------------------------------------
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


def reconstruction_grid(vae, x: torch.Tensor, n: int = 8) -> np.ndarray:
    """Top row: inputs; bottom row: reconstructions from the posterior mean."""
    import torch

    with torch.no_grad():
        x = x[:n]
        mu, _ = vae.encode(x)
        return grid([to_uint8_hwc(x), to_uint8_hwc(vae.mean_image(vae.decode(mu)))])


def samples_grid(vae, n: int = 32, seed: int = 0, per_row: int = 8) -> np.ndarray:
    import torch

    with torch.no_grad():
        samples = to_uint8_hwc(vae.sample(n, torch.Generator().manual_seed(seed)))
    return grid([samples[i:i + per_row] for i in range(0, n, per_row)])
