"""Disentanglement, Completeness and Informativeness (Eastwood & Williams 2018).

Protocol, as disentanglement_lib (evaluation/metrics/dci.py):

- codes: the MEAN representation of num_train = 10,000 training points and num_test = 5,000
  test points drawn from the ground-truth data (disjoint draws; the caller draws them);
- for every factor k, one classifier predicts v_k from all codes; its feature importances form
  column k of the importance matrix R [D, K] (absolute values). disentanglement_lib uses
  sklearn's GradientBoostingClassifier() with default settings: here "gradient_boosting",
  the default, is exactly that, with random_state fixed so that the score is reproducible
  (disentanglement_lib leaves it unseeded);
- disentanglement = sum_j rho_j (1 - H_K(P_j.)), P_jk = R_jk / sum_k R_jk, rho_j = sum_k R_jk / sum R;
- completeness   = sum_k rho_k (1 - H_D(P_.k)), P_jk = R_jk / sum_j R_jk, rho_k = sum_j R_jk / sum R;
  (H_B is the entropy with logarithm base B; 1e-11 is added before normalizing, as there);
- informativeness = the mean over factors of the classifiers' TEST accuracy
  (disentanglement_lib's "informativeness_test"; the training accuracy is in `dci_details`).

Deviation available for small CPUs: gradient boosting fits one tree per class per stage, which
takes minutes per factor with 40 classes at 10,000 points on one core. importance_model=
"random_forest" (RandomForestClassifier(n_estimators=100), impurity importances) is much faster;
its scores are not comparable to published DCI numbers, and `dci_settings` says which was used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

from kubevae.metrics._checks import as_generator, check_codes, check_factors, protocol_note
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData

IMPORTANCE_MODELS = ("gradient_boosting", "random_forest")
# disentanglement_lib's dci.gin (kubevae.metrics.protocol.MetricProtocol takes them from here).
DEFAULT_NUM_TRAIN = 10_000
DEFAULT_NUM_TEST = 5_000
DEFAULT_IMPORTANCE_MODEL = "gradient_boosting"


def _classifier(importance_model: str, random_state: int):
    if importance_model == "gradient_boosting":
        return GradientBoostingClassifier(random_state=random_state)
    if importance_model == "random_forest":
        return RandomForestClassifier(n_estimators=100, random_state=random_state, n_jobs=1)
    raise ValueError(f"importance_model: expected one of {IMPORTANCE_MODELS}, got {importance_model!r}")


def importance_matrix(codes_train, factors_train, codes_test, factors_test, *,
                      importance_model: str = DEFAULT_IMPORTANCE_MODEL, random_state: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R [D, K], train accuracy per factor [K], test accuracy per factor [K])."""
    d, k = codes_train.shape[1], factors_train.shape[1]
    importance = np.zeros((d, k))
    train_acc, test_acc = np.zeros(k), np.zeros(k)
    for f in range(k):
        if len(np.unique(factors_train[:, f])) < 2:
            # A constant factor cannot be classified; it gets no importance and perfect accuracy.
            train_acc[f] = 1.0
            test_acc[f] = float(np.mean(factors_test[:, f] == factors_train[0, f]))
            continue
        model = _classifier(importance_model, random_state).fit(codes_train, factors_train[:, f])
        importance[:, f] = np.abs(model.feature_importances_)
        train_acc[f] = np.mean(model.predict(codes_train) == factors_train[:, f])
        test_acc[f] = np.mean(model.predict(codes_test) == factors_test[:, f])
    return importance, train_acc, test_acc


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean over codes of 1 - H_K(code's importance over factors)."""
    if importance.shape[1] < 2:
        per_code = np.ones(importance.shape[0])
    else:
        per_code = 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def completeness(importance: np.ndarray) -> float:
    """Importance-weighted mean over factors of 1 - H_D(factor's importance over codes)."""
    if importance.shape[0] < 2:
        per_factor = np.ones(importance.shape[1])
    else:
        per_factor = 1.0 - entropy(importance + 1e-11, base=importance.shape[0])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))


