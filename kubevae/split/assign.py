"""Which split each group goes to.

Hash mode (default): a group's key is hashed with sha256 (salted) into [0, 1) and the cumulative
fractions cut that interval into train, val and test, as TFX ExampleGen does with its hash
buckets. The key of a group is the smallest of its members' keys: `group:<value>` for members
with a metadata group, else `item:<sha256 of the pixels>`. So a group keeps its split when data
is appended unless new items merge it with another group; `--previous-split` removes even that:
every item it names keeps its split, and a new item that joins a group with pinned items
inherits their split. A new item that would join groups pinned to different splits is excluded
(reported), since putting it anywhere would leak.

Time mode (`time_column` + cutoffs): train holds items older than the first cutoff; with two
cutoffs val holds [c1, c2) and test holds >= c2; with one, the items at or after it are hashed
into val and test in the ratio of their fractions. A group with items on both sides of a cutoff
is excluded (reported): any placement would put a newer item in train or an older one in test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
ASSIGNMENTS_FILE = "assignments.csv"
EXCLUDED = -1


@dataclass
class Assignment:
    split: np.ndarray          # per item: 0 train, 1 val, 2 test, -1 excluded
    how: list[str]             # per item: hash | time | pinned | inherited | excluded: <why>
    group_key: list[str]       # per item: its group's key


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions: expected 3 values (train, val, test), got {list(fractions)}")
    for name, f in zip(SPLITS, fractions, strict=False):
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"fractions: the {name} fraction is {f}; expected a value in (0, 1)")
    if sum(fractions) > 1.0 + 1e-9:
        raise ValueError(f"fractions: {list(fractions)} sum to {sum(fractions):g}; expected at most 1")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def bucket(key: str, salt: str) -> float:
    """A stable position in [0, 1) for a key: the first 8 bytes of sha256(salt + key)."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of_bucket(position: float, fractions: Sequence[float]) -> int:
    edges = np.cumsum(fractions)
    index = int(np.searchsorted(edges, position, side="right"))
    return index if index < 3 else EXCLUDED  # past the fractions' sum: not sampled


def member_keys(manifest: pd.DataFrame, group_column: str | None) -> list[str]:
    sha = manifest["sha256"].astype(str).tolist()
    if not group_column:
        return [f"item:{s}" for s in sha]
    groups = manifest[group_column]
    return [f"item:{s}" if pd.isna(g) else f"group:{g}" for s, g in zip(sha, groups, strict=False)]


def group_keys(labels: np.ndarray, keys: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for label, key in zip(labels.tolist(), keys, strict=False):
        if label not in out or key < out[label]:
            out[label] = key
    return out


def read_previous(path: str | Path, item_ids: pd.Series) -> pd.Series:
    """item_id -> split from an earlier assignments.csv (or the split folder holding it), a
    local path or an s3:// / minio:// URI (S3 settings from the environment, as for ingest)."""
    text = str(path)
    if text.split("://", 1)[0].lower() in ("s3", "minio"):  # an artifact in a bucket
        from kubevae.objectstore import read_uri

        path = text + ASSIGNMENTS_FILE if text.endswith("/") else text
        data, _ = read_uri(path, what="--previous-split")
        frame = pd.read_csv(io.BytesIO(data), dtype={"item_id": str, "split": str})
    else:
        path = Path(path)
        if path.is_dir():
            path = path / ASSIGNMENTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"--previous-split {path}: file not found (expected an "
                                    f"{ASSIGNMENTS_FILE} or a split folder holding one)")
        frame = pd.read_csv(path, dtype={"item_id": str, "split": str})
    missing = [c for c in ("item_id", "split") if c not in frame.columns]
    if missing:
        raise ValueError(f"--previous-split {path}: missing column(s) {missing}; found {list(frame.columns)}")
    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        raise ValueError(f"--previous-split {path}: column 'split' has {frame['split'][bad].iloc[0]!r} "
                         f"(row {int(np.flatnonzero(bad)[0]) + 2}); expected one of {SPLITS}")
    if frame["item_id"].duplicated().any():
        raise ValueError(f"--previous-split {path}: item_id {frame['item_id'][frame['item_id'].duplicated()].iloc[0]!r} "
                         "appears twice")
    unknown = ~frame["item_id"].isin(set(item_ids))
    if unknown.any():
        examples = frame["item_id"][unknown].head(3).tolist()
        raise ValueError(f"--previous-split {path}: {int(unknown.sum())} item(s) are not in the "
                         f"dataset, e.g. {examples}; expected every pinned item_id to still exist "
                         "(re-ingest with the old files, or drop those rows)")
    return frame.set_index("item_id")["split"]


