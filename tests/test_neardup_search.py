"""The near-duplicate search's parts, against slow references written from their definitions.

- The inverted file (neardup._Searcher) returns, for any data, query, k and excluded item, the
  k best items of the cells it probes, best first, padded with id -1: both of its scans (a
  matrix product per cell; a few queries gathered) and the exact index for small data.
- A view's descriptor (neardup.view_descriptors) equals the descriptor of the view made as an
  image: the mirror image, the centre crop, its zoom by torch's grid_sample, a turn by PIL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kubevae.split import neardup


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(searcher, base, query, cells, k, exclude):
    """The k best of the probed cells' members, written out one query at a time."""
    filed = searcher.filed.numpy()
    sims = np.full((len(query), k), -np.inf, np.float32)
    ids = np.full((len(query), k), -1, np.int64)
    for i, q in enumerate(query):
        members = np.flatnonzero(np.isin(filed, cells[i]))
        if exclude is not None:
            members = members[members != exclude[i]]
        scores = base[members] @ q
        best = np.argsort(-scores, kind="stable")[:k]
        sims[i, :len(best)], ids[i, :len(best)] = scores[best], members[best]
    return sims, ids


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(60, 400), d=st.integers(2, 20), k=st.integers(1, 6), queries=st.integers(1, 60),
       seed=st.integers(0, 2**32 - 1), own=st.booleans(), excluding=st.booleans(),
       gathered=st.booleans())
def test_the_inverted_file_returns_the_best_of_the_cells_it_probes(n, d, k, queries, seed, own,
                                                                   excluding, gathered, monkeypatch):
    # The same patches each example (so sharing the fixture across examples is harmless).
    monkeypatch.setattr(neardup, "EXACT_SEARCH_MAX", 50)
    monkeypatch.setattr(neardup, "IVF_LIST_SIZE", 16)
    monkeypatch.setattr(neardup, "GATHER_MAX", 1 << 40 if gathered else 0)
    rng = np.random.default_rng(seed)
    base = _unit(rng, n, d)
    base[n // 2:n // 2 + 10] = base[:10]           # exact ties
    searcher = neardup._Searcher(base)
    if own:
        q0 = int(rng.integers(0, n - 1))
        query = base[q0:q0 + queries]
        cells = searcher.cells[q0:q0 + len(query)]
        rows = np.arange(q0, q0 + len(query))
    else:
        q0, query = None, _unit(rng, queries, d)
        cells = searcher._nearest_cells(query)
        rows = rng.integers(0, n, len(query))
    exclude = rows if excluding else None
    sims, ids = searcher.search(query, k, q0, exclude=exclude)
    want_sims, want_ids = _brute(searcher, base, query, cells, k, exclude)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    found = want_ids >= 0
    assert ((ids >= 0) == found).all()
    # Ties may come in either order: each returned id scores what the reference has there.
    np.testing.assert_allclose((base[ids[found]] * query[np.nonzero(found)[0]]).sum(1), want_sims[found], atol=1e-5)
    if excluding:
        assert not (ids == rows[:, None]).any()


def test_cells_come_from_an_exact_product_or_the_hnsw_graph(monkeypatch):
    rng = np.random.default_rng(0)
    base = _unit(rng, 3000, 16)
    monkeypatch.setattr(neardup, "EXACT_SEARCH_MAX", 100)
    monkeypatch.setattr(neardup, "IVF_LIST_SIZE", 16)
    exact = neardup._Searcher(base)
    assert exact.quantizer is None and "exact coarse" in exact.kind
    monkeypatch.setattr(neardup, "EXACT_COARSE_MAX", 10)
    graph = neardup._Searcher(base)
    assert graph.quantizer is not None and "HNSW" in graph.kind
    # The graph finds nearly the same nearest cell as the product (centres are the same items).
    query = _unit(rng, 500, 16)
    assert (exact._nearest_cells(query)[:, 0] == graph._nearest_cells(query)[:, 0]).mean() > 0.95


def test_the_exact_index_excludes_only_the_named_item():
    rng = np.random.default_rng(1)
    base = _unit(rng, 300, 8)
    searcher = neardup._Searcher(base)
    sims, ids = searcher.search(base, 3, exclude=np.arange(300))
    full = np.argsort(-(base @ base.T), axis=1, kind="stable")
    for i in range(300):
        assert list(ids[i]) == [j for j in full[i] if j != i][:3]


def _smooth_images(n, h, w, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, 1, h, w)).astype(np.float32))
    x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)   # some structure at every scale
    x = (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
    return (x[:, 0].numpy() * 255).astype(np.uint8)


def _zoomed_centre(work, zoom):
    """The centre, zoomed, as an image: torch's bilinear grid_sample (the definition of the zoom)."""
    top, bottom = neardup._centre_span(work.shape[1])
    left, right = neardup._centre_span(work.shape[2])
    share = neardup.CENTRE_SHARE / zoom
    theta = torch.tensor([[share, 0.0, 0.0], [0.0, share, 0.0]], dtype=torch.float32)
    x = torch.from_numpy(work.astype(np.float32))[:, None]
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), 1, bottom - top, right - left], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("shape", [(64, 64), (38, 38), (28, 28), (16, 16), (64, 48), (48, 64), (9, 7)])
def test_each_linear_view_is_the_descriptor_of_the_view_made_as_an_image(shape):
    work = _smooth_images(24, *shape, seed=sum(shape))
    top, bottom = neardup._centre_span(shape[0])
    left, right = neardup._centre_span(shape[1])
    made = {
        "whole": work.astype(np.float32),
        "mirror": work[:, :, ::-1].astype(np.float32),
        "centre": work[:, top:bottom, left:right].astype(np.float32),
        "zoom_in": _zoomed_centre(work, 1 / neardup.ZOOM_VIEW),
        "zoom_out": _zoomed_centre(work, neardup.ZOOM_VIEW),
        "mirror_zoom_in": _zoomed_centre(np.ascontiguousarray(work[:, :, ::-1]), 1 / neardup.ZOOM_VIEW),
        "mirror_zoom_out": _zoomed_centre(np.ascontiguousarray(work[:, :, ::-1]), neardup.ZOOM_VIEW),
    }
    folded = neardup.view_descriptors(work, list(made))
    for view, image in made.items():
        np.testing.assert_allclose(folded[view], neardup.descriptors(np.ascontiguousarray(image)),
                                   atol=2e-5, err_msg=view)


