"""kubevae split: outputs, groups, pinning, time mode, leakage failure, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from kubevae.data.dataset import Dataset, load_splits, write_dataset
from kubevae.ingest import ingest
from kubevae.split import LeakageError, split
from kubevae.split.assign import SPLITS


def frame(n, *, start=0, seed=0, groups=None, times=None):
    """A manifest of n items with random (far apart) perceptual hashes and distinct sha256."""
    rng = np.random.default_rng(seed)
    ids = [f"item-{start + i:05d}" for i in range(n)]
    return pd.DataFrame({
        "item_id": ids, "source_uri": [f"mem://{i}" for i in ids],
        "sha256": [f"sha-{start + i:05d}" for i in range(n)],
        "phash": [f"{int(v):016x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)],
        "group_id": groups if groups is not None else [None] * n,
        "timestamp": times if times is not None else [None] * n})


def write(path, manifest, seed=0, card=None, images=None):
    """Random 16x16 noise images (distinct: their correlation stays far below any threshold)."""
    if images is None:
        rng = np.random.default_rng(seed + int(manifest["item_id"].str[-5:].astype(int).iloc[0]))
        images = rng.integers(0, 256, (len(manifest), 16, 16, 1), dtype=np.uint8)
    write_dataset(path, images, manifest, card=card, image_shape=images.shape[1:])
    return path


def assignments(out) -> pd.DataFrame:
    return pd.read_csv(out / "assignments.csv", dtype=str)


@pytest.mark.slow
def test_sprites_split_outputs_feed_training(tmp_path):
    ingest("builtin://sprites?n=500&seed=2", tmp_path / "raw", workers=1)
    report = split(tmp_path / "raw", tmp_path / "split")
    assert report.passed and sum(report.items.values()) == 500
    table = assignments(tmp_path / "split")
    assert list(table.columns[:5]) == ["item_id", "source_uri", "group_id", "sha256", "split"]
    assert set(table["split"]) == set(SPLITS)
    splits = load_splits(tmp_path / "split")
    for name in SPLITS:
        assert sorted(splits[name].manifest["item_id"]) == sorted(table.item_id[table.split == name])
        assert splits[name].factor_names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
        assert splits[name].factors.shape == (len(splits[name]), 5)
    # Normalization is fit on train only.
    stats = json.loads((tmp_path / "split" / "stats.json").read_text())
    train = splits["train"].images.astype(np.float64) / 255
    assert stats["mean"] == pytest.approx([train.mean()], abs=1e-9)
    assert stats["std"] == pytest.approx([train.std()], abs=1e-9)
    assert stats["fit_on"] == "train" and stats["num_items"] == len(train)
    everything = Dataset.open(tmp_path / "raw").images.astype(np.float64) / 255
    assert stats["mean"][0] != pytest.approx(everything.mean(), abs=1e-9)

    from kubevae.training.data import load

    data = load(str(tmp_path / "split"), None, 0, 0)
    assert data.mean == stats["mean"] and len(data.train) == report.items["train"]
    md = (tmp_path / "split" / "leakage_report.md").read_text()
    assert md.startswith("# Leakage report: PASSED")
    assert re.search(r"<[A-Za-z/!]", md) is None  # plain Markdown, no HTML: a KFP visualization
    checks = json.loads((tmp_path / "split" / "leakage_report.json").read_text())["checklist"]
    assert [c["leakage"].split(" ")[0] for c in checks] == ["Duplicates", "Non-independence",
                                                             "Temporal", "Preprocessing"]


@pytest.mark.slow
def test_group_column_keeps_each_group_in_one_split(tmp_path):
    groups = [f"patient-{i % 40}" for i in range(400)]
    manifest = frame(400, groups=groups)
    manifest["patient"] = groups
    write(tmp_path / "raw", manifest)
    report = split(tmp_path / "raw", tmp_path / "s", group_column="patient")
    table = assignments(tmp_path / "s")
    assert (table.groupby("metadata_group")["split"].nunique() == 1).all()
    assert report.cross_split["shared_metadata_groups"] == 0
    assert sum(report.groups.values()) == 40
    with pytest.raises(ValueError, match=r"--group-column 'site': no such column.*'patient'"):
        split(tmp_path / "raw", tmp_path / "x", group_column="site")


@pytest.mark.parametrize("fractions, message", [
    ((0.8, 0.2, 0.0), "the test fraction is 0.0; expected a value in \\(0, 1\\)"),
    ((1.0, 0.1, 0.1), "the train fraction is 1.0"),
    ((0.8, 0.2, 0.1), "sum to 1.1; expected at most 1"),
    ((0.8, 0.2), "expected 3 values"),
])
def test_bad_fractions(tmp_path, fractions, message):
    write(tmp_path / "raw", frame(10))
    with pytest.raises(ValueError, match=message):
        split(tmp_path / "raw", tmp_path / "s", fractions=fractions)


def test_empty_dataset_is_an_error(tmp_path):
    write_dataset(tmp_path / "raw", [], frame(0), image_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="the dataset is empty"):
        split(tmp_path / "raw", tmp_path / "s")


@pytest.mark.slow
def test_fractions_below_one_leave_the_rest_out_and_say_so(tmp_path):
    write(tmp_path / "raw", frame(300))
    report = split(tmp_path / "raw", tmp_path / "s", fractions=(0.4, 0.1, 0.1))
    assert report.excluded == 300 - sum(report.items.values()) > 60
    excluded = pd.read_csv(tmp_path / "s" / "excluded.csv")
    assert len(excluded) == report.excluded
    assert excluded["reason"].str.contains("past the sum of the fractions").all()


@pytest.mark.slow
def test_previous_split_pins_items_and_new_group_members_inherit(tmp_path):
    old = frame(200, groups=[f"g{i % 50}" for i in range(200)])
    write(tmp_path / "v1", old)
    split(tmp_path / "v1", tmp_path / "s1", group_column="group_id", salt="one")
    first = assignments(tmp_path / "s1").set_index("item_id")["split"]
    # 50 new items: half join existing groups, half bring new groups. A different salt would
    # reshuffle everything, so any item that keeps its split was pinned.
    new = frame(50, start=200, seed=1, groups=[f"g{i}" if i < 25 else f"new{i}" for i in range(50)])
    write(tmp_path / "v2", pd.concat([old, new], ignore_index=True))
    report = split(tmp_path / "v2", tmp_path / "s2", group_column="group_id", salt="two",
                   previous_split=tmp_path / "s1")
    second = assignments(tmp_path / "s2").set_index("item_id")
    assert (second.loc[first.index, "split"] == first).all()
    assert (second.loc[first.index, "how"] == "pinned").all()
    joined = new.item_id[:25]
    assert (second.loc[joined, "how"] == "inherited").all()
    group_split = first.groupby(old.set_index("item_id")["group_id"]).first()
    assert (second.loc[joined, "split"].to_numpy() == group_split[new.group_id[:25]].to_numpy()).all()
    assert report.passed


def test_previous_split_naming_unknown_items_is_an_error(tmp_path):
    write(tmp_path / "raw", frame(20))
    pd.DataFrame({"item_id": ["item-00001", "ghost-1", "ghost-2"], "split": ["train", "val", "test"]}
                 ).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(ValueError, match=r"old.csv: 2 item\(s\) are not in the dataset.*ghost-1"):
        split(tmp_path / "raw", tmp_path / "s", previous_split=tmp_path / "old.csv")
    pd.DataFrame({"item_id": ["item-00001"], "split": ["holdout"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="'holdout'.*expected one of"):
        split(tmp_path / "raw", tmp_path / "s", previous_split=tmp_path / "bad.csv")


def test_new_item_bridging_two_pinned_splits_is_excluded(tmp_path):
    base = frame(2, groups=["ga", "gb"])
    write(tmp_path / "v1", base)
    pd.DataFrame({"item_id": base.item_id, "split": ["train", "test"]}).to_csv(tmp_path / "old.csv", index=False)
    bridge = frame(1, start=2, seed=3, groups=["ga"])
    bridge.loc[0, "sha256"] = base.loc[1, "sha256"]  # same pixels as the test item, group of train's
    write(tmp_path / "v2", pd.concat([base, bridge], ignore_index=True))
    report = split(tmp_path / "v2", tmp_path / "s", group_column="group_id",
                   previous_split=tmp_path / "old.csv")
    assert report.passed and report.excluded == 1
    excluded = pd.read_csv(tmp_path / "s" / "excluded.csv")
    assert excluded.item_id.tolist() == ["item-00002"]
    assert "pinned to different splits (train, test)" in excluded.reason[0]


def test_pinned_duplicates_in_two_splits_fail_or_leave_the_earlier_split_out(tmp_path):
    manifest = frame(6)
    manifest.loc[5, "sha256"] = manifest.loc[0, "sha256"]
    write(tmp_path / "raw", manifest)
    pd.DataFrame({"item_id": ["item-00000", "item-00005"], "split": ["train", "test"]}
                 ).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(LeakageError, match="Duplicates across splits") as caught:
        split(tmp_path / "raw", tmp_path / "s", previous_split=tmp_path / "old.csv",
              pinned_copies="fail")
    assert caught.value.report["cross_split"]["exact_duplicates"] == 1
    assert caught.value.report["cross_split"]["pinned_copies"] == 1
    assert not (tmp_path / "s").exists()
    assert "FAILED" in (tmp_path / "s.leakage_report.md").read_text()
    # The default: the test item stays, its train copy leaves this split.
    report = split(tmp_path / "raw", tmp_path / "s", previous_split=tmp_path / "old.csv")
    assert report.passed and report.excluded == 1
    assert assignments(tmp_path / "s").set_index("item_id").loc["item-00005", "split"] == "test"
    reason = pd.read_csv(tmp_path / "s" / "excluded.csv").set_index("item_id").loc["item-00000", "reason"]
    assert "pinned to train" in reason and "partner item-00005 by exact duplicate" in reason
    # An old.csv without group_id and without a report beside it: said, not guessed.
    stability = report.report["stability"]
    assert stability["earlier_groups"] == {"compared": False,
                                           "reason": "the previous assignments.csv has no group_id column"}
    assert stability["previous_report"]["found"] is False and stability["threshold_changed"] is None


@pytest.mark.slow
def test_time_mode_val_and_test_are_strictly_newer(tmp_path):
    days = pd.date_range("2024-01-01", periods=300, freq="D", tz="UTC")
    groups = [f"s{i // 4}" for i in range(300)]          # sessions of four consecutive days
    manifest = frame(300, groups=groups, times=days)
    write(tmp_path / "raw", manifest)
    cut1, cut2 = "2024-08-01", "2024-09-15"              # days 213 and 258: inside s53 and s64
    report = split(tmp_path / "raw", tmp_path / "s", group_column="group_id", time_column="timestamp",
                   time_cutoffs=[cut1, cut2])
    table = assignments(tmp_path / "s").merge(manifest[["item_id", "timestamp"]], on="item_id")
    when = {s: table.timestamp[table.split == s] for s in SPLITS}
    assert when["train"].max() < pd.Timestamp(cut1, tz="UTC") <= when["val"].min()
    assert when["val"].max() < pd.Timestamp(cut2, tz="UTC") <= when["test"].min()
    assert report.report["temporal"]["val_and_test_strictly_newer"]
    excluded = pd.read_csv(tmp_path / "s" / "excluded.csv")
    assert sorted(excluded.metadata_group.unique()) == ["s53", "s64"]  # the two straddling sessions
    assert excluded.reason.str.contains("both sides of a time cutoff").all()
    one = split(tmp_path / "raw", tmp_path / "s1", time_column="timestamp", time_cutoffs=["2024-06-01"])
    assert one.items["val"] > 0 and one.items["test"] > 0 and one.excluded == 0
    with pytest.raises(ValueError, match="--time-cutoff 'soon'"):
        split(tmp_path / "raw", tmp_path / "x", time_column="timestamp", time_cutoffs=["soon"])
    with pytest.raises(ValueError, match="expected 1 or 2 cutoffs"):
        split(tmp_path / "raw", tmp_path / "x", time_column="timestamp")
    with pytest.raises(ValueError, match="needs --time-column"):
        split(tmp_path / "raw", tmp_path / "x", time_cutoffs=["2024-06-01"])


def chain_images(n, side=16, seed=0):
    """n crops of one random field, each one pixel right of the previous: consecutive crops are
    1-pixel-shifted copies, so near-duplicate evidence chains all of them together."""
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).normal(0, 1, (side, side + n))
    field = gaussian_filter(noise, 2.0)
    field = np.clip(128 + field / field.std() * 50, 0, 255).astype(np.uint8)  # smooth, textured
    return np.stack([field[:, i:i + side] for i in range(n)])[..., None]


@pytest.mark.slow
def test_duplicate_chains_larger_than_a_split_are_refused_naming_the_cause(tmp_path):
    images = np.concatenate([chain_images(40), np.random.default_rng(5).integers(
        0, 256, (60, 16, 16, 1), dtype=np.uint8)])
    manifest = frame(100, groups=[f"g{i}" for i in range(100)])
    write(tmp_path / "raw", manifest, images=images)
    with pytest.raises(ValueError, match=r"one group holds 40 of 100 items.*duplicate chaining: "
                                         r"\d+ verified near-duplicate pairs.*--near-dup-threshold"):
        split(tmp_path / "raw", tmp_path / "s", group_column="group_id")
    # The same size made by one metadata group is named as that, not as chaining.
    grouped = frame(100, groups=["big"] * 40 + [f"g{i}" for i in range(60)])
    write(tmp_path / "meta", grouped, seed=9)
    with pytest.raises(ValueError, match=r"a metadata group is that large: group_id='big' holds 40"):
        split(tmp_path / "meta", tmp_path / "s", group_column="group_id")
    report = split(tmp_path / "raw", tmp_path / "s", max_group_fraction=0.5)
    assert report.passed and report.report["cross_split"]["near_duplicates"] == 0


@pytest.mark.slow
def test_threshold_comes_from_the_dataset_card_hint_else_calibration(tmp_path):
    write(tmp_path / "a", frame(30), card={"split_hints": {"near_dup_ncc": 0.97, "reason": "tiny"}})
    write(tmp_path / "b", frame(30))
    hinted = split(tmp_path / "a", tmp_path / "sa")
    assert hinted.near_dup_threshold == 0.97 and hinted.threshold_source.startswith("dataset card")
    calibrated = split(tmp_path / "b", tmp_path / "sb")
    assert calibrated.threshold_source == "calibrated on this data set"
    assert 0.9 <= calibrated.near_dup_threshold <= 0.995
    given = split(tmp_path / "a", tmp_path / "sc", near_dup_threshold=0.99)
    assert given.near_dup_threshold == 0.99 and given.threshold_source == "given"
    with pytest.raises(ValueError, match=r"--near-dup-threshold: expected a correlation in \(0, 1\]"):
        split(tmp_path / "b", tmp_path / "sd", near_dup_threshold=10)