def assign(labels: np.ndarray, keys: list[str], *, fractions: Sequence[float], salt: str,
           pinned: pd.Series | None, item_ids: pd.Series, times: pd.Series | None = None,
           cutoffs: Sequence | None = None) -> Assignment:
    n = len(labels)
    by_group = group_keys(labels, keys)
    split = np.full(n, EXCLUDED, np.int64)
    how = [""] * n
    pinned_split = _pinned(pinned, item_ids)
    group_pins = _group_pins(labels, pinned_split)
    if times is not None:
        group_split = _time_groups(labels, times, cutoffs, fractions, salt, by_group)
    else:
        group_split = {g: (split_of_bucket(bucket(k, salt), fractions), "hash")
                       for g, k in by_group.items()}
    for i, label in enumerate(labels.tolist()):
        pins = group_pins.get(label)
        if pinned_split[i] != EXCLUDED:
            split[i], how[i] = pinned_split[i], "pinned"
        elif pins and len(pins) > 1:
            names = ", ".join(SPLITS[p] for p in sorted(pins))
            split[i], how[i] = EXCLUDED, f"excluded: joins groups pinned to different splits ({names})"
        elif pins:
            split[i], how[i] = next(iter(pins)), "inherited"
        else:
            split[i], why = group_split[label]
            how[i] = why if split[i] != EXCLUDED or why.startswith("excluded") else \
                "excluded: past the sum of the fractions (not sampled)"
    return Assignment(split, how, [by_group[label] for label in labels.tolist()])


def _pinned(pinned: pd.Series | None, item_ids: pd.Series) -> np.ndarray:
    out = np.full(len(item_ids), EXCLUDED, np.int64)
    if pinned is not None and len(pinned):
        mapped = item_ids.map(pinned)
        present = mapped.notna().to_numpy()
        out[present] = [SPLITS.index(s) for s in mapped[present]]
    return out


def _group_pins(labels: np.ndarray, pinned_split: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for label, s in zip(labels.tolist(), pinned_split.tolist(), strict=False):
        if s != EXCLUDED:
            out.setdefault(label, set()).add(s)
    return out


def _time_groups(labels, times: pd.Series, cutoffs, fractions, salt, by_group):
    """Group -> (split, how) by time; groups straddling a cutoff are excluded."""
    cutoffs = list(cutoffs)
    values = times.reset_index(drop=True)
    per_item = np.where(values < cutoffs[0], 0, 1)
    if len(cutoffs) == 2:
        per_item = np.where(values >= cutoffs[1], 2, per_item)
    frame = pd.DataFrame({"label": labels, "part": per_item})
    parts = frame.groupby("label")["part"].agg(["min", "max"])
    val_share = fractions[1] / (fractions[1] + fractions[2])
    out = {}
    for label, (low, high) in parts.iterrows():
        if low != high:
            out[label] = (EXCLUDED, "excluded: its group has items on both sides of a time cutoff")
        elif low == 1 and len(cutoffs) == 1:
            out[label] = (1 if bucket(by_group[label], salt) < val_share else 2, "time")
        else:
            out[label] = (int(low), "time")
    return out
