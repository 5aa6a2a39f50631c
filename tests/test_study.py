"""The study as a core type: intervals from the trials' metric lines to the report, the noise
rule, JSON I/O, the bootstrap interval, and the quick profile's beta range."""

import sys

import numpy as np
import pytest

from kubevae.study import OBJECTIVES, TEST_METRIC, Interval, Study, Trial, objective, trial_from_line

# Prints the real trainer's metric lines (parsed with its real parser): val_mig rises with beta,
# with an interval of half-width WIDTH around it.
INTERVAL_TRAINER = """
from kubevae.training.command import parser
args = parser().parse_args()
WIDTH = {width}
mig = 0.05 + 0.01 * args.beta
for epoch, step in enumerate(range(10, args.steps + 1, 10), start=1):
    print(f"epoch={{epoch}} step={{step}} val_neg_elbo={{150 + args.beta:.6g}} val_recon=140 "
          f"val_kl={{30 / args.beta:.6g}} val_active_units=6 val_psnr=20 val_mig={{mig:.6g}} "
          f"val_mig_lo={{mig - WIDTH:.6g}} val_mig_hi={{mig + WIDTH:.6g}} collapsed=0", flush=True)
"""


def _tune(tmp_path, width: float) -> Study:
    from components.backends.base import TuneRequest
    from components.backends.local import LocalBackend
    from components.search_space import default_search_space

    script = tmp_path / f"trainer_{width}.py"
    script.write_text(INTERVAL_TRAINER.format(width=width))
    backend = LocalBackend(command=lambda args, workers: [sys.executable, str(script), *args])
    return backend.tune(TuneRequest(
        name="t", data_dir=str(tmp_path), data_uri=str(tmp_path), work_dir=str(tmp_path / f"w{width}"),
        search_space=default_search_space(1.0, 4.0, [10]), objective_metric="val_mig",
        algorithm="grid", max_trials=2, trial_steps=20)).with_collapse_rule()


def test_trials_carry_their_intervals_and_the_study_says_when_the_best_cannot_be_told_apart(tmp_path):
    from components.study import study_metrics, study_report

    noisy = _tune(tmp_path, width=0.05)  # 0.06 and 0.09, each +- 0.05: they overlap
    assert sorted(t.params["beta"] for t in noisy.trials) == [1.0, 4.0]  # the grid's two ends
    chosen = noisy.chosen
    assert chosen is not None and chosen.params["beta"] == 4.0  # chosen by the objective
    assert chosen.interval == Interval(0.04, 0.14, 0.95, OBJECTIVES["val_mig"].interval)
    other = next(t for t in noisy.trials if t is not chosen)
    assert noisy.indistinguishable() == [other.number]
    assert "cannot be told apart" in noisy.verdict()
    page = study_report(noisy)
    assert "The choice is weak." in page and "0.09 [0.04, 0.14]" in page
    assert "percentile bootstrap" in page  # how the intervals were drawn
    assert study_metrics(noisy) == {"best_val_mig": 0.09, "best_val_mig_lo": 0.04,
                                    "best_val_mig_hi": 0.14, "indistinguishable_trials": 1.0,
                                    "all_trials_collapsed": 0.0}

    clear = _tune(tmp_path, width=0.005)  # 0.06 +- 0.005 against 0.09 +- 0.005
    assert clear.indistinguishable() == [] and clear.verdict() is None
    assert "The choice is weak." not in study_report(clear)


def test_a_collapsed_trial_has_no_interval_and_the_verdict_names_it():
    from kubevae.study import trial_from_line

    line = {"val_mig": -1.0, "val_mig_lo": 0.1, "val_mig_hi": 0.2, "collapsed": 1.0, "val_kl": 0.1}
    collapsed = trial_from_line(1, {"beta": 8.0, "latent_dim": 10}, -1.0, "COMPLETE", line, "val_mig")
    assert collapsed.interval is None and collapsed.collapsed
    healthy = trial_from_line(0, {"beta": 1.0, "latent_dim": 10}, 0.05, "COMPLETE",
                              {"val_mig": 0.05, "collapsed": 0.0}, "val_mig")
    study = Study("val_mig", [healthy, collapsed], best_trial=0)
    assert study.verdict().startswith("Trial(s) 1 collapsed")
    assert "reported no interval" in study.verdict()


def test_a_udr_trial_reports_the_range_of_its_seeds_from_three_seeds_on():
    from kubevae.training.selection import udr_interval

    assert udr_interval([0.31, 0.29]) is None  # one pair: its two directions are no spread
    assert udr_interval([0.31, 0.18, 0.29]) == (0.18, 0.31)


def test_the_study_refuses_what_does_not_fit_and_reads_the_first_format():
    trial = Trial(0, {"beta": 1.0, "latent_dim": 10}, 600.0, "COMPLETE")
    with pytest.raises(ValueError, match="val_neg_elbo is minimized, got direction 'maximize'"):
        Study("val_neg_elbo", [trial], best_trial=0, direction="maximize")
    with pytest.raises(ValueError, match="best_trial 3 is not among the trials"):
        Study("val_neg_elbo", [trial], best_trial=3, direction="minimize")
    with pytest.raises(ValueError, match="x.json: missing field"):
        Study.from_dict({"format": "kubevae-study/2", "trials": []}, source="x.json")
    with pytest.raises(ValueError, match="interval: expected finite low <= high"):
        Interval(0.2, 0.1)
    # A study the tune step wrote before the intervals came (format /1) still reads.
    old = {"format": "kubevae-study/1", "best_params": {"beta": 1.0, "latent_dim": 10}, "best_value": 600.0,
           "trials": [{"number": 0, "params": {"beta": 1.0, "latent_dim": 10}, "value": 600.0,
                       "state": "COMPLETE", "metrics": {}}],
           "objective_metric": "val_neg_elbo", "direction": "minimize", "best_trial": 0,
           "algorithm": "tpe", "all_collapsed": False}
    study = Study.from_dict(old)
    assert study.best_params == {"beta": 1.0, "latent_dim": 10} and study.best_value == 600.0
    assert Study.from_dict(study.to_dict()) == study


