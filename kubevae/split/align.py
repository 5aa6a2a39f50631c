"""Aligned verification: copies that moved more than a shift (re-crops, zooms, rotations,
aspect changes, letterboxing, mirror images) or carry an overlay (a watermark, a caption).

For a batch of candidate pairs (a, b) it finds the map that best lays b over a and scores the
pair by the correlation of what then overlaps, less the worst-matching pixels:

1. Both images, luma, area-resized to FINE_SIDE (and COARSE_SIDE for the first pass), each
   standardised (mean 0, std 1): brightness and contrast edits do not matter.
2. The map is a rotation of an axis-aligned stretch plus a shift, after a left-right flip when
   mirrored, kept within the bounds of a copy's edits (rotation, size, aspect, shift). It
   starts at the identity and, with mirror matching on, also at the mirror image (per pair,
   either or both: `starts`); a coarse pass (Adam on the correlation over the overlap) runs
   from each and keeps the better start, then a fine pass refines it. Only the overlap counts (b's frame where it lands on a), so bars and
   borders fall away.
3. Score: the Pearson correlation of the two images' band-pass detail over the overlap, after
   dropping the TRIM share of pixels that disagree most (an overlay covering under a tenth of
   the frame), or 0 when the overlap is under MIN_OVERLAP of the frame. Detail, because distinct
   look-alikes (faces, digits) share a coarse layout that the map lines up. A copy scores near 1; the threshold is set against
   distinct images of the same data set (kubevae.split.neardup.calibrate).

Batched in torch (grid_sample and autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kubevae.hardware import in_threads

COARSE_SIDE, FINE_SIDE = 16, 32
COARSE_STEPS, FINE_STEPS = 20, 12
LEARNING_RATE = (0.03, 0.01)     # per pass, in normalised units (translation: 1 = half a frame)
TRIM = 0.10                      # share of the overlap dropped: an overlay under a tenth
MIN_OVERLAP = 0.45               # of a's frame
MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.7, 1.45)        # a copy's content at 0.7x to 1.45x the original's size
MAX_ASPECT = 1.4                 # ratio of the map's two scales (a one-sided letterbox: 1.33)
MAX_TRANSLATION = 0.35           # half-frames
BATCH_PAIRS = 2048
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
_EPS = 1e-6

_LOG_SCALE = (-math.log(SCALE_RANGE[1]), -math.log(SCALE_RANGE[0]))  # theta's scale is 1/size
_LOG_ASPECT = math.log(MAX_ASPECT) / 2
_LOWER = torch.tensor([_LOG_SCALE[0], -math.radians(MAX_ROTATION_DEG), -_LOG_ASPECT,
                       -MAX_TRANSLATION, -MAX_TRANSLATION])
_UPPER = torch.tensor([_LOG_SCALE[1], math.radians(MAX_ROTATION_DEG), _LOG_ASPECT,
                       MAX_TRANSLATION, MAX_TRANSLATION])


@dataclass
class Aligned:
    score: np.ndarray        # P: trimmed correlation after alignment (0: too little overlap)
    mirrored: np.ndarray     # P: bool, the better start was the mirror image
    overlap: np.ndarray      # P: share of a's frame covered by b after the map
    coarse: np.ndarray       # P: correlation over the overlap after the coarse pass


def _prepared(work: np.ndarray, side: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(work, np.float32))[:, None]
    if x.shape[-2:] != (side, side):
        if min(x.shape[-2:]) >= side:
            x = F.interpolate(x, size=(side, side), mode="area")
        else:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)


def _weighted_ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # One pass over the pixels (weighted moments), not centred copies: the images are
    # standardised, so the sums stay small and float32 keeps the difference exact enough.
    dims = (1, 2, 3)
    wa, wb = w * a, w * b
    sw = w.sum(dim=dims).clamp_min(_EPS)
    sa, sb = wa.sum(dim=dims), wb.sum(dim=dims)
    cov = (wa * b).sum(dim=dims) - sa * sb / sw
    va = ((wa * a).sum(dim=dims) - sa * sa / sw).clamp_min(0)
    vb = ((wb * b).sum(dim=dims) - sb * sb / sw).clamp_min(0)
    return cov / torch.sqrt(va * vb + _EPS)


def _theta(params: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Affine maps (a's coordinates -> b's) from (log scale, angle, log aspect, tx, ty). No
    shear: a copy's edits do not carry one, and every freedom lets distinct images match."""
    log_s, angle, log_a, tx, ty = params.unbind(1)
    sx, sy = torch.exp(log_s + log_a), torch.exp(log_s - log_a)
    cos, sin = torch.cos(angle), torch.sin(angle)
    flip = torch.where(mirrored, -1.0, 1.0)
    row0 = torch.stack([cos * sx * flip, -sin * sy, tx], 1)
    row1 = torch.stack([sin * sx * flip, cos * sy, ty], 1)
    return torch.stack([row0, row1], 1)


