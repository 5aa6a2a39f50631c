"""Unsupervised quality of a representation: no ground-truth factors needed.

- active_units (Burda et al. 2016): dimension u is active when Cov_x(E_q[z_u | x]) > 0.01,
  the variance over data points of the posterior MEAN (ddof=1);
- kl_per_dimension: the mean over data points of KL(q(z_u|x) || N(0, 1)), closed form for a
  diagonal Gaussian posterior, in nats; it shows which dimensions carry information;
- gaussian_total_correlation (as disentanglement_lib's unsupervised_metrics): the total
  correlation of a Gaussian fitted to the MEAN representation,
      TC = 1/2 (sum_u log Cov_uu - log det Cov),  Cov = the covariance of the means;
  it is 0 exactly when the means are uncorrelated, and only sees linear (second-order) dependence;
- sampled_total_correlation: TC of the aggregate posterior q(z) = 1/N sum_n q(z|x_n) of the N
  evaluated points, estimated at z_i ~ q(z|x_i):
      TC ~= 1/N sum_i [log q(z_i) - sum_u log q(z_iu)],
  with log q(z_i) = logsumexp_n log q(z_i|x_n) - log N and the same for every marginal. This is
  the minibatch-weighted-sampling estimator of Chen et al. 2018 with the minibatch being the
  whole evaluated set (so no dataset-size reweighting), O(N^2 D), computed in chunks;
- mutual_info_score (disentanglement_lib): the mean pairwise discrete mutual information between
  code dimensions after the 20-bin histogram discretization.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

from kubevae.metrics._checks import as_generator, check_codes
from kubevae.metrics.mig import histogram_discretize, mutual_information_matrix

ACTIVE_UNIT_THRESHOLD = 0.01
LOG_2PI = math.log(2 * math.pi)


def active_units(means, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    means = check_codes(means, "means")
    if len(means) < 2:
        return 0
    return int((np.var(means, axis=0, ddof=1) > threshold).sum())


def kl_per_dimension(mu, logvar) -> np.ndarray:
    """[D] mean KL(q(z_u|x) || N(0, 1)) over the points, in nats."""
    mu, logvar = check_codes(mu, "mu"), check_codes(logvar, "logvar")
    if mu.shape != logvar.shape:
        raise ValueError(f"logvar: shape {logvar.shape} differs from mu's {mu.shape}")
    return (0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)).mean(axis=0)


def gaussian_total_correlation(means) -> float:
    """TC (nats) of a Gaussian with the covariance of the mean representation."""
    means = check_codes(means, "means")
    if len(means) <= means.shape[1]:
        raise ValueError(f"means: need more points ({len(means)}) than dimensions "
                         f"({means.shape[1]}) for a covariance")
    cov = np.atleast_2d(np.cov(means, rowvar=False))
    variances = np.diag(cov)
    used = variances > 0  # a constant dimension is independent of the rest: it adds nothing
    if not used.any():
        return 0.0
    cov = cov[np.ix_(used, used)]
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return float("inf")
    return float(0.5 * (np.log(variances[used]).sum() - logdet))


def sampled_total_correlation(mu, logvar, random_state, *, chunk: int = 512) -> float:
    """TC (nats) of the aggregate posterior of these N points (see the module docstring)."""
    mu, logvar = check_codes(mu, "mu"), check_codes(logvar, "logvar")
    if mu.shape != logvar.shape:
        raise ValueError(f"logvar: shape {logvar.shape} differs from mu's {mu.shape}")
    rng = as_generator(random_state)
    n = len(mu)
    std = np.exp(0.5 * logvar)
    z = mu + std * rng.standard_normal(mu.shape)
    total = 0.0
    for start in range(0, n, chunk):
        zc = z[start:start + chunk, None, :]  # c x 1 x D against all N posteriors
        log_q = -0.5 * (((zc - mu[None]) / std[None]) ** 2 + LOG_2PI) - 0.5 * logvar[None]  # c x N x D
        log_joint = logsumexp(log_q.sum(axis=2), axis=1) - math.log(n)
        log_marginals = (logsumexp(log_q, axis=1) - math.log(n)).sum(axis=1)
        total += float((log_joint - log_marginals).sum())
    return total / n


def mutual_info_score(means, num_bins: int = 20) -> float:
    """Mean discrete MI (nats) between distinct code dimensions (disentanglement_lib)."""
    means = check_codes(means, "means")
    d = means.shape[1]
    if d < 2:
        return 0.0
    discrete = histogram_discretize(means, num_bins)
    mi = mutual_information_matrix(discrete, discrete)
    np.fill_diagonal(mi, 0.0)
    return float(mi.sum() / (d * d - d))


def unsupervised_settings(num_points: int | None = None, num_tc_points: int | None = None
                          ) -> dict[str, Any]:
    return {"representation": "mean (active units, Gaussian TC, MI); posterior samples (sampled TC)",
            "num_points": num_points, "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
            "gaussian_total_correlation": "Gaussian fitted to the mean representation "
                                          "(disentanglement_lib unsupervised_metrics)",
            "sampled_total_correlation": "aggregate posterior of the evaluated points, "
                                         "minibatch-weighted sampling with minibatch = all points",
            "num_tc_points": num_tc_points, "mutual_info_num_bins": 20}
