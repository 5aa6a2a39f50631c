"""The optional metadata table: one row per image file, keyed by its path relative to the source.

Accepted formats: CSV (.csv) or Parquet (.parquet, .pq), from a local path or an s3:// / minio://
URI. Columns:

    path          the file's path relative to the source folder or prefix (--path-column renames)
    group_id      optional: what makes images non-independent (patient, device, session)
    timestamp     optional: ISO 8601 text (read as UTC) or a number (kept as is)
    label         optional: any value
    factor_<name> optional: integer ground-truth factors (used by the disentanglement metrics)
    anything else carried into the manifest unchanged (e.g. a `patient` column for
                  `kubevae split --group-column patient`)

Size: the file is bounded, not streamed (every row must be held to be joined onto the manifest
and checked for duplicates). A file larger than `max_bytes` (default MAX_METADATA_BYTES, 64 MiB;
--max-metadata-mb changes it) is refused before it is read: pandas holds a CSV in about 13x
its size (a 53 MB CSV took 700 MB), so the default keeps metadata under ~1 GB of memory.

Rows without a file and files without a row are both reported; the latter are quarantined
(reason no_metadata_row), since a file with no group id could leak across splits.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from kubevae.objectstore import read_uri

RESERVED = ("item_id", "source_uri", "sha256", "phash")
FACTOR_PREFIX = "factor_"
MAX_METADATA_BYTES = 64 << 20


@dataclass
class Metadata:
    source: str
    frame: pd.DataFrame                 # indexed by relative path; columns as described above
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...] | None

    def __len__(self) -> int:
        return len(self.frame)


def load_metadata(ref: str, *, path_column: str = "path",
                  max_bytes: int = MAX_METADATA_BYTES) -> Metadata:
    data, name = read_uri(ref, what="--metadata", max_bytes=max_bytes,
                          limit_hint=" (--max-metadata-mb raises it)")
    frame = _parse(data, name, ref, path_column)
    where = f"--metadata {ref}"
    if path_column not in frame.columns:
        raise ValueError(f"{where}: no column {path_column!r} (the relative path of each image); "
                         f"found columns {list(frame.columns)} (--path-column names another one)")
    clash = [c for c in RESERVED if c in frame.columns and c != path_column]
    if clash:
        raise ValueError(f"{where}: column(s) {clash} are computed by ingest; rename them")
    frame = frame.copy()
    frame[path_column] = _normalize_paths(frame[path_column], where, path_column)
    dup = frame[path_column].duplicated(keep=False)
    if dup.any():
        rows = (np.flatnonzero(dup) + 2).tolist()[:5]  # +2: 1-based, after the header line
        raise ValueError(f"{where}: column {path_column!r} repeats "
                         f"{frame.loc[dup, path_column].iloc[0]!r} (rows {rows}); expected one row per file")
    frame = frame.set_index(path_column)
    frame.index.name = "path"
    if "group_id" in frame.columns:
        frame["group_id"] = frame["group_id"].astype("string")
    if "timestamp" in frame.columns:
        frame["timestamp"] = parse_times(frame["timestamp"], f"{where}: column 'timestamp'")
    names, sizes = _factors(frame, where)
    return Metadata(ref, frame, names, sizes)


def _parse(data: bytes, name: str, ref: str, path_column: str) -> pd.DataFrame:
    lower = name.lower()
    try:
        if lower.endswith(".csv"):
            return pd.read_csv(io.BytesIO(data), dtype={path_column: str})
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # any parser failure is bad input, named as such
        raise ValueError(f"--metadata {ref}: cannot be read ({type(e).__name__}: {e})") from None
    raise ValueError(f"--metadata {ref}: expected a .csv or .parquet file")


def _normalize_paths(paths: pd.Series, where: str, column: str) -> pd.Series:
    if paths.isna().any():
        row = int(np.flatnonzero(paths.isna())[0]) + 2
        raise ValueError(f"{where}: column {column!r} is empty in row {row}")
    out = []
    for row, raw in enumerate(paths.astype(str), start=2):
        text = raw.strip().replace("\\", "/")
        while text.startswith("./"):
            text = text[2:]
        path = PurePosixPath(text)
        if not text or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
            raise ValueError(f"{where}: column {column!r} row {row} is {raw!r}; expected a path "
                             "relative to the source folder or prefix")
        out.append(path.as_posix())
    return pd.Series(out, index=paths.index)


def parse_times(values: pd.Series, where: str) -> pd.Series:
    """Numbers stay numbers; text is read as dates (UTC). Unreadable values are an error."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return values if not pd.api.types.is_datetime64_any_dtype(values) else _utc(values)
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna()
    if bad.any():
        raise ValueError(f"{where}: {values[bad].iloc[0]!r} (row {int(np.flatnonzero(bad)[0]) + 2}) "
                         "is not a date/time; expected ISO 8601 text or a number")
    return parsed


def _utc(values: pd.Series) -> pd.Series:
    return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")


def _factors(frame: pd.DataFrame, where: str) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    names = tuple(c[len(FACTOR_PREFIX):] for c in frame.columns if c.startswith(FACTOR_PREFIX))
    sizes: list[int | None] = []
    for name in names:
        column = f"{FACTOR_PREFIX}{name}"
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = (values.isna() & frame[column].notna()) | (values.notna() & (values % 1 != 0))
        if bad.any():
            raise ValueError(f"{where}: column {column!r} has {frame[column][bad].iloc[0]!r}; "
                             "factor columns must hold integers")
        frame[column] = values.astype("Int64")
        ok = values.notna().all() and (values >= 0).all()
        sizes.append(int(values.max()) + 1 if ok and len(values) else None)
    known = [size for size in sizes if size is not None]
    return names, (tuple(known) if names and len(known) == len(sizes) else None)
