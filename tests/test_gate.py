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
    for image, (y, x) in zip(images, rng.integers(2, 18, size=(n, 2))):
        image[y:y + 8, x:x + 8] = 255
    return images


@functools.lru_cache(maxsize=None)
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
