"""Benchmark: near-duplicate grouping at 100,000 and 1,000,000 images on 2 cores.

    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind digits --n 100000
    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind digits --n 1000000 --data-cache /tmp/kubevae-bench-dedup
    nice -n 10 .venv/bin/python benchmarks/dedup.py --kind textures --n 100000 --data-cache /tmp/kubevae-bench-dedup
    nice -n 10 .venv/bin/python benchmarks/dedup.py --compare-search 50000   # faiss vs numpy
    nice -n 10 .venv/bin/python benchmarks/dedup.py --ingest --n 100000      # ingest + grouping

Data (made in memory, not timed): `digits` are 28x28 digit-like images (scikit-learn's 1,797
real digits, each drawn many times under a random rotation, scale, shear, stroke weight and
position; at 1,000,000 draws, 556 of each digit, some pairs of draws land within a copy's
tolerance of each other and count as false merges); `textures` are 64x64 colour textures
(kubevae.ingest.synthetic.textures' recipe, made by textures_fast). 2% of the items are planted copies of others, of every kind
in kubevae.split.planted (shifts of 1-2 px, JPEG 70, brightness, contrast, noise, resampling).
Timed in a fresh process (its peak RSS is its own): kubevae.split.grouping.group_items, i.e.
the calibration, the faiss candidate search, the verification and union-find. Printed: time,
peak memory, planted copies found (copy in its source's group), false merges (verified pairs
joining two different originals, and the items in groups holding more than one original), and
the largest group.

--compare-search N times the candidate search on N digit descriptors with faiss (the index the
split uses) against an exact hand-written numpy search (blocked matrix products + top-k), and
the recall of faiss against the exact neighbours.
--ingest writes textures as PNG files and times `kubevae ingest` plus grouping (the 60 s goal).

Measured 2026-12-02 on the shared 2 cores (load average beside each; other jobs running):
- digits 10,000: 42.5 s with the 25-shift 8x8 search (commit 18b5032) -> 4.5 s (load 4.3-5.1)
- digits 100,000: 17.7 s, 1,999/2,000 copies, peak RSS 642 MiB (load 4.2-4.9); 386 s before
- textures 100,000: 35.3 s, 1,996/2,000 copies, 0 false merges (load 3.6-4.2)
- digits 1,000,000: 337 s, 19,958/20,000 copies, largest group 14, peak RSS 2.8 GiB (load 3.3-3.6);
  267 s with nprobe 4 (19,933 copies)
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

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000
PLANTED_FRACTION = 0.02
VARIANTS = ("jpeg", "shift", "bright", "copy")


def generate(cache: Path, n: int, size: int, workers: int) -> Path:
    """n image files under cache/n{n}-s{size}/ (idempotent): distinct textures + planted copies."""
    root = cache / f"n{n}-s{size}-v2"  # v2: six waves and three discs per texture
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
    from PIL import Image

    from kubevae.ingest import synthetic

    root, sources, numbers, size = task
    folder = root / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for source, number in zip(sources, numbers, strict=False):
        image = np.asarray(Image.open(root / _texture_name(int(source))))
        kind = VARIANTS[int(number) % len(VARIANTS)]
        name = f"planted/p-{int(number):06d}-{kind}" + (".jpg" if kind == "jpeg" else ".png")
        if kind == "jpeg":
            Image.fromarray(image).save(root / name, "JPEG", quality=90)
        else:
            variant = {"shift": lambda im: synthetic.shift(im, 0, 1),
                       "bright": lambda im: synthetic.brighten(im, 8),
                       "copy": lambda im: im}[kind](image)
            Image.fromarray(variant).save(root / name, compress_level=1)
        rows.append({"file": name, "source": _texture_name(int(source)), "kind": kind})
    return rows


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

    folder = Path(cache) / f"data-{kind}-n{n}-s{seed}" if cache else None
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


def measure(kind: str, n: int, threshold: float | None, cache: str | None) -> dict:
    """The timed part, in its own process: group_items on the made data."""
    import pandas as pd

    from kubevae.split.grouping import group_items

    made = time.monotonic()
    images, family, kinds = make_data(kind, n, cache=cache)
    made = time.monotonic() - made
    manifest = pd.DataFrame({"sha256": [f"s{i}" for i in range(n)]})
    with PeakMemory() as memory:
        start = time.monotonic()
        grouping = group_items(manifest, images, group_column=None, threshold=threshold)
        seconds = time.monotonic() - start
    labels, originals = grouping.labels, n - len(kinds)
    found = labels[originals:] == labels[family[originals:]]
    by_kind = pd.Series(found).groupby(pd.Series(kinds)).mean().round(4).to_dict()
    pairs = grouping.near.pairs
    false_pairs = int((family[pairs[:, 0]] != family[pairs[:, 1]]).sum()) if len(pairs) else 0
    frame = pd.DataFrame({"label": labels, "family": family})
    families_per_group = frame.groupby("label")["family"].nunique()
    sizes = frame.groupby("label").size()
    mixed = sizes[families_per_group > 1]
    near = grouping.near
    return {"kind": kind, "n": n, "image_shape": list(images.shape[1:]), "data_made_s": round(made, 1),
            "grouping_s": round(seconds, 2), "peak_rss_mib": round(memory.peak / 2**20),
            "peak_private_mib": round(memory.peak_private / 2**20),
            "images_mib": round(images.nbytes / 2**20),
            "threshold": near.threshold, "threshold_source": near.threshold_source,
            "planted_copies": len(kinds), "copies_found": int(found.sum()),
            "copies_found_by_kind": by_kind, "false_merge_pairs": false_pairs,
            "items_in_groups_with_several_originals": int(mixed.sum()),
            "largest_group": int(sizes.max()), "largest_group_fraction": round(float(sizes.max()) / n, 5),
            "search": near.search, "load_average": os.getloadavg()}


def compare_search(n: int) -> dict:
    """faiss (as the split uses it) against an exact numpy search, on the same descriptors."""
    import faiss

    from kubevae.split import neardup

    images, _, _ = make_data("digits", n)
    base = neardup.descriptors(neardup.working_images(images))
    k = 9
    start = time.monotonic()
    exact = np.empty((n, k), np.int64)
    for q0 in range(0, n, 2048):
        block = base[q0:q0 + 2048] @ base.T
        top = np.argpartition(-block, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, top, 1), axis=1)
        exact[q0:q0 + 2048] = np.take_along_axis(top, order, 1)
    numpy_s = time.monotonic() - start
    faiss.omp_set_num_threads(2)
    start = time.monotonic()
    nlist = int(4 * np.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(base.shape[1]), base.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.train(base[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)])
    index.add(base)
    index.nprobe = 8
    _, approx = index.search(base, k)
    faiss_s = time.monotonic() - start
    start = time.monotonic()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, flat_ids = flat.search(base, k)
    flat_s = time.monotonic() - start
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=False)])
    return {"n": n, "numpy_exact_s": round(numpy_s, 2), "faiss_ivf_s": round(faiss_s, 2),
            "faiss_flat_exact_s": round(flat_s, 2), "faiss_ivf_recall_at_9": round(float(recall), 4),
            "speedup_ivf_vs_numpy": round(numpy_s / faiss_s, 1),
            "speedup_flat_vs_numpy": round(numpy_s / flat_s, 1), "load_average": os.getloadavg()}


def measure_ingest(folder: Path, out: Path, workers: int) -> dict:
    import pandas as pd

    from kubevae.data.dataset import Dataset
    from kubevae.ingest import ingest
    from kubevae.split.grouping import group_items

    with PeakMemory() as memory:
        start = time.monotonic()
        report = ingest(str(folder), out, workers=workers, max_bad_fraction=0.0)
        ingested = time.monotonic()
        dataset = Dataset.open(out)
        grouping = group_items(pd.read_parquet(out / "manifest.parquet"), dataset.images,
                               group_column=None, threshold=None)
        grouped = time.monotonic()
    sizes = np.bincount(grouping.labels)
    return {"images": report.accepted, "ingest_s": round(ingested - start, 2),
            "grouping_s": round(grouped - ingested, 2), "total_s": round(grouped - start, 2),
            "peak_rss_tree_mib": round(memory.peak / 2**20), "largest_group": int(sizes.max()),
            "threshold": grouping.near.threshold, "load_average": os.getloadavg()}


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
        print(json.dumps(measure_ingest(Path(a.cache) / f"n{a.n}-s64-v2", Path(a.cache) / "ingested", a.workers)))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
