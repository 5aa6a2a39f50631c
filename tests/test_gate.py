"""The champion/challenger gate against a real MLflow store (SQLite) and registry: its floors,
its paired bootstrap, and its scores, which are the evaluate step's."""

import functools
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubevae import tracking
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data.dataset import write_dataset
from kubevae.evaluation.bounds import elbo_terms
from kubevae.metrics import paired_bootstrap, weighted_mean
from kubevae.metrics.bootstrap import ModelScores
from kubevae.model import VAE, save_model
from kubevae.registry import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MIN_PROBABILITY,
    Floors,
    count_test_items,
    gate,
)

NAME = "gate-test"
# Floors that every model clears: for the tests of the comparison itself.
NO_FLOORS = Floors(min_active_units=0, min_rate_nats=0.0, min_psnr_gain_db=-100.0)
# Planted scores of a model that clears the default floors.
SOUND = {"active_units": 3, "kl": 10.0, "psnr": 20.0, "mean_image_psnr": 12.0}


def _images(n: int, seed: int) -> np.ndarray:
    """28x28 images of one bright square at a random place."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    for image, (y, x) in zip(images, rng.integers(2, 18, size=(n, 2)), strict=True):
        image[y:y + 8, x:x + 8] = 255
    return images


@functools.cache
def _model(steps: int, beta: float = 0.1) -> VAE:
    """A narrow VAE trained full-batch on 128 squares. At beta = 0.1, 120 steps give a sound
    model (3 active units, ~25 nats of KL, ~4.7 dB above the mean image); at beta = 1, 60 steps
    leave it collapsed (0 active units, ~0.2 nats, the mean image's PSNR); 0 steps: untrained."""
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_size=28, latent_dim=3, conv_channels=(8, 8, 16, 16)))
    x = VAE.to_unit(torch.from_numpy(_images(128, seed=1)))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(steps):
        recon, kl = elbo_terms(vae, x)
        loss = (recon + beta * kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.eval()


SOUND_MODEL, COLLAPSED_MODEL, UNTRAINED_MODEL = (120, 0.1), (60, 1.0), (0, 1.0)


@pytest.fixture
def split_dir(tmp_path):
    images = _images(64, seed=2)
    manifest = pd.DataFrame({"item_id": [f"i{i}" for i in range(64)], "sha256": [str(i) for i in range(64)]})
    for name in ("train", "test"):
        write_dataset(tmp_path / "split" / name, images, manifest)
    return tmp_path / "split"


def _gate(tmp_path, split_dir, model=SOUND_MODEL, margin: float = 0.5, **kwargs):
    model_dir = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
    save_model(model_dir, _model(*model), ObjectiveConfig())
    with tracking.start_run("gate", require=True) as tracker:
        return gate(model_dir, split_dir, model_name=kwargs.pop("model_name", NAME), margin=margin,
                    tracker=tracker, **kwargs)


def _alias(alias: str, name: str = NAME) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


# -- floors: no model is promoted on nothing, the first one included ----------------------------
@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_a_collapsed_first_model_is_refused(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir, model=COLLAPSED_MODEL)
    assert not decision.promoted and decision.champion_version is None
    scores = decision.candidate_scores
    assert scores["active_units"] == 0 and scores["kl"] < 0.5
    assert {"active_units", "rate", "reconstruction"} <= set(decision.failed_floors)
    assert decision.reason.startswith("a floor failed: active units >= 1 (got 0)")
    report = decision.markdown()
    assert "| active_units | 0 | active units >= 1 | **FAILED** |" in report
    assert "there is no champion, so nothing is deployed" in report
    # Registered, but as a challenger: there is no champion to deploy.
    assert _alias(CHALLENGER) == decision.version == "1"
    with pytest.raises(MlflowException):
        _alias(CHAMPION)
    tags = MlflowClient().get_model_version(NAME, decision.version).tags
    assert tags["kubevae.gate.failed_floors"] == ",".join(decision.failed_floors)


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_a_sound_first_model_is_promoted(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir, model=SOUND_MODEL)
    assert decision.promoted, decision.reason
    assert decision.reason == "no champion yet, and every floor holds"
    scores = decision.candidate_scores
    assert scores["active_units"] == 3 and scores["kl"] > 5
    assert scores["psnr"] > scores["mean_image_psnr"] + 1
    assert decision.failed_floors == [] and all(row["passed"] for row in decision.floors)
    assert _alias(CHAMPION) == decision.version == "1"


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_an_untrained_model_fails_every_floor_it_is_judged_on(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir, model=UNTRAINED_MODEL)
    assert not decision.promoted
    assert set(decision.failed_floors) == {"active_units", "rate", "reconstruction"}
    # Its reconstruction is worse than the test images' own mean image.
    assert decision.candidate_scores["psnr"] < decision.candidate_scores["mean_image_psnr"]


@pytest.mark.parametrize(("change", "floor"), [
    ({"active_units": 0}, "active_units"), ({"kl": 0.49}, "rate"),
    ({"psnr": 12.99}, "reconstruction"), ({"psnr": float("nan")}, "finite"),
    ({"mig": float("inf")}, "finite")])
def test_each_floor_fails_just_below_its_limit(change, floor):
    floors = Floors()  # 1 unit, 0.5 nats, 1 dB
    at_limits = {"active_units": 1, "kl": 0.5, "psnr": 13.0, "mean_image_psnr": 12.0, "mig": 0.1}
    assert all(row["passed"] for row in floors.check(at_limits))
    failed = [row["floor"] for row in floors.check({**at_limits, **change}) if not row["passed"]]
    assert floor in failed
    assert failed == [floor] or floor == "finite"  # a NaN PSNR also fails the reconstruction


def test_floors_refuse_bad_settings():
    with pytest.raises(ValueError, match="min_active_units"):
        Floors(min_active_units=-1)
    with pytest.raises(ValueError, match="min_psnr_gain_db"):
        Floors(min_psnr_gain_db=float("nan"))


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_the_pipeline_defaults_are_the_gates():
    from pipelines.pipeline import PARAMETERS

    floors = Floors()
    assert PARAMETERS["gate_min_active_units"][0] == floors.min_active_units
    assert PARAMETERS["gate_min_rate"][0] == floors.min_rate_nats
    assert PARAMETERS["gate_min_psnr_gain"][0] == floors.min_psnr_gain_db
    assert PARAMETERS["gate_min_probability"][0] == DEFAULT_MIN_PROBABILITY


# -- comparing with a champion ------------------------------------------------------------------
@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_better_model_is_promoted_and_worse_is_challenger(tmp_path, split_dir):
    first = _gate(tmp_path, split_dir, model=UNTRAINED_MODEL, floors=NO_FLOORS)
    assert first.promoted
    better = _gate(tmp_path, split_dir, model=SOUND_MODEL)
    assert better.promoted, better.reason
    assert better.champion == pytest.approx(first.candidate, rel=1e-6)
    assert better.candidate < better.champion - 0.5
    assert better.p_better == 1.0 and better.comparison["gain_low"] > 0
    assert _alias(CHAMPION) == better.version == "2"

    worse = _gate(tmp_path, split_dir, model=UNTRAINED_MODEL, floors=NO_FLOORS)
    assert worse.decision == "challenger" and worse.candidate > worse.champion
    assert worse.p_better == 0.0
    assert _alias(CHAMPION) == "2" and _alias(CHALLENGER) == worse.version == "3"
    assert "not promoted" in worse.markdown()


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_an_equal_model_needs_the_margin_and_the_probability(tmp_path, split_dir):
    _gate(tmp_path, split_dir)
    same = _gate(tmp_path, split_dir, margin=0.5)
    assert same.candidate == pytest.approx(same.champion, rel=1e-6)
    assert same.decision == "challenger" and "less than the margin" in same.reason
    assert _alias(CHAMPION) == "1" and _alias(CHALLENGER) == "2"
    # No margin, but an equal model is better in no resample: ties count half, P = 0.5.
    unsure = _gate(tmp_path, split_dir, margin=0.0)
    assert unsure.p_better == 0.5 and not unsure.promoted and "P(better) = 0.500" in unsure.reason
    # Asking for no more than even odds, an equal score is enough: the newer model takes over.
    equal = _gate(tmp_path, split_dir, margin=0.0, min_probability=0.5)
    assert equal.promoted and _alias(CHAMPION) == "4"


def test_gate_refuses_without_a_registry(tmp_path, split_dir):
    save_model(tmp_path / "m", _model(*SOUND_MODEL), ObjectiveConfig())
    with pytest.raises(tracking.TrackingUnavailable):
        gate(tmp_path / "m", split_dir, model_name=NAME, margin=0.5, tracker=tracking.DISABLED)


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("margin", -1.0, "gate_margin"), ("min_probability", 1.5, "gate_min_probability"),
    ("elbo_tolerance", -0.1, "gate_elbo_tolerance")])
