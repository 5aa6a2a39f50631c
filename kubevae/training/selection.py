"""Search objectives: what a tuning trial reports every epoch, and which way is better.

beta has a purpose (disentanglement), so the search must optimize that purpose, not a bound
that prefers beta = 1 by construction. The objectives, each with its direction (Katib's
`objective.type` and the Optuna study's direction both read it from OBJECTIVES):

    val_mig         maximize  MIG (disentanglement_lib: mean codes, 20 bins) on a fixed, seeded
                              sample of the validation split; the default when the data has
                              factor columns (factor_*), e.g. the built-in sprites
    val_factor_vae  maximize  the FactorVAE score, same sample and the evaluate step's protocol
    val_dci         maximize  DCI disentanglement, same sample, random-forest importances
    udr             maximize  Unsupervised Disentanglement Ranking (kubevae.metrics.udr) of
                              `udr_seeds` seeds of the same setting; the default without factors
    val_neg_elbo    minimize  negative ELBO at beta = 1: prefers beta ~ 1; for latent size or
                              learning rate at a fixed beta
    val_iwae_nll    minimize  the IWAE-16 bound: the same caveat

Collapse guard: a model whose posterior collapsed to the prior (no active unit, or a rate
below MIN_RATE_NATS nats per image) can score deceptively on a disentanglement score (UDR is
high when the few latents that remain agree; MIG's histogram of a constant code is noise), so
for every maximized objective such a trial reports COLLAPSED_SCORE = -1, below any real score
(all lie in [0, 1]), and `collapsed=1` on its metric line. The minimized bounds need no guard: a
collapsed model has a poor bound.

When every trial collapsed, the search has no real choice: its "best" score is -1 like all the
others. The tune step then says so (the study's `all_collapsed`, the summary, the study report
and the step's metrics), takes the trial with the highest rate (least_collapsed) rather than an
arbitrary one, and the pipeline goes on: the final run trains longer than a trial (a collapse
early in training often ends: active units rise from 0 once the decoder has learnt the mean
image), and the gate judges the model it gives on the test split, so a model that is still
collapsed loses to any working champion (with none yet, it is registered like any first model,
its study marked). ALL_COLLAPSED_ADVICE says what to change.

The sample is the same for every epoch and every trial (SELECTION_SEED, not the trial's seed),
so trials are compared on identical images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

# The objective table, its test-split counterparts and the collapse rule are core types now
# (kubevae.study); these names stay importable from here for the callers not yet moved.
from kubevae.study import (  # noqa: E402,F401
    ALL_COLLAPSED_ADVICE,
    COLLAPSED_SCORE,
    MIN_RATE_NATS,
    OBJECTIVES,
    TEST_METRIC,
    Direction,
    SearchObjective,
    all_collapsed,
    default_objective,
    guarded,
    is_collapsed,
    least_collapsed,
    objective,
)

SELECTION_SEED = 0
SELECTION_IMAGES = 2_000  # MIG / DCI / FactorVAE sample from the validation split
UDR_IMAGES = 1_000  # disentanglement_lib's num_data_points


# -- per-epoch scores during training ----------------------------------------------------------
Scorer = Callable[[Any, dict, Any], dict]


def validation_scorer(cfg, data) -> Scorer:
    """A function (vae, val_metrics, device) -> the objective's entries of the epoch's metric
    line; nothing when the run has no objective (or it is udr: scored after all seeds)."""
    name = cfg.objective_metric
    if name is None or name == "udr":
        return lambda vae, val_metrics, device: {}
    spec = objective(name, parameter="--objective-metric")
    if spec.direction == "minimize":
        return lambda vae, val_metrics, device: {"collapsed": float(is_collapsed(
            val_metrics.get("val_active_units"), val_metrics.get("val_kl")))}
    ground_truth = data.val_ground_truth
    if ground_truth is None:
        raise ValueError(f"--objective-metric {name}: the validation split has no factor columns "
                         f"(factor_*); use udr, val_neg_elbo or val_iwae_nll")
    sample = selection_sample(ground_truth)

    def score(vae, val_metrics: dict, device) -> dict:
        value = factor_score(name, vae, sample, device)
        return guarded(name, value, val_metrics.get("val_active_units"), val_metrics.get("val_kl"))
    return score


def selection_sample(ground_truth, n: int = SELECTION_IMAGES):
    """The fixed seeded subset of the validation split that the objectives score."""
    from kubevae.metrics import GroundTruthData

    if len(ground_truth) <= n:
        return ground_truth
    keep = np.sort(np.random.default_rng(SELECTION_SEED).choice(len(ground_truth), n, replace=False))
    return GroundTruthData(np.asarray(ground_truth.images[keep]), ground_truth.factors[keep],
                           factor_sizes=ground_truth.factor_sizes,
                           factor_names=ground_truth.factor_names)


def factor_score(name: str, vae, sample, device) -> float:
    from kubevae.evaluation.full import mean_representation
    from kubevae.metrics import CachedRepresentation, MetricProtocol, dci, factor_vae_score, mig

    was_training = vae.training
    vae.eval()
    try:
        represent = CachedRepresentation(sample, mean_representation(vae, str(device)))
        everything = np.arange(len(sample))
        if name == "val_mig":
            return mig(represent(everything), sample.factors, MetricProtocol().mig_num_bins)
        rng = np.random.default_rng(SELECTION_SEED)
        if name == "val_dci":
            train, test = sample.sample_disjoint(len(sample) * 2 // 3, len(sample) // 3, rng)
            return dci(represent(train), sample.factors[train], represent(test), sample.factors[test],
                       importance_model="random_forest", random_state=SELECTION_SEED)["disentanglement"]
        if name == "val_factor_vae":
            return factor_vae_score(sample, represent, rng, num_train=2_000, num_eval=1_000,
                                    num_variance_estimate=len(sample))["eval_accuracy"]
    finally:
        vae.train(was_training)
    raise ValueError(f"--objective-metric: {name!r} is not a factor score")


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
    record["settings"] = udr_settings("lasso", len(pick))  # written to udr.json, not printed
    record["model_scores"] = details["model_scores"]
    return record


def mean_codes_and_kl(vae, images_uint8, batch_size: int = 256):
    """Mean codes [N, D] and the mean KL per latent [D] of uint8 images (a tensor)."""
    import torch

    from kubevae.model import VAE, kl_divergence

    vae.eval()
    mus, kls = [], []
    with torch.no_grad():
        for start in range(0, len(images_uint8), batch_size):
            mu, logvar = vae.encode(VAE.to_unit(images_uint8[start:start + batch_size]))
            mus.append(mu.double().numpy())
            kls.append(kl_divergence(mu.float(), logvar.float()).double().numpy())
    return np.concatenate(mus), np.concatenate(kls).mean(axis=0)
