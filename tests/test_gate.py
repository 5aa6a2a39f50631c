"""The champion/challenger gate against a real MLflow store (SQLite) and registry."""

import functools

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from kubevae import tracking
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data.dataset import write_dataset
from kubevae.evaluation.bounds import neg_elbo
from kubevae.model import VAE, save_model
from kubevae.registry import CHALLENGER, CHAMPION, gate

NAME = "gate-test"


def _images(n: int, seed: int) -> np.ndarray:
    """28x28 images of one bright square at a random place."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    for image, (y, x) in zip(images, rng.integers(2, 18, size=(n, 2)), strict=True):
        image[y:y + 8, x:x + 8] = 255
    return images


@functools.cache
def _model(steps: int) -> VAE:
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_size=28, latent_dim=3))
    x = VAE.to_unit(torch.from_numpy(_images(128, seed=1)))
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = neg_elbo(vae, x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.eval()


@pytest.fixture
def split_dir(tmp_path):
    images = _images(64, seed=2)
    manifest = pd.DataFrame({"item_id": [f"i{i}" for i in range(64)], "sha256": [str(i) for i in range(64)]})
    for name in ("train", "test"):
        write_dataset(tmp_path / "split" / name, images, manifest)
    return tmp_path / "split"


def _gate(tmp_path, split_dir, steps: int, margin: float = 0.5):
    model_dir = tmp_path / f"model-{steps}-{len(list(tmp_path.iterdir()))}"
    save_model(model_dir, _model(steps), ObjectiveConfig())
    with tracking.start_run("gate", require=True) as tracker:
        return gate(model_dir, split_dir, model_name=NAME, margin=margin, tracker=tracker)


def _alias(alias: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(NAME, alias).version)


def test_first_model_becomes_champion(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir, steps=0)
    assert decision.decision == "promoted" and decision.champion is None
    assert _alias(CHAMPION) == decision.version == "1"


def test_better_model_is_promoted_and_worse_is_challenger(tmp_path, split_dir):
    first = _gate(tmp_path, split_dir, steps=0)
    better = _gate(tmp_path, split_dir, steps=60)
    assert better.decision == "promoted"
    assert better.champion == pytest.approx(first.candidate, rel=1e-6)
    assert better.candidate < better.champion - 0.5
    assert _alias(CHAMPION) == better.version == "2"

    worse = _gate(tmp_path, split_dir, steps=0)
    assert worse.decision == "challenger" and worse.candidate > worse.champion
    assert _alias(CHAMPION) == "2" and _alias(CHALLENGER) == worse.version == "3"
    assert "not promoted" in worse.markdown()


def test_within_margin_keeps_the_champion(tmp_path, split_dir):
    _gate(tmp_path, split_dir, steps=60)
    same = _gate(tmp_path, split_dir, steps=60, margin=0.5)
    assert same.candidate == pytest.approx(same.champion, rel=1e-6)
    assert same.decision == "challenger"
    assert _alias(CHAMPION) == "1" and _alias(CHALLENGER) == "2"
    # With no margin, an equal score is enough: the newer model takes over.
    equal = _gate(tmp_path, split_dir, steps=60, margin=0.0)
    assert equal.decision == "promoted" and _alias(CHAMPION) == "3"


def test_gate_refuses_without_a_registry(tmp_path, split_dir):
    save_model(tmp_path / "m", _model(0), ObjectiveConfig())
    with pytest.raises(tracking.TrackingUnavailable):
        gate(tmp_path / "m", split_dir, model_name=NAME, margin=0.5, tracker=tracking.DISABLED)


def test_registered_versions_load_without_unpickling(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir, steps=0)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{decision.version}")
    assert model.predict(_images(2, seed=5)).shape == (2, 3)



# -- the gate judges what the search optimized --------------------------------------------------
def _scored_gate(tmp_path, split_dir, candidate: dict, champion: dict | None = None, **kwargs):
    """A gate run with given test scores for the candidate and the champion; the registry, the
    aliases, the tags and the decision are real (criterion_score itself is tested below)."""
    model_dir = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
    save_model(model_dir, _model(0), ObjectiveConfig())

    def scorer(metric, path, dataset):
        return (candidate if path == model_dir else champion)[metric]

    with tracking.start_run("gate", require=True) as tracker:
        return gate(model_dir, split_dir, model_name=NAME, margin=0.01, tracker=tracker,
                    objective_metric="val_mig", scorer=scorer, **kwargs)


def test_better_mig_with_slightly_worse_elbo_is_promoted_and_beyond_tolerance_refused(tmp_path, split_dir):
    first = _scored_gate(tmp_path, split_dir, {"mig": 0.10, "neg_elbo": 100.0})
    assert first.promoted and first.metric == "mig" and first.direction == "maximize"
    champion = {"mig": 0.10, "neg_elbo": 100.0}
    # Better MIG, 3 % worse ELBO: within the 5 % tolerance -> promoted.
    within = _scored_gate(tmp_path, split_dir, {"mig": 0.20, "neg_elbo": 103.0}, champion,
                          elbo_tolerance=0.05)
    assert within.promoted, within.reason
    assert (within.candidate, within.champion) == (0.20, 0.10)
    assert (within.candidate_neg_elbo, within.champion_neg_elbo) == (103.0, 100.0)
    assert _alias(CHAMPION) == within.version
    client = MlflowClient()
    tags = client.get_model_version(NAME, within.version).tags
    assert tags["kubevae.gate.criterion"] == "mig" and float(tags["kubevae.gate.mig"]) == 0.2
    # Much better MIG, but 10 % worse ELBO: the guard refuses it.
    champion = {"mig": 0.20, "neg_elbo": 103.0}
    beyond = _scored_gate(tmp_path, split_dir, {"mig": 0.40, "neg_elbo": 113.4}, champion,
                          elbo_tolerance=0.05)
    assert not beyond.promoted and "exceeds the champion's" in beyond.reason
    assert _alias(CHAMPION) == within.version and _alias(CHALLENGER) == beyond.version
    report = beyond.markdown()
    assert "criterion: mig" in report and "0.4000" in report and "0.2000" in report
    assert "113.4000" in report and "103.0000" in report and "5 %" in report
    # A worse MIG loses even with a better ELBO: the criterion is what the search optimized.
    worse = _scored_gate(tmp_path, split_dir, {"mig": 0.15, "neg_elbo": 90.0}, champion)
    assert not worse.promoted and "less than the margin" in worse.reason


def test_udr_runs_are_gated_on_the_recorded_study_score(tmp_path, split_dir):
    def run(udr, elbo, champion_elbo=None):
        model_dir = tmp_path / f"udr-{len(list(tmp_path.iterdir()))}"
        save_model(model_dir, _model(0), ObjectiveConfig())
        scorer = lambda metric, path, data: elbo if path == model_dir else champion_elbo  # noqa: E731
        with tracking.start_run("gate", require=True) as tracker:
            return gate(model_dir, split_dir, model_name=NAME, margin=0.0, tracker=tracker,
                        objective_metric="udr", study_score=udr, scorer=scorer)

    first = run(0.5, 100.0)
    assert first.promoted and first.criterion_source.startswith("tuning study")
    better = run(0.7, 101.0, champion_elbo=100.0)
    assert better.promoted and better.champion == pytest.approx(0.5)
    worse = run(0.6, 99.0, champion_elbo=101.0)
    assert not worse.promoted and worse.champion == pytest.approx(0.7)


def test_criterion_score_is_the_evaluate_steps_mig(tmp_path):
    from kubevae.data import sprites
    from kubevae.data.dataset import Dataset
    from kubevae.evaluation.full import EvaluationSizes, disentanglement_metrics
    from kubevae.metrics import MetricProtocol
    from kubevae.registry import criterion_score

    sprites.write(tmp_path / "test", n=300, seed=4)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_size=64, latent_dim=4)).eval()
    save_model(tmp_path / "m", vae, ObjectiveConfig())
    dataset = Dataset.open(tmp_path / "test")
    expected = disentanglement_metrics(vae, dataset, 3, MetricProtocol.fast(), EvaluationSizes(), "cpu")
    assert criterion_score("mig", tmp_path / "m", dataset, seed=3, protocol="fast") == pytest.approx(
        expected["groups"]["mig"]["scores"]["mig"])
