"""Search objectives: directions, the collapse guard, UDR on planted codes, and a real trial."""

import numpy as np
import pytest

from kubevae.metrics.udr import relative_strength, udr_details
from kubevae.study import COLLAPSED_SCORE, OBJECTIVES, default_objective, guarded, objective


def test_every_objective_has_a_direction_and_the_bounds_say_they_prefer_beta_one():
    assert {o.name: o.direction for o in OBJECTIVES.values()} == {
        "val_mig": "maximize", "val_factor_vae": "maximize", "val_dci": "maximize",
        "udr": "maximize", "val_neg_elbo": "minimize", "val_iwae_nll": "minimize"}
    assert all("beta ~ 1" in OBJECTIVES[n].description for n in ("val_neg_elbo", "val_iwae_nll"))
    assert default_objective(True) == "val_mig" and default_objective(False) == "udr"
    with pytest.raises(ValueError, match="objective_metric: expected one of"):
        objective("val_loss")


def test_a_collapsed_model_cannot_win_on_a_degenerate_score():
    # UDR of a model whose posterior collapsed to one latent that agrees across seeds is high...
    assert guarded("udr", 0.98, active_units=1, kl=0.2) == {"udr": COLLAPSED_SCORE, "collapsed": 1.0}
    assert guarded("val_mig", 0.4, active_units=0, kl=3.0)["val_mig"] == COLLAPSED_SCORE
    # ... a model that encodes something keeps its score, and a collapsed one still loses to it.
    healthy = guarded("val_mig", 0.05, active_units=4, kl=20.0)
    assert healthy == {"val_mig": 0.05, "collapsed": 0.0}
    assert OBJECTIVES["val_mig"].better(healthy["val_mig"], COLLAPSED_SCORE)
    # Minimized bounds are not rewritten: a collapsed model has a poor bound already.
    assert guarded("val_neg_elbo", 900.0, active_units=0, kl=0.0)["val_neg_elbo"] == 900.0


