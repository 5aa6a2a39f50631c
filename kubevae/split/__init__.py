"""Split: a dataset folder -> train/val/test folders that share no group, duplicate or future.

    report = split("data/raw", "data/split", fractions=(0.8, 0.1, 0.1), group_column="patient",
                   previous_split="data/split-last-week/assignments.csv")

`previous_split` is a path or URI, or a kubevae.split.report.PreviousSplit that says how it was
found (kubevae.split.command.resolve_previous_split resolves `champion`); the report records it.
With `previous_split`, pinned items of different splits that new data shows to be linked (copies
or one group: a link the earlier split missed) are named in the report; `pinned_copies` "exclude"
(default) keeps the latest split's items (test > val > train) and leaves the others out
(excluded.csv names the partner), "fail" raises LeakageError. `mirror_copies` (default True):
mirror images are copies.

Output folder:
    assignments.csv        one row per assigned item: item_id, source_uri, group_id (the key of
                           its leakage group: metadata group + exact + near duplicates), sha256,
                           split (train | val | test), phash (kept for reference; grouping
                           verifies pixels, kubevae.split.neardup), how (hash | time | pinned |
                           inherited), metadata_group (with --group-column)
    excluded.csv           items in no split, with the reason (only when there are any)
    train/ val/ test/      dataset folders (kubevae.data.dataset), manifest rows and factors kept
    stats.json             per-channel mean/std in [0, 1] units, fit on train only
    leakage_report.json    counts per split, duplicate clusters, cross-split checks, checklist
    leakage_report.md      the same for people (a KFP Markdown visualization)

The step fails (LeakageError, nothing published at `out_dir`, the report written beside it as
OUT.leakage_report.md/json) when any group, exact duplicate or near duplicate is shared across
splits or val/test are not strictly newer than train in time mode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubevae.data.dataset import Dataset, write_dataset
from kubevae.split import report as leakage
from kubevae.split.assign import (
    ASSIGNMENTS_FILE,
    EXCLUDED,
    PINNED_COPIES,
    SPLITS,
    assign,
    check_fractions,
    find_pinned_links,
    group_keys,
    member_keys,
    read_previous_report,
    read_previous_table,
)
from kubevae.split.assign import pinned_rows as pinned_split_of
from kubevae.split.grouping import group_items
from kubevae.split.stats import STATS_FILE, channel_stats
from kubevae.storage import atomic_dir, atomic_write_json, atomic_write_text

__all__ = ["DEFAULT_SALT", "LeakageError", "SplitReport", "split"]

DEFAULT_SALT = "kubevae"
EXCLUDED_FILE = "excluded.csv"
COPY_CHUNK = 8192


class LeakageError(RuntimeError):
    """Something would be shared across splits: the split is not published."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass
class SplitReport:
    out_dir: str
    items: dict[str, int]
    groups: dict[str, int]
    excluded: int
    cross_split: dict[str, int]
    passed: bool
    near_dup_threshold: float
    threshold_source: str
    seconds: float
    report: dict[str, Any] = field(repr=False, default_factory=dict)

    def counts(self) -> dict[str, float]:
        """Numbers only (for MLflow metrics and KFP artifact metadata)."""
        out: dict[str, float] = {f"items_{k}": v for k, v in self.items.items()}
        out.update({f"groups_{k}": v for k, v in self.groups.items()})
        out.update({f"cross_split_{k}": v for k, v in self.cross_split.items()})
        clusters = self.report.get("duplicate_clusters", {})
        out.update({"excluded": self.excluded, "near_dup_threshold": self.near_dup_threshold,
                    "exact_duplicate_clusters": clusters.get("exact", {}).get("clusters", 0),
                    "near_duplicate_clusters": clusters.get("near", {}).get("clusters", 0)})
        return out

    def summary(self) -> str:
        per = ", ".join(f"{k}={v} ({self.groups[k]} groups)" for k, v in self.items.items())
        cross = ", ".join(f"{k}={v}" for k, v in self.cross_split.items())
        pinned = self.report.get("pinned_copies") or {}
        copies = [f"pinned items linked across splits: {pinned['links']} links, "
                  f"{pinned['excluded_items']} items excluded (--pinned-copies "
                  f"{pinned['treatment']}; see the leakage report)"] if pinned.get("links") else []
        return "\n".join([f"split -> {self.out_dir}: {'PASSED' if self.passed else 'FAILED'}",
                          f"items: {per}; excluded={self.excluded}",
                          f"across splits (all must be 0): {cross}", *copies,
                          f"near-duplicate threshold: max NCC >= {self.near_dup_threshold:.4f} "
                          f"({self.threshold_source}); {self.seconds:.1f}s"])


