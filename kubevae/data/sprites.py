"""A procedural sprites dataset equivalent to dSprites (Matthey et al. 2017).

64x64 binary images of one sprite (a square, an ellipse or a heart) with five ground-truth
factors, in the order of dSprites (less its single colour):

    shape        3   square, ellipse, heart
    scale        6   linspace(0.5, 1.0)
    orientation 40   linspace(0, 2*pi), as in dSprites (so 0 and 2*pi render the same image)
    pos_x       32   the sprite centre, placed so that the sprite always stays inside the frame
    pos_y       32

The full factorial holds 3*6*40*32*32 = 737,280 images. Item i is the i-th factor combination in
row-major order of the factors above, so every subset is deterministic given the seed that picks
it. Symmetric shapes make exact duplicates across orientations (a square turned by 90 degrees):
real leakage that the split step must group.

`zoom` draws every sprite that many times larger (the positions shrink so that it stays inside
the frame), with the same factors. The default, 1, is the dSprites geometry. A larger zoom suits
small images: resized to 32 px, a dSprites sprite is 4 to 8 px across, and whether it is a
square, an ellipse or a heart lies in a handful of edge pixels (the quick profile uses 1.6).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from kubevae.data.dataset import pixel_sha256

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
NUM_IMAGES = int(np.prod(FACTOR_SIZES))
SCALES = np.linspace(0.5, 1.0, FACTOR_SIZES[1])
ORIENTATIONS = np.linspace(0.0, 2 * math.pi, FACTOR_SIZES[2])
# Circumradius of the sprite at scale 1, in pixels; positions keep it (plus one pixel) inside.
RADIUS = 12.0
POSITIONS = np.linspace(RADIUS + 1, IMAGE_SIZE - 1 - (RADIUS + 1), FACTOR_SIZES[3])
MAX_ZOOM = 2.5  # a sprite of circumradius 30 px (+1) just fits in the 64-px frame


def positions(zoom: float = 1.0) -> np.ndarray:
    """Sprite centres (pixels) for pos_x / pos_y at `zoom`: the sprite always stays inside."""
    if not 0 < zoom <= MAX_ZOOM:
        raise ValueError(f"zoom: expected a number in (0, {MAX_ZOOM}], got {zoom}")
    radius = RADIUS * zoom
    return np.linspace(radius + 1, IMAGE_SIZE - 1 - (radius + 1), FACTOR_SIZES[3])


def factors_of(indices: np.ndarray) -> np.ndarray:
    """Item indices -> factor indices, N x 5."""
    return np.stack(np.unravel_index(np.asarray(indices, np.int64), FACTOR_SIZES), axis=1)


def indices_of(factors: np.ndarray) -> np.ndarray:
    """Factor indices (N x 5) -> item indices."""
    return np.ravel_multi_index(tuple(np.asarray(factors).T), FACTOR_SIZES)


def render(factors: np.ndarray, zoom: float = 1.0) -> np.ndarray:
    """Render sprites for factor indices (N x 5) as uint8 N x 64 x 64 x 1 images in {0, 255}."""
    factors = np.asarray(factors, np.int64)
    shape, scale, angle = factors[:, 0], SCALES[factors[:, 1]] * zoom, ORIENTATIONS[factors[:, 2]]
    centres = positions(zoom)
    cx, cy = centres[factors[:, 3]], centres[factors[:, 4]]
    grid = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)
    # Rotate the pixel grid by -angle into the sprite's frame, in units of its circumradius.
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    r = (RADIUS * scale).astype(np.float32)[:, None, None]
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    inside = np.zeros(u.shape, dtype=bool)
    for shape_id, test in enumerate((_square, _ellipse, _heart)):
        rows = shape == shape_id
        if rows.any():
            inside[rows] = test(u[rows], v[rows])
    return (inside[..., None] * np.uint8(255)).astype(np.uint8)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    half = 1 / math.sqrt(2)
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u**2 + (v / 0.5) ** 2 <= 1.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled and centred to fit the unit disk, point up.
    x, y = 1.35 * u, -1.35 * v + 0.125
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def sample_indices(n: int | None, seed: int = 0) -> np.ndarray:
    """n distinct item indices drawn with `seed` (sorted), or all of them when n is None."""
    if n is None or n >= NUM_IMAGES:
        return np.arange(NUM_IMAGES)
    if n < 1:
        raise ValueError(f"n: expected a positive number of sprites, got {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(NUM_IMAGES, size=n, replace=False))


def iter_chunks(indices: np.ndarray, chunk: int = 4096) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), chunk):
        yield render(factors_of(indices[start:start + chunk]))


def manifest_for(indices: np.ndarray, images: np.ndarray | None = None) -> pd.DataFrame:
    factors = factors_of(indices)
    frame = pd.DataFrame({
        "item_id": [f"sprite-{i:06d}" for i in indices],
        "source_uri": [f"builtin://sprites/{i}" for i in indices],
        "label": [SHAPES[s] for s in factors[:, 0]],
    })
    if images is not None:
        frame["sha256"] = [pixel_sha256(img) for img in images]
    for k, name in enumerate(FACTOR_NAMES):
        frame[f"factor_{name}"] = factors[:, k]
    return frame


def generate(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Images (uint8 N x 64 x 64 x 1) and their manifest, for n sprites drawn with `seed`."""
    indices = sample_indices(n, seed)
    images = np.concatenate(list(iter_chunks(indices))) if len(indices) else \
        np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    return images, manifest_for(indices, images)


def write(out_dir, n: int | None = None, seed: int = 0):
    """Write n sprites (all 737,280 when None) as a dataset folder."""
    from kubevae.data.dataset import write_dataset

    images, manifest = generate(n, seed)
    card = {"name": "sprites (procedural dSprites equivalent)", "source": "builtin://sprites",
            "seed": seed, "license": "generated; no restrictions"}
    return write_dataset(out_dir, images, manifest, factor_names=FACTOR_NAMES,
                         factor_sizes=FACTOR_SIZES, card=card)
