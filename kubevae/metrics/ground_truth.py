"""Ground-truth data for the metrics that need an oracle (FactorVAE, beta-VAE metric, and the
draws of MIG/DCI/SAP): observations with known factors, drawn by index lookup.

disentanglement_lib samples factor values and renders observations for them. kubevae evaluates
on a dataset folder instead, so "draw observations whose factor k equals v" becomes "draw items of
the dataset whose factor k equals v", uniformly. On a full factorial (the whole sprites data) the
two are the same distribution; on a subset (a test split) it is the subset's own distribution,
which the reported settings say (`describe()`).

The mean representation is deterministic, so `CachedRepresentation` evaluates the representation
function at most once per item: the FactorVAE metric's 10,000 x 64 draws cost one pass over the
blocks of items they touch, not 640,000 encoder calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kubevae.metrics._checks import check_factors

RepresentationFn = Callable[[np.ndarray], np.ndarray]


class GroundTruthData:
    """Images [N, H, W, C] (uint8, may be memory-mapped) and their factors [N, K]."""

    def __init__(self, images: np.ndarray, factors: np.ndarray, *,
                 factor_sizes: Sequence[int] | None = None,
                 factor_names: Sequence[str] | None = None, excluded_items: int = 0):
        if len(images) == 0:
            raise ValueError("images: expected at least one observation with known factors, got 0")
        self.images = images
        self.factors = check_factors(factors, len(images), "factors")
        k = self.factors.shape[1]
        self.factor_names = list(factor_names) if factor_names is not None else [f"factor_{i}" for i in range(k)]
        if len(self.factor_names) != k:
            raise ValueError(f"factor_names: {len(self.factor_names)} names for {k} factors")
        observed = (self.factors.max(axis=0) + 1).tolist()
        self.factor_sizes = list(factor_sizes) if factor_sizes is not None else observed
        if len(self.factor_sizes) != k or any(o > s for o, s in zip(observed, self.factor_sizes, strict=True)):
            raise ValueError(f"factor_sizes: {self.factor_sizes} do not fit the factor values "
                             f"(largest value + 1 per factor: {observed})")
        if (self.factors < 0).any():
            raise ValueError("factors: expected non-negative factor indices")
        self.excluded_items = excluded_items
        # For every factor k and value v: the items whose factor k equals v.
        self._groups: list[dict[int, np.ndarray]] = []
        for f in range(k):
            order = np.argsort(self.factors[:, f], kind="stable")
            values, starts = np.unique(self.factors[order, f], return_index=True)
            self._groups.append(dict(zip(values.tolist(), np.split(order, starts[1:]), strict=True)))

    @classmethod
    def from_dataset(cls, dataset) -> GroundTruthData:
        """From a kubevae.data.dataset.Dataset; items with a missing factor value are left out
        and counted in `excluded_items` (nothing is dropped silently)."""
        names = dataset.factor_names
        if not names:
            raise ValueError(f"{dataset.path}: the dataset has no factor columns (dataset.json "
                             f"'factor_names' is empty); disentanglement metrics need factors")
        columns = dataset.manifest[[f"factor_{n}" for n in names]]
        complete = columns.notna().all(axis=1).to_numpy()
        if not complete.any():
            raise ValueError(f"{dataset.path}: no item has all factors {names}")
        keep = np.flatnonzero(complete)
        images = dataset.images if complete.all() else dataset.images[keep]
        data = cls(images, columns.to_numpy()[keep].astype(np.int64),
                   factor_sizes=dataset.factor_sizes, factor_names=names,
                   excluded_items=int((~complete).sum()))
        return data

    def __len__(self) -> int:
        return len(self.factors)

    @property
    def num_factors(self) -> int:
        return self.factors.shape[1]

    def describe(self) -> dict[str, Any]:
        present = [len(g) for g in self._groups]
        return {"num_items": len(self), "excluded_items_missing_factors": self.excluded_items,
                "factor_names": self.factor_names, "factor_sizes": self.factor_sizes,
                "factor_values_present": present,
                "full_factorial": len(self) == int(np.prod(self.factor_sizes)),
                "sampling": "uniform over dataset items (index lookup), not rendered from factors"}

    # -- draws -------------------------------------------------------------------------------
    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n items drawn uniformly, with replacement (independent draws, as from a generator)."""
        return rng.integers(len(self), size=n)

    def sample_disjoint(self, n_train: int, n_test: int, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Two disjoint sets of items (no test item is also a training item). When the data holds
        fewer than n_train + n_test items, both shrink in proportion; check the returned sizes."""
        total = n_train + n_test
        if total <= len(self):
            chosen = rng.choice(len(self), size=total, replace=False)
            return chosen[:n_train], chosen[n_train:]
        chosen = rng.permutation(len(self))
        cut = int(round(len(self) * n_train / total))
        return chosen[:cut], chosen[cut:]

    def sample_matching(self, indices: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
        """For every item in `indices`, another item drawn uniformly among those that share its
        value of `factor` (the other factors vary as the data lets them)."""
        indices = np.asarray(indices)
        values = self.factors[indices, factor]
        out = np.empty(len(indices), dtype=np.int64)
        for value in np.unique(values):
            rows = values == value
            group = self._groups[factor][int(value)]
            out[rows] = group[rng.integers(len(group), size=int(rows.sum()))]
        return out

    def sample_fixed_factor_batches(self, factors: np.ndarray, batch_size: int,
                                    rng: np.random.Generator) -> np.ndarray:
        """[len(factors), batch_size] items: batch i shares the value of factor `factors[i]`
        (the value of a uniformly drawn item), everything else drawn at random."""
        anchors = self.sample_indices(len(factors), rng)
        batches = np.empty((len(factors), batch_size), dtype=np.int64)
        for f in range(self.num_factors):
            rows = np.flatnonzero(factors == f)
            if len(rows):
                repeated = np.repeat(anchors[rows], batch_size)
                batches[rows] = self.sample_matching(repeated, f, rng).reshape(len(rows), batch_size)
        return batches

    def observations(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.images[np.asarray(indices)])


class CachedRepresentation:
    """representation_fn(images_uint8_NHWC) -> codes [n, D], evaluated once per item of `data`."""

    def __init__(self, data: GroundTruthData, representation_fn: RepresentationFn,
                 batch_size: int = 256, progress_desc: str | None = None):
        self.data, self.representation_fn, self.batch_size = data, representation_fn, batch_size
        self.progress_desc = progress_desc  # show progress of long encodings under this name
        self._codes: np.ndarray | None = None
        self._known = np.zeros(len(data), dtype=bool)

    @classmethod
    def wrap(cls, data: GroundTruthData, representation_fn) -> CachedRepresentation:
        if isinstance(representation_fn, CachedRepresentation) and representation_fn.data is data:
            return representation_fn
        return cls(data, representation_fn)

    @property
    def num_encoded(self) -> int:
        return int(self._known.sum())

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        # Items are encoded in fixed blocks (items b*batch_size .. (b+1)*batch_size - 1), so an
        # item's code never depends on which other items were asked for first: an encoder's
        # arithmetic can differ with the batch it runs in, and a metric must give the same
        # score whichever metrics ran before it.
        blocks = np.unique(indices[~self._known[indices]] // self.batch_size)
        batches: Iterable[int] = blocks.tolist()
        if self.progress_desc and len(blocks) > 1:
            from kubevae.progress import progress

            batches = progress(batches, desc=self.progress_desc, total=len(blocks))
        for block in batches:
            batch = np.arange(block * self.batch_size, min(len(self.data), (block + 1) * self.batch_size))
            self._store(batch, self.representation_fn(self.data.observations(batch)))
        if self._codes is None:  # nothing encoded yet and nothing asked for: the code size is unknown
            raise ValueError("representation: expected at least one item index, got none")
        return self._codes[indices]

    def _store(self, batch: np.ndarray, codes) -> None:
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or len(codes) != len(batch):
            raise ValueError(f"representation_fn: expected codes of shape [{len(batch)}, D] for "
                             f"{len(batch)} images, got {codes.shape}")
        if not np.isfinite(codes).all():
            raise ValueError("representation_fn: returned non-finite codes")
        if self._codes is None:
            self._codes = np.zeros((len(self.data), codes.shape[1]))
        self._codes[batch] = codes
        self._known[batch] = True