def _grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (N, 1, h, w), align_corners=False), written out: its batched matrix
    product with an inner size of 3 cost more than the broadcast sums (measured: docs/split.md)."""
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)[None, None, :]
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)[None, :, None]
    t = theta[:, :, :, None, None]
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


def _warp(b: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grid = _grid(theta, *b.shape[-2:])
    warped = F.grid_sample(b, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1).float()[:, None]
    return warped, inside


def _fit(a: torch.Tensor, b: torch.Tensor, params: torch.Tensor, mirrored: torch.Tensor,
         steps: int, lr: float, robust: bool = False) -> torch.Tensor:
    """Adam on the correlation over the overlap; the parameters are put back within the bounds
    of a copy's edits after every step. Robust: each step leaves out the TRIM share of pixels
    that disagree most, so that an overlay does not pull the map."""
    params = params.clone().requires_grad_(True)
    moment, second = torch.zeros_like(params), torch.zeros_like(params)
    ones = torch.ones_like(b)
    for step in range(1, steps + 1):
        grid = _grid(_theta(params, mirrored), *b.shape[-2:])
        warped = F.grid_sample(b, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if robust:
            with torch.no_grad():
                weight = weight * _agreeing(a, warped, (weight > 0.99).float())
        (gradient,) = torch.autograd.grad(-_weighted_ncc(a, warped, weight).sum(), params)
        with torch.no_grad():
            # Adam (torch.optim.Adam's defaults), written out: torch.optim imports torch._dynamo
            # on first use, over a second of a split (docs/split.md).
            moment.mul_(ADAM_BETAS[0]).add_(gradient, alpha=1 - ADAM_BETAS[0])
            second.mul_(ADAM_BETAS[1]).addcmul_(gradient, gradient, value=1 - ADAM_BETAS[1])
            denom = (second / (1 - ADAM_BETAS[1] ** step)).sqrt_().add_(ADAM_EPS)
            params.sub_(lr / (1 - ADAM_BETAS[0] ** step) * moment / denom)
            params.copy_(torch.maximum(torch.minimum(params, _UPPER), _LOWER))
    return params.detach()


def _agreeing(a: torch.Tensor, warped: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """1 where the standardised residual is within its (1 - TRIM) quantile over the overlap."""
    sw = inside.sum(dim=(1, 2, 3)).clamp_min(_EPS)

    def standard(x: torch.Tensor) -> torch.Tensor:
        m = (inside * x).sum(dim=(1, 2, 3)) / sw
        d = x - m[:, None, None, None]
        s = torch.sqrt((inside * d * d).sum(dim=(1, 2, 3)) / sw).clamp_min(1e-3)
        return d / s[:, None, None, None]

    residual = (standard(a) - standard(warped)).abs()
    return (residual <= _upper_quantile(residual, inside > 0)[:, None, None, None]).float()


def _upper_quantile(values: torch.Tensor, mask: torch.Tensor, q: float = 1 - TRIM) -> torch.Tensor:
    """torch.nanquantile(values where mask else nan, q) per row (0 for an empty row), from the
    top k values, not a full sort: with q near 1, k is a small share of the row."""
    flat = torch.where(mask, values, torch.full_like(values, -math.inf)).flatten(1)
    count = mask.flatten(1).sum(dim=1)
    position = (count - 1).clamp_min(0) * q
    low, high = position.floor().long(), position.ceil().long()
    from_top_low, from_top_high = count - 1 - low, count - 1 - high  # ranks among the top values
    k = int(from_top_low.max().clamp_min(0)) + 1
    top = torch.topk(flat, min(k, flat.shape[1]), dim=1).values
    v_low = top.gather(1, from_top_low.clamp_min(0)[:, None])[:, 0]
    v_high = top.gather(1, from_top_high.clamp_min(0)[:, None])[:, 0]
    cut = v_low + (position - low) * (v_high - v_low)
    return torch.where(count > 0, cut, torch.zeros_like(cut))


def _detail(x: torch.Tensor) -> torch.Tensor:
    """What two passes of a 3x3 binomial filter take away: the band-pass detail."""
    blurred = x
    for _ in range(2):  # separable and by slices: a one-channel conv2d is slow on the CPU
        p = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
        p = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4
        blurred = (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) / 4
    return x - blurred


def _trimmed_score(a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, overlap): the correlation of the aligned pair's band-pass detail over the overlap
    (less a pixel at its edge), without the TRIM share that disagrees most. Detail, not the
    pixels: distinct faces or digits share their coarse layout, which a map lines up, while a
    copy keeps the fine structure too (measured: docs/split.md)."""
    warped, inside = _warp(b, theta)
    da, dw = _detail(a), _detail(warped)
    core = (F.avg_pool2d(inside, 3, 1, 1) > 0.999).float()
    return _weighted_ncc(da, dw, core * _agreeing(da, dw, core)), inside.mean(dim=(1, 2, 3))


@dataclass
class CoarseFit:
    params: torch.Tensor     # P x 5: the coarse pass's map (see _theta)
    mirrored: np.ndarray     # P: bool, the better start was the mirror image
    score: np.ndarray        # P: correlation over the overlap at COARSE_SIDE after the map


IDENTITY, MIRROR = 1, 2          # starts of the coarse pass, as bits: IDENTITY | MIRROR is both


