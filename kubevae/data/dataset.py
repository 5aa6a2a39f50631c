"""The canonical dataset folder, written by `kubevae ingest` and the built-in generators, read by
training, evaluation and serving tests.

    DIR/dataset.json        format, image_shape [H, W, C], num_items, shards, factor_names, card
    DIR/images-00000.npy    uint8 N x H x W x C, memory-mappable (np.load(mmap_mode="r"))
    DIR/manifest.parquet    one row per image, in shard order: item_id, source_uri, sha256,
                            phash, group_id, timestamp, label, factor_<name>...
    DIR/card.md             the dataset card for people

Pixels stay uint8 on disk and in memory: training converts them on the device, so nothing is
decoded per sample inside the training loop. A split folder holds train/, val/ and test/
dataset folders (see kubevae.split).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubevae.storage import atomic_dir, atomic_write_json, atomic_write_text, read_json

DATASET_FORMAT = "kubevae-dataset/1"
INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.parquet"
SHARD_ITEMS = 65_536
MANIFEST_COLUMNS = ("item_id", "source_uri", "sha256", "phash", "group_id", "timestamp", "label")
SPLITS = ("train", "val", "test")


class ShardedImages:
    """uint8 N x H x W x C rows held in several shards (read-only memory maps), indexed like one
    array (an int, a slice, an array of ints or a boolean mask, then any further axes) without
    joining them: a dataset of 1,000,000 64-px colour images is 12 GiB, which a join would copy
    into memory (np.asarray does, for those who need one array)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0, *(len(s) for s in shards)])
        self.shape: tuple[int, ...] = (int(self.starts[-1]), *shards[0].shape[1:])
        self.dtype = shards[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(sum(s.nbytes for s in self.shards))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        joined = np.concatenate(self.shards)
        return joined if dtype is None else joined.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            out, lead = self._row(int(first)), 0
        elif isinstance(first, slice):
            start, stop, step = first.indices(len(self))
            out = self._slice(start, stop) if step == 1 else self._take(np.arange(start, stop, step))
            lead = 1
        else:
            rows = self._rows(first)
            out, lead = self._take(rows.ravel()).reshape(*rows.shape, *self.shape[1:]), rows.ndim
        return out[(slice(None),) * lead + rest] if rest else out

    def _row(self, row: int) -> np.ndarray:
        n = len(self)
        if not -n <= row < n:
            raise IndexError(f"index {row} is out of bounds for axis 0 with size {n}")
        row %= n
        shard = int(np.searchsorted(self.starts, row, side="right")) - 1
        return np.asarray(self.shards[shard][row - self.starts[shard]])

    def _rows(self, key: Any) -> np.ndarray:
        """An index array or boolean mask -> non-negative int64 rows, checked as numpy checks them."""
        rows, n = np.asarray(key), len(self)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} does not match axis 0 of size {n}")
            return np.flatnonzero(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"arrays used as indices must be of integer or boolean type, not {rows.dtype}")
        if rows.size and ((rows < -n).any() or (rows >= n).any()):
            raise IndexError(f"index out of bounds for axis 0 with size {n}")
        return np.where(rows < 0, rows + n, rows).astype(np.int64)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        pieces = [s[max(start - a, 0):max(stop - a, 0)] for s, a in zip(self.shards, self.starts, strict=False)]
        pieces = [p for p in pieces if len(p)]
        return np.concatenate(pieces) if pieces else np.empty((0, *self.shape[1:]), self.dtype)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            mine = shard_of == shard
            out[mine] = take_rows(self.shards[shard], rows[mine] - self.starts[shard])
        return out


ImageRows = np.ndarray | ShardedImages   # what Dataset.images holds


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for an N x ... array, through its 2-d view: numpy's fancy index of a 3-d
    uint8 array goes element by element, many times slower (docs/split.md, "What made it
    faster")."""
    if not array.flags.c_contiguous:
        return array[rows]
    flat = array.reshape(len(array), -1)
    return flat[rows].reshape(*np.shape(rows), *array.shape[1:])


@dataclass
class Dataset:
    path: Path
    info: dict[str, Any]
    images: ImageRows  # uint8 N x H x W x C; several shards memory-mapped: not joined
    manifest: pd.DataFrame

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = True) -> Dataset:
        path = Path(path)
        info_path = path / INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(f"{path}: not a kubevae dataset folder ({INFO_FILE} missing). "
                                    f"Create one with `kubevae ingest` or `--dataset sprites`.")
        info = read_json(info_path)
        if info.get("format") != DATASET_FORMAT:
            raise ValueError(f"{info_path}: field 'format' is {info.get('format')!r}, "
                             f"expected {DATASET_FORMAT!r}")
        shards = [_load_shard(path / s["file"], s["count"], info, mmap) for s in info["shards"]]
        shape = tuple(info["image_shape"])
        images: ImageRows = np.zeros((0, *shape), np.uint8)
        if len(shards) == 1 or (shards and not mmap):
            images = shards[0] if len(shards) == 1 else np.concatenate(shards)
        elif shards:
            images = ShardedImages(shards)
        manifest = pd.read_parquet(path / MANIFEST_FILE)
        if len(manifest) != len(images) or len(images) != info["num_items"]:
            raise ValueError(f"{path}: counts disagree: {len(images)} images in shards, "
                             f"{len(manifest)} manifest rows, num_items={info['num_items']}")
        return cls(path, info, images, manifest)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["image_shape"])

    @property
    def factor_names(self) -> list[str]:
        return list(self.info.get("factor_names", []))

    @property
    def factor_sizes(self) -> list[int] | None:
        sizes = self.info.get("factor_sizes")
        return list(sizes) if sizes else None

    @property
    def factors(self) -> np.ndarray | None:
        if not self.factor_names:
            return None
        return self.manifest[[f"factor_{n}" for n in self.factor_names]].to_numpy(np.int64)


