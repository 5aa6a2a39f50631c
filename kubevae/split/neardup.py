"""Near duplicates from the pixels: candidates by nearest neighbours, then a verification.

A perceptual hash cannot do this alone: on small, low-texture images (digits) distinct images
lie closer in Hamming distance than a 1-pixel shift moves a copy, so any one radius either
chains everything or misses the shifted copies. Here:

1. Working image: luma, area-resized to at most 64 px a side (native when smaller), smoothed
   with a 3x3 binomial filter (halves the noise and JPEG ringing; strokes survive).
2. Candidates: each working image is pooled to 8 x 8 (64 numbers, zero mean, unit norm). faiss (inner product; exact below 20,000 items, an
   IVF index above) returns the K nearest images to the descriptor of each image and of the same
   image shifted by every whole working pixel up to 2 (24 shifts), so a shifted copy is found
   from whichever query lines up with it. Pairs whose descriptor similarity is below CANDIDATE_GATE are dropped;
   of the rest, each image keeps its VERIFY_PER_ITEM most similar neighbours within VERIFY_MARGIN
   of its best one (a copy is its original's best match or the original is the copy's; a family
   of several copies is joined through its members). Verifying every neighbour instead cost ~50
   verifications per image. Exact copies (equal sha256) are searched once.
3. Verification: the maximum normalised cross-correlation (Pearson over the overlap, local mean
   and std) over shifts of up to +-2 working pixels, computed for a batch of pairs as one grouped
   convolution. Invariant to brightness and contrast; JPEG, noise and resampling lower it a little.
   A pair is merged when it reaches the threshold. Near-blank images (std < FLAT_STD grey levels)
   have no correlation to speak of; they are merged when their mean levels differ by at most
   FLAT_LEVELS. Faint pairs (std < CALIBRATION_MIN_STD, where noise costs correlation) are also
   merged when what is left
   after the best shift and level/contrast fit is at most RESIDUAL_LEVELS grey levels (RMS).
4. Threshold: given, or calibrated on the data set itself (see `calibrate`): copies of every
   kind in kubevae.split.planted are made of a sample of its own images (those with a std of at
   least CALIBRATION_MIN_STD grey levels, where correlation means something), and the threshold is set
   just below their 0.5th percentile, within [MIN_THRESHOLD, MAX_THRESHOLD]. Dense data (blurry
   upscaled digits, whose distinct images correlate at 0.99) gets a strict threshold, sharp data
   (MNIST-like digits, whose JPEG copies correlate at 0.97) a looser one.

Because every merge is verified, a loose candidate search cannot chain distinct images together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

WORK_MAX_SIDE = 64
DESCRIPTOR_SIDE = 8
MAX_SHIFT = 2                 # working pixels, in each direction
NEIGHBOURS = 8                # per query
CANDIDATE_GATE = 0.85         # descriptor cosine below which a candidate is not verified
VERIFY_PER_ITEM = 5           # each image's best few neighbours are verified...
VERIFY_MARGIN = 0.05          # ...when within this cosine of its best one
EXACT_SEARCH_MAX = 20_000     # items; above, an IVF index
NPROBE = 8
QUERY_BLOCK = 65536
FLAT_STD = 2.0                # grey levels (0..255) of the working image
FLAT_LEVELS = 12.0
MIN_THRESHOLD, MAX_THRESHOLD = 0.90, 0.995
CALIBRATION_SAMPLE = 300
CALIBRATION_QUANTILE = 0.005
CALIBRATION_MARGIN = 0.003
CALIBRATION_MIN_STD = 20.0    # grey levels: calibrate on images with contrast to correlate
RESIDUAL_LEVELS = 3.0         # low-contrast pairs: merged when they differ by this little
RESIDUAL_MIN_NCC = 0.5
MIN_STD_RATIO = 0.7            # contrast edits of a copy: at most 30% either way
MAX_LEVEL_SHIFT = 64.0        # brightness edits of a copy: at most 64 grey levels
CHUNK = 8192
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class NearDuplicates:
    pairs: np.ndarray                 # P x 2 item indices, i < j, verified
    similarity: np.ndarray            # P: max NCC (1.0 for two near-blank images)
    threshold: float
    threshold_source: str
    calibration: dict[str, Any]
    search: dict[str, Any]
    near_misses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    near_miss_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _smooth(x: np.ndarray) -> np.ndarray:
    """3x3 binomial filter of float32 N x h x w, edges repeated (separable, in numpy)."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    x = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]
    return (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) * np.float32(1 / 16)


