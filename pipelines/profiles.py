"""Parameter profiles. `quick` runs the whole pipeline on 2 CPU cores in minutes (make run);
`full` sizes the run for a GPU cluster."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "source_uri": "builtin://sprites?n=4000&seed=0",
        "backend": "local",
        "beta_min": 0.5,
        "beta_max": 4.0,
        "latent_dims": [4, 8],
        "max_trials": 3,
        "parallel_trials": 1,
        "trial_epochs": 1,
        "epochs": 4,
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
        "trial_epochs": 8,
        "epochs": 50,
        "batch_size": 256,
        "workers": 4,
        "gpus_per_worker": 1,
        "iwae_k": 100,
    },
}


def profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ValueError(f"--profile: expected one of {sorted(PROFILES)}, got {name!r}")
    return dict(PROFILES[name])
