"""Properties of the split on generated datasets (hypothesis).

Every check here is computed independently of the implementation: groups and exact duplicates
by grouping the assignments table, near duplicates from the list of planted copies (each a
shifted, brightened or contrast-changed copy of an earlier image: it must share its split).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import binom

from kubevae.data.dataset import write_dataset
from kubevae.split import neardup, split


def examples(ci: int) -> int:
    """Examples per property, from the active hypothesis profile (tests/conftest.py): under `ci`,
    the suite's default (fixed seeds), `ci` examples, few since each is a whole split with its
    calibration; under any other profile its own count (`long`, make test-properties: 500, with
    random seeds and failures kept in .hypothesis/)."""
    name = settings.get_current_profile_name()
    # --hypothesis-verbosity derives a profile named "<profile>-with-<verbosity>-verbosity"
    return ci if name == "ci" or name.startswith("ci-with-") else settings.default.max_examples


# The generated datasets vary every parameter widely; the seeds and the database come from the
# profile.
SETTINGS = settings(max_examples=examples(6), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


SIDE = 16


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """8x8 random levels upsampled to 16x16: distinct draws never correlate near a threshold."""
    coarse = rng.integers(40, 216, (SIDE // 2, SIDE // 2)).astype(np.float32)
    return np.clip(np.kron(coarse, np.ones((2, 2))), 0, 255).astype(np.uint8)[..., None]


def near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (int(v) for v in rng.choice([-2, 0, 2], 2))
    moved = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")[2 - dy:2 - dy + SIDE, 2 - dx:2 - dx + SIDE]
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-15, 15)  # no clipping
    return np.clip(moved * gain + offset, 0, 255).astype(np.uint8)


def manifest(seed: int, n: int, n_groups: int, dup_rate: float, near_rate: float,
             start: int = 0, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """n items: groups from a pool (some items ungrouped), planted exact duplicates (a copied
    sha256, also under another group) and near duplicates (a near copy of an earlier image,
    `near_of` names it). With `base`, duplicates may also copy items of an existing dataset."""
    rng = np.random.default_rng(seed)
    rows = []
    pool = [] if base is None else base.to_dict("records")
    for i in range(n):
        item = {"item_id": f"item-{start + i:05d}", "source_uri": f"mem://{start + i}",
                "sha256": f"sha-{start + i:05d}", "phash": "0" * 16,
                "group_id": f"g{rng.integers(n_groups)}" if rng.random() < 0.7 else None,
                "image": smooth_image(rng), "near_of": None}
        if pool and rng.random() < dup_rate:
            other = pool[rng.integers(len(pool))]
            item["sha256"], item["image"] = other["sha256"], other["image"]
        elif pool and rng.random() < near_rate:
            other = pool[rng.integers(len(pool))]
            item["image"], item["near_of"] = near_copy(other["image"], rng), other["item_id"]
        rows.append(item)
        pool.append(item)
    return pd.DataFrame(rows)


def write(path: Path, frame: pd.DataFrame) -> Path:
    images = np.stack(frame["image"].to_list())
    write_dataset(path, images, frame.drop(columns=["image", "near_of"]), image_shape=images.shape[1:])
    return path


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "assignments.csv", dtype=str, keep_default_na=False)


def assert_no_leakage(frame: pd.DataFrame, assigned: pd.DataFrame) -> None:
    joined = assigned.merge(frame[["item_id", "group_id"]].rename(columns={"group_id": "meta"}),
                            on="item_id")
    grouped = joined[joined.meta.notna()]
    assert (grouped.groupby("meta")["split"].nunique() <= 1).all(), "a group spans two splits"
    assert (joined.groupby("sha256")["split"].nunique() <= 1).all(), "a duplicate spans two splits"
    where = assigned.set_index("item_id")["split"]
    copies = frame[frame.near_of.notna()]
    for item, original in zip(copies.item_id, copies.near_of, strict=False):
        if item in where.index and original in where.index:
            assert where[item] == where[original], f"near copy {item} of {original} in another split"


datasets = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1), "n": st.integers(20, 160), "n_groups": st.integers(1, 60),
    "dup_rate": st.floats(0, 0.3), "near_rate": st.floats(0, 0.3),
    "threshold": st.sampled_from([None, 0.9, 0.95]), "salt": st.text(max_size=6)})


@SETTINGS
@given(params=datasets)
@pytest.mark.slow
def test_no_group_exact_or_near_duplicate_spans_two_splits(params):
    salt, threshold = params.pop("salt"), params.pop("threshold")
    frame = manifest(**params)
    with tempfile.TemporaryDirectory() as tmp:
        data = write(Path(tmp) / "raw", frame)
        # A dataset this small may hold one group bigger than a split: allow it, as the
        # property must hold whatever the sizes.
        try:
            report = split(data, Path(tmp) / "s", group_column="group_id", salt=salt,
                           near_dup_threshold=threshold, max_group_fraction=1.0)
        except ValueError as e:
            # A handful of groups can all hash outside train: refused, and nothing published.
            assert "no item landed in train" in str(e) and not (Path(tmp) / "s").exists()
            assert frame.group_id.nunique() + frame.group_id.isna().sum() < 40
            return
        assigned = table(Path(tmp) / "s")
    assert report.passed
    assert len(assigned) + report.excluded == len(frame)
    assert_no_leakage(frame, assigned)


def linked_sets(frame: pd.DataFrame, items: pd.Index) -> pd.Series:
    """item_id -> a label shared by the `items` that what was planted links among themselves
    alone (transitively): a metadata group, the same sha256, a near copy and its original."""
    ids = frame.set_index("item_id").loc[items]
    where = pd.Series(np.arange(len(items)), index=items)
    a, b = [], []
    for column in ("group_id", "sha256"):
        first_of = ids[column].dropna().groupby(ids[column].dropna()).transform(lambda v: v.index[0])
        a += where.loc[first_of.index].tolist()
        b += where.loc[first_of.to_numpy()].tolist()
    copies = ids[ids.near_of.isin(items)]
    a += where.loc[copies.index].tolist()
    b += where.loc[copies.near_of.to_numpy()].tolist()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(items), len(items)))
    return pd.Series(connected_components(graph, directed=False)[1], index=items)


def search_settings(report) -> tuple[float, float]:
    """What an unpinned item's group depends on besides the data: the near-duplicate threshold
    and the candidate gate (both calibrated on a sample of the data unless the threshold is given)."""
    near = report.report["near_duplicate_search"]
    return near["threshold"], near["calibration"]["gate"]


@SETTINGS
@given(params=datasets)
# The two counterexamples of issue 25 (salt "" reproduces both on 5b98220): appending 22
# unrelated items moved 9 existing ones; a shifted copy (item-00024 of item-00015) landed in
# another split than its original and stayed pinned apart, with the report PASSED both times.
@example(params={"seed": 32259, "n": 111, "n_groups": 15, "dup_rate": 0.0, "near_rate": 0.156,
                 "threshold": None, "salt": ""})
@example(params={"seed": 252, "n": 25, "n_groups": 2, "dup_rate": 0.0, "near_rate": 0.25,
                 "threshold": None, "salt": ""})
# The first with the threshold given, where the guarantee is unconditional (with None the
# calibration changes on this append: every image is in its sample, so the guarantee is silent).
@example(params={"seed": 32259, "n": 111, "n_groups": 15, "dup_rate": 0.0, "near_rate": 0.156,
                 "threshold": 0.95, "salt": ""})
@pytest.mark.slow
def test_appending_20_percent_moves_no_existing_item(params):
    salt, threshold = params.pop("salt"), params.pop("threshold")
    old = manifest(**params)
    extra = max(1, round(0.2 * len(old)))
    new = manifest(**{**params, "seed": params["seed"] + 1, "n": extra}, start=len(old), base=old)
    both = pd.concat([old, new], ignore_index=True)
    unrelated = manifest(**{**params, "seed": params["seed"] + 2, "n": extra, "dup_rate": 0,
                            "near_rate": 0, "n_groups": 1}, start=len(old))
    unrelated["group_id"] = [f"fresh-{i}" for i in range(extra)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kw = dict(group_column="group_id", salt=salt, near_dup_threshold=threshold,
                  max_group_fraction=1.0)
        try:
            before = split(write(tmp / "v1", old), tmp / "s1", **kw)
        except ValueError as e:  # a handful of groups, none in train: refused (see above)
            assert "no item landed in train" in str(e)
            reject()
        first = table(tmp / "s1").set_index("item_id")["split"]
        # With --previous-split: nothing moves, whatever the new items link to.
        report = split(write(tmp / "v2", both), tmp / "s2", previous_split=tmp / "s1", **kw)
        second = table(tmp / "s2").set_index("item_id")["split"]
        dropped = tmp / "s2" / "excluded.csv"
        excluded = set(pd.read_csv(dropped, dtype=str)["item_id"]) if dropped.exists() else set()
        # Without it: new items that link to nothing leave every old assignment alone, when the
        # threshold is given or calibrates to the same value (with the same candidate gate).
        after = split(write(tmp / "v3", pd.concat([old, unrelated], ignore_index=True)), tmp / "s3", **kw)
        third = table(tmp / "s3").set_index("item_id")["split"]
        assigned = table(tmp / "s2")
    # No pinned item changes split. One may only leave (excluded) as the stated treatment of
    # pinned items found to be linked across splits: each set of pinned items that the planted
    # links join keeps its latest split's items (test > val > train) and the others leave, so
    # every frozen test item stays.
    stayed = first.index.intersection(second.index)
    assert (second.loc[stayed] == first.loc[stayed]).all(), "a pinned item moved to another split"
    left = first.index.difference(second.index)
    assert set(left) <= excluded, "a pinned item vanished without a line in excluded.csv"
    order = first.map({"train": 0, "val": 1, "test": 2})
    latest = order.groupby(linked_sets(both, first.index)).transform("max")
    unlinked = [item for item in left if order[item] >= latest[item]]
    assert not unlinked, f"pinned items left with no link to a later split's pinned item: {unlinked}"
    assert report.passed
    assert_no_leakage(both, assigned)
    given_threshold = threshold is not None
    same = search_settings(before) == search_settings(after)
    event("append without --previous-split: " + ("threshold given" if given_threshold else
          "calibrated to the same threshold and gate" if same else "calibration changed (no guarantee)"))
    if given_threshold or same:
        moved = first[third.reindex(first.index) != first]
        assert moved.empty, (f"{len(moved)} earlier item(s) moved on appending unrelated items "
                             f"(threshold, gate {search_settings(before)} -> {search_settings(after)}): "
                             f"{moved.index[:5].tolist()}")


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(300, 900),
       train=st.floats(0.5, 0.6), val=st.floats(0.05, 0.2), test=st.floats(0.05, 0.2),
       salt=st.text(max_size=6))
@pytest.mark.slow
def test_split_sizes_stay_close_to_the_fractions_when_groups_are_small(seed, n_groups, train, val,
                                                                       test, salt):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)  # groups of 1 to 3 items
    frame = manifest(seed, int(sizes.sum()), 1, 0, 0)
    frame["group_id"] = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    fractions = (train, val, test)
    # This property is about the fractions, not about copies: a given threshold skips stage 1's
    # calibration, and the aligned stage (whose own calibration costs seconds an example) is off.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(neardup, "ALIGNED_STAGE", False):
        report = split(write(Path(tmp) / "raw", frame), Path(tmp) / "s", fractions=fractions,
                       group_column="group_id", salt=salt, near_dup_threshold=0.95)
    total = sum(fractions)
    for name, fraction in zip(("train", "val", "test"), fractions, strict=False):
        # Each group lands in a split with probability `fraction` (a uniform hash): the count is
        # binomial. The bounds hold with probability 1 - 1e-9 each, so the test is not flaky
        # (hypothesis once drew a salt giving a 5.2-sigma count: p = 9e-7, at 5 sigma it failed).
        low, high = binom.isf(1 - 5e-10, n_groups, fraction), binom.isf(5e-10, n_groups, fraction)
        assert low <= report.groups[name] <= high, (name, report.groups, low, high)
        tolerance = (high - low) / 2 / n_groups
        items_tolerance = 3 * tolerance  # items: the same draw, weighted by group sizes 1..3
        assert abs(report.items[name] / len(frame) - fraction) <= items_tolerance, (name, report.items)
    assert abs(report.excluded / len(frame) - (1 - total)) <= 3 * (5 * np.sqrt(0.25 / n_groups) + 1 / n_groups)
