"""Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

Protocol, as disentanglement_lib (evaluation/metrics/mig.py with unsupervised_study_v1/mig.gin):

- codes: the MEAN representation E_q[z|x] (never a sample) of num_train = 10,000 points drawn
  from the ground-truth data (the caller draws them; kubevae.evaluation.full does);
- every code dimension is discretized into num_bins = 20 equal-width bins over its own observed
  range (the edges of np.histogram, applied with np.digitize): disentanglement_lib's
  "histogram_discretizer";
- I(v_k; z_j): discrete mutual information in nats (sklearn.metrics.mutual_info_score's formula,
  on a contingency table counted with np.bincount, so that a bootstrap can weight items);
  H(v_k): the factor's discrete entropy, I(v_k; v_k);
- MIG = mean over factors k of [I(v_k; z_(1)) - I(v_k; z_(2))] / H(v_k), z_(1) and z_(2) being the
  codes with the largest and second-largest mutual information with v_k.

Deviation: a factor that is constant in the sample has H = 0 and no defined gap
(disentanglement_lib divides by zero there). It is left out of the mean and named in
`mig_details(...)["skipped_factors"]`; if every factor is constant, ValueError.

Other libraries estimate the MI differently (KDE, sampling the posterior, quantile bins), and
Locatello et al. 2019 show how far seeds and settings move these scores: always report
`mig_settings(...)` beside the score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kubevae.metrics._checks import as_generator, check_pair, protocol_note
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData

# disentanglement_lib's mig.gin (kubevae.metrics.protocol.MetricProtocol takes them from here).
DEFAULT_NUM_BINS = 20
DEFAULT_NUM_TRAIN = 10_000


def histogram_discretize(codes: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
    """[N, D] continuous codes -> [N, D] bin labels in 1..num_bins, each dimension on its own range."""
    if num_bins < 2:
        raise ValueError(f"num_bins: expected at least 2 bins, got {num_bins}")
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], bins=num_bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def _labels(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer labels 0..n-1 of any discrete values, and n."""
    uniques, inverse = np.unique(values, return_inverse=True)
    return inverse.ravel(), len(uniques)


def _mutual_information(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int],
                        weights: np.ndarray | None = None) -> float:
    """Discrete I(a; b) in nats from labels (see _labels), each item counted `weights` times
    (default once): sklearn.metrics.mutual_info_score's formula, on a weighted contingency."""
    (a_labels, na), (b_labels, nb) = a, b
    joint = np.bincount(a_labels * nb + b_labels, weights=weights, minlength=na * nb).reshape(na, nb)
    total = joint.sum()
    rows, cols = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    outer = (rows @ cols)[nz]
    p = joint[nz] / total
    mi = float(np.sum(p * (np.log(joint[nz]) - np.log(outer) + np.log(total))))
    return max(mi, 0.0)


def mutual_information_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """[D, K] matrix of I(z_j; v_k) in nats between discrete codes and factors."""
    codes = [_labels(discrete_codes[:, c]) for c in range(discrete_codes.shape[1])]
    values = [_labels(factors[:, f]) for f in range(factors.shape[1])]
    return np.array([[_mutual_information(v, z) for v in values] for z in codes])


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    return np.array([_mutual_information(v, v) for v in (_labels(factors[:, f]) for f in range(factors.shape[1]))])


def _gaps(mi: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """Per-factor normalised gap between the two codes most informative about it (NaN where the
    factor is constant)."""
    if mi.shape[0] < 2:
        # With one code there is no second-best: the gap is the MI itself.
        mi = np.vstack([mi, np.zeros((1, mi.shape[1]))])
    top_two = np.sort(mi, axis=0)[::-1][:2]
    defined = entropy > 0
    per_factor = np.full(mi.shape[1], np.nan)
    per_factor[defined] = (top_two[0, defined] - top_two[1, defined]) / entropy[defined]
    return per_factor


def mig_details(codes, factors, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, Any]:
    """MIG with its parts: the per-factor gaps, the MI matrix [D, K] and skipped factors."""
    codes, factors = check_pair(codes, factors, "codes", "factors")
    mi = mutual_information_matrix(histogram_discretize(codes, num_bins), factors)
    entropy = factor_entropies(factors)
    defined = entropy > 0
    if not defined.any():
        raise ValueError("factors: every factor is constant in this sample, so MIG is undefined")
    per_factor = _gaps(mi, entropy)
    return {"mig": float(np.nanmean(per_factor)), "per_factor": per_factor.tolist(),
            "mutual_information": mi.tolist(), "factor_entropy": entropy.tolist(),
            "skipped_factors": np.flatnonzero(~defined).tolist()}


def mig_of_weights(codes, factors, num_bins: int = DEFAULT_NUM_BINS) -> Callable[[np.ndarray], float]:
    """MIG of these items as a function of how often each is counted (a bootstrap resample's
    counts): the paired bootstrap of kubevae.metrics.bootstrap calls it. Each code keeps the
    bins of the whole sample (the resample's own range would differ by an item or two)."""
    codes, factors = check_pair(codes, factors, "codes", "factors")
    discrete = histogram_discretize(codes, num_bins)
    code_labels = [_labels(discrete[:, c]) for c in range(discrete.shape[1])]
    factor_labels = [_labels(factors[:, f]) for f in range(factors.shape[1])]

    def score(weights: np.ndarray) -> float:
        mi = np.array([[_mutual_information(v, z, weights) for v in factor_labels] for z in code_labels])
        entropy = np.array([_mutual_information(v, v, weights) for v in factor_labels])
        per_factor = _gaps(mi, entropy)
        return float(np.nanmean(per_factor)) if np.isfinite(per_factor).any() else float("nan")
    return score


def compute_mig(ground_truth: GroundTruthData, representation_fn, random_state, *,
                num_train: int = DEFAULT_NUM_TRAIN, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, Any]:
    """MIG of num_train items drawn (without replacement) from the ground-truth data with
    random_state, as disentanglement_lib's compute_mig: mig_details plus "num_points" and
    "points" (the items scored, for paired comparisons)."""
    rng = as_generator(random_state)
    represent = CachedRepresentation.wrap(ground_truth, representation_fn)
    points, _ = ground_truth.sample_disjoint(num_train, 0, rng)
    details = mig_details(represent(points), ground_truth.factors[points], num_bins)
    return {**details, "num_points": len(points), "points": points}


def mig(codes, factors, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """The Mutual Information Gap of codes [N, D] (mean representation) for factors [N, K]."""
    return mig_details(codes, factors, num_bins)["mig"]


def mig_settings(num_bins: int = DEFAULT_NUM_BINS, num_points: int | None = None) -> dict[str, Any]:
    """The settings a MIG was computed with; `protocol` says how they compare with mig.gin's."""
    return {"representation": "mean", "num_points": num_points, "num_bins": num_bins,
            "discretizer": "histogram: equal-width bins over each code's observed range",
            "mutual_information": "discrete, sklearn.metrics.mutual_info_score's formula (nats)",
            "normalization": "entropy of the factor", "constant_factors": "left out of the mean",
            "protocol": protocol_note("disentanglement_lib mig.gin",
                                      {"num_train": num_points, "num_bins": num_bins},
                                      {"num_train": DEFAULT_NUM_TRAIN, "num_bins": DEFAULT_NUM_BINS})}
