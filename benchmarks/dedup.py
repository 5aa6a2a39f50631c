"""Benchmark: ingest plus near-duplicate grouping of 100,000 64x64 images on 2 cores.

    nice -n 10 .venv/bin/python benchmarks/dedup.py            # goal: <= 60 s, peak memory
    .venv/bin/python benchmarks/dedup.py --n 20000 --compare 5000   # a quicker look

The images are natural-ish RGB PNGs (kubevae.ingest.synthetic.textures: random plane waves
and discs, all distinct), 2% of them planted near duplicates of others (JPEG quality 90
re-encode stored as .jpg, 1-pixel shift, +8 brightness, renamed exact copy). They are generated
once into --cache (not timed). Timed, in a fresh process so that its peak memory is its own:
`kubevae.ingest.ingest` of the folder (2 worker processes) and `group_items` (exact duplicates +
multi-index-hashing near-duplicate search at the default threshold, union-find). Peak memory is
sampled over the whole process tree (main + workers, RSS, every 50 ms); it includes the file-backed pages of
the shard being copied into the dataset (up to 65,536 x 64 x 64 x 3 bytes = 768 MiB).

--compare N also ingests the first N files with 2 processes, 2 threads and 1 process, to show
which executor suits decoding (ratios within the same run).
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
    for i, image in zip(range(start, stop), images):
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
    for source, number in zip(sources, numbers):
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                main = self.process.memory_info().rss
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


def measure(folder: Path, out: Path, workers: int, executor: str) -> dict:
    """The timed part: ingest + grouping (run in a fresh process by main())."""
    import pandas as pd

    from kubevae.ingest import ingest
    from kubevae.split.grouping import DEFAULT_NEAR_DUP_THRESHOLD, group_items

    with PeakMemory() as memory:
        start = time.monotonic()
        report = ingest(str(folder), out, workers=workers, executor=executor, max_bad_fraction=0.0)
        ingested = time.monotonic()
        manifest = pd.read_parquet(out / "manifest.parquet")  # (Dataset.open would load the pixels)
        grouping = group_items(manifest, group_column=None, threshold=DEFAULT_NEAR_DUP_THRESHOLD)
        grouped = time.monotonic()
    result = {"images": report.accepted, "ingest_s": round(ingested - start, 2),
              "grouping_s": round(grouped - ingested, 2), "total_s": round(grouped - start, 2),
              "peak_rss_tree_mib": round(memory.peak / 2**20), "peak_rss_main_mib": round(memory.peak_main / 2**20),
              "output_array_mib": round(report.accepted * np.prod(report.image_shape) / 2**20),
              "near_dup_search": grouping.plan.to_dict(), "workers": workers, "executor": executor}
    planted_file = folder / "planted.json"
    if planted_file.is_file():
        planted = pd.DataFrame(json.loads(planted_file.read_text()))
        row = {item: i for i, item in enumerate(manifest["item_id"])}
        same = [grouping.labels[row[f]] == grouping.labels[row[s]] for f, s in zip(planted.file, planted.source)]
        planted["found"] = same
        result["planted_recall"] = {k: round(float(v), 4) for k, v in planted.groupby("kind")["found"].mean().items()}
    sizes = np.bincount(grouping.labels)
    result["groups"] = int((sizes > 0).sum())
    result["largest_group"] = int(sizes.max())
    return result


def run_measure(folder: Path, scratch: Path, workers: int, executor: str) -> dict:
    out = scratch / f"ingested-{executor}-{workers}"
    command = [sys.executable, __file__, "--measure", str(folder), "--out", str(out),
               "--workers", str(workers), "--executor", executor]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--compare", type=int, default=10_000,
                   help="also ingest N images with 2 processes / 2 threads / 1 process (0: skip)")
    p.add_argument("--cache", default="/tmp/kubevae-bench-dedup", help="generated images (kept)")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--executor", default="process", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:  # the child: the timed part only
        print(json.dumps(measure(Path(a.measure), Path(a.out), a.workers, a.executor)))
        return 0
    cache = Path(a.cache)
    start = time.monotonic()
    folder = generate(cache, a.n, a.size, a.workers)
    print(f"images ready in {folder} ({time.monotonic() - start:.0f}s, not timed)", file=sys.stderr)
    scratch = cache / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    result = {"n": a.n, "size": a.size, "cpus": os.cpu_count(),
              "main": run_measure(folder, scratch, a.workers, "process")}
    if a.compare:
        small = generate(cache, a.compare, a.size, a.workers)
        result["executors"] = {f"{kind}x{w}": run_measure(small, scratch, w, kind)["ingest_s"]
                               for kind, w in (("process", 2), ("thread", 2), ("process", 1))}
    main_result = result["main"]
    print(json.dumps(result, indent=2))
    print(f"\n{a.n} images {a.size}x{a.size}: ingest {main_result['ingest_s']} s + near-duplicate "
          f"grouping {main_result['grouping_s']} s = {main_result['total_s']} s (goal <= 60 s); peak "
          f"RSS {main_result['peak_rss_tree_mib']} MiB over all processes "
          f"(output array {main_result['output_array_mib']} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
