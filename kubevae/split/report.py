"""The leakage report: what each split holds and proof that nothing crosses between them.

Written as leakage_report.json (for machines) and leakage_report.md (plain GitHub Markdown, no
HTML, so that it renders as a KFP Markdown visualization). The cross-split counts are computed
again from the final assignments, independently of how the groups were built: shared metadata
groups, exact duplicates (equal sha256) and near duplicates (every verified near-duplicate
pair; with --previous-split also the links between pinned items of different splits). All must
be 0, else the split step fails. With --previous-split the report names the pinned items that
new data shows to be linked across splits (and what was done about them), and says which earlier
groups this run's grouping merged or split; it always records the settings the groups depend on. The near-duplicate section states the method,
its threshold and how it was calibrated, and shows pairs on either side of the threshold as
images beside each other (PNG data URIs, so the report stays one file).

The checklist follows the leakage taxonomy of Kapoor & Narayanan, "Leakage and the
reproducibility crisis in machine-learning-based science", Patterns 4(9), 2023.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from kubevae.split.assign import EXCLUDED, SPLITS, PinnedLinks, describe_link, group_keys
from kubevae.split.grouping import Grouping

REPORT_JSON = "leakage_report.json"
REPORT_MD = "leakage_report.md"
TOP_CLUSTERS = 10
EXAMPLE_PAIRS = 3  # on each side of the threshold
SHOWN_LINKS = 20   # links between pinned items named in the report
SHOWN_CHANGES = 10  # earlier groups that changed, named in the report


@dataclass(frozen=True)
class PreviousSplit:
    """Which earlier split pins this one, and how it was found: what was asked for (a path or
    URI, `champion`, or nothing), what that resolved to (kubevae.split.command resolves
    `champion` through the model registry), and how."""

    requested: str = ""
    resolved: str | None = None  # the assignments.csv (or its folder) pinned; None: a fresh split
    source: str = "none"  # "given", "champion version N", "no champion" or "none"
    model_name: str = ""  # the registered model whose champion was asked for

    @classmethod
    def given(cls, previous_split: Any) -> PreviousSplit:
        """An earlier split named directly (a path or URI), or none."""
        return cls(str(previous_split), str(previous_split), "given") if previous_split else cls()


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
    images: Any = None  # N x H x W x C uint8, for the example pairs
    pinned_copies: str = "exclude"
    pinned_links: PinnedLinks | None = None          # with --previous-split
    keys: list[str] | None = None                    # member keys (group names)
    previous_groups: pd.Series | None = None         # item_id -> earlier group_id
    previous_report: tuple[dict[str, Any] | None, str] | None = None  # earlier report, where
    resolution: PreviousSplit = PreviousSplit()  # how previous_split was found


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
    pinned = _pinned_copies(ctx, ctx.pinned_links) if ctx.pinned_links is not None else None
    if pinned is not None:
        cross["pinned_copies"] = pinned["remaining_across_splits"]
    temporal = _temporal(ctx) if ctx.time_column else None
    total = int(assigned.sum())
    report: dict[str, Any] = {
        "items": items, "groups": groups, "items_total": len(ctx.split), "assigned": total,
        "requested_fractions": dict(zip(SPLITS, ctx.fractions, strict=False)),
        "achieved_fractions": {k: round(v / total, 4) if total else 0.0 for k, v in items.items()},
        "how_assigned": _how(ctx.how),
        "excluded": _excluded(ctx),
        "cross_split": cross,
        "duplicate_clusters": _clusters(ctx),
        "near_duplicate_search": _near_search(ctx),
        "group_column": ctx.group_column, "time_column": ctx.time_column,
        "time_cutoffs": [str(c) for c in ctx.cutoffs] if ctx.cutoffs else None,
        "temporal": temporal, "previous_split": ctx.previous_split, "salt": ctx.salt,
        "stats": {k: ctx.stats[k] for k in ("fit_on", "num_items", "mean", "std")},
        "pinned_copies": pinned,
    }
    report["previous_split_resolution"] = _resolution(ctx.resolution, report)
    report["stability"] = _stability(ctx, report)
    report["checklist"] = _checklist(ctx, report)
    report["passed"] = all(c["status"] != "FAIL" for c in report["checklist"])
    return report


def _shared(values: pd.Series, split: np.ndarray) -> int:
    """How many distinct values occur in more than one split (excluded items do not count)."""
    frame = pd.DataFrame({"value": values.to_numpy(), "split": split})
    frame = frame[(frame.split != EXCLUDED) & frame.value.notna()]
    return int((frame.groupby("value")["split"].nunique() > 1).sum())


def _near_across(grouping: Grouping, split: np.ndarray) -> int:
    """Verified near-duplicate pairs whose items sit in different splits (excluded items aside).
    A pair's ends stand for their exact copies (only one item per sha256 is searched): the pair
    counts when any assigned copy of one end sits in another split than any of the other's."""
    pairs = grouping.near.pairs
    if not len(pairs):
        return 0
    codes = grouping.exact_codes
    if codes is None or (codes < 0).any():
        a, b = split[pairs[:, 0]], split[pairs[:, 1]]
        return int(((a != b) & (a != EXCLUDED) & (b != EXCLUDED)).sum())
    assigned = np.flatnonzero(split != EXCLUDED)
    low = np.full(int(codes.max()) + 1, len(SPLITS), np.int64)
    high = np.full(len(low), -1, np.int64)
    np.minimum.at(low, codes[assigned], split[assigned])
    np.maximum.at(high, codes[assigned], split[assigned])
    a, b = codes[pairs[:, 0]], codes[pairs[:, 1]]
    present = (high[a] >= 0) & (high[b] >= 0)
    same = (low[a] == high[a]) & (low[b] == high[b]) & (high[a] == high[b])
    return int((present & ~same).sum())