def split(data_dir: str | Path, out_dir: str | Path, *,
          fractions: Sequence[float] = (0.8, 0.1, 0.1), group_column: str | None = None,
          time_column: str | None = None, time_cutoffs: Sequence[Any] | None = None,
          previous_split: str | Path | leakage.PreviousSplit | None = None,
          near_dup_threshold: float | None = None,
          salt: str = DEFAULT_SALT, max_group_fraction: float | None = None,
          pinned_copies: str = "exclude", mirror_copies: bool = True) -> SplitReport:
    start = time.monotonic()
    resolution = previous_split if isinstance(previous_split, leakage.PreviousSplit) \
        else leakage.PreviousSplit.given(previous_split)
    previous_split = resolution.resolved
    fractions = check_fractions(fractions)
    if pinned_copies not in PINNED_COPIES:
        raise ValueError(f"--pinned-copies: expected one of {', '.join(PINNED_COPIES)}, got "
                         f"{pinned_copies!r}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = Dataset.open(data_dir)
    if len(dataset) == 0:
        raise ValueError(f"--data {data_dir}: the dataset is empty; expected at least one image")
    manifest = dataset.manifest
    _check_group_column(manifest, group_column, data_dir)
    times, cutoffs = _time_mode(manifest, time_column, time_cutoffs, data_dir)
    threshold, source = _threshold(near_dup_threshold, dataset)

    grouping = group_items(manifest, dataset.images, group_column=group_column, threshold=threshold,
                           threshold_source=source, mirrors=mirror_copies)
    threshold, source = grouping.near.threshold, grouping.near.threshold_source
    previous = read_previous_table(previous_split, manifest["item_id"]) if previous_split else None
    pinned = previous["split"] if previous is not None else None
    if times is None:
        pinned_rows = np.flatnonzero(manifest["item_id"].isin(pinned.index)) if pinned is not None \
            else np.zeros(0, np.int64)
        _check_group_sizes(grouping, fractions, max_group_fraction, manifest, group_column,
                           pinned_rows)
    keys = member_keys(manifest, group_column)
    links, dropped, pin_labels = None, {}, None
    if pinned is not None:
        links = find_pinned_links(grouping, pinned_split_of(pinned, manifest["item_id"]),
                                  manifest["item_id"],
                                  manifest[group_column] if group_column else None)
        if pinned_copies == "exclude" and links.exclusions:
            dropped = links.exclusions
            keep = np.ones(len(manifest), bool)
            keep[list(dropped)] = False
            pin_labels = grouping.labels_among(keep)
    result = assign(grouping.labels, keys, fractions=fractions, salt=salt, pinned=pinned,
                    item_ids=manifest["item_id"], times=times, cutoffs=cutoffs,
                    dropped=dropped, pin_labels=pin_labels)
    kept = result.split != EXCLUDED
    if not kept.all():
        # Excluded items (e.g. a new item bridging groups pinned to different splits) no longer
        # connect anything: the leakage groups of the published items are recomputed without them.
        labels = grouping.labels_among(kept)
        relabeled = group_keys(labels, keys)
        result.group_key = [relabeled[label] if keep else key
                            for label, keep, key in zip(labels.tolist(), kept, result.group_key, strict=False)]
    train_rows = np.flatnonzero(result.split == 0)
    if not len(train_rows):
        raise ValueError(f"--data {data_dir}: no item landed in train ({len(dataset)} items); "
                         "check --fractions / --time-cutoff")
    stats = channel_stats(dataset.images, train_rows)
    ctx = leakage.Context(manifest=manifest, split=result.split, how=result.how,
                          group_key=result.group_key, grouping=grouping, group_column=group_column,
                          time_column=time_column, cutoffs=cutoffs, fractions=fractions,
                          threshold_source=source, stats=stats, images=dataset.images,
                          previous_split=str(previous_split) if previous_split else None, salt=salt,
                          pinned_copies=pinned_copies, pinned_links=links, keys=keys,
                          previous_groups=previous["group_id"] if previous is not None
                          and "group_id" in previous else None,
                          previous_report=read_previous_report(previous_split) if previous_split
                          else None, resolution=resolution)
    report = leakage.build(ctx)
    report["data"] = str(data_dir)
    report["seconds"] = round(time.monotonic() - start, 2)
    text = leakage.markdown(report)
    if not report["passed"]:
        _write_failed(out_dir, report, text)
    with atomic_dir(out_dir) as tmp:
        _write_splits(tmp, dataset, result.split, data_dir)
        _write_assignments(tmp, manifest, result, grouping, group_column)
        atomic_write_json(tmp / STATS_FILE, stats)
        atomic_write_json(tmp / leakage.REPORT_JSON, report)
        atomic_write_text(tmp / leakage.REPORT_MD, text)
    return SplitReport(str(out_dir), report["items"], report["groups"], report["excluded"]["count"],
                       report["cross_split"], report["passed"], threshold, source,
                       round(time.monotonic() - start, 2), report)


def _check_group_column(manifest: pd.DataFrame, column: str | None, data_dir: Path) -> None:
    if column is None:
        return
    if column not in manifest.columns:
        raise ValueError(f"--group-column {column!r}: no such column in {data_dir}/manifest.parquet; "
                         f"found {list(manifest.columns)}")
    if manifest[column].isna().all():
        raise ValueError(f"--group-column {column!r}: every value is empty in "
                         f"{data_dir}/manifest.parquet; expected group ids (patient, device, session)")


def _time_mode(manifest, column, cutoffs, data_dir):
    if column is None:
        if cutoffs:
            raise ValueError("--time-cutoff needs --time-column (the column that holds the times)")
        return None, None
    if column not in manifest.columns:
        raise ValueError(f"--time-column {column!r}: no such column in {data_dir}/manifest.parquet; "
                         f"found {list(manifest.columns)}")
    if not cutoffs or len(cutoffs) > 2:
        raise ValueError(f"--time-cutoff: expected 1 or 2 cutoffs with --time-column, got "
                         f"{list(cutoffs or [])}")
    from kubevae.ingest.metadata import parse_times

    values = manifest[column]
    if values.isna().any():
        raise ValueError(f"--time-column {column!r}: {int(values.isna().sum())} item(s) have no "
                         f"time, e.g. {manifest['item_id'][values.isna()].iloc[0]!r}; time mode "
                         "needs a time for every item")
    values = parse_times(values, f"--time-column {column!r}")
    parsed = [_parse_cutoff(c, values) for c in cutoffs]
    if len(parsed) == 2 and not parsed[0] < parsed[1]:
        raise ValueError(f"--time-cutoff: {cutoffs[0]} must come before {cutoffs[1]}")
    return values.reset_index(drop=True), parsed


def _parse_cutoff(value: Any, times: pd.Series):
    try:
        if pd.api.types.is_numeric_dtype(times):
            return float(value)
        stamp = pd.Timestamp(value)
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    except (TypeError, ValueError):
        kind = "a number" if pd.api.types.is_numeric_dtype(times) else "an ISO 8601 date/time"
        raise ValueError(f"--time-cutoff {value!r}: expected {kind} like the time column") from None


def _threshold(explicit: float | None, dataset: Dataset) -> tuple[float | None, str]:
    """The verification threshold (a correlation in (0, 1]): given, the dataset card's hint
    `near_dup_ncc`, else None (calibrated on the data). The card key `near_dup_threshold` held
    phash bits in older versions and is ignored."""
    if explicit is not None:
        value, source = float(explicit), "given"
    else:
        hint = (dataset.info.get("card") or {}).get("split_hints") or {}
        if hint.get("near_dup_ncc") is None:
            return None, "calibrated"
        value = float(hint["near_dup_ncc"])
        source = "dataset card hint" + (f" ({hint['reason']})" if hint.get("reason") else "")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--near-dup-threshold: expected a correlation in (0, 1] (the max "
                         f"normalised cross-correlation a near copy reaches), got {value:g}")
    return value, source


def _check_group_sizes(grouping, fractions, limit, manifest, group_column, pinned_rows) -> None:
    """A group bigger than the smallest split cannot be placed without wrecking the fractions.
    The message says what made it: near duplicates chaining distinct images together, exact
    copies, or one metadata group. Groups holding pinned items are placed by their pins and not
    checked; nor are data sets so small that the smallest split expects fewer than 10 items
    (unless a limit is given)."""
    n = len(grouping.labels)
    if limit is None and n * min(fractions) < 10:
        return
    limit = min(fractions) if limit is None else limit
    free = np.ones(n, bool)
    free[np.isin(grouping.labels, grouping.labels[pinned_rows])] = False
    if not free.any():
        return
    sizes = np.bincount(grouping.labels[free])
    largest_label = int(sizes.argmax())
    largest = int(sizes[largest_label])
    if largest / n <= limit or largest < 2:
        return
    members = np.flatnonzero(grouping.labels == largest_label)
    # Without near-duplicate edges, how big would the largest part of this group be?
    without_near = int(np.bincount(grouping.exact_labels[members]).max())
    near = grouping.near
    if without_near / n <= limit:
        inside = np.isin(near.pairs[:, 0], members).sum() if len(near.pairs) else 0
        why = (f"duplicate chaining: {int(inside)} verified near-duplicate pairs (max normalised "
               f"cross-correlation over +-2 px >= {near.threshold:.4f}, {near.threshold_source}) "
               f"link {largest} items into one chain, while no metadata group or exact copy holds "
               f"more than {without_near}; raise --near-dup-threshold towards 1 (only closer "
               "copies merge)")
    elif group_column and manifest[group_column].iloc[members].notna().any():
        values = manifest[group_column].iloc[members].value_counts()
        why = (f"a metadata group is that large: {group_column}={values.index[0]!r} holds "
               f"{int(values.iloc[0])} items; raise --max-group-fraction if that is expected")
    else:
        why = (f"exact copies: {without_near} items share the same pixels; remove the copies "
               "or raise --max-group-fraction")
    raise ValueError(f"one group holds {largest} of {n} items ({largest / n:.1%}), more than "
                     f"max_group_fraction {limit:.3f}: {why}")


def _write_splits(tmp: Path, dataset: Dataset, split: np.ndarray, data_dir: Path) -> None:
    card = dataset.info.get("card") or {}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == index)
        chunks = (np.asarray(dataset.images[rows[i:i + COPY_CHUNK]])
                  for i in range(0, len(rows), COPY_CHUNK))
        write_dataset(tmp / name, chunks, dataset.manifest.iloc[rows].reset_index(drop=True),
                      factor_names=dataset.factor_names, factor_sizes=dataset.factor_sizes,
                      image_shape=dataset.image_shape,
                      card={"name": f"{card.get('name', data_dir.name)} [{name}]", "split": name,
                            "parent": str(data_dir),
                            "parent_content_sha256": dataset.info.get("content_sha256"),
                            "license": card.get("license", "not given")})


