"""Anomaly-detection quality of a score (negative ELBO or IWAE NLL: higher = more anomalous).

- anomaly_quality: AUROC (sklearn roc_auc_score) and AUPRC (sklearn average_precision_score,
  anomalies as the positive class) of scores against 0/1 labels (1 = anomaly). AUROC is 0.5 for
  a score that knows nothing; AUPRC is then the fraction of anomalies, reported beside it.
- plant_defects: labeled anomalies for tests and quality runs, made from clean images of the
  sprites kind (a bright object on a uniform background):
    missing_corner  one quadrant of the object's bounding box is set to the background;
    noise           a fraction of the pixels (5%) get uniformly random values;
    second_object   another image of the set is overlaid (pixel-wise maximum), i.e. a second sprite.
  Every planted image differs from its source (a defect that changes no pixel is re-drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from kubevae.metrics._checks import as_generator

DEFECT_KINDS = ("missing_corner", "noise", "second_object")
NOISE_FRACTION = 0.05


def anomaly_quality(scores, labels) -> dict[str, Any]:
    """{"auroc", "auprc", "positive_fraction", "num_anomalies", "num_normal"}."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"labels: {labels.shape[0]} labels for {scores.shape[0]} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels: expected 0 (normal) or 1 (anomaly) for every item")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores: {int((~np.isfinite(scores)).sum())} non-finite scores")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError("labels: need both normal (0) and anomalous (1) items to measure quality")
    return {"auroc": float(roc_auc_score(labels, scores)),
            "auprc": float(average_precision_score(labels, scores)),
            "positive_fraction": positives / len(labels),
            "num_anomalies": positives, "num_normal": len(labels) - positives}


@dataclass
class PlantedDefects:
    images: np.ndarray  # uint8 N x H x W x C: the clean images with defects planted in some
    labels: np.ndarray  # 1 where a defect was planted
    kinds: np.ndarray   # the defect kind per image ("" for clean ones)


def plant_defects(images: np.ndarray, *, kinds=DEFECT_KINDS, fraction: float = 0.5,
                  seed=0) -> PlantedDefects:
    """Plant defects in `fraction` of the images (the kinds in turn); the rest stay clean."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images: expected uint8 N x H x W x C, got {images.dtype} {images.shape}")
    unknown = sorted(set(kinds) - set(DEFECT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds: expected some of {DEFECT_KINDS}, got {list(kinds)}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    if len(images) < 2:
        raise ValueError("images: need at least two images to plant defects")
    rng = as_generator(seed)
    out = images.copy()
    n_defects = max(1, int(round(fraction * len(images))))
    chosen = np.sort(rng.choice(len(images), size=n_defects, replace=False))
    labels = np.zeros(len(images), dtype=np.int64)
    kind_of = np.full(len(images), "", dtype=object)
    for i, index in enumerate(chosen):
        kind = kinds[i % len(kinds)]
        out[index] = _planted(images, int(index), kind, rng)
        labels[index], kind_of[index] = 1, kind
    return PlantedDefects(out, labels, kind_of.astype(str))


def _planted(images: np.ndarray, index: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    image = images[index]
    for _ in range(20):
        if kind == "missing_corner":
            planted = missing_corner(image, rng)
        elif kind == "noise":
            planted = add_noise(image, rng)
        else:
            other = int(rng.integers(len(images) - 1))
            planted = second_object(image, images[other if other < index else other + 1])
        if not np.array_equal(planted, image):
            return planted
    raise ValueError(f"images[{index}]: could not plant a visible {kind!r} defect in 20 tries "
                     f"(is the image blank?)")


def _background(image: np.ndarray) -> np.ndarray:
    """The background colour: the most common colour of the border pixels."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    colours, counts = np.unique(border.reshape(-1, image.shape[2]), axis=0, return_counts=True)
    return colours[np.argmax(counts)]


def missing_corner(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut one quadrant (drawn at random) of the object's bounding box to the background."""
    background = _background(image)
    ys, xs = np.nonzero((image != background).any(axis=2))
    if len(ys) == 0:
        return image.copy()
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    corner = int(rng.integers(4))
    rows = slice(y0, max(ym, y0 + 1)) if corner < 2 else slice(ym, y1)
    cols = slice(x0, max(xm, x0 + 1)) if corner % 2 == 0 else slice(xm, x1)
    out = image.copy()
    out[rows, cols] = background
    return out


def add_noise(image: np.ndarray, rng: np.random.Generator,
              fraction: float = NOISE_FRACTION) -> np.ndarray:
    """Replace `fraction` of the pixels (all channels) with uniformly random values."""
    out = image.copy()
    h, w = image.shape[:2]
    mask = rng.random((h, w)) < fraction
    out[mask] = rng.integers(0, 256, size=(int(mask.sum()), image.shape[2]), dtype=np.uint8)
    return out


def second_object(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Overlay another image: the pixel-wise maximum (a second bright object on a dark ground)."""
    return np.maximum(image, other)


def anomaly_settings(score: str, num_images: int | None = None, kinds=DEFECT_KINDS,
                     fraction: float | None = None) -> dict[str, Any]:
    return {"score": score, "higher_is_anomalous": True, "num_images": num_images,
            "anomalies": "planted defects" if fraction is not None else "labeled",
            "defect_kinds": list(kinds), "defect_fraction": fraction,
            "noise_fraction": NOISE_FRACTION,
            "auroc": "sklearn roc_auc_score", "auprc": "sklearn average_precision_score"}