def _resolution(previous: PreviousSplit, report: dict[str, Any]) -> dict[str, Any]:
    """What was asked for as the previous split, what it resolved to, and a sentence saying so."""
    pinned_items = int(report["how_assigned"].get("pinned", 0))
    if previous.source == "no champion":
        text = (f"`previous_split=champion`, but `models:/{previous.model_name}@champion` does not "
                "exist yet: this run splits fresh (nothing pinned).")
    elif previous.resolved:
        text = (f"Pinned to `{previous.resolved}` ({previous.source}): {pinned_items} existing items "
                "keep their split; new items join their group's split or are placed by hash.")
        excluded = (report.get("pinned_copies") or {}).get("excluded_items")
        if excluded:
            text += (f" {excluded} earlier items were excluded as copies of items pinned to a later "
                     "split (see Pinned items found to be copies).")
    else:
        text = "A fresh split (no previous_split)."
    return {"requested": previous.requested, "resolved": previous.resolved or "",
            "source": previous.source, "pinned_items": pinned_items, "text": text}


def _pinned_copies(ctx: Context, links: PinnedLinks) -> dict[str, Any]:
    """Links between pinned items of different splits, what became of them, and how many of
    them still join published items of different splits (must be 0)."""
    ids = ctx.manifest["item_id"].astype(str).to_numpy()
    shown: list[dict[str, Any]] = []
    remaining = 0
    for link in links.links:
        rows = np.concatenate(list(link["rows"].values()))
        published = ctx.split[rows][ctx.split[rows] != EXCLUDED]
        across = len(set(published.tolist())) > 1
        remaining += int(across)
        if len(shown) < SHOWN_LINKS:
            entry: dict[str, Any] = {"evidence": link["evidence"], "why": describe_link(link)}
            if "group" in link:
                entry["group"] = link["group"]
            if "similarity" in link:
                entry["similarity"] = link["similarity"]
            entry["items"] = [{"item_id": str(ids[r]), "pinned": SPLITS[s], "now": _name(ctx.split[r])}
                              for s, members in sorted(link["rows"].items()) for r in members[:5].tolist()]
            entry["items_total"] = int(len(rows))
            entry["still_across_splits"] = across
            shown.append(entry)
    left = [r for r in links.exclusions if ctx.split[r] == EXCLUDED]
    pinned_split = pd.Series([SPLITS[int(links.pinned_split[r])] for r in left], dtype=object)
    by_split = {k: int(v) for k, v in pinned_split.value_counts().items()}
    if not links.links:
        note = "No items pinned to different splits are linked: every earlier assignment stands."
    elif ctx.pinned_copies == "fail":
        note = (f"{len(links.links)} link(s) between items pinned to different splits (links the "
                "earlier split missed). --pinned-copies fail: the step fails and publishes "
                "nothing; --pinned-copies exclude would keep the later split's items and leave "
                "the others out.")
    else:
        trained = by_split.get("train", 0)
        note = (f"{len(links.links)} link(s) between items pinned to different splits (links the "
                f"earlier split missed) in {links.linked_sets} linked set(s). --pinned-copies "
                "exclude: each set keeps the items of its latest split (test > val > train); its "
                f"other {len(left)} item(s) leave this split (excluded.csv names each one's "
                "partner). The test split keeps every pinned test item, so champion and "
                "challenger are still compared on the same test items. The earlier model (with "
                f"previous_split=champion, the champion) was trained on {trained} of the excluded "
                "items, copies of val or test items: its scores on their partners may be "
                "flattering, while this run's model does not train on them.")
    return {"treatment": ctx.pinned_copies, "pinned_items": links.pinned_items,
            "links": len(links.links), "linked_sets": links.linked_sets,
            "excluded_items": len(left), "excluded_by_pinned_split": by_split,
            "remaining_across_splits": remaining, "shown": shown, "note": note}


