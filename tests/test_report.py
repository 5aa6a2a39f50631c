"""The evaluation's outputs: metrics.json, the pictures and report.html, written whole, and the
pictures logged to MLflow (a real SQLite store, isolated per test by conftest)."""

import base64
import io
import json
import re

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from kubevae import tracking
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data import sprites
from kubevae.evaluation import report
from kubevae.evaluation.full import EvaluationSizes, evaluate_model, open_split, random_subset
from kubevae.metrics import MetricProtocol
from kubevae.model import VAE, save_model
from kubevae.study import Study, Trial

HISTORY = [{"epoch": 1, "step": 10, "lr": 1e-3, "train_loss": 900.0, "val_neg_elbo": 800.0},
           {"epoch": 2, "step": 20, "lr": 5e-4, "train_loss": 700.0, "val_neg_elbo": 650.0}]
STUDY = Study("val_iwae_nll", [
    Trial(0, {"beta": 1.0, "latent_dim": 4}, 640.0, "COMPLETE", {"val_kl": 30.0, "val_recon": 600.0}),
    Trial(1, {"beta": 4.0, "latent_dim": 8}, 610.0, "COMPLETE", {"val_kl": 12.0, "val_recon": 590.0}),
    Trial(2, {"beta": 8.0, "latent_dim": 8}, None, "FAIL")], best_trial=1, direction="minimize")