def test_gate_names_the_parameter_of_a_bad_setting(tmp_path, split_dir, setting, value, message):
    arguments = {"margin": 0.0, setting: value}
    with pytest.raises(ValueError, match=message):  # before it needs the registry or the model
        gate(tmp_path / "m", split_dir, model_name=NAME, tracker=tracking.DISABLED, **arguments)


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_registered_versions_load_without_unpickling(tmp_path, split_dir):
    decision = _gate(tmp_path, split_dir)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{decision.version}")
    assert model.predict(_images(2, seed=5)).shape == (2, 3)


# -- the gate judges what the search optimized (planted scores, real registry) ------------------
def _scored_gate(tmp_path, split_dir, candidate: dict, champion: dict | None = None,
                 resamplers: tuple = (), **kwargs):
    """A gate run with planted test scores (and, optionally, per-item scorers) for the candidate
    and the champion; the registry, the aliases, the tags and the decision are real."""
    model_dir = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
    save_model(model_dir, _model(*UNTRAINED_MODEL), ObjectiveConfig())
    candidate_resample, champion_resample = resamplers or ({}, {})

    def scorer(path, dataset):
        if path == model_dir:
            return ModelScores({**SOUND, **candidate}, candidate_resample)
        return ModelScores({**SOUND, **champion}, champion_resample)

    with tracking.start_run("gate", require=True) as tracker:
        return gate(model_dir, split_dir, model_name=NAME, tracker=tracker,
                    **{"margin": 0.01, "objective_metric": "val_mig", "scorer": scorer, **kwargs})


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
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
    assert within.comparison is None and within.no_comparison == "no per-item mig scores for both models"
    assert _alias(CHAMPION) == within.version
    tags = MlflowClient().get_model_version(NAME, within.version).tags
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


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_floors_hold_for_a_candidate_when_a_champion_exists(tmp_path, split_dir):
    _scored_gate(tmp_path, split_dir, {"mig": 0.10, "neg_elbo": 100.0})
    champion = {"mig": 0.10, "neg_elbo": 100.0}
    # A far better MIG from a model with no active unit: refused, the champion stays.
    collapsed = _scored_gate(tmp_path, split_dir, {"mig": 0.9, "neg_elbo": 99.0, "active_units": 0},
                             champion)
    assert not collapsed.promoted and collapsed.failed_floors == ["active_units"]
    assert collapsed.comparison is None and _alias(CHAMPION) == "1"
    # A score that is not a number refuses the model whatever the others say.
    broken = _scored_gate(tmp_path, split_dir, {"mig": float("nan"), "neg_elbo": 90.0}, champion)
    assert not broken.promoted and broken.failed_floors == ["finite"]
    assert broken.reason == "a floor failed: not finite: mig" and _alias(CHAMPION) == "1"
    # A reconstruction under the mean image's plus 1 dB.
    blurry = _scored_gate(tmp_path, split_dir, {"mig": 0.9, "neg_elbo": 90.0, "psnr": 12.5},
                          champion)
    assert blurry.failed_floors == ["reconstruction"] and "(got 12.5000)" in blurry.reason


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_the_paired_bootstrap_must_make_the_gain_likely(tmp_path, split_dir):
    """Per-image bounds planted for both models on the same 400 images: a gain as large as the
    margin that the images cannot confirm is refused; a consistent one is promoted."""
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 10.0, 400)
    kwargs = {"objective_metric": "val_neg_elbo", "margin": 0.1}

    def planted(per_image):
        return ModelScores({**SOUND, "neg_elbo": float(per_image.mean())},
                      {"neg_elbo": (weighted_mean(per_image), len(per_image))})

    _scored_gate(tmp_path, split_dir, {"neg_elbo": float(base.mean())}, **kwargs)
    noisy = base - 0.3 + rng.normal(0.0, 20.0, 400)  # ~0.3 nats better on average, sd 20
    noisy -= noisy.mean() - (base.mean() - 0.3)

    def run(candidate_items):
        model_dir = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        save_model(model_dir, _model(*UNTRAINED_MODEL), ObjectiveConfig())
        scorer = lambda path, data: planted(candidate_items if path == model_dir else base)  # noqa: E731
        with tracking.start_run("gate", require=True) as tracker:
            return gate(model_dir, split_dir, model_name=NAME, tracker=tracker, scorer=scorer, **kwargs)

    unsure = run(noisy)
    assert unsure.candidate == pytest.approx(unsure.champion - 0.3)  # beats the margin as drawn
    assert 0.5 < unsure.p_better < DEFAULT_MIN_PROBABILITY
    assert not unsure.promoted and "cannot tell the two apart" in unsure.reason
    assert "P(candidate better) = " in unsure.markdown()
    sure = run(base - 0.3 + rng.normal(0.0, 0.5, 400))
    assert sure.p_better > 0.99 and sure.promoted, sure.reason
    assert sure.comparison["gain_low"] > 0 and sure.comparison["num_items"] == 400


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_udr_runs_are_gated_on_the_recorded_study_score(tmp_path, split_dir):
    def run(udr, elbo, champion_elbo=None):
        model_dir = tmp_path / f"udr-{len(list(tmp_path.iterdir()))}"
        save_model(model_dir, _model(*UNTRAINED_MODEL), ObjectiveConfig())
        scorer = lambda path, data: ModelScores({**SOUND, "neg_elbo": elbo if path == model_dir else champion_elbo})  # noqa: E731
        with tracking.start_run("gate", require=True) as tracker:
            return gate(model_dir, split_dir, model_name=NAME, margin=0.0, tracker=tracker,
                        objective_metric="udr", study_score=udr, scorer=scorer)

    first = run(0.5, 100.0)
    assert first.promoted and first.criterion_source.startswith("tuning study")
    better = run(0.7, 101.0, champion_elbo=100.0)
    assert better.promoted and better.champion == pytest.approx(0.5)
    assert better.comparison is None and "not a score per test item" in better.no_comparison
    worse = run(0.6, 99.0, champion_elbo=101.0)
    assert not worse.promoted and worse.champion == pytest.approx(0.7)


