"""Whatever a folder can hold, ingest finishes, and quarantines what it cannot use with its reason
(issue 25, section 3; the S3 side is in tests/test_s3_ingest.py).

Entries that could hang or exhaust a reader (a FIFO with no writer, a socket, /dev/zero behind a
name, /dev/stdin, a sparse 10 GB file, a file swapped for a FIFO after the listing) are ingested
in a subprocess with a hard time limit and a memory limit, so a regression fails the test instead
of hanging the suite. Each entry kind has its own test of its row (reason, and a detail that
names what was seen); every run checks seen = accepted + quarantined.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, subprocess_env
from PIL import Image, ImageOps

from kubevae.data.dataset import Dataset, pixel_sha256
from kubevae.ingest import ingest

GOOD = 6
HARD_LIMIT_S = 90  # a hang fails here, not in the CI's global timeout


def picture(seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels), np.uint8).squeeze()


def png(array: np.ndarray, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", **kw)
    return buffer.getvalue()


def good_folder(root: Path, n: int = GOOD) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"good-{i}.png").write_bytes(png(picture(i)))
    return root


def rows_of(out: Path) -> dict[str, tuple[str, str]]:
    frame = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    return {row.item_id: (row.reason, row.detail) for row in frame.itertuples()}


def reconciled(report, out: Path) -> dict[str, tuple[str, str]]:
    assert report.seen == report.accepted + report.quarantined
    rows = rows_of(out)
    assert len(rows) == report.quarantined
    assert len(Dataset.open(out)) == report.accepted
    return rows


# --- a bounded run in a subprocess ----------------------------------------------------------

RUNNER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # /dev/zero read whole fails fast
exec(sys.argv[3])  # what the test patches before ingest runs (a race)
from kubevae.ingest import ingest
report = ingest(sys.argv[1], sys.argv[2], workers=1, max_bad_fraction=1.0)
print(json.dumps(report.to_dict()))
"""


def bounded_ingest(src: Path, out: Path, before: str = "") -> dict:
    """ingest(src, out) in a subprocess that must finish within HARD_LIMIT_S. Its stdin is a pipe
    that this process holds open and never writes: a read of /dev/stdin would block forever."""
    read_end, write_end = os.pipe()
    try:
        start = time.monotonic()
        try:
            run = subprocess.run([sys.executable, "-c", RUNNER, str(src), str(out), before],
                                 stdin=read_end, capture_output=True, text=True, cwd=REPO,
                                 env=subprocess_env(), timeout=HARD_LIMIT_S)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"ingest of {src} did not finish within {HARD_LIMIT_S} s: it waits on an "
                        f"entry (stderr: {e.stderr!r})")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    report["wall_s"] = time.monotonic() - start
    assert report["seen"] == report["accepted"] + report["quarantined"]
    return report


# --- the zoo: one folder with every kind of file-system entry ------------------------------------

NFC, NFD = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")
LONG = "l" * 251 + ".png"  # 255 bytes, the longest name most file systems allow
ODD_NAMES = ["new\nline.png", "tab\there.png", "-leading-dash.png", "--help.png", "back\\slash.png",
             "\x1b[31mred.png", "sp ace.png", "UPPER.PNG", LONG, NFC, NFD, ".png", ".hidden/h.png",
             "x.png/inner.png"]  # x.png is a folder
SPARSE = 10 << 30  # 10 GB declared, a few kB on disk

