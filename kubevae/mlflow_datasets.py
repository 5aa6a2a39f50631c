"""MLflow dataset tracking for kubevae dataset folders: what the UI's Dataset column and the
run inputs show.

A dataset folder (kubevae.data.dataset: the ingested dataset or one split) becomes an
`mlflow.data` Dataset that carries no pixels, only what identifies and describes them:
- name:    the card's name ("sprites (...)", a split gets " [train]" etc.)
- digest:  the first 16 hex digits of the folder's content sha256 (MLflow keeps at most 36
           characters; the profile has the full hash), so the same images show the same digest
           in every run that read them;
- source:  where the images came from: the ingest source URI (s3://, a folder) for the ingested
           dataset, the split folder's URI for a split. `builtin://` and `minio://` URIs have no
           MLflow source type, so they are logged as a `kubevae` source that keeps the URI;
- schema:  the image tensor (uint8 N x H x W x C) and the generative factors when there are any;
- profile: the card (counts, license, quarantine counts, the split's leakage verdict).

Each run logs the datasets it read, with MLflow's context tag: ingest -> "ingested", split ->
the ingested dataset as "source" and each split as "train" / "validation" / "test", a training
run (and every tuning trial) -> "training" and "validation", evaluate and gate -> "evaluation".
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.dataset import Dataset as MlflowDataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source, resolve_dataset_source
from mlflow.data.schema import TensorDatasetSchema
from mlflow.types.schema import Schema, TensorSpec

from kubevae.data.dataset import INFO_FILE, SPLITS
from kubevae.storage import read_json

DIGEST_CHARS = 16
CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}
SPLIT_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # how the split run logs them
LEAKAGE_REPORT = "leakage_report.json"


class KubevaeDatasetSource(DatasetSource):
    """A source URI MLflow has no type for (builtin://sprites?n=..., minio://bucket/prefix)."""

    def __init__(self, uri: str):
        self._uri = uri

    @property
    def uri(self) -> str:
        return self._uri

    @staticmethod
    def _get_source_type() -> str:
        return "kubevae"

    def load(self, **kwargs) -> str:
        return self._uri

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith(("builtin://", "minio://"))

    @classmethod
    def _resolve(cls, raw_source: Any) -> KubevaeDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self._uri}

    @classmethod
    def from_dict(cls, source_dict: dict[str, Any]) -> KubevaeDatasetSource:
        return cls(source_dict["uri"])


register_dataset_source(KubevaeDatasetSource)  # type: ignore[arg-type]  # MLflow registers classes


class ImageFolderDataset(MlflowDataset):
    """One kubevae dataset folder as MLflow sees it (metadata only; see the module doc)."""

    def __init__(self, source: DatasetSource, name: str, digest: str,
                 schema: TensorDatasetSchema | None, profile: dict[str, Any]):
        self._schema, self._profile = schema, profile
        super().__init__(source=source, name=name, digest=digest)

    def _compute_digest(self) -> str:  # always given: the folder's content hash
        return self._digest

    @property
    def schema(self) -> TensorDatasetSchema | None:
        return self._schema

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self._profile, default=str)
        if self._schema is not None:
            config["schema"] = json.dumps(self._schema.to_dict())
        return config


def source_for(uri: str | Path) -> DatasetSource:
    text = str(uri)
    if KubevaeDatasetSource._can_resolve(text):
        return KubevaeDatasetSource(text)
    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
            warnings.simplefilter("ignore")
            return resolve_dataset_source(text)
    except Exception:  # a scheme MLflow does not know: keep the URI as it is
        return KubevaeDatasetSource(text)


def from_folder(path: str | Path, *, source_uri: str | None = None,
                extra_profile: dict[str, Any] | None = None) -> ImageFolderDataset:
    """The MLflow dataset of a dataset folder; `source_uri` defaults to the card's source (the
    ingested dataset) or the folder itself (a split)."""
    path = Path(path)
    info = read_json(path / INFO_FILE)
    card = dict(info.get("card") or {})
    sha = info.get("content_sha256") or ""
    if not sha:
        raise ValueError(f"{path / INFO_FILE}: field 'content_sha256' is missing; the dataset "
                         f"cannot be identified")
    card_file = path / "card.json"  # the ingest card: counts and quarantine reasons
    full_card = read_json(card_file) if card_file.is_file() else {}
    profile: dict[str, Any] = {
        "num_items": info.get("num_items"), "image_shape": info.get("image_shape"),
        "content_sha256": sha, **_card_profile(card, full_card), **(extra_profile or {})}
    if info.get("factor_names"):
        profile["factors"] = dict(zip(info["factor_names"], info.get("factor_sizes") or [], strict=False))
    source = source_uri or (card.get("source") if "split" not in card else None) or str(path.resolve())
    return ImageFolderDataset(source_for(source), name=str(card.get("name") or path.name),
                              digest=sha[:DIGEST_CHARS], schema=_schema(info), profile=profile)