def _planted(seed: int, n: int = 1000, d: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_udr_is_high_for_seeds_that_agree_up_to_permutation_and_sign():
    truth = _planted(0)
    rng = np.random.default_rng(1)
    models = [truth]
    for k in range(2):
        perm = rng.permutation(truth.shape[1])
        signs = rng.choice([-1.0, 1.0], size=truth.shape[1])
        models.append(truth[:, perm] * signs * (k + 2) + rng.normal(scale=0.05, size=truth.shape))
    kl = [np.full(5, 2.0)] * 3
    for method in ("lasso", "spearman"):
        assert udr_details(models, kl, method=method)["udr"] > 0.85, method
    unrelated = [_planted(s) for s in (10, 11, 12)]
    for method in ("lasso", "spearman"):
        assert udr_details(unrelated, kl, method=method)["udr"] < 0.4, method
    # Entangled: every latent mixes all factors (a random rotation of the same code).
    q = np.linalg.qr(np.random.default_rng(3).normal(size=(5, 5)))[0]
    assert udr_details([truth, truth @ q, truth @ q.T], kl, method="spearman")["udr"] < 0.6


def test_udr_masks_latents_below_the_kl_threshold():
    truth = _planted(0)
    noisy = np.concatenate([truth, _planted(9, d=3)], axis=1)  # 3 uninformative latents
    kl_masked = np.array([2.0] * 5 + [0.001] * 3)
    with_mask = udr_details([noisy, noisy[:, ::-1]], [kl_masked, kl_masked[::-1]], method="spearman")
    assert with_mask["active"] == [5, 5] and with_mask["udr"] > 0.85
    unmasked = udr_details([noisy, np.concatenate(
        [truth[:, ::-1], _planted(8, d=3)], axis=1)], [np.full(8, 2.0)] * 2, method="spearman")
    assert unmasked["udr"] < with_mask["udr"] - 0.1  # unmatched noise latents count when kept
    assert relative_strength(np.eye(3)) == 1.0
    nothing = udr_details([truth, truth], [np.zeros(5), np.zeros(5)])
    assert nothing["udr"] == 0.0


def test_sprites_subset_covers_every_value_of_every_factor():
    from kubevae.data import sprites

    factors = sprites.factors_of(sprites.sample_indices(4000, seed=0))
    for k, size in enumerate(sprites.FACTOR_SIZES):
        assert set(factors[:, k]) == set(range(size)), sprites.FACTOR_NAMES[k]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    from kubevae.data import sprites

    root = tmp_path_factory.mktemp("tiny") / "split"
    for name, n, seed in (("train", 192, 1), ("val", 96, 2)):
        sprites.write(root / name, n=n, seed=seed)
    return root


@pytest.mark.parametrize("objective_metric", ["val_mig", "udr"])
@pytest.mark.slow
def test_a_tiny_search_runs_end_to_end_with_the_real_trainer(tmp_path, tiny_split, objective_metric):
    from components.backends.base import TuneRequest
    from components.backends.local import LocalBackend
    from components.search_space import default_search_space

    result = LocalBackend().tune(TuneRequest(
        name="t", data_dir=str(tiny_split), data_uri=str(tiny_split), work_dir=str(tmp_path),
        search_space=default_search_space(1.0, 16.0, [2, 3]), objective_metric=objective_metric,
        algorithm="random", max_trials=2 if objective_metric == "val_mig" else 1, trial_steps=6,
        batch_size=32, udr_seeds=3))
    assert result.direction == "maximize" and result.objective_metric == objective_metric
    assert {t.state for t in result.trials} == {"COMPLETE"}
    for trial in result.trials:
        assert {objective_metric, "val_neg_elbo", "val_recon", "val_kl", "val_active_units",
                "collapsed"} <= set(trial.metrics)
        assert trial.value == trial.metrics[objective_metric]
        assert -1.0 <= trial.value <= 1.0
        # Every trial that encodes something reports its objective with an interval (a
        # bootstrap over the validation sample, or the range of the UDR seeds' own scores).
        assert (trial.interval is None) == trial.collapsed
        if trial.interval is not None:
            assert trial.interval.low <= trial.interval.high
            assert trial.interval.method == OBJECTIVES[objective_metric].interval
    if objective_metric == "udr":
        assert (tmp_path / "trial-000" / "model" / "udr.json").is_file()
        assert (tmp_path / "trial-000" / "model.seed2" / "config.json").is_file()


COLLAPSING_TRAINER = """
from kubevae.training.command import parser
args = parser().parse_args()
kl = 0.4 / args.beta  # collapsed at every beta, the rate falling as beta grows
for epoch, step in enumerate(range(10, args.steps + 1, 10), start=1):
    print(f"epoch={epoch} step={step} val_neg_elbo={150 + args.beta:.6g} val_recon=150 "
          f"val_kl={kl:.6g} val_active_units=0 val_mig=-1 collapsed=1", flush=True)
"""


def test_when_every_trial_collapsed_the_study_says_so_and_takes_the_highest_rate(tmp_path, capsys):
    import sys

    from components.backends.base import TuneRequest
    from components.backends.local import LocalBackend
    from components.search_space import default_search_space
    from components.study import study_report
    from pipelines.local_run import print_summary

    script = tmp_path / "collapsing_trainer.py"
    script.write_text(COLLAPSING_TRAINER)
    result = LocalBackend(command=lambda args, workers: [sys.executable, str(script), *args]).tune(
        TuneRequest(name="t", data_dir=str(tmp_path), data_uri=str(tmp_path), work_dir=str(tmp_path / "w"),
                    search_space=default_search_space(1.0, 16.0, [4]), objective_metric="val_mig",
                    algorithm="random", max_trials=3, trial_steps=20))
    marked = result.with_collapse_rule()
    assert marked.all_collapsed and not result.all_collapsed
    lowest_beta = min((t for t in result.trials if t.state == "COMPLETE"), key=lambda t: t.params["beta"])
    assert marked.best_trial == lowest_beta.number  # the highest rate, not whichever -1 came first
    assert marked.best_params == lowest_beta.params and marked.best_value == COLLAPSED_SCORE
    page = study_report(marked)
    assert "All trials collapsed" in page and "lower beta_max" in page and "Least collapsed" in page

    print_summary({"study": marked.to_dict(), "verdict": marked.verdict(), "test_metrics": {},
                   "gate": "promoted", "branch": "promoted", "model_path": "m", "mlflow_store": "s",
                   "mlflow_ui": "u", "step_seconds": {}})
    out = capsys.readouterr().out
    assert "WARNING         : Every completed trial collapsed" in out
    assert "<- taken (least collapsed)" in out and "<- chosen" not in out

    # One trial that encodes something: a real choice, unchanged by the rule.
    healthy = marked.trials[0]
    healthy.metrics = {**healthy.metrics, "collapsed": 0.0, "val_kl": 12.0, "val_active_units": 5}
    assert not marked.with_collapse_rule().all_collapsed