# key -> (reason, words its detail must hold); reason None: accepted
EXPECTED: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "fifo.png": ("not_a_file", ("FIFO", "not opened")),
    "fifo-link.png": ("not_a_file", ("a link to", "fifo.png", "FIFO", "not opened")),
    "socket.png": ("not_a_file", ("UNIX socket",)),
    "zero-device.png": ("not_a_file", ("character device", "not opened")),
    "dev-zero.png": ("outside_source", ("/dev/zero", "outside")),
    "dev-urandom.npy": ("outside_source", ("/dev/urandom", "outside")),
    "dev-stdin.png": ("outside_source", ("outside",)),
    "proc-environ.png": ("outside_source", ("environ", "outside")),
    "proc-fd0.npy": ("outside_source", ("outside",)),
    "loop-a.png": ("broken_link", ("loop-b.png", "loops")),
    "loop-b.png": ("broken_link", ("loop-a.png", "loops")),
    "self-link.png": ("broken_link", ("self-link.png", "loops")),
    "dangling.png": ("broken_link", ("nowhere.png", "does not exist")),
    "escape.png": ("outside_source", ("secret.png", "outside")),
    "escape-relative.png": ("outside_source", ("secret.png", "outside")),
    "sparse-huge.npy": ("too_large", (str(SPARSE), "not read")),
    "sparse-huge.png": ("too_large", (str(SPARSE), "not read")),
    "latin1-\\xe9.png": ("bad_name", ("not valid UTF-8", "\\xe9")),
    "._good-0.png": ("undecodable", ("not a PNG",)),  # macOS AppleDouble junk beside a photo
    "junk\n|`\x1b[2J.png": ("undecodable", ("not a PNG",)),  # its id lands in card.md
    "hard-link.png": (None, ()),
    "inside-link.png": (None, ()),
    **{name: (None, ()) for name in ODD_NAMES},
}
LINKED_FOLDERS = {"up", "sub/parent", "escape-folder", "x-link.png"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    src, outside = good_folder(base / "src"), base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(picture(99)))
    os.mkfifo(src / "fifo.png")
    (src / "fifo-link.png").symlink_to("fifo.png")
    with socket.socket(socket.AF_UNIX) as sock:  # a UNIX socket path must be short: bind relative
        cwd = os.getcwd()
        os.chdir(src)
        try:
            sock.bind("socket.png")
        finally:
            os.chdir(cwd)
    try:
        os.mknod(src / "zero-device.png", 0o20666, os.makedev(1, 5))  # a second /dev/zero
        device = True
    except OSError:
        device = False
    for name, target in [("dev-zero.png", "/dev/zero"), ("dev-urandom.npy", "/dev/urandom"),
                         ("dev-stdin.png", "/dev/stdin"), ("proc-environ.png", "/proc/self/environ"),
                         ("proc-fd0.npy", "/proc/self/fd/0"), ("loop-a.png", "loop-b.png"),
                         ("loop-b.png", "loop-a.png"), ("self-link.png", "self-link.png"),
                         ("dangling.png", "nowhere.png"), ("escape.png", str(outside / "secret.png")),
                         ("escape-relative.png", "../outside/secret.png"),
                         ("inside-link.png", "good-1.png")]:
        (src / name).symlink_to(target)
    (src / "up").symlink_to("..", target_is_directory=True)
    (src / "sub").mkdir()
    (src / "sub" / "parent").symlink_to("..", target_is_directory=True)
    (src / "escape-folder").symlink_to(outside, target_is_directory=True)
    for name in ("sparse-huge.npy", "sparse-huge.png"):
        with open(src / name, "wb") as f:
            if name.endswith(".npy"):
                np.save(f, picture(50))  # a valid small array, then 10 GB of holes
            else:
                f.write(png(picture(51)))
            f.truncate(SPARSE)
    os.link(src / "good-0.png", src / "hard-link.png")
    Image.fromarray(picture(60)).save(os.path.join(os.fsencode(src), b"latin1-\xe9.png"), "PNG")
    (src / "junk\n|`\x1b[2J.png").write_bytes(b"junk")
    (src / "._good-0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\0" * 64)
    for i, name in enumerate(ODD_NAMES):
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(png(picture(100 + i)))
    (src / "x-link.png").symlink_to("x.png", target_is_directory=True)  # a link to a folder
    (src / "notes.txt").write_text("not an image")
    (src / "fifo.txt").parent.mkdir(exist_ok=True)
    os.mkfifo(src / "fifo.txt")  # not an image name: ignored, and never opened either
    out = base / "out"
    report = bounded_ingest(src, out)
    return {"report": report, "rows": rows_of(out), "out": out, "src": src, "device": device,
            "manifest": Dataset.open(out).manifest}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: ascii(k)[1:-1][:40])
