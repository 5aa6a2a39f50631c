"""One error policy for every subcommand: `kubevae <cmd>: error: ...`, exit 2, the flag as typed."""

from __future__ import annotations

import argparse

import pytest

from kubevae import cli
from kubevae.errors import ParameterError, spelled_as


@pytest.mark.parametrize("argv, expected", [
    (["train", "--dataset", "sprites", "--latent-dim", "0", "--no-tracking"],
     "kubevae train: error: --latent-dim: expected a positive integer, got 0"),
    (["train", "--dataset", "sprites", "--batch-size", "0", "--no-tracking"],
     "kubevae train: error: --batch-size: expected a positive integer, got 0"),
    (["evaluate", "--model", "/nonexistent/model", "--data", "/nonexistent/data", "--out", "/tmp/x"],
     "kubevae evaluate: error: /nonexistent/model/config.json"),
    (["serve", "--model", "/nonexistent/model"],
     "kubevae serve: error: /nonexistent/model/config.json"),
])
def test_user_errors_are_one_line_with_exit_status_2(argv, expected, capsys, monkeypatch):
    monkeypatch.delenv("KUBEVAE_TRACEBACK", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert "Traceback" not in err


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("KUBEVAE_TRACEBACK", "1")
    with pytest.raises(ParameterError, match="latent_dim"):
        cli.main(["train", "--dataset", "sprites", "--latent-dim", "0", "--no-tracking"])


def test_flag_for_finds_the_flag_of_a_field_in_subcommands():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sub.add_parser("a").add_argument("-n", "--num-trials", dest="num_trials")
    assert cli.flag_for(parser, "num_trials") == "--num-trials"
    assert cli.flag_for(parser, "unknown_field") == "unknown_field"


def test_spelled_as_renames_for_pipeline_parameters():
    with pytest.raises(ParameterError, match=r"^latent_dims: expected a positive integer, got 0$"):
        with spelled_as({"latent_dim": "latent_dims"}):
            from kubevae.config import ModelConfig
            ModelConfig(latent_dim=0)


@pytest.mark.parametrize("argv", [
    ["ingest", "--source", "s3://bucket/incoming", "--out", "OUT/data"],
    ["split", "--data", "OUT/data", "--out", "OUT/splits", "--previous-split", "s3://bucket/assignments.csv"],
])
def test_an_object_store_refusal_is_the_same_one_line_error(argv, tmp_path, capsys, monkeypatch):
    """ObjectStoreError is not a ValueError or OSError: the policy names it, so no command needs
    its own copy of the error handling."""
    monkeypatch.delenv("KUBEVAE_TRACEBACK", raising=False)
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:1")  # nothing listens: refused at once
    monkeypatch.setenv("S3_MAX_RETRIES", "0")
    argv = [arg.replace("OUT", str(tmp_path)) for arg in argv]
    if argv[0] == "split":
        from kubevae.data import sprites

        sprites.write(tmp_path / "data", n=40, seed=0)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kubevae {argv[0]}: error: ") and "Traceback" not in err, err
    assert "127.0.0.1:1" in err or "s3://bucket" in err, err
