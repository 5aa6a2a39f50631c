"""Unsupervised Disentanglement Ranking (Duan et al., ICLR 2020, "Unsupervised Model Selection
for Variational Disentangled Representation Learning").

Premise: models of one setting (beta, latent size) trained from different seeds agree up to a
permutation and a sign of their latents when they disentangle, and disagree when they do not.
No factors are needed.

Protocol, as disentanglement_lib (evaluation/udr/metrics/udr.py, config udr*.gin):
- codes: the MEAN representation of the same `num_data_points` = 1,000 inputs for every model,
  each latent standardised (zero mean, unit variance);
- latents whose mean KL(q(z_u|x) || N(0, 1)) is below kl_threshold = 0.01 nats are masked out
  (their codes are zeroed and their rows / columns dropped from the similarity matrix);
- for every ordered pair (i, j) of models, a similarity matrix R [D_i, D_j]: the absolute
  coefficients of a Lasso regression (alpha = 0.1) of z_j on z_i, or the absolute Spearman
  correlations between the latents;
- pair score: relative strength, (mean over rows of max^2 / sum + mean over columns of the
  same) / 2; 1 when every active latent matches exactly one latent of the other model;
- model score: the median of its pair scores; the trial's UDR (what the search maximizes) is
  the median of the model scores.

Deviation: a pair where one model has no latent above the threshold has no defined score; it
scores 0 (a model with nothing to agree on is not disentangled), where disentanglement_lib
errors. Caveat (Estermann et al. 2020): UDR is high for models that encode only a few factors
the same way every time, so the search pairs it with the collapse guard of
kubevae.training.selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kubevae.metrics._checks import protocol_note

# disentanglement_lib's udr*.gin (num_data_points, kl_filter_threshold, the Lasso's alpha).
DEFAULT_KL_THRESHOLD = 0.01
DEFAULT_LASSO_ALPHA = 0.1
DEFAULT_NUM_POINTS = 1000
METHODS = ("lasso", "spearman")


def relative_strength(similarity: np.ndarray) -> float:
    """disentanglement_lib's relative_strength_disentanglement of a non-negative matrix."""
    r = np.abs(np.asarray(similarity, dtype=np.float64))
    if r.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = np.nan_to_num(r.max(axis=1) ** 2 / r.sum(axis=1), nan=0.0)
        cols = np.nan_to_num(r.max(axis=0) ** 2 / r.sum(axis=0), nan=0.0)
    return float((rows.mean() + cols.mean()) / 2)


def similarity_matrix(a: np.ndarray, b: np.ndarray, method: str = "lasso",
                      lasso_alpha: float = DEFAULT_LASSO_ALPHA, random_state: int = 0) -> np.ndarray:
    """[D_a, D_b]: how strongly latent u of model a predicts latent v of model b."""
    if method == "lasso":
        from sklearn.linear_model import Lasso

        lasso = Lasso(alpha=lasso_alpha, random_state=random_state).fit(a, b)
        return np.abs(np.atleast_2d(lasso.coef_)).T
    if method == "spearman":
        from scipy.stats import rankdata

        d = a.shape[1]
        ranks = np.concatenate([rankdata(a, axis=0), rankdata(b, axis=0)], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = np.corrcoef(ranks, rowvar=False)
        return np.nan_to_num(np.abs(corr[:d, d:]))
    raise ValueError(f"udr method: expected one of {METHODS}, got {method!r}")


def udr_details(codes: Sequence[np.ndarray], kl_per_dim: Sequence[np.ndarray], *,
                method: str = "lasso", kl_threshold: float = DEFAULT_KL_THRESHOLD,
                lasso_alpha: float = DEFAULT_LASSO_ALPHA, random_state: int = 0) -> dict[str, Any]:
    """UDR of models given their mean codes on the SAME inputs ([N, D_i] each) and their mean
    KL per latent ([D_i] each). Returns the trial score "udr", "model_scores", "pairwise" [M, M]
    (NaN on the diagonal) and "active" (latents above the threshold per model)."""
    if len(codes) < 2 or len(codes) != len(kl_per_dim):
        raise ValueError(f"udr: expected codes and KL vectors of at least 2 models, got "
                         f"{len(codes)} and {len(kl_per_dim)}")
    n = len(codes[0])
    prepared, masks = [], []
    for i, (z, kl) in enumerate(zip(codes, kl_per_dim, strict=True)):
        z, kl = np.asarray(z, np.float64), np.asarray(kl, np.float64)
        if z.ndim != 2 or len(z) != n or z.shape[1] != len(kl):
            raise ValueError(f"udr: model {i}: codes {z.shape} and KL {kl.shape} do not match "
                             f"[{n}, D] and [D]")
        mask = kl > kl_threshold
        std = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
        prepared.append(z * mask)
        masks.append(mask)
    m = len(prepared)
    pairwise = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            if not masks[i].any() or not masks[j].any():
                pairwise[i, j] = 0.0
                continue
            # Masked latents are zero columns: leaving them out is the same fit, without
            # constant inputs (whose correlation is undefined).
            r = similarity_matrix(prepared[i][:, masks[i]], prepared[j][:, masks[j]], method,
                                  lasso_alpha, random_state)
            pairwise[i, j] = relative_strength(r)
    model_scores = [float(np.median(np.delete(pairwise[:, i], i))) for i in range(m)]
    return {"udr": float(np.median(model_scores)), "model_scores": model_scores,
            "pairwise": pairwise.tolist(), "active": [int(k.sum()) for k in masks]}


def udr(codes: Sequence[np.ndarray], kl_per_dim: Sequence[np.ndarray], **kwargs: Any) -> float:
    return udr_details(codes, kl_per_dim, **kwargs)["udr"]


def udr_settings(method: str = "lasso", num_points: int | None = None,
                 kl_threshold: float = DEFAULT_KL_THRESHOLD,
                 lasso_alpha: float = DEFAULT_LASSO_ALPHA) -> dict[str, Any]:
    return {"representation": "mean, standardised", "num_points": num_points, "method": method,
            "lasso_alpha": lasso_alpha if method == "lasso" else None,
            "kl_threshold": kl_threshold, "aggregation": "median over pairs, then over models",
            "protocol": protocol_note(
                "disentanglement_lib evaluation/udr (Duan et al. 2020)",
                {"num_points": num_points, "kl_threshold": kl_threshold,
                 **({"lasso_alpha": lasso_alpha} if method == "lasso" else {})},
                {"num_points": DEFAULT_NUM_POINTS, "kl_threshold": DEFAULT_KL_THRESHOLD,
                 **({"lasso_alpha": DEFAULT_LASSO_ALPHA} if method == "lasso" else {})})}
