"""Train a beta-VAE. Runs unchanged as one process, under torchrun and inside a PyTorchJob.

Examples:
  kubevae train --dataset sprites --epochs 1 --out runs/model
  torchrun --nproc_per_node=2 -m kubevae train --dataset sprites --epochs 1
  kubevae train --data SPLIT_DIR --beta 4 --latent-dim 10 --resume auto

Each epoch prints one line of name=value metrics on stdout (Katib's StdOut collector reads
them); the objective for tuning is val_neg_elbo (beta = 1, so runs with any beta compare).
"""

from __future__ import annotations

import argparse

from kubevae.config import ModelConfig, ObjectiveConfig, TrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    obj = p.add_argument_group("objective")
    obj.add_argument("--objective", choices=["beta", "capacity"], default=o.kind)
    obj.add_argument("--beta", type=float, default=o.beta)
    obj.add_argument("--gamma", type=float, default=o.gamma, help="capacity objective weight")
    obj.add_argument("--capacity-max", type=float, default=o.capacity_max, help="C_max in nats")
    obj.add_argument("--capacity-steps", type=int, default=o.capacity_steps, help="steps for C to reach C_max")
    obj.add_argument("--warmup-steps", type=int, default=o.warmup_steps, help="KL warm-up steps (0 = off)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
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
    ev = p.add_argument_group("validation and tracking")
    ev.add_argument("--iwae-k", type=int, default=d.iwae_k, help="importance samples for val IWAE (0 = off)")
    ev.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    ev.add_argument("--run-name", default="train", help="MLflow run name")
    ev.add_argument("--require-tracking", action="store_true",
                    help="fail if MLflow is unreachable (default: warn and go on)")
    ev.add_argument("--no-tracking", action="store_true", help="do not log to MLflow at all")
    ev.add_argument("--no-mlflow-model", action="store_true", help="do not log the pyfunc model to MLflow")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=a.data, dataset=a.dataset, dataset_size=a.dataset_size, out=a.out,
        checkpoint_dir=a.checkpoint_dir, checkpoint_every=a.checkpoint_every,
        keep_checkpoints=a.keep_checkpoints, resume=a.resume, epochs=a.epochs,
        max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        seed=a.seed, deterministic=a.deterministic, device=a.device, precision=a.precision, iwae_k=a.iwae_k,
        tracking=not a.no_tracking, require_tracking=a.require_tracking, experiment=a.experiment,
        log_mlflow_model=not a.no_mlflow_model,
        model=ModelConfig(latent_dim=a.latent_dim, likelihood=a.likelihood,
                          gaussian_sigma=a.gaussian_sigma),
        objective=ObjectiveConfig(kind=a.objective, beta=a.beta, gamma=a.gamma,
                                  capacity_max=a.capacity_max, capacity_steps=a.capacity_steps,
                                  warmup_steps=a.warmup_steps))


def run(a: argparse.Namespace) -> int:
    from kubevae.training.loop import train

    train(config_from_args(a), run_name=a.run_name)
    return 0
