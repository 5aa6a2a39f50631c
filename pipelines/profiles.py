"""Parameter profiles. `quick` runs the whole pipeline on 2 CPU cores in minutes (make run);
`full` sizes the run for a GPU cluster."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # quick: `make run` on 2 CPU cores in minutes. Why each value, with
    # the figures, machines and dates: docs/measurements.md, "The quick profile".
    # - 64 px and zoom 1.6: at 32 px, or at dSprites' size, no beta >= 1 paid for shape.
    # - beta 1 and 4 (a grid of two trials, one at each end, 4x apart), latent size 10: the
    #   summary and the study report show what beta does to the rate, PSNR and the objective
    #   with its interval; a range like [1, 1.5] made the choice noise.
    # - objective_metric auto: val_mig with factor columns (sprites), udr without (digits).
    # - conv_channels 16, 32, 64, 64, lr 1e-3, train_steps 2,500, val_every_steps 500, one
    #   process of two threads: the fastest settings that kept the sprites' shapes.
    # - two trials side by side, one thread each, 300 steps: fewer left a beta = 4 trial still
    #   collapsed.
    "quick": {
        "source_uri": "builtin://sprites?n=6000&seed=0&zoom=1.6",
        "image_size": 64,
        "backend": "local",
        "objective_metric": "auto",
        "algorithm": "grid",
        "beta_min": 1.0,
        "beta_max": 4.0,
        "latent_dims": [10],
        "lr": 1e-3,
        "conv_channels": [16, 32, 64, 64],
        "max_trials": 2,
        "parallel_trials": 2,
        "trial_steps": 300,
        "train_steps": 2500,
        "val_every_steps": 500,
        "batch_size": 64,
        "workers": 1,
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