def split_datasets(split_dir: str | Path, *, split_uri: str | None = None) -> dict[str, ImageFolderDataset]:
    """{split name: dataset} for the splits present in a split folder, each profile with the
    split's leakage verdict."""
    split_dir = Path(split_dir)
    verdict = leakage_verdict(split_dir)
    out = {}
    for name in SPLITS:
        if (split_dir / name / INFO_FILE).is_file():
            uri = f"{split_uri.rstrip('/')}/{name}" if split_uri else None
            out[name] = from_folder(split_dir / name, source_uri=uri,
                                    extra_profile={"split": name, **verdict})
    return out


def leakage_verdict(split_dir: str | Path) -> dict[str, Any]:
    """{"leakage_check": "PASSED"|"FAILED", "cross_split": {...}} from leakage_report.json, or {}."""
    path = Path(split_dir) / LEAKAGE_REPORT
    if not path.is_file():
        return {}
    report = read_json(path)
    return {"leakage_check": "PASSED" if report.get("passed") else "FAILED",
            "cross_split": report.get("cross_split", {})}


def log_datasets(tracker, datasets: Mapping[str, tuple[MlflowDataset, str]]) -> None:
    """Log {key: (dataset, context)} as inputs of the tracker's run (no-op when tracking is off)."""
    if not tracker.enabled or not datasets:
        return
    import mlflow

    items = list(datasets.values())
    mlflow.log_inputs(datasets=[d for d, _ in items], contexts=[c for _, c in items],
                      tags_list=[None] * len(items))


# The entry points below follow tracking's policy: a failure warns and the step goes on.

def log_ingested(tracker, dataset_dir: str | Path, source_uri: str) -> None:
    tracker.call("log_inputs", lambda: log_datasets(
        tracker, {"ingested": (from_folder(dataset_dir, source_uri=source_uri), "ingested")}))


def log_split_outputs(tracker, split_dir: str | Path, *, parent_dir: str | Path | None = None,
                      parent_source: str | None = None, split_uri: str | None = None) -> None:
    """The split run: the dataset it split ("source") and each split it wrote."""
    def log() -> None:
        found = {name: (ds, SPLIT_CONTEXTS[name])
                 for name, ds in split_datasets(split_dir, split_uri=split_uri).items()}
        if parent_dir is not None:
            found["source"] = (from_folder(parent_dir, source_uri=parent_source), "source")
        log_datasets(tracker, found)
    tracker.call("log_inputs", log)


def log_split_inputs(tracker, split_dir: str | Path, splits: tuple[str, ...], *,
                     split_uri: str | None = None) -> None:
    """A run that read `splits` of a split folder (training: train + val; evaluation: test).
    A plain dataset folder (no splits) is logged as one "training"/"evaluation" input.
    (Called through Tracker.log_data_inputs, which warns and goes on when it fails.)"""
    split_dir = Path(split_dir)
    if (split_dir / INFO_FILE).is_file():
        log_datasets(tracker, {"data": (from_folder(split_dir, source_uri=split_uri),
                                        CONTEXTS[splits[0]])})
        return
    found = split_datasets(split_dir, split_uri=split_uri)
    log_datasets(tracker, {name: (found[name], CONTEXTS[name]) for name in splits if name in found})


def _card_profile(card: dict[str, Any], full_card: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "source", "license", "seen", "accepted", "quarantined", "ignored_files",
            "created", "split", "parent_content_sha256")
    out = {k: card[k] for k in keep if k in card}
    counts = full_card.get("counts") or {}
    out.update({k: v for k, v in counts.items() if k not in out})
    reasons = (full_card.get("report") or {}).get("reasons")
    if reasons:
        out["quarantine_reasons"] = reasons
    return out


def _schema(info: dict[str, Any]) -> TensorDatasetSchema | None:
    shape = info.get("image_shape")
    if not shape:
        return None
    features = Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape), "image")])
    factors = info.get("factor_names") or []
    if not factors:
        return TensorDatasetSchema(features=features)
    return TensorDatasetSchema(features=features, targets=Schema(
        [TensorSpec(np.dtype(np.int64), (-1, len(factors)), "factors")]))
