"""Parameter profiles. `quick` runs the whole pipeline on 2 CPU cores in minutes (make run);
`full` sizes the run for a GPU cluster."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "source_uri": "builtin://sprites?n=4000&seed=0",
        "backend": "local",
        "objective_metric": "val_mig",
        "beta_min": 1.0,
        "beta_max": 16.0,
        "latent_dims": [6, 10],
        "max_trials": 4,
        "parallel_trials": 1,
        "trial_steps": 150,
        "train_steps": 1500,
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