def test_each_kind_of_entry_is_accepted_or_quarantined_with_its_reason(zoo, key):
    if key == "zero-device.png" and not zoo["device"]:
        pytest.skip("mknod is not permitted here")
    reason, words = EXPECTED[key]
    rows, accepted = zoo["rows"], set(zoo["manifest"]["item_id"])
    if reason is None:
        assert key in accepted and key not in rows
        return
    assert key in rows, f"{key!r} was neither quarantined nor reported: {sorted(rows)}"
    got, detail = rows[key]
    assert got == reason, (key, got, detail)
    for word in words:
        assert word in detail, (key, detail)


def test_the_zoo_reconciles_and_nothing_outside_the_source_was_read(zoo):
    report, manifest = zoo["report"], zoo["manifest"]
    expected_seen = GOOD + len(EXPECTED) - (0 if zoo["device"] else 1)
    assert report["seen"] == expected_seen
    assert report["accepted"] == GOOD + sum(r is None for r, _ in EXPECTED.values())
    assert report["ignored"] == 2  # notes.txt and fifo.txt
    assert report["linked_folders"] == len(LINKED_FOLDERS)
    assert pixel_sha256(picture(99)) not in set(manifest["sha256"])  # outside/secret.png
    assert not any("outside" in uri for uri in manifest["source_uri"])
    assert report["wall_s"] < HARD_LIMIT_S


def test_a_hard_link_is_the_same_content_under_another_name(zoo):
    manifest = zoo["manifest"].set_index("item_id")
    assert manifest.loc["hard-link.png", "sha256"] == manifest.loc["good-0.png", "sha256"]
    assert manifest.loc["inside-link.png", "sha256"] == manifest.loc["good-1.png", "sha256"]


def test_odd_names_keep_their_exact_item_ids(zoo):
    """Newlines, tabs, escapes, 255 bytes, NFC and NFD spellings: each file keeps its own id
    (two normalisation twins are two files), and quarantine.csv and the manifest round-trip."""
    ids = set(zoo["manifest"]["item_id"])
    assert set(ODD_NAMES) <= ids and NFC != NFD
    card = (zoo["out"] / "card.md").read_text()
    assert "\x1b" not in card and "junk\n" not in card
    assert "`junk\\n\\|\\`\\u001b[2J.png`" in card


def test_unusual_files_are_never_opened(tmp_path):
    """The FIFO has no writer: opening it would block. The test itself keeps a writer-less
    reader check: after ingest, opening the FIFO non-blocking for writing fails with ENXIO,
    which proves no reader holds it open."""
    src = good_folder(tmp_path / "src")
    os.mkfifo(src / "pipe.png")
    report = bounded_ingest(src, tmp_path / "out")
    assert rows_of(tmp_path / "out")["pipe.png"][0] == "not_a_file"
    with pytest.raises(OSError) as e:
        os.open(src / "pipe.png", os.O_WRONLY | os.O_NONBLOCK)
    assert e.value.errno == errno.ENXIO
    assert report["accepted"] == GOOD


# --- races: the folder changes between the listing and the read ------------------------------

RACE = """
import os, shutil
from pathlib import Path
from kubevae.ingest import decode
from kubevae.ingest.sources import LocalSource
decode.MAX_IMAGE_FILE_BYTES = 200_000
listed = LocalSource.list

def change_after_listing(self):
    listing = listed(self)
    root = self.root
    (root / "deleted.png").unlink()
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "emptied.png").write_bytes(b"")
    with open(root / "grown.png", "ab") as f:
        f.write(b"trailing bytes after IEND")
    with open(root / "grown-huge.png", "ab") as f:
        f.write(b"\\0" * 300_000)
    (root / "to-fifo.png").unlink()
    os.mkfifo(root / "to-fifo.png")
    (root / "to-link.png").unlink()
    (root / "to-link.png").symlink_to(root.parent / "outside" / "secret.png")
    shutil.rmtree(root / "folder")
    (root / "folder").symlink_to(root.parent / "outside", target_is_directory=True)
    return listing

LocalSource.list = change_after_listing
"""
RACES = {"deleted.png": ("changed", "no longer exists"), "truncated.png": ("truncated", ""),
         "emptied.png": ("zero_byte", ""), "grown.png": (None, ""),
         "grown-huge.png": ("too_large", "when opened"), "to-fifo.png": ("not_a_file", "FIFO"),
         "to-link.png": ("outside_source", "outside"), "folder/secret.png": ("outside_source", "outside")}


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    base = tmp_path_factory.mktemp("race")
    src = good_folder(base / "src")
    (base / "outside").mkdir()
    (base / "outside" / "secret.png").write_bytes(png(picture(99)))
    for i, name in enumerate(RACES):
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(png(picture(200 + i)))
    report = bounded_ingest(src, base / "out", before=RACE)
    return report, rows_of(base / "out"), Dataset.open(base / "out").manifest


