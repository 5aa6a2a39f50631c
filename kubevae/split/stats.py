"""Normalization statistics, fit on the training split only.

Computing them on all the data would let test pixels shape the preprocessing that the model is
evaluated with (Kapoor & Narayanan's "preprocessing on training and test set" leakage).
Values are per channel, in [0, 1] pixel units, as kubevae.training.data reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kubevae.data.dataset import ImageRows

STATS_FILE = "stats.json"
MIN_STD = 1e-3  # a constant channel must not divide by 0


def channel_stats(images: ImageRows, indices: np.ndarray | None = None,
                  chunk: int = 4096) -> dict[str, Any]:
    """Exact per-channel mean and (population) std of uint8 N x H x W x C images (the rows
    `indices` only, when given), streamed in chunks so that a memory-mapped array is never
    copied whole."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("stats: the training split is empty; nothing to fit statistics on")
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    for start in range(0, len(indices), chunk):
        rows = images[indices[start:start + chunk]]
        block = np.asarray(rows, dtype=np.float64).reshape(-1, channels) / 255.0
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    count = len(indices) * int(np.prod(images.shape[1:-1]))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": np.maximum(std, MIN_STD).tolist(),
            "fit_on": "train", "num_items": int(len(indices)), "units": "[0, 1] pixel intensity"}
