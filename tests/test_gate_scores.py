"""The gate scores the candidate as the evaluate step does: every score it records for the
candidate (the bounds, the active units, the floors' reference and each criterion's metric with
its companions) equals evaluate_model's, and the champion is scored the same way."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from kubevae import tracking
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data import sprites
from kubevae.evaluation.full import evaluate_model
from kubevae.metrics import MetricProtocol
from kubevae.model import VAE, save_model
from kubevae.registry import gate

pytestmark = pytest.mark.slow

PROTOCOL = MetricProtocol.fast().scaled(0.05)  # 500 MIG points, 250 FactorVAE votes, ...
SEED = 3


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-scores")
    for split, seed in (("train", 5), ("test", 4)):
        sprites.write(root / "split" / split, n=300 if split == "test" else 20, seed=seed)
    torch.manual_seed(0)
    save_model(root / "model", VAE(ModelConfig(image_size=64, latent_dim=4)).eval(), ObjectiveConfig())
    metrics = evaluate_model(root / "model", root / "split", root / "eval", split="test", iwae_k=0,
                             seed=SEED, protocol=PROTOCOL)
    return root, metrics


def _gate(root, objective_metric: str, model_name: str):
    with tracking.start_run("gate", require=True) as tracker:
        return gate(root / "model", root / "split", model_name=model_name, margin=0.0,
                    tracker=tracker, seed=SEED, objective_metric=objective_metric,
                    protocol=PROTOCOL)


@pytest.mark.parametrize(("objective_metric", "expected"), [
    ("val_mig", {"mig"}),
    ("val_factor_vae", {"factor_vae", "factor_vae_train_accuracy", "factor_vae_active_dims"}),
    ("val_dci", {"dci_disentanglement", "dci_completeness", "dci_informativeness"}),
    ("val_neg_elbo", set())])
def test_every_candidate_score_the_gate_records_is_evaluates(scored, tmp_path, objective_metric, expected):
    root, metrics = scored
    decision = _gate(root, objective_metric, f"scores-{objective_metric}")
    recorded = decision.candidate_scores
    assert set(recorded) == {"neg_elbo", "recon", "kl", "psnr", "mean_image_psnr", "active_units"} | expected
    assert {name: metrics[name] for name in recorded} == recorded  # exactly, not approximately
    assert decision.candidate == metrics[decision.metric]
    tags = MlflowClient().get_model_version(f"scores-{objective_metric}", decision.version).tags
    for name, value in recorded.items():
        assert tags[f"kubevae.gate.test_{name}"] == f"{value:.6f}"


def test_the_champion_is_scored_the_same_way(scored):
    root, metrics = scored
    first = _gate(root, "val_mig", "scores-champion")
    first_scores = first.candidate_scores
    client = MlflowClient()
    client.set_registered_model_alias("scores-champion", "champion", first.version)  # the floors refused it
    second = _gate(root, "val_mig", "scores-champion")
    assert second.champion_version == first.version
    assert second.champion_scores == first_scores == {k: metrics[k] for k in first_scores}