@pytest.mark.parametrize("key", sorted(RACES))
def test_a_file_that_changes_after_the_listing(race, key):
    report, rows, manifest = race
    reason, word = RACES[key]
    if reason is None:
        assert key in set(manifest["item_id"])
        return
    assert rows[key][0] == reason and word in rows[key][1], rows.get(key)
    assert report["seen"] == GOOD + len(RACES)
    assert pixel_sha256(picture(99)) not in set(manifest["sha256"])


# --- folders: depth, breadth, and folders that cannot be listed ------------------------------

@pytest.mark.parametrize("depth, name", [(200, "level"), (1500, "d")])
def test_deeply_nested_folders(tmp_path, depth, name):
    """200 levels, and 1500 (beyond Python's recursion limit, where a recursive walk fails)."""
    src = good_folder(tmp_path / "src")
    levels = [src]
    try:
        for _ in range(depth):  # one level at a time (Path.mkdir(parents=True) recurses)
            levels.append(levels[-1] / name)
            levels[-1].mkdir()
        (levels[-1] / "bottom.png").write_bytes(png(picture(300)))
        report = ingest(str(src), tmp_path / "out", workers=1)
        reconciled(report, tmp_path / "out")
        assert report.accepted == GOOD + 1
        ids = set(Dataset.open(tmp_path / "out").manifest["item_id"])
        assert f"{'/'.join([name] * depth)}/bottom.png" in ids
    finally:  # bottom up: pytest's own clean-up (shutil.rmtree) recurses and would fail
        (levels[-1] / "bottom.png").unlink(missing_ok=True)
        for level in reversed(levels[1:]):
            level.rmdir()


def test_a_path_longer_than_the_system_allows_is_reported_not_dropped(tmp_path):
    src = good_folder(tmp_path / "src")
    part = "p" * 60
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:  # 80 levels of 60 bytes: 4,880 bytes, past PATH_MAX (4,096)
        for _ in range(80):
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("lost.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(png(picture(301)))
    finally:
        os.close(fd)
    report = ingest(str(src), tmp_path / "out", workers=1, max_bad_fraction=0.5)
    rows = reconciled(report, tmp_path / "out")
    (key, (reason, detail)), = rows.items()
    assert reason == "read_error" and key.startswith(part) and key.endswith("/")
    assert "cannot be listed" in detail and "not seen" in detail
    assert report.accepted == GOOD


def test_twenty_thousand_empty_folders(tmp_path):
    src = good_folder(tmp_path / "src")
    for i in range(20_000):
        os.mkdir(src / f"empty-{i:05d}")
    start = time.monotonic()
    report = ingest(str(src), tmp_path / "out", workers=1)
    assert time.monotonic() - start < 30
    reconciled(report, tmp_path / "out")
    assert (report.seen, report.accepted, report.ignored) == (GOOD, GOOD, 0)


def test_a_folder_that_cannot_be_listed_is_a_row(tmp_path, monkeypatch):
    """Tests run as root, so permissions are simulated: os.scandir refuses one folder."""
    src = good_folder(tmp_path / "src")
    good_folder(src / "locked", n=2)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("/locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = ingest(str(src), tmp_path / "out", workers=1, max_bad_fraction=0.5)
    rows = reconciled(report, tmp_path / "out")
    assert rows == {"locked/": ("read_error", "a folder that cannot be listed (PermissionError: "
                                              "Permission denied); the files in it were not seen")}


def test_an_unreadable_file_is_a_read_error(tmp_path, monkeypatch):
    """chmod 000 does not stop root: os.open is made to refuse one file, as it would for a user."""
    src = good_folder(tmp_path / "src")
    (src / "locked.png").write_bytes(png(picture(400)))
    real = os.open

    def refuse(path, flags, *args, **kw):
        if os.fsdecode(path) == "locked.png":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    report = ingest(str(src), tmp_path / "out", workers=1, max_bad_fraction=0.5)
    rows = reconciled(report, tmp_path / "out")
    assert rows == {"locked.png": ("read_error", "locked.png: PermissionError: Permission denied")}


# --- contents: what a file with an image's name can hold --------------------------------------

def npy(array: np.ndarray, **kw) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kw)
    return buffer.getvalue()


class Exploit:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def npy_with_header(descr: str, shape: tuple, fortran: bool = False, body: bytes = b"") -> bytes:
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (64 << 20))
    return buffer.getvalue()


