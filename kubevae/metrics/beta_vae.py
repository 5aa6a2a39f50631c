"""The beta-VAE disentanglement metric (Higgins et al. 2017).

Protocol, as disentanglement_lib (evaluation/metrics/beta_vae.py, beta_vae_sklearn.gin):

- one point: a factor k drawn uniformly; batch_size = 64 pairs of observations, the two of a pair
  sharing the value of factor k (everything else drawn independently); the feature vector is
  mean over pairs of |z(x1) - z(x2)| (MEAN representation), the label is k;
- num_train = 10,000 training points fit a logistic regression (scikit-learn); train_accuracy is
  its accuracy on them, eval_accuracy (THE score) on num_eval = 5,000 fresh points.

Deviation: disentanglement_lib used LogisticRegression() with the scikit-learn defaults of its day
(liblinear, one-vs-rest); today's defaults are lbfgs with a multinomial loss, used here with
max_iter=1000 so that it converges. Sampling is by index lookup into the dataset
(kubevae.metrics.ground_truth), and the representation function runs once per item.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from kubevae.metrics._checks import as_generator, protocol_note
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData

DEFAULTS = {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000}


def compute_beta_vae(ground_truth: GroundTruthData, representation_fn, random_state, *,
                   batch_size: int = 64, num_train: int = 10_000, num_eval: int = 5_000
                   ) -> dict[str, float]:
    """{"train_accuracy", "eval_accuracy", "eval_correct"}; eval_accuracy is the score,
    eval_correct says per evaluation point whether the classifier got it right."""
    rng = as_generator(random_state)
    represent = CachedRepresentation.wrap(ground_truth, representation_fn)
    x_train, y_train = _points(ground_truth, represent, rng, batch_size, num_train)
    if len(np.unique(y_train)) < 2:
        raise ValueError("ground_truth: the beta-VAE metric needs at least two factors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=1000, random_state=int(rng.integers(2**31 - 1)))
        model.fit(x_train, y_train)
    x_eval, y_eval = _points(ground_truth, represent, rng, batch_size, num_eval)
    eval_correct = model.predict(x_eval) == y_eval
    return {"train_accuracy": float(model.score(x_train, y_train)),
            "eval_accuracy": float(eval_correct.mean()), "eval_correct": eval_correct}


def _points(data: GroundTruthData, represent, rng, batch_size: int, num_points: int):
    labels = rng.integers(data.num_factors, size=num_points)
    first = data.sample_indices(num_points * batch_size, rng)
    second = np.empty_like(first)
    per_item_label = np.repeat(labels, batch_size)
    for f in range(data.num_factors):
        rows = per_item_label == f
        second[rows] = data.sample_matching(first[rows], f, rng)
    diff = np.abs(represent(first) - represent(second)).reshape(num_points, batch_size, -1)
    return diff.mean(axis=1), labels


def beta_vae_settings(**overrides: Any) -> dict[str, Any]:
    settings = {**DEFAULTS, **overrides}
    return {"representation": "mean", **settings, "score": "eval_accuracy",
            "classifier": "sklearn LogisticRegression(max_iter=1000) (lbfgs, multinomial)",
            "sampling": "pairs sharing the fixed factor's value, by index lookup",
            "protocol": protocol_note("disentanglement_lib beta_vae_sklearn.gin", settings, DEFAULTS)}
