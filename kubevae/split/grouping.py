"""Groups that must never straddle a split: metadata groups, exact and near duplicates.

Three relations are merged (union-find semantics: the groups are the connected components of
their union, computed by scipy.sparse.csgraph in C rather than a Python loop):

1. the metadata group column (same patient/device/session), when given;
2. exact duplicates: equal `sha256` of the decoded pixels (any file format, any name);
3. near duplicates: pairs found among nearest neighbours and merged only after a verification
   of the pixels (max normalised cross-correlation over +-2 px shifts; kubevae.split.neardup),
   at a threshold that is given or calibrated on the data set itself.

Since every near-duplicate edge is verified, the candidate search can be loose without chaining
distinct images together. `mirrors` (default True) makes mirror images copies: saved flips are
augmentations in many data sets. A group larger than the smallest split is refused by the split step,
which says whether duplicate chaining or a metadata group made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kubevae.split.neardup import NearDuplicates, find_near_duplicates

if TYPE_CHECKING:
    from kubevae.data.dataset import ImageRows


def equal_value_edges(values: Sequence | pd.Series) -> np.ndarray:
    """Star edges (item, first item with the same value); missing values join nothing."""
    values = pd.Series(values).reset_index(drop=True)
    present = values.notna().to_numpy()
    codes = np.full(len(values), -1, np.int64)
    codes[present] = pd.factorize(values[present])[0]
    items = np.flatnonzero(present)
    first = np.full(codes.max() + 1 if len(items) else 0, -1, np.int64)
    # The first occurrence of each code: iterate backwards so the smallest index wins.
    first[codes[items[::-1]]] = items[::-1]
    heads = first[codes[items]]
    mask = heads != items
    return np.stack([items[mask], heads[mask]], axis=1)


def components(n: int, edge_sets: Sequence[np.ndarray]) -> np.ndarray:
    """Component label per item: the smallest item index in its component."""
    edges = np.concatenate([e for e in edge_sets if len(e)]) if any(len(e) for e in edge_sets) \
        else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


@dataclass
class Grouping:
    labels: np.ndarray                 # per item: the smallest item index of its group
    exact_edges: np.ndarray            # star edges between equal sha256
    near: NearDuplicates               # verified near-duplicate pairs, threshold, calibration
    group_edges: np.ndarray            # star edges between equal metadata group values
    duplicate_labels: np.ndarray       # groups of the two duplicate relations alone
    exact_labels: np.ndarray           # groups of exact duplicates (and metadata groups) alone
    exact_codes: np.ndarray | None = None   # per item: a code equal for equal sha256
    group_codes: np.ndarray | None = None   # per item: a code equal for equal metadata group, -1: none

    @property
    def threshold(self) -> float:
        return self.near.threshold

    @property
    def near_pairs(self) -> np.ndarray:
        return self.near.pairs

    def labels_among(self, keep: np.ndarray) -> np.ndarray:
        """The groups again, with the items where keep is False taken out of the graph (they
        become singletons): what remains connected without them. Equal metadata groups and
        equal pixels stay linked among the kept items even when the item their star edges
        pointed to is gone, and a near-duplicate pair (searched among one item per sha256)
        links the kept copies of its two images."""
        keep = np.asarray(keep, bool)
        if self.exact_codes is None:
            edges = [e[keep[e[:, 0]] & keep[e[:, 1]]] for e in
                     (self.group_edges, self.exact_edges, self.near.pairs)]
            return components(len(self.labels), edges)
        rows = np.flatnonzero(keep)
        edges = [_star_edges(self.exact_codes, rows)]
        if self.group_codes is not None:
            edges.append(_star_edges(self.group_codes, rows))
        pairs = self.near.pairs
        if len(pairs):
            # A kept item of each pair end's exact-copy class stands for that end.
            codes = self.exact_codes
            coded = rows[codes[rows] >= 0][::-1]
            first = np.full(int(codes.max()) + 1, -1, np.int64)
            first[codes[coded]] = coded
            ends = np.where(codes[pairs] >= 0, first[np.maximum(codes[pairs], 0)],
                            np.where(keep[pairs], pairs, -1))
            edges.append(ends[(ends >= 0).all(axis=1)])
        return components(len(self.labels), edges)


def _star_edges(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Edges (row, first row of the same code) among `rows` (ascending); code -1 joins nothing."""
    rows = rows[codes[rows] >= 0]
    if not len(rows):
        return np.zeros((0, 2), np.int64)
    values, first = np.unique(codes[rows], return_index=True)
    heads = rows[first][np.searchsorted(values, codes[rows])]
    mask = heads != rows
    return np.stack([rows[mask], heads[mask]], axis=1)


def _codes(values: Sequence | pd.Series) -> np.ndarray:
    values = pd.Series(values).reset_index(drop=True)
    codes = np.full(len(values), -1, np.int64)
    present = values.notna().to_numpy()
    codes[present] = pd.factorize(values[present])[0]
    return codes


def group_items(manifest: pd.DataFrame, images: ImageRows, *, group_column: str | None,
                threshold: float | None, threshold_source: str = "given",
                mirrors: bool = True) -> Grouping:
    """threshold None: calibrated on `images` (kubevae.split.neardup.calibrate). mirrors: a
    mirror image of an image is its copy (False: only the unflipped edits count)."""
    n = len(manifest)
    exact = equal_value_edges(manifest["sha256"])
    near = find_near_duplicates(images, threshold, threshold_source,
                                keys=manifest["sha256"].to_numpy(), mirrors=mirrors)
    groups = equal_value_edges(manifest[group_column]) if group_column else np.zeros((0, 2), np.int64)
    return Grouping(labels=components(n, [groups, exact, near.pairs]), exact_edges=exact, near=near,
                    group_edges=groups, duplicate_labels=components(n, [exact, near.pairs]),
                    exact_labels=components(n, [groups, exact]),
                    exact_codes=_codes(manifest["sha256"]),
                    group_codes=_codes(manifest[group_column]) if group_column else None)
