"""Benchmark: near-duplicate grouping at 100,000 and 1,000,000 images on 2 cores.

    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind digits --n 100000
    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind digits --n 1000000 --data-cache /tmp/kubevae-bench-dedup
    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind textures --n 100000 --data-cache /tmp/kubevae-bench-dedup
    nice -n 10 .venv/bin/python benchmarks/dedup.py --compare-search 50000   # split vs faiss vs numpy
    nice -n 10 .venv/bin/python benchmarks/dedup.py --ingest --n 100000      # ingest + grouping

Data (made in memory, not timed): `digits` are 28x28 digit-like images (scikit-learn's 1,797
real digits, each drawn many times under a random rotation, scale, shear, stroke weight and
position; at 1,000,000 draws, 556 of each digit, some pairs of draws land within a copy's
tolerance of each other and count as false merges: draws of one digit are geometric edits of
each other, the very kind the aligned stage is built to find); `textures` are 64x64 colour
textures (kubevae.ingest.synthetic.textures' recipe, made by textures_fast). 2% of the items
are planted copies of others, of every kind in kubevae.split.planted.KINDS in turn (23 kinds:
shifts, JPEG 70 and 30, brightness, contrast, noise, resampling, blur, sharpening, re-crops,
rotations, aspect changes, letterboxes, watermarks, captions, mirror images and combinations;
mirror images count as copies, the split's default). Cached data (--data-cache, --cache) is
keyed by a hash of planted.py, so copies of older kinds are not reused.
Timed in a fresh process (its peak RSS is its own): kubevae.split.grouping.group_items, i.e.
the detector (kubevae.split.neardup.find_near_duplicates) and union-find. Printed (a table
after the JSON): per copy kind, found/planted (a copy is found when it ends in its source's
group) beside the calibration's own per-kind recall on its sample; false merges (verified pairs
joining two different originals, the items in groups holding more than one original, the
largest group); seconds by phase: calibration (neardup.calibrate, timed by wrapping it),
stage-1 search and verification, aligned search and verification (NearDuplicates.search),
preparation (neardup.prepare: working images, statistics, detail, descriptors; the whole view's
index) and outside the detector; peak RSS; the load average at the start and end of the timed part.

--compare-search N times the candidate search on N digit descriptors: the split's (a matrix
product per cell of its inverted file) against faiss's IndexIVFFlat over the same cells, and
both against an exact numpy search (blocked matrix products + top-k), with their recall.
--ingest writes textures and their planted copies as PNG files and times `kubevae ingest` plus
grouping (the 60 s goal), with the same per-kind recall and false merges.

The figures, with machine and date: docs/split.md, "Near-duplicate grouping at scale".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000
PLANTED_FRACTION = 0.02


def generate(cache: Path, n: int, size: int, workers: int) -> Path:
    """n image files under cache/n{n}-s{size}/ (idempotent): distinct textures + planted copies."""
    root = cache / f"n{n}-s{size}-v3-{_kinds_version()}"  # v3: copies of every planted kind
    done = root / "DONE.json"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    planted = int(n * PLANTED_FRACTION)
    base = n - planted
    chunks = [(root, start, min(base, start + PER_FOLDER), size) for start in range(0, base, PER_FOLDER)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_textures, chunks))
    rng = np.random.default_rng(1)
    sources = rng.choice(base, planted, replace=False)
    planted_rows = []
    with ProcessPoolExecutor(workers) as pool:
        parts = np.array_split(np.arange(planted), max(1, planted // 500))
        for rows in pool.map(_write_planted, [(root, sources[p], p, size) for p in parts]):
            planted_rows += rows
    (root / "planted.json").write_text(json.dumps(planted_rows))
    done.write_text(json.dumps({"n": n, "size": size, "planted": planted}))
    return root


def _texture_name(i: int) -> str:
    return f"part-{i // PER_FOLDER:04d}/img-{i:06d}.png"


def _write_textures(task) -> None:
    from PIL import Image

    from kubevae.ingest.synthetic import textures

    root, start, stop, size = task
    images = textures(stop - start, size=size, seed=start)
    for i, image in zip(range(start, stop), images, strict=False):
        path = root / _texture_name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, compress_level=1)


def _write_planted(task) -> list[dict]:
    """Copies of the kinds in kubevae.split.planted, in turn, each saved as PNG (the JPEG kinds
    hold their JPEG round trip)."""
    from PIL import Image

    from kubevae.split import planted

    root, sources, numbers, size = task
    folder = root / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    kinds = list(planted.KINDS)
    rows = []
    for source, number in zip(sources, numbers, strict=False):
        image = np.asarray(Image.open(root / _texture_name(int(source))))
        kind = kinds[int(number) % len(kinds)]
        name = f"planted/p-{int(number):06d}-{kind.replace('/', '-')}.png"
        Image.fromarray(planted.make_copy(image, kind, seed=int(number))).save(root / name, compress_level=1)
        rows.append({"file": name, "source": _texture_name(int(source)), "kind": kind})
    return rows


def _kinds_version() -> str:
    """A short hash of kubevae/split/planted.py: a cache made with other copy kinds is not reused."""
    import hashlib

    from kubevae.split import planted

    return hashlib.sha256(Path(planted.__file__).read_bytes()).hexdigest()[:8]


class PeakMemory:
    """Peak RSS summed over this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.process, self.every, self.peak, self.peak_main = psutil.Process(), every, 0, 0
        self.peak_private = 0   # RSS less file-backed pages (a memory-mapped data set's cache)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                info = self.process.memory_info()
                main = info.rss
                self.peak_private = max(self.peak_private, info.rss - info.shared)
                total = main + sum(c.memory_info().rss for c in self.process.children(recursive=True))
            except psutil.Error:
                continue
            self.peak, self.peak_main = max(self.peak, total), max(self.peak_main, main)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def digit_like(n: int, seed: int, chunk: int = 16384) -> np.ndarray:
    """n distinct 28x28 digit-like images: real 8x8 digits under random affine warps."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    base = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
    base = F.pad(F.interpolate(base, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    out = np.empty((n, 28, 28, 1), np.uint8)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        pick = torch.from_numpy(rng.integers(0, len(base), k))
        angle = torch.from_numpy(rng.uniform(-0.3, 0.3, k).astype(np.float32))
        scale = torch.from_numpy(rng.uniform(0.85, 1.15, (k, 2)).astype(np.float32))
        shear = torch.from_numpy(rng.uniform(-0.25, 0.25, k).astype(np.float32))
        move = torch.from_numpy(rng.uniform(-0.12, 0.12, (k, 2)).astype(np.float32))
        theta = torch.zeros(k, 2, 3)
        theta[:, 0, 0] = torch.cos(angle) * scale[:, 0]
        theta[:, 0, 1] = -torch.sin(angle) + shear
        theta[:, 1, 0] = torch.sin(angle)
        theta[:, 1, 1] = torch.cos(angle) * scale[:, 1]
        theta[:, :, 2] = move
        grid = F.affine_grid(theta, (k, 1, 28, 28), align_corners=False)
        warped = F.grid_sample(base[pick], grid, align_corners=False)
        weight = torch.from_numpy(rng.uniform(0.5, 1.6, (k, 1, 1, 1)).astype(np.float32))
        strokes = (warped.clamp(0, 1) ** weight) * 255
        out[start:start + k] = strokes.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def textures_fast(n: int, size: int, seed: int) -> np.ndarray:
    """kubevae.ingest.synthetic.textures' recipe (six plane waves of up to 5 cycles, three
    discs, a base level, each with its own colour), built as one batched matrix product of ten
    grey basis images (each wave from two 1-D sines: sin(a + b) = sin a cos b + cos a sin b) by
    their colours: the same kind of image, several times faster to make, for the 1,000,000-image
    runs."""
    import torch

    rng = np.random.default_rng(seed)
    grid = torch.from_numpy((np.arange(size, dtype=np.float32) + 0.5) / size)
    f = lambda *shape: torch.from_numpy(rng.uniform(*shape).astype(np.float32))  # noqa: E731
    fx, fy, phase = f(-5.0, 5.0, (n, 6, 1)), f(-5.0, 5.0, (n, 6, 1)), f(0, 2 * np.pi, (n, 6, 1))
    ax, ay = 2 * np.pi * fx * grid + phase, 2 * np.pi * fy * grid
    waves = (torch.sin(ax)[:, :, None, :] * torch.cos(ay)[:, :, :, None]
             + torch.cos(ax)[:, :, None, :] * torch.sin(ay)[:, :, :, None])
    cx, cy, radius = f(0.1, 0.9, (n, 3, 1, 1)), f(0.1, 0.9, (n, 3, 1, 1)), f(0.08, 0.3, (n, 3, 1, 1))
    discs = ((grid[None, None, None, :] - cx) ** 2 + (grid[None, None, :, None] - cy) ** 2
             < radius ** 2).float()
    basis = torch.cat([waves, discs, torch.ones(n, 1, size, size)], 1).flatten(2)  # n x 10 x px
    colours = torch.cat([f(-60, 60, (n, 3, 6)), f(-90, 90, (n, 3, 3)), f(70, 185, (n, 3, 1))], 2)
    field = torch.bmm(colours, basis).view(n, 3, size, size).permute(0, 2, 3, 1)
    return field.clamp(0, 255).to(torch.uint8).numpy()


def make_data(kind: str, n: int, seed: int = 0, cache: str | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """images (originals then planted copies), family (source index per item), copy kinds.
    With `cache`, kept there as .npy files (the images memory-mapped) and reused."""
    from kubevae.split import planted

    folder = Path(cache) / f"data-{kind}-n{n}-s{seed}-k{_kinds_version()}" if cache else None
    if folder is not None and (folder / "DONE").is_file():
        return (np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "family.npy"),
                json.loads((folder / "kinds.json").read_text()))
    copies = int(n * PLANTED_FRACTION)
    originals = n - copies
    shape = (n, 28, 28, 1) if kind == "digits" else (n, 64, 64, 3)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, shape)
    else:
        images = np.empty(shape, np.uint8)
    chunk = 16384
    for start in range(0, originals, chunk):
        stop = min(originals, start + chunk)
        images[start:stop] = digit_like(stop - start, seed + start) if kind == "digits" \
            else textures_fast(stop - start, 64, seed + start)
    rng = np.random.default_rng(seed + 1)
    sources = rng.choice(originals, copies, replace=False)
    kinds = list(planted.KINDS)
    labels = []
    for k, source in enumerate(sources):
        label = kinds[k % len(kinds)]
        images[originals + k] = planted.make_copy(images[source], label, seed=k)
        labels.append(label)
    family = np.concatenate([np.arange(originals), sources])
    if folder is not None:
        images.flush()
        np.save(folder / "family.npy", family)
        (folder / "kinds.json").write_text(json.dumps(labels))
        (folder / "DONE").write_text("")
    return images, family, labels


class PhaseClock:
    """Seconds in the detector's steps, timed by wrapping them while in use; only the outermost
    wrapped call counts (the working images that calibrate makes are calibration). The searches
    and verifications come from NearDuplicates.search; this adds the calibration, which it does
    not report, and what the preparation before it is made of."""

    STEPS = (("calibration", None, "calibrate"), ("prepare", None, "prepare"),
             ("index", "_Searcher", "__init__"),
             ("stage1_search", None, "candidate_pairs"), ("aligned_search", "AlignedViews", "mutual_pairs"))

    def __enter__(self):
        from kubevae.split import neardup

        self.seconds: dict[str, float] = {}
        self._saved, self._depth = [], 0
        for label, owner_name, name in self.STEPS:
            owner = neardup if owner_name is None else getattr(neardup, owner_name)
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._timed(label, original))
        return self

    def _timed(self, label, original):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.monotonic() - start
        return timed

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def false_merges_by_stage(images: np.ndarray, pairs: np.ndarray, threshold: float) -> dict:
    """Which stage merged the given pairs (after the timed part): stage 1 when their shift
    similarity (or the near-blank rule) reaches the threshold, else the aligned stage."""
    from kubevae.split import neardup

    if not len(pairs):
        return {"stage1": 0, "aligned": 0}
    work = neardup.working_images(np.asarray(images[np.sort(np.unique(pairs))]))
    rows = np.searchsorted(np.sort(np.unique(pairs)), pairs)
    means, stds = neardup._statistics(work)
    stage1 = neardup.similarity(work, rows, means, stds, neardup.detail(work)) >= threshold
    return {"stage1": int(stage1.sum()), "aligned": int((~stage1).sum())}


def _cpu_seconds(since: os.times_result) -> float:
    """CPU seconds (user + system, this process and its finished children, e.g. ingest's
    workers) since `since`: on a shared machine, the load-independent side of a wall time."""
    now = os.times()
    return sum(getattr(now, f) - getattr(since, f) for f in ("user", "system", "children_user", "children_system"))


def summarise(grouping, family: np.ndarray, copy_rows: np.ndarray, copy_kinds: list[str],
              grouping_s: float, clock: dict[str, float], images: np.ndarray) -> dict:
    """Recall per copy kind, false merges and seconds by phase of one grouping. family: per
    item, the row of its original (its own row for an original); copy_rows: the planted copies."""
    labels, near = grouping.labels, grouping.near
    found = labels[copy_rows] == labels[family[copy_rows]]
    calibrated = near.calibration.get("per_kind", {})
    recall = {}
    for kind in dict.fromkeys(copy_kinds):
        mine = np.asarray(copy_kinds) == kind
        c = calibrated.get(kind, {})
        recall[kind] = {"found": int(found[mine].sum()), "planted": int(mine.sum()),
                        "recall": round(float(found[mine].mean()), 4),
                        "calibration_found": c.get("found"), "calibration_planted": c.get("planted")}
    pairs = near.pairs
    wrong = family[pairs[:, 0]] != family[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    false_pairs = int(wrong.sum())
    frame = pd.DataFrame({"label": labels, "family": family})
    families_per_group = frame.groupby("label")["family"].nunique()
    sizes = frame.groupby("label").size()
    search = near.search
    aligned_verify = float(search.get("aligned_seconds", 0.0))
    phases = {"calibration": clock.get("calibration", 0.0),
              "stage1_search": float(search.get("search_seconds", 0.0)),
              "stage1_verify": float(search.get("verify_seconds", 0.0)) - aligned_verify,
              "aligned_search": float(search.get("aligned_search_seconds", 0.0)),
              "aligned_verify": aligned_verify}
    # Working images, their statistics, detail and descriptors (prepare) and the whole view's
    # index before the calibration (the centre's is built in it); outside find_near_duplicates: the sha256 relation and union-find.
    phases["preparation"] = float(search.get("seconds", grouping_s)) - sum(phases.values())
    parts = ("prepare", "index")
    preparation = {k: round(clock.get(k, 0.0), 2) for k in parts}
    preparation["rest"] = round(phases["preparation"] - sum(preparation.values()), 2)
    phases["outside_detector"] = grouping_s - float(search.get("seconds", grouping_s))
    return {"threshold": near.threshold, "threshold_source": near.threshold_source,
            "aligned_threshold": near.aligned_threshold,
            "aligned_off": near.calibration.get("aligned_off"),
            "aligned_coarse_gate": near.calibration.get("aligned_coarse_gate"),
            "planted_copies": len(copy_rows), "copies_found": int(found.sum()),
            "recall_by_kind": recall, "false_merge_pairs": false_pairs,
            "false_merge_pairs_by_stage": false_merges_by_stage(images, pairs[wrong], near.threshold),
            "items_in_groups_with_several_originals": int(sizes[families_per_group > 1].sum()),
            "groups_with_several_originals": int((families_per_group > 1).sum()),
            "largest_group": int(sizes.max()), "largest_group_fraction": round(float(sizes.max()) / len(labels), 5),
            "calibration_false_merges": near.calibration.get("false_merges"),
            "seconds_by_phase": {k: round(v, 2) for k, v in phases.items()},
            "preparation_seconds": preparation,
            "clock_seconds": {k: round(v, 2) for k, v in clock.items()},
            "search": search}


def measure(kind: str, n: int, threshold: float | None, cache: str | None) -> dict:
    """The timed part, in its own process: group_items on the made data."""
    from kubevae.split.grouping import group_items

    made = time.monotonic()
    images, family, kinds = make_data(kind, n, cache=cache)
    made = time.monotonic() - made
    manifest = pd.DataFrame({"sha256": [f"s{i}" for i in range(n)]})
    load_before = os.getloadavg()
    with PeakMemory() as memory, PhaseClock() as clock:
        start, cpu = time.monotonic(), os.times()
        grouping = group_items(manifest, images, group_column=None, threshold=threshold)
        seconds, cpu = time.monotonic() - start, _cpu_seconds(cpu)
    originals = n - len(kinds)
    return {"kind": kind, "n": n, "image_shape": list(images.shape[1:]), "data_made_s": round(made, 1),
            "grouping_s": round(seconds, 2), "grouping_cpu_s": round(cpu, 1),
            "peak_rss_mib": round(memory.peak / 2**20),
            "peak_private_mib": round(memory.peak_private / 2**20),
            "images_mib": round(images.nbytes / 2**20),
            **summarise(grouping, family, np.arange(originals, n), kinds, seconds, clock.seconds, images),
            "load_average_before": load_before, "load_average": os.getloadavg()}


def compare_search(n: int) -> dict:
    """On the same n digit descriptors, each item's 4 nearest (stage 1's query): the split's search
    (neardup._Searcher: a matrix product per cell) against faiss's IndexIVFFlat over the same
    cells and probes (one query at a time), both against an exact numpy search (blocked matrix
    products + top-k): seconds and recall."""
    import faiss

    from kubevae.split import neardup

    images, _, _ = make_data("digits", n)
    base = neardup.descriptors(neardup.working_images(images))
    k = neardup.VERIFY_PER_ITEM + 1      # what stage 1 asks of it (itself and 3 others)
    start = time.monotonic()
    exact = np.empty((n, k), np.int64)
    for q0 in range(0, n, 2048):
        block = base[q0:q0 + 2048] @ base.T
        top = np.argpartition(-block, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, top, 1), axis=1)
        exact[q0:q0 + 2048] = np.take_along_axis(top, order, 1)
    numpy_s = time.monotonic() - start
    start = time.monotonic()
    searcher = neardup._Searcher(base)
    split_ids = np.concatenate([searcher.search(base[q0:q0 + neardup.QUERY_BLOCK], k, q0)[1]
                                for q0 in range(0, n, neardup.QUERY_BLOCK)])
    split_s = time.monotonic() - start
    result = {"n": n, "k": k, "index": searcher.kind, "numpy_exact_s": round(numpy_s, 2),
              "split_s": round(split_s, 2), "split_recall": _recall(split_ids, exact)}
    if searcher.cells is not None:
        import torch

        faiss.omp_set_num_threads(torch.get_num_threads())    # the threads the split's search has
        start = time.monotonic()
        quantizer = faiss.IndexFlatIP(base.shape[1])
        quantizer.add(searcher.centres)
        index = faiss.IndexIVFFlat(quantizer, base.shape[1], len(searcher.centres), faiss.METRIC_INNER_PRODUCT)
        index.add(base)
        index.nprobe = searcher.nprobe
        _, faiss_ids = index.search(base, k)
        faiss_s = time.monotonic() - start
        result.update({"faiss_ivf_same_cells_s": round(faiss_s, 2),
                       "faiss_ivf_recall": _recall(faiss_ids, exact),
                       "split_speedup_vs_faiss_ivf": round(faiss_s / split_s, 2)})
    return {**result, "split_speedup_vs_numpy": round(numpy_s / split_s, 1), "load_average": os.getloadavg()}


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return round(float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(found, exact, strict=True)])), 4)


def measure_ingest(folder: Path, out: Path, workers: int) -> dict:
    from kubevae.data.dataset import Dataset
    from kubevae.ingest import ingest
    from kubevae.split.grouping import group_items

    load_before = os.getloadavg()
    with PeakMemory() as memory, PhaseClock() as clock:
        start, cpu_start = time.monotonic(), os.times()
        report = ingest(str(folder), out, workers=workers, max_bad_fraction=0.0)
        ingested, cpu_ingested = time.monotonic(), os.times()
        dataset = Dataset.open(out)
        manifest = pd.read_parquet(out / "manifest.parquet")
        grouping = group_items(manifest, dataset.images, group_column=None, threshold=None)
        grouped, cpu_grouping = time.monotonic(), _cpu_seconds(cpu_ingested)
    cpu_ingest = _cpu_seconds(cpu_start) - cpu_grouping
    row = pd.Series(np.arange(len(manifest)), index=manifest["item_id"].to_numpy())
    planted_rows = json.loads((folder / "planted.json").read_text())
    copy_rows = row[[r["file"] for r in planted_rows]].to_numpy()
    family = np.arange(len(manifest))
    family[copy_rows] = row[[r["source"] for r in planted_rows]].to_numpy()
    return {"images": report.accepted, "image_shape": list(dataset.images.shape[1:]),
            "ingest_s": round(ingested - start, 2), "grouping_s": round(grouped - ingested, 2),
            "total_s": round(grouped - start, 2), "ingest_cpu_s": round(cpu_ingest, 1),
            "grouping_cpu_s": round(cpu_grouping, 1), "peak_rss_tree_mib": round(memory.peak / 2**20),
            "peak_rss_main_mib": round(memory.peak_main / 2**20),
            **summarise(grouping, family, copy_rows, [r["kind"] for r in planted_rows],
                        grouped - ingested, clock.seconds, dataset.images),
            "load_average_before": load_before, "load_average": os.getloadavg()}


def text(result: dict) -> str:
    """The figures in a few lines: recall per copy kind, false merges, seconds by phase, memory."""
    shape = "x".join(map(str, result.get("image_shape", [])))
    what = f"ingest + grouping of {result['images']:,} PNG textures" if "ingest_s" in result \
        else f"{result['kind']} n={result['n']:,}"
    lines = [f"{what} ({shape}); threshold {result['threshold']:.4f} ({result['threshold_source']}); "
             f"aligned stage: " + (result["aligned_off"] or f"threshold {result['aligned_threshold']:.4f}"),
             f"{'copy kind':<22}{'found/planted':>15}{'recall':>8}   calibration sample"]
    for kind, r in result["recall_by_kind"].items():
        calib = f"{r['calibration_found']}/{r['calibration_planted']}" if r["calibration_planted"] else "-"
        lines.append(f"{kind:<22}{r['found']:>9}/{r['planted']:<5}{r['recall']:>8.3f}   {calib}")
    lines.append(f"{'all kinds':<22}{result['copies_found']:>9}/{result['planted_copies']:<5}"
                 f"{result['copies_found'] / max(1, result['planted_copies']):>8.3f}")
    stages = result["false_merge_pairs_by_stage"]
    lines.append(f"false merges: {result['false_merge_pairs']} verified pairs join two originals "
                 f"({stages['stage1']} by stage 1, {stages['aligned']} by the aligned stage); "
                 f"{result['items_in_groups_with_several_originals']} items in "
                 f"{result['groups_with_several_originals']} groups holding more than one original; "
                 f"largest group {result['largest_group']}")
    s = result["search"]
    lines.append(f"stage 1: {s.get('candidates', 0):,} candidates, {s.get('verified', 0):,} verified; aligned "
                 f"stage: {s.get('aligned_candidates', 0):,} candidates, {s.get('aligned_verified', 0):,} "
                 f"verified, {s.get('aligned_skipped_over_budget', 0):,} skipped over the budget, "
                 f"{s.get('aligned_merged', 0):,} merged")
    phases = " + ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in result["seconds_by_phase"].items())
    head = f"ingest {result['ingest_s']:.1f} s + " if "ingest_s" in result else ""
    cpu = f"ingest {result['ingest_cpu_s']:.0f} + " if "ingest_cpu_s" in result else ""
    lines.append(f"seconds: {head}grouping {result['grouping_s']:.1f} = {phases} "
                 f"(CPU seconds: {cpu}grouping {result['grouping_cpu_s']:.0f})")
    lines.append("preparation: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                                             for k, v in result["preparation_seconds"].items()))
    rss = result.get("peak_rss_mib", result.get("peak_rss_tree_mib"))
    before = " ".join(f"{x:.2f}" for x in result["load_average_before"])
    after = " ".join(f"{x:.2f}" for x in result["load_average"])
    lines.append(f"peak RSS {rss:,} MiB; load average {before} (start) -> {after} (end)")
    return "\n".join(lines)


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("digits", "textures"), default="digits")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--threshold", type=float, default=None, help="unset: calibrated, as the split does")
    p.add_argument("--compare-search", type=int, default=0)
    p.add_argument("--ingest", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", default="/tmp/kubevae-bench-dedup", help="generated files (--ingest)")
    p.add_argument("--data-cache", default=None,
                   help="keep the made images here (memory-mapped .npy) and reuse them; "
                        "1,000,000 textures take 12 GiB")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "group":
        print(json.dumps(measure(a.kind, a.n, a.threshold, a.data_cache)))
        return 0
    if a.child == "compare":
        print(json.dumps(compare_search(a.compare_search)))
        return 0
    if a.child == "ingest":
        folder = Path(a.cache) / f"n{a.n}-s64-v3-{_kinds_version()}"
        print(json.dumps(measure_ingest(folder, Path(a.cache) / "ingested", a.workers)))
        return 0
    if a.compare_search:
        result = child(["--child", "compare", "--compare-search", str(a.compare_search)])
    elif a.ingest:
        generate(Path(a.cache), a.n, 64, a.workers)
        shutil.rmtree(Path(a.cache) / "ingested", ignore_errors=True)
        result = child(["--child", "ingest", "--n", str(a.n), "--cache", a.cache, "--workers", str(a.workers)])
        shutil.rmtree(Path(a.cache) / "ingested", ignore_errors=True)
    else:
        extra = ["--threshold", str(a.threshold)] if a.threshold is not None else []
        extra += ["--data-cache", a.data_cache] if a.data_cache else []
        result = child(["--child", "group", "--kind", a.kind, "--n", str(a.n), *extra])
    print(json.dumps(result, indent=2))
    if "recall_by_kind" in result:
        print(text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
