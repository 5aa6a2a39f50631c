"""Near duplicates from the pixels: candidates by nearest neighbours, then a verification.

A perceptual hash cannot do this alone: on small, low-texture images (digits) distinct images
lie closer in Hamming distance than a 1-pixel shift moves a copy, so any one radius either
chains everything or misses the shifted copies. Here:

1. Working image: luma, area-resized to at most 64 px a side (native when smaller), smoothed
   with a 3x3 binomial filter (halves the noise and JPEG ringing; strokes survive).
2. Candidates: one descriptor per image that a shift leaves (nearly) unchanged: the magnitudes
   of its lowest spatial frequencies (|DFT|, 4 cycles each way, 45 numbers), plus a lightly
   weighted 6x6 tent-pooled layout that breaks the spectrum's ties (the same sprite at every position
   of a grid) in favour of nearby positions. Inner-product search (faiss's exact index below 20,000
   items; above, an inverted file of ~256 items a cell, each cell scanned by one matrix product for
   all the queries that probe it: _Searcher) returns each image's nearest neighbours, one query
   per image. The 25 shifted
   queries of an 8x8 pooled descriptor used before cost 25x the search (386 s for 100,000
   digits); the spectrum puts a planted copy first or second among 100,000 digits or textures.
   Each image keeps its VERIFY_PER_ITEM best neighbours within VERIFY_MARGIN of its best one and
   above a gate calibrated on planted copies (small data sets, where the budget allows, verify up
   to MAX_PER_ITEM each: see verification_plan). Exact copies (equal sha256) are searched once.
3. Verification: the maximum normalised cross-correlation (Pearson over the overlap, local mean
   and std) over shifts of up to +-2 working pixels, for a batch of pairs at a time (dot products
   per shift, window statistics by matrix products). Invariant to brightness and contrast; JPEG, noise and resampling lower it a little.
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

import functools
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kubevae.data.dataset import take_rows
from kubevae.hardware import in_threads

if TYPE_CHECKING:
    from kubevae.data.dataset import ImageRows

WORK_MAX_SIDE = 64
MAX_SHIFT = 2                 # working pixels, in each direction
SPECTRUM_FREQS = 4            # cycles per image, each way
LAYOUT_SIDE = 6
LAYOUT_WEIGHT = 0.1
DESCRIPTOR = (f"|FFT| of the lowest {SPECTRUM_FREQS} frequencies (shift-invariant) + "
              f"{LAYOUT_SIDE}x{LAYOUT_SIDE} tent-pooled layout (weight {LAYOUT_WEIGHT})")
VERIFY_PER_ITEM = 3           # each image's best few neighbours are verified...
VERIFY_MARGIN = 0.02          # ...when within this cosine of its best one...
VERIFY_BUDGET_PIXELS = 80_000_000  # ...or, while n * per_item * pixels stays within this, its
MAX_PER_ITEM = 32             # best up to this many, whatever their cosine (small data sets)
GATE_QUANTILE = 0.001         # ...and above the gate: the planted copies' 0.1th percentile of
GATE_MARGIN = 0.01            # descriptor cosine less this, within [MIN_GATE, MAX_GATE]
MIN_GATE, MAX_GATE = 0.5, 0.98
EXACT_SEARCH_MAX = 20_000     # items; above, an IVF index
IVF_LIST_SIZE = 256           # items per cell of the inverted file, on average
HNSW_LINKS, HNSW_SEARCH_DEPTH = 32, 32
HNSW_QUERY_DEPTH = 16         # the graph's search depth for queries other than the filed items
EXACT_COARSE_MAX = 2048       # cells: up to this many, the coarse search is one matrix product
COARSE_BLOCK = 16384          # queries per product of the exact coarse search
NPROBE = 6                    # 4: 1M digits in 267 s instead of 337 s, 99.67% of copies instead of 99.79%
KEPT_QUERY_BYTES = 4 << 30     # the aligned views' queries kept between the two passes (1M: 2.3 GB)
QUERY_BLOCK = 262_144         # queries per search call: enough a cell at 1,000,000 items to be worth a product (docs/split.md)
ARGMAX_TOP_K = 4               # up to this many best of a cell by repeated argmax (_best_few)
GATHER_MAX = 1 << 17          # (query, member) products: fewer, gathered in one array; more, a product per cell
VERIFY_BATCH_PIXELS = 500_000   # per batch: small enough to stay in cache over the 25 shifts
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
DETAIL_MIN = 1.5              # grey levels of band-pass detail: below, an image is smooth
ALIGNED_MIN, ALIGNED_MAX = 0.95, 0.97    # the aligned threshold's floor (docs/split.md), and off above
MUTUAL_RANK = 1               # aligned candidates: each among the other's best this many, in a view
ALIGNED_MARGIN = 0.005
LOOK_ALIKE_QUANTILE = 1.0     # of the look-alikes' aligned scores (+ margin): the aligned threshold
ALIGN_BUDGET_PAIRS = 40_000   # coarse passes per split at least (about 0.1 ms a pair on 2 cores)...
ALIGN_BUDGET_PER_ITEM = 0.1   # ...and per searched image: the budget grows with the data (docs/split.md)
FINE_BUDGET_PAIRS = 12_000    # fine passes at least, for pairs above the coarse gate (about 0.5 ms)...
FINE_BUDGET_PER_ITEM = 0.03   # ...and per searched image
COARSE_GATE_QUANTILE = 0.05   # of the coarse scores of the planted copies the aligned stage finds...
COARSE_GATE_MARGIN = 0.1      # ...less this, within COARSE_GATE_RANGE: pairs below skip the fine pass
COARSE_GATE_RANGE = (0.3, 0.8)
COARSE_GATE_MIN_COPIES = 20   # found copies needed to set the gate; fewer: the range's low end
CENTRE_SHARE = 0.6            # the centre view of the aligned stage's search
ZOOM_VIEW = 0.9               # its zoom views: re-crops trim up to 15% (docs/split.md, "The zoom views")
ROTATION_VIEW = 7.0           # its turned views, degrees each way: copies turn by up to 10
ALIGNED_STAGE = True          # False: stage 1 alone (the report says so)
ALIGNED_SAMPLE = 48           # calibration images whose copies go through the aligned stage
LOOK_ALIKE_SAMPLE = 48        # calibration images whose look-alikes set the aligned threshold.
# With 48, 31% of the stage's merges among 100,000 textures joined distinct textures
# (benchmarks/dedup.py); with 256, the maximum met images' own copies in every small data set
# tried (photos, faces, textures) and turned the stage off: the report's held-out count says
# which way a data set leans.
MAX_LEVEL_SHIFT = 64.0        # brightness edits of a copy: at most 64 grey levels
CHUNK = 1024                  # images per block: its float copies stay in cache (docs/split.md)
DETAIL_CHUNK = 256            # smaller still for the detail, which makes four filter passes over it
PREPARE_BLOCK = 4096            # images per task of prepare
CHUNK_VALUES = 1_000_000       # per chunk of working_images: 4 MB as float32
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class NearDuplicates:
    pairs: np.ndarray                 # P x 2 item indices, i < j, verified
    similarity: np.ndarray            # P: max NCC (1.0 for two near-blank images)
    threshold: float
    threshold_source: str
    calibration: dict[str, Any]
    search: dict[str, Any]
    aligned_threshold: float = 1.0
    mirrors: bool = True
    near_misses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    near_miss_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _smooth(x: np.ndarray) -> np.ndarray:
    """3x3 binomial filter of float32 N x h x w, edges repeated (separable, in numpy)."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    x = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]
    return (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) * np.float32(1 / 16)


