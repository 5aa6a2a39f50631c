"""Train a beta-VAE. Runs unchanged as one process, under torchrun and inside a training job.

Examples:
  kubevae train --dataset sprites --steps 2000 --out runs/model
  torchrun --nproc_per_node=2 -m kubevae train --dataset sprites --steps 2000
  kubevae train --data SPLIT_DIR --beta 4 --latent-dim 10 --resume auto
  kubevae train --data SPLIT_DIR --steps 600 --objective-metric val_mig

Budget: `--steps` (optimizer steps) is the unit; when it is given it wins over `--epochs`, and
the data is cycled through as many epochs as the steps need. Without it, `--epochs` full passes.

Each epoch prints one line of name=value metrics on stdout (Katib's StdOut collector reads
them): the validation negative ELBO at beta = 1 with its reconstruction and KL terms, the
active units, and, with `--objective-metric`, the search objective (kubevae.training.selection).
With `--objective-metric udr` the command trains `--udr-seeds` seeds one after another and
prints the UDR score last.

Everything else that starts this command (the local and Kubernetes backends, the pipeline)
builds its argument list with `train_argv` below, from the same parser, so a flag cannot be
spelled two ways.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from kubevae.config import ModelConfig, ObjectiveConfig, TrainConfig

PROG = "kubevae train"
# The help sections, in order, that the config fields' `group` metadata names.
GROUPS = {"data": "data", "output": "output and checkpoints", "model": "model",
          "objective": "objective (see kubevae.config.ObjectiveConfig and kubevae.objectives)",
          "budget": "budget and optimization",
          "validation": "validation, search objective and tracking"}
SECTIONS = ((TrainConfig, None), (ModelConfig, "model"), (ObjectiveConfig, "objective"))


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One `kubevae train` option and the config field it sets (section None: TrainConfig)."""

    section: str | None
    field: dataclasses.Field
    flag: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def negated(self) -> bool:
        return bool(self.field.metadata.get("negated"))


def config_options() -> Iterator[ConfigOption]:
    """Every config field with option metadata (kubevae.config.option), TrainConfig's first."""
    for cls, section in SECTIONS:
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                yield ConfigOption(section, f, f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The parser, derived from the config dataclasses: type, default and choices from each
    field, help and section from its metadata."""
    from kubevae.study import OBJECTIVES

    # Choices that live outside kubevae.config, with the table that owns them.
    outside_choices = {"objective_metric": sorted(OBJECTIVES)}
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    source = groups["data"].add_mutually_exclusive_group(required=True)
    for option in config_options():
        f, meta = option.field, option.field.metadata
        target = source if meta.get("source") else groups[meta["group"]]
        default = field_default(f)
        if option.negated or isinstance(default, bool):
            target.add_argument(option.flag, action="store_true", help=meta["help"])
            continue
        kind, choices = _argument_type(_field_type(option))
        target.add_argument(option.flag, type=kind, default=default, help=meta["help"],
                            choices=meta.get("choices") or outside_choices.get(f.name) or choices,
                            metavar=meta.get("metavar"))
    groups["validation"].add_argument("--run-name", default="train", help="MLflow run name")


def field_default(f: dataclasses.Field) -> Any:
    """A field's default, made by its factory when it has one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"config field {f.name!r} has no default; a `kubevae train` option needs one")


def _field_type(option: ConfigOption) -> Any:
    cls = {None: TrainConfig, "model": ModelConfig, "objective": ObjectiveConfig}[option.section]
    return typing.get_type_hints(cls)[option.field.name]


def _argument_type(annotation: Any) -> tuple[Any, list[Any] | None]:
    """(argparse type, choices) for a field's annotation; Optional[X] is X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), list(args)
    if typing.get_origin(annotation) is tuple:
        return conv_channels, None
    return annotation, None


@lru_cache(maxsize=1)
def parser() -> argparse.ArgumentParser:
    """The `kubevae train` parser on its own (the CLI adds the same arguments to its subparser)."""
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    add_arguments(p)
    return p


def options() -> dict[str, argparse.Action]:
    """{dest: action} of every `kubevae train` option (dest is the flag's Python name)."""
    return {a.dest: a for a in parser()._actions if a.option_strings and a.dest != "help"}


def train_argv(values: Mapping[str, Any] | None = None, /, **more: Any) -> list[str]:
    """The `kubevae train` arguments for {dest: value}, e.g.
    train_argv(data="/d", steps=600, beta=4.0, no_mlflow_model=True)
      -> ["--data", "/d", "--steps", "600", "--beta", "4.0", "--no-mlflow-model"].

    Keys are the parser's dest names (unknown ones are an error that lists the known ones);
    None leaves an option out; a switch is present when True; any other value becomes its text,
    so Katib placeholders ("${trialParameters.beta}") pass through. Rules that follow from one
    option belong here or in the trainer, never in the callers."""
    merged = {**(values or {}), **more}
    known = options()
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ValueError(f"train_argv: unknown `{PROG}` option(s) {unknown}; known: {sorted(known)}")
    argv: list[str] = []
    for dest, value in merged.items():
        action = known[dest]
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"train_argv: {flag} is a switch; expected True or False, got {value!r}")
            if value:
                argv.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            raise ValueError(f"train_argv: {flag} takes a value, not {value!r}")
        argv += [flag, text(value)]
    return argv


def text(value: Any) -> str:
    """An option value as `kubevae train` reads it back: floats exactly, sequences comma-joined."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def conv_channels(value: str) -> tuple[int, ...]:
    """--conv-channels "16,32,64,64" -> (16, 32, 64, 64); each a positive integer."""
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 32,32,64,64, got {value!r}")
    return widths


def flag(dest: str) -> str:
    """The flag spelling of one option: flag("latent_dim") -> "--latent-dim"."""
    known = options()
    if dest not in known:
        raise ValueError(f"unknown `{PROG}` option {dest!r}; known: {sorted(known)}")
    return known[dest].option_strings[-1]


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe: each option sets the field it came from."""
    values: dict[str | None, dict[str, Any]] = {None: {}, "model": {}, "objective": {}}
    for option in config_options():
        value = getattr(a, option.dest)
        values[option.section][option.field.name] = not value if option.negated else value
    train = values[None]
    if not train["iwae_k"] and train["objective_metric"] == "val_iwae_nll":
        train["iwae_k"] = 16  # the objective needs its bound
    return TrainConfig(**train, model=ModelConfig(**values["model"]),
                       objective=ObjectiveConfig(**values["objective"]))


def run(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    if cfg.objective_metric == "udr":
        from kubevae.training.selection import train_udr_trial

        train_udr_trial(cfg, run_name=a.run_name)
        return 0
    from kubevae.training.loop import train

    train(cfg, run_name=a.run_name)
    return 0

