"""The copies users make of an image, for calibration, the tests and benchmarks/dedup.py.

Each kind takes and returns a uint8 H x W x C image of the same size, with its edit drawn from
the seed. The set follows the copies that leak in practice, alone and combined:

- photometric: JPEG re-saves (quality 70 and 30), brightness and contrast edits, mild sensor
  noise, blur and sharpening, a resample round trip;
- small shifts: a crop offset by up to 2 pixels;
- geometric: re-crops and zooms (8-15% of the frame trimmed), rotations of 4-10 degrees,
  aspect-ratio changes (10-18% stretch), letterboxing and borders, mirror images;
- overlays covering a small part of the image: a watermark in a corner, a caption bar.

`GEOMETRIC` names the kinds left to the aligned verification (kubevae.split.align); `MIRROR`
the mirror kinds, which only count as copies with mirror matching on (the default).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kubevae.ingest import synthetic

MAX_SHIFT = 2
JPEG_QUALITY = 70
NOISE_STD = 4.0  # grey levels: mild sensor noise


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0], "L") if image.shape[-1] == 1 else Image.fromarray(image, "RGB")


def _array(pil: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    return out[..., None] if channels == 1 else out


def _noise(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, NOISE_STD, image.shape), 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, factor: float = 0.8, offset: float = 20.0) -> np.ndarray:
    return np.clip(np.rint(image * factor + offset), 0, 255).astype(np.uint8)


def rescale_round_trip(image: np.ndarray) -> np.ndarray:
    """Up by 8/7 and back (28 -> 32 -> 28 px), bilinear: a copy that went through a resize."""
    h, w = image.shape[:2]
    pil = _pil(image)
    up = pil.resize((max(w + 1, w * 8 // 7), max(h + 1, h * 8 // 7)), Image.Resampling.BILINEAR)
    return _array(up.resize((w, h), Image.Resampling.BILINEAR), image.shape[-1])


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(image).save(buffer, "JPEG", quality=quality)
    return _array(Image.open(buffer), image.shape[-1])


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return synthetic.shift(image, dy, dx)


def crop_zoom(image: np.ndarray, seed: int) -> np.ndarray:
    """Trim 8-15% of the frame's side (off-centre) and resize back: a re-crop or a zoom."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    keep = 1 - rng.uniform(0.08, 0.15)
    ch, cw = h * keep, w * keep
    top, left = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
    box = (left, top, left + cw, top + ch)
    return _array(_pil(image).resize((w, h), Image.Resampling.BILINEAR, box=box), image.shape[-1])


def rotate(image: np.ndarray, seed: int) -> np.ndarray:
    """Rotate by 4-10 degrees either way about the centre; the corners fill with black."""
    rng = np.random.default_rng(seed)
    angle = float(rng.uniform(4, 10) * rng.choice([-1, 1]))
    return _array(_pil(image).rotate(angle, Image.Resampling.BILINEAR), image.shape[-1])


