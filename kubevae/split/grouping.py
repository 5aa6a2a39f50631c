"""Groups that must never straddle a split: metadata groups, exact and near duplicates.

Three relations are merged (union-find semantics: the groups are the connected components of
their union, computed by scipy.sparse.csgraph in C rather than a Python loop):

1. the metadata group column (same patient/device/session), when given;
2. exact duplicates: equal `sha256` of the decoded pixels (any file format, any name);
3. near duplicates: 64-bit perceptual hashes (`phash`, the DCT hash of imagehash) within a
   Hamming distance `threshold`.

Default threshold: 10 of 64 bits, the default of the imagededup library for this hash. Measured
on 600 crops of scikit-learn's two sample photos resized to 64x64 (see tests/test_leakage_planted.py
for the planted version): JPEG re-encodes at quality 90 stay within 10 bits in 100% of cases
(quality 75: 99.5%), 1-pixel shifts 98.8% (worst of 4 directions), +/-10 brightness 99.7%,
5% darker 100%. Low-texture images (sky, flat backgrounds) have unstable hash bits and are the
misses. The hash's two halves always hold 32 ones each, so distances are even: 10 = 11.
Data sets of very similar images chain through near duplicates into one giant group; the split
refuses a group larger than its smallest fraction and says so (lower the threshold: the built-in
data sets carry a hint in their card, 0 for the sprites grid, 6 for the 8x8 digits).

Near-duplicate search: multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012). The 64 bits
(in a fixed mixed order) are cut into m blocks; by the pigeonhole principle two hashes within
distance r agree to within s = floor(r/m) bits on at least one block, so each block is a
direct-address table probed with every bit pattern within s of the query's block. Candidates
are verified with a popcount; each unordered pair is materialized once per block. Cost:
O(m * n * V) probes, V = sum_{i<=s} C(64/m, i), plus O(m * n * V * n / 2^(64/m)) candidates;
m is chosen to minimize the sum, so for hashes spread over the space (block width ~ log2 n) the
cost is O(n * m * V), about linear in n (n = 100,000, r = 10: m = 4 blocks of 16 bits, V = 137;
on 100,000 distinct texture images 75 million candidates, ~4 s on one core, against 5 * 10^9
pairs for brute force). Worst case (all hashes within a few bits of each other) it degrades to
all pairs, in bounded memory. Brute force is kept only as the tests' reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_NEAR_DUP_THRESHOLD = 10
HASH_BITS = 64
MAX_BLOCK_BITS = 24           # a direct-address table of 2^24 int64 = 128 MiB at most
CANDIDATE_BUDGET = 2_000_000  # candidates verified at once (bounds memory)


@dataclass
class SearchPlan:
    blocks: list[int]
    sub_radius: int
    probes_per_block: int
    candidates: int = 0
    pairs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": "multi-index hashing", "blocks": self.blocks, "sub_radius": self.sub_radius,
                "probes_per_block": self.probes_per_block, "candidates_verified": self.candidates,
                "pairs_found": self.pairs, "seconds": round(self.seconds, 3)}


def plan_search(n: int, threshold: int) -> SearchPlan:
    """Pick the number of blocks m that minimizes expected probes + candidates."""
    best = None
    for m in range(1, HASH_BITS + 1):  # more blocks than r + 1 still works (sub-radius 0)
        widths = _widths(m)
        if max(widths) > MAX_BLOCK_BITS:
            continue
        s = threshold // m
        probes = sum(math.comb(max(widths), i) for i in range(s + 1))
        cost = n * m * probes * (1 + n / 2 ** min(widths))
        if best is None or cost < best[0]:
            best = (cost, SearchPlan(widths, s, probes))
    assert best is not None
    return best[1]


def _widths(m: int) -> list[int]:
    base, extra = divmod(HASH_BITS, m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def near_duplicate_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, SearchPlan]:
    """All pairs (i, j), i < j, of DISTINCT uint64 hashes with Hamming distance <= threshold."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if threshold < 0:
        raise ValueError(f"near_dup_threshold: expected 0..{HASH_BITS}, got {threshold}")
    if threshold == 0 or n < 2:
        return np.zeros((0, 2), np.int64), SearchPlan([HASH_BITS], 0, 1)
    start = time.monotonic()
    plan = plan_search(n, threshold)
    mixed = _mix_bits(hashes)
    found = []
    shift = HASH_BITS
    for width in plan.blocks:
        shift -= width
        keys = ((mixed >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        masks = _masks(width, plan.sub_radius)
        for pairs, checked in _probe_block(hashes, keys, width, masks, threshold):
            found.append(pairs)
            plan.candidates += checked
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    if len(pairs):
        # A pair close on several blocks is found once per block.
        pairs = np.unique(pairs[:, 0] * n + pairs[:, 1])
        pairs = np.stack([pairs // n, pairs % n], axis=1)
    plan.pairs, plan.seconds = len(pairs), time.monotonic() - start
    return pairs, plan


# Neighbouring DCT coefficients are correlated, so contiguous blocks of phash bits are far from
# uniform (crowded buckets). A fixed permutation (Hamming distance does not change) mixes them:
# on 100,000 texture images it cut the candidates from 204 to 144 million.
_BIT_ORDER = np.random.default_rng(20231).permutation(HASH_BITS)


def _mix_bits(hashes: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    packed = np.ascontiguousarray(np.packbits(bits[:, _BIT_ORDER], axis=1))
    return packed.view(">u8").ravel().astype(np.uint64)


def _masks(width: int, radius: int) -> np.ndarray:
    out = [0]
    for r in range(1, radius + 1):
        out += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.array(out, dtype=np.int64)


def _probe_block(hashes, keys, width, masks, threshold):
    """Pairs within `threshold` among items whose keys differ by at most the masks' bits.

    Works in the order of the keys (ranks), so that each bucket is a contiguous range. Every
    unordered pair is materialized once per block: within a bucket only later ranks are taken,
    across buckets only probes towards a larger key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sorted_hashes = hashes[order]
    counts = np.bincount(keys, minlength=1 << width)
    ends = np.cumsum(counts)
    starts = ends - counts
    others = masks[masks != 0]
    n = len(keys)
    step = max(1, CANDIDATE_BUDGET // (4 * (len(others) + 1)))
    q0 = 0
    while q0 < n:
        q1 = min(n, q0 + step)
        key = sorted_keys[q0:q1]
        rank = np.arange(q0, q1)
        probe = key[:, None] ^ others[None, :]
        c = np.where(probe > key[:, None], counts[probe], 0)
        same = ends[key] - rank - 1
        # Shrink the chunk when its buckets are crowded, to bound memory.
        cut = int(np.searchsorted(np.cumsum(same + c.sum(axis=1)), CANDIDATE_BUDGET, side="right"))
        if cut < q1 - q0:
            q1 = q0 + max(1, cut)
            key, rank, probe, c, same = key[:q1 - q0], rank[:q1 - q0], probe[:q1 - q0], c[:q1 - q0], same[:q1 - q0]
        hit = np.flatnonzero(c)
        query = np.concatenate([rank, rank[hit // len(others)]]) if len(others) else rank
        first = np.concatenate([rank + 1, starts[probe.ravel()[hit]]]) if len(others) else rank + 1
        count = np.concatenate([same, c.ravel()[hit]]) if len(others) else same
        total = int(count.sum())
        if total:
            offsets = np.cumsum(count) - count
            a = np.repeat(query, count)
            b = np.repeat(first - offsets, count) + np.arange(total)
            close = np.bitwise_count(sorted_hashes[a] ^ sorted_hashes[b]) <= threshold
            i, j = order[a[close]], order[b[close]]
            yield np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), total
        q0 = q1


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Reference for the tests: all pairs, O(n^2)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    d = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(d <= threshold, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


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
    near_pairs: np.ndarray             # item pairs whose (different) phashes are within threshold
    phash_edges: np.ndarray            # star edges between equal phash
    group_edges: np.ndarray            # star edges between equal metadata group values
    threshold: int
    plan: SearchPlan
    duplicate_labels: np.ndarray       # groups of the two duplicate relations alone
    hash_index: np.ndarray             # per item: index of its phash among the distinct ones
    hash_pairs: np.ndarray             # pairs of distinct phashes within threshold

    def labels_among(self, keep: np.ndarray) -> np.ndarray:
        """The groups again, with the items where keep is False taken out of the graph (they
        become singletons): what remains connected without them."""
        edges = [e[keep[e[:, 0]] & keep[e[:, 1]]] for e in
                 (self.group_edges, self.exact_edges, self.phash_edges, self.near_pairs)]
        return components(len(self.labels), edges)


def group_items(manifest: pd.DataFrame, *, group_column: str | None, threshold: int) -> Grouping:
    n = len(manifest)
    exact = equal_value_edges(manifest["sha256"])
    hashes = manifest["phash"].astype(str)
    phash_edges = equal_value_edges(hashes)
    unique, inverse = np.unique(hashes.to_numpy(), return_inverse=True)
    values = np.array([int(h, 16) for h in unique], dtype=np.uint64)
    pairs, plan = near_duplicate_pairs(values, threshold)
    # One representative item per distinct hash carries the hash-level pair to the items.
    representative = np.zeros(len(unique), np.int64)
    representative[inverse[::-1]] = np.arange(n)[::-1]
    near = representative[pairs] if len(pairs) else np.zeros((0, 2), np.int64)
    groups = equal_value_edges(manifest[group_column]) if group_column else np.zeros((0, 2), np.int64)
    dup_edges = [exact, phash_edges, near]
    return Grouping(labels=components(n, [groups, *dup_edges]), exact_edges=exact, near_pairs=near,
                    phash_edges=phash_edges, group_edges=groups, threshold=threshold, plan=plan,
                    duplicate_labels=components(n, dup_edges), hash_index=inverse, hash_pairs=pairs)
