"""Likelihood correctness on probabilistic PCA, whose exact log-likelihood has a closed form.

A linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(Wz + mu, sigma^2 I), so that
p(x) = N(mu, W W^T + sigma^2 I) exactly. The encoder is linear and amortised with a diagonal
(mean-field) Gaussian: the exact posterior mean, and twice the posterior's marginal variances,
so q(z|x) differs from the full-covariance posterior p(z|x) by a known KL. (Twice: then q is
wider than p(z|x) in every direction, the importance weights are bounded and IWAE converges
at the 1/k rate; a mean-field q narrower than the posterior gives heavy-tailed weights.) The bounds under test are the project's own kubevae.evaluation.bounds.iwae_nll and
elbo_terms (the model below has the interface they use: encode, decode, log_likelihood, forward).
"""

import math

import pytest
import torch
from torch import nn

from kubevae.evaluation.bounds import elbo_terms, iwae_nll

P, D, SIGMA = 6, 2, 0.5
VARIANCE_INFLATION = 2.0
LOG_2PI = math.log(2 * math.pi)


class LinearGaussianVAE(nn.Module):
    """pPCA as a VAE; x has shape N x 1 x 1 x P (the image layout the bounds expect)."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        w = torch.randn(P, D, generator=generator, dtype=torch.float64)
        w[:, 1] = 0.3 * w[:, 0] + 0.91**0.5 * w[:, 1]  # correlated columns: posterior rho ~ -0.5
        self.w = w
        self.mu = torch.randn(P, generator=generator, dtype=torch.float64)
        m = w.T @ w + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        self.posterior_cov = SIGMA**2 * torch.linalg.inv(m)
        self.encoder_matrix = torch.linalg.solve(m, w.T)  # exact posterior mean = A (x - mu)
        self.encoder_logvar = torch.log(VARIANCE_INFLATION * torch.diagonal(self.posterior_cov))
        # The bounds compute in float32, like the real model: keep float32 copies for them.
        self.w32, self.mu32 = self.w.float(), self.mu.float()
        self.encoder32, self.logvar32 = self.encoder_matrix.float(), self.encoder_logvar.float()

    def encode(self, x):
        mean = (x.flatten(1) - self.mu32) @ self.encoder32.T
        return mean, self.logvar32.expand_as(mean)

    def decode(self, z):
        return (z @ self.w32.T + self.mu32).view(-1, 1, 1, P)

    def log_likelihood(self, x, params):
        return (-0.5 * (((x - params) / SIGMA) ** 2 + LOG_2PI) - math.log(SIGMA)).flatten(1).sum(1)

    def forward(self, x, eps=None):
        mean, logvar = self.encode(x)
        eps = torch.randn_like(mean) if eps is None else eps
        return self.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar

    def exact_log_likelihood(self, x):
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(P, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.mu, cov).log_prob(x.flatten(1).double())

    def posterior_gap(self):
        """KL(q(z|x) || p(z|x)): the same for every x (equal means, fixed covariances)."""
        q_cov = torch.diag(self.encoder_logvar.exp())
        p_inv = torch.linalg.inv(self.posterior_cov)
        return 0.5 * (torch.trace(p_inv @ q_cov) - D + torch.logdet(self.posterior_cov)
                      - torch.logdet(q_cov))


@pytest.fixture(scope="module")
def model_and_data():
    g = torch.Generator().manual_seed(0)
    vae = LinearGaussianVAE(g)
    z = torch.randn(64, D, generator=g, dtype=torch.float64)
    x = (z @ vae.w.T + vae.mu).view(-1, 1, 1, P) + SIGMA * torch.randn(64, 1, 1, P, generator=g,
                                                                       dtype=torch.float64)
    return vae, x.float()


@torch.no_grad()
def test_iwae_with_large_k_matches_the_exact_likelihood(model_and_data):
    vae, x = model_and_data
    exact_nll = -vae.exact_log_likelihood(x)
    assert float(vae.posterior_gap()) > 0.3  # the encoder is truly approximate: a real test
    estimate = iwae_nll(vae, x, k=4000, generator=torch.Generator().manual_seed(1))
    error = (estimate - exact_nll).abs()
    assert float(error.max()) < 0.1, f"IWAE-4000 is off by up to {float(error.max()):.3f} nats"
    # A bound on average: the estimate is not below the exact NLL by more than noise.
    assert float((estimate - exact_nll).mean()) > -0.02


@torch.no_grad()
def test_elbo_lies_below_the_exact_likelihood_by_the_posterior_gap(model_and_data):
    vae, x = model_and_data
    exact_nll = -vae.exact_log_likelihood(x)
    g = torch.Generator().manual_seed(2)
    samples = [sum(elbo_terms(vae, x, torch.randn(len(x), D, generator=g)))
               for _ in range(400)]
    neg_elbo = torch.stack(samples).mean(dim=0)  # expected negative ELBO per example
    assert bool((neg_elbo > exact_nll).all()), "the ELBO must lie below log p(x) for every example"
    # ELBO = log p(x) - KL(q(z|x) || p(z|x)): the gap matches its closed form.
    assert float((neg_elbo - exact_nll).mean()) == pytest.approx(float(vae.posterior_gap()), abs=0.03)


@torch.no_grad()
def test_iwae_tightens_from_the_elbo_toward_the_exact_value(model_and_data):
    vae, x = model_and_data
    exact = float(-vae.exact_log_likelihood(x).mean())
    g = torch.Generator().manual_seed(3)
    # Repetitions give each mean a standard error of about 0.02 nats.
    by_k = {k: float(torch.stack([iwae_nll(vae, x, k, generator=g) for _ in range(reps)]).mean())
            for k, reps in ((1, 200), (4, 60), (64, 20))}
    gap = float(vae.posterior_gap())
    assert by_k[1] == pytest.approx(exact + gap, abs=0.08)  # k = 1 is the ELBO
    assert by_k[1] > by_k[4] > by_k[64] > exact - 0.01