def test_every_objective_names_its_test_counterpart_in_one_mapping():
    from kubevae.metrics.disentanglement import metric_of

    assert set(TEST_METRIC) == set(OBJECTIVES)
    for name, spec in OBJECTIVES.items():
        assert spec.test_metric == TEST_METRIC[name]
        if spec.needs_factors:  # a disentanglement score the evaluate step and the gate compute
            assert metric_of(spec.test_metric)
    assert objective("val_iwae_nll").test_metric == "neg_elbo"  # the IWAE bound is too costly
    assert objective("udr").test_metric is None  # a setting's score, not one model's


def test_the_bootstrap_interval_of_a_mean_has_the_width_normal_theory_gives():
    from kubevae.metrics.bootstrap import weighted_mean
    from kubevae.training.scoring import bootstrap_interval

    values = np.random.default_rng(0).normal(size=2000)
    low, high = bootstrap_interval(weighted_mean(values), len(values))
    expected = 2 * 1.96 / np.sqrt(len(values))  # 95%, standard error 1 / sqrt(n)
    assert low < values.mean() < high
    assert high - low == pytest.approx(expected, rel=0.2)
    # The resamples are fixed: two trials scored on the same items are resampled alike.
    assert bootstrap_interval(weighted_mean(values), len(values)) == (low, high)


def test_the_quick_profile_spans_four_times_in_beta_and_follows_the_data():
    from components.search_space import default_search_space
    from pipelines.profiles import profile

    quick = profile("quick")
    assert quick["objective_metric"] == "auto" and quick["algorithm"] == "grid"
    space = default_search_space(quick["beta_min"], quick["beta_max"], quick["latent_dims"])
    betas = space.parameters[0].grid(space.grid_points(quick["max_trials"]))
    assert len(betas) * len(quick["latent_dims"]) == quick["max_trials"]  # every trial a grid point
    assert max(betas) / min(betas) >= 4


def test_the_summary_shows_every_trial_and_says_which_metrics_do_not_apply(capsys):
    from pipelines.local_run import not_applicable, print_summary

    line = {"val_kl": 21.5, "val_active_units": 7.0, "val_psnr": 18.25, "udr": 0.4,
            "udr_lo": 0.35, "udr_hi": 0.45, "collapsed": 0.0}
    from kubevae.study import trial_from_line

    trials = [trial_from_line(0, {"beta": 1.0, "latent_dim": 10}, 0.4, "COMPLETE", line, "udr"),
              trial_from_line(1, {"beta": 4.0, "latent_dim": 10}, 0.3, "COMPLETE",
                              {**line, "udr": 0.3, "udr_lo": 0.2, "udr_hi": 0.32, "val_kl": 9.0}, "udr")]
    study = Study("udr", trials, best_trial=0)
    print_summary({"study": study.to_dict(), "verdict": study.verdict(), "test_metrics": {"psnr": 19.5},
                   "not_applicable": not_applicable(factors=False), "gate": "promoted",
                   "branch": "promoted", "model_path": "m", "mlflow_store": "s", "mlflow_ui": "u",
                   "step_seconds": {}})
    out = capsys.readouterr().out
    assert "trial 0: beta=1 latent=10  rate=21.5 active=7 PSNR=18.2  udr=0.4 [0.35, 0.45] (complete)  <- chosen" in out
    assert "trial 1: beta=4 latent=10  rate=9.0" in out
    assert "the range of the seeds' own UDR scores" in out
    assert "not applicable  : MIG, FactorVAE: the data has no factor columns" in out
    assert "nan" not in out and "final model     : test PSNR dB=19.5" in out
    assert not_applicable(factors=True) == {}


def test_the_summary_gives_the_gates_reason_from_its_decision_report(capsys):
    from pipelines.local_run import _reason, print_summary

    report = "# Gate: m\n\n**not promoted**: ...\n\nReason: a floor failed: active units >= 1 (got 0)\n\n## Floors\n"
    assert _reason(report) == "a floor failed: active units >= 1 (got 0)"
    assert _reason("# Gate: m\n") == ""
    trials = [trial_from_line(0, {"beta": 1.0, "latent_dim": 10}, 0.4, "COMPLETE",
                              {"val_kl": 2.0, "val_active_units": 1.0, "collapsed": 0.0}, "udr")]
    study = Study("udr", trials, best_trial=0)
    print_summary({"study": study.to_dict(), "verdict": None, "test_metrics": {}, "gate": "challenger",
                   "gate_reason": _reason(report), "branch": "not-promoted", "model_path": "m",
                   "mlflow_store": "s", "mlflow_ui": "u", "step_seconds": {}})
    assert "gate reason     : a floor failed: active units >= 1 (got 0)" in capsys.readouterr().out
