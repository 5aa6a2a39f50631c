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

# Each metric's file states disentanglement_lib's settings; the protocol takes them from there.
from kubevae.metrics.beta_vae import DEFAULTS as BETA_VAE
from kubevae.metrics.dci import DEFAULT_IMPORTANCE_MODEL as DCI_IMPORTANCE
from kubevae.metrics.dci import DEFAULT_NUM_TEST as DCI_NUM_TEST
from kubevae.metrics.dci import DEFAULT_NUM_TRAIN as DCI_NUM_TRAIN
from kubevae.metrics.factor_vae import DEFAULTS as FACTOR_VAE
from kubevae.metrics.mig import DEFAULT_NUM_BINS as MIG_NUM_BINS
from kubevae.metrics.mig import DEFAULT_NUM_TRAIN as MIG_NUM_TRAIN
from kubevae.metrics.sap import DEFAULT_NUM_TEST as SAP_NUM_TEST
from kubevae.metrics.sap import DEFAULT_NUM_TRAIN as SAP_NUM_TRAIN


@dataclass(frozen=True)
class MetricProtocol:
    """The defaults are disentanglement_lib's, as each metric's own file states them."""

    name: str = "disentanglement_lib"
    mig_num_train: int = MIG_NUM_TRAIN
    mig_num_bins: int = MIG_NUM_BINS
    dci_num_train: int = DCI_NUM_TRAIN
    dci_num_test: int = DCI_NUM_TEST
    dci_importance: str = DCI_IMPORTANCE
    sap_num_train: int = SAP_NUM_TRAIN
    sap_num_test: int = SAP_NUM_TEST
    factor_vae_batch_size: int = int(FACTOR_VAE["batch_size"])
    factor_vae_num_train: int = int(FACTOR_VAE["num_train"])
    factor_vae_num_eval: int = int(FACTOR_VAE["num_eval"])
    factor_vae_num_variance_estimate: int = int(FACTOR_VAE["num_variance_estimate"])
    factor_vae_prune_threshold: float = FACTOR_VAE["prune_threshold"]
    beta_vae_batch_size: int = BETA_VAE["batch_size"]
    beta_vae_num_train: int = BETA_VAE["num_train"]
    beta_vae_num_eval: int = BETA_VAE["num_eval"]
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