def png_chunks(*chunks: tuple[bytes, bytes], size: int = 32) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, d) for k, d in chunks) + \
        chunk(b"IEND", b"")


def encoded(array: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def exif_png(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(array, "PNG", exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(picture(500 + i)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.fromarray(picture(600)).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


PICTURE = picture(700)
CONTENTS = {  # name -> (bytes, reason or None, words of the detail; for None: expected pixels)
    "object-dtype.npy": (lambda tmp: npy(np.array([Exploit(str(tmp / "pwned"))] * 4, dtype=object),
                                         allow_pickle=True), "undecodable", "never unpickled"),
    "structured-object.npy": (lambda tmp: npy_with_header("[('a', '|O'), ('b', '<f4')]", (32, 32)),
                              "undecodable", "pickles"),
    "structured.npy": (lambda tmp: npy(np.zeros((32, 32), [("r", "u1"), ("g", "u1"), ("b", "u1")])),
                       "undecodable", "not structured"),
    "subarray.npy": (lambda tmp: npy_with_header("('<u1', (3,))", (32, 32), body=PICTURE.tobytes()),
                     "undecodable", "not structured"),
    "complex.npy": (lambda tmp: npy(PICTURE.astype(np.complex64)), "undecodable", "complex"),
    "zero-d.npy": (lambda tmp: npy(np.array(7.0)), "wrong_channels", "shape ()"),
    "one-d.npy": (lambda tmp: npy(np.arange(3072, dtype=np.uint8)), "wrong_channels", "(3072,)"),
    "five-d.npy": (lambda tmp: npy(PICTURE.reshape(32, 32, 3, 1, 1)), "wrong_channels", "(32, 32, 3, 1, 1)"),
    "fortran.npy": (lambda tmp: npy(np.asfortranarray(PICTURE)), None, PICTURE),
    "big-endian-float.npy": (lambda tmp: npy((PICTURE / 255.0).astype(">f4")), None, PICTURE),
    "big-endian-int.npy": (lambda tmp: npy(PICTURE.astype(">u2")), None, PICTURE),
    "float16.npy": (lambda tmp: npy(PICTURE.astype(np.float16)), None, PICTURE),
    "exif-rotated.png": (lambda tmp: exif_png(PICTURE, 6), None, np.rot90(PICTURE, k=-1)),
    "exif-mirrored.png": (lambda tmp: exif_png(PICTURE, 2), None, PICTURE[:, ::-1]),
    "palette.png": (lambda tmp: encoded(PICTURE, "PNG", "P"), None, None),
    "palette-transparent.png": (lambda tmp: palette_with_transparency(), "wrong_mode", "transparent"),
    "la.png": (lambda tmp: encoded(PICTURE, "PNG", "LA"), "wrong_mode", "alpha"),
    "cmyk.jpg": (lambda tmp: encoded(PICTURE, "JPEG", "CMYK"), "wrong_mode", "CMYK"),
    "sixteen-bit.png": (lambda tmp: encoded(PICTURE[..., 0].astype(np.uint16) * 257, "PNG"),
                        "wrong_mode", "expected 8-bit"),
    "float-tiff.png": (lambda tmp: encoded(PICTURE[..., 0].astype(np.float32), "TIFF"),
                       "undecodable", "not a PNG"),
    "animated-gif.png": (lambda tmp: animated("GIF"), "undecodable", "not a PNG"),
    "animated.png": (lambda tmp: animated("PNG"), "animated", "3 frames"),
    "gzip-bomb.png": (lambda tmp: gzip.compress(b"\0" * (64 << 20)), "undecodable", "not a PNG"),
    "zip-bomb.png": (lambda tmp: zip_bomb(), "undecodable", "not a PNG"),
    "ztxt-bomb.png": (lambda tmp: png_chunks((b"zTXt", b"k\0\0" + zlib.compress(b"a" * (64 << 20))),
                                             (b"IDAT", zlib.compress(b"\0" + PICTURE.tobytes()))),
                      "undecodable", "too large"),
    "idat-bomb.png": (lambda tmp: png_chunks((b"IDAT", zlib.compress(b"\0" * (64 << 20)))),
                      "constant", "every pixel is 0"),
    "html.png": (lambda tmp: b"<html><body>404 Not Found</body></html>", "undecodable", "not a PNG"),
}


@pytest.mark.parametrize("name", list(CONTENTS))
def test_what_an_image_file_can_hold(tmp_path, name):
    make, reason, expected = CONTENTS[name]
    src = good_folder(tmp_path / "src")
    (src / name).write_bytes(make(tmp_path))
    start = time.monotonic()
    report = ingest(str(src), tmp_path / "out", workers=1, max_bad_fraction=0.5)
    assert time.monotonic() - start < 20
    rows = reconciled(report, tmp_path / "out")
    assert not (tmp_path / "pwned").exists(), "a pickle was executed"
    if reason is not None:
        assert rows[name][0] == reason and expected in rows[name][1].lower() + rows[name][1], rows[name]
        assert report.accepted == GOOD
        return
    assert rows == {}, rows
    ds = Dataset.open(tmp_path / "out")
    pixels = ds.images[list(ds.manifest["item_id"]).index(name)]
    if expected is None:  # the palette: the same pixels as PIL's own conversion to RGB
        expected = np.asarray(Image.open(src / name).convert("RGB"))
    np.testing.assert_array_equal(pixels, expected)


def test_exif_orientation_matches_pils_own_transpose(tmp_path):
    """Every orientation (2..8) gives what ImageOps.exif_transpose shows."""
    src = good_folder(tmp_path / "src")
    for orientation in range(2, 9):
        (src / f"o{orientation}.png").write_bytes(exif_png(PICTURE, orientation))
    report = ingest(str(src), tmp_path / "out", workers=1)
    reconciled(report, tmp_path / "out")
    ds = Dataset.open(tmp_path / "out")
    ids = list(ds.manifest["item_id"])
    for orientation in range(2, 9):
        shown = np.asarray(ImageOps.exif_transpose(Image.open(src / f"o{orientation}.png")))
        np.testing.assert_array_equal(ds.images[ids.index(f"o{orientation}.png")], shown)


def test_a_pickle_payload_is_never_loaded_even_with_a_plain_extension(tmp_path):
    """A raw pickle (not NPY) named .npy: refused by its magic, never unpickled."""
    src = good_folder(tmp_path / "src")
    (src / "raw-pickle.npy").write_bytes(pickle.dumps(Exploit(str(tmp_path / "pwned"))))
    report = ingest(str(src), tmp_path / "out", workers=1, max_bad_fraction=0.5)
    rows = reconciled(report, tmp_path / "out")
    assert rows["raw-pickle.npy"][0] == "undecodable" and not (tmp_path / "pwned").exists()


def test_a_link_loop_beside_a_metadata_file_is_not_fatal(tmp_path):
    """With --metadata, ignored names are compared with the metadata file's path: a loop among
    them (Path.resolve raises on one on Python 3.11) is still just an ignored file."""
    src = good_folder(tmp_path / "src")
    (src / "loop.csv").symlink_to("loop.csv")
    meta = src / "meta.csv"
    pd.DataFrame({"path": [f"good-{i}.png" for i in range(GOOD)], "group_id": "g"}).to_csv(meta, index=False)
    report = ingest(str(src), tmp_path / "out", workers=1, metadata=str(meta))
    reconciled(report, tmp_path / "out")
    assert (report.accepted, report.ignored) == (GOOD, 1)  # loop.csv; meta.csv is the metadata
