"""Benchmark: recall per copy kind and false merges on images nobody here made.

    .venv/bin/python benchmarks/copy_kinds.py [--sources photos faces textures handwriting]

Each source of tests/real_images.py (photographs, faces, textures, handwriting) gets planted
copies of every kind in kubevae.split.planted, each of a different original, and goes through
kubevae.split.neardup.find_near_duplicates as the split runs it. Printed per source: recall per
kind (found/planted: the copy ends in its original's group), per family, originals merged with
another original (false merges) and the largest such group, the aligned stage's threshold or why
it is off, and the seconds. tests/test_copy_kinds.py holds the same matrix against floors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_copy_kinds as matrix  # noqa: E402

from kubevae.split import planted  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", default=["photos", "faces", "textures", "handwriting"])
    args = p.parse_args()
    for source in args.sources:
        images, n, origin, kinds = matrix.planted_matrix(source)
        start = time.monotonic()
        labels, near = matrix.detect(images)
        seconds = time.monotonic() - start
        found = labels[n + np.arange(len(origin))] == labels[origin]
        sizes = np.bincount(labels[:n], minlength=len(images))
        merged = int((sizes[labels[:n]] > 1).sum())
        stage = near.calibration.get("aligned_off") or f"aligned threshold {near.aligned_threshold:.4f}"
        print(f"{source}: {n} originals, {len(origin)} copies, {seconds:.1f} s; {stage}")
        print(f"  false merges: {merged} originals grouped with another, largest {int(sizes.max())}")
        for family, members in matrix.FAMILIES.items():
            cells = ", ".join(f"{k} {int(found[kinds == k].sum())}/{int((kinds == k).sum())}" for k in members)
            print(f"  {family}: {found[np.isin(kinds, members)].mean():.2f} ({cells})")
        rest = [k for k in planted.KINDS if not any(k in m for m in matrix.FAMILIES.values())]
        print("  other: " + ", ".join(f"{k} {int(found[kinds == k].sum())}/{int((kinds == k).sum())}" for k in rest))


if __name__ == "__main__":
    main()
