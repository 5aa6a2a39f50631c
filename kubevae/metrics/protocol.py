"""The sample counts and classifiers of every disentanglement metric, in one typed place.

`MetricProtocol()` is disentanglement_lib's protocol (unsupervised_study_v1 metric configs).
`MetricProtocol.fast()` differs only in DCI's classifier (a random forest instead of gradient
boosting, minutes -> seconds on one CPU core); its DCI is not comparable to published numbers.
The protocol's fields are written beside the scores (see kubevae.evaluation.full).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricProtocol:
    name: str = "disentanglement_lib"
    mig_num_train: int = 10_000
    mig_num_bins: int = 20
    dci_num_train: int = 10_000
    dci_num_test: int = 5_000
    dci_importance: str = "gradient_boosting"
    sap_num_train: int = 10_000
    sap_num_test: int = 5_000
    factor_vae_batch_size: int = 64
    factor_vae_num_train: int = 10_000
    factor_vae_num_eval: int = 5_000
    factor_vae_num_variance_estimate: int = 10_000
    factor_vae_prune_threshold: float = 0.05
    beta_vae_batch_size: int = 64
    beta_vae_num_train: int = 10_000
    beta_vae_num_eval: int = 5_000
    unsupervised_num_points: int = 10_000
    tc_num_points: int = 2_000

    @classmethod
    def fast(cls) -> MetricProtocol:
        return cls(name="fast", dci_importance="random_forest")

    @classmethod
    def named(cls, name: str) -> MetricProtocol:
        protocols = {"disentanglement_lib": cls(), "fast": cls.fast()}
        if name not in protocols:
            raise ValueError(f"metric protocol: expected one of {sorted(protocols)}, got {name!r}")
        return protocols[name]

    def scaled(self, fraction: float) -> MetricProtocol:
        """Every sample count times `fraction` (at least 10): for tests and smoke runs only."""
        counts: dict[str, Any] = {f.name: max(10, int(getattr(self, f.name) * fraction))
                  for f in dataclasses.fields(self)
                  if f.name.endswith(("_num_train", "_num_test", "_num_eval", "_estimate", "_points"))}
        return dataclasses.replace(self, name=f"{self.name} x{fraction:g}", **counts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