def dci_details(codes_train, factors_train, codes_test, factors_test, *,
                importance_model: str = DEFAULT_IMPORTANCE_MODEL, random_state: int = 0) -> dict[str, Any]:
    codes_train = check_codes(codes_train, "codes_train")
    factors_train = check_factors(factors_train, len(codes_train), "factors_train")
    codes_test = check_codes(codes_test, "codes_test")
    factors_test = check_factors(factors_test, len(codes_test), "factors_test")
    if codes_test.shape[1] != codes_train.shape[1] or factors_test.shape[1] != factors_train.shape[1]:
        raise ValueError(f"codes_test/factors_test: shapes {codes_test.shape}/{factors_test.shape} "
                         f"do not match codes_train/factors_train {codes_train.shape}/{factors_train.shape}")
    importance, train_acc, test_acc = importance_matrix(
        codes_train, factors_train, codes_test, factors_test,
        importance_model=importance_model, random_state=random_state)
    return {"disentanglement": disentanglement(importance), "completeness": completeness(importance),
            "informativeness": float(test_acc.mean()),
            "informativeness_train": float(train_acc.mean()),
            "test_accuracy_per_factor": test_acc.tolist(), "importance_matrix": importance.tolist()}


def dci(codes_train, factors_train, codes_test, factors_test, *,
        importance_model: str = DEFAULT_IMPORTANCE_MODEL, random_state: int = 0) -> dict[str, float]:
    """{"disentanglement", "completeness", "informativeness"} of mean codes [N, D] for factors [N, K]."""
    details = dci_details(codes_train, factors_train, codes_test, factors_test,
                          importance_model=importance_model, random_state=random_state)
    return {key: details[key] for key in ("disentanglement", "completeness", "informativeness")}


def compute_dci(ground_truth: GroundTruthData, representation_fn, random_state, *,
                num_train: int = DEFAULT_NUM_TRAIN, num_test: int = DEFAULT_NUM_TEST,
                importance_model: str = DEFAULT_IMPORTANCE_MODEL, classifier_seed: int = 0
                ) -> dict[str, Any]:
    """DCI of disjoint draws of num_train and num_test items (random_state), as
    disentanglement_lib's compute_dci: dci_details plus "num_train" and "num_test" (the sizes
    drawn; both shrink in proportion on small data). classifier_seed seeds the classifiers."""
    rng = as_generator(random_state)
    represent = CachedRepresentation.wrap(ground_truth, representation_fn)
    train, test = ground_truth.sample_disjoint(num_train, num_test, rng)
    details = dci_details(represent(train), ground_truth.factors[train], represent(test),
                          ground_truth.factors[test], importance_model=importance_model,
                          random_state=classifier_seed)
    return {**details, "num_train": len(train), "num_test": len(test)}


def dci_settings(importance_model: str = DEFAULT_IMPORTANCE_MODEL, num_train: int | None = None,
                 num_test: int | None = None, random_state: int = 0) -> dict[str, Any]:
    classifier = {"gradient_boosting": "sklearn GradientBoostingClassifier() defaults",
                  "random_forest": "sklearn RandomForestClassifier(n_estimators=100)"}[importance_model]
    return {"representation": "mean", "num_train": num_train, "num_test": num_test,
            "importance_model": importance_model, "classifier": classifier,
            "classifier_random_state": random_state,
            "informativeness": "mean test accuracy over factors",
            "protocol": protocol_note(
                "disentanglement_lib dci.gin",
                {"num_train": num_train, "num_test": num_test, "importance_model": importance_model},
                {"num_train": DEFAULT_NUM_TRAIN, "num_test": DEFAULT_NUM_TEST,
                 "importance_model": DEFAULT_IMPORTANCE_MODEL}),
            "deviation": None if importance_model == DEFAULT_IMPORTANCE_MODEL
            else "random forest importances instead of gradient boosting (faster on CPU)"}
