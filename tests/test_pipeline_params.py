"""`--param NAME=VALUE` (pipeline run, submit and schedule): values become the declared type.

`kubevae pipeline run --local --param beta_min=300` used to die in kfp with
InconsistentTypeException (an int given for a float parameter); here the values the CLI makes
go through the same check kfp makes when the pipeline is called (kfp.local) or nested.
"""

import argparse

import pytest
from kfp import compiler, dsl
from kfp.dsl.types.type_utils import InconsistentTypeException

from pipelines import command
from pipelines.params import coerce, coerce_arguments, declared_types
from pipelines.pipeline import PARAMETERS, kubevae_pipeline
from pipelines.profiles import PROFILES


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubevae pipeline")
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def _arguments(action: str, *params: str, profile: str | None = None) -> dict:
    argv = {"run": ["run", "--local"], "submit": ["submit", "--host", "http://kfp"],
            "schedule": ["schedule", "--host", "http://kfp", "--cron", "0 3 * * 1"]}[action]
    for param in params:
        argv += ["--param", param]
    if profile:
        argv += ["--profile", profile]
    return command.arguments_from(_parse(*argv))


def _accepted_by_kfp(arguments: dict, tmp_path) -> None:
    """Compile a pipeline that calls kubevae's with these arguments: kfp checks each constant
    against the declared type (as kfp.local does when `pipeline run` calls it)."""
    @dsl.pipeline(name="outer")
    def outer():
        kubevae_pipeline(**arguments)

    compiler.Compiler().compile(outer, str(tmp_path / "outer.yaml"))


def test_the_declared_types_are_the_compiled_ones():
    types = declared_types()
    assert set(types) == set(PARAMETERS)
    assert (types["beta_min"], types["train_steps"], types["tune_lr"], types["latent_dims"],
            types["source_uri"]) == ("Float", "Integer", "Boolean", "List", "String")


@pytest.mark.parametrize("action", ["run", "submit", "schedule"])
def test_values_become_the_declared_type_in_run_submit_and_schedule(action, tmp_path):
    arguments = _arguments(action, "beta_min=300", "beta_max=1e3", "train_steps=2e3",
                           "trial_steps=\"40\"", "tune_lr=true", "latent_dims=[4, 6]",
                           "conv_channels=16,32,64", "group_column=123", "lr=0.001")
    assert arguments == {"beta_min": 300.0, "beta_max": 1000.0, "train_steps": 2000,
                         "trial_steps": 40, "tune_lr": True, "latent_dims": [4, 6],
                         "conv_channels": [16, 32, 64], "group_column": "123", "lr": 0.001}
    assert type(arguments["beta_min"]) is float and type(arguments["train_steps"]) is int
    if action == "run":
        _accepted_by_kfp(arguments, tmp_path)


def test_without_coercion_kfp_refuses_the_int_so_the_check_above_can_fail(tmp_path):
    with pytest.raises(InconsistentTypeException, match="beta_min"):
        _accepted_by_kfp({"beta_min": 300}, tmp_path)


@pytest.mark.parametrize("text,expected", [("true", True), ("True", True), ("false", False),
                                           ("FALSE", False), ("1", True), ("0", False)])
def test_a_bool_parameter(text, expected):
    assert _arguments("run", f"tune_lr={text}") == {"tune_lr": expected}


@pytest.mark.parametrize("text,expected", [("[4,6,10]", [4, 6, 10]), ("4,6,10", [4, 6, 10]),
                                           ("[]", []), ("8", [8])])
def test_a_list_parameter(text, expected):
    assert _arguments("submit", f"latent_dims={text}") == {"latent_dims": expected}


@pytest.mark.parametrize("param,kfp_type,shown", [
    ("train_steps=2.5", "Integer", "2.5"),
    ("train_steps=many", "Integer", "'many'"),
    ("train_steps=true", "Integer", "True"),
    ("beta_min=high", "Float", "'high'"),
    ("beta_min=NaN", "Float", "nan"),
    ("tune_lr=maybe", "Boolean", "'maybe'"),
    ("tune_lr=2", "Boolean", "2"),
    ("latent_dims={\"a\": 1}", "List", "{'a': 1}"),
    ("latent_dims=[4,", "List", "'[4,'"),
])
def test_a_bad_value_names_the_parameter_its_type_and_the_value(param, kfp_type, shown):
    name = param.partition("=")[0]
    with pytest.raises(ValueError) as raised:
        _arguments("schedule", param)
    message = str(raised.value)
    assert message.startswith(f"--param {name}: expected "), message
    assert f"({kfp_type}), got {shown}" in message, message


def test_the_cli_prints_a_bad_value_as_one_error_line(capsys, monkeypatch):
    from kubevae import cli

    monkeypatch.delenv("KUBEVAE_TRACEBACK", raising=False)
    assert cli.main(["pipeline", "run", "--local", "--param", "train_steps=2.5"]) == 2
    err = capsys.readouterr().err
    assert "kubevae pipeline: error: --param train_steps: expected an integer (Integer), got 2.5" in err
    assert "Traceback" not in err


def test_unknown_names_are_refused_as_before():
    with pytest.raises(ValueError, match="--param 'beta=3': expected NAME=VALUE with NAME one of"):
        _arguments("run", "beta=3")


def test_the_profiles_already_have_the_declared_types():
    types = declared_types()
    for name, values in PROFILES.items():
        assert coerce_arguments(values, types) == values, name
        for key, value in values.items():
            assert type(coerce(key, value, types[key])) is type(value), (name, key)
