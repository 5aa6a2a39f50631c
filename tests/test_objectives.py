import pytest
import torch

from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.objectives import NonFiniteLossError, Objective


def test_beta_objective_weights_the_kl_by_beta_and_averages_per_image_terms_over_the_batch():
    recon, kl = torch.tensor([100.0, 200.0]), torch.tensor([10.0, 30.0])
    terms = Objective(ObjectiveConfig(kind="beta", beta=4.0))(recon, kl, step=0)
    assert float(terms.loss) == pytest.approx(150.0 + 4.0 * 20.0)


def test_training_loss_sums_pixels_and_latents_then_averages_the_batch():
    """The real training step on a real VAE: its loss is the per-pixel Bernoulli NLL summed
    over channels x height x width, plus beta x the per-dimension KL summed over latents,
    averaged over the batch; computed here by hand from the same decoder output."""
    import contextlib

    import torch.nn.functional as F

    from kubevae.model import VAE
    from kubevae.training.loop import train_step

    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_size=28, channels=1, latent_dim=3))
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()
    eps = torch.randn(4, 3)
    with torch.no_grad():
        logits, mu, logvar = vae(x, eps)
    pixel_nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")  # [4, 1, 28, 28]
    dim_kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)  # [4, 3]
    expected_recon = float(pixel_nll.sum(dim=(1, 2, 3)).mean())
    expected_kl = float(dim_kl.sum(dim=1).mean())

    frozen = torch.optim.SGD(vae.parameters(), lr=0.0)
    terms = train_step(vae, vae, Objective(ObjectiveConfig(kind="beta", beta=4.0)), frozen, x,
                       eps, step=0, autocast=contextlib.nullcontext())
    assert float(terms.recon) == pytest.approx(expected_recon, rel=1e-5)
    assert float(terms.kl) == pytest.approx(expected_kl, rel=1e-5)
    assert float(terms.loss) == pytest.approx(expected_recon + 4.0 * expected_kl, rel=1e-5)
    # Summed, not averaged, over pixels: the term is 784 pixels' worth of nats per image.
    assert float(terms.recon) == pytest.approx(784 * float(pixel_nll.mean()), rel=1e-5)


def test_capacity_objective_tracks_a_rising_target():
    objective = Objective(ObjectiveConfig(kind="capacity", gamma=10.0, capacity_max=20.0,
                                          capacity_steps=100))
    recon, kl = torch.tensor([50.0]), torch.tensor([5.0])
    assert objective.capacity(0) == 0 and objective.capacity(50) == 10.0
    assert objective.capacity(500) == 20.0
    assert float(objective(recon, kl, step=50).loss) == pytest.approx(50.0 + 10.0 * 5.0)


def test_kl_warmup_scales_the_kl_weight():
    objective = Objective(ObjectiveConfig(kind="beta", beta=2.0, warmup_steps=10))
    assert objective(torch.ones(1), torch.ones(1), step=5).kl_weight == pytest.approx(1.0)
    assert objective(torch.ones(1), torch.ones(1), step=20).kl_weight == pytest.approx(2.0)


def test_non_finite_term_names_the_step_and_the_term():
    objective = Objective(ObjectiveConfig())
    with pytest.raises(NonFiniteLossError, match=r"step 7: loss term 'kl' is nan"):
        objective(torch.ones(2), torch.tensor([1.0, float("nan")]), step=7)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term 'recon' is inf"):
        objective(torch.tensor([float("inf")]), torch.ones(1), step=3)
