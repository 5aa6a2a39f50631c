"""Parameter profiles. `quick` runs the whole pipeline on 2 CPU cores in minutes (make run);
`full` sizes the run for a GPU cluster."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # quick: sized for `make run` on 2 CPU cores. 32-px images (sprites keep shape and position;
    # about a quarter of the pixels) leave room for a final run long enough to reconstruct
    # (issue 10: 22 dB needs a few thousand steps). Two trials run side by side, one thread
    # each, which suits 2 cores better than one trial on two threads. beta stops at 8: at
    # a 200-step budget larger beta collapses trials (no active units) before they learn.
    "quick": {
        "source_uri": "builtin://sprites?n=6000&seed=0",
        "image_size": 32,
        "backend": "local",
        "objective_metric": "val_mig",
        "beta_min": 1.0,
        "beta_max": 8.0,
        "latent_dims": [6, 10],
        "max_trials": 2,
        "parallel_trials": 2,
        "trial_steps": 200,
        "train_steps": 3000,
        "batch_size": 64,
        "workers": 2,
        "iwae_k": 8,
        "metric_protocol": "fast",
    },
    "full": {
        "source_uri": "builtin://sprites",
        "backend": "kubernetes",
        "latent_dims": [6, 8, 10, 12],
        "max_trials": 24,
        "parallel_trials": 4,
        "trial_steps": 20_000,
        "train_steps": 300_000,  # disentanglement_lib's budget (at batch 64)
        "batch_size": 64,
        "workers": 4,
        "gpus_per_worker": 1,
        "iwae_k": 100,
    },
}


def profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ValueError(f"--profile: expected one of {sorted(PROFILES)}, got {name!r}")
    return dict(PROFILES[name])