def test_the_criterion_is_the_studys_test_counterpart():
    from kubevae.registry import Criterion
    from kubevae.study import TEST_METRIC

    for objective_metric, test_metric in TEST_METRIC.items():
        criterion = Criterion.for_objective(objective_metric)
        assert criterion.metric == (test_metric or objective_metric)


# -- the paired bootstrap -----------------------------------------------------------------------
def test_paired_bootstrap_matches_the_normal_approximation():
    """Per-item gains d_i ~ N(mu, sd): P(mean gain > 0) over resamples is about
    Phi(mu sqrt(n) / sd); identical scorers split their ties: P = 0.5."""
    rng = np.random.default_rng(3)
    n, sd = 500, 1.0
    champion = rng.normal(0.0, 1.0, n)
    for mu in (0.02, 0.05, 0.1):
        gains = rng.normal(mu, sd, n)
        gains += mu - gains.mean()  # the drawn sample's mean gain is exactly mu
        result = paired_bootstrap(weighted_mean(champion + gains), weighted_mean(champion), n,
                                  direction="maximize", margin=mu, num_resamples=2000, seed=0)
        expected = 0.5 * (1 + math.erf(mu * math.sqrt(n) / gains.std() / math.sqrt(2)))
        assert result.p_better == pytest.approx(expected, abs=0.03)
        assert result.p_beats_margin == pytest.approx(0.5, abs=0.05)  # the gain as drawn is the margin
        assert result.gain == pytest.approx(mu) and result.gain_low < mu < result.gain_high
    same = paired_bootstrap(weighted_mean(champion), weighted_mean(champion), n, direction="minimize")
    assert same.p_better == 0.5 and same.gain == 0.0
    lower = paired_bootstrap(weighted_mean(champion - 1), weighted_mean(champion), n, direction="minimize")
    assert lower.p_better == 1.0 and lower.gain == pytest.approx(1.0)


