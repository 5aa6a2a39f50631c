"""The copies users make of an image, for calibration, the tests and benchmarks/dedup.py.

Each kind takes and returns a uint8 H x W x C image of the same size. The set follows the
copies that leak in practice: a crop offset by up to 2 pixels, a JPEG re-save at quality 70,
brightness and contrast edits, mild sensor noise and a resample round trip (28 -> 32 -> 28 px).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from kubevae.ingest import synthetic

MAX_SHIFT = 2
JPEG_QUALITY = 70
NOISE_STD = 4.0  # grey levels: mild sensor noise


def _noise(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, NOISE_STD, image.shape), 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, factor: float = 0.8, offset: float = 20.0) -> np.ndarray:
    return np.clip(np.rint(image * factor + offset), 0, 255).astype(np.uint8)


def rescale_round_trip(image: np.ndarray) -> np.ndarray:
    """Up by 8/7 and back (28 -> 32 -> 28 px), bilinear: a copy that went through a resize."""
    h, w = image.shape[:2]
    mode = "L" if image.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
    up = pil.resize((max(w + 1, w * 8 // 7), max(h + 1, h * 8 // 7)), Image.Resampling.BILINEAR)
    out = np.asarray(up.resize((w, h), Image.Resampling.BILINEAR))
    return out[..., None] if mode == "L" else out


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    if image.shape[-1] == 1:
        import io

        buffer = io.BytesIO()
        Image.fromarray(image[..., 0], "L").save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer))[..., None]
    return synthetic.jpeg(image, quality)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return synthetic.shift(image, dy, dx)


KINDS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "shift_2_2": lambda im, s: _shift(im, MAX_SHIFT, -MAX_SHIFT),
    "shift_1": lambda im, s: _shift(im, -1, 1) if s % 2 else _shift(im, 1, 0),
    "jpeg_70": lambda im, s: jpeg(im),
    "brighter_25": lambda im, s: synthetic.brighten(im, 25),
    "contrast_0.8": lambda im, s: _contrast(im),
    "noise_4": lambda im, s: _noise(im, s),
    "rescale_8/7": lambda im, s: rescale_round_trip(im),
    "shift_jpeg_noise": lambda im, s: jpeg(_noise(_shift(im, 1, -2), s), 75),
}


def make_copy(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    image = np.asarray(image)
    squeeze = image.ndim == 2
    out = KINDS[kind](image[..., None] if squeeze else image, seed)
    return out[..., 0] if squeeze else out
