"""Do a model's reconstructions of sprites show their shape? A check behind issue 10's "the
reconstructions show the input's shape and position", measured instead of judged by eye.

For each test sprite, the reconstruction from its mean code is compared (sum of squared pixel
differences) with three references drawn at the sprite's own scale, orientation and position,
at the image size of the split (2x2 mean pooling of the 64-px render, per 32 px):
- its own shape (the true sprite, without the resize's noise);
- a disc of the same area at the sprite's centre of mass: what a model that learnt position and
  scale but not shape draws. (At the sprite's nominal centre it would be an easy straw man for
  hearts, whose mass lies off that centre: a round blob there scored as "heart-shaped".)

Printed per shape: the fraction of reconstructions nearer their own shape than the disc, and
the fraction whose nearest shape template (square, ellipse, heart at the same factors) is the
right one. The second is lenient (a round blob is nearer a square than a thin ellipse); the
first is the one that says whether the shape shows. Also the test PSNR from the mean code.

Example (the split and model of a `make run`, whose data uses zoom 1.6):
  python benchmarks/sprite_shapes.py --model RUN/train/model --split RUN/split/splits --zoom 1.6
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kubevae.data import sprites
from kubevae.data.dataset import load_splits
from kubevae.model import load_model


def pooled(images: np.ndarray, size: int) -> np.ndarray:
    """64-px {0, 1} images -> size-px means (the area resize, for sizes that divide 64)."""
    k = sprites.IMAGE_SIZE // size
    return images.reshape(len(images), size, k, size, k).mean(axis=(2, 4))


def centres_of_mass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N x H x W images -> the x and y of each one's centre of mass, in pixels."""
    grid = np.arange(images.shape[-1]) + 0.5
    area = images.sum(axis=(1, 2))
    return (images.sum(axis=1) * grid).sum(axis=1) / area, (images.sum(axis=2) * grid).sum(axis=1) / area


def discs(sprites_64: np.ndarray) -> np.ndarray:
    """For {0, 1} N x 64 x 64 sprites: discs of the same area at the same centres of mass."""
    grid = np.arange(sprites.IMAGE_SIZE) + 0.5
    area = sprites_64.sum(axis=(1, 2))
    cx, cy = centres_of_mass(sprites_64)
    r2 = (grid[None, None, :] - cx[:, None, None]) ** 2 + (grid[None, :, None] - cy[:, None, None]) ** 2
    return (r2 <= (area / np.pi)[:, None, None]).astype(np.float32)


def shape_scores(recon: np.ndarray, factors: np.ndarray, zoom: float) -> dict[str, tuple[int, float, float]]:
    """Reconstructions (N x size x size, in [0, 1]) of sprites with these factors -> per shape:
    (count, fraction nearer their own shape than the disc, fraction whose nearest template is
    their own shape)."""
    size = recon.shape[-1]
    distance = []
    for shape in range(len(sprites.SHAPES)):
        as_shape = factors.copy()
        as_shape[:, 0] = shape
        template = pooled(sprites.render(as_shape, zoom)[..., 0] / 255.0, size)
        distance.append(((recon - template) ** 2).sum(axis=(1, 2)))
    distance_by_shape = np.stack(distance, axis=1)
    disc = pooled(discs(sprites.render(factors, zoom)[..., 0] / 255.0), size)
    to_disc = ((recon - disc) ** 2).sum(axis=(1, 2))
    to_own = distance_by_shape[np.arange(len(factors)), factors[:, 0]]
    scores = {}
    for shape, name in enumerate(sprites.SHAPES):
        rows = factors[:, 0] == shape
        scores[name] = (int(rows.sum()), float(np.mean(to_own[rows] < to_disc[rows])),
                        float(np.mean(distance_by_shape[rows].argmin(axis=1) == shape)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (kubevae train --out)")
    parser.add_argument("--split", required=True, help="the split folder it was trained on")
    parser.add_argument("--zoom", type=float, default=1.0, help="the sprites' zoom (the dataset card records it)")
    args = parser.parse_args()

    test = load_splits(args.split)["test"]
    if test is None or test.factors is None:
        raise SystemExit(f"--split {args.split}: expected a test split of built-in sprites (factor columns)")
    size = test.image_shape[0]
    if sprites.IMAGE_SIZE % size:
        raise SystemExit(f"--split {args.split}: expected an image size that divides 64, got {size}")
    vae = load_model(args.model).eval()
    with torch.no_grad():
        x = vae.to_unit(torch.from_numpy(np.array(test.images)))  # a copy: the shards are memory-mapped read-only
        recon = vae.mean_image(vae.decode(vae.encode(x)[0])).numpy()[:, 0]
    psnr = float(np.mean(10 * np.log10(1 / ((recon - x.numpy()[:, 0]) ** 2).mean(axis=(1, 2)))))

    print(f"model {args.model} on {len(test.factors)} test sprites (zoom {args.zoom}, {size} px): "
          f"PSNR {psnr:.2f} dB (mean code)")
    for name, (n, nearer, nearest) in shape_scores(recon, test.factors, args.zoom).items():
        print(f"  {name:8s} n={n:4d}  nearer own shape than a disc: {nearer:6.1%}"
              f"  nearest template right: {nearest:6.1%}")


if __name__ == "__main__":
    main()