def aspect(image: np.ndarray, seed: int) -> np.ndarray:
    """Stretch one axis by 10-18% and crop back to the frame: an aspect-ratio change."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    factor = rng.uniform(1.10, 1.18)
    if rng.random() < 0.5:   # wider: keep the centre columns of the stretched image
        cw = w / factor
        box = ((w - cw) / 2, 0, (w + cw) / 2, h)
    else:
        ch = h / factor
        box = (0, (h - ch) / 2, w, (h + ch) / 2)
    return _array(_pil(image).resize((w, h), Image.Resampling.BILINEAR, box=box), image.shape[-1])


def letterbox(image: np.ndarray, seed: int) -> np.ndarray:
    """A smaller re-export framed by bars: scaled to 75-85% on one axis (bars top and bottom or
    left and right, black or white), or to 80-90% on both (a border all round)."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    fill = int(rng.choice([0, 255]))
    canvas = Image.new("L" if image.shape[-1] == 1 else "RGB", (w, h),
                       fill if image.shape[-1] == 1 else (fill,) * 3)
    kind = rng.integers(3)
    if kind == 0:
        nh, nw = max(2, round(h * rng.uniform(0.75, 0.85))), w
    elif kind == 1:
        nh, nw = h, max(2, round(w * rng.uniform(0.75, 0.85)))
    else:
        s = rng.uniform(0.8, 0.9)
        nh, nw = max(2, round(h * s)), max(2, round(w * s))
    small = _pil(image).resize((nw, nh), Image.Resampling.BILINEAR)
    canvas.paste(small, ((w - nw) // 2, (h - nh) // 2))
    return _array(canvas, image.shape[-1])


def watermark(image: np.ndarray, seed: int) -> np.ndarray:
    """An opaque mark (a box with a pattern) over 4-7% of the frame, in a corner."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    area = rng.uniform(0.04, 0.07) * h * w
    mh = max(2, round(np.sqrt(area / 2)))
    mw = max(2, min(w, round(area / mh)))
    top = int(rng.choice([1, h - mh - 1])) if h > mh + 2 else 0
    left = int(rng.choice([1, w - mw - 1])) if w > mw + 2 else 0
    out = image.copy()
    colour = np.array([255, 255, 255] if rng.random() < 0.5 else [0, 0, 0], np.uint8)[:image.shape[-1]]
    out[top:top + mh, left:left + mw] = colour
    stripes = (np.arange(mw) // max(1, mw // 5)) % 2 == 1
    out[top + mh // 3:top + 2 * mh // 3 + 1, left:left + mw][:, stripes] = 255 - colour
    return out


def caption(image: np.ndarray, seed: int) -> np.ndarray:
    """A caption bar with text across the bottom or top 9-12% of the frame."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    bar = max(2, round(h * rng.uniform(0.09, 0.12)))
    pil = _pil(image).convert("RGB")
    draw = ImageDraw.Draw(pil)
    top = h - bar if rng.random() < 0.5 else 0
    draw.rectangle((0, top, w, top + bar - 1), fill=(20, 20, 20))
    draw.text((2, top), "(c) 2026 photo", fill=(240, 240, 240))
    return _array(pil, image.shape[-1])


def blur(image: np.ndarray, seed: int) -> np.ndarray:
    radius = 0.8 + 0.4 * (seed % 3) / 2 * (max(image.shape[:2]) / 64)
    return _array(_pil(image).filter(ImageFilter.GaussianBlur(radius)), image.shape[-1])


def sharpen(image: np.ndarray, seed: int) -> np.ndarray:
    return _array(_pil(image).filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2)),
                  image.shape[-1])


def mirror(image: np.ndarray, seed: int) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


KINDS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "shift_2_2": lambda im, s: _shift(im, MAX_SHIFT, -MAX_SHIFT),
    "shift_1": lambda im, s: _shift(im, -1, 1) if s % 2 else _shift(im, 1, 0),
    "jpeg_70": lambda im, s: jpeg(im),
    "jpeg_30": lambda im, s: jpeg(im, 30),
    "brighter_25": lambda im, s: synthetic.brighten(im, 25),
    "contrast_0.8": lambda im, s: _contrast(im),
    "noise_4": lambda im, s: _noise(im, s),
    "rescale_8/7": lambda im, s: rescale_round_trip(im),
    "blur": blur,
    "sharpen": sharpen,
    "shift_jpeg_noise": lambda im, s: jpeg(_noise(_shift(im, 1, -2), s), 75),
    "crop_zoom": crop_zoom,
    "crop_zoom_jpeg": lambda im, s: jpeg(crop_zoom(im, s), 60),
    "rotate": rotate,
    "rotate_crop": lambda im, s: crop_zoom(rotate(im, s), s + 1),
    "aspect": aspect,
    "letterbox": letterbox,
    "letterbox_jpeg": lambda im, s: jpeg(letterbox(im, s), 60),
    "watermark": watermark,
    "caption": caption,
    "watermark_crop_zoom": lambda im, s: watermark(crop_zoom(im, s), s + 1),
    "mirror": mirror,
    "mirror_crop_zoom": lambda im, s: mirror(crop_zoom(im, s), s),
}

# The kinds the shift stage is calibrated on (its threshold: their 0.5th percentile); every other
# kind is left to the aligned stage, whose threshold is set against distinct look-alikes.
SHIFT_AND_PHOTOMETRIC = ("shift_2_2", "shift_1", "jpeg_70", "brighter_25", "contrast_0.8", "noise_4",
                         "rescale_8/7", "shift_jpeg_noise")
GEOMETRIC = frozenset({"jpeg_30", "blur", "sharpen", "crop_zoom", "crop_zoom_jpeg", "rotate", "rotate_crop", "aspect", "letterbox",
                       "letterbox_jpeg", "watermark", "caption", "watermark_crop_zoom", "mirror",
                       "mirror_crop_zoom"})
MIRROR = frozenset({"mirror", "mirror_crop_zoom"})


def kinds(mirrors: bool = True) -> list[str]:
    """The kinds that count as copies: all of them, or all but the mirror images."""
    return [k for k in KINDS if mirrors or k not in MIRROR]


def make_copy(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    image = np.asarray(image)
    squeeze = image.ndim == 2
    out = KINDS[kind](image[..., None] if squeeze else image, seed)
    return out[..., 0] if squeeze else out