def test_a_turned_view_finds_a_copy_turned_by_pil():
    """An image turned by PIL (as a user's tool turns it) has, in its centre, what the original's
    rotate_left view shows: their descriptors agree far better than the plain centres do."""
    work = _smooth_images(40, 64, 64, seed=5)
    degrees = neardup.ROTATION_VIEW
    turned = np.stack([np.asarray(Image.fromarray(w).rotate(degrees, Image.Resampling.BILINEAR)) for w in work])
    copy_centre = neardup.descriptors(turned, view="centre")
    views = neardup.view_descriptors(work, ["centre", "rotate_left", "rotate_right"])
    agree = {v: (d * copy_centre).sum(1) for v, d in views.items()}
    assert np.median(agree["rotate_left"]) > 0.99
    assert (agree["rotate_left"] > agree["centre"]).mean() > 0.9
    assert (agree["rotate_left"] > agree["rotate_right"]).all()


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_prepare_in_blocks_equals_the_whole_at_once(block):
    """prepare's blocks, filled by threads, give what each step gives on all the images at once."""
    rng = np.random.default_rng(block)
    images = rng.integers(0, 256, (150, 20, 24, 3), dtype=np.uint8)
    ready = neardup.prepare(images, block=block)
    work = neardup.working_images(images)
    means, stds = neardup._statistics(work)
    np.testing.assert_array_equal(ready.work, work)
    np.testing.assert_allclose(ready.means, means, rtol=1e-6)
    np.testing.assert_allclose(ready.stds, stds, rtol=1e-5)
    np.testing.assert_allclose(ready.details, neardup.detail(work), rtol=1e-5)
    np.testing.assert_allclose(ready.descriptors, neardup.descriptors(work), atol=1e-6)
    empty = neardup.prepare(images[:0], block=block)
    assert empty.work.shape == (0, 20, 24) and empty.descriptors.shape[0] == 0


@pytest.mark.parametrize("use_ivf", [False, True])
def test_a_wider_mutual_rank_keeps_every_candidate_of_a_narrower(monkeypatch, use_ivf):
    """The aligned stage's candidates with each among the other's best two in a view include
    those with each the other's best (MUTUAL_RANK), with the same cosine and starts."""
    from kubevae.ingest.synthetic import textures

    if use_ivf:
        monkeypatch.setattr(neardup, "EXACT_SEARCH_MAX", 100)
        monkeypatch.setattr(neardup, "IVF_LIST_SIZE", 32)
    ready = neardup.prepare(textures(600, seed=3))
    views = neardup.AlignedViews(ready.work, neardup._Searcher(ready.descriptors))
    found = {}
    for rank in (1, 2):
        monkeypatch.setattr(neardup, "MUTUAL_RANK", rank)
        pairs, starts, cos, _ = views.mutual_pairs()
        found[rank] = {tuple(p): (int(s), float(c)) for p, s, c in zip(pairs, starts, cos, strict=True)}
    assert found[1] and len(found[2]) > len(found[1])
    for pair, (start, cosine) in found[1].items():
        assert pair in found[2] and found[2][pair][0] & start == start and found[2][pair][1] >= cosine - 1e-6


def test_the_second_pass_gives_the_same_candidates_from_kept_or_remade_queries(monkeypatch):
    """mutual_pairs' exact check of the far end uses the views' queries again: kept from the
    first pass when they fit in KEPT_QUERY_BYTES, else made again block by block; the same
    candidates, starts and cosines either way, in blocks or whole."""
    from kubevae.ingest.synthetic import textures

    monkeypatch.setattr(neardup, "EXACT_SEARCH_MAX", 100)
    monkeypatch.setattr(neardup, "IVF_LIST_SIZE", 32)
    ready = neardup.prepare(textures(500, seed=4))
    views = neardup.AlignedViews(ready.work, neardup._Searcher(ready.descriptors))
    results = []
    for block, kept_bytes in ((1 << 20, 1 << 40), (128, 1 << 40), (128, 0)):
        monkeypatch.setattr(neardup, "QUERY_BLOCK", block)
        monkeypatch.setattr(neardup, "KEPT_QUERY_BYTES", kept_bytes)
        pairs, starts, cos, _ = views.mutual_pairs()
        results.append({tuple(p): (int(s), round(float(c), 5)) for p, s, c in zip(pairs, starts, cos, strict=True)})
    assert results[0] and results[0] == results[1] == results[2]
