"""Evaluate a trained model on a dataset: bounds, quality, disentanglement, pictures, report.

Writes OUT/metrics.json, the pictures (PNG) and OUT/report.html (self-contained; it works as a
KFP HTML visualization). Every figure is independent of beta, so models trained with different
beta compare on one scale.

Example:
  kubevae evaluate --model runs/model --data runs/split --out runs/eval
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder written by `kubevae train`")
    p.add_argument("--data", required=True, help="a dataset folder or a split folder")
    p.add_argument("--out", required=True, help="the folder for metrics.json, pictures, report.html")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="which split of a split folder to evaluate on")
    p.add_argument("--iwae-k", type=int, default=50, help="importance samples for the IWAE bound")
    p.add_argument("--metric-protocol", choices=["disentanglement_lib", "fast"],
                   default="disentanglement_lib",
                   help="disentanglement metric settings: disentanglement_lib's sample counts and "
                        "classifiers, or fast (a random-forest DCI: minutes less on a CPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)


def run(a: argparse.Namespace) -> int:
    from kubevae.evaluation.full import evaluate_model
    from kubevae.hardware import pick_device

    metrics = evaluate_model(a.model, a.data, a.out, split=a.split, iwae_k=a.iwae_k, seed=a.seed,
                             protocol=a.metric_protocol, device=str(pick_device(a.device)))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps(scalars, indent=2, sort_keys=True))
    return 0