def _stability(ctx: Context, report: dict[str, Any]) -> dict[str, Any]:
    """The settings the groups depend on, and with --previous-split: whether they changed since
    the earlier split's report, and which earlier groups this run merged or split."""
    search = report["near_duplicate_search"]
    calibration = search.get("calibration") or {}
    settings = {"near_dup_threshold": search["threshold"],
                "threshold_source": search["threshold_source"],
                "candidate_gate": calibration.get("gate"),
                "candidate_gate_rule": calibration.get("gate_rule"),
                "mirror_copies": bool(calibration.get("mirrors", ctx.grouping.near.mirrors)),
                "group_column": ctx.group_column, "salt": ctx.salt}
    out: dict[str, Any] = {
        "guarantee": ("With --previous-split every earlier item keeps its split unless it is "
                      "linked to an item pinned to a later split (see pinned_copies). The groups, "
                      "and so where a new or unpinned item goes, depend on these settings; a "
                      "calibrated threshold and candidate gate are computed anew from each run's "
                      "data."),
        "settings": settings, "previous_report": None, "threshold_changed": None,
        "settings_changed": None, "earlier_groups": None}
    if not ctx.previous_split:
        return out
    previous, where = ctx.previous_report or (None, "")
    if previous is None:
        out["previous_report"] = {"found": False, "where": where}
    else:
        old_search = previous.get("near_duplicate_search") or {}
        old_calibration = old_search.get("calibration") or {}
        # Only what the earlier report recorded (an older report may lack a key).
        sources = {"near_dup_threshold": (old_search, "threshold"),
                   "threshold_source": (old_search, "threshold_source"),
                   "candidate_gate": (old_calibration, "gate"),
                   "mirror_copies": (old_calibration, "mirrors"),
                   "group_column": (previous, "group_column"), "salt": (previous, "salt")}
        old = {name: part[key] for name, (part, key) in sources.items() if key in part}
        out["previous_report"] = {"found": True, "where": where, "settings": old}
        if "near_dup_threshold" in old:
            out["threshold_changed"] = old["near_dup_threshold"] != settings["near_dup_threshold"]
        out["settings_changed"] = [k for k, v in old.items() if v != settings[k]]
    out["earlier_groups"] = _earlier_groups(ctx)
    return out


