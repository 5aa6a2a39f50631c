"""The images a training run reads: a dataset or split folder, or the built-in sprites.

Images stay uint8 N x H x W x C tensors. On CUDA the whole array moves to the GPU once; batches
are gathered by index and converted to float on the device, so nothing is decoded per sample.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubevae.data import load_splits, sprites
from kubevae.split.stats import channel_stats
from kubevae.storage import read_json

BUILTIN_DATASETS = ("sprites",)
VAL_FRACTION = 0.1


@dataclass
class TrainingData:
    train: torch.Tensor
    val: torch.Tensor | None
    mean: list[float]
    std: list[float]
    source: dict[str, Any] = field(default_factory=dict)
    # Builds the ground truth of the validation images when the data has factor columns. Called
    # only by a run that scores a search objective: kubevae.metrics imports scikit-learn and
    # SciPy, seconds of start-up that a plain training run (each of its processes) is spared.
    load_ground_truth: Callable[[], Any] | None = field(default=None, repr=False)

    @functools.cached_property
    def val_ground_truth(self) -> Any:
        """kubevae.metrics.GroundTruthData of the validation images (N x K factors): what the
        search objectives val_mig, val_factor_vae and val_dci are computed from; None without
        factor columns."""
        return self.load_ground_truth() if self.load_ground_truth else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def load(data: str | None, dataset: str | None, dataset_size: int, seed: int) -> TrainingData:
    if dataset and not data:
        return _builtin(dataset, dataset_size, seed)
    if data and not dataset:
        return _from_folder(Path(data))
    raise ValueError("give exactly one of --data DIR (a dataset or split folder) or "
                     f"--dataset NAME (built-in: {', '.join(BUILTIN_DATASETS)})")


def _from_folder(path: Path) -> TrainingData:
    splits = load_splits(path)
    train = splits["train"]
    if train is None or len(train) == 0:  # (load_splits opens a train split, or raises)
        raise ValueError(f"{path}: the training split is empty")
    images = torch.from_numpy(np.array(train.images))  # into memory (shards are read-only maps)
    val = splits.get("val")
    stats_path = path / "stats.json"
    if stats_path.is_file():
        stats = read_json(stats_path)
        mean, std = stats["mean"], stats["std"]
    else:
        mean, std = _stats(images)
    ground_truth = None
    if val is not None and len(val) and val.factor_names:
        def ground_truth():
            from kubevae.metrics import GroundTruthData

            return GroundTruthData.from_dataset(val)  # counts items with missing factors
    return TrainingData(images, torch.from_numpy(np.array(val.images)) if val else None,
                        mean, std, {"data": str(path), "content_sha256": train.info.get("content_sha256")},
                        load_ground_truth=ground_truth)


def _builtin(name: str, size: int, seed: int) -> TrainingData:
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"--dataset: expected one of {BUILTIN_DATASETS}, got {name!r}")
    images, manifest = sprites.generate(size, seed)
    # A stable 10% hold-out by item id. Built-in sprites only: user data goes through
    # `kubevae split`, which also groups duplicates so that none straddles the split.
    is_val = np.array([_bucket(i) < VAL_FRACTION for i in manifest["item_id"]])
    train, val = torch.from_numpy(images[~is_val]), torch.from_numpy(images[is_val])
    mean, std = _stats(train)
    ground_truth = None
    if len(val):
        factors = manifest[[f"factor_{n}" for n in sprites.FACTOR_NAMES]].to_numpy(np.int64)[is_val]

        def ground_truth():
            from kubevae.metrics import GroundTruthData

            return GroundTruthData(images[is_val], factors, factor_sizes=sprites.FACTOR_SIZES,
                                   factor_names=sprites.FACTOR_NAMES)
    return TrainingData(train, val if len(val) else None, mean, std,
                        {"dataset": name, "dataset_size": size, "seed": seed},
                        load_ground_truth=ground_truth)


def _stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units: the split step's estimator (one in the code base)."""
    stats = channel_stats(images.numpy())
    return stats["mean"], stats["std"]


def _bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
