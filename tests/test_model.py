import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.model import VAE, kl_divergence, load_model, save_model


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_fixed", "gaussian_learned"])
def test_shapes_for_every_supported_image(size, channels, likelihood):
    vae = VAE(ModelConfig(image_size=size, channels=channels, latent_dim=5, likelihood=likelihood))
    x = torch.rand(3, channels, size, size)
    params, mu, logvar = vae(x)
    assert params.shape == x.shape
    assert mu.shape == logvar.shape == (3, 5)
    ll = vae.log_likelihood(x, params)
    assert ll.shape == (3,) and torch.isfinite(ll).all()
    assert vae.sample(2).shape == (2, channels, size, size)


def test_default_64px_architecture_is_burgess_et_al():
    vae = VAE(ModelConfig())
    convs = [m for m in vae.encoder.convs if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert vae.encoder.fc[1].out_features == 256


def test_logvar_is_clamped():
    vae = VAE(ModelConfig(image_size=28, latent_dim=2))
    with torch.no_grad():
        vae.encoder.head.bias.fill_(1e6)
    _, logvar = vae.encode(torch.rand(2, 1, 28, 28))
    assert logvar.max() <= vae.config.logvar_max


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    closed = kl_divergence(mu, logvar).sum(dim=1)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(200_000, 4, 3)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(dim=0)
    assert torch.allclose(closed, mc, atol=0.02), (closed, mc)


def test_safetensors_round_trip(tmp_path):
    vae = VAE(ModelConfig(image_size=32, channels=3, latent_dim=4, likelihood="gaussian_learned",
                          input_mean=(0.1, 0.2, 0.3), input_std=(0.5, 0.5, 0.5)))
    save_model(tmp_path / "m", vae, ObjectiveConfig(beta=2.0), metrics={"val_neg_elbo": 1.0})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == \
        ["config.json", "metrics.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], vae.eval().encode(x)[0])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["objective"]["beta"] == 2.0 and config["model"]["input_mean"] == [0.1, 0.2, 0.3]


def test_load_reports_a_shape_mismatch(tmp_path):
    save_model(tmp_path / "m", VAE(ModelConfig(image_size=28, latent_dim=4)), ObjectiveConfig())
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["encoder.head.bias"] = torch.zeros(6)
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder.head.bias.*\(6,\).*\(8,\)"):
        load_model(tmp_path / "m")


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="image_size: expected one of"):
        ModelConfig(image_size=48)
    with pytest.raises(ValueError, match="beta: expected a number >= 0"):
        ObjectiveConfig(beta=-1)


# -- loading checks everything before using it (issue 14, item 8) ---------------------------
def saved(tmp_path, **model) -> Path:
    save_model(tmp_path / "m", VAE(ModelConfig(image_size=28, latent_dim=4, **model)), ObjectiveConfig())
    return tmp_path / "m"


def edit_config(folder: Path, section: str, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config[section].update(fields)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("section, fields, message", [
    ("model", {"latent_dim": 10**9}, r"'latent_dim' is 1000000000; expected values in \[1, 4096\]"),
    ("model", {"logvar_min": "x"}, r"'logvar_min' is 'x'; expected a finite number"),
    ("model", {"latent_dim": 4.5}, r"'latent_dim' is 4.5; expected an integer"),
    ("model", {"latent_dim": True}, r"'latent_dim' is True; expected an integer"),
    ("model", {"conv_channels": [64, "a"]}, r"'conv_channels' is \[64, 'a'\]; expected a non-empty list"),
    ("model", {"conv_channels": [64]}, r"'conv_channels' has 1 value\(s\); 28 px images need 2"),
    ("model", {"fc_dim": 16384, "conv_channels": [2048, 2048]}, r"parameters; the limit is 50,000,000"),
    ("model", {"logvar_min": 5.0, "logvar_max": 1.0}, r"logvar_min 5.0 must be below logvar_max 1.0"),
    ("model", {"input_std": [float("nan")]}, r"'input_std' is \[nan\]; expected a non-empty list of finite"),
    ("objective", {"beta": "4"}, r"'beta' is '4'; expected a finite number"),
])
def test_config_types_and_ranges_are_checked_before_building(tmp_path, section, fields, message):
    folder = saved(tmp_path)
    edit_config(folder, section, **fields)
    with pytest.raises(ValueError, match=message) as caught:
        load_model(folder)
    assert "config.json" in str(caught.value)


@pytest.mark.parametrize("change, message", [
    (lambda w: {k: v.double() for k, v in w.items()}, r"is F64; expected F32"),
    (lambda w: {**w, "encoder.head.weight": torch.full_like(w["encoder.head.weight"], float("nan"))},
     r"'encoder.head.weight' has \d+ NaN/Inf value\(s\)"),
    (lambda w: {**w, "decoder.fc.0.bias": w["decoder.fc.0.bias"].clone().index_fill_(0, torch.tensor([0]), float("inf"))},
     r"'decoder.fc.0.bias' has 1 NaN/Inf value\(s\)"),
])
def test_weights_must_be_float32_and_finite(tmp_path, change, message):
    folder = saved(tmp_path)
    save_file(change(load_file(str(folder / "model.safetensors"))), str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=message):
        load_model(folder)


def test_model_files_share_one_mode(tmp_path):
    folder = saved(tmp_path)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert modes == {"config.json": "0o644", "metrics.json": "0o644", "model.safetensors": "0o644"}
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize("kind", ["tcvae", "factor"])
def test_model_folder_keeps_every_objective(tmp_path, kind):
    """The gate and evaluate read models of every objective: the folder records its kind and
    settings, and the weights are the VAE's alone (FactorVAE's discriminator stays in the
    checkpoints)."""
    from kubevae.model import read_model_config

    vae = VAE(ModelConfig(image_size=28, latent_dim=3))
    objective = ObjectiveConfig(kind=kind, beta=6.0, dataset_size_tc=1000)
    save_model(tmp_path / "m", vae, objective)
    assert read_model_config(tmp_path / "m")[1] == objective
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(vae.state_dict())
    load_model(tmp_path / "m")
