"""Near duplicates on real images: planted copies of every kind stay with their originals.

Two real sources nobody here made, at their native sizes where they have one:
- scikit-learn's 8x8 digits (UCI optical digits), upscaled to 32x32 as a user would;
- scikit-image's bundled `lfw_subset.npy`: 200 real 25x25 greyscale images (100 faces from
  Labeled Faces in the Wild, 100 other patches), at their native size;
plus tiles of scikit-learn's two sample photos cut at their native resolution (64x64 crops).

Copies: every kind in kubevae.split.planted (shifts of 1 and 2 px, JPEG quality 70, brightness
+25, contrast x0.8, Gaussian noise of 4 levels, a 28->32->28 resample, and shift+noise+JPEG
together). Bases are drawn among images with a std of at least 20 grey levels: a copy of a
near-blank image is indistinguishable from other near-blank images (they are grouped by level).
False merges: distinct originals merged with each other. Bounds asserted: the largest group
holds at most 2% of the items or 16 items (LFW measured: 14 of 264, smooth non-face patches); at most 5% of the digits, 15% of the LFW images and
20% of the photo tiles end in a group with another original. Measured at the calibrated
threshold (2026-12-02): digits under 2%, LFW 13.5% (all among the 100 smooth non-face patches,
which correlate at 0.99 after a level/contrast fit), photo tiles 15% (tiles of clear sky, which
are indistinguishable). These are the method's known weak spot: smooth, featureless images.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kubevae.data.dataset import write_dataset
from kubevae.split import planted, split


def digits32(limit: int = 500) -> np.ndarray:
    from sklearn.datasets import load_digits

    raw = np.rint(load_digits().images[:limit] * 255 / 16).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(d).resize((32, 32), Image.Resampling.BILINEAR))
                     for d in raw])[..., None]


def lfw25() -> np.ndarray:
    import skimage.data

    path = os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy")
    return np.rint(np.load(path) * 255).astype(np.uint8)[..., None]


def photo_tiles(side: int = 64) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    tiles = []
    for photo in load_sample_images().images:
        for r in range(0, photo.shape[0] - side + 1, side):
            for c in range(0, photo.shape[1] - side + 1, side):
                tiles.append(photo[r:r + side, c:c + side])
    return np.stack(tiles)


SOURCES = {"sklearn-digits-32px": digits32, "skimage-lfw-25px": lfw25,
           "sklearn-photos-64px-tiles": photo_tiles}
# Digits: 24 of 500 originals merged before the aligned stage's zoom views (515aa05), 28 with
# them (2a00b5d): more look-alike pairs reach verification, the price of finding re-crops and
# letterboxes (docs/split.md, "The zoom views"). A false merge coarsens a group; it never puts a
# copy across splits.
FALSE_MERGE_BOUND = {"sklearn-digits-32px": 0.065, "skimage-lfw-25px": 0.15,
                     "sklearn-photos-64px-tiles": 0.20}


def planted_dataset(path, originals: np.ndarray, per_kind: int, seed: int = 0):
    """originals + per_kind copies of each kind, of bases with some contrast; every item its
    own metadata group, so nothing but the pixels can bring a copy and its original together."""
    rng = np.random.default_rng(seed)
    gray = originals.astype(np.float32).mean(axis=-1)
    textured = np.flatnonzero(gray.reshape(len(gray), -1).std(axis=1) >= 20)
    images, ids, copies = [*originals], [f"orig-{i:04d}" for i in range(len(originals))], []
    for kind in planted.SHIFT_AND_PHOTOMETRIC:
        for base in rng.choice(textured, per_kind, replace=False):
            images.append(planted.make_copy(originals[base], kind, seed=len(ids)))
            copies.append((f"copy-{len(ids):04d}", f"orig-{base:04d}", kind))
            ids.append(copies[-1][0])
    images = np.stack(images)
    manifest = pd.DataFrame({"item_id": ids, "source_uri": [f"mem://{i}" for i in ids],
                             "sha256": [f"sha-{i}" for i in ids], "phash": "0" * 16,
                             "subject": [f"s{i}" for i in range(len(ids))]})
    write_dataset(path, images, manifest, image_shape=images.shape[1:])
    return copies, len(originals)


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.slow
def test_planted_copies_of_every_kind_share_their_originals_split(tmp_path, source):
    originals = SOURCES[source]()
    copies, n_originals = planted_dataset(tmp_path / "raw", originals, per_kind=8)
    result = split(tmp_path / "raw", tmp_path / "split", group_column="subject")  # must not refuse
    assert result.passed and result.threshold_source == "calibrated on this data set"
    table = pd.read_csv(tmp_path / "split" / "assignments.csv").set_index("item_id")
    crossed = [(c, o, k) for c, o, k in copies if table.split[c] != table.split[o]]
    apart = [(c, o, k) for c, o, k in copies if table.group_id[c] != table.group_id[o]]
    assert not crossed and not apart, (result.near_dup_threshold, apart)
    # False merges: distinct originals that ended in one group.
    origs = table.loc[[f"orig-{i:04d}" for i in range(n_originals)]]
    sizes = origs.group_id.value_counts()
    merged_originals = int(sizes[sizes > 1].sum())
    assert merged_originals <= FALSE_MERGE_BOUND[source] * n_originals, (merged_originals, sizes.head())
    assert table.group_id.value_counts().iloc[0] <= max(16, 0.02 * len(table))
    assert result.cross_split["near_duplicates"] == 0

    report = json.loads((tmp_path / "split" / "leakage_report.json").read_text())
    search = report["near_duplicate_search"]
    assert "cross-correlation" in search["method"] and search["threshold"] == result.near_dup_threshold
    assert set(search["calibration"]["per_kind"]) == set(planted.KINDS)
    assert search["items_merged_only_by_near_duplicates"] >= len(copies)
    assert report["duplicate_clusters"]["largest_group"] >= 2
    examples = search["example_pairs"]
    assert examples and all(e["png_base64"] for e in examples)
    assert {e["verdict"] for e in examples} <= {"merged", "not merged"}
    md = (tmp_path / "split" / "leakage_report.md").read_text()
    assert "## Near-duplicate detection" in md and "![pair](data:image/png;base64," in md
    assert "merged only through near-duplicate evidence" in md


def test_the_verification_threshold_can_be_set_and_strict_settings_part_copies(tmp_path):
    """The test can fail: at a threshold of 1 only pixel-exact shifts merge, and the JPEG and
    noisy copies come apart from their originals."""
    copies, _ = planted_dataset(tmp_path / "raw", lfw25(), per_kind=4)
    result = split(tmp_path / "raw", tmp_path / "s", group_column="subject", near_dup_threshold=1.0)
    assert result.near_dup_threshold == 1.0 and result.threshold_source == "given"
    table = pd.read_csv(tmp_path / "s" / "assignments.csv").set_index("item_id")
    apart = {k for c, o, k in copies if table.group_id[c] != table.group_id[o]}
    assert {"jpeg_70", "noise_4"} <= apart


@pytest.mark.slow
def test_appended_near_copies_inherit_their_originals_split(tmp_path):
    originals = lfw25()
    ids = [f"face-{i:03d}" for i in range(len(originals))]

    def write(path, images, names):
        write_dataset(path, images, pd.DataFrame({
            "item_id": names, "source_uri": [f"mem://{i}" for i in names],
            "sha256": [f"sha-{i}" for i in names], "phash": "0" * 16}), image_shape=images.shape[1:])

    write(tmp_path / "v1", originals, ids)
    split(tmp_path / "v1", tmp_path / "s1", salt="first")
    first = pd.read_csv(tmp_path / "s1" / "assignments.csv").set_index("item_id")["split"]
    textured = [i for i in range(len(originals)) if originals[i].std() >= 20][:30]
    kinds = list(planted.SHIFT_AND_PHOTOMETRIC)
    new = np.stack([planted.make_copy(originals[i], kinds[k % len(kinds)], seed=k)
                    for k, i in enumerate(textured)])
    new_ids = [f"new-{k:03d}" for k in range(len(new))]
    write(tmp_path / "v2", np.concatenate([originals, new]), ids + new_ids)
    # Another salt would move everything: what keeps its split was pinned or inherited.
    report = split(tmp_path / "v2", tmp_path / "s2", salt="second", previous_split=tmp_path / "s1")
    second = pd.read_csv(tmp_path / "s2" / "assignments.csv").set_index("item_id")
    assert report.passed and (second.loc[ids, "split"] == first[ids]).all()
    assert (second.loc[new_ids, "how"] == "inherited").all()
    assert (second.loc[new_ids, "split"].to_numpy() == first[[ids[i] for i in textured]].to_numpy()).all()


@pytest.mark.slow
def test_sprite_grid_position_neighbours_that_verify_share_a_group(tmp_path):
    """Sweeps of one sprite over 32 x 8 neighbouring positions of the 737,280-image grid, among
    3,000 random sprites of the grid. Positions are 1.19 px apart and many neighbours are near
    copies under the +-2 px tolerance (their max NCC reaches the threshold): all such pairs must
    share a group, although every position of one sprite has the same spectrum (the layout term
    must find the near ones among the ties). The split must not refuse: a sweep is at most one
    sprite's positions (1,024 of 737,280 in the whole grid; 256 of 3,512 here)."""
    from kubevae.data import sprites
    from kubevae.split import neardup

    sweeps = np.array([(2, scale, orient, x, y) for scale, orient in ((1, 0), (4, 7))
                       for x in range(32) for y in range(8)])
    rng = np.random.default_rng(3)
    filler = sprites.factors_of(rng.choice(sprites.NUM_IMAGES, 3000, replace=False))
    factors = np.concatenate([sweeps, filler])
    images = sprites.render(factors)
    ids = [f"sprite-{i:05d}" for i in range(len(images))]
    write_dataset(tmp_path / "raw", images, pd.DataFrame({
        "item_id": ids, "source_uri": [f"mem://{i}" for i in ids],
        "sha256": [f"sha-{i}" for i in ids], "phash": "0" * 16}), image_shape=images.shape[1:])
    result = split(tmp_path / "raw", tmp_path / "split")
    assert result.passed
    table = pd.read_csv(tmp_path / "split" / "assignments.csv").set_index("item_id").loc[ids]
    groups = table["group_id"].to_numpy()
    # Neighbouring positions in the sweeps, verified directly: those reaching the threshold are copies.
    index = {tuple(f): i for i, f in enumerate(sweeps.tolist())}
    pairs = np.array([(i, index[(*f[:3], f[3] + dx, f[4] + dy)]) for i, f in enumerate(sweeps.tolist())
                      for dx, dy in ((1, 0), (0, 1)) if (*f[:3], f[3] + dx, f[4] + dy) in index])
    work = neardup.working_images(images[:len(sweeps)])
    means, stds = neardup._statistics(work)
    copies = pairs[neardup.similarity(work, pairs, means, stds) >= result.near_dup_threshold]
    assert len(copies) >= len(pairs) // 10     # the sweeps do hold near copies
    assert (groups[copies[:, 0]] == groups[copies[:, 1]]).all()
    assert (table["split"].to_numpy()[copies[:, 0]] == table["split"].to_numpy()[copies[:, 1]]).all()
    # A sweep, plus the few random sprites that are themselves near copies of a swept position.
    assert pd.Series(groups).value_counts().iloc[0] <= 256 + 16
