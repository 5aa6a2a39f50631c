"""Hostile files are quarantined, never fatal (issue 14, items 4-7 and ingest's part of 10).

Each test plants the file the review used beside good images, ingests, and checks the file's
quarantine row (its reason and detail) and that the counts reconcile: seen = accepted +
quarantined.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import kubevae_cmd, subprocess_env
from PIL import Image

from kubevae.data.dataset import Dataset
from kubevae.ingest import decode as decode_module
from kubevae.ingest import ingest
from kubevae.storage import remove_stale_temporaries

GOOD = 6


def good_folder(root: Path, n: int = GOOD) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"good-{i}.png")
    return root


def run(src: Path, out: Path, **kw):
    report = ingest(str(src), out, max_bad_fraction=0.9, workers=1, **kw)
    assert report.seen == report.accepted + report.quarantined
    quarantine = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert len(quarantine) == report.quarantined
    assert len(Dataset.open(out)) == report.accepted
    return report, {row.item_id: (row.reason, row.detail) for row in quarantine.itertuples()}


def npy_header(shape: tuple, dtype: str = "<f4", size: int = 128) -> bytes:
    """An NPY v1.0 file of exactly `size` bytes whose header declares `shape` (no data)."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header = header.ljust(size - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a tiny (truncated) image stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + \
        chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is patched to declare width x height."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_npy_declaring_a_huge_array_is_quarantined_without_allocating(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "bomb.npy").write_bytes(npy_header((10**6, 10**6)))
    assert (src / "bomb.npy").stat().st_size == 128
    (src / "short.npy").write_bytes(npy_header((32, 32)))  # a small header with no data after it
    report, rows = run(src, tmp_path / "out")
    assert rows["bomb.npy"][0] == "too_large" and "(1000000, 1000000)" in rows["bomb.npy"][1]
    assert rows["short.npy"][0] == "truncated"
    assert report.accepted == GOOD


@pytest.mark.parametrize("shape", [(0,), (0, 0), (32, 0, 3)])
def test_empty_float_npy_is_quarantined(tmp_path, shape):
    src = good_folder(tmp_path / "src")
    np.save(src / "empty.npy", np.zeros(shape, np.float32))
    report, rows = run(src, tmp_path / "out")
    assert rows == {"empty.npy": ("empty", f"NPY array of shape {shape} holds no values")}


def test_dangling_symlink_is_quarantined(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    report, rows = run(src, tmp_path / "out")
    assert rows["gone.png"][0] == "broken_link" and "does not exist" in rows["gone.png"][1]
    assert (report.seen, report.accepted) == (GOOD + 1, GOOD)


def test_file_name_that_is_not_utf8_is_quarantined_and_the_manifest_is_written(tmp_path):
    src = good_folder(tmp_path / "src")
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(
        os.path.join(src, name), "PNG")
    report, rows = run(src, tmp_path / "out")
    assert rows == {"caf\\xe9.png": ("bad_name", "the file name is not valid UTF-8: b'caf\\xe9.png'")}
    assert report.accepted == GOOD


def test_an_unexpected_decode_error_becomes_a_row_not_a_crash(tmp_path, monkeypatch):
    src = good_folder(tmp_path / "src")
    real = decode_module.decode

    def flaky(data, name):
        if name == "good-3.png":
            raise RuntimeError("a decoder bug")
        return real(data, name)

    monkeypatch.setattr(decode_module, "decode", flaky)
    report, rows = run(src, tmp_path / "out")
    assert rows == {"good-3.png": ("decode_error", "unexpected RuntimeError: a decoder bug")}
    assert report.accepted == GOOD - 1


def test_links_outside_the_source_are_refused_and_linked_folders_counted(tmp_path):
    src = good_folder(tmp_path / "src")
    outside = good_folder(tmp_path / "elsewhere", n=1) / "good-0.png"
    (src / "escape.png").symlink_to(outside)
    (src / "inside.png").symlink_to(src / "good-0.png")   # stays in the folder: accepted
    (src / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    report, rows = run(src, tmp_path / "out")
    assert rows == {"escape.png": ("outside_source", f"a link to {outside}, outside {src}")}
    assert report.accepted == GOOD + 1 and report.linked_folders == 1
    assert "linked folders (not followed): 1" in report.summary()
    card = (tmp_path / "out" / "card.md").read_text()
    assert "1 linked folder(s) not followed" in card


@pytest.mark.parametrize("name, data, side", [
    ("huge.png", png_header_only(12000, 12000), 12000),  # the review's: beyond PIL's own limit
    ("huge.jpg", jpeg_with_size(12000, 12000), 12000),
    ("big.png", png_header_only(8000, 8000), 8000),      # within PIL's limit, beyond kubevae's
    ("big.jpg", jpeg_with_size(8000, 8000), 8000),
], ids=["png-12000", "jpg-12000", "png-8000", "jpg-8000"])
def test_dimensions_are_checked_from_the_header_before_decoding(tmp_path, name, data, side):
    src = good_folder(tmp_path / "src")
    (src / name).write_bytes(data)
    report, rows = run(src, tmp_path / "out")
    reason, detail = rows[name]
    assert reason == "too_large" and str(side * side) in detail
    if side == 8000:
        assert "8000x8000" in detail and "from the header" in detail


def test_pil_decompression_bomb_warning_is_a_rejection(tmp_path, monkeypatch):
    src = good_folder(tmp_path / "src")  # 32 x 32 = 1024 pixels each
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), np.uint8)).save(src / "big.png")
    # PIL warns (and then decodes anyway) between MAX_IMAGE_PIXELS and twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    report, rows = run(src, tmp_path / "out")
    assert rows["big.png"][0] == "too_large" and "decompression bomb" in rows["big.png"][1].lower()


def test_metadata_larger_than_the_limit_is_refused_before_reading(tmp_path):
    src = good_folder(tmp_path / "src")
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"path": [f"good-{i}.png" for i in range(GOOD)], "group_id": "g" * 100}).to_csv(meta, index=False)
    with pytest.raises(ValueError, match=rf"--metadata {meta}: \d+ bytes; the limit is 200 bytes "
                                         r"\(--max-metadata-mb raises it\)"):
        ingest(str(src), tmp_path / "out", metadata=str(meta), max_metadata_bytes=200)
    report = ingest(str(src), tmp_path / "out", metadata=str(meta))
    assert report.metadata_rows == GOOD
    cli = subprocess.run(kubevae_cmd("ingest", "--source", str(src), "--out", str(tmp_path / "cli"),
                                     "--metadata", str(meta), "--max-metadata-mb", "0.0001"),
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert cli.returncode == 2 and "the limit is 104 bytes" in cli.stderr


def test_a_killed_runs_scratch_folder_is_removed_by_the_next_run(tmp_path):
    src = good_folder(tmp_path / "src")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from kubevae.storage import _owner
    host = _owner().rsplit("-", 1)[0]
    stale = tmp_path / f".out.scratch-{host}-{dead.pid}-abc123.tmp"
    (stale / "images.u8").parent.mkdir()
    (stale / "images.u8").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".out.scratch-{host}-{os.getppid()}-abc123.tmp"  # a live process's
    alive.mkdir()
    run(src, tmp_path / "out")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.scratch-" + alive.name.split("scratch-")[1],
                                                                 "out", "src"])
    assert remove_stale_temporaries(tmp_path / "out") == []
