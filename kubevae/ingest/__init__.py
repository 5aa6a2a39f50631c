"""Ingest: images from a folder, a bucket or built-in data -> one canonical dataset folder.

    report = ingest("s3://bucket/faces", "data/raw", metadata="s3://bucket/faces.csv",
                    image_size=64, max_bad_fraction=0.01)

Every candidate file (an image extension) is fetched, decoded, validated and hashed in parallel
(kubevae.ingest.decode), a bounded number of batches in flight; the accepted pixels are appended
to a scratch file and copied into the dataset's shards in chunks, so memory holds a few batches,
never the dataset (the page cache holds the file). Each rejected file
goes to quarantine.csv with its reason. Counts reconcile (seen = accepted + quarantined) and are
written to the dataset card (card.json, card.md). The step fails only when the quarantined
fraction exceeds `max_bad_fraction` (then nothing is published at `out_dir`; the quarantine list
is written beside it as OUT.quarantine.csv).

Hostile input is quarantined, never fatal: headers are read and bounded before any pixel is
decoded (kubevae.ingest.decode.MAX_PIXELS), any unexpected decode error becomes a row with
reason decode_error, links that leave the source folder or lead nowhere are refused, links to
folders are counted (linked_folders) but not followed, and names that are not UTF-8 are refused.
Whatever else a source holds, ingest finishes: a FIFO, a socket or a device is refused without
being opened (not_a_file), a file larger than any image within the limits is refused on its
size before it is read (a sparse 10 GB file; an object's listed size or Content-Length), a file
or object that changes after the listing is refused (changed) and never followed out of the
source, and every S3 request waits at most S3_TIMEOUT (kubevae.ingest.sources lists the rules).
The metadata file is bounded (kubevae.ingest.metadata.MAX_METADATA_BYTES), not streamed. The
scratch folder (OUT's sibling `.OUT.scratch-...`) is removed at the end, and a killed run's
is removed by the next run (kubevae.storage.remove_stale_temporaries).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubevae.data.dataset import INFO_FILE, SHARD_ITEMS, render_card, write_dataset
from kubevae.ingest.decode import (
    REASONS,
    BatchResult,
    Rejected,
    Target,
    decode_batch,
    infer_target,
    phash_hex,
)
from kubevae.ingest.metadata import MAX_METADATA_BYTES, Metadata, load_metadata
from kubevae.ingest.parallel import ordered_map
from kubevae.ingest.sources import Entry, Source, SourceError, open_source
from kubevae.progress import progress
from kubevae.storage import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
    release_temporary,
    remove_stale_temporaries,
    temporary_dir,
)

__all__ = ["IngestError", "IngestReport", "SourceError", "ingest"]

QUARANTINE_FILE = "quarantine.csv"
ORPHANS_FILE = "metadata_orphans.csv"
CARD_JSON = "card.json"
SAMPLE_FOR_SHAPE = 64


class IngestError(RuntimeError):
    """Too many bad files (or none good): the dataset is not published."""

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message)
        self.report = report


@dataclass
class IngestReport:
    source_uri: str
    out_dir: str
    seen: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    ignored: int
    max_bad_fraction: float
    image_shape: tuple[int, int, int] | None
    metadata: str | None = None
    metadata_rows: int = 0
    metadata_rows_without_file: int = 0
    linked_folders: int = 0   # symbolic links to folders, not followed
    content_sha256: str | None = None
    created: str = ""
    seconds: float = 0.0
    executor: str = ""
    workers: int = 1
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few item ids

    @property
    def bad_fraction(self) -> float:
        return self.quarantined / self.seen if self.seen else 1.0

    def counts(self) -> dict[str, float]:
        """Numbers only (for MLflow metrics and KFP artifact metadata)."""
        out = {"seen": self.seen, "accepted": self.accepted, "quarantined": self.quarantined,
               "ignored_files": self.ignored, "bad_fraction": round(self.bad_fraction, 6),
               "metadata_rows_without_file": self.metadata_rows_without_file,
               "linked_folders": self.linked_folders}
        out.update({f"quarantined_{r}": n for r, n in sorted(self.reasons.items())})
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bad_fraction"] = self.bad_fraction
        return out

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.reasons.items())) or "none"
        lines = [f"ingest {self.source_uri} -> {self.out_dir}",
                 f"seen={self.seen} accepted={self.accepted} quarantined={self.quarantined} "
                 f"(bad fraction {self.bad_fraction:.4f}, limit {self.max_bad_fraction})",
                 f"quarantine reasons: {reasons}",
                 f"ignored non-image files: {self.ignored}; linked folders (not followed): "
                 f"{self.linked_folders}"]
        if self.metadata:
            lines.append(f"metadata {self.metadata}: {self.metadata_rows} rows, "
                         f"{self.metadata_rows_without_file} without a file")
        if self.image_shape:
            lines.append(f"image shape (H, W, C): {tuple(self.image_shape)}; "
                         f"content sha256: {self.content_sha256}")
        lines.append(f"{self.seconds:.1f}s with {self.workers} {self.executor} worker(s)")
        return "\n".join(lines)


def ingest(source_uri: str, out_dir: str | Path, *, metadata: str | None = None,
           path_column: str = "path", image_size: int | None = None, channels: int | None = None,
           max_bad_fraction: float = 0.01, workers: int = 2, executor: str = "auto",
           batch_size: int = 256, license: str | None = None, name: str | None = None,
           max_metadata_bytes: int = MAX_METADATA_BYTES,
           schedule_time: str | None = None) -> IngestReport:
    """Read, validate and hash every image of `source_uri` into the dataset folder `out_dir`."""
    start = time.monotonic()
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction: expected a fraction in [0, 1], got {max_bad_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    source = open_source(source_uri)
    kind = source.parallel if executor == "auto" else executor
    listing = source.list()
    builtin = source.builtin()
    if builtin is not None and metadata:
        raise ValueError(f"--metadata: {source.uri} is built-in and carries its own metadata")
    meta = load_metadata(metadata, path_column=path_column, max_bytes=max_metadata_bytes) \
        if metadata else None
    ignored = [k for k in listing.ignored if not (metadata and _same_file(source, k, metadata))]
    if not listing.entries and not listing.refused:
        raise ValueError(f"--source {source.uri}: the dataset is empty: no image files "
                         f"(.png, .jpg, .jpeg, .bmp, .npy) found; {len(ignored)} other file(s) ignored")

    quarantine = [_q(entry, reason, detail) for entry, reason, detail in listing.refused]
    entries = listing.entries
    orphans = pd.DataFrame(columns=["path"])
    if meta is not None:
        entries, unmatched, orphans = _match_metadata(meta, listing.entries, listing.ignored)
        quarantine += unmatched
    target, prefetched = _target(source, entries, image_size, channels) if entries else (None, {})

    accepted: dict[str, list] = {"item_id": [], "source_uri": [], "sha256": [], "phash": []}
    _parent(out_dir)
    remove_stale_temporaries(out_dir)  # a killed run's scratch folder
    scratch = temporary_dir(out_dir, "scratch-")
    try:
        images = _decode_all(source, entries, target, prefetched, accepted, quarantine, scratch,
                             kind, workers, batch_size) if entries else None
        report = IngestReport(
            source_uri=source.uri, out_dir=str(out_dir),
            seen=len(listing.entries) + len(listing.refused),
            accepted=len(accepted["item_id"]), quarantined=len(quarantine),
            reasons=dict(Counter(q["reason"] for q in quarantine)), ignored=len(ignored),
            max_bad_fraction=max_bad_fraction, image_shape=target.shape if target else None,
            metadata=metadata, metadata_rows=len(meta) if meta is not None else 0,
            metadata_rows_without_file=len(orphans), linked_folders=len(listing.linked_folders),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            executor=kind, workers=workers, examples=_examples(quarantine))
        if report.seen != report.accepted + report.quarantined:  # a bug, never bad input
            raise AssertionError(f"counts do not reconcile: {report.counts()}")
        _check_bad_fraction(report, quarantine, out_dir)
        if images is None:  # a bug, never bad input: _check_bad_fraction refuses a run that accepted nothing
            raise AssertionError(f"no accepted images to write: {report.counts()}")
        manifest, factor_names, factor_sizes = _manifest(accepted, builtin, meta)
        card = _card(report, source, builtin, license, name, target, factor_names)
        if schedule_time:  # a recurring run's schedule time: tells the Monday runs apart
            card["schedule_time"] = schedule_time
        with atomic_dir(out_dir) as tmp:
            write_dataset(tmp, _read_chunks(images, report.accepted, target.shape), manifest, factor_names=factor_names,
                          factor_sizes=factor_sizes, card=card, image_shape=target.shape)
            info = read_json(tmp / INFO_FILE)
            report.content_sha256 = info["content_sha256"]
            _write_quarantine(tmp / QUARANTINE_FILE, quarantine)
            if meta is not None:
                orphans.to_csv(tmp / ORPHANS_FILE, index=False)
            report.seconds = round(time.monotonic() - start, 2)
            atomic_write_json(tmp / CARD_JSON, _card_json(report, card, info))
            atomic_write_text(tmp / "card.md", _card_markdown(report, info))
        return report
    finally:
        release_temporary(scratch)


def _parent(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent


def _same_file(source: Source, key: str, metadata: str) -> bool:
    root = getattr(source, "root", None)
    # realpath, not Path.resolve: on Python 3.11 that raises on a symbolic link loop
    return root is not None and os.path.realpath(root / key) == \
        os.path.realpath(Path(metadata).expanduser())


def _match_metadata(meta: Metadata, entries: list[Entry], ignored: list[str]):
    """Files without a row are quarantined (not decoded); rows without a file are reported."""
    rows = set(meta.frame.index)
    keep = [e for e in entries if e.key in rows]
    quarantine = [_q(e, "no_metadata_row", f"no row in {meta.source}") for e in entries
                  if e.key not in rows]
    files = {e.key for e in entries}
    not_images = set(ignored)
    orphans = pd.DataFrame({"path": [p for p in meta.frame.index if p not in files]})
    orphans["detail"] = ["names a file that is not an image (.png .jpg .jpeg .bmp .npy)"
                         if p in not_images else "no such file in the source" for p in orphans["path"]]
    return keep, quarantine, orphans


def _q(entry: Entry, reason: str, detail: str) -> dict[str, str]:
    return {"item_id": entry.key, "source_uri": entry.uri, "reason": reason, "detail": detail}


def _target(source: Source, entries: list[Entry], image_size, channels):
    """The target shape, inferred from the first files; their payloads are kept so that the
    main pass does not fetch them twice."""
    sample = [e.key for e in entries[:SAMPLE_FOR_SHAPE]]
    payloads = source.fetch(sample)
    target = infer_target(list(zip(payloads, sample, strict=True)), image_size, channels,
                          where=f"--source {source.uri}")
    return target, dict(zip(sample, payloads, strict=True))


def _work(source: Source, target: Target, task: tuple[list[str], dict]) -> BatchResult:
    """One task in a worker: fetch (what was not fetched already) and decode a batch. Module
    level, so that processes can run it."""
    keys, prefetched = task
    missing = [k for k in keys if k not in prefetched]
    fetched: dict[str, bytes | np.ndarray | Rejected] = \
        dict(zip(missing, source.fetch(missing), strict=True)) if missing else {}
    payloads = [prefetched[k] if k in prefetched else fetched[k] for k in keys]
    return decode_batch(payloads, keys, target)


def _decode_all(source: Source, entries: list[Entry], target: Target, prefetched: dict, accepted,
                quarantine, scratch: Path, kind: str, workers: int, batch_size: int) -> Path:
    """Decode everything; accepted pixels are appended to a raw scratch file (written, not
    memory-mapped, so that they sit in the page cache and not in this process's memory)."""
    raw = scratch / "images.u8"
    batches = [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
    if len(batches) == 1:
        workers = 1  # starting processes would cost more than the work
    tasks = (([e.key for e in b], {e.key: prefetched.pop(e.key) for e in b if e.key in prefetched})
             for b in batches)
    results = ordered_map(partial(_work, source, target), tasks, workers=workers, kind=kind)
    with open(raw, "wb") as out:
        for batch, result in progress(zip(batches, results, strict=True), total=len(batches),
                                      desc=f"ingest ({batch_size} files/batch)"):
            np.ascontiguousarray(result.images).tofile(out)
            for position, sha, value in zip(result.accepted, result.sha256, phash_hex(result.phash), strict=True):
                accepted["item_id"].append(batch[position].key)
                accepted["source_uri"].append(batch[position].uri)
                accepted["sha256"].append(sha)
                accepted["phash"].append(value)
            quarantine.extend(_q(batch[p], reason, detail) for p, reason, detail in result.rejected)
    return raw


def _read_chunks(raw: Path, count: int, shape: tuple[int, int, int]):
    """The accepted images back from the scratch file, one shard (SHARD_ITEMS images) at a time,
    each a read-only memory map of its own part of the file: a dataset of up to SHARD_ITEMS
    images is one shard, and at most one shard's pages are mapped at once."""
    per_image = int(np.prod(shape))
    for start in range(0, count, SHARD_ITEMS):
        n = min(SHARD_ITEMS, count - start)
        yield np.memmap(raw, dtype=np.uint8, mode="r", offset=start * per_image, shape=(n, *shape))


def _check_bad_fraction(report: IngestReport, quarantine, out_dir: Path) -> None:
    if report.accepted and report.bad_fraction <= report.max_bad_fraction:
        return
    path = out_dir.with_name(out_dir.name + ".quarantine.csv")
    _write_quarantine(path, quarantine)
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(report.reasons.items()))
    what = ("no file was accepted" if not report.accepted else
            f"{report.quarantined} of {report.seen} files quarantined (bad fraction "
            f"{report.bad_fraction:.4f} > max_bad_fraction {report.max_bad_fraction})")
    raise IngestError(f"{report.source_uri}: {what}; reasons: {reasons}; the list is in {path}",
                      report)


def _write_quarantine(path: Path, quarantine: list[dict[str, str]]) -> None:
    frame = pd.DataFrame(quarantine, columns=["item_id", "source_uri", "reason", "detail"])
    atomic_write_text(path, frame.to_csv(index=False))


def _examples(quarantine: list[dict[str, str]], n: int = 3) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q in quarantine:
        if len(out.setdefault(q["reason"], [])) < n:
            out[q["reason"]].append(q["item_id"])
    return out


def _manifest(accepted, builtin, meta: Metadata | None):
    manifest = pd.DataFrame(accepted)
    names: tuple[str, ...] = ()
    sizes = None
    extra = None
    if builtin is not None:
        extra, names, sizes = builtin.metadata.set_index("item_id"), builtin.factor_names, builtin.factor_sizes
    elif meta is not None:
        extra, names, sizes = meta.frame, meta.factor_names, meta.factor_sizes
    if extra is not None:
        extra = extra.drop(columns=[c for c in ("sha256", "source_uri") if c in extra.columns])
        joined = extra.reindex(manifest["item_id"]).reset_index(drop=True)
        manifest = pd.concat([manifest, joined], axis=1)
    return manifest, tuple(names), tuple(sizes) if sizes else None


def _card(report: IngestReport, source: Source, builtin, license, name, target: Target,
          factor_names) -> dict[str, Any]:
    card: dict[str, Any] = {"name": name or f"ingested from {source.uri}", "source": source.uri,
                            "created": report.created, "license": license or "not given",
                            "seen": report.seen, "accepted": report.accepted,
                            "quarantined": report.quarantined, "ignored_files": report.ignored,
                            "linked_folders": report.linked_folders}
    if builtin is not None:
        card.update(builtin.card)
        card["name"] = name or builtin.card.get("name")
        card["license"] = license or builtin.card.get("license")
    if report.metadata:
        card["metadata"] = report.metadata
    if target.resize:
        card["resized_to"] = target.size
    if target.convert:
        card["converted_to_channels"] = target.channels
    return card


def _card_json(report: IngestReport, card: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    return {"card": card, "counts": report.counts(), "report": report.to_dict(),
            "image_shape": info["image_shape"], "num_items": info["num_items"],
            "content_sha256": info["content_sha256"], "factor_names": info["factor_names"],
            "factor_sizes": info["factor_sizes"], "quarantine_file": QUARANTINE_FILE,
            "reasons_known": list(REASONS)}


def _card_markdown(report: IngestReport, info: dict[str, Any]) -> str:
    lines = [render_card(info).rstrip(), "", "## Counts", "",
             "| seen | accepted | quarantined | bad fraction | limit |", "|---|---|---|---|---|",
             f"| {report.seen} | {report.accepted} | {report.quarantined} | "
             f"{report.bad_fraction:.4f} | {report.max_bad_fraction} |", "",
             f"seen = accepted + quarantined: {report.seen} = {report.accepted} + {report.quarantined}. "
             f"{report.ignored} non-image file(s) ignored; {report.linked_folders} linked "
             "folder(s) not followed.", ""]
    if report.reasons:
        lines += ["## Quarantine (quarantine.csv)", "", "| reason | files | examples |", "|---|---|---|"]
        for reason, n in sorted(report.reasons.items()):
            examples = ", ".join(f"`{_markdown_safe(e)}`" for e in report.examples.get(reason, []))
            lines.append(f"| {reason} | {n} | {examples} |")
        lines.append("")
    if report.metadata:
        lines += ["## Metadata", "", f"{report.metadata}: {report.metadata_rows} rows, "
                  f"{report.metadata_rows_without_file} without a file ({ORPHANS_FILE}).", ""]
    return "\n".join(lines)


def _markdown_safe(name: str) -> str:
    """An item id as one table cell: control characters escaped (a name may hold a newline or
    a terminal escape), `|` and backquotes quoted."""
    return json.dumps(name, ensure_ascii=False)[1:-1].replace("|", "\\|").replace("`", "\\`")
