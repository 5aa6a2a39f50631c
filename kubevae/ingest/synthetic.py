"""Natural-ish test images and planted near duplicates (for tests and benchmarks/dedup.py).

Sprites are sparse binary images; perceptual hashes behave differently on photographs, so the
leakage tests also use:
- `scenes`: 64x64 views of scikit-learn's two bundled sample photographs (china.jpg, flower.jpg,
  no download), cut from a grid of tiles so that no two overlap;
- `textures`: procedural smooth colour fields with shapes, all distinct, for any number of images;
- the variants a leak usually takes: JPEG re-encode, 1-pixel shift, brightness change.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def scenes(size: int = 64, rows: int = 2, cols: int = 3) -> np.ndarray:
    """rows x cols non-overlapping tiles of each sample photo, resized: uint8 N x size x size x 3."""
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        h, w = photo.shape[0] // rows, photo.shape[1] // cols
        side = min(h, w)
        for r in range(rows):
            for c in range(cols):
                tile = photo[r * h:r * h + side, c * w:c * w + side]
                out.append(np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(out)


def textures(n: int, size: int = 64, seed: int = 0, chunk: int = 2048) -> np.ndarray:
    """n distinct colour images: six random plane waves (up to 5 cycles, any direction) plus
    three random discs. Varied enough that their perceptual hashes rarely meet by chance (at
    100,000 images, no chain of near duplicates joins many of them)."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = grid[:, None], grid[None, :]
    out = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        field = np.zeros((k, size, size, 3), np.float32)
        for _ in range(6):
            fx, fy = rng.uniform(-5.0, 5.0, (2, k, 1, 1)).astype(np.float32)
            phase = rng.uniform(0, 2 * np.pi, (k, 1, 1)).astype(np.float32)
            wave = np.sin(2 * np.pi * (fx * x + fy * y) + phase)
            field += wave[..., None] * rng.uniform(-60, 60, (k, 1, 1, 3)).astype(np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(0.1, 0.9, (2, k, 1, 1)).astype(np.float32)
            radius = rng.uniform(0.08, 0.3, (k, 1, 1)).astype(np.float32)
            disc = ((x - cx) ** 2 + (y - cy) ** 2 < radius ** 2)
            field += disc[..., None] * rng.uniform(-90, 90, (k, 1, 1, 3)).astype(np.float32)
        field += rng.uniform(70, 185, (k, 1, 1, 3)).astype(np.float32)
        out[start:start + k] = np.clip(field, 0, 255).astype(np.uint8)
    return out


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """Re-encode as JPEG and decode again (what a re-saved copy looks like)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def shift(image: np.ndarray, dy: int = 0, dx: int = 1) -> np.ndarray:
    """Move the content by (dy, dx) pixels, repeating the edge (a crop offset by one pixel)."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    return padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def brighten(image: np.ndarray, delta: int = 8) -> np.ndarray:
    return np.clip(image.astype(np.int16) + delta, 0, 255).astype(np.uint8)


def scale(image: np.ndarray, factor: float = 0.95) -> np.ndarray:
    return np.clip(np.rint(image * factor), 0, 255).astype(np.uint8)
