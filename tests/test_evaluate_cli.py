"""`kubevae evaluate` end to end on a trained sprites model: metrics, pictures, report."""

import json
import subprocess

import pytest
from conftest import kubevae_cmd, subprocess_env

from kubevae.config import ModelConfig, TrainConfig
from kubevae.data import sprites
from kubevae.training.loop import train


@pytest.mark.slow
def test_evaluate_writes_metrics_pictures_and_report(tmp_path):
    train(TrainConfig(dataset="sprites", dataset_size=320, batch_size=32, epochs=1,
                      out=str(tmp_path / "model"), tracking=False, model=ModelConfig(latent_dim=4)))
    sprites.write(tmp_path / "data", n=400, seed=7)
    done = subprocess.run(kubevae_cmd("evaluate", "--model", str(tmp_path / "model"), "--data",
                                      str(tmp_path / "data"), "--out", str(tmp_path / "eval"),
                                      "--iwae-k", "4", "--metric-protocol", "fast"),
                          capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for name in ("neg_elbo", "iwae_nll", "psnr", "active_units", "mig", "factor_vae"):
        assert name in metrics, name
    assert metrics["neg_elbo"] >= metrics["iwae_nll"] - 1.0
    html = (tmp_path / "eval" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "eval").glob("*.png"))
    assert len(pngs) >= 4
    assert html.count("data:image/png;base64,") >= len(pngs)
    printed = json.loads(done.stdout)
    assert printed["neg_elbo"] == metrics["neg_elbo"]
