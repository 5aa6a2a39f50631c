"""Which split each group goes to.

Hash mode (default): a group's key is hashed with sha256 (salted) into [0, 1) and the cumulative
fractions cut that interval into train, val and test, as TFX ExampleGen does with its hash
buckets. The key of a group is the smallest of its members' keys: `group:<value>` for members
with a metadata group, else `item:<sha256 of the pixels>`. So a group keeps its split when data
is appended unless new items merge it with another group; `--previous-split` removes even that:
every item it names keeps its split, and a new item that joins a group with pinned items
inherits their split. A new item that would join groups pinned to different splits is excluded
(reported), since putting it anywhere would leak.

New data (or a new threshold) can also show that pinned items of different splits are copies of
each other or share a group: a link the earlier split missed (`find_pinned_links`). With
`pinned_copies="exclude"` (the default) each set of pinned items so linked keeps the items of its
latest split (test > val > train) and the others leave this split (excluded, with the partner
named), so the frozen test items stay where they are; with "fail" the split step fails.

Time mode (`time_column` + cutoffs): train holds items older than the first cutoff; with two
cutoffs val holds [c1, c2) and test holds >= c2; with one, the items at or after it are hashed
into val and test in the ratio of their fractions. A group with items on both sides of a cutoff
is excluded (reported): any placement would put a newer item in train or an older one in test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
ASSIGNMENTS_FILE = "assignments.csv"
PREVIOUS_REPORT = "leakage_report.json"   # beside the previous assignments.csv, when there is one
EXCLUDED = -1
PINNED_COPIES = ("exclude", "fail")


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
    return read_previous_table(path, item_ids)["split"]


def read_previous_table(path: str | Path, item_ids: pd.Series) -> pd.DataFrame:
    """The earlier assignments.csv, indexed by item_id (columns split and, when recorded,
    group_id), checked against the data set's items (see read_previous)."""
    text = str(path)
    if text.split("://", 1)[0].lower() in ("s3", "minio"):  # an artifact in a bucket
        from kubevae.objectstore import read_uri

        path = text + ASSIGNMENTS_FILE if text.endswith("/") else text
        data, _ = read_uri(path, what="--previous-split")
        frame = pd.read_csv(io.BytesIO(data), dtype={"item_id": str, "split": str, "group_id": str})
    else:
        path = Path(path)
        if path.is_dir():
            path = path / ASSIGNMENTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"--previous-split {path}: file not found (expected an "
                                    f"{ASSIGNMENTS_FILE} or a split folder holding one)")
        frame = pd.read_csv(path, dtype={"item_id": str, "split": str, "group_id": str})
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
    columns = ["split"] + (["group_id"] if "group_id" in frame.columns else [])
    return frame.set_index("item_id")[columns]