def _earlier_groups(ctx: Context) -> dict[str, Any]:
    """The earlier grouping of the earlier items against this run's grouping restricted to
    them: earlier groups now joined with others (merged) or spread over several (split)."""
    if ctx.previous_groups is None:
        return {"compared": False, "reason": "the previous assignments.csv has no group_id column"}
    ids = ctx.manifest["item_id"].astype(str)
    rows = np.flatnonzero(ids.isin(ctx.previous_groups.index).to_numpy())
    earlier = ctx.previous_groups.reindex(ids.iloc[rows]).to_numpy(dtype=object)
    missing = pd.isna(earlier)
    earlier[missing] = ["item-without-group:" + i for i in ids.iloc[rows][missing]]
    labels = ctx.grouping.labels
    frame = pd.DataFrame({"earlier": earlier, "now": labels[rows], "row": rows})
    spread = frame.groupby("earlier")["now"].nunique()
    spread = spread[spread > 1]
    joined = frame.groupby("now")["earlier"].nunique()
    joined = joined[joined > 1]
    changed = set(spread.index) | set(frame.loc[frame["now"].isin(joined.index), "earlier"])
    names = group_keys(labels, ctx.keys) if ctx.keys is not None else {}
    among_earlier = ctx.grouping.labels_among(np.isin(np.arange(len(labels)), rows))
    examples: list[dict[str, Any]] = []
    sizes = frame.groupby("now").size()
    for label in sorted(joined.index, key=lambda g: -int(sizes[g]))[:SHOWN_CHANGES]:
        part = frame[frame["now"] == label]
        direct = len(set(among_earlier[part["row"].to_numpy()].tolist())) == 1
        examples.append({"change": "merged", "earlier_groups": sorted(set(part["earlier"]))[:5],
                         "earlier_groups_total": int(part["earlier"].nunique()),
                         "now": names.get(int(label), str(label)),
                         "items": ids.iloc[part["row"].to_numpy()[:5]].tolist(),
                         "cause": "the earlier items link directly now (the near-duplicate "
                                  "search or its settings changed)" if direct else
                                  "new items link them"})
    for group in list(spread.index)[:max(0, SHOWN_CHANGES - len(examples))]:
        part = frame[frame["earlier"] == group]
        examples.append({"change": "split", "earlier_group": str(group),
                         "now": sorted({names.get(int(g), str(g)) for g in part["now"]})[:5],
                         "items": ids.iloc[part["row"].to_numpy()[:5]].tolist(),
                         "cause": "the earlier items no longer link (the near-duplicate search or "
                                  "its settings changed, or a linking item is gone)"})
    return {"compared": True, "earlier_items": int(len(rows)),
            "earlier_groups": int(frame["earlier"].nunique()), "changed": len(changed),
            "merged": int(len(joined)), "split": int(len(spread)), "examples": examples}


def _near_search(ctx: Context) -> dict[str, Any]:
    from kubevae.split import neardup

    near = ctx.grouping.near
    n = len(ctx.split)
    # Items merged only by near-duplicate evidence: in a bigger group than exact copies and
    # metadata groups alone would give them.
    with_near = np.bincount(ctx.grouping.labels, minlength=n)[ctx.grouping.labels]
    without = np.bincount(ctx.grouping.exact_labels, minlength=n)[ctx.grouping.exact_labels]
    return {
        "method": neardup.method(near.mirrors),
        "threshold": round(near.threshold, 4), "threshold_source": near.threshold_source,
        "calibration": near.calibration, **near.search,
        "items_merged_only_by_near_duplicates": int((with_near > without).sum()),
        "example_pairs": _example_pairs(ctx),
    }


def _example_pairs(ctx: Context) -> list[dict[str, Any]]:
    near = ctx.grouping.near
    ids = ctx.manifest["item_id"].to_numpy()
    above = np.argsort(near.similarity, kind="stable")[:EXAMPLE_PAIRS]
    below = np.argsort(-near.near_miss_similarity, kind="stable")[:EXAMPLE_PAIRS]
    out = []
    for verdict, pairs, sims, rows in (("merged", near.pairs, near.similarity, above),
                                       ("not merged", near.near_misses, near.near_miss_similarity, below)):
        for r in rows:
            i, j = int(pairs[r, 0]), int(pairs[r, 1])
            entry = {"verdict": verdict, "similarity": round(float(sims[r]), 4),
                     "items": [str(ids[i]), str(ids[j])]}
            if ctx.images is not None:
                entry["png_base64"] = _side_by_side(ctx.images[i], ctx.images[j])
            out.append(entry)
    return out


