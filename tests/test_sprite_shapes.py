"""benchmarks/sprite_shapes.py's scores, on reconstructions whose answer is known: the sprites
themselves show their shape, and same-area discs at their centres of mass do not."""

import importlib.util
from pathlib import Path

import numpy as np

from kubevae.data import sprites

SPEC = importlib.util.spec_from_file_location(
    "sprite_shapes", Path(__file__).parents[1] / "benchmarks" / "sprite_shapes.py")
assert SPEC is not None and SPEC.loader is not None
sprite_shapes = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sprite_shapes)


def factors_of_every_shape(n_per_shape: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [[shape, *(rng.integers(size) for size in sprites.FACTOR_SIZES[1:])]
            for shape in range(len(sprites.SHAPES)) for _ in range(n_per_shape)]
    return np.array(rows, np.int64)


def test_true_sprites_show_their_shape_and_discs_do_not():
    factors = factors_of_every_shape()
    for zoom, size in ((1.6, 32), (1.6, 64), (1.0, 64)):
        own_64 = sprites.render(factors, zoom)[..., 0] / 255.0
        true = sprite_shapes.pooled(own_64, size)
        disc = sprite_shapes.pooled(sprite_shapes.discs(own_64), size)
        for name, (n, nearer, nearest) in sprite_shapes.shape_scores(true, factors, zoom).items():
            assert (n, nearer, nearest) == (40, 1.0, 1.0), (zoom, size, name)
        for name, (_, nearer, _) in sprite_shapes.shape_scores(disc, factors, zoom).items():
            assert nearer == 0.0, (zoom, size, name)


def test_discs_have_the_sprites_area_and_centre_of_mass():
    factors = factors_of_every_shape(10)
    own = sprites.render(factors, 1.6)[..., 0] / 255.0
    disc = sprite_shapes.discs(own)
    assert disc.shape == own.shape
    np.testing.assert_allclose(disc.sum(axis=(1, 2)), own.sum(axis=(1, 2)), rtol=0.05)
    np.testing.assert_allclose(sprite_shapes.centres_of_mass(disc), sprite_shapes.centres_of_mass(own),
                               atol=0.5)