def _write_assignments(tmp: Path, manifest, result, grouping, group_column) -> None:
    frame = pd.DataFrame({
        "item_id": manifest["item_id"], "source_uri": manifest["source_uri"],
        "group_id": result.group_key, "sha256": manifest["sha256"],
        "split": [SPLITS[s] if s != EXCLUDED else "" for s in result.split],
        "phash": manifest["phash"], "how": result.how})
    if group_column:
        frame["metadata_group"] = manifest[group_column].to_numpy()
    assigned = result.split != EXCLUDED
    atomic_write_text(tmp / ASSIGNMENTS_FILE, frame[assigned].to_csv(index=False))
    if (~assigned).any():
        excluded = frame[~assigned].drop(columns=["split"]).rename(columns={"how": "reason"})
        atomic_write_text(tmp / EXCLUDED_FILE, excluded.to_csv(index=False))


def _write_failed(out_dir: Path, report: dict[str, Any], text: str) -> None:
    base = out_dir.with_name(out_dir.name + "." + leakage.REPORT_JSON)
    atomic_write_json(base, report)
    atomic_write_text(out_dir.with_name(out_dir.name + "." + leakage.REPORT_MD), text)
    failed = [c["leakage"] for c in report["checklist"] if c["status"] == "FAIL"]
    raise LeakageError(f"leakage check failed ({'; '.join(failed)}): across splits "
                       f"{report['cross_split']}; nothing written to {out_dir}; see "
                       f"{out_dir.name}.{leakage.REPORT_MD} beside it", report)
