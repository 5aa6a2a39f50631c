"""The training objective travels from the pipeline parameter to every trial and the final run,
on both backends: the Optuna trials' and Katib's trial command, parsed back by the trainer."""

import pytest

from components.backends.base import TrainingOverrides, TuneRequest, trial_options
from components.search_space import default_search_space
from kubevae.errors import ParameterError
from kubevae.objectives import searched_weight
from kubevae.training.command import config_from_args, parser, train_argv


def _request(objective: str) -> TuneRequest:
    return TuneRequest(name="t", data_dir="/d", data_uri="s3://b/splits", work_dir="/w",
                       search_space=default_search_space(), objective_metric="val_mig",
                       trial_steps=500, overrides=TrainingOverrides(objective=objective))


@pytest.mark.parametrize("objective", ["beta", "tcvae", "factor"])
def test_a_local_trial_trains_the_requested_objective_with_the_searched_beta_as_its_weight(objective):
    argv = train_argv(trial_options(_request(objective)), data="/d", beta=8.0, latent_dim=6)
    cfg = config_from_args(parser().parse_args(argv))
    assert cfg.objective.kind == objective
    assert getattr(cfg.objective, searched_weight(objective)) == 8.0


@pytest.mark.parametrize("objective", ["tcvae", "factor"])
def test_katib_trials_carry_the_objective(objective):
    from test_k8s_launchers import node0_container

    from components.backends.kubernetes import KubernetesBackend
    from components.k8s import to_dict

    experiment = to_dict(KubernetesBackend(api=None, env={}).tune_experiment(_request(objective),
                                                                             "ns", "t-1"))
    args = node0_container(experiment["spec"]["trialTemplate"]["trialSpec"])["args"]
    assert args[args.index("--objective") + 1] == objective
    parsed = parser().parse_args(["1" if a.startswith("${") else a for a in args])
    assert config_from_args(parsed).objective.kind == objective


@pytest.mark.slow  # compiling the pipeline: about 14 s on 2 shared cores
def test_the_pipeline_passes_its_objective_parameter_to_tune_and_train():
    from pipelines.pipeline import PARAMETERS, kubevae_pipeline

    assert PARAMETERS["objective"][0] == "beta"
    spec = kubevae_pipeline.pipeline_spec
    assert "objective" in spec.root.input_definitions.parameters
    # tune and train run inside the exit handler's group, which passes the parameter down.
    tasks = spec.components["comp-exit-handler-1"].dag.tasks
    for step in ("tune", "train"):
        bound = tasks[step].inputs.parameters["objective"]
        assert bound.component_input_parameter == "pipelinechannel--objective", step


def test_a_search_over_beta_refuses_the_capacity_objective_naming_the_parameter():
    with pytest.raises(ParameterError, match=r"^objective: expected an objective whose weight"):
        searched_weight("capacity")
