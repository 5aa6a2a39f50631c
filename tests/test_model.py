import json

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
