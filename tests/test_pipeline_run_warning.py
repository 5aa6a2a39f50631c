"""`kubevae pipeline run --local` without a profile runs the cluster defaults, which take hours
on a laptop: the command says so before the run starts, and says nothing with a profile."""

import pytest

from kubevae import cli
from pipelines.pipeline import PARAMETERS


class Started(Exception):
    """Raised where the run would start, so the test stops there and sees what came before."""


@pytest.fixture
def started(monkeypatch, capsys):
    """Replaces the run itself; returns the stderr printed before it would have started."""
    import pipelines.local_run

    seen = {}

    def run_local(arguments, run_dir):
        seen["stderr"] = capsys.readouterr().err
        seen["arguments"] = arguments
        raise Started

    monkeypatch.setattr(pipelines.local_run, "run_local", run_local)
    return seen


def test_without_a_profile_the_warning_comes_before_the_run(started, tmp_path):
    with pytest.raises(Started):
        cli.main(["pipeline", "run", "--local", "--run-dir", str(tmp_path)])
    warning = started["stderr"]
    assert "no --profile" in warning and "hours on a laptop" in warning and "--profile quick" in warning
    # The figures are the defaults the run will use, not a fixed text.
    assert f"{PARAMETERS['train_steps'][0]:,} steps" in warning
    assert f"{PARAMETERS['max_trials'][0]} trials of {PARAMETERS['trial_steps'][0]:,} steps" in warning


def test_the_warning_shows_what_param_changed(started, tmp_path):
    with pytest.raises(Started):
        cli.main(["pipeline", "run", "--local", "--run-dir", str(tmp_path), "--param", "train_steps=123456"])
    assert "a final run of 123,456 steps" in started["stderr"]


def test_with_a_profile_there_is_no_warning(started, tmp_path):
    with pytest.raises(Started):
        cli.main(["pipeline", "run", "--local", "--profile", "quick", "--run-dir", str(tmp_path)])
    assert "warning" not in started["stderr"]
    assert started["arguments"]["train_steps"] < PARAMETERS["train_steps"][0]
