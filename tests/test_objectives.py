import pytest
import torch

from kubevae.config import ObjectiveConfig
from kubevae.objectives import NonFiniteLossError, Objective


def test_beta_objective_sums_pixels_and_latents_then_averages_the_batch():
    recon, kl = torch.tensor([100.0, 200.0]), torch.tensor([10.0, 30.0])
    terms = Objective(ObjectiveConfig(kind="beta", beta=4.0))(recon, kl, step=0)
    assert float(terms.loss) == pytest.approx(150.0 + 4.0 * 20.0)


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