def working_images(images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """uint8 N x h x w luma, at most WORK_MAX_SIDE a side, smoothed (streamed over a memmap)."""
    n, height, width = images.shape[0], images.shape[1], images.shape[2]
    scale = min(1.0, WORK_MAX_SIDE / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    out = np.empty((n, h, w), np.uint8)
    for start in range(0, n, chunk):
        block = np.asarray(images[start:start + chunk])
        gray = block[..., 0].astype(np.float32) if block.shape[-1] == 1 \
            else block[..., :3].astype(np.float32) @ _LUMA
        if (h, w) != (height, width):
            gray = F.interpolate(torch.from_numpy(np.ascontiguousarray(gray))[:, None],
                                 size=(h, w), mode="area")[:, 0].numpy()
        out[start:start + chunk] = np.clip(np.rint(_smooth(gray)), 0, 255).astype(np.uint8)
    return out


def _statistics(work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    means = np.empty(len(work), np.float32)
    stds = np.empty(len(work), np.float32)
    for start in range(0, len(work), CHUNK):
        block = work[start:start + CHUNK].reshape(min(CHUNK, len(work) - start), -1).astype(np.float32)
        means[start:start + CHUNK] = block.mean(1)
        stds[start:start + CHUNK] = block.std(1)
    return means, stds


def descriptors(work: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """float32 N x 64: pooled, zero mean, unit norm; `shift` moves the content (dy, dx) by whole
    pixels (edge pixels repeat)."""
    n, h, w = work.shape
    dy, dx = shift
    pad = max(abs(dy), abs(dx))
    out = np.empty((n, DESCRIPTOR_SIDE * DESCRIPTOR_SIDE), np.float32)
    for start in range(0, n, CHUNK):
        x = work[start:start + CHUNK]
        if pad:
            x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
            x = x[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        pooled = F.adaptive_avg_pool2d(t, DESCRIPTOR_SIDE).flatten(1)
        pooled = pooled - pooled.mean(1, keepdim=True)
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-6)
        out[start:start + CHUNK] = pooled.numpy()
    return out


# Every whole-pixel shift up to MAX_SHIFT: with only the 2-px ones, a 1-px copy scores below
# the aligned queries of distinct images and falls out of its original's best few (measured on
# 30,000 digit-like images: 8% of 1-px copies among the candidates with 9 queries, 100% with 25).
QUERY_SHIFTS = [(0, 0)] + [(dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1)
                           for dx in range(-MAX_SHIFT, MAX_SHIFT + 1) if (dy, dx) != (0, 0)]


def _index(base: np.ndarray) -> tuple[Any, str]:
    import faiss

    n, d = base.shape
    if n <= EXACT_SEARCH_MAX:
        index: Any = faiss.IndexFlatIP(d)
        kind = "faiss IndexFlatIP (exact)"
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
        index.train(base[np.sort(sample)])
        index.nprobe = NPROBE
        kind = f"faiss IndexIVFFlat (nlist {nlist}, nprobe {NPROBE})"
    index.add(base)
    return index, kind


def _best_per_item(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, per_item: int,
                   margin: float) -> np.ndarray:
    """Directed pairs (row, id), at most `per_item` per row: its most similar distinct ids, within
    `margin` of its best one. A copy is its original's best match, or the original is the copy's."""
    if not len(rows):
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((-sims, ids, rows))
    rows, ids, sims = rows[order], ids[order], sims[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])   # best shift of each (row, id)
    rows, ids, sims = rows[first], ids[first], sims[first]
    order = np.lexsort((-sims, rows))
    rows, ids, sims = rows[order], ids[order], sims[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[starts, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(starts, counts)
    best = np.repeat(sims[starts], counts)
    keep = (rank < per_item) & (sims >= best - margin)
    return np.stack([rows[keep], ids[keep]], axis=1)


def candidate_pairs(work: np.ndarray, neighbours: int = NEIGHBOURS, gate: float = CANDIDATE_GATE,
                    per_item: int = VERIFY_PER_ITEM,
                    margin: float = VERIFY_MARGIN) -> tuple[np.ndarray, dict[str, Any]]:
    """Unique pairs (i < j) to verify: for each image, its few best neighbours in descriptor space
    (over the shifted queries), above `gate` and within `margin` of its best one. Queried in
    blocks, so memory holds one block's neighbour lists at a time."""
    import faiss

    start = time.monotonic()
    n = len(work)
    faiss.omp_set_num_threads(max(1, min(2, torch.get_num_threads())))
    base = descriptors(work)
    index, kind = _index(base)
    k = min(neighbours + 1, n)
    found, raw = [], 0
    for q0 in range(0, n, QUERY_BLOCK):
        block = work[q0:q0 + QUERY_BLOCK]
        rows_, ids_, sims_ = [], [], []
        for shift in QUERY_SHIFTS:
            query = base[q0:q0 + QUERY_BLOCK] if shift == (0, 0) else descriptors(block, shift)
            sims, ids = index.search(query, k)
            rows = np.repeat(np.arange(q0, q0 + len(ids)), k)
            keep = (ids.ravel() >= 0) & (sims.ravel() >= gate) & (ids.ravel() != rows)
            rows_.append(rows[keep])
            ids_.append(ids.ravel()[keep])
            sims_.append(sims.ravel()[keep])
        rows, ids, sims = np.concatenate(rows_), np.concatenate(ids_), np.concatenate(sims_)
        raw += len(rows)
        pairs = _best_per_item(rows, ids, sims, per_item, margin)
        found.append(np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1]))
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    pairs = np.stack([keys // n, keys % n], axis=1).astype(np.int64)
    return pairs, {"index": kind, "descriptor": f"{DESCRIPTOR_SIDE}x{DESCRIPTOR_SIDE} "
                   "pooled luma", "queries_per_image": len(QUERY_SHIFTS), "neighbours": neighbours,
                   "gate": gate, "per_item": per_item, "margin": margin,
                   "neighbours_above_gate": int(raw), "candidates": int(len(pairs)),
                   "seconds": round(time.monotonic() - start, 3)}


def max_ncc(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Max over shifts |dy|, |dx| <= max_shift of the Pearson correlation between the centre of
    each a (cropped by max_shift) and the window of b at that shift. a, b: P x h x w."""
    p, h, w = a.shape
    r = min(max_shift, (h - 3) // 2, (w - 3) // 2)
    x = torch.from_numpy(np.asarray(a, np.float32))
    y = torch.from_numpy(np.asarray(b, np.float32))
    # One pixel more than the shifts: no window touches b's border, where the smoothing saw
    # padding instead of the neighbours the same content has inside a.
    m = r + 1
    centre = x[:, m:h - m, m:w - m]
    count = centre.shape[1] * centre.shape[2]
    centre = centre - centre.mean(dim=(1, 2), keepdim=True)
    centre_norm = centre.flatten(1).norm(dim=1)
    # Cross-correlation of each pair at every shift: a grouped convolution, one group per pair.
    dots = F.conv2d(y[None], centre[:, None], groups=p)[0][:, 1:-1, 1:-1]   # P x (2r+1)^2
    window = centre.shape[1:]
    mean_y = F.avg_pool2d(y[:, None], window, stride=1)[:, 0, 1:-1, 1:-1]
    mean_y2 = F.avg_pool2d(y[:, None] ** 2, window, stride=1)[:, 0, 1:-1, 1:-1]
    std_y = (mean_y2 - mean_y ** 2).clamp_min(0).sqrt() * math.sqrt(count)
    ncc = dots / (centre_norm[:, None, None] * std_y).clamp_min(1e-3)
    return ncc.flatten(1).max(dim=1).values.clamp(-1, 1).numpy()


def similarity(work: np.ndarray, pairs: np.ndarray, means: np.ndarray, stds: np.ndarray,
               batch: int = 4096) -> np.ndarray:
    """Verified similarity of each pair: symmetric max NCC; 1 or 0 for near-blank images."""
    out = np.zeros(len(pairs), np.float32)
    for start in range(0, len(pairs), batch):
        i, j = pairs[start:start + batch, 0], pairs[start:start + batch, 1]
        a, b = work[i], work[j]
        s = max_ncc(a, b)
        # Low contrast: what is left after the best shift and level/contrast fit, in grey
        # levels. Mild noise on a faint image costs it correlation but leaves this small.
        residual = np.sqrt(stds[i] * stds[j] * np.clip(1 - s * s, 0, 1))
        faint = np.maximum(stds[i], stds[j]) < CALIBRATION_MIN_STD
        s = np.where(faint & (residual <= RESIDUAL_LEVELS) & (s >= RESIDUAL_MIN_NCC), 1.0, s)
        # Correlation ignores level and contrast entirely, so two smooth ramps of very different
        # brightness would correlate like copies; a copy's edits are bounded.
        ratio = np.minimum(stds[i], stds[j]) / np.maximum(np.maximum(stds[i], stds[j]), 1e-6)
        edited = (ratio >= MIN_STD_RATIO) & (np.abs(means[i] - means[j]) <= MAX_LEVEL_SHIFT)
        s = np.where(edited, s, np.minimum(s, 0.0))
        flat_i, flat_j = stds[i] < FLAT_STD, stds[j] < FLAT_STD
        both = flat_i & flat_j
        s = np.where(flat_i | flat_j, 0.0, s)
        s = np.where(both & (np.abs(means[i] - means[j]) <= FLAT_LEVELS), 1.0, s)
        out[start:start + batch] = s
    return out


def flat_pairs(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Near-blank images whose levels differ by at most FLAT_LEVELS: consecutive by level."""
    flat = np.flatnonzero(stds < FLAT_STD)
    if len(flat) < 2:
        return np.zeros((0, 2), np.int64)
    order = flat[np.argsort(means[flat], kind="stable")]
    close = np.diff(means[order]) <= FLAT_LEVELS
    a, b = order[:-1][close], order[1:][close]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)


def calibrate(images: np.ndarray, stds: np.ndarray, sample: int = CALIBRATION_SAMPLE,
              seed: int = 0, rows_of: np.ndarray | None = None) -> dict[str, Any]:
    """Copies of every planted kind of a sample of the data set's own (non-blank) images, and
    the verified similarity of each copy to its original. Threshold: their 0.5th percentile
    less CALIBRATION_MARGIN, kept within [MIN_THRESHOLD, MAX_THRESHOLD]."""
    from kubevae.split import planted

    usable = np.flatnonzero(stds >= CALIBRATION_MIN_STD)
    if len(usable) < 20:
        usable = np.flatnonzero(stds >= FLAT_STD)
    if len(usable) == 0:
        return {"threshold": MAX_THRESHOLD, "sampled_images": 0, "per_kind": {},
                "reason": "every image is near-blank; only blank images are merged"}
    rows = np.sort(np.random.default_rng(seed).choice(usable, min(sample, len(usable)), replace=False))
    if rows_of is not None:   # stds are of a subset of the images: rows_of maps it back
        rows = rows_of[rows]
    originals = np.asarray(images[rows])
    per_kind: dict[str, dict[str, float]] = {}
    pooled = []
    for kind in planted.KINDS:
        copies = np.stack([planted.make_copy(im, kind, seed=int(r)) for im, r in zip(originals, rows, strict=False)])
        both = working_images(np.concatenate([originals, copies]))
        m, s = _statistics(both)
        pairs = np.stack([np.arange(len(rows)), np.arange(len(rows)) + len(rows)], axis=1)
        sims = similarity(both, pairs, m, s)
        pooled.append(sims)
        per_kind[kind] = {"min": round(float(sims.min()), 4),
                          "p0.5": round(float(np.quantile(sims, CALIBRATION_QUANTILE)), 4),
                          "median": round(float(np.median(sims)), 4)}
    allsims = np.concatenate(pooled)
    low = float(np.quantile(allsims, CALIBRATION_QUANTILE))
    threshold = float(np.clip(low - CALIBRATION_MARGIN, MIN_THRESHOLD, MAX_THRESHOLD))
    return {"threshold": round(threshold, 4), "sampled_images": int(len(rows)),
            "copies_p0.5": round(low, 4), "per_kind": per_kind,
            "rule": f"0.5th percentile of the copies' similarity - {CALIBRATION_MARGIN}, within "
                    f"[{MIN_THRESHOLD}, {MAX_THRESHOLD}]"}


def find_near_duplicates(images: np.ndarray, threshold: float | None = None,
                         threshold_source: str = "given",
                         keys: np.ndarray | None = None) -> NearDuplicates:
    """Verified near-duplicate pairs of uint8 N x H x W x C images (a memmap is fine).

    keys: per item, a key equal for exact copies (the pixels' sha256); only the first item of
    each key is searched and verified (its copies are grouped with it by the exact relation)."""
    start = time.monotonic()
    n = len(images)
    work = working_images(images)
    reps = np.arange(n)
    if keys is not None and n:
        codes = pd.factorize(pd.Series(keys).reset_index(drop=True))[0]
        _, first = np.unique(codes, return_index=True)
        if len(first) < n:
            reps = np.sort(first)
            work = work[reps]
    means, stds = _statistics(work)
    if threshold is None:
        calibration = calibrate(images, stds, rows_of=reps)
        threshold, threshold_source = calibration["threshold"], "calibrated on this data set"
    else:
        calibration = {"threshold": threshold, "reason": "given; not calibrated"}
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--near-dup-threshold: expected a correlation in (0, 1], got {threshold}")
    if len(work) < 2:
        pairs = np.zeros((0, 2), np.int64)
        search: dict[str, Any] = {"candidates": 0}
    else:
        pairs, search = candidate_pairs(work)
    verify_start = time.monotonic()
    sims = similarity(work, pairs, means, stds)
    merged = sims >= threshold
    # Pairs just below the threshold: shown in the report so that a user can judge it.
    near = (sims < threshold) & (sims >= threshold - 0.05)
    flat = flat_pairs(means, stds)
    pairs_out = np.concatenate([pairs[merged], flat])
    sims_out = np.concatenate([sims[merged], np.ones(len(flat), np.float32)])
    if len(pairs_out):
        _, first_pair = np.unique(pairs_out[:, 0] * n + pairs_out[:, 1], return_index=True)
        pairs_out, sims_out = pairs_out[first_pair], sims_out[first_pair]
    search.update({"searched_images": int(len(work)), "exact_copies_skipped": int(n - len(work)),
                   "verified": int(len(pairs)), "merged_pairs": int(len(pairs_out)),
                   "near_blank_images": int((stds < FLAT_STD).sum()),
                   "verify_seconds": round(time.monotonic() - verify_start, 3),
                   "seconds": round(time.monotonic() - start, 3),
                   "working_size": list(work.shape[1:])})
    return NearDuplicates(reps[pairs_out].reshape(-1, 2).astype(np.int64),
                          sims_out.astype(np.float32), float(threshold), threshold_source,
                          calibration, search, reps[pairs[near]].reshape(-1, 2), sims[near])