def _side_by_side(a: np.ndarray, b: np.ndarray, height: int = 96) -> str:
    a, b = np.asarray(a), np.asarray(b)
    gap = np.full((a.shape[0], max(2, a.shape[1] // 8), a.shape[2]), 255, np.uint8)
    both = np.concatenate([a, gap, b], axis=1)
    image = Image.fromarray(both[..., 0] if both.shape[-1] == 1 else both[..., :3])
    scale = max(1, height // both.shape[0])
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
         "handling": f"exact (pixel sha256) and near (max normalised cross-correlation over "
                     f"+-2 px >= {threshold:.4f}, after a nearest-neighbour candidate search) "
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
    pinned = report["pinned_copies"]
    if pinned is not None:
        handling = ("--pinned-copies exclude: a set of pinned items linked across splits keeps "
                    "its latest split's items (test > val > train), the others are excluded"
                    if ctx.pinned_copies == "exclude" else
                    "--pinned-copies fail: a link between pinned items of different splits fails "
                    "the step")
        items.append({"leakage": "Copies among pinned items (links the earlier split missed)",
                      "handling": handling,
                      "evidence": f"{pinned['links']} links between items pinned to different "
                                  f"splits; {pinned['excluded_items']} items excluded; "
                                  f"{pinned['remaining_across_splits']} links left across splits",
                      "status": "PASS" if pinned["remaining_across_splits"] == 0 else "FAIL"})
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
    lines += _pinned_markdown(report.get("pinned_copies"))
    lines += _stability_markdown(report.get("stability"))
    clusters = report["duplicate_clusters"]
    search = report["near_duplicate_search"]
    calibration = search["calibration"]
    lines += ["", "## Duplicate clusters", "",
              f"- exact duplicates: {clusters['exact']['clusters']} clusters, "
              f"{clusters['exact']['items']} items",
              f"- near duplicates: {clusters['near']['clusters']} clusters, "
              f"{clusters['near']['items']} items; "
              f"{search['items_merged_only_by_near_duplicates']} items were merged only through "
              "near-duplicate evidence",
              f"- largest group: {clusters['largest_group']} items", "",
              "## Near-duplicate detection", "",
              f"- method: {search['method']}",
              f"- threshold: max NCC >= {search['threshold']} ({search['threshold_source']})",
              f"- search: {search.get('index', '-')}, {search.get('candidates', 0)} candidate pairs "
              f"verified, {search.get('merged_pairs', 0)} merged, "
              f"{search.get('near_blank_images', 0)} near-blank images, {search.get('seconds', 0)} s "
              f"({search.get('search_seconds', 0)} s search, {search.get('verify_seconds', 0)} s "
              "verification)"]
    if calibration.get("rule"):
        lines.append(f"- calibration: copies of {calibration['sampled_images']} of this data set's "
                     f"own images, of each kind below; rule: {calibration['rule']}; the copies' "
                     f"0.5th percentile is {calibration['copies_p0.5']}")
    elif calibration.get("reason"):
        lines.append(f"- calibration: {calibration['reason']}")
    if "aligned_threshold" in calibration:
        lines.append("- aligned stage: " + (calibration.get("aligned_off") or
                     f"merges at >= {calibration['aligned_threshold']} ({calibration['aligned_rule']})"))
    if not calibration.get("aligned_off") and calibration.get("aligned_coarse_gate"):
        gate = calibration["aligned_coarse_gate"]
        lines.append(f"- aligned stage's coarse gate: pairs below {gate['gate']} skip the fine pass "
                     f"({gate['rule']}; {gate['copies']} copies)")
    if calibration.get("false_merges"):
        false = calibration["false_merges"]
        lines.append(f"- false merges among distinct look-alikes: {false['merged']}/{false['pairs']} "
                     f"({false['what']})")
        if false.get("held_out"):
            held = false["held_out"]
            lines.append(f"- the aligned threshold set on half of them ({held['threshold']}) merges "
                         f"{held['merged']}/{held['pairs']} of the other half: the share of unseen "
                         "look-alikes the stage may merge")
    if calibration.get("per_kind") and "found" in next(iter(calibration["per_kind"].values())):
        lines += ["", f"Recall per copy kind: planted copies of {calibration['aligned_sampled_images']} "
                  "sampled images, found by either stage at the thresholds above (stage 2 counts a copy only "
                  "if the search would pair it with its original and the pair would rank within this run's "
                  "verification budgets"
                  + (f": aligned candidates down to cosine {calibration['budgets']['aligned_cosine_cutoff']} "
                     "were verified, the rest were not" if (calibration.get("budgets") or {}).get(
                         "aligned_cosine_cutoff") is not None else "")
                  + "; where the data already holds a copy of a sampled image, the two compete, so this "
                  "is a lower bound)"
                  + ("" if calibration.get("mirrors", True) else "; mirror images do not count as "
                     "copies here (--no-mirror-copies)") + ":", "",
                  "| copy kind | found/planted | stage 1 median | min descriptor cosine |",
                  "|---|---|---|---|"]
        lines += [f"| {k}{'' if v['counts_as_copy'] else ' (not a copy)'} | {v['found']}/{v['planted']} | "
                  f"{v['cheap_median']} | {v['descriptor_cos_min']} |"
                  for k, v in calibration["per_kind"].items()]
        lines.append("")
    if calibration.get("gate_rule"):
        lines.append(f"- candidate gate: descriptor cosine >= {calibration['gate']} "
                     f"({calibration['gate_rule']})")
    if search["example_pairs"]:
        lines += ["", "Pairs nearest the threshold (judge them: the merged ones should be copies, "
                  "the others distinct images):", "", "| verdict | similarity | items | pair |",
                  "|---|---|---|---|"]
        lines += [f"| {p['verdict']} | {p['similarity']} | `{p['items'][0]}`, `{p['items'][1]}` | "
                  + (f"![pair](data:image/png;base64,{p['png_base64']})" if "png_base64" in p else "")
                  + " |" for p in search["example_pairs"]]
    lines.append("")
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
    if report.get("previous_split_resolution"):
        lines += ["## Previous split", "", report["previous_split_resolution"]["text"], ""]
    return "\n".join(lines)


def _pinned_markdown(pinned: dict[str, Any] | None) -> list[str]:
    if pinned is None:
        return []
    lines = ["", "## Pinned items found to be copies", "", pinned["note"]]
    if pinned["shown"]:
        lines += ["", "| evidence | items (pinned to -> now) | still across splits |", "|---|---|---|"]
        for link in pinned["shown"]:
            items = ", ".join(f"`{i['item_id']}` ({i['pinned']} -> {i['now']})" for i in link["items"])
            more = f" and {link['items_total'] - len(link['items'])} more" \
                if link["items_total"] > len(link["items"]) else ""
            lines.append(f"| {link['why']} | {items}{more} | "
                         f"{'**yes**' if link['still_across_splits'] else 'no'} |")
        if pinned["links"] > len(pinned["shown"]):
            lines.append(f"\n({pinned['links'] - len(pinned['shown'])} more links in leakage_report.json's count only.)")
    return lines


def _stability_markdown(stability: dict[str, Any] | None) -> list[str]:
    if stability is None:
        return []
    settings = stability["settings"]
    lines = ["", "## Stability", "", stability["guarantee"], "",
             f"- near-duplicate threshold: {settings['near_dup_threshold']} ({settings['threshold_source']})",
             f"- candidate gate: {settings['candidate_gate']}"
             + (f" ({settings['candidate_gate_rule']})" if settings.get("candidate_gate_rule") else ""),
             f"- mirror images count as copies: {'yes' if settings['mirror_copies'] else 'no'}",
             f"- group column: {settings['group_column'] or 'none'}; salt: `{settings['salt']}`"]
    previous = stability.get("previous_report")
    if previous is not None:
        if not previous["found"]:
            lines.append(f"- earlier split's report: not found at `{previous['where']}`, so a "
                         "change of settings cannot be told")
        else:
            old = previous["settings"]
            changed = stability["settings_changed"] or []
            lines.append(f"- since the earlier split (`{previous['where']}`): threshold "
                         + (f"**changed** from {old['near_dup_threshold']} "
                            f"({old.get('threshold_source', 'source not recorded')})"
                            if stability["threshold_changed"] else
                            "not recorded there" if stability["threshold_changed"] is None
                            else "unchanged")
                         + ("; also changed: " + ", ".join(c for c in changed if c != "near_dup_threshold")
                            if [c for c in changed if c != "near_dup_threshold"] else ""))
    earlier = stability.get("earlier_groups")
    if earlier is not None:
        if not earlier["compared"]:
            lines.append(f"- earlier groups: not compared ({earlier['reason']})")
        else:
            lines.append(f"- earlier groups: {earlier['changed']} of {earlier['earlier_groups']} "
                         f"changed ({earlier['merged']} merged into others, {earlier['split']} "
                         f"split apart) over {earlier['earlier_items']} earlier items")
            if earlier["examples"]:
                lines += ["", "| change | earlier group(s) | now | items (first 5) | cause |",
                          "|---|---|---|---|---|"]
                for e in earlier["examples"]:
                    before = e.get("earlier_group") or ", ".join(e["earlier_groups"])
                    now = e["now"] if isinstance(e["now"], str) else ", ".join(e["now"])
                    lines.append(f"| {e['change']} | {before} | {now} | "
                                 + ", ".join(f"`{i}`" for i in e["items"]) + f" | {e['cause']} |")
    return lines