def write_dataset(out_dir: str | Path, images: np.ndarray | Iterable[np.ndarray],
                  manifest: pd.DataFrame, *, factor_names: Iterable[str] = (),
                  factor_sizes: Iterable[int] | None = None, card: dict[str, Any] | None = None,
                  image_shape: tuple[int, int, int] | None = None) -> Path:
    """Write a dataset folder atomically. `images` is an array N x H x W x C (uint8), or an
    iterable of such chunks (so that large datasets never sit in memory twice)."""
    out_dir = Path(out_dir)
    chunks = [images] if isinstance(images, np.ndarray) else images
    manifest = _complete_manifest(manifest)
    with atomic_dir(out_dir) as tmp:
        shards, total, shape = _write_shards(tmp, chunks, image_shape)
        if total != len(manifest):
            raise ValueError(f"{out_dir}: {total} images but {len(manifest)} manifest rows")
        manifest.to_parquet(tmp / MANIFEST_FILE, index=False)
        info = {"format": DATASET_FORMAT, "image_shape": list(shape), "num_items": total,
                "shards": shards, "factor_names": list(factor_names),
                "factor_sizes": list(factor_sizes) if factor_sizes is not None else None,
                "content_sha256": content_hash(manifest), "card": card or {}}
        atomic_write_json(tmp / INFO_FILE, info)
        atomic_write_text(tmp / "card.md", render_card(info))
    return out_dir


def content_hash(manifest: pd.DataFrame) -> str:
    """A hash of the dataset's content: the ordered pixel hashes of its items."""
    digest = hashlib.sha256()
    for h in manifest["sha256"].astype(str):
        digest.update(h.encode())
    return digest.hexdigest()


def pixel_sha256(image: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape: equal for equal images in any file format."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(json.dumps(image.shape).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def render_card(info: dict[str, Any]) -> str:
    card = info.get("card", {})
    lines = [f"# Dataset card: {card.get('name', 'kubevae dataset')}", "",
             "| field | value |", "|---|---|",
             f"| images | {info['num_items']} |",
             f"| image shape (H, W, C) | {tuple(info['image_shape'])} |",
             f"| content sha256 | `{info['content_sha256']}` |"]
    if info.get("factor_names"):
        lines.append(f"| factors | {', '.join(info['factor_names'])} |")
    for key, value in sorted(card.items()):
        if key != "name":
            lines.append(f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


def load_splits(path: str | Path) -> dict[str, Dataset | None]:
    """Open a split folder (train/, val/, test/). A plain dataset folder counts as train only."""
    path = Path(path)
    if (path / INFO_FILE).is_file():
        return {"train": Dataset.open(path), "val": None, "test": None}
    if not (path / "train" / INFO_FILE).is_file():
        raise FileNotFoundError(f"{path}: neither a dataset folder ({INFO_FILE}) nor a split "
                                f"folder (train/{INFO_FILE}); run `kubevae ingest` / `kubevae split`")
    return {name: Dataset.open(path / name) if (path / name / INFO_FILE).is_file() else None
            for name in SPLITS}


def _complete_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    manifest = manifest.reset_index(drop=True).copy()
    for column in MANIFEST_COLUMNS:
        if column not in manifest:
            manifest[column] = None
    if manifest["item_id"].isna().any():
        raise ValueError("manifest: column 'item_id' has empty values")
    if manifest["item_id"].duplicated().any():
        dup = manifest.loc[manifest["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"manifest: column 'item_id' has duplicates, e.g. {dup!r}")
    return manifest


def _write_shards(tmp: Path, chunks: Iterable[np.ndarray], image_shape):
    shards: list[dict[str, Any]] = []
    total, shape = 0, image_shape
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.dtype != np.uint8 or chunk.ndim != 4:
            raise ValueError(f"images: expected uint8 N x H x W x C, got {chunk.dtype} {chunk.shape}")
        if shape is None:
            shape = chunk.shape[1:]
        if tuple(chunk.shape[1:]) != tuple(shape):
            raise ValueError(f"images: shape {chunk.shape[1:]} differs from {tuple(shape)}")
        for start in range(0, len(chunk), SHARD_ITEMS):
            part = chunk[start:start + SHARD_ITEMS]
            name = f"images-{len(shards):05d}.npy"
            np.save(tmp / name, part)
            shards.append({"file": name, "count": int(len(part))})
            total += len(part)
    if shape is None:
        raise ValueError("images: the dataset is empty; expected at least one image")
    return shards, total, tuple(int(s) for s in shape)


def _load_shard(path: Path, count: int, info: dict[str, Any], mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard listed in {INFO_FILE} is missing")
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    expected = (count, *info["image_shape"])
    if array.dtype != np.uint8 or tuple(array.shape) != expected:
        raise ValueError(f"{path}: expected uint8 {expected}, got {array.dtype} {array.shape}")
    return array
