"""A dataset of several shards is indexed where it lies (kubevae.data.dataset.ShardedImages).

Property: for any shard sizes and any index numpy takes on the first axis (an int, a slice of
any step, an array of ints of any shape, a boolean mask), with or without further axes, the
shards give what one joined array gives, and refuse what it refuses with an IndexError. And a
split of a dataset in several shards is the split of the same dataset in one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kubevae.data import dataset as dataset_module
from kubevae.data.dataset import Dataset, ShardedImages, write_dataset
from kubevae.split import split


@st.composite
def shards_and_key(draw):
    sizes = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
    n = sum(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    joined = rng.integers(0, 256, (n, 3, 2, 2), dtype=np.uint8)
    shards = np.split(joined, np.cumsum(sizes)[:-1])
    index = st.integers(-n - 2, n + 1)      # some out of bounds, both ways
    first = draw(st.one_of(
        index,
        st.builds(slice, st.none() | index, st.none() | index, st.none() | st.integers(-4, 4).filter(bool)),
        st.lists(index, max_size=12).map(lambda v: np.array(v, np.int64)),
        st.lists(index, min_size=4, max_size=4).map(lambda v: np.array(v, np.int64).reshape(2, 2)),
        st.lists(st.booleans(), min_size=n, max_size=n).map(np.array),
        st.lists(st.booleans(), min_size=1, max_size=n + 2).map(np.array),   # wrong length
    ))
    rest = draw(st.sampled_from([(), (1,), (slice(None, None, -1),), (0, slice(1, None)), (Ellipsis, 0)]))
    return shards, joined, (first, *rest) if rest else first


def _result(array, key):
    try:
        return np.asarray(array[key])
    except IndexError as error:
        return error


@given(shards_and_key())
@example(([np.zeros((2, 1), np.uint8), np.ones((3, 1), np.uint8)], np.r_[np.zeros(2), np.ones(3)]
          .astype(np.uint8)[:, None], slice(None, None, -2)))
def test_shards_index_like_the_joined_array(case):
    shards, joined, key = case
    images = ShardedImages(shards)
    assert len(images) == len(joined) and images.shape == joined.shape and images.dtype == joined.dtype
    expected, got = _result(joined, key), _result(images, key)
    if isinstance(expected, IndexError):
        assert isinstance(got, IndexError), (key, got)
        return
    assert not isinstance(got, IndexError), (key, got)
    assert got.shape == expected.shape and np.array_equal(got, expected), key
    np.testing.assert_array_equal(np.asarray(images), joined)


def _tiny_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)
    images[n // 2:n // 2 + 6] = np.roll(images[:6], 1, axis=2)     # shifted copies to group
    return images


def _manifest(n: int) -> pd.DataFrame:
    ids = [f"item-{i:04d}" for i in range(n)]
    return pd.DataFrame({"item_id": ids, "source_uri": [f"mem://{i}" for i in ids],
                         "sha256": [f"sha-{i}" for i in range(n)], "phash": ["0" * 16] * n})


def test_a_split_of_several_shards_is_the_split_of_one(tmp_path, monkeypatch):
    n = 150
    images, manifest = _tiny_images(n, seed=3), _manifest(n)
    write_dataset(tmp_path / "one", images, manifest, image_shape=images.shape[1:])
    monkeypatch.setattr(dataset_module, "SHARD_ITEMS", 40)
    write_dataset(tmp_path / "several", images, manifest, image_shape=images.shape[1:])
    opened = Dataset.open(tmp_path / "several")
    assert isinstance(opened.images, ShardedImages) and len(opened.images.shards) == 4
    assert isinstance(Dataset.open(tmp_path / "one").images, np.ndarray)
    np.testing.assert_array_equal(np.asarray(opened.images), images)
    for name in ("one", "several"):
        split(tmp_path / name, tmp_path / f"split-{name}")
    one = pd.read_csv(tmp_path / "split-one" / "assignments.csv", dtype=str)
    several = pd.read_csv(tmp_path / "split-several" / "assignments.csv", dtype=str)
    pd.testing.assert_frame_equal(one, several)
    # The six shifted copies were grouped with their originals in both.
    for i in range(6):
        row = one.set_index("item_id")
        assert row.loc[f"item-{i:04d}", "group_id"] == row.loc[f"item-{n // 2 + i:04d}", "group_id"]


def test_a_dataset_opened_into_memory_is_one_array(tmp_path, monkeypatch):
    images, manifest = _tiny_images(90, seed=4), _manifest(90)
    monkeypatch.setattr(dataset_module, "SHARD_ITEMS", 40)
    write_dataset(tmp_path / "d", images, manifest, image_shape=images.shape[1:])
    loaded = Dataset.open(tmp_path / "d", mmap=False)
    assert isinstance(loaded.images, np.ndarray)
    np.testing.assert_array_equal(loaded.images, images)


@pytest.mark.parametrize("key", [10**6, -10**6, np.array([0, 10**6]), np.array([0.5]), np.ones(3, bool)])
def test_bad_indexes_raise_index_errors(key):
    images = ShardedImages([np.zeros((4, 2), np.uint8), np.zeros((5, 2), np.uint8)])
    with pytest.raises(IndexError):
        images[key]
