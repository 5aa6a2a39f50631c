"""--previous-split on data that reveals links the earlier split missed (issue 25, section 2).

One small data set, split three times (the split calibrates on every run, so each call costs
seconds): a fresh split of the earlier items, then the earlier items plus new ones pinned to an
earlier assignment that put linked items in different splits: once with the default
`--pinned-copies exclude` and once, through the CLI, with `fail`. The pinned splits are written
by hand, so what must happen to each item is known.

Items (16x16 smooth images, distinct unless said):
    0 train   1 train (group gd)   2 val   3 test   4 train   5 val   6 val (group ga)
    7 train (group gb)   8 train   9 test
    10 train: a shifted, brightened copy of 3 (test)       -> near link, 10 excluded
    11 train: the pixels of 5 (val)                         -> exact link, 11 excluded
    12 train (group ga, with 6 in val)                      -> metadata link, 12 excluded
    13 train (group gb, with 7), the pixels of 9 (test)     -> exact link; 13 and 7 excluded
New items:
    14 group gb: linked to pinned items only through 7 and 13 -> excluded
    15 the pixels of 3 (test)                               -> inherits test
    16 unrelated                                            -> placed by hash
    17 group gd and the pixels of 0: joins earlier groups {0} and {1} (both train) -> train
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_split_properties import near_copy, smooth_image

from kubevae.cli import main
from kubevae.data.dataset import write_dataset
from kubevae.split import command, split
from kubevae.split.assign import EXCLUDED, assign, find_pinned_links, member_keys, pinned_rows
from kubevae.split.grouping import group_items

PINNED = {0: "train", 1: "train", 2: "val", 3: "test", 4: "train", 5: "val", 6: "val", 7: "train",
          8: "train", 9: "test", 10: "train", 11: "train", 12: "train", 13: "train"}
GROUPS = {1: "gd", 6: "ga", 12: "ga", 7: "gb", 13: "gb", 14: "gb", 17: "gd"}
SAME_PIXELS = {11: 5, 13: 9, 15: 3, 17: 0}


def item(i: int) -> str:
    return f"item-{i:05d}"


def dataset(n: int) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(7)
    images = [smooth_image(rng) for _ in range(10)]
    images.append(near_copy(images[3], rng))
    images += [smooth_image(rng) for _ in range(7)]
    sha = [f"sha-{i:05d}" for i in range(len(images))]
    for copy, original in SAME_PIXELS.items():
        images[copy], sha[copy] = images[original], sha[original]
    manifest = pd.DataFrame({"item_id": [item(i) for i in range(n)],
                             "source_uri": [f"mem://{i}" for i in range(n)], "sha256": sha[:n],
                             "phash": "0" * 16, "group_id": [GROUPS.get(i) for i in range(n)]})
    return np.stack(images[:n]), manifest


def write(path, n: int):
    images, manifest = dataset(n)
    write_dataset(path, images, manifest, image_shape=images.shape[1:])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pinned")
    # A fresh split of the earlier items at a strict given threshold and without mirror copies:
    # its folder (and its leakage_report.json) is the previous split below.
    fresh = split(write(tmp / "v1", 14), tmp / "s1", group_column="group_id",
                  near_dup_threshold=0.999, mirror_copies=False)
    previous = tmp / "previous"
    shutil.copytree(tmp / "s1", previous)
    # The earlier assignment as a split that missed the links would have made it: each item
    # its own group but 7 and 13 (group gb), and the splits above.
    earlier_group = {i: "group:gb" if i in (7, 13) else f"item:{i}" for i in PINNED}
    pd.DataFrame({"item_id": [item(i) for i in PINNED], "split": list(PINNED.values()),
                  "group_id": [earlier_group[i] for i in PINNED]}
                 ).to_csv(previous / "assignments.csv", index=False)
    write(tmp / "v2", 18)
    report = split(tmp / "v2", tmp / "s2", group_column="group_id", previous_split=previous)
    table = pd.read_csv(tmp / "s2" / "assignments.csv", dtype=str).set_index("item_id")
    excluded = pd.read_csv(tmp / "s2" / "excluded.csv", dtype=str).set_index("item_id")
    return {"tmp": tmp, "fresh": fresh, "previous": previous, "report": report, "table": table,
            "excluded": excluded}


def test_the_detector_sees_the_planted_links(runs):
    # Guard for the tests below: the near copy 10 of 3 is a verified pair in the second run.
    shown = runs["report"].report["pinned_copies"]["shown"]
    pairs = [sorted(i["item_id"] for i in link["items"]) for link in shown]
    assert [item(10), item(3)] in [sorted(p, reverse=True) for p in pairs]


def test_exclude_keeps_the_later_split_and_names_each_partner(runs):
    report, table, excluded = runs["report"], runs["table"], runs["excluded"]
    assert report.passed
    # Every pinned test item stays in test: the gate's frozen test split is unchanged.
    assert table.loc[[item(3), item(9)], "split"].tolist() == ["test", "test"]
    assert table.loc[[item(5), item(6)], "split"].tolist() == ["val", "val"]
    partners = {10: (3, "near duplicate"), 11: (5, "exact duplicate"), 12: (6, "metadata group 'ga'"),
                13: (9, "exact duplicate")}
    for copy, (partner, why) in partners.items():
        reason = excluded.loc[item(copy), "reason"]
        assert reason.startswith("excluded: pinned to train"), reason
        assert f"partner {item(partner)} by {why}" in reason, reason
    # 7 shares group gb with 13, the copy of test item 9: it goes too, through its linked items.
    assert f"partner {item(9)} through its linked items" in excluded.loc[item(7), "reason"]
    # New items: linked only through excluded ones: out; a copy of a test item: test; the rest
    # as usual (17 joins groups pinned to train).
    assert "only through pinned items excluded" in excluded.loc[item(14), "reason"]
    assert table.loc[item(15), ["split", "how"]].tolist() == ["test", "inherited"]
    assert table.loc[item(17), ["split", "how"]].tolist() == ["train", "inherited"]
    assert table.loc[item(16), "how"] == "hash"
    assert set(excluded.index) == {item(i) for i in (7, 10, 11, 12, 13, 14)}
    for i, name in PINNED.items():
        if item(i) in table.index:
            assert table.loc[item(i), ["split", "how"]].tolist() == [name, "pinned"]


def test_the_report_names_the_links_and_counts_them_across_splits(runs):
    report = runs["report"].report
    pinned = report["pinned_copies"]
    assert pinned["treatment"] == "exclude" and pinned["links"] == 4 and pinned["linked_sets"] == 4
    assert pinned["excluded_items"] == 5
    assert pinned["excluded_by_pinned_split"] == {"train": 5}
    assert pinned["remaining_across_splits"] == 0
    assert report["cross_split"]["pinned_copies"] == 0
    by_evidence = {}
    for link in pinned["shown"]:
        by_evidence.setdefault(link["evidence"], []).append(
            {(i["item_id"], i["pinned"], i["now"]) for i in link["items"]})
    assert by_evidence["near duplicate"] == [{(item(10), "train", "excluded"), (item(3), "test", "test")}]
    near = next(link for link in pinned["shown"] if link["evidence"] == "near duplicate")
    assert near["similarity"] > 0.99
    assert {(item(12), "train", "excluded"), (item(6), "val", "val")} in by_evidence["metadata group"]
    assert {(item(11), "train", "excluded"), (item(5), "val", "val")} in by_evidence["exact duplicate"]
    assert "trained on 5 of the excluded items" in pinned["note"]
    assert "pinned items linked across splits: 4 links, 5 items excluded" in runs["report"].summary()
    row = next(c for c in report["checklist"] if c["leakage"].startswith("Copies among pinned"))
    assert row["status"] == "PASS" and "4 links" in row["evidence"]
    md = (runs["tmp"] / "s2" / "leakage_report.md").read_text()
    assert md.startswith("# Leakage report: PASSED")
    assert "## Pinned items found to be copies" in md
    assert f"`{item(10)}` (train -> excluded), `{item(3)}` (test -> test)" in md
    assert "| pinned copies | 0 |" in md


def test_fail_publishes_nothing_and_the_report_beside_names_the_links(runs, capsys):
    tmp = runs["tmp"]
    code = main(["split", "--data", str(tmp / "v2"), "--out", str(tmp / "failed"),
                 "--group-column", "group_id", "--previous-split", str(runs["previous"]),
                 "--pinned-copies", "fail"])
    assert code == 1
    assert "Copies among pinned items" in capsys.readouterr().err
    assert not (tmp / "failed").exists()
    report = json.loads((tmp / "failed.leakage_report.json").read_text())
    assert report["pinned_copies"]["treatment"] == "fail"
    assert report["pinned_copies"]["links"] == 4 and report["pinned_copies"]["excluded_items"] == 0
    assert report["cross_split"]["pinned_copies"] == 4 and not report["passed"]
    with pytest.raises(ValueError, match="--pinned-copies: expected one of exclude, fail"):
        split(tmp / "v2", tmp / "x", previous_split=runs["previous"], pinned_copies="keep")


def test_earlier_groups_that_changed_and_the_settings_since_the_earlier_split(runs):
    stability = runs["report"].report["stability"]
    earlier = stability["earlier_groups"]
    # {3,10} {5,11} {6,12} {gb,9} merge among the earlier items; {0} and {1} through new item 17.
    assert earlier["compared"] and earlier["earlier_items"] == 14 and earlier["earlier_groups"] == 13
    assert (earlier["merged"], earlier["split"], earlier["changed"]) == (5, 0, 10)
    merges = {tuple(e["earlier_groups"]): e["cause"] for e in earlier["examples"]}
    assert merges[("group:gb", "item:9")].startswith("the earlier items link directly")
    assert merges[("item:0", "item:1")] == "new items link them"
    # The earlier split's report: a given 0.999 without mirror copies; now calibrated, mirrors on.
    assert stability["previous_report"]["found"]
    assert stability["previous_report"]["settings"]["near_dup_threshold"] == 0.999
    assert stability["threshold_changed"] is True
    assert {"near_dup_threshold", "threshold_source", "mirror_copies"} <= set(stability["settings_changed"])
    settings = stability["settings"]
    assert settings["threshold_source"] == "calibrated on this data set"
    assert settings["candidate_gate"] == runs["report"].report["near_duplicate_search"]["calibration"]["gate"]
    md = (runs["tmp"] / "s2" / "leakage_report.md").read_text()
    assert "threshold **changed** from 0.999 (given)" in md
    assert "earlier groups: 10 of 13 changed (5 merged into others, 0 split apart)" in md


def test_mirror_copies_is_a_setting_that_reaches_the_detector(runs):
    fresh = runs["fresh"].report
    assert fresh["near_duplicate_search"]["calibration"]["mirrors"] is False
    assert fresh["stability"]["settings"]["mirror_copies"] is False
    assert fresh["stability"]["earlier_groups"] is None and fresh["pinned_copies"] is None
    assert "pinned_copies" not in fresh["cross_split"]
    assert runs["report"].report["near_duplicate_search"]["calibration"]["mirrors"] is True
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--no-mirror-copies"])
    assert args.mirror_copies is False and args.pinned_copies == "exclude"
    assert parser.parse_args(["--data", "d", "--out", "o"]).mirror_copies is True


def test_a_near_pair_stands_for_the_exact_copies_of_its_ends():
    """Near pairs are searched among one item per sha256: a pinned exact copy of a pair's end
    is linked too, even when the searched item is new."""
    images, manifest = dataset(16)
    # 15 (new, the pixels of 3) comes first among its copies, so the search sees 15, not 3.
    order = [15, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 3]
    manifest, images = manifest.iloc[order].reset_index(drop=True), images[order]
    grouping = group_items(manifest, images, group_column="group_id", threshold=0.95)
    where = {name: k for k, name in enumerate(manifest.item_id)}
    pins = pd.Series({item(3): "test", item(10): "train"})
    links = find_pinned_links(grouping, pinned_rows(pins, manifest.item_id), manifest.item_id,
                              manifest.group_id)
    near = [link for link in links.links if link["evidence"] == "near duplicate"]
    assert len(near) == 1
    assert {int(r[0]) for r in near[0]["rows"].values()} == {where[item(3)], where[item(10)]}
    assert list(links.exclusions) == [where[item(10)]]
    keep = np.ones(len(manifest), bool)
    keep[list(links.exclusions)] = False
    result = assign(grouping.labels, member_keys(manifest, None), fractions=(0.8, 0.1, 0.1),
                    salt="s", pinned=pins, item_ids=manifest.item_id, dropped=links.exclusions,
                    pin_labels=grouping.labels_among(keep))
    assert result.split[where[item(10)]] == EXCLUDED
    assert (result.split[where[item(3)]], result.how[where[item(3)]]) == (2, "pinned")
    assert (result.split[where[item(15)]], result.how[where[item(15)]]) == (2, "inherited")


def test_the_pipeline_passes_both_settings_to_the_split_step(tmp_path):
    import yaml

    from pipelines.pipeline import PARAMETERS
    from pipelines.submit import compile_pipeline

    assert PARAMETERS["pinned_copies"][0] == "exclude" and PARAMETERS["mirror_copies"][0] is True
    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text())
    inputs = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["split"]["inputs"]["parameters"]
    for name in ("pinned_copies", "mirror_copies"):
        assert inputs[name] == {"componentInputParameter": f"pipelinechannel--{name}"}
