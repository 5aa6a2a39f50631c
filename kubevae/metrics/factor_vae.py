"""The FactorVAE disentanglement metric (Kim & Mnih 2018, "Disentangling by Factorising").

Protocol, as disentanglement_lib (evaluation/metrics/factor_vae.py with the unsupervised study's
factor_vae_metric.gin):

- global variances: Var(z_d) (ddof=1) of the MEAN representation of num_variance_estimate =
  10,000 drawn points; a dimension is active when sqrt(Var z_d) >= prune_threshold = 0.05
  (dimensions collapsed to the prior are left out; no active dimension -> both scores 0);
- one training point: a factor k drawn uniformly, batch_size = 64 observations sharing one value
  of factor k, local variances Var(z_d) over the batch; the point votes for
  (k, argmin over active d of local / global variance);
- num_train = 10,000 training points; the majority-vote classifier maps each dimension to the
  factor that voted for it most; train_accuracy is its accuracy on those votes,
  eval_accuracy (THE score) its accuracy on num_eval = 5,000 fresh points.

Sampling is by index lookup into the dataset (kubevae.metrics.ground_truth): the 64
observations are items that share factor k's value, the other factors as the data has them.
The representation function is evaluated once per item (it is deterministic), which makes the
10,000 x 64 draws affordable on a CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kubevae.metrics._checks import as_generator, protocol_note
from kubevae.metrics.ground_truth import CachedRepresentation, GroundTruthData

DEFAULTS = {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000,
            "num_variance_estimate": 10_000, "prune_threshold": 0.05}


def compute_factor_vae(ground_truth: GroundTruthData, representation_fn, random_state, *,
                     batch_size: int = 64, num_train: int = 10_000, num_eval: int = 5_000,
                     num_variance_estimate: int = 10_000, prune_threshold: float = 0.05
                     ) -> dict[str, Any]:
    """{"train_accuracy", "eval_accuracy", "num_active_dims", "eval_correct"}; eval_accuracy is
    the score, eval_correct says per evaluation point whether the classifier got it right (the
    points depend on random_state only, so two models scored with one seed vote on the same
    batches: a paired comparison).

    representation_fn(images_uint8_NHWC) -> codes [n, D] (the mean representation).
    random_state: an int seed or a numpy Generator / RandomState.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size: expected at least 2 observations per point, got {batch_size}")
    rng = as_generator(random_state)
    represent = CachedRepresentation.wrap(ground_truth, representation_fn)
    global_var = np.var(represent(ground_truth.sample_indices(num_variance_estimate, rng)),
                        axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0,
                "eval_correct": np.zeros(num_eval, dtype=bool)}
    train_factors, train_dims = _votes(ground_truth, represent, rng, batch_size, num_train,
                                       global_var, active)
    votes = np.zeros((ground_truth.num_factors, len(global_var)), dtype=np.int64)
    np.add.at(votes, (train_factors, train_dims), 1)
    classifier = np.argmax(votes, axis=0)  # dimension -> the factor it predicts
    eval_factors, eval_dims = _votes(ground_truth, represent, rng, batch_size, num_eval,
                                     global_var, active)
    eval_correct = classifier[eval_dims] == eval_factors
    return {"train_accuracy": float(np.mean(classifier[train_dims] == train_factors)),
            "eval_accuracy": float(eval_correct.mean()),
            "num_active_dims": int(active.sum()), "eval_correct": eval_correct}


def _votes(data: GroundTruthData, represent, rng, batch_size, num_points, global_var, active):
    """Per point: the factor held fixed and the dimension it votes for."""
    factors = rng.integers(data.num_factors, size=num_points)
    batches = data.sample_fixed_factor_batches(factors, batch_size, rng)
    codes = represent(batches.ravel()).reshape(num_points, batch_size, -1)
    local_var = np.var(codes, axis=1, ddof=1)
    ratio = np.where(active, local_var / np.where(active, global_var, 1.0), np.inf)
    return factors, np.argmin(ratio, axis=1)


def factor_vae_settings(**overrides: Any) -> dict[str, Any]:
    settings = {**DEFAULTS, **overrides}
    return {"representation": "mean", **settings, "score": "eval_accuracy",
            "classifier": "majority vote of argmin(local / global variance)",
            "sampling": "items sharing the fixed factor's value, by index lookup",
            "protocol": protocol_note("disentanglement_lib factor_vae_metric.gin", settings, DEFAULTS)}
