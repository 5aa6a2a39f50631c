"""Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of
Disentangled Latent Concepts from Unlabeled Observations", section 3).

Protocol, as disentanglement_lib (evaluation/metrics/sap_score.py, sap_score.gin):

- codes: the MEAN representation of num_train = 10,000 training and num_test = 5,000 test points
  (the caller draws them, disjoint);
- discrete factors (continuous_factors=False, as there for dSprites): the score S_jk of code j for
  factor k is the test accuracy of sklearn LinearSVC(C=0.01, class_weight="balanced") trained on
  code j ALONE to predict v_k;
- continuous factors: S_jk = Cov(z_j, v_k)^2 / (Var z_j Var v_k) on the training points
  (0 when Var z_j <= 1e-12);
- SAP = mean over factors of (largest S_.k - second-largest S_.k).

Deviation: a factor that is constant in the training sample cannot be classified (disentanglement_lib
fails there); it is left out of the mean and named in `sap_details(...)["skipped_factors"]`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from kubevae.metrics._checks import as_generator, check_codes, check_factors, protocol_note
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData

# disentanglement_lib's sap_score.gin (kubevae.metrics.protocol.MetricProtocol takes them from here).
DEFAULT_NUM_TRAIN = 10_000
DEFAULT_NUM_TEST = 5_000


def score_matrix(codes_train, factors_train, codes_test, factors_test,
                 continuous_factors: bool = False) -> np.ndarray:
    """S [D, K]: how well each code alone predicts each factor (NaN row entries: constant factor)."""
    d, k = codes_train.shape[1], factors_train.shape[1]
    scores = np.zeros((d, k))
    for f in range(k):
        y, y_test = factors_train[:, f], factors_test[:, f]
        if len(np.unique(y)) < 2:
            scores[:, f] = np.nan
            continue
        for j in range(d):
            x, x_test = codes_train[:, j], codes_test[:, j]
            if continuous_factors:
                cov = np.cov(x, y, ddof=1)
                scores[j, f] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            else:
                with warnings.catch_warnings():
                    # C=0.01 on a single feature may stop before tolerance; the protocol fixes C.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    svc = LinearSVC(C=0.01, class_weight="balanced").fit(x[:, None], y)
                scores[j, f] = np.mean(svc.predict(x_test[:, None]) == y_test)
    return scores


def sap_details(codes_train, factors_train, codes_test, factors_test, *,
                continuous_factors: bool = False) -> dict[str, Any]:
    codes_train = check_codes(codes_train, "codes_train")
    factors_train = check_factors(factors_train, len(codes_train), "factors_train")
    codes_test = check_codes(codes_test, "codes_test")
    factors_test = check_factors(factors_test, len(codes_test), "factors_test")
    scores = score_matrix(codes_train, factors_train, codes_test, factors_test, continuous_factors)
    defined = ~np.isnan(scores).any(axis=0)
    if not defined.any():
        raise ValueError("factors_train: every factor is constant in this sample, so SAP is undefined")
    if scores.shape[0] < 2:
        gaps = scores[0]
    else:
        ordered = np.sort(scores[:, defined], axis=0)
        gaps = np.full(scores.shape[1], np.nan)
        gaps[defined] = ordered[-1] - ordered[-2]
    return {"sap": float(np.nanmean(gaps)), "per_factor": gaps.tolist(),
            "score_matrix": scores.tolist(), "skipped_factors": np.flatnonzero(~defined).tolist()}


def sap(codes_train, factors_train, codes_test, factors_test, *,
        continuous_factors: bool = False) -> float:
    """The SAP score of mean codes [N, D] for factors [N, K]."""
    return sap_details(codes_train, factors_train, codes_test, factors_test,
                       continuous_factors=continuous_factors)["sap"]


def compute_sap(ground_truth: GroundTruthData, representation_fn, random_state, *,
                num_train: int = DEFAULT_NUM_TRAIN, num_test: int = DEFAULT_NUM_TEST,
                continuous_factors: bool = False) -> dict[str, Any]:
    """SAP of disjoint draws of num_train and num_test items (random_state), as
    disentanglement_lib's compute_sap: sap_details plus the sizes drawn."""
    rng = as_generator(random_state)
    represent = CachedRepresentation.wrap(ground_truth, representation_fn)
    train, test = ground_truth.sample_disjoint(num_train, num_test, rng)
    details = sap_details(represent(train), ground_truth.factors[train], represent(test),
                          ground_truth.factors[test], continuous_factors=continuous_factors)
    return {**details, "num_train": len(train), "num_test": len(test)}


def sap_settings(num_train: int | None = None, num_test: int | None = None,
                 continuous_factors: bool = False) -> dict[str, Any]:
    return {"representation": "mean", "num_train": num_train, "num_test": num_test,
            "continuous_factors": continuous_factors,
            "classifier": None if continuous_factors
            else "sklearn LinearSVC(C=0.01, class_weight='balanced') on one code",
            "protocol": protocol_note("disentanglement_lib sap_score.gin",
                                      {"num_train": num_train, "num_test": num_test},
                                      {"num_train": DEFAULT_NUM_TRAIN, "num_test": DEFAULT_NUM_TEST})}
