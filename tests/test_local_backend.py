"""The local backend's tuner: a real Optuna study judged from Katib-style metric lines."""

import sys
from pathlib import Path

import pytest

from components.backends import get_backend
from components.backends.base import TuneRequest
from components.backends.local import LocalBackend
from components.search_space import default_search_space

SYNTHETIC = str(Path(__file__).parent / "data" / "synthetic_trainer.py")


def synthetic(args, workers):
    return [sys.executable, SYNTHETIC, *args]


def _request(tmp_path, **overrides):
    values = dict(name="t", data_dir=str(tmp_path), data_uri=str(tmp_path),
                  search_space=default_search_space(0.25, 16.0, [2, 4, 6, 8, 10]),
                  work_dir=str(tmp_path / "trials"), max_trials=25, trial_epochs=2)
    values.update(overrides)
    return TuneRequest(**values)


def test_tuner_finds_the_optimum_of_a_synthetic_objective(tmp_path):
    result = LocalBackend(command=synthetic).tune(_request(tmp_path))
    assert result.best_params["latent_dim"] == 6
    assert 1.2 < result.best_params["beta"] < 3.3
    assert result.best_value < 100 + 2.5 + 1.0
    states = {t.state for t in result.trials}
    assert "COMPLETE" in states
    assert len(result.trials) == 25
    # Trials judged as Katib would: from the trainer's own stdout lines, kept per trial.
    assert (tmp_path / "trials" / "trial-000" / "train.log").read_text().startswith("epoch=1")


def test_failing_trials_stop_the_study_with_a_clear_error(tmp_path):
    def broken(args, workers):
        return [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]

    with pytest.raises(RuntimeError, match=r"no trial completed \(3 failed\).*exited with 3"):
        LocalBackend(command=broken).tune(_request(tmp_path, max_trials=10, max_failed_trials=2))


def test_unknown_algorithm_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="algorithm: the local backend supports"):
        LocalBackend().tune(_request(tmp_path, algorithm="hyperband"))


def test_backend_is_chosen_in_one_place():
    assert get_backend("local").name == "local"
    with pytest.raises(ValueError, match="backend: expected one of"):
        get_backend("docker")


def test_study_report_shows_every_trial_and_the_objective_plot(tmp_path):
    from dataclasses import asdict

    from components.study import study_report

    result = LocalBackend(command=synthetic).tune(_request(tmp_path, max_trials=4))
    summary = {"best_params": result.best_params, "best_value": result.best_value,
               "objective_metric": "val_neg_elbo", "trials": [asdict(t) for t in result.trials]}
    html = study_report(summary)
    assert html.count("<tr>") == 1 + 4
    assert "data:image/png;base64," in html
