"""The `kubevae train` command line: one builder (train_argv) beside the parser, checked
against it, and the budget and objective flags."""

import argparse

import pytest

from kubevae.config import TrainConfig
from kubevae.training.command import config_from_args, conv_channels, flag, options, parser, train_argv
from kubevae.training.loop import StepPlan


def _sample_value(action: argparse.Action):
    if isinstance(action, argparse._StoreTrueAction):
        return True
    if action.choices:
        return sorted(action.choices)[-1]
    if action.type is int:
        return 7
    if action.type is float:
        return 0.25
    if action.type is conv_channels:
        return (16, 24, 48, 64)
    return f"value-of-{action.dest}"


def test_builder_and_parser_agree_on_every_option():
    acts = options()
    values = {dest: _sample_value(a) for dest, a in acts.items() if dest != "dataset"}
    parsed = vars(parser().parse_args(train_argv(values)))
    for dest, value in values.items():
        assert parsed[dest] == value, dest
    # And every option the parser has is one the builder can write (the other source group too).
    assert vars(parser().parse_args(train_argv(dataset="sprites")))["dataset"] == "sprites"


def test_builder_refuses_unknown_options_and_bad_switch_values():
    with pytest.raises(ValueError, match=r"unknown `kubevae train` option\(s\) \['epoch'\]"):
        train_argv(data="/d", epoch=3)
    with pytest.raises(ValueError, match="--no-tracking is a switch"):
        train_argv(data="/d", no_tracking="yes")
    assert train_argv(data="/d", no_tracking=False, steps=None) == ["--data", "/d"]


def test_conv_widths_reach_the_model_and_bad_ones_name_the_flag(capsys):
    argv = train_argv(data="/d", conv_channels=[16, 32, 64, 64])
    assert argv == ["--data", "/d", "--conv-channels", "16,32,64,64"]
    assert config_from_args(parser().parse_args(argv)).model.conv_channels == (16, 32, 64, 64)
    default = config_from_args(parser().parse_args(["--data", "/d"])).model.conv_channels
    assert default == (32, 32, 64, 64)  # Burgess et al. 2018
    for bad in ("16,x,64,64", "16,0,64,64", ""):
        with pytest.raises(SystemExit):
            parser().parse_args(["--data", "/d", "--conv-channels", bad])
        assert "--conv-channels: expected comma-separated positive integers" in capsys.readouterr().err


def test_katib_placeholders_pass_through():
    argv = train_argv(beta="${trialParameters.beta}", latent_dim="${trialParameters.latent_dim}")
    assert argv == ["--beta", "${trialParameters.beta}", "--latent-dim", "${trialParameters.latent_dim}"]
    assert flag("latent_dim") == "--latent-dim"


def test_steps_win_over_epochs():
    cfg = config_from_args(parser().parse_args(train_argv(data="/d", steps=250, epochs=1)))
    plan = StepPlan.make(cfg, num_images=640, world_size=1)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs) == (10, 250, 25)
    plan = StepPlan.make(TrainConfig(data="/d", epochs=3), num_images=640, world_size=1)
    assert (plan.total_steps, plan.epochs) == (30, 3)


def test_iwae_objective_turns_on_its_bound_in_one_place():
    cfg = config_from_args(parser().parse_args(train_argv(data="/d", objective_metric="val_iwae_nll")))
    assert cfg.iwae_k == 16
    cfg = config_from_args(parser().parse_args(train_argv(data="/d", objective_metric="val_mig")))
    assert cfg.iwae_k == 0


def test_capacity_reaches_its_maximum_a_third_of_the_way():
    from kubevae.config import ObjectiveConfig
    from kubevae.objectives import Objective, with_schedule

    objective = Objective(with_schedule(ObjectiveConfig(kind="capacity", capacity_max=25.0), 900))
    assert objective.capacity(150) == pytest.approx(12.5) and objective.capacity(300) == 25.0
    with pytest.raises(ValueError, match="capacity_steps: unresolved"):
        Objective(ObjectiveConfig(kind="capacity"))


# -- the parser is derived from the config dataclasses ---------------------------------------------
def test_every_config_option_is_a_flag_with_the_fields_default_help_and_choices():
    from kubevae.config import ModelConfig, ObjectiveConfig
    from kubevae.training.command import config_options, field_default
    from kubevae.training.data import BUILTIN_DATASETS

    acts = options()
    derived = list(config_options())
    assert {o.dest for o in derived} | {"run_name"} == set(acts)
    for option in derived:
        action, meta = acts[option.dest], option.field.metadata
        assert action.help == meta["help"], option.dest
        if not isinstance(action, argparse._StoreTrueAction):
            assert action.default == field_default(option.field), option.dest
    assert acts["objective"].choices == ["beta", "capacity", "tcvae", "factor"]
    assert acts["tc_estimator"].choices == ["mss", "mws"]
    assert tuple(acts["dataset"].choices) == BUILTIN_DATASETS
    # Fields that come from the data or the model folder are not flags.
    assert not {"image_size", "channels", "input_mean", "logvar_min"} & set(acts)
    # With no options, the parsed config is the dataclasses' defaults.
    assert config_from_args(parser().parse_args(["--data", "/d"])) == \
        TrainConfig(data="/d", model=ModelConfig(), objective=ObjectiveConfig())


def test_switches_set_their_fields_including_the_negated_ones():
    cfg = config_from_args(parser().parse_args(train_argv(
        data="/d", no_tracking=True, no_mlflow_model=True, deterministic=True, objective="factor",
        discriminator_width=32)))
    assert (cfg.tracking, cfg.log_mlflow_model, cfg.deterministic) == (False, False, True)
    assert (cfg.objective.kind, cfg.objective.discriminator_width) == ("factor", 32)


def test_library_errors_name_the_flag_the_user_typed(capsys):
    from kubevae.cli import main

    assert main(["train", "--data", "/d", "--discriminator-width", "0"]) == 2
    assert "kubevae train: error: --discriminator-width: expected a positive integer, got 0" in \
        capsys.readouterr().err
    # Raised deep in the training loop (the step plan), still named by its flag.
    assert main(["train", "--dataset", "sprites", "--dataset-size", "50", "--batch-size", "64",
                 "--no-tracking", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "error: --batch-size: expected at most the" in err and "got 64" in err