# -- frozen test items are counted in the core --------------------------------------------------
def test_test_item_counts_read_the_assignments(tmp_path):
    pd.DataFrame({"item_id": list("abcdef"), "split": ["train", "test", "test", "val", "test", "test"],
                  "how": ["hash", "pinned", "hash", "pinned", "pinned", "hash"]}).to_csv(
        tmp_path / "assignments.csv", index=False)
    assert count_test_items(tmp_path) == {"kubevae.test_items": 4, "kubevae.test_items_frozen": 2}
    with pytest.raises(FileNotFoundError, match="assignments.csv"):
        count_test_items(tmp_path / "nowhere")
    pd.DataFrame({"item_id": ["a"], "split": ["test"]}).to_csv(tmp_path / "assignments.csv", index=False)
    with pytest.raises(ValueError, match="'how'"):
        count_test_items(tmp_path)


@pytest.mark.slow  # a fresh MLflow store and registered models: about 10-20 s on 2 shared cores
def test_a_champion_for_other_image_shapes_is_not_scored_and_the_candidate_not_promoted(tmp_path, split_dir):
    """The data changed under one model name (sprites at 64 px, then digits at 32 px): the
    champion cannot encode the new test items. The gate says so instead of crashing, and does
    not promote, since the endpoint would start taking other images."""
    first = _gate(tmp_path, split_dir, model=SOUND_MODEL)
    assert first.promoted
    images = np.zeros((16, 32, 32, 1), np.uint8)
    images[:, 8:20, 8:20] = 255
    manifest = pd.DataFrame({"item_id": [f"j{i}" for i in range(16)], "sha256": [f"j{i}" for i in range(16)]})
    for name in ("train", "test"):
        write_dataset(tmp_path / "split32" / name, images, manifest)
    model_dir = tmp_path / "model-32"
    torch.manual_seed(0)
    save_model(model_dir, VAE(ModelConfig(image_size=32, latent_dim=3, conv_channels=(8, 8, 16, 16))).eval(),
               ObjectiveConfig())
    with tracking.start_run("gate", require=True) as tracker:
        second = gate(model_dir, tmp_path / "split32", model_name=NAME, margin=0.5, tracker=tracker,
                      floors=NO_FLOORS)
    assert not second.promoted and second.champion_version == first.version
    assert "takes 28x28x1 images and this test split holds 32x32x1" in second.reason
    assert second.champion_scores == {} and "takes 28x28x1 images" in second.markdown()
    assert _alias(CHAMPION) == first.version and _alias(CHALLENGER) == second.version
