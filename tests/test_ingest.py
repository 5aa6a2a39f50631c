"""kubevae ingest: built-in data, a folder with planted bad files and metadata, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from conftest import kubevae_cmd, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kubevae.data import sprites
from kubevae.data.dataset import Dataset, load_splits, pixel_sha256
from kubevae.ingest import IngestError, ingest
from kubevae.ingest.decode import phash, phash_hex

RNG = np.random.default_rng(0)


def textured(size=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    return image if channels == 3 else image


def save(path: Path, array: np.ndarray, fmt: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
        return
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    image.save(path, fmt, **kw)


def test_builtin_sprites_manifest_hashes_and_factors(tmp_path):
    report = ingest("builtin://sprites?n=300&seed=3", tmp_path / "d", workers=1)
    assert (report.seen, report.accepted, report.quarantined) == (300, 300, 0)
    ds = Dataset.open(tmp_path / "d")
    images, manifest = sprites.generate(300, 3)
    np.testing.assert_array_equal(ds.images, images)
    assert ds.factor_names == list(sprites.FACTOR_NAMES)
    assert ds.factor_sizes == list(sprites.FACTOR_SIZES)
    np.testing.assert_array_equal(ds.factors, sprites.factors_of(
        [int(i.split("-")[1]) for i in ds.manifest["item_id"]]))
    assert list(ds.manifest["sha256"]) == list(manifest["sha256"])
    # The perceptual hash is bit-identical to the imagehash library's.
    reference = [str(imagehash.phash(Image.fromarray(im[..., 0]))) for im in images[:50]]
    assert list(ds.manifest["phash"][:50]) == reference
    for column in ("item_id", "source_uri", "sha256", "phash", "group_id", "timestamp", "label"):
        assert column in ds.manifest.columns
    card = json.loads((tmp_path / "d" / "card.json").read_text())
    assert card["counts"]["seen"] == 300 and card["content_sha256"] == ds.info["content_sha256"]
    assert card["card"]["license"].startswith("generated")


def test_batched_phash_matches_imagehash_on_photos():
    from kubevae.ingest.synthetic import scenes, textures

    images = np.concatenate([scenes(), textures(40, seed=5)])
    ours = phash_hex(phash(images))
    assert ours == [str(imagehash.phash(Image.fromarray(im))) for im in images]


@st.composite
def _grey_or_colour_images(draw) -> np.ndarray:
    """A batch of one shape: noise, smooth gradients, two-level and saturated images, at sizes
    that shrink, keep or grow to phash's 32 px, square or not."""
    n = draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    channels = draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "smooth", "binary", "levels"]))
    shape = (n, h, w, channels)
    if kind == "noise":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "smooth":
        walk = rng.normal(128, 60, (n, 1, 1, channels)) + rng.normal(0, 4, shape).cumsum(1).cumsum(2) / 8
        return np.clip(walk, 0, 255).astype(np.uint8)
    if kind == "binary":
        return (rng.integers(0, 2, shape) * 255).astype(np.uint8)
    return rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), shape)


@settings(max_examples=150)
@given(images=_grey_or_colour_images())
def test_batched_phash_is_imagehash_bit_for_bit(images):
    """PIL's greyscale and Lanczos resize are redone for the batch in numpy: every hash equals
    the library's, whatever the size (down, up, unchanged), channels or content."""
    ours = phash_hex(phash(images))
    assert ours == [str(imagehash.phash(Image.fromarray(im[..., 0] if im.shape[2] == 1 else im)))
                    for im in images]


