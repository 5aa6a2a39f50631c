"""Selection by UDR: one trial trains several seeds of the same setting, then scores them
together (kubevae.metrics.udr). The objective table, the collapse rule and the study are
kubevae.study; the per-epoch scorer of the other objectives is kubevae.training.scoring.

The trial's metric line gets `udr`, its interval over seeds (`udr_lo`, `udr_hi`: the lowest and
highest of the seeds' own scores, each seed's median agreement with the others; from 3 seeds
on, since 2 seeds are a single pair), the median
bounds of the seeds, and `collapsed`. The images are a fixed seeded sample of the validation
split (UDR_IMAGES, SELECTION_SEED), the same for every trial.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kubevae.study import (
    MIN_UDR_INTERVAL_SEEDS,
    SELECTION_SEED,
    UDR_IMAGES,
    guarded,
    interval_keys,
)


# -- udr: one trial, several seeds -------------------------------------------------------------
def seed_out(cfg, k: int) -> str:
    return cfg.out if k == 0 else f"{cfg.out}.seed{k}"


def train_udr_trial(cfg, run_name: str = "train") -> dict[str, Any]:
    """Train cfg.udr_seeds seeds of the same setting one after another (seed, seed + 1, ...),
    then print the UDR metric line (with the median bounds of the seeds) and write udr.json."""
    from kubevae.storage import atomic_write_json
    from kubevae.training.loop import print_metrics, train

    finals = []
    for k in range(cfg.udr_seeds):
        seed_cfg = dataclasses.replace(
            cfg, seed=cfg.seed + k, out=seed_out(cfg, k), objective_metric=None,
            checkpoint_dir=f"{cfg.checkpoint_dir}/seed{k}" if cfg.checkpoint_dir else None)
        finals.append(train(seed_cfg, run_name=f"{run_name}-seed{k}"))
    record = udr_record(cfg, finals)
    print_metrics({k: v for k, v in record.items() if isinstance(v, (int, float))})
    atomic_write_json(f"{cfg.out}/udr.json", record)
    return record


def udr_record(cfg, finals: list[dict[str, Any]]) -> dict[str, Any]:
    from kubevae.metrics.udr import udr_details, udr_settings
    from kubevae.model import load_model
    from kubevae.training.data import load

    data = load(cfg.data, cfg.dataset, cfg.dataset_size, cfg.seed)
    images = data.val if data.val is not None and len(data.val) else data.train
    import torch

    pick = np.sort(np.random.default_rng(SELECTION_SEED).permutation(len(images))[:UDR_IMAGES])
    codes, kls = [], []
    for k in range(cfg.udr_seeds):
        mu, kl = mean_codes_and_kl(load_model(seed_out(cfg, k)), images[torch.from_numpy(pick)])
        codes.append(mu)
        kls.append(kl)
    details = udr_details(codes, kls)
    median = {key: float(np.median([f[key] for f in finals if key in f]))
              for key in ("val_neg_elbo", "val_recon", "val_kl", "val_psnr", "val_active_units")
              if all(key in f for f in finals)}
    last = finals[-1]
    record = {"epoch": last.get("epoch", 0), "step": last.get("step", 0), **median,
              "udr_min_model": min(details["model_scores"]),
              **guarded("udr", details["udr"], median.get("val_active_units"), median.get("val_kl"))}
    interval = udr_interval(details["model_scores"])
    if interval is not None and not record["collapsed"]:  # a collapsed trial's score is a flag
        record.update(zip(interval_keys("udr"), interval, strict=True))
    record["settings"] = udr_settings("lasso", len(pick))  # written to udr.json, not printed
    record["model_scores"] = details["model_scores"]
    return record


def udr_interval(model_scores: list[float]) -> tuple[float, float] | None:
    """The range of the seeds' own scores; None below MIN_UDR_INTERVAL_SEEDS seeds: two seeds
    are one pair, whose two directions agree closely whatever another pair would give."""
    if len(model_scores) < MIN_UDR_INTERVAL_SEEDS:
        return None
    return float(min(model_scores)), float(max(model_scores))


def mean_codes_and_kl(vae, images_uint8) -> tuple[np.ndarray, np.ndarray]:
    """Mean codes [N, D] and the mean KL per latent [D] of uint8 images."""
    from kubevae.evaluation.encoding import encode
    from kubevae.metrics.unsupervised import kl_per_dimension

    mu, logvar = encode(vae, images_uint8)
    return mu, kl_per_dimension(mu, logvar)