def read_previous_report(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """The leakage_report.json beside an earlier assignments.csv (in its split folder), and
    where it was looked for; None when there is none or it cannot be read (it is optional)."""
    import json

    text = str(path)
    if text.split("://", 1)[0].lower() in ("s3", "minio"):
        where = text + PREVIOUS_REPORT if text.endswith("/") else text.rsplit("/", 1)[0] + "/" + PREVIOUS_REPORT
        try:
            from kubevae.objectstore import read_uri

            data, _ = read_uri(where, what="--previous-split report")
            return json.loads(data), where
        except Exception:  # noqa: BLE001 - optional: the report then says it was not found
            return None, where
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    report = folder / PREVIOUS_REPORT
    try:
        return json.loads(report.read_text()), str(report)
    except (OSError, ValueError):
        return None, str(report)


@dataclass
class PinnedLinks:
    """Links between pinned items of different splits: what the earlier split missed."""
    links: list[dict[str, Any]] = field(default_factory=list)  # evidence, rows per split
    exclusions: dict[int, str] = field(default_factory=dict)   # row -> reason (exclude)
    linked_sets: int = 0       # connected sets of pinned items that span splits
    pinned_items: int = 0
    pinned_split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per item


def find_pinned_links(grouping: Any, pinned_split: np.ndarray, item_ids: pd.Series,
                      group_values: pd.Series | None = None) -> PinnedLinks:
    """Pinned items of different splits that share a metadata group or the pixels, or form a
    verified near-duplicate pair (a pair's ends stand for their exact copies), and the items
    that `exclude` leaves out: in every connected set of pinned items (links among pinned items
    only; a link through a new item is the new item's problem, see `assign`) that spans splits,
    the items of every split but its latest (test > val > train)."""
    pinned = pinned_split != EXCLUDED
    rows = np.flatnonzero(pinned)
    out = PinnedLinks(pinned_items=int(len(rows)), pinned_split=pinned_split)
    if len(rows) < 2:
        return out
    ids = item_ids.astype(str).to_numpy()
    split_of = pinned_split
    if grouping.group_codes is not None and group_values is not None:
        values = pd.Series(group_values).reset_index(drop=True)
        for per in _spanning(grouping.group_codes, rows, split_of):
            out.links.append({"evidence": "metadata group", "group": str(values.iloc[per[min(per)][0]]),
                              "rows": per})
    sha_codes = grouping.exact_codes
    for per in _spanning(sha_codes, rows, split_of):
        out.links.append({"evidence": "exact duplicate", "rows": per})
    pairs, sims = grouping.near.pairs, grouping.near.similarity
    if len(pairs):
        classes = int(sha_codes.max()) + 1
        low = np.full(classes, len(SPLITS), np.int64)
        high = np.full(classes, -1, np.int64)
        coded = rows[sha_codes[rows] >= 0]
        np.minimum.at(low, sha_codes[coded], split_of[coded])
        np.maximum.at(high, sha_codes[coded], split_of[coded])
        a, b = sha_codes[pairs[:, 0]], sha_codes[pairs[:, 1]]
        ok = (a >= 0) & (b >= 0)
        a, b = np.where(ok, a, 0), np.where(ok, b, 0)
        single = (low[a] == high[a]) & (low[b] == high[b]) & (high[a] == high[b])
        cross = np.flatnonzero(ok & (high[a] >= 0) & (high[b] >= 0) & ~single)
        if len(cross):
            firsts = pd.DataFrame({"code": sha_codes[coded], "split": split_of[coded], "row": coded}
                                  ).groupby(["code", "split"])["row"].first()
            for k in cross.tolist():
                left, right = firsts.loc[int(a[k])], firsts.loc[int(b[k])]
                for sa, ra in left.items():
                    for sb, rb in right.items():
                        if sa != sb:
                            out.links.append({"evidence": "near duplicate",
                                              "similarity": round(float(sims[k]), 4),
                                              "rows": {int(sa): np.array([ra]), int(sb): np.array([rb])}})
    if not out.links:
        return out
    labels = grouping.labels_among(pinned)
    frame = pd.DataFrame({"label": labels[rows], "split": split_of[rows], "row": rows})
    spans = frame.groupby("label")["split"].agg(["nunique", "max"])
    spans = spans[spans["nunique"] > 1]
    out.linked_sets = int(len(spans))
    latest = frame["label"].map(spans["max"])
    leaving = frame[latest.notna() & (frame["split"] < latest)]
    # Each item leaving names a partner: the latest-split item of a link it is in, else of a
    # link of its linked set.
    partner: dict[int, tuple[int, dict[str, Any], bool]] = {}
    by_set: dict[int, tuple[int, dict[str, Any]]] = {}
    for link in out.links:
        per = link["rows"]
        top = max(per)
        head = int(per[top][0])
        by_set.setdefault(int(labels[head]), (head, link))
        for s, members in per.items():
            if s < top:
                for r in members.tolist():
                    partner.setdefault(int(r), (head, link, True))
    for r, s in zip(leaving["row"].tolist(), leaving["split"].tolist(), strict=True):
        head, link, direct = partner.get(r) or (*by_set[int(labels[r])], False)
        via = "by" if direct else "through its linked items; the link:"
        out.exclusions[r] = (f"excluded: pinned to {SPLITS[s]}, linked to an item pinned to "
                             f"{SPLITS[split_of[head]]} (a link the earlier split missed; the later "
                             f"split keeps its items); partner {ids[head]} {via} "
                             f"{describe_link(link)}")
    return out


def describe_link(link: dict[str, Any]) -> str:
    if link["evidence"] == "metadata group":
        return f"metadata group {link['group']!r}"
    if link["evidence"] == "exact duplicate":
        return "exact duplicate (the same pixels)"
    return f"near duplicate (similarity {link['similarity']:.4f})"


def _spanning(codes: np.ndarray, rows: np.ndarray, split_of: np.ndarray):
    """{split: rows} for each code whose pinned rows span more than one split."""
    rows = rows[codes[rows] >= 0]
    frame = pd.DataFrame({"code": codes[rows], "split": split_of[rows], "row": rows})
    counts = frame.groupby("code")["split"].nunique()
    frame = frame[frame["code"].isin(counts.index[counts > 1])]
    for _, part in frame.groupby("code"):
        yield {int(s): part["row"].to_numpy()[part["split"].to_numpy() == s]
                          for s in sorted(part["split"].unique())}


def assign(labels: np.ndarray, keys: list[str], *, fractions: Sequence[float], salt: str,
           pinned: pd.Series | None, item_ids: pd.Series, times: pd.Series | None = None,
           cutoffs: Sequence | None = None, dropped: dict[int, str] | None = None,
           pin_labels: np.ndarray | None = None) -> Assignment:
    """dropped: pinned rows left out (row -> reason; find_pinned_links), and pin_labels: the
    groups without them, from which new items inherit. A new item linked to pinned items only
    through dropped ones is left out as well."""
    n = len(labels)
    by_group = group_keys(labels, keys)
    split = np.full(n, EXCLUDED, np.int64)
    how = [""] * n
    pinned_split = pinned_rows(pinned, item_ids)
    group_pins = _group_pins(labels, pinned_split)
    dropped = dropped or {}
    after, after_labels = group_pins, labels
    if dropped:
        kept_pins = pinned_split.copy()
        kept_pins[list(dropped)] = EXCLUDED
        after_labels = labels if pin_labels is None else pin_labels
        after = _group_pins(after_labels, kept_pins)
    if times is not None:
        group_split = _time_groups(labels, times, cutoffs, fractions, salt, by_group)
    else:
        group_split = {g: (split_of_bucket(bucket(k, salt), fractions), "hash")
                       for g, k in by_group.items()}
    for i, (label, after_label) in enumerate(zip(labels.tolist(), after_labels.tolist(), strict=True)):
        pins = after.get(after_label)
        if i in dropped:
            split[i], how[i] = EXCLUDED, dropped[i]
        elif pinned_split[i] != EXCLUDED:
            split[i], how[i] = pinned_split[i], "pinned"
        elif not pins and label in group_pins:
            split[i], how[i] = EXCLUDED, ("excluded: linked to pinned items only through pinned "
                                          "items excluded as copies of a later split's items")
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


def pinned_rows(pinned: pd.Series | None, item_ids: pd.Series) -> np.ndarray:
    """Per item: the split index it is pinned to, or EXCLUDED (not pinned)."""
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