def default_starts(count: int, mirrors: bool) -> np.ndarray:
    return np.full(count, IDENTITY | MIRROR if mirrors else IDENTITY, np.int8)


def coarse_fit(a: np.ndarray, b: np.ndarray, mirrors: bool = True,
               batch_pairs: int = BATCH_PAIRS, starts: np.ndarray | None = None) -> CoarseFit:
    """The first pass, at COARSE_SIDE from the identity (and the mirror image): about 40% of a
    pair's cost. Its score separates copies from most look-alikes before the fine pass.
    starts: per pair, which starts to run (IDENTITY, MIRROR or both; default: both when
    mirrors, else the identity): the split knows from the view that found a pair whether it
    can be a mirror image, and a start costs half the pass."""
    p = len(a)
    starts = default_starts(p, mirrors) if starts is None else np.asarray(starts)
    params, flips = torch.zeros(p, 5), np.zeros(p, bool)
    score = np.full(p, -np.inf, np.float32)
    batches = [(flag, rows[first:first + batch_pairs])
               for flag, rows in ((False, np.flatnonzero(starts & IDENTITY)), (True, np.flatnonzero(starts & MIRROR)))
               for first in range(0, len(rows), batch_pairs)]

    def one(batch: tuple[bool, np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        flag, part = batch
        ac, bc = _prepared(a[part], COARSE_SIDE), _prepared(b[part], COARSE_SIDE)
        mirrored = torch.full((len(part),), flag)
        fitted = _fit(ac, bc, torch.zeros(len(part), 5), mirrored, COARSE_STEPS, LEARNING_RATE[0])
        with torch.no_grad():
            warped, inside = _warp(bc, _theta(fitted, mirrored))
            return fitted, torch.nan_to_num(_weighted_ncc(ac, warped, inside), nan=0.0).numpy()

    for (flag, part), (fitted, value) in zip(batches, in_threads(one, batches), strict=True):
        better = value > score[part]      # the identity (its batches come first) wins a tie
        params[part[better]] = fitted[torch.from_numpy(better)]
        flips[part[better]], score[part[better]] = flag, value[better]
    return CoarseFit(params, flips, np.where(np.isfinite(score), score, 0.0).astype(np.float32))


def fine_score(a: np.ndarray, b: np.ndarray, start: CoarseFit,
               batch_pairs: int = BATCH_PAIRS) -> Aligned:
    """The second pass from the coarse map, at FINE_SIDE with the trim, and the score."""
    p = len(a)
    scores, overlaps = np.zeros(p, np.float32), np.zeros(p, np.float32)

    def one(first: int) -> None:
        sl = slice(first, first + batch_pairs)
        mirrored = torch.from_numpy(start.mirrored[sl])
        af, bf = _prepared(a[sl], FINE_SIDE), _prepared(b[sl], FINE_SIDE)
        params = _fit(af, bf, start.params[sl], mirrored, FINE_STEPS, LEARNING_RATE[1], robust=True)
        with torch.no_grad():
            score, overlap = _trimmed_score(af, bf, _theta(params, mirrored))
            ok = (overlap >= MIN_OVERLAP) & torch.isfinite(score)
            score = torch.where(ok, score.clamp(-1, 1), torch.zeros_like(score))
        scores[sl], overlaps[sl] = score.numpy(), overlap.numpy()

    in_threads(one, range(0, p, batch_pairs))
    return Aligned(scores, start.mirrored.copy(), overlaps, start.score.copy())


def aligned_similarity(a: np.ndarray, b: np.ndarray, mirrors: bool = True,
                       batch_pairs: int = BATCH_PAIRS, starts: np.ndarray | None = None) -> Aligned:
    """a, b: P x h x w working images (uint8 luma). The trimmed correlation after the best map
    of b onto a within the bounds of a copy's edits: both passes on every pair (the split's
    stage gates the fine pass itself, kubevae.split.neardup._aligned_scores)."""
    start = coarse_fit(a, b, mirrors, batch_pairs, starts)
    return fine_score(a, b, start, batch_pairs) if len(a) else \
        Aligned(np.zeros(0, np.float32), start.mirrored, np.zeros(0, np.float32), start.score)


def subset(fit: CoarseFit, rows: np.ndarray) -> CoarseFit:
    return CoarseFit(fit.params[torch.from_numpy(rows)], fit.mirrored[rows], fit.score[rows])


def describe(mirrors: bool = True) -> str:
    starts = "identity and mirror starts" if mirrors else "identity start, no mirror images"
    return (f"alignment by rotation, scale, aspect and shift ({starts}; {COARSE_STEPS}+"
            f"{FINE_STEPS} Adam steps at {COARSE_SIDE} and {FINE_SIDE} px; rotation <= "
            f"{MAX_ROTATION_DEG:g} deg, size x{SCALE_RANGE[0]}-{SCALE_RANGE[1]}, aspect <= "
            f"{MAX_ASPECT}, overlap >= {MIN_OVERLAP:.0%}), then the correlation of band-pass detail "
            f"without the {TRIM:.0%} worst-matching pixels")