SMALL = EvaluationSizes(max_images=120, iwae_images=16, anomaly_images=40, anomaly_iwae_k=2, batch_size=64)
PROTOCOL = MetricProtocol.fast().scaled(0.01)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    vae = VAE(ModelConfig(latent_dim=3))
    images, _ = sprites.generate(32, seed=3)
    x = VAE.to_unit(torch.from_numpy(images))
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(8):  # a few steps, so that the posteriors differ between images
        params, mu, logvar = vae(x)
        loss = (-vae.log_likelihood(x, params) + 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(root / "model", vae.eval(), ObjectiveConfig(beta=4.0), metrics={"history": HISTORY})
    sprites.write(root / "data", n=160, seed=1)
    return root


def decoded_pngs_in(html_text):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


@pytest.fixture(scope="module")
def evaluated(model_and_data):
    out = model_and_data / "eval"
    metrics = evaluate_model(model_and_data / "model", model_and_data / "data", out, iwae_k=3, seed=0,
                             protocol=PROTOCOL, sizes=SMALL, tuning_results=STUDY)
    return out, metrics


def test_evaluate_writes_metrics_pictures_and_a_self_contained_report(evaluated):
    out, metrics = evaluated
    expected_pictures = {"reconstructions", "samples", "traversals", "kl_per_dim", "training_curves",
                         "tuning_objective", "tuning_tradeoff"}
    assert set(metrics["pictures"]) == expected_pictures
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("neg_elbo", "iwae_nll", "psnr", "active_units", "gaussian_total_correlation", "mig",
                "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "factor_vae",
                "beta_vae", "anomaly_neg_elbo_auroc", "anomaly_iwae_auprc"):
        assert isinstance(on_disk[key], (int, float)), key
    assert 0 <= on_disk["mig"] <= 1 and 0 <= on_disk["factor_vae"] <= 1
    assert on_disk["iwae_nll"] <= on_disk["neg_elbo_iwae_images"] + 1.0
    # Every score belongs to a group whose settings are written beside it.
    for group, names in on_disk["metric_groups"].items():
        assert on_disk["settings"][group], group
        assert all(name in on_disk for name in names)
    assert on_disk["settings"]["mig"]["num_bins"] == 20
    assert on_disk["settings"]["dci"]["importance_model"] == "random_forest"
    assert on_disk["settings"]["iwae"]["k"] == 3
    assert len(on_disk["kl_per_dim"]) == 3

    html_text = (out / "report.html").read_text()
    embedded = decoded_pngs_in(html_text)
    for name, file_name in metrics["pictures"].items():
        data = (out / file_name).read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes every pixel
        assert image.format == "PNG" and min(image.size) > 50, name
        assert data in embedded, f"{file_name} is not embedded in report.html"
        assert file_name in html_text
    assert len(embedded) == len(expected_pictures)
    # Self-contained: nothing is fetched from elsewhere (it must work as a KFP HTML visualization).
    assert not re.search(r'(src|href)="(?!data:)', html_text)
    for names in on_disk["metric_groups"].values():
        for name in names:
            assert f"<td>{name}</td>" in html_text, name
    assert "num_bins" in html_text and "importance_model" in html_text  # the settings are listed


def test_pictures_show_the_model_and_order_traversals_by_kl(model_and_data):
    from kubevae.model import load_model

    vae = load_model(model_and_data / "model")
    assert list(report.kl_order([0.1, 2.0, 0.5])) == [1, 2, 0]
    images, _ = sprites.generate(2, seed=0)
    traversal = Image.open(io.BytesIO(report.traversals_png(vae, images[0], [0.1, 2.0, 0.5], steps=5)))
    recon = Image.open(io.BytesIO(report.reconstructions_png(vae, images)))
    assert traversal.size[1] > recon.size[1]  # three rows of sweeps against two rows
    failed = Study("val_mig", [Trial(0, {"beta": 1, "latent_dim": 2}, None, "FAIL")], best_trial=None)
    assert report.tuning_objective_png(failed) is None and report.rate_distortion_png(failed) is None
    points = report.tuning_points(STUDY)
    assert [(p.beta, p.latent_dim, p.value, p.rate, p.chosen) for p in points] == [
        (1.0, 4, 640.0, 30.0, False), (4.0, 8, 610.0, 12.0, True)]
    assert report.tuning_points(STUDY.to_dict()) == points  # the study's own JSON form
    with pytest.raises(ValueError, match="trial 0 has no 'beta' or 'latent_dim'"):
        report.tuning_points(Study("val_mig", [Trial(0, {"lr": 1e-3}, 1.0, "COMPLETE")], best_trial=0))
    with pytest.raises(ValueError, match="expected a kubevae-study/2 study"):
        report.tuning_points([{"beta": 2, "latent_dim": 6, "objective": 1.5}])  # one shape only
    with pytest.raises(ValueError, match="no numeric series"):
        report.training_curves_png([{"step": 1, "note": "x"}])


def test_a_failed_evaluation_leaves_no_output(model_and_data, tmp_path, monkeypatch):
    root = model_and_data
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match="expected a kubevae-study/2 study"):  # before any work
        evaluate_model(root / "model", root / "data", out, iwae_k=0, protocol=PROTOCOL, sizes=SMALL,
                       tuning_results=[{"params": {}, "value": 1.0}])
    assert not out.exists()

    def broken_report(*args, **kwargs):
        raise OSError("disk full")

    # A failure after the pictures were written: the folder still does not appear half-made.
    monkeypatch.setattr(report, "write_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        evaluate_model(root / "model", root / "data", out, iwae_k=0, protocol=PROTOCOL, sizes=SMALL)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind either


def test_the_split_to_evaluate_is_found_or_named_in_the_error(model_and_data, tmp_path):
    sprites.write(tmp_path / "split" / "train", n=8, seed=0)
    sprites.write(tmp_path / "split" / "test", n=4, seed=1)
    dataset, name = open_split(tmp_path / "split", "test")
    assert name == "test" and len(dataset) == 4
    with pytest.raises(ValueError, match="the 'val' split is missing or empty"):
        open_split(tmp_path / "split", "val")
    assert open_split(model_and_data / "data", "test")[1] == "all"  # a plain folder is one split


def test_log_report_puts_pictures_report_and_metrics_into_the_mlflow_run(evaluated):
    out, metrics = evaluated
    # Without a tracker and without an active run there is nothing to log into.
    assert report.log_report(out, metrics, metrics["pictures"]) is False
    with tracking.start_run("evaluate", require=True) as tracker:
        assert report.log_report(out, metrics, metrics["pictures"], tracker) is True
        run_id = tracker.run_id
    # Any active MLflow run is found without a tracker (in the experiment kubevae made, whose
    # artifacts live in this test's runs folder, not in ./mlruns).
    mlflow.start_run(run_name="plain mlflow run",
                     experiment_id=tracking.ensure_experiment(mlflow, "kubevae"))
    try:
        assert report.log_report(out, metrics, {"kl_per_dim": "kl_per_dim.png"}) is True
        plain_id = mlflow.active_run().info.run_id
    finally:
        mlflow.end_run()
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    expected = {f"evaluation/{f}" for f in metrics["pictures"].values()}
    assert expected | {"evaluation/report.html", "evaluation/metrics.json"} <= logged
    run = client.get_run(run_id)
    assert run.data.metrics["eval_mig"] == pytest.approx(metrics["mig"])
    assert run.data.metrics["eval_neg_elbo"] == pytest.approx(metrics["neg_elbo"])
    assert "evaluation/kl_per_dim.png" in {a.path for a in client.list_artifacts(plain_id, "evaluation")}


def test_the_image_subset_is_random_in_every_prefix():
    # Dataset folders are often sorted by their factors (sprites: by shape first), so the first
    # images of an index-sorted subset would all be squares. Every prefix must be a random sample.
    images = np.repeat(np.arange(1000, dtype=np.uint16)[:, None, None, None], 2, axis=1)
    subset = random_subset(images, 200, seed=0)
    ids = subset[:, 0, 0, 0].astype(int)
    assert len(set(ids)) == 200 and (subset[:, 1] == subset[:, 0]).all()
    assert ids[:20].mean() == pytest.approx(500, abs=200)  # a prefix spans the whole range
    assert not (np.diff(ids) > 0).all()
    assert np.array_equal(random_subset(images, 200, seed=0), subset)  # reproducible from the seed
    assert len(random_subset(images, 5000, seed=1)) == 1000  # never more than there are