def planted_folder(root: Path) -> dict[str, str | None]:
    """Good and bad files; returns relative path -> expected quarantine reason (None = accepted)."""
    expected: dict[str, str | None] = {}

    def put(name, array, reason=None, **kw):
        save(root / name, array, **kw)
        expected[name] = reason

    for i in range(6):
        put(f"good/png-{i}.png", textured(seed=i))
    put("good/photo.jpg", textured(seed=10), quality=95)
    put("good/bitmap.bmp", textured(seed=11))
    put("good/array.npy", textured(seed=12))
    put("good/unit-float.npy", textured(seed=13).astype(np.float32) / 255.0)
    put("bad/rgba.png", np.dstack([textured(seed=14), np.full((32, 32), 255, np.uint8)]), "wrong_mode")
    put("bad/grey.png", textured(channels=1, seed=15)[..., 0], "wrong_channels")
    put("bad/small.png", textured(size=16, seed=16), "wrong_size")
    put("bad/constant.png", np.full((32, 32, 3), 7, np.uint8), "constant")
    nan = textured(seed=17).astype(np.float32)
    nan[3, 4, 0] = np.nan
    put("bad/nan.npy", nan, "nonfinite")
    put("bad/huge.npy", textured(seed=18).astype(np.int32) * 3, "out_of_range")
    save(root / "bad/deep.png", textured(seed=19)[..., 0].astype(np.uint16) * 200)
    expected["bad/deep.png"] = "wrong_mode"
    (root / "bad/empty.png").write_bytes(b"")
    expected["bad/empty.png"] = "zero_byte"
    whole = (root / "good/png-0.png").read_bytes()
    (root / "bad/cut.png").write_bytes(whole[: len(whole) // 2])
    expected["bad/cut.png"] = "truncated"
    (root / "bad/text.jpg").write_bytes(b"this is not a JPEG at all" * 4)
    expected["bad/text.jpg"] = "undecodable"
    (root / "bad/pickle.npy").write_bytes(b"\x80\x04K\x01.")
    expected["bad/pickle.npy"] = "undecodable"
    (root / "notes.txt").write_text("not an image: ignored, and counted as ignored")
    return expected


def test_planted_bad_files_are_quarantined_with_reasons_and_counts_reconcile(tmp_path):
    src = tmp_path / "src"
    expected = planted_folder(src)
    bad = {k: v for k, v in expected.items() if v}
    out = tmp_path / "raw"
    with pytest.raises(IngestError) as caught:
        ingest(str(src), out, max_bad_fraction=0.1, workers=1)
    assert not out.exists(), "a failed ingest must not publish the dataset"
    assert (tmp_path / "raw.quarantine.csv").is_file()
    assert f"{len(bad)} of {len(expected)} files quarantined" in str(caught.value)

    report = ingest(str(src), out, max_bad_fraction=0.9, workers=2, batch_size=4)
    assert report.seen == len(expected) == report.accepted + report.quarantined
    assert report.accepted == len(expected) - len(bad)
    assert report.ignored == 1
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert dict(zip(quarantine["item_id"], quarantine["reason"], strict=True)) == bad
    assert quarantine["detail"].notna().all()
    ds = Dataset.open(out)
    assert ds.image_shape == (32, 32, 3)
    assert sorted(ds.manifest["item_id"]) == sorted(k for k, v in expected.items() if v is None)
    # Every format decodes to the same pixels as the array it was written from.
    row = list(ds.manifest["item_id"]).index("good/array.npy")
    np.testing.assert_array_equal(ds.images[row], textured(seed=12))
    assert ds.manifest["sha256"].iloc[row] == pixel_sha256(textured(seed=12))
    row = list(ds.manifest["item_id"]).index("good/unit-float.npy")
    np.testing.assert_array_equal(ds.images[row], textured(seed=13))
    card = json.loads((out / "card.json").read_text())
    assert card["counts"]["seen"] == report.seen and card["counts"]["quarantined"] == len(bad)
    assert card["counts"]["quarantined_wrong_mode"] == 2
    assert "seen = accepted + quarantined" in (out / "card.md").read_text()


def test_resize_and_channel_conversion_are_opt_in(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        save(src / f"big-{i}.png", textured(size=40, seed=i))  # 40 px is not a model size
    save(src / "grey.png", textured(size=40, channels=1, seed=9)[..., 0])
    with pytest.raises(ValueError, match="images are 40x40.*--image-size"):
        ingest(str(src), tmp_path / "x")
    report = ingest(str(src), tmp_path / "a", image_size=32, max_bad_fraction=0.5)
    assert report.accepted == 3 and report.reasons == {"wrong_channels": 1}
    report = ingest(str(src), tmp_path / "b", image_size=28, channels=1)
    assert report.accepted == 4 and Dataset.open(tmp_path / "b").image_shape == (28, 28, 1)


def test_builtin_sprites_zoom_draws_the_same_factors_larger(tmp_path):
    plain = ingest("builtin://sprites?n=60&seed=3", tmp_path / "a", workers=1)
    zoomed = ingest("builtin://sprites?n=60&seed=3&zoom=1.6", tmp_path / "b", workers=1)
    assert plain.accepted == zoomed.accepted == 60
    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    np.testing.assert_array_equal(a.factors, b.factors)
    area = (b.images > 0).sum(axis=(1, 2, 3)) / (a.images > 0).sum(axis=(1, 2, 3))
    assert 1.6 ** 2 * 0.85 < np.median(area) < 1.6 ** 2 * 1.15  # area grows as zoom squared
    card = json.loads((tmp_path / "b" / "card.json").read_text())["card"]
    assert card["zoom"] == 1.6 and card["source"] == "builtin://sprites?n=60&seed=3&zoom=1.6"


def test_builtin_digits_need_a_supported_size(tmp_path):
    with pytest.raises(ValueError, match="builtin://digits.*8x8.*--image-size"):
        ingest("builtin://digits", tmp_path / "d")
    report = ingest("builtin://digits", tmp_path / "d", image_size=32, workers=1)
    ds = Dataset.open(tmp_path / "d")
    assert report.accepted == len(ds) == 1797 and ds.image_shape == (32, 32, 1)
    assert sorted(ds.manifest["label"].unique()) == list(range(10))
    assert "CC BY 4.0" in ds.info["card"]["license"]


def write_metadata(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_metadata_columns_orphans_and_files_without_rows(tmp_path, suffix):
    src = tmp_path / "src"
    for i in range(5):
        save(src / f"p{i}/img.png", textured(seed=i))
    rows = [{"path": f"p{i}/img.png", "group_id": f"patient-{i % 2}", "label": i,
             "timestamp": f"2024-01-0{i + 1}T00:00:00Z", "factor_size": i % 3, "site": "A"}
            for i in range(4)]  # p4 has no row
    rows.append({"path": "p9/missing.png", "group_id": "x", "label": 0,
                 "timestamp": "2024-02-01", "factor_size": 0, "site": "B"})
    meta = tmp_path / f"meta{suffix}"
    write_metadata(meta, rows)
    report = ingest(str(src), tmp_path / "d", metadata=str(meta), max_bad_fraction=0.25)
    assert (report.seen, report.accepted, report.quarantined) == (5, 4, 1)
    assert report.reasons == {"no_metadata_row": 1}
    assert report.metadata_rows == 5 and report.metadata_rows_without_file == 1
    ds = Dataset.open(tmp_path / "d")
    m = ds.manifest.set_index("item_id")
    assert m.loc["p1/img.png", "group_id"] == "patient-1" and m.loc["p3/img.png", "site"] == "A"
    assert str(m.loc["p2/img.png", "timestamp"]) == "2024-01-03 00:00:00+00:00"
    assert ds.factor_names == ["size"] and ds.factor_sizes == [3]
    orphans = pd.read_csv(tmp_path / "d" / "metadata_orphans.csv")
    assert orphans["path"].tolist() == ["p9/missing.png"]
    assert pd.read_csv(tmp_path / "d" / "quarantine.csv")["item_id"].tolist() == ["p4/img.png"]


@pytest.mark.parametrize("rows, column, message", [
    ([{"file": "a.png"}], "path", r"no column 'path'.*found columns \['file'\]"),
    ([{"path": "a.png"}, {"path": "./a.png"}], "path", r"repeats 'a.png'"),
    ([{"path": "../a.png"}], "path", r"relative to the source"),
    ([{"path": "a.png", "timestamp": "yesterday-ish"}], "path", r"'timestamp'.*not a date"),
    ([{"path": "a.png", "factor_shape": 1.5}], "path", r"'factor_shape'.*integers"),
    ([{"path": "a.png", "sha256": "x"}], "path", r"computed by ingest"),
])
def test_bad_metadata_names_the_file_and_column(tmp_path, rows, column, message):
    save(tmp_path / "src" / "a.png", textured())
    meta = tmp_path / "meta.csv"
    write_metadata(meta, rows)
    with pytest.raises(ValueError, match=message) as caught:
        ingest(str(tmp_path / "src"), tmp_path / "d", metadata=str(meta), path_column=column)
    assert str(meta) in str(caught.value)


def test_empty_and_missing_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no images here")
    with pytest.raises(ValueError, match="the dataset is empty.*1 other file"):
        ingest(str(tmp_path / "empty"), tmp_path / "d")
    with pytest.raises(Exception, match="not a folder"):
        ingest(str(tmp_path / "nope"), tmp_path / "d")
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        ingest("gs://bucket/x", tmp_path / "d")
    with pytest.raises(ValueError, match="credentials in the URI are not allowed"):
        ingest("s3://key:secret@bucket/x", tmp_path / "d")
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ingest("builtin://sprites?n=5", tmp_path / "d", max_bad_fraction=1.5)
    with pytest.raises(ValueError, match=r"builtin://sprites takes \['n', 'seed', 'zoom'\]"):
        ingest("builtin://sprites?count=5", tmp_path / "d")
    with pytest.raises(ValueError, match=r"zoom: expected a number in \(0, 2.5\], got 3.0"):
        ingest("builtin://sprites?n=5&zoom=3", tmp_path / "d")


def test_processes_and_threads_write_the_same_dataset(tmp_path):
    a = ingest("builtin://sprites?n=600&seed=1", tmp_path / "p", workers=2, executor="process",
               batch_size=100)
    b = ingest("builtin://sprites?n=600&seed=1", tmp_path / "t", workers=2, executor="thread",
               batch_size=64)
    assert a.content_sha256 == b.content_sha256
    pd.testing.assert_frame_equal(Dataset.open(tmp_path / "p").manifest,
                                  Dataset.open(tmp_path / "t").manifest)


@pytest.mark.slow
def test_cli_ingest_then_split_produce_everything(tmp_path):
    env = subprocess_env()
    d1, d2 = tmp_path / "D1", tmp_path / "D2"
    ingest_run = subprocess.run(kubevae_cmd("ingest", "--source", "builtin://sprites?n=400",
                                            "--out", str(d1)),
                                capture_output=True, text=True, env=env, timeout=120)
    assert ingest_run.returncode == 0, ingest_run.stderr
    assert "seen=400 accepted=400 quarantined=0" in ingest_run.stdout
    split_run = subprocess.run(kubevae_cmd("split", "--data", str(d1), "--out", str(d2)),
                               capture_output=True, text=True, env=env, timeout=120)
    assert split_run.returncode == 0, split_run.stderr
    assert "PASSED" in split_run.stdout
    for name in ("assignments.csv", "stats.json", "leakage_report.json", "leakage_report.md"):
        assert (d2 / name).is_file()
    splits = load_splits(d2)
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == 400
    assert splits["test"].factor_sizes == list(sprites.FACTOR_SIZES)
    bad = subprocess.run(kubevae_cmd("split", "--data", str(d1), "--out", str(tmp_path / "x"),
                                     "--group-column", "patient"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--group-column 'patient': no such column" in bad.stderr


def _blas_threads(task: int) -> tuple[int, list[int]]:
    from threadpoolctl import threadpool_info

    return task, [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_decoding_workers_keep_their_order_and_run_one_blas_thread_each(kind):
    """ordered_map gives the tasks' results in order, and each worker's numpy products run on
    one thread (a BLAS pool per worker as wide as the machine spun the workers against each
    other: docs/data.md); the caller's pool is left as it was."""
    from threadpoolctl import threadpool_info

    from kubevae.ingest.parallel import ordered_map

    before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    results = list(ordered_map(_blas_threads, range(9), workers=2, kind=kind))
    assert [task for task, _ in results] == list(range(9))
    assert all(threads and all(t == 1 for t in threads) for _, threads in results)
    assert [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"] == before
