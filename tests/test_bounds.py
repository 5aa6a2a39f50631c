import functools

import pytest
import torch

from kubevae.config import ModelConfig
from kubevae.data import sprites
from kubevae.evaluation.bounds import active_units, evaluate_images, iwae_nll, neg_elbo, psnr
from kubevae.model import VAE


@functools.lru_cache(maxsize=1)
def _model_and_images():
    """A briefly trained model: at initialization q(z|x) is the prior and every bound coincides."""
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_size=64, latent_dim=4))
    images, _ = sprites.generate(32, seed=1)
    x = VAE.to_unit(torch.from_numpy(images))
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    with torch.enable_grad():
        for _ in range(30):
            loss = neg_elbo(vae, x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return vae.eval(), x


@torch.no_grad()
@pytest.mark.slow
def test_iwae_bound_is_tighter_than_the_elbo_and_tightens_with_k():
    vae, x = _model_and_images()
    g = torch.Generator().manual_seed(0)
    elbo_nll = torch.stack([neg_elbo(vae, x) for _ in range(10)]).mean()
    bounds = {k: iwae_nll(vae, x, k, generator=g).mean() for k in (2, 8, 32)}
    assert bounds[2] < elbo_nll
    assert bounds[2] >= bounds[8] >= bounds[32]


@torch.no_grad()
def test_iwae_chunking_does_not_change_the_estimate():
    vae, x = _model_and_images()
    a = iwae_nll(vae, x[:8], 16, generator=torch.Generator().manual_seed(3))
    b = iwae_nll(vae, x[:8], 16, generator=torch.Generator().manual_seed(3), max_decoded=20)
    assert torch.allclose(a, b, rtol=1e-5)


def test_psnr_and_active_units():
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(psnr(x, x + 0.1), torch.tensor([20.0, 20.0]), atol=1e-4)
    mu = torch.stack([torch.linspace(-1, 1, 50), torch.full((50,), 0.3), torch.randn(50) * 0.01], 1)
    assert active_units(mu) == 1


def test_evaluate_images_reports_beta_independent_means():
    vae, _ = _model_and_images()
    images, _ = sprites.generate(40, seed=2)
    metrics = evaluate_images(vae, images, batch_size=16, iwae_k=8)
    assert metrics["num_images"] == 40 and len(metrics["kl_per_dim"]) == 4
    assert abs(metrics["neg_elbo"] - (metrics["recon"] + metrics["kl"])) < 1e-3 * metrics["neg_elbo"]
    assert metrics["iwae_nll"] < metrics["neg_elbo"]