def working_images(images: ImageRows, chunk_values: int = CHUNK_VALUES) -> np.ndarray:
    """uint8 N x h x w luma, at most WORK_MAX_SIDE a side, smoothed (streamed over a memmap, in
    chunks of about chunk_values input values, so the float copies stay small)."""
    n, height, width = images.shape[0], images.shape[1], images.shape[2]
    chunk = max(64, chunk_values // max(1, height * width * images.shape[-1]))
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


def detail(work: np.ndarray) -> np.ndarray:
    """Per image, the std (grey levels) of what four more binomial passes take away: the
    band-pass detail. Sky, blurred backgrounds and gradients have almost none; two of them look
    alike only when their levels do, whatever their correlation (DETAIL_MIN)."""
    out = np.empty(len(work), np.float32)
    for start in range(0, len(work), DETAIL_CHUNK):
        x = np.asarray(work[start:start + DETAIL_CHUNK], np.float32)
        blurred = x
        for _ in range(4):
            blurred = _smooth(blurred)
        out[start:start + DETAIL_CHUNK] = (x - blurred).reshape(len(x), -1).std(1)
    return out


@dataclass
class Prepared:
    work: np.ndarray          # N x h x w uint8: working_images
    means: np.ndarray         # N: of the working image
    stds: np.ndarray          # N
    details: np.ndarray       # N: detail
    descriptors: np.ndarray   # N x D: descriptors (the whole view)


def prepare(images: ImageRows, block: int = PREPARE_BLOCK) -> Prepared:
    """The working images and what the search and verification need of each, in blocks of
    `block` images spread over torch's threads (numpy lets go of the GIL in its loops;
    docs/split.md). A memmap is read one block at a time."""
    def one(start: int) -> tuple[np.ndarray, ...]:
        work = working_images(images[start:start + block])
        return (work, *_statistics(work), detail(work), descriptors(work))

    head = one(0)    # its shapes size the outputs, which the blocks fill in place
    out = [np.empty((len(images), *x.shape[1:]), x.dtype) for x in head]

    def fill(start: int) -> None:
        for column, part in zip(out, one(start) if start else head, strict=True):
            column[start:start + len(part)] = part

    in_threads(fill, range(0, len(images), block))
    return Prepared(*out)


def _pooling(size: int, bins: int) -> np.ndarray:
    """bins x size matrix of overlapping triangular (tent) windows, each two bins wide and
    summing to 1: unlike box pooling, the pooled layout moves with every pixel of a shift, so
    that among images of one spectrum (a sprite at every position) the nearest positions rank
    first."""
    width = size / bins
    centres = (np.arange(bins) + 0.5) * width
    x = np.arange(size) + 0.5
    out = np.clip(1 - np.abs(x[None, :] - centres[:, None]) / width, 0, None)
    return (out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _projections(h: int, w: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Row and column matrices that take an image to its low-frequency DFT (cos and sin parts)
    and its pooled layout in two matrix products: (left, right, frequency rows, columns)."""
    f = max(1, min(SPECTRUM_FREQS, (h - 1) // 2, w // 2))
    u = np.unique(np.r_[0:f + 1, h - f:h] % h)
    v = np.arange(f + 1)
    ay = 2 * np.pi * np.outer(u, np.arange(h)) / h
    ax = 2 * np.pi * np.outer(np.arange(w), v) / w
    left = np.concatenate([np.cos(ay), np.sin(ay), _pooling(h, LAYOUT_SIDE)]).astype(np.float32)
    right = np.concatenate([np.cos(ax), np.sin(ax), _pooling(w, LAYOUT_SIDE).T], axis=1)
    return left, right.astype(np.float32), len(u), len(v)


def descriptors(work: np.ndarray, chunk: int = CHUNK, view: str = "whole") -> np.ndarray:
    """float32 N x D, unit norm: the magnitudes of the lowest SPECTRUM_FREQS spatial frequencies
    of the (mean-free) working image, which a shift leaves unchanged, and, weighted by
    LAYOUT_WEIGHT, its LAYOUT_SIDE x LAYOUT_SIDE pooled layout, which a shift of 2 px barely
    moves. The layout breaks the ties of the spectrum (the same sprite at every position of a
    grid has one spectrum) in favour of nearby positions. Two matrix products per chunk (only
    the frequencies used are computed).

    view (VIEWS): the descriptor of the image's mirror image, centre or zoomed centre instead.
    These views are linear maps of the pixels, row by row and column by column (a flip, a crop,
    a bilinear resampling: view_maps), so they are folded into the two products and never made
    as images. A rotated centre (ROTATED) is made (rotated_centre)."""
    return view_descriptors(work, (view,), chunk)[view]


@dataclass
class _Projection:
    """What takes a chunk of (mean-free) working images to one view's descriptors."""
    turn: float | None        # degrees, for a made view (rotated_centre); None: a linear one
    left: np.ndarray          # rows x h: the frequency and layout rows, after the view's row map
    right: np.ndarray         # w x (cols + 1): the same for columns, and the view's column mean
    row_mean: np.ndarray      # h: with the last column of `right`, the view's mean
    offset: np.ndarray        # rows x cols: what a view mean of 1 adds to the products
    nu: int
    nv: int


def _projection(h: int, w: int, view: str) -> _Projection:
    turn = ROTATED.get(view)
    if turn is not None:    # not a product of row and column maps: the view is made (rotated_centre)
        h, w = _rotated_size(h, w)
    rows_map, cols_map = view_maps(h, w, "whole" if turn is not None else view)
    left, right, nu, nv = _projections(len(rows_map), cols_map.shape[1])
    # The view's mean is a linear function of the pixels too (the last column of `right`):
    # subtracting it after the products equals subtracting it from the view.
    left = left @ rows_map
    right = np.concatenate([cols_map @ right, cols_map.mean(1, keepdims=True)], axis=1)
    return _Projection(turn, left, right, rows_map.mean(0), np.outer(left.sum(1), right[:, :-1].sum(0)), nu, nv)


def view_descriptors(work: np.ndarray, views: Sequence[str], chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """descriptors(work, view=v) for each of `views`, in one pass over the images: each chunk is
    read and made float once for all of them."""
    n, h, w = work.shape
    plans = {view: _projection(h, w, view) for view in views}
    out = {view: np.empty((n, p.nu * p.nv + LAYOUT_SIDE * LAYOUT_SIDE), np.float32) for view, p in plans.items()}

    def one(start: int) -> None:
        x = np.asarray(work[start:start + chunk], np.float32)
        x -= x.mean(axis=(1, 2), keepdims=True)      # for precision: each view's mean is near 0
        for view, plan in plans.items():
            made = x if plan.turn is None else rotated_centre(x, plan.turn)
            out[view][start:start + len(x)] = _finish(made, plan)

    in_threads(one, range(0, n, chunk))
    return out


def _finish(x: np.ndarray, plan: _Projection) -> np.ndarray:
    k, h, w = x.shape
    nu, nv = plan.nu, plan.nv
    y = (x.reshape(k * h, w) @ plan.right).reshape(k, h, -1)
    z = plan.left @ y[:, :, :-1] - (y[:, :, -1] @ plan.row_mean)[:, None, None] * plan.offset   # k x rows x cols
    real = z[:, :nu, :nv] - z[:, nu:2 * nu, nv:2 * nv]
    imag = z[:, nu:2 * nu, :nv] + z[:, :nu, nv:2 * nv]
    spectrum = np.sqrt(real * real + imag * imag).reshape(k, -1)
    layout = z[:, 2 * nu:, 2 * nv:].reshape(k, -1)
    layout = layout - layout.mean(1, keepdims=True)
    spectrum /= np.maximum(np.linalg.norm(spectrum, axis=1, keepdims=True), 1e-6)
    layout *= LAYOUT_WEIGHT / np.maximum(np.linalg.norm(layout, axis=1, keepdims=True), 1e-6)
    return np.concatenate([spectrum, layout], axis=1) / math.hypot(1.0, LAYOUT_WEIGHT)


ROTATED = {"rotate_left": ROTATION_VIEW, "rotate_right": -ROTATION_VIEW}   # degrees, anticlockwise
VIEWS = ("whole", "mirror", "centre", "zoom_in", "zoom_out", "mirror_zoom_in", "mirror_zoom_out", *ROTATED)


def _rotated_size(h: int, w: int) -> tuple[int, int]:
    """(rows, cols) of a turned centre: half the centre's, where the half still holds the
    descriptor's SPECTRUM_FREQS cycles twice over. Sampled there straight from the (smoothed)
    working image, its descriptor is nearly the full size's at a fraction of the cost
    (docs/split.md, "What made it faster")."""
    hc, wc = (b - a for a, b in (_centre_span(h), _centre_span(w)))
    return (hc // 2, wc // 2) if min(hc, wc) // 2 >= 4 * SPECTRUM_FREQS + 1 else (hc, wc)


def rotated_centre(x: np.ndarray, degrees: float) -> np.ndarray:
    """float32 k x h x w -> k x rows x cols (_rotated_size): the centre view (_centre_span) of
    each image turned by `degrees` about its middle, sampled bilinearly from the whole image
    (so the corners the turn brings in are the image's own pixels, not padding)."""
    k, h, w = x.shape
    grid = _rotation_grid(h, w, degrees).expand(k, -1, -1, -1)
    return F.grid_sample(torch.from_numpy(np.ascontiguousarray(x))[:, None], grid, mode="bilinear",
                         align_corners=False)[:, 0].numpy()


@functools.lru_cache(maxsize=16)
def _rotation_grid(h: int, w: int, degrees: float) -> torch.Tensor:
    """1 x rows x cols x 2: where rotated_centre samples, in grid_sample's coordinates."""
    rows, cols = _rotated_size(h, w)
    (top, bottom), (left, right) = _centre_span(h), _centre_span(w)
    a = math.radians(degrees)
    # Output pixels relative to the centre, turned, then in the input's normalised coordinates.
    theta = (np.diag([2 / w, 2 / h]) @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
             @ np.diag([(right - left) / 2, (bottom - top) / 2]))
    return F.affine_grid(torch.tensor(np.c_[theta, np.zeros(2)], dtype=torch.float32)[None],
                         [1, 1, rows, cols], align_corners=False)


def _centre_span(size: int) -> tuple[int, int]:
    margin = round(size * (1 - CENTRE_SHARE) / 2)
    return margin, size - margin


def _resampling(size: int, out_size: int, share: float) -> np.ndarray:
    """out_size x size bilinear weights: the middle `share` of a line of `size` pixels sampled
    at out_size points (torch's grid_sample, align_corners False, zero padding)."""
    at = ((share * ((2 * np.arange(out_size) + 1) / out_size - 1)) + 1) * size / 2 - 0.5
    lo = np.floor(at).astype(np.int64)
    weights = np.zeros((out_size, size + 2))     # one pixel of zero padding each side
    rows = np.arange(out_size)
    np.add.at(weights, (rows, np.clip(lo, -1, size) + 1), 1 - (at - lo))
    np.add.at(weights, (rows, np.clip(lo + 1, -1, size) + 1), at - lo)
    return weights[:, 1:-1]


def view_maps(h: int, w: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows x h, w x cols) float32 maps that take an h x w image X to the view's image
    rows @ X @ cols: the whole image; its mirror image; its middle CENTRE_SHARE each way (what
    letterbox bars, rotated corners, corner watermarks and caption bars leave alone); that
    centre zoomed in by 1/ZOOM_VIEW (the middle CENTRE_SHARE * ZOOM_VIEW, resampled to the
    centre's size) or out by ZOOM_VIEW: a copy zoomed by ZOOM_VIEW shows its original's centre
    zoomed in (docs/split.md, "The zoom views")."""
    if view not in VIEWS or view in ROTATED:
        raise ValueError(f"view: expected one of {[v for v in VIEWS if v not in ROTATED]}, got {view!r}")
    if view.startswith("mirror_"):     # the image's mirror image, then the view: its columns reversed
        rows, cols = view_maps(h, w, view.removeprefix("mirror_"))
        return rows, np.ascontiguousarray(cols[::-1])
    if view in ("whole", "mirror"):
        cols = np.eye(w, dtype=np.float32)
        return np.eye(h, dtype=np.float32), cols[:, ::-1].copy() if view == "mirror" else cols
    (top, bottom), (left, right) = _centre_span(h), _centre_span(w)
    if view == "centre":
        return np.eye(h, dtype=np.float32)[top:bottom], np.eye(w, dtype=np.float32)[:, left:right]
    share = CENTRE_SHARE / (1 / ZOOM_VIEW if view == "zoom_in" else ZOOM_VIEW)
    return (_resampling(h, bottom - top, share).astype(np.float32),
            _resampling(w, right - left, share).T.astype(np.float32))


def _select(rows: np.ndarray, sims: np.ndarray, ids: np.ndarray, gate: float, per_item: int,
            margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Directed pairs (row, id) from one block of search results, with their cosine: each
    row's best `per_item` other items at or above `gate` and within `margin` of its best one."""
    other = (ids >= 0) & (ids != rows[:, None])
    sims = np.where(other, sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")       # self and padding go last
    sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    keep = (sims >= gate) & (sims >= sims[:, :1] - margin)
    keep[:, per_item:] = False
    return np.stack([np.broadcast_to(rows[:, None], ids.shape)[keep], ids[keep]], axis=1), sims[keep]


def verification_plan(n: int, pixels: int) -> tuple[int, float]:
    """(neighbours verified per image, cosine margin). At scale each image's best VERIFY_PER_ITEM
    within VERIFY_MARGIN of its best one: the spectrum puts a copy first or second among 100,000
    digits or textures. Where the budget allows more, up to MAX_PER_ITEM and no margin: a 2-px
    diagonal shift of a small full-frame image (a 25 px face) changes its spectrum enough to
    rank behind a dozen smooth look-alikes."""
    per_item = min(MAX_PER_ITEM, VERIFY_BUDGET_PIXELS // max(1, n * pixels))
    if per_item <= VERIFY_PER_ITEM:
        return VERIFY_PER_ITEM, VERIFY_MARGIN
    return int(per_item), 1.0


class _Searcher:
    """Nearest neighbours by inner product among the rows of `base` (unit descriptors).

    Exact (faiss IndexFlatIP) up to EXACT_SEARCH_MAX items. Above, an inverted file of about
    IVF_LIST_SIZE items a cell, whose centres are a random sample of the items (no k-means: a
    copy lies within 0.02 cosine of its original, so rough cells do), found by a matrix product
    with every centre up to EXACT_COARSE_MAX cells, and above through faiss's HNSW graph, where
    a query costs about the same at 100,000 and at 1,000,000 items. Each item is
    filed in its nearest cell and searched from its NPROBE nearest, found once when it is
    filed; another query (a mirror image, another view) finds its own cells. A cell is scanned
    for all the queries that probe it at once, as one matrix product (BLAS): faster than
    faiss's IndexIVFFlat, which takes one query at a time, for the few neighbours the split asks
    for (benchmarks/dedup.py --compare-search, docs/split.md)."""

    def __init__(self, base: np.ndarray):
        import faiss

        self.base = base
        n, d = base.shape
        if n <= EXACT_SEARCH_MAX:
            self.index: Any = faiss.IndexFlatIP(d)
            for start in range(0, n, QUERY_BLOCK):
                self.index.add(base[start:start + QUERY_BLOCK])
            self.kind, self.cells = "faiss IndexFlatIP (exact)", None
            return
        nlist = max(1, n // IVF_LIST_SIZE)
        self.nprobe = min(NPROBE, nlist)
        self.centres = np.ascontiguousarray(base[np.sort(np.random.default_rng(0).choice(n, nlist, replace=False))])
        self.quantizer: Any = None
        if nlist > EXACT_COARSE_MAX:
            self.quantizer = faiss.IndexHNSWFlat(d, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            self.quantizer.add(self.centres)
            self.quantizer.hnsw.efSearch = max(HNSW_SEARCH_DEPTH, self.nprobe)
        self.cells = np.concatenate([self._nearest_cells(base[i:i + QUERY_BLOCK])
                                     for i in range(0, n, QUERY_BLOCK)])
        if self.quantizer is not None:
            # Other queries (the views) search the graph less deeply: nearly the same cells in
            # well under the time (docs/split.md, "What made it faster").
            self.quantizer.hnsw.efSearch = max(HNSW_QUERY_DEPTH, self.nprobe)
        filed = self.cells[:, 0]
        self.order = np.argsort(filed, kind="stable")            # items, cell by cell
        self.bounds = np.searchsorted(filed[self.order], np.arange(nlist + 1))
        self.members = np.ascontiguousarray(base[self.order])
        self.row_of = torch.from_numpy(np.argsort(self.order))    # item -> its row of members
        self.filed = torch.from_numpy(filed)                      # item -> its cell
        coarse = "exact" if self.quantizer is None else "faiss HNSW"
        self.kind = (f"inverted file of {nlist} cells centred on random items ({coarse} coarse "
                     f"search, nprobe {self.nprobe}), each cell scanned by one matrix product")

    def _nearest_cells(self, query: np.ndarray) -> np.ndarray:
        """len(query) x nprobe: the cells to search, nearest first. Up to EXACT_COARSE_MAX
        cells by a matrix product with every centre: exact, and faster than the HNSW graph
        there; slower at 1,000,000 items' 3,906 (docs/split.md)."""
        if self.quantizer is not None:
            return self.quantizer.search(np.ascontiguousarray(query), self.nprobe)[1]
        centres = torch.from_numpy(self.centres)
        out = np.empty((len(query), self.nprobe), np.int64)
        for i in range(0, len(query), COARSE_BLOCK):
            block = torch.from_numpy(np.ascontiguousarray(query[i:i + COARSE_BLOCK], np.float32))
            out[i:i + len(block)] = torch.topk(block @ centres.T, self.nprobe, dim=1).indices.numpy()
        return out

    def search(self, query: np.ndarray, k: int, q0: int | None = None,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each len(query) x k, best first; id -1 where fewer than k were
        found. q0: the query is the indexed items q0.. themselves (their cells are known).
        exclude: per query, an item never to return (the query's own image, in another view)."""
        if self.cells is None:
            sims, ids = self.index.search(query, k + (exclude is not None))
            if exclude is not None:    # drop the excluded item, else the last
                drop = np.where((ids == exclude[:, None]).any(1), (ids == exclude[:, None]).argmax(1), k)
                keep = np.arange(k + 1)[None, :] != drop[:, None]
                sims, ids = sims[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)
            return sims, ids
        if q0 is not None:
            cells = self.cells[q0:q0 + len(query)]
        else:
            cells = self._nearest_cells(query)
        return self._scan(query, cells, k, exclude)

    def _scan(self, query: np.ndarray, cells: np.ndarray, k: int,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        m, probes = cells.shape
        if m * probes * IVF_LIST_SIZE <= GATHER_MAX:
            return self._scan_gathered(query, cells, k, exclude)
        probe_of = cells.ravel()
        # (query, probe) slots, cell by cell; a stable sort of 16-bit keys is a radix sort
        by_cell = np.argsort(probe_of.astype(np.int16) if len(self.bounds) <= 1 << 15 else probe_of,
                             kind="stable")
        starts = np.searchsorted(probe_of[by_cell], np.arange(len(self.bounds)))
        # Results are written cell by cell into contiguous rows, and put back in slot order once.
        sims = torch.full((m * probes, k), -torch.inf)
        ids = torch.full((m * probes, k), -1, dtype=torch.int64)
        queries = torch.from_numpy(np.ascontiguousarray(query, np.float32))
        asker = torch.from_numpy(by_cell // probes)
        order, members = torch.from_numpy(self.order), torch.from_numpy(self.members)
        # The excluded item of each slot, and where it is filed (cell, row of `members`).
        excluded = None if exclude is None else torch.from_numpy(np.asarray(exclude, np.int64)[by_cell // probes])
        excluded_cell = None if excluded is None else self.filed[excluded]

        def one(cell: int) -> None:
            first, last = starts[cell], starts[cell + 1]
            a, b = self.bounds[cell], self.bounds[cell + 1]
            scores = queries.index_select(0, asker[first:last]) @ members[a:b].T
            if excluded is not None and excluded_cell is not None:
                here = torch.nonzero(excluded_cell[first:last].eq(int(cell)))[:, 0]
                scores[here, self.row_of[excluded[first + here]] - a] = -torch.inf
            top, at = _best_few(scores, min(k, b - a))
            sims[first:last, :top.shape[1]], ids[first:last, :top.shape[1]] = top, order[a + at]

        in_threads(one, np.flatnonzero((np.diff(starts) > 0) & (np.diff(self.bounds) > 0)))
        unsorted = np.empty_like(by_cell)
        unsorted[by_cell] = np.arange(len(by_cell))
        sims, ids = sims.index_select(0, torch.from_numpy(unsorted)), ids.index_select(0, torch.from_numpy(unsorted))
        # Each item lives in one cell and a query's cells differ: no id comes twice.
        top, at = _best_few(sims.reshape(m, probes * k), k)
        top_ids = torch.gather(ids.reshape(m, probes * k), 1, at).numpy()
        top_ids[~np.isfinite(top.numpy())] = -1        # an excluded item's -inf, or padding
        return top.numpy(), top_ids

    def _scan_gathered(self, query: np.ndarray, cells: np.ndarray, k: int,
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The same for a few queries (calibration's): their cells' members gathered in one
        array, since a matrix product per cell would cost more in calls than in arithmetic."""
        m, probes = cells.shape
        first, sizes = self.bounds[cells.ravel()], np.diff(self.bounds)[cells.ravel()]
        ends = np.cumsum(sizes)
        position = np.arange(ends[-1] if len(ends) else 0) + np.repeat(first - (ends - sizes), sizes)
        asker = np.repeat(np.arange(m * probes) // probes, sizes)
        sims = np.einsum("ij,ij->i", np.asarray(query, np.float32)[asker], self.members[position])
        if exclude is not None:
            sims[self.order[position] == np.asarray(exclude)[asker]] = -np.inf
        # One row per query, its candidates side by side (padded with -inf), for one top-k.
        per_query = sizes.reshape(m, probes).sum(1)
        column = np.arange(len(asker)) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        dense = np.full((m, max(k, int(per_query.max(initial=0)))), -np.inf, np.float32)
        where = np.full(dense.shape, -1, np.int64)
        dense[asker, column], where[asker, column] = sims, self.order[position]
        top, at = torch.topk(torch.from_numpy(dense), k, dim=1)
        out_sims, out_ids = top.numpy(), np.take_along_axis(where, at.numpy(), 1)
        out_ids[~np.isfinite(out_sims)] = -1
        return out_sims, out_ids


def _best_few(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k, dim=1) for a small k, by k argmaxes: numpy's argmax is vectorised
    along a row, while torch's topk and max(dim=1) are not (several times slower for 2 of 256:
    docs/split.md). Ties: the first column, as numpy's argmax. A larger k: torch.topk."""
    if k > ARGMAX_TOP_K:
        return torch.topk(scores, k, dim=1)
    x = scores.numpy() if k == 1 else scores.numpy().copy()
    rows = np.arange(len(x))
    top, at = np.empty((len(x), k), np.float32), np.empty((len(x), k), np.int64)
    for r in range(k):
        at[:, r] = x.argmax(1)
        top[:, r] = x[rows, at[:, r]]
        if r + 1 < k:
            x[rows, at[:, r]] = -np.inf
    return torch.from_numpy(top), torch.from_numpy(at)


def candidate_pairs(work: np.ndarray, gate: float, searcher: _Searcher | None = None
                    ) -> tuple[np.ndarray, dict[str, Any]]:
    """Unique pairs (i < j) to verify: for each image, its few best neighbours in descriptor
    space (verification_plan), at or above `gate`. One query per image, in blocks, so memory
    holds one block's neighbour lists at a time. searcher: the index of work's descriptors,
    when already built."""
    import faiss

    start = time.monotonic()
    n = len(work)
    per_item, margin = verification_plan(n, work.shape[1] * work.shape[2])
    faiss.omp_set_num_threads(max(1, min(2, torch.get_num_threads())))
    if n * (n - 1) // 2 * work.shape[1] * work.shape[2] <= VERIFY_BUDGET_PIXELS:
        # Small enough to verify every pair: no copy is lost to the descriptor or the gate (a
        # 2-px shift of a 16-px image moves its spectrum below any gate; seen in the tests).
        i, j = np.triu_indices(n, 1)
        return np.stack([i, j], axis=1).astype(np.int64), {
            "index": "none: every pair verified", "descriptor": DESCRIPTOR, "gate": round(float(gate), 4),
            "candidates": int(len(i)), "per_item": n - 1, "search_seconds": round(time.monotonic() - start, 3)}
    searcher = _Searcher(descriptors(work)) if searcher is None else searcher
    base = searcher.base
    described = indexed = time.monotonic()
    k = min(per_item + 1, n)
    found, above = [], 0
    for q0 in range(0, n, QUERY_BLOCK):
        query = base[q0:q0 + QUERY_BLOCK]
        rows = np.arange(q0, q0 + len(query))
        sims, ids = searcher.search(query, k, q0)
        above += int(((sims >= gate) & (ids >= 0)).sum()) - len(sims)
        pairs, _ = _select(rows, sims, ids, gate, per_item, margin)
        found.append(np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1]))
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    pairs = np.stack([keys // n, keys % n], axis=1).astype(np.int64)
    return pairs, {
        "index": searcher.kind, "descriptor": DESCRIPTOR, "descriptor_dims": int(base.shape[1]),
        "neighbours": k - 1, "gate": round(float(gate), 4), "per_item": per_item, "margin": margin,
        "neighbours_above_gate": max(0, int(above)), "candidates": int(len(pairs)),
        "describe_seconds": round(described - start, 3),
        "index_seconds": round(indexed - described, 3),
        "search_seconds": round(time.monotonic() - start, 3)}


class AlignedViews:
    """Where the aligned stage looks for candidates (VIEWS): the whole image and its mirror
    image (queried against the whole images); its centre (an index of its own); the centre
    zoomed in and out by ZOOM_VIEW, the same of the mirror image, and the centre turned by
    ROTATION_VIEW either way (all queried against the centres: re-crops, zooms and letterboxes
    change the scale, rotations the angle). A pair is a candidate when the two are each other's
    best match: in one view, or, for the paired views (PARTNERS), one zoomed or turned one way
    and the other the other way. A copy and its original are, while a chain of look-alikes,
    each the next one's best, rarely is."""

    PARTNERS = {"zoom_in": "zoom_out", "zoom_out": "zoom_in", "mirror_zoom_in": "mirror_zoom_out",
                "mirror_zoom_out": "mirror_zoom_in", "rotate_left": "rotate_right",
                "rotate_right": "rotate_left"}

    def __init__(self, work: np.ndarray, full: _Searcher, mirrors: bool = True):
        self.work, self.full, self.mirrors = work, full, mirrors
        self._centre: _Searcher | None = None
        self.names = [v for v in VIEWS if mirrors or not v.startswith("mirror")]
        # Each view's partner: i's best in view v is j, and j's best in partner(v) is i.
        self.partner = {v: self.names.index(self.PARTNERS.get(name, name)) for v, name in enumerate(self.names)}

    @staticmethod
    def searches(view: str) -> str:
        """The index a view's queries search: the whole images' or the centres'."""
        return "whole" if view in ("whole", "mirror") else "centre"

    @property
    def centre(self) -> _Searcher:
        """Built on first use: when calibration turns the stage off, never (27 s of 1M)."""
        if self._centre is None:
            self._centre = _Searcher(descriptors(self.work, view="centre"))
        return self._centre

    def _index(self, view: str) -> _Searcher:
        return self.full if self.searches(view) == "whole" else self.centre

    def queries(self, work: np.ndarray, q0: int | None = None
                ) -> list[tuple[_Searcher, np.ndarray, int | None]]:
        """Per view, the index searched, the descriptors of `work` that query it, and q0 where
        `work` is the indexed images from q0 on and the view is the index's own (the
        descriptors are the index's rows, and their cells are known)."""
        own = [v for v in self.names if q0 is not None and v == self.searches(v)]
        made = view_descriptors(work, [v for v in self.names if v not in own])
        return [(self._index(v), self._index(v).base[q0:q0 + len(work)], q0) if v in own and q0 is not None
                else (self._index(v), made[v], None) for v in self.names]

    def start(self, v: int) -> int:
        """The aligned stage's coarse start for a pair found in view v (align.coarse_fit): the
        mirror image for the mirror views, the identity for the others: copies found by a view
        align from its start (docs/split.md, "What made it faster")."""
        from kubevae.split import align

        return align.MIRROR if self.names[v].startswith("mirror") else align.IDENTITY

    def mutual_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Mutual best pairs (i < j) over the views, best descriptor cosine first; per pair the
        coarse starts of the views that found it (self.start) and that cosine.

        i's best in view v is j by the search (the cells i's query probes), and i is j's best in
        the partner view exactly: j's query scored against i's filed descriptor directly, not
        only if j's search happened to probe i's cell. So a pair needs the inverted file's reach
        from one end, not from both (docs/split.md, "Why geometric copies are found less
        often at 1,000,000")."""
        start = time.monotonic()
        n = len(self.work)
        keys_all, cos_all, starts_all = [], [], []
        rank = min(MUTUAL_RANK, max(1, n - 1))
        bests = [np.full((n, rank), -1, np.int64) for _ in self.names]
        best_cos = [np.full((n, rank), -np.inf, np.float32) for _ in self.names]
        blocks = range(0, n, QUERY_BLOCK)
        # The made views' queries are kept for the second pass when they fit, else made again.
        made = sum(v != self.searches(v) for v in self.names) * n * self.full.base.shape[1] * 4
        kept: list[list[tuple[_Searcher, np.ndarray, int | None]]] = []
        for q0 in blocks:
            block = self.work[q0:q0 + QUERY_BLOCK]
            rows = np.arange(q0, q0 + len(block))
            queries = self.queries(block, q0)
            for v, (searcher, query, own) in enumerate(queries):
                sims, ids = searcher.search(query, rank, own, exclude=rows)
                bests[v][rows], best_cos[v][rows] = ids, sims
            if made <= KEPT_QUERY_BYTES:
                kept.append(queries)
        # j's partner-view query against the filed descriptor of each i whose best j is.
        back_cos = [np.full((n, rank), -np.inf, np.float32) for _ in self.names]
        for number, q0 in enumerate(blocks):
            queries = kept[number] if kept else self.queries(self.work[q0:q0 + QUERY_BLOCK], q0)
            stop = min(n, q0 + QUERY_BLOCK)
            for v, best in enumerate(bests):
                asker, slot = np.nonzero((best >= q0) & (best < stop))
                partner_query = queries[self.partner[v]][1]
                filed = self._index(self.names[v]).base
                back_cos[v][asker, slot] = (partner_query[best[asker, slot] - q0] * filed[asker]).sum(1)
        for v, (best, found_cos) in enumerate(zip(bests, best_cos, strict=True)):
            pv = self.partner[v]
            for r in range(rank):
                j, c = best[:, r], found_cos[:, r]
                ok = (j >= 0) & (c >= MIN_GATE)
                safe = np.clip(j, 0, None)
                mutual = ok & ((bests[pv][safe] == np.arange(n)[:, None]).any(1)
                               | (back_cos[v][:, r] > best_cos[pv][safe, rank - 1]))
                i = np.flatnonzero(mutual)     # a pair found from both ends is kept once below
                keys_all.append(np.minimum(i, j[i]) * n + np.maximum(i, j[i]))
                cos_all.append(np.maximum(c[i], back_cos[v][i, r]))
                starts_all.append(np.full(len(i), self.start(v), np.int8))
        keys = np.concatenate(keys_all) if keys_all else np.zeros(0, np.int64)
        cos = np.concatenate(cos_all) if cos_all else np.zeros(0, np.float32)
        starts = np.concatenate(starts_all) if starts_all else np.zeros(0, np.int8)
        unique, slot = np.unique(keys, return_inverse=True)
        start_of = np.zeros(len(unique), np.int8)
        np.bitwise_or.at(start_of, slot, starts)
        order = np.argsort(-cos, kind="stable")
        keys, first = np.unique(keys[order], return_index=True)
        ranked = np.argsort(first, kind="stable")
        keys, start_of, cos = keys[ranked], start_of[ranked], cos[order][first][ranked]
        return np.stack([keys // n, keys % n], axis=1).astype(np.int64), start_of, cos, {
            "aligned_views": self.names, "aligned_candidates": int(len(keys)),
            "aligned_search_seconds": round(time.monotonic() - start, 3)}

    def retrieved(self, rows: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per planted copy (working image) of the indexed image at `rows`: the coarse starts
        (self.start) of the views in which the two would be mutual matches (MUTUAL_RANK), were the copy
        in the data set (0: none would pair them), and the descriptor cosine the candidate
        list would rank the pair by (mutual_pairs; -inf where not retrieved)."""
        starts = np.zeros(len(rows), np.int8)
        best = np.full(len(rows), -np.inf, np.float32)
        copy_queries, original_queries = self.queries(copies), self.queries(take_rows(self.work, rows))
        # What a copy would be filed under in each index: its query in that index's own view.
        filed = {self.names[v]: q for v, (_, q, _) in enumerate(copy_queries)}
        rank = min(MUTUAL_RANK, max(1, len(self.work) - 1))
        for v, (searcher, q_copy, _) in enumerate(copy_queries):
            sims, ids = searcher.search(q_copy, rank)
            copy_hit = (ids == rows[:, None]).any(1)
            towards_original = (q_copy * searcher.base[rows]).sum(1)
            q_orig = original_queries[self.partner[v]][1]
            # The copy is among the original's best `rank` when fewer than `rank` others beat it.
            rival_sims, rival_ids = searcher.search(q_orig, min(rank + 1, len(self.work)))
            others = np.sort(np.where((rival_ids >= 0) & (rival_ids != rows[:, None]), rival_sims, -np.inf), axis=1)
            rival = others[:, -rank] if others.shape[1] >= rank else np.full(len(rows), -np.inf, np.float32)
            copy_filed = filed[self.searches(self.names[v])]
            towards_copy = (q_orig * copy_filed).sum(1)
            # As mutual_pairs: one end's search finds the other, which has it among its best
            # exactly. From the copy's end: its search finds the original. From the original's:
            # its search probes the copy's cell, and no more than rank - 1 of what the copy's
            # search found beat the original.
            own = rows if self.names[v] == self.searches(self.names[v]) else None   # whole, centre
            from_original = _probes_cell_of(searcher, q_orig, copy_filed, own) & (towards_original > sims[:, rank - 1])
            both = (towards_copy > rival) & (copy_hit | from_original)
            starts[both] |= self.start(v)
            # Each end records its match's cosine; the list keeps the pair's highest.
            best[both] = np.maximum(best[both], np.maximum(towards_original[both], towards_copy[both]))
        return starts, best


def _probes_cell_of(searcher: _Searcher, query: np.ndarray, item: np.ndarray,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """Per query, whether its search would scan the cell that `item` (descriptors, not indexed)
    would be filed in: an inverted file finds only what its probed cells hold. rows: the
    queries are these indexed items in the index's own view (their cells are known)."""
    if searcher.cells is None:     # the exact index: every item is scanned
        return np.ones(len(query), bool)
    probed = searcher.cells[rows] if rows is not None else searcher._nearest_cells(query)
    return (probed == searcher._nearest_cells(item)[:, :1]).any(1)


def _window_sums(y: np.ndarray, tops: np.ndarray, hc: int, wc: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of y and y^2 over the hc x wc windows at every (top, left) in tops x tops: two
    matrix products with 0/1 band matrices (BLAS), on y less its mean (no cancellation in
    float32)."""
    p, h, w = y.shape
    y = y - y.mean(axis=(1, 2), keepdims=True)
    in_rows = (np.arange(h)[None, :] >= tops[:, None]) & (np.arange(h)[None, :] < tops[:, None] + hc)
    in_cols = (np.arange(w)[None, :] >= tops[:, None]) & (np.arange(w)[None, :] < tops[:, None] + wc)
    rows, cols = in_rows.astype(np.float32), in_cols.astype(np.float32).T
    sums, squares = (rows @ (v.reshape(p * h, w) @ cols).reshape(p, h, len(tops)) for v in (y, y * y))
    return sums, squares


def max_ncc(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Max over shifts |dy|, |dx| <= max_shift of the Pearson correlation between the centre of
    each a (cropped by max_shift + 1) and the window of b at that shift. a, b: P x h x w."""
    p, h, w = a.shape
    # Small images shift less: the compared centre keeps at least about half the pixels (an
    # 8-px image compared over a 2 x 2 centre merged random noise).
    r = max(0, min(max_shift, (min(h, w) - 6) // 4))
    # One pixel more than the shifts: no window touches b's border, where the smoothing saw
    # padding instead of the neighbours the same content has inside a. Without shifts, none.
    m = r + 1 if r else 0
    centre = np.asarray(a[:, m:h - m, m:w - m], np.float32)
    hc, wc = centre.shape[1:]
    centre = centre - centre.mean(axis=(1, 2), keepdims=True)
    centre_norm = np.sqrt(np.einsum("pij,pij->p", centre, centre))
    y = np.asarray(b, np.float32)
    tops = np.arange(m - r, m + r + 1)
    dots = np.empty((p, len(tops), len(tops)), np.float32)
    for u, top in enumerate(tops):
        for v, left in enumerate(tops):
            dots[:, u, v] = np.einsum("pij,pij->p", centre, y[:, top:top + hc, left:left + wc])
    s1, s2 = _window_sums(y, tops, hc, wc)
    std_y = np.sqrt(np.clip(s2 - s1 * s1 / (hc * wc), 0, None)).astype(np.float32)
    ncc = dots / np.maximum(centre_norm[:, None, None] * std_y, 1e-3)
    return np.clip(ncc.reshape(p, -1).max(axis=1), -1, 1)


def similarity(work: np.ndarray, pairs: np.ndarray, means: np.ndarray, stds: np.ndarray,
               details: np.ndarray | None = None, batch_pixels: int = VERIFY_BATCH_PIXELS) -> np.ndarray:
    """Verified similarity of each pair: max NCC over +-MAX_SHIFT px; 1 or 0 for near-blank and
    smooth images, which are copies only when their levels agree. In batches of about
    batch_pixels pixels, so that memory stays bounded whatever the number of pairs."""
    out = np.zeros(len(pairs), np.float32)
    batch = max(64, batch_pixels // max(1, work.shape[1] * work.shape[2]))
    for start in range(0, len(pairs), batch):
        i, j = pairs[start:start + batch, 0], pairs[start:start + batch, 1]
        s = max_ncc(take_rows(work, i), take_rows(work, j))
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
        if details is not None:
            # Smooth images (sky, blurred backgrounds) correlate with any similar gradient: they
            # are copies only when they look the same, i.e. when the RMS difference of their
            # mean-free pixels at the best shift is at most RESIDUAL_LEVELS grey levels.
            smooth = np.minimum(details[i], details[j]) < DETAIL_MIN
            apart = np.sqrt(np.clip(stds[i] ** 2 + stds[j] ** 2 - 2 * s * stds[i] * stds[j], 0, None))
            s = np.where(smooth, np.where(apart <= RESIDUAL_LEVELS, 1.0, 0.0), s)
        flat_i, flat_j = stds[i] < FLAT_STD, stds[j] < FLAT_STD
        s = np.where(flat_i | flat_j, 0.0, s)
        s = np.where(flat_i & flat_j & (_flat_bin(means[i]) == _flat_bin(means[j])), 1.0, s)
        out[start:start + batch] = s
    return out


def _flat_bin(levels: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(levels) / FLAT_LEVELS).astype(np.int64)


def flat_pairs(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Near-blank images in the same band of FLAT_LEVELS grey levels, as star edges: bands
    instead of a chain by level, so that blank frames of every level never join one group."""
    flat = np.flatnonzero(stds < FLAT_STD)
    if len(flat) < 2:
        return np.zeros((0, 2), np.int64)
    bins = _flat_bin(means[flat])
    order = np.argsort(bins, kind="stable")
    flat, bins = flat[order], bins[order]
    heads = flat[np.searchsorted(bins, bins, side="left")]
    keep = heads != flat
    a, b = heads[keep], flat[keep]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)


def _sample(candidates: np.ndarray, size: int, keys: np.ndarray | None, seed: int) -> np.ndarray:
    """Up to `size` of the candidate rows, chosen by a hash of their content key when keys are
    given: appending images changes the sample only where a new image's hash ranks among the
    chosen, so the calibration moves little when data is appended."""
    if len(candidates) <= size:
        return np.sort(candidates)
    if keys is None:
        return np.sort(np.random.default_rng(seed).choice(candidates, size, replace=False))
    ranks = np.array([hashlib.sha256(f"{seed}:{keys[r]}".encode()).digest()[:8] for r in candidates])
    return np.sort(candidates[np.argsort(ranks, kind="stable")[:size]])


def look_alikes(base: np.ndarray, rows: np.ndarray, rank: int = 2) -> np.ndarray:
    """Pairs (row, its `rank`-th nearest other image by descriptor, over the whole data set).
    The second nearest, not the nearest: where the data holds copies, an image's nearest
    neighbour is often its own copy. Over the whole data set, not a sample: the look-alikes the
    verification meets are as close as the data's size makes them."""
    if len(base) <= rank or not len(rows):
        return np.zeros((0, 2), np.int64)
    best = np.full((len(rows), rank + 1), -np.inf, np.float32)
    ids = np.zeros((len(rows), rank + 1), np.int64)
    query = base[rows]
    for start in range(0, len(base), QUERY_BLOCK):
        cos = query @ base[start:start + QUERY_BLOCK].T
        cos[rows[:, None] == np.arange(start, start + cos.shape[1])[None, :]] = -np.inf
        both = np.concatenate([best, cos], axis=1)
        both_ids = np.concatenate([ids, np.broadcast_to(np.arange(start, start + cos.shape[1]),
                                                        cos.shape)], axis=1)
        order = np.argsort(-both, axis=1, kind="stable")[:, :rank + 1]
        best, ids = np.take_along_axis(both, order, 1), np.take_along_axis(both_ids, order, 1)
    return np.stack([rows, ids[:, rank - 1]], axis=1)


def calibrate(images: ImageRows, stds: np.ndarray, sample: int = CALIBRATION_SAMPLE,
              seed: int = 0, rows_of: np.ndarray | None = None,
              threshold: float | None = None, details: np.ndarray | None = None,
              keys: np.ndarray | None = None, mirrors: bool = True,
              work: np.ndarray | None = None, views: AlignedViews | None = None) -> dict[str, Any]:
    """Copies of every planted kind of a sample of the data set's own (non-blank) images, and
    look-alikes: each of LOOK_ALIKE_SAMPLE sampled images and its second-nearest image of the data
    set (work: the searched images' working images; views: their aligned-stage indexes, None
    when the aligned stage is off). A planted copy counts as found by the aligned stage only
    if the views would also pair it with its original (AlignedViews.retrieved).

    Threshold (unless given): the similarities of the copies of the shift and photometric
    kinds (planted.SHIFT_AND_PHOTOMETRIC), their 0.5th percentile less CALIBRATION_MARGIN,
    within [MIN_THRESHOLD, MAX_THRESHOLD]. Candidate gate: those copies' cosines' GATE_QUANTILE
    less GATE_MARGIN, within [MIN_GATE, MAX_GATE]. Aligned threshold: the LOOK_ALIKE_QUANTILE of
    the look-alikes' aligned scores plus ALIGNED_MARGIN, at least ALIGNED_MIN (and at least a given threshold);
    above ALIGNED_MAX the aligned stage is off, since distinct images of this data set align as
    well as copies. Then, per kind, how many of ALIGNED_SAMPLE copies the two stages together
    find (found/planted), and how many look-alikes they merge (false merges)."""
    from kubevae.split import align, planted

    details = np.full(len(stds), np.inf, np.float32) if details is None else details
    given = threshold
    usable = np.flatnonzero((stds >= CALIBRATION_MIN_STD) & (details >= DETAIL_MIN))
    if len(usable) < 20:
        usable = np.flatnonzero((stds >= FLAT_STD) & (details >= DETAIL_MIN))
    if len(usable) < 20:
        usable = np.flatnonzero(stds >= FLAT_STD)
    if len(usable) == 0:
        return {"threshold": MAX_THRESHOLD if threshold is None else threshold, "gate": MIN_GATE,
                "aligned_threshold": 2.0, "aligned_off": "every image is near-blank",
                "sampled_images": 0, "per_kind": {},
                "reason": "every image is near-blank; only blank images are merged"}
    picked = _sample(usable, sample, keys, seed)
    rows = picked if rows_of is None else rows_of[picked]   # stds may be of a subset of the images
    originals = np.asarray(images[rows])
    work_o = working_images(originals)
    few = min(ALIGNED_SAMPLE, len(rows))          # the kinds left to the aligned stage: fewer
    per_kind: dict[str, dict[str, Any]] = {}
    cheap: dict[str, np.ndarray] = {}
    copies_work: dict[str, np.ndarray] = {}
    cosines = []
    for kind in planted.KINDS:
        k = len(rows) if kind in planted.SHIFT_AND_PHOTOMETRIC else few
        copies = np.stack([planted.make_copy(im, kind, seed=int(r))
                           for im, r in zip(originals[:k], rows[:k], strict=True)])
        both = np.concatenate([work_o[:k], working_images(copies)])
        pairs = np.stack([np.arange(k), np.arange(k) + k], axis=1)
        d = descriptors(both)
        if kind in planted.MIRROR:   # found by the mirror query
            d[k:] = descriptors(both[k:], view="mirror")
        cos = (d[pairs[:, 0]] * d[pairs[:, 1]]).sum(1)
        if kind in planted.SHIFT_AND_PHOTOMETRIC:
            cosines.append(cos)
        m, sd = _statistics(both)
        cheap[kind] = similarity(both, pairs, m, sd, detail(both))
        copies_work[kind] = both[k:]
        per_kind[kind] = {"descriptor_cos_min": round(float(cos.min()), 4),
                          "cheap_median": round(float(np.median(cheap[kind])), 4)}
    gate = float(np.clip(np.quantile(np.concatenate(cosines), GATE_QUANTILE) - GATE_MARGIN, MIN_GATE, MAX_GATE))
    out: dict[str, Any] = {"gate": round(gate, 4), "sampled_images": int(len(rows)),
                           "aligned_sampled_images": int(few),
                           "gate_rule": f"{GATE_QUANTILE * 100:g}th percentile of the copies' "
                                        f"descriptor cosine - {GATE_MARGIN}, within "
                                        f"[{MIN_GATE}, {MAX_GATE}]"}
    if threshold is None:
        pooled = np.concatenate([cheap[k] for k in planted.SHIFT_AND_PHOTOMETRIC])
        low = float(np.quantile(pooled, CALIBRATION_QUANTILE))
        threshold = float(np.clip(low - CALIBRATION_MARGIN, MIN_THRESHOLD, MAX_THRESHOLD))
        out.update({"copies_p0.5": round(low, 4),
                    "rule": f"0.5th percentile of the shift and photometric copies' similarity - "
                            f"{CALIBRATION_MARGIN}, within [{MIN_THRESHOLD}, {MAX_THRESHOLD}]"})
    else:
        out["reason"] = "threshold given, not calibrated; candidate gate and aligned stage calibrated"
    # Look-alikes over the whole data set (the searched images).
    if work is None:
        work = working_images(images)
    base = views.full.base if views is not None else descriptors(work)
    sample_rows = picked[:few]
    distinct = look_alikes(base, picked[:LOOK_ALIKE_SAMPLE])
    pair_work = take_rows(work, distinct.ravel())
    m, sd = _statistics(pair_work) if len(distinct) else (np.zeros(0), np.zeros(0))
    pair_index = np.arange(2 * len(distinct)).reshape(-1, 2)
    det = detail(pair_work) if len(distinct) else np.zeros(0, np.float32)
    distinct_cheap = similarity(pair_work, pair_index, m, sd, det) if len(distinct) else np.zeros(0)
    detailed = (det[pair_index[:, 0]] >= DETAIL_MIN) & (det[pair_index[:, 1]] >= DETAIL_MIN) \
        if len(distinct) else np.zeros(0, bool)
    distinct_aligned = np.zeros(len(distinct), np.float32)
    if views is not None and detailed.any():
        distinct_aligned[detailed] = align.aligned_similarity(
            pair_work[pair_index[detailed, 0]], pair_work[pair_index[detailed, 1]], mirrors=mirrors).score
    aligned_threshold, aligned_off = 2.0, None
    if views is None:
        aligned_off = "aligned stage off (kubevae.split.neardup.ALIGNED_STAGE, or under 2 images)"
    elif not len(distinct):
        aligned_off = "aligned stage off: too few images to measure look-alikes"
    else:
        # The maximum (LOOK_ALIKE_QUANTILE 1): a 90% quantile let 108 of 500 distinct digits
        # merge. An image with two copies in the data counts its second copy as a look-alike
        # and may switch the stage off: it errs towards merging less.
        wanted = float(np.quantile(distinct_aligned, LOOK_ALIKE_QUANTILE)) + ALIGNED_MARGIN
        if wanted > ALIGNED_MAX:
            # Distinct images of this data set align as well as copies do (a sprite at another
            # place or size is another sample, not a copy): the aligned stage would chain them.
            aligned_off = (f"aligned stage off: look-alikes of this data set align at "
                           f"{wanted - ALIGNED_MARGIN:.4f} ({LOOK_ALIKE_QUANTILE:.0%} quantile), above "
                           f"{ALIGNED_MAX - ALIGNED_MARGIN:g}; "
                           "here geometric edits make new samples, not copies")
        else:
            # A given threshold binds both stages: --near-dup-threshold 1 merges identical pixels only.
            aligned_threshold = max(wanted, ALIGNED_MIN, given if given is not None else 0.0)
    found_by = {kind: cheap[kind][:few] >= threshold for kind in planted.KINDS}
    scores_by = {kind: np.zeros(few, np.float32) for kind in planted.KINDS}
    coarse_by = {kind: np.zeros(few, np.float32) for kind in planted.KINDS}
    cos_by = {kind: np.full(few, -np.inf, np.float32) for kind in planted.KINDS}   # as ranked for the budget
    if aligned_off is None and views is not None:
        # As the split does: only what the views retrieve, from the starts they give; every
        # kind's copies at once (a search or a fit per kind would cost more in calls than work).
        left = {kind: np.flatnonzero(~found_by[kind]) for kind in planted.KINDS}
        kind_of = np.repeat(np.arange(len(planted.KINDS)), [len(left[k]) for k in planted.KINDS])
        at = np.concatenate([left[k] for k in planted.KINDS])
        copies = np.concatenate([copies_work[k][:few][left[k]] for k in planted.KINDS])
        view_starts, ranked_cos = views.retrieved(sample_rows[at], copies)
        go = view_starts > 0
        aligned = align.aligned_similarity(work_o[:few][at[go]], copies[go], mirrors=mirrors, starts=view_starts[go])
        for number, kind in enumerate(planted.KINDS):
            mine = kind_of[go] == number
            scores_by[kind][at[go][mine]] = aligned.score[mine]
            coarse_by[kind][at[go][mine]] = aligned.coarse[mine]
            cos_by[kind][at[kind_of == number]] = ranked_cos[kind_of == number]
    coarse_gate = _coarse_gate([coarse_by[k][(scores_by[k] >= aligned_threshold) & ~found_by[k]]
                                for k in planted.KINDS if k not in planted.MIRROR or mirrors])
    copies_found = CopiesFound(found_by, scores_by, coarse_by, cos_by, aligned_threshold,
                               float(coarse_gate["gate"]), mirrors)
    for kind, counts in copies_found.per_kind().items():
        per_kind[kind].update(counts)
    merged = (distinct_cheap >= threshold) | (distinct_aligned >= aligned_threshold)
    # The aligned threshold lies above every look-alike by construction; how many unseen
    # look-alikes it would merge is estimated by setting it on half and counting the other half.
    held_out = None
    if aligned_off is None and len(distinct) >= 4:
        half = max(float(distinct_aligned[0::2].max()) + ALIGNED_MARGIN,
                   ALIGNED_MIN)
        held_out = {"merged": int((distinct_aligned[1::2] >= half).sum()),
                    "pairs": int(len(distinct_aligned[1::2])), "threshold": round(half, 4)}
    out.update({"threshold": round(threshold, 4), "aligned_threshold": round(aligned_threshold, 4),
                "aligned_off": aligned_off, "aligned_coarse_gate": coarse_gate,
                "aligned_rule": f"the {LOOK_ALIKE_QUANTILE:.0%} quantile of {len(distinct)} look-alikes' "
                                f"aligned scores + {ALIGNED_MARGIN}, at least {ALIGNED_MIN}; off "
                                f"above {ALIGNED_MAX}",
                "false_merges": {"merged": int(merged.sum()), "pairs": int(len(distinct)),
                                 "held_out": held_out,
                                 "what": "sampled images and their second-nearest image of the "
                                         "data set (look-alikes; distinct unless the data holds "
                                         "two copies of one)"},
                "mirrors": mirrors, "per_kind": per_kind, COPIES_FOUND: copies_found})
    return out


COPIES_FOUND = "_copies_found"    # calibrate's per-copy outcomes; find_near_duplicates takes it out


@dataclass
class CopiesFound:
    """Per kind, per planted calibration copy: found by stage 1; its aligned score, coarse score
    and the cosine the aligned candidate list would rank it by. per_kind(...) counts the copies
    the split finds, given what its verification budgets cut: a pair ranked below the last
    candidate verified (cosine) or below the last fine pass run (coarse score) is not verified."""
    stage1: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    cosine: dict[str, np.ndarray]
    threshold: float
    coarse_gate: float
    mirrors: bool

    def per_kind(self, cosine_cutoff: float = -np.inf, coarse_cutoff: float = -np.inf) -> dict[str, dict[str, Any]]:
        from kubevae.split import planted

        out = {}
        for kind, stage1 in self.stage1.items():
            # Found as the split finds it: by stage 1, or above the coarse gate and the threshold
            # and within the budgets.
            hit = stage1 | ((self.score[kind] >= self.threshold)
                            & (self.coarse[kind] >= max(self.coarse_gate, coarse_cutoff))
                            & (self.cosine[kind] >= cosine_cutoff))
            out[kind] = {"found": int(hit.sum()), "planted": int(len(hit)),
                         "recall": round(float(hit.mean()), 4) if len(hit) else None,
                         "counts_as_copy": kind not in planted.MIRROR or self.mirrors}
        return out


def _coarse_gate(found_coarse: list[np.ndarray]) -> dict[str, Any]:
    """The coarse score below which a candidate skips the aligned stage's fine pass: the
    COARSE_GATE_QUANTILE of the coarse scores of the planted copies that the aligned stage
    found, less COARSE_GATE_MARGIN, within COARSE_GATE_RANGE (measured: docs/split.md)."""
    scores = np.concatenate(found_coarse) if found_coarse else np.zeros(0, np.float32)
    low, high = COARSE_GATE_RANGE
    if len(scores) < COARSE_GATE_MIN_COPIES:
        return {"gate": low, "copies": int(len(scores)),
                "rule": f"fewer than {COARSE_GATE_MIN_COPIES} copies found by the aligned stage: "
                        f"the lowest gate, {low}"}
    gate = float(np.clip(np.quantile(scores, COARSE_GATE_QUANTILE) - COARSE_GATE_MARGIN, low, high))
    return {"gate": round(gate, 4), "copies": int(len(scores)),
            "rule": f"{COARSE_GATE_QUANTILE:.0%} quantile of the coarse scores of the planted copies "
                    f"found by the aligned stage - {COARSE_GATE_MARGIN}, within [{low}, {high}]"}


def method(mirrors: bool = True) -> str:
    """The method in one sentence, for the leakage report."""
    from kubevae.split import align

    return (f"candidates: every pair while pairs x pixels stay within {VERIFY_BUDGET_PIXELS:,}, "
            f"else faiss nearest neighbours (one query per image) of a descriptor: "
            f"{DESCRIPTOR}; each image's best {VERIFY_PER_ITEM} within {VERIFY_MARGIN} cosine of "
            f"its best one (up to {MAX_PER_ITEM}, any cosine, where n x per-image x pixels stays "
            f"within {VERIFY_BUDGET_PIXELS:,}), above a gate calibrated on planted copies (one "
            f"image per set of exact copies); verification, stage 1: max normalised "
            f"cross-correlation over +-{MAX_SHIFT} px of the smoothed luma (at most "
            f"{WORK_MAX_SIDE} px a side); stage 2, for pairs that stage 1 did not merge and "
            f"that are each other's best match (one by its search, the other checked against it "
            f"directly) in the whole image"
            f"{', its mirror image' if mirrors else ''}, its centre {CENTRE_SHARE:.0%}, that centre "
            f"zoomed by {ZOOM_VIEW:g} either way{' (also mirrored)' if mirrors else ''} or turned by "
            f"{ROTATION_VIEW:g} degrees either way (a coarse pass from the view's start on at most {ALIGN_BUDGET_PAIRS:,} pairs or "
            f"{ALIGN_BUDGET_PER_ITEM:g} an image if more, a fine pass on at most {FINE_BUDGET_PAIRS:,} or "
            f"{FINE_BUDGET_PER_ITEM:g} an image of those above a calibrated coarse gate; an image with two "
            f"aligned partners merges with neither): "
            f"{align.describe(mirrors)}; near-blank images (std < {FLAT_STD} levels) by "
            f"{FLAT_LEVELS:g}-level bands of their mean, smooth images (detail < {DETAIL_MIN} "
            f"levels) only when their mean-free pixels differ by <= {RESIDUAL_LEVELS} levels RMS")


def aligned_budgets(n: int) -> tuple[int, int]:
    """(coarse passes, fine passes) the aligned stage may spend on n searched images."""
    return (max(ALIGN_BUDGET_PAIRS, int(ALIGN_BUDGET_PER_ITEM * n)),
            max(FINE_BUDGET_PAIRS, int(FINE_BUDGET_PER_ITEM * n)))


def _aligned_scores(work: np.ndarray, todo: np.ndarray, mirrors: bool,
                    calibration: dict[str, Any], starts: np.ndarray | None = None,
                    fine_budget: int = FINE_BUDGET_PAIRS) -> tuple[np.ndarray, int, int, float]:
    """The aligned scores of the pairs `todo` (best cosine first): a coarse pass on each, the
    fine pass on at most `fine_budget` of those above the calibrated coarse gate, best
    coarse score first; the rest score 0. Returns (scores, fine passes run, pairs above the gate
    left over the budget, the coarse score of the last fine pass run when some were left)."""
    from kubevae.split import align

    scores = np.zeros(len(todo), np.float32)
    if not len(todo):
        return scores, 0, 0, -np.inf
    a, b = take_rows(work, todo[:, 0]), take_rows(work, todo[:, 1])
    start = align.coarse_fit(a, b, mirrors, starts=starts)
    gate = float(calibration.get("aligned_coarse_gate", {}).get("gate", COARSE_GATE_RANGE[0]))
    above = np.flatnonzero(start.score >= gate)
    # Over the budget, the best coarse scores go first: they predict a copy better than the
    # descriptor's cosine, which ordered the coarse pass.
    ranked = above[np.argsort(-start.score[above], kind="stable")]
    rows = np.sort(ranked[:fine_budget])
    if len(rows):
        scores[rows] = align.fine_score(a[rows], b[rows], align.subset(start, rows)).score
    cutoff = float(start.score[ranked[fine_budget - 1]]) if len(ranked) > fine_budget else -np.inf
    return scores, len(rows), len(above) - len(rows), cutoff


def _count_within_budgets(calibration: dict[str, Any], cosine_cutoff: float, coarse_cutoff: float,
                          budgets: tuple[int, int]) -> None:
    """The report's per-kind recall as this run found it: the calibration copies that the
    verification budgets would have left unverified do not count (at 1,000,000 images most
    aligned candidates are over the budget: docs/split.md, "What is left")."""
    copies_found = calibration.pop(COPIES_FOUND, None)
    if copies_found is None:
        return
    calibration["budgets"] = {
        "coarse_passes": budgets[0], "fine_passes": budgets[1],
        "aligned_cosine_cutoff": None if not np.isfinite(cosine_cutoff) else round(cosine_cutoff, 4),
        "fine_coarse_cutoff": None if not np.isfinite(coarse_cutoff) else round(coarse_cutoff, 4),
        "what": "per-kind recall counts a copy the aligned stage finds only if its pair would rank "
                "within this run's budgets: at or above the cosine of the last candidate given a "
                f"coarse pass ({budgets[0]:,} at most) and the coarse score of the last "
                f"given a fine pass ({budgets[1]:,} at most); None: nothing was left over"}
    for kind, counts in copies_found.per_kind(cosine_cutoff, coarse_cutoff).items():
        calibration["per_kind"][kind].update(counts)


def find_near_duplicates(images: ImageRows, threshold: float | None = None,
                         threshold_source: str = "given",
                         keys: np.ndarray | None = None, mirrors: bool = True) -> NearDuplicates:
    """Verified near-duplicate pairs of uint8 N x H x W x C images (a memmap is fine).

    keys: per item, a key equal for exact copies (the pixels' sha256); only the first item of
    each key is searched and verified (its copies are grouped with it by the exact relation).
    mirrors: mirror images count as copies (the default: saved flips are augmentations)."""

    start = time.monotonic()
    n = len(images)
    ready = prepare(images)
    work, means, stds, details, described = ready.work, ready.means, ready.stds, ready.details, ready.descriptors
    reps = np.arange(n)
    rep_keys = None if keys is None else np.asarray(keys)
    if keys is not None and n:
        codes = pd.factorize(pd.Series(keys).reset_index(drop=True))[0]
        _, first = np.unique(codes, return_index=True)
        if len(first) < n:
            reps = np.sort(first)
            work, means, stds, details, described = (take_rows(x, reps) for x in (work, means, stds, details, described))
        rep_keys = np.asarray(keys)[reps]
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"--near-dup-threshold: expected a correlation in (0, 1], got {threshold}")
    searcher = _Searcher(described) if len(work) >= 2 else None
    views = AlignedViews(work, searcher, mirrors) if searcher is not None and ALIGNED_STAGE else None
    calibration = calibrate(images, stds, rows_of=reps, threshold=threshold, details=details,
                            keys=rep_keys, mirrors=mirrors, work=work, views=views)
    if threshold is None:
        threshold_source = "calibrated on this data set"
    threshold = float(calibration["threshold"])
    aligned_threshold = float(calibration.get("aligned_threshold", 2.0))
    if len(work) < 2:
        pairs, aligned_pairs = np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
        aligned_starts, aligned_cos = np.zeros(0, np.int8), np.zeros(0, np.float32)
        search: dict[str, Any] = {"candidates": 0}
    else:
        pairs, search = candidate_pairs(work, calibration["gate"], searcher)
        aligned_pairs, aligned_starts = np.zeros((0, 2), np.int64), np.zeros(0, np.int8)
        aligned_cos = np.zeros(0, np.float32)
        if views is not None and aligned_threshold <= 1.0:
            aligned_pairs, aligned_starts, aligned_cos, found = views.mutual_pairs()
            search.update(found)
    verify_start = time.monotonic()
    sims = similarity(work, pairs, means, stds, details)
    merged = sims >= threshold
    # The aligned stage: pairs the shift stage did not merge, both with detail, best first.
    m = len(work)
    fresh = ~np.isin(aligned_pairs[:, 0] * m + aligned_pairs[:, 1], pairs[merged, 0] * m + pairs[merged, 1])
    todo, todo_starts, todo_cos = aligned_pairs[fresh], aligned_starts[fresh], aligned_cos[fresh]
    usable = ((details[todo[:, 0]] >= DETAIL_MIN) & (details[todo[:, 1]] >= DETAIL_MIN)
              & (stds[todo[:, 0]] >= FLAT_STD) & (stds[todo[:, 1]] >= FLAT_STD))
    todo, todo_starts, todo_cos = todo[usable], todo_starts[usable], todo_cos[usable]
    budgets = aligned_budgets(m)
    skipped = max(0, len(todo) - budgets[0])
    cosine_cutoff = float(todo_cos[budgets[0] - 1]) if skipped else -np.inf
    todo, todo_starts = todo[:budgets[0]], todo_starts[:budgets[0]]   # best cosine first
    aligned_start = time.monotonic()
    scores, fine_count, fine_skipped, coarse_cutoff = _aligned_scores(work, todo, mirrors, calibration,
                                                                      todo_starts, budgets[1])
    _count_within_budgets(calibration, cosine_cutoff, coarse_cutoff, budgets)
    aligned_merged = scores >= aligned_threshold
    # One aligned partner per image: a copy pairs with its original, while a face or a digit
    # that aligns with several others is a look-alike hub, and its edges would chain a group.
    degree = np.bincount(todo[aligned_merged].ravel(), minlength=len(work))
    aligned_merged &= (degree[todo[:, 0]] == 1) & (degree[todo[:, 1]] == 1)
    # Pairs just below the threshold: shown in the report so that a user can judge it.
    near = (sims < threshold) & (sims >= threshold - 0.05)
    flat = flat_pairs(means, stds)
    pairs_out = np.concatenate([pairs[merged], todo[aligned_merged], flat])
    sims_out = np.concatenate([sims[merged], scores[aligned_merged], np.ones(len(flat), np.float32)])
    if len(pairs_out):
        _, first_pair = np.unique(pairs_out[:, 0] * n + pairs_out[:, 1], return_index=True)
        pairs_out, sims_out = pairs_out[first_pair], sims_out[first_pair]
    search.update({"searched_images": int(len(work)), "exact_copies_skipped": int(n - len(work)),
                   "verified": int(len(pairs)), "merged_pairs": int(len(pairs_out)),
                   "aligned_verified": int(len(todo)), "aligned_merged": int(aligned_merged.sum()),
                   "aligned_skipped_over_budget": int(skipped + fine_skipped),
                   "aligned_fine_verified": int(fine_count),
                   "aligned_seconds": round(time.monotonic() - aligned_start, 3),
                   "near_blank_images": int((stds < FLAT_STD).sum()),
                   "smooth_images": int(((details < DETAIL_MIN) & (stds >= FLAT_STD)).sum()),
                   "verify_seconds": round(time.monotonic() - verify_start, 3),
                   "seconds": round(time.monotonic() - start, 3),
                   "working_size": list(work.shape[1:])})
    return NearDuplicates(reps[pairs_out].reshape(-1, 2).astype(np.int64),
                          sims_out.astype(np.float32), float(threshold), threshold_source,
                          calibration, search, aligned_threshold, mirrors,
                          reps[pairs[near]].reshape(-1, 2), sims[near])
