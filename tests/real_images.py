"""Images nobody here made, for the copy-kind tests and benchmarks: photographs (colour), printed
and handwritten marks, faces and textures, from the data scikit-image and scikit-learn ship.

Each source gives uint8 N x S x S x C tiles. Photographs keep their smooth tiles (sky, blurred
backgrounds): those are the ones that chained into one group before.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image


def _tiles(image: np.ndarray, size: int, scale: float) -> list[np.ndarray]:
    pil = Image.fromarray(image)
    pil = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))),
                     Image.Resampling.LANCZOS)
    array = np.asarray(pil)
    out = []
    for top in range(0, array.shape[0] - size + 1, size):
        for left in range(0, array.shape[1] - size + 1, size):
            out.append(array[top:top + size, left:left + size])
    return out


def photos(size: int = 64) -> np.ndarray:
    """Colour tiles of nine photographs at one scale (scikit-image and scikit-learn; two scales would hold zoomed copies)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
                  data.immunohistochemistry(), data.hubble_deep_field(), data.retina()[::2, ::2],
                  *load_sample_images().images]
    tiles = [t for im in images for t in _tiles(im[..., :3], size, 0.45)]
    return np.stack(tiles).astype(np.uint8)


def textures(size: int = 64) -> np.ndarray:
    """Grey tiles of scikit-image's brick, grass, gravel, camera, coins, text and page."""
    from skimage import data

    images = [data.brick(), data.grass(), data.gravel(), data.camera(), data.coins(),
              data.text(), data.page()]
    tiles = [t for im in images for t in _tiles(im, size, 0.5)]
    return np.stack(tiles).astype(np.uint8)[..., None]


def faces(size: int = 32) -> np.ndarray:
    """scikit-image's 200 faces of Labeled Faces in the Wild (25 x 25), resized to size."""
    from skimage import data

    raw = np.clip(data.lfw_subset() * 255, 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
                     for f in raw])[..., None]


def handwriting(size: int = 28) -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits (8 x 8, 16 levels), upsampled to size."""
    from sklearn.datasets import load_digits

    raw = (load_digits().images * (255 / 16)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.Resampling.BILINEAR))
                     for d in raw])[..., None]


SOURCES = {"photos": photos, "textures": textures, "faces": faces, "handwriting": handwriting}


def distinct(images: np.ndarray) -> np.ndarray:
    """Drop exact repeats (some photographs hold identical blank tiles)."""
    flat = images.reshape(len(images), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    return images[np.sort(first)]
