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
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from kubevae.config import ModelConfig, ObjectiveConfig, TrainConfig

PROG = "kubevae train"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kubevae.training.selection import OBJECTIVES

    d, m, o = TrainConfig(), ModelConfig(), ObjectiveConfig()
    data = p.add_argument_group("data")
    src = data.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a dataset folder (kubevae ingest) or split folder (kubevae split)")
    src.add_argument("--dataset", choices=["sprites"], help="a built-in dataset")
    data.add_argument("--dataset-size", type=int, default=d.dataset_size,
                      help="how many built-in images to generate (737280 = the full sprites factorial)")
    out = p.add_argument_group("output and checkpoints")
    out.add_argument("--out", default=d.out, help="the model folder to write")
    out.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUT.ckpt)")
    out.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    out.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    out.add_argument("--resume", default=None,
                     help="'auto': continue from the newest valid checkpoint; or a checkpoint path")
    model = p.add_argument_group("model")
    model.add_argument("--latent-dim", type=int, default=m.latent_dim)
    model.add_argument("--likelihood", choices=["bernoulli", "gaussian_fixed", "gaussian_learned"],
                       default=m.likelihood)
    model.add_argument("--gaussian-sigma", type=float, default=m.gaussian_sigma)
    model.add_argument("--conv-channels", type=conv_channels, default=m.conv_channels,
                       metavar="C1,C2,C3,C4",
                       help="encoder conv widths, first to last; the decoder mirrors them "
                            f"(default {','.join(map(str, m.conv_channels))}: Burgess et al. 2018)")
    obj = p.add_argument_group("objective (see kubevae.config.ObjectiveConfig for the sources)")
    obj.add_argument("--objective", choices=["beta", "capacity"], default=o.kind)
    obj.add_argument("--beta", type=float, default=o.beta)
    obj.add_argument("--gamma", type=float, default=o.gamma, help="capacity objective weight")
    obj.add_argument("--capacity-max", type=float, default=o.capacity_max, help="C_max in nats")
    obj.add_argument("--capacity-steps", type=int, default=o.capacity_steps,
                     help="steps for C to reach C_max (0: a third of the run)")
    obj.add_argument("--warmup-steps", type=int, default=o.warmup_steps, help="KL warm-up steps (0 = off)")
    opt = p.add_argument_group("budget and optimization")
    opt.add_argument("--steps", type=int, default=None,
                     help="optimizer steps for the whole run; wins over --epochs")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="full passes, when --steps is not given")
    opt.add_argument("--batch-size", type=int, default=d.batch_size,
                     help="the GLOBAL batch, split evenly over the processes")
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--seed", type=int, default=d.seed)
    opt.add_argument("--deterministic", action="store_true", help="use deterministic algorithms only")
    opt.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    opt.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                     help="auto: bf16 autocast where the CPU (avx512_bf16, AMX) or GPU has it, "
                          "else fp32; fp32 under --deterministic")
    ev = p.add_argument_group("validation, search objective and tracking")
    ev.add_argument("--iwae-k", type=int, default=d.iwae_k,
                    help="importance samples for val IWAE (0 = off; 16 when the objective is val_iwae_nll)")
    ev.add_argument("--val-every", type=int, default=d.val_every, metavar="STEPS",
                    help="validate at the end of the epochs that reach a multiple of STEPS, and "
                         "after the last step (0: every epoch; a trial's median stopping reads "
                         "the objective each time it is validated)")
    ev.add_argument("--objective-metric", choices=sorted(OBJECTIVES), default=None,
                    help="the search objective to compute and print every epoch")
    ev.add_argument("--udr-seeds", type=int, default=d.udr_seeds,
                    help="seeds trained for --objective-metric udr")
    ev.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    ev.add_argument("--run-name", default="train", help="MLflow run name")
    ev.add_argument("--parent-run-id", default=None,
                    help="the MLflow run this run nests under (the tuning run for a trial; "
                         "default: the process's enclosing run, kubevae.tracking)")
    ev.add_argument("--require-tracking", action="store_true",
                    help="fail if MLflow is unreachable (default: warn and go on)")
    ev.add_argument("--no-tracking", action="store_true", help="do not log to MLflow at all")
    ev.add_argument("--no-mlflow-model", action="store_true", help="do not log the pyfunc model to MLflow")


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
    iwae_k = a.iwae_k if a.iwae_k or a.objective_metric != "val_iwae_nll" else 16
    return TrainConfig(
        data=a.data, dataset=a.dataset, dataset_size=a.dataset_size, out=a.out,
        checkpoint_dir=a.checkpoint_dir, checkpoint_every=a.checkpoint_every,
        keep_checkpoints=a.keep_checkpoints, resume=a.resume, epochs=a.epochs,
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        seed=a.seed, deterministic=a.deterministic, device=a.device, precision=a.precision,
        iwae_k=iwae_k, val_every=a.val_every, objective_metric=a.objective_metric,
        udr_seeds=a.udr_seeds,
        tracking=not a.no_tracking, require_tracking=a.require_tracking, experiment=a.experiment,
        parent_run_id=a.parent_run_id,
        log_mlflow_model=not a.no_mlflow_model,
        model=ModelConfig(latent_dim=a.latent_dim, likelihood=a.likelihood,
                          gaussian_sigma=a.gaussian_sigma, conv_channels=a.conv_channels),
        objective=ObjectiveConfig(kind=a.objective, beta=a.beta, gamma=a.gamma,
                                  capacity_max=a.capacity_max, capacity_steps=a.capacity_steps,
                                  warmup_steps=a.warmup_steps))


def run(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    if cfg.objective_metric == "udr":
        from kubevae.training.selection import train_udr_trial

        train_udr_trial(cfg, run_name=a.run_name)
        return 0
    from kubevae.training.loop import train

    train(cfg, run_name=a.run_name)
    return 0

