"""The leakage report: what each split holds and proof that nothing crosses between them.

Written as leakage_report.json (for machines) and leakage_report.md (plain GitHub Markdown, no
HTML, so that it renders as a KFP Markdown visualization). The cross-split counts are computed
again from the final assignments, independently of how the groups were built: shared metadata
groups, exact duplicates (equal sha256) and near duplicates (perceptual hashes within the
threshold, including equal ones). All must be 0, else the split step fails.

The checklist follows the leakage taxonomy of Kapoor & Narayanan, "Leakage and the
reproducibility crisis in machine-learning-based science", Patterns 4(9), 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kubevae.split.assign import EXCLUDED, SPLITS
from kubevae.split.grouping import Grouping

REPORT_JSON = "leakage_report.json"
REPORT_MD = "leakage_report.md"
TOP_CLUSTERS = 10


@dataclass
class Context:
    manifest: pd.DataFrame
    split: np.ndarray
    how: list[str]
    group_key: list[str]
    grouping: Grouping
    group_column: str | None
    time_column: str | None
    cutoffs: list[Any] | None
    fractions: tuple[float, float, float]
    threshold_source: str
    stats: dict[str, Any]
    previous_split: str | None
    salt: str


def build(ctx: Context) -> dict[str, Any]:
    assigned = ctx.split != EXCLUDED
    items = {name: int((ctx.split == i).sum()) for i, name in enumerate(SPLITS)}
    frame = pd.DataFrame({"split": ctx.split, "key": ctx.group_key,
                          "sha256": ctx.manifest["sha256"].to_numpy()})
    groups = {name: int(frame.loc[frame.split == i, "key"].nunique()) for i, name in enumerate(SPLITS)}
    cross = {
        "shared_metadata_groups": _shared(ctx.manifest[ctx.group_column], ctx.split)
        if ctx.group_column else 0,
        "shared_leakage_groups": _shared(frame["key"], ctx.split),
        "exact_duplicates": _shared(frame["sha256"], ctx.split),
        "near_duplicates": _near_across(ctx.grouping, ctx.split),
    }
    temporal = _temporal(ctx) if ctx.time_column else None
    total = int(assigned.sum())
    report = {
        "items": items, "groups": groups, "items_total": len(ctx.split), "assigned": total,
        "requested_fractions": dict(zip(SPLITS, ctx.fractions)),
        "achieved_fractions": {k: round(v / total, 4) if total else 0.0 for k, v in items.items()},
        "how_assigned": _how(ctx.how),
        "excluded": _excluded(ctx),
        "cross_split": cross,
        "duplicate_clusters": _clusters(ctx),
        "near_duplicate_search": {"hash": "phash (64-bit DCT, imagehash-compatible)",
                                  "threshold": ctx.grouping.threshold,
                                  "threshold_source": ctx.threshold_source,
                                  **ctx.grouping.plan.to_dict()},
        "group_column": ctx.group_column, "time_column": ctx.time_column,
        "time_cutoffs": [str(c) for c in ctx.cutoffs] if ctx.cutoffs else None,
        "temporal": temporal, "previous_split": ctx.previous_split, "salt": ctx.salt,
        "stats": {k: ctx.stats[k] for k in ("fit_on", "num_items", "mean", "std")},
    }
    report["checklist"] = _checklist(ctx, report)
    report["passed"] = all(c["status"] != "FAIL" for c in report["checklist"])
    return report


def _shared(values: pd.Series, split: np.ndarray) -> int:
    """How many distinct values occur in more than one split (excluded items do not count)."""
    frame = pd.DataFrame({"value": values.to_numpy(), "split": split})
    frame = frame[(frame.split != EXCLUDED) & frame.value.notna()]
    return int((frame.groupby("value")["split"].nunique() > 1).sum())


def _near_across(grouping: Grouping, split: np.ndarray) -> int:
    """Pairs of (distinct) hashes within the threshold whose items sit in different splits, plus
    hashes whose own items do."""
    n_hashes = int(grouping.hash_index.max()) + 1 if len(grouping.hash_index) else 0
    masks = np.zeros(n_hashes, np.int64)
    ok = split != EXCLUDED
    np.bitwise_or.at(masks, grouping.hash_index[ok], 1 << split[ok])
    spanning = int((np.bitwise_count(masks) > 1).sum())
    pairs = grouping.hash_pairs
    if len(pairs):
        union = masks[pairs[:, 0]] | masks[pairs[:, 1]]
        spanning += int((np.bitwise_count(union) > 1).sum())
    return spanning


def _temporal(ctx: Context) -> dict[str, Any]:
    times = ctx.manifest[ctx.time_column].reset_index(drop=True)
    train = times[ctx.split == 0]
    later = times[(ctx.split == 1) | (ctx.split == 2)]
    newest_train = train.max() if len(train) else None
    oldest_later = later.min() if len(later) else None
    ok = newest_train is None or oldest_later is None or newest_train < oldest_later
    return {"newest_train": str(newest_train), "oldest_val_or_test": str(oldest_later),
            "val_and_test_strictly_newer": bool(ok)}


def _how(how: list[str]) -> dict[str, int]:
    kinds = pd.Series([h.split(":")[0] for h in how])
    return {k: int(v) for k, v in kinds.value_counts().sort_index().items()}


def _excluded(ctx: Context) -> dict[str, Any]:
    idx = np.flatnonzero(ctx.split == EXCLUDED)
    reasons = pd.Series([ctx.how[i] for i in idx], dtype=object)
    return {"count": int(len(idx)),
            "by_reason": {k: int(v) for k, v in reasons.value_counts().items()},
            "examples": ctx.manifest["item_id"].iloc[idx[:5]].tolist()}


def _clusters(ctx: Context) -> dict[str, Any]:
    sha = ctx.manifest["sha256"].to_numpy()
    ids = ctx.manifest["item_id"].to_numpy()
    exact = pd.Series(sha).value_counts()
    exact = exact[exact > 1]
    labels = ctx.grouping.duplicate_labels
    frame = pd.DataFrame({"label": labels, "sha": sha})
    per = frame.groupby("label").agg(size=("sha", "size"), distinct=("sha", "nunique"))
    near = per[per.distinct > 1].sort_values("size", ascending=False)

    def members(mask: np.ndarray) -> dict[str, Any]:
        where = np.flatnonzero(mask)
        return {"size": int(len(where)), "split": sorted({_name(s) for s in ctx.split[where]}),
                "items": ids[where[:5]].tolist()}

    return {
        "exact": {"clusters": int(len(exact)), "items": int(exact.sum()),
                  "largest": [members(sha == h) for h in exact.index[:TOP_CLUSTERS]]},
        "near": {"clusters": int(len(near)), "items": int(near["size"].sum()),
                 "largest": [members(labels == g) for g in near.index[:TOP_CLUSTERS]]},
        "largest_group": int(pd.Series(ctx.group_key).value_counts().iloc[0]) if len(ctx.group_key) else 0,
    }


def _name(split: int) -> str:
    return SPLITS[split] if split != EXCLUDED else "excluded"


def _checklist(ctx: Context, report: dict[str, Any]) -> list[dict[str, str]]:
    cross = report["cross_split"]
    dup_ok = cross["exact_duplicates"] == 0 and cross["near_duplicates"] == 0
    group_ok = cross["shared_metadata_groups"] == 0 and cross["shared_leakage_groups"] == 0
    threshold = ctx.grouping.threshold
    items = [
        {"leakage": "Duplicates across splits",
         "handling": f"exact (pixel sha256) and near (phash Hamming <= {threshold} bits) "
                     "duplicates are merged into one group by union-find",
         "evidence": f"{cross['exact_duplicates']} exact and {cross['near_duplicates']} near "
                     "duplicates shared across splits",
         "status": "PASS" if dup_ok else "FAIL"},
        {"leakage": "Non-independence (several images of one patient/device/session)",
         "handling": (f"metadata column '{ctx.group_column}' groups items; a group is assigned "
                      "as a whole" if ctx.group_column else
                      "no group column given: each item (with its duplicates) is its own group; "
                      "pass --group-column when images share a subject"),
         "evidence": f"{cross['shared_metadata_groups']} metadata groups and "
                     f"{cross['shared_leakage_groups']} merged groups shared across splits",
         "status": ("PASS" if group_ok else "FAIL") if ctx.group_column else
                   ("NOT CHECKED" if group_ok else "FAIL")},
    ]
    temporal = report["temporal"]
    if temporal is None:
        has_times = "timestamp" in ctx.manifest and ctx.manifest["timestamp"].notna().any()
        items.append({"leakage": "Temporal leakage",
                      "handling": "hash split (no --time-column)" + (
                          "; the manifest has timestamps: use --time-column timestamp if the "
                          "model will predict the future" if has_times else ""),
                      "evidence": "not applicable", "status": "NOT APPLICABLE"})
    else:
        items.append({"leakage": "Temporal leakage",
                      "handling": f"time mode on '{ctx.time_column}' with cutoffs "
                                  f"{report['time_cutoffs']}; groups spanning a cutoff are excluded",
                      "evidence": f"newest train {temporal['newest_train']} < oldest val/test "
                                  f"{temporal['oldest_val_or_test']}",
                      "status": "PASS" if temporal["val_and_test_strictly_newer"] else "FAIL"})
    stats = ctx.stats
    fit_ok = stats.get("fit_on") == "train" and stats.get("num_items") == report["items"]["train"]
    items.append({"leakage": "Preprocessing fit on test data",
                  "handling": "normalization mean/std (stats.json) computed on the train split only",
                  "evidence": f"fit on {stats.get('num_items')} train items",
                  "status": "PASS" if fit_ok else "FAIL"})
    return items


def markdown(report: dict[str, Any]) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# Leakage report: {verdict}", "",
             "| split | items | groups | requested | achieved |", "|---|---|---|---|---|"]
    for name in SPLITS:
        lines.append(f"| {name} | {report['items'][name]} | {report['groups'][name]} | "
                     f"{report['requested_fractions'][name]:.3f} | "
                     f"{report['achieved_fractions'][name]:.3f} |")
    excluded = report["excluded"]
    lines += ["", f"{report['items_total']} items: {report['assigned']} assigned, "
                  f"{excluded['count']} excluded. How assigned: "
              + ", ".join(f"{k} {v}" for k, v in report["how_assigned"].items()) + ".", "",
              "## Across splits (all must be 0)", "", "| what | count |", "|---|---|"]
    for key, value in report["cross_split"].items():
        lines.append(f"| {key.replace('_', ' ')} | {value} |")
    lines += ["", "## Leakage checklist (Kapoor & Narayanan, Patterns 2023)", "",
              "| leakage type | how it is handled | evidence | result |", "|---|---|---|---|"]
    for c in report["checklist"]:
        lines.append(f"| {c['leakage']} | {c['handling']} | {c['evidence']} | **{c['status']}** |")
    clusters = report["duplicate_clusters"]
    search = report["near_duplicate_search"]
    lines += ["", "## Duplicate clusters", "",
              f"- exact duplicates: {clusters['exact']['clusters']} clusters, "
              f"{clusters['exact']['items']} items",
              f"- near duplicates (phash Hamming <= {search['threshold']} bits; threshold: "
              f"{search['threshold_source']}): "
              f"{clusters['near']['clusters']} clusters, {clusters['near']['items']} items",
              f"- largest group: {clusters['largest_group']} items",
              f"- search: {search['method']}, blocks {search['blocks']}, sub-radius "
              f"{search['sub_radius']}, {search['candidates_verified']} candidates verified, "
              f"{search['seconds']} s", ""]
    rows = [("exact", c) for c in clusters["exact"]["largest"]] + \
           [("near", c) for c in clusters["near"]["largest"]]
    if rows:
        lines += ["| kind | size | split | items (first 5) |", "|---|---|---|---|"]
        for kind, c in rows:
            lines.append(f"| {kind} | {c['size']} | {', '.join(c['split'])} | "
                         + ", ".join(f"`{i}`" for i in c["items"]) + " |")
        lines.append("")
    if excluded["count"]:
        lines += ["## Excluded items", "", "| reason | items |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in excluded["by_reason"].items()]
        lines.append("")
    stats = report["stats"]
    lines += ["## Normalization (stats.json)", "",
              f"fit on {stats['fit_on']} ({stats['num_items']} items): mean "
              f"{[round(m, 4) for m in stats['mean']]}, std {[round(s, 4) for s in stats['std']]}", ""]
    return "\n".join(lines)
