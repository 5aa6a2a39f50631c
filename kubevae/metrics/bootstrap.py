"""The paired bootstrap: how likely one model is to score better than another on the same items.

Both models were scored on the same N items (the same images for a bound; the same draws for a
disentanglement metric, see kubevae.metrics.disentanglement). One resample draws N items with
replacement, as per-item counts w ~ Multinomial(N, 1/N), and rescores BOTH models with those
counts; the gain is candidate - champion (champion - candidate when lower is better). Over
`num_resamples` resamples:

    p_better   = P(gain > 0) + P(gain = 0) / 2     (ties split evenly: two identical models get 0.5)
    p_beats    = P(gain >= margin)                  (the margin in the score's own units)
    gain_low, gain_high: the 2.5 % and 97.5 % percentiles of the gain (a 95 % interval).

It measures the uncertainty that comes from WHICH test items were drawn, not from training
(another seed could train a different model); Efron & Tibshirani 1993, ch. 13, for the
percentile interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 500
Scorer = Callable[[np.ndarray], float]  # the score given per-item weights (counts)


@dataclass(frozen=True)
class PairedComparison:
    p_better: float
    p_beats_margin: float
    gain: float          # on the items as drawn (all weights 1)
    gain_low: float
    gain_high: float
    num_items: int
    num_resamples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelScores:
    """One model's scores by name (as the evaluate step names them) and, for the scores that
    allow it, the score as a function of per-item weights with the number of items."""

    scores: dict[str, float]
    resamplers: dict[str, tuple[Scorer, int]] = field(default_factory=dict)


def paired_bootstrap(candidate: Scorer, champion: Scorer, num_items: int, *, direction: str,
                     margin: float = 0.0, num_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> PairedComparison:
    """Compare two scorers of the same `num_items` items (see the module docstring)."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction: expected maximize or minimize, got {direction!r}")
    if num_items < 2:
        raise ValueError(f"num_items: a bootstrap needs at least 2 scored items, got {num_items}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples: expected a positive number, got {num_resamples}")
    sign = 1.0 if direction == "maximize" else -1.0

    def gain(weights: np.ndarray) -> float:
        return sign * (candidate(weights) - champion(weights))

    rng = np.random.default_rng(seed)
    uniform = np.full(num_items, 1.0 / num_items)
    gains = np.array([gain(rng.multinomial(num_items, uniform).astype(np.float64))
                      for _ in range(num_resamples)])
    if not np.isfinite(gains).all():
        raise ValueError(f"paired bootstrap: {int((~np.isfinite(gains)).sum())} of "
                         f"{num_resamples} resamples gave a non-finite score")
    low, high = np.percentile(gains, [2.5, 97.5])
    return PairedComparison(
        p_better=float(np.mean(gains > 0) + 0.5 * np.mean(gains == 0)),
        p_beats_margin=float(np.mean(gains >= margin)), gain=gain(np.ones(num_items)),
        gain_low=float(low), gain_high=float(high), num_items=num_items,
        num_resamples=num_resamples, seed=seed)


def weighted_mean(values) -> Scorer:
    """The scorer of a per-item quantity whose score is its mean (a bound, an accuracy)."""
    values = np.asarray(values, dtype=np.float64)
    return lambda weights: float(np.average(values, weights=weights))
