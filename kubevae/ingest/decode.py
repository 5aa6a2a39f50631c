"""Decode and validate one image file, and hash what is accepted.

Every file ends in exactly one of two places: the output arrays, or the quarantine list with one
of the reasons below. Nothing is dropped without a reason.

    zero_byte        the file is empty
    undecodable      not a PNG, JPEG, BMP or NPY file, or unreadable (detail says why)
    truncated        the file ends before its image data does
    too_large        more than MAX_PIXELS pixels, read from the header before decoding (PNG,
                     JPEG, BMP, NPY), or a PIL DecompressionBombWarning; or a file larger than
                     any image within that limit can be (max_file_bytes: checked on the listed
                     size before a byte is read, and again while reading)
    empty            an NPY array with no elements
    wrong_mode       a pixel mode kubevae does not train on (alpha or a transparent palette,
                     16-bit, float, CMYK, ...)
    animated         more than one frame (an animated PNG, a multi-picture JPEG)
    wrong_channels   1 channel where 3 are expected or the other way round (--channels converts)
    wrong_size       not the target size (--image-size resizes)
    nonfinite        NaN or Inf in an NPY array
    out_of_range     NPY values outside [0, 1] (floats) or [0, 255]
    constant         every pixel has the same value: no signal to learn from
    read_error       the bytes could not be fetched (after retries)
    no_metadata_row  metadata was given but has no row for this file
    bad_name         the file name is not valid UTF-8 (the item id could not be stored)
    broken_link      a symbolic link whose target does not exist
    outside_source   a symbolic link to a file outside the source folder
    not_a_file       not a regular file: a FIFO, a socket, a device (never opened: a FIFO
                     blocks its reader, /dev/zero never ends)
    changed          deleted, replaced or turned into a link between the listing and the read
    decode_error     any other, unexpected error while decoding (detail names it)

Accepted pixels are uint8 H x W x C, as a viewer shows them: an EXIF orientation is applied. Two hashes are kept per image: `pixel_sha256` (exact
duplicates, any file format) and a 64-bit perceptual hash `phash` that is bit-identical to
`imagehash.phash` (DCT of the 32x32 greyscale image, 8x8 low frequencies against their median),
computed for a batch at once (`phash`).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.fftpack
from PIL import Image, ImageOps, UnidentifiedImageError

from kubevae.data.dataset import pixel_sha256

SUPPORTED_SIZES = (28, 32, 64)
SUPPORTED_CHANNELS = (1, 3)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".npy")
PIL_FORMATS = ["PNG", "JPEG", "BMP"]
REASONS = ("zero_byte", "undecodable", "truncated", "too_large", "empty", "wrong_mode",
           "wrong_channels", "wrong_size", "nonfinite", "out_of_range", "constant", "read_error",
           "no_metadata_row", "bad_name", "broken_link", "outside_source", "decode_error",
           "not_a_file", "changed", "animated")
# The largest image decoded at all (pixels, from the header): 50 megapixels, a large camera
# photo (150 MB as RGB), well below PIL's own bomb limit, and far above any model size.
MAX_PIXELS = 50_000_000
NPY_MAX_HEADER = 10_000
# The largest file worth reading, so that a file's size refuses it before a byte is read (a
# sparse 10 GB file, /dev/zero behind a name): an image within MAX_PIXELS takes at most 4 bytes
# a pixel in a PNG, JPEG or BMP that kubevae accepts (a 32-bit BMP; a PNG stored uncompressed),
# plus room for metadata chunks; an NPY array at most 3 channels of 8-byte values.
MAX_IMAGE_FILE_BYTES = 4 * MAX_PIXELS + (16 << 20)
MAX_NPY_BYTES = 3 * 8 * MAX_PIXELS + NPY_MAX_HEADER + 16
# Modes that map onto 1 or 3 channels without losing anything.
_MODE_CHANNELS = {"1": ("L", 1), "L": ("L", 1), "P": ("RGB", 3), "RGB": ("RGB", 3)}
_ALPHA_MODES = {"LA": "L", "La": "L", "PA": "RGB", "RGBA": "RGB", "RGBa": "RGB"}
PHASH_SIZE, PHASH_HIGHFREQ = 8, 4
ORIENTATION = 0x0112  # the EXIF tag


class Rejected(Exception):
    """A file that goes to quarantine: `reason` is one of REASONS, `detail` says what was seen."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; expected one of {sorted(REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Target:
    """What every accepted image must be. `resize`/`convert` allow fixing size/channels."""
    size: int
    channels: int
    resize: bool = False
    convert: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


@dataclass
class BatchResult:
    """The outcome of one batch, in the order of its keys."""
    images: np.ndarray                       # uint8 A x H x W x C, accepted items only
    accepted: list[int] = field(default_factory=list)   # positions in the batch
    sha256: list[str] = field(default_factory=list)     # per accepted item
    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # uint64 per accepted item
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (position, reason, detail)


def max_file_bytes(name: str) -> int:
    """The largest file named `name` that is read at all (see MAX_IMAGE_FILE_BYTES)."""
    return MAX_NPY_BYTES if name.lower().endswith(".npy") else MAX_IMAGE_FILE_BYTES


def size_problem(size: int | None, name: str, when: str = "listed") -> Rejected | None:
    """A too_large rejection for a file of `size` bytes, or None when it may be read."""
    limit = max_file_bytes(name)
    if size is None or size <= limit:
        return None
    return Rejected("too_large", f"{size} bytes ({when}); the limit for a "
                                 f"{'.npy' if limit == MAX_NPY_BYTES else 'PNG/JPEG/BMP'} file "
                                 f"is {limit} bytes (an image of {MAX_PIXELS} pixels); not read")


def decode(data: bytes | np.ndarray | Rejected, name: str) -> np.ndarray:
    """File bytes (or an in-memory array) -> uint8 H x W x C with C in (1, 3). Raises Rejected,
    also for a payload that is already a Rejected (a fetch that failed)."""
    if isinstance(data, Rejected):
        raise data
    if isinstance(data, np.ndarray):
        return _from_array(data)
    if len(data) == 0:
        raise Rejected("zero_byte", "0 bytes")
    if name.lower().endswith(".npy"):
        return _from_array(_load_npy(data))
    return _decode_pil(data)


def _decode_pil(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it, and then decodes anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)  # the header only
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Rejected("too_large", f"{width}x{height} = {width * height} pixels (from "
                                            f"the header); the limit is {MAX_PIXELS}")
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise Rejected("animated", f"{image.format} with {frames} frames; expected one "
                                           "still image")
            image.load()
            # What a viewer shows (and a person labelled): a phone's photo is stored sideways
            # with an EXIF orientation tag.
            if image.getexif().get(ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise Rejected("undecodable", "not a PNG, JPEG or BMP image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            raise Rejected("truncated", str(e)) from None
        raise Rejected("undecodable", f"{type(e).__name__}: {e}") from None
    return _pil_to_array(image)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in _ALPHA_MODES:
        raise Rejected("wrong_mode", f"mode {image.mode} has an alpha channel; expected L or RGB")
    if image.mode in _MODE_CHANNELS and "transparency" in image.info:
        raise Rejected("wrong_mode", f"mode {image.mode} with a transparent "
                                     f"{'palette entry' if image.mode == 'P' else 'colour'} "
                                     "(tRNS, an alpha channel); expected L or RGB")
    if image.mode not in _MODE_CHANNELS:
        raise Rejected("wrong_mode", f"mode {image.mode}; expected 8-bit L or RGB")
    mode, channels = _MODE_CHANNELS[image.mode]
    array = np.asarray(image.convert(mode) if image.mode != mode else image, dtype=np.uint8)
    return array.reshape(*array.shape[:2], channels)


def _load_npy(data: bytes) -> np.ndarray:
    """The array of an NPY file, its header read and bounded first: numpy allocates the whole
    array that a header declares before it reads a byte of it."""
    if not data.startswith(b"\x93NUMPY"):
        raise Rejected("undecodable", "no .npy header (magic \\x93NUMPY missing)")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise Rejected("undecodable", f"NPY format version {version}; expected 1.0 or 2.0")
        shape, fortran, dtype = read_header(stream, max_header_size=NPY_MAX_HEADER)
    except Rejected:
        raise
    except Exception as e:  # a malformed header, whatever numpy raises for it
        raise Rejected("undecodable", f"NPY header: {type(e).__name__}: {e}") from None
    if dtype.hasobject:  # never unpickled: the header alone refuses it
        raise Rejected("undecodable", f"NPY dtype {dtype} holds Python objects (pickles); "
                                      "never unpickled")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise Rejected("undecodable", f"NPY dtype {dtype}; expected bool, integer or float "
                                      "(not structured)")
    count = int(np.prod(shape, dtype=object))
    pixels = int(np.prod(shape[:2], dtype=object)) if len(shape) >= 2 else count
    if count == 0:
        raise Rejected("empty", f"NPY array of shape {shape} holds no values")
    if pixels > MAX_PIXELS or count > 4 * MAX_PIXELS:
        raise Rejected("too_large", f"NPY header declares shape {shape}; the limit is "
                                    f"{MAX_PIXELS} pixels")
    body = memoryview(data)[stream.tell():]
    needed = count * dtype.itemsize
    if needed > MAX_NPY_BYTES:
        raise Rejected("too_large", f"NPY header declares {needed} bytes of {dtype} {shape}; "
                                    f"the limit is {MAX_NPY_BYTES} bytes")
    if len(body) < needed:
        raise Rejected("truncated", f"NPY header declares {needed} bytes of {dtype} {shape}, "
                                    f"the file holds {len(body)}")
    array = np.frombuffer(body[:needed], dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")


def _from_array(array: np.ndarray) -> np.ndarray:
    """An array from an NPY file or a built-in dataset -> uint8 H x W x C."""
    if array.size == 0:
        raise Rejected("empty", f"array of shape {array.shape} holds no values")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in SUPPORTED_CHANNELS:
        raise Rejected("wrong_channels", f"array shape {array.shape}; expected H x W, H x W x 1 "
                                         "or H x W x 3")
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if kind == "u" and array.dtype.itemsize == 1:
        return np.ascontiguousarray(array)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise Rejected("out_of_range", f"{array.dtype} values in [{low}, {high}]; expected [0, 255]")
        return array.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise Rejected("nonfinite", f"{bad} NaN/Inf values in a {array.dtype} array")
        lowest, highest = float(array.min()), float(array.max())
        if lowest < 0 or highest > 255:
            raise Rejected("out_of_range", f"{array.dtype} values in [{lowest:g}, {highest:g}]; "
                                           "expected [0, 1] or [0, 255]")
        scale = 255.0 if highest <= 1.0 else 1.0  # floats in [0, 1] are unit intensities
        return np.rint(array * scale).astype(np.uint8)
    raise Rejected("undecodable", f"array dtype {array.dtype}; expected bool, integer or float")


def conform(image: np.ndarray, target: Target) -> np.ndarray:
    """Check (or, when the target allows it, fix) channels and size; reject constant images."""
    channels = image.shape[2]
    if channels != target.channels:
        if not target.convert:
            raise Rejected("wrong_channels", f"{channels} channel(s); expected {target.channels} "
                                             "(--channels converts)")
        mode = "L" if target.channels == 1 else "RGB"
        converted = _as_pil(image).convert(mode)
        image = np.asarray(converted, np.uint8).reshape(converted.height, converted.width, target.channels)
    h, w = image.shape[:2]
    if (h, w) != (target.size, target.size):
        if not target.resize:
            raise Rejected("wrong_size", f"{w}x{h}; expected {target.size}x{target.size} "
                                         "(--image-size resizes)")
        image = resize(image, target.size)
    if image.min() == image.max():
        raise Rejected("constant", f"every pixel is {int(image.flat[0])}")
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (so nothing is stretched), then resize with a Lanczos filter."""
    h, w, c = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = _as_pil(image[top:top + side, left:left + side])
    out = np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), np.uint8)
    return out.reshape(size, size, c)


def _as_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def unexpected(error: BaseException) -> str:
    text = f"unexpected {type(error).__name__}: {error}"
    return text if len(text) < 300 else text[:297] + "..."


def phash(images: np.ndarray) -> np.ndarray:
    """64-bit perceptual hashes (uint64), bit-identical to imagehash.phash, for N x H x W x C.

    imagehash's steps (PIL's greyscale, PIL's Lanczos resize to 32 x 32, a 2-d DCT, the 8 x 8
    lowest frequencies against their median), with PIL's two integer steps done for the whole
    batch at once: calling PIL per image cost more than the decoding (docs/ingest.md)."""
    side = PHASH_SIZE * PHASH_HIGHFREQ
    if images.shape[1] == images.shape[2]:
        small = _pil_lanczos(_pil_grey(images), side, side)
    else:   # PIL 13 resizes a tall image's columns first: left to PIL itself (ingest's are square)
        small = np.stack([np.asarray(_as_pil(image).convert("L").resize((side, side), Image.Resampling.LANCZOS))
                          for image in images]) if len(images) else np.zeros((0, side, side), np.uint8)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=1), axis=2)
    low = dct[:, :PHASH_SIZE, :PHASH_SIZE].reshape(len(images), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _pil_grey(images: np.ndarray) -> np.ndarray:
    """N x H x W uint8: what PIL's convert("L") makes of each image (ITU-R 601-2 luma, in
    PIL's 16-bit fixed point)."""
    if images.shape[3] == 1:
        return images[..., 0]
    luma = np.full(images.shape[:3], 0x8000, np.uint32)
    for channel, weight in enumerate((19595, 38470, 7471)):
        luma += images[..., channel].astype(np.uint32) * np.uint32(weight)
    return (luma >> 16).astype(np.uint8)


_PIL_PRECISION_BITS = 32 - 8 - 2      # PIL's fixed point for 8-bit resampling (Resample.c)


def _pil_lanczos(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """N x height x width uint8: PIL's Image.resize((width, height), LANCZOS) of each N x H x W
    uint8 image, bit for bit: its integer filter taps (_pil_taps), a horizontal pass, a rounding
    to 8 bits, then a vertical pass. In float64, where every sum of these integer products is
    exact, so a matrix product (in any order) gives PIL's integers. PIL 13 turns the order of
    the passes round for an image whose height shrinks much more than its width; a square
    image it resizes in this order (tests/test_ingest.py)."""
    n, h, w = grey.shape
    out = grey.astype(np.float64)
    if w != width:      # PIL skips a pass whose size does not change
        out = _pil_round(out.reshape(n * h, w) @ _pil_taps(w, width).T).reshape(n, h, width)
    if h != height:
        columns = out.transpose(0, 2, 1).reshape(n * width, h)
        out = _pil_round(columns @ _pil_taps(h, height).T).reshape(n, width, height).transpose(0, 2, 1)
    return np.ascontiguousarray(out, np.uint8)


def _pil_round(sums: np.ndarray) -> np.ndarray:
    """PIL's clip8: the fixed-point sum (plus half) back to 0..255."""
    sums += 1 << (_PIL_PRECISION_BITS - 1)
    sums *= 1.0 / (1 << _PIL_PRECISION_BITS)     # a power of two: exact
    return np.clip(np.floor(sums, out=sums), 0, 255, out=sums)


@functools.lru_cache(maxsize=16)
def _pil_taps(size: int, out_size: int) -> np.ndarray:
    """out_size x size: PIL's Lanczos taps for one axis (precompute_coeffs and
    normalize_coeffs_8bpc of Resample.c), rounded to its fixed point; computed with Python's
    math, as PIL's C does, so that no rounding differs."""
    def lanczos(x: float) -> float:
        def sinc(t: float) -> float:
            return 1.0 if t == 0.0 else math.sin(t * math.pi) / (t * math.pi)
        return sinc(x) * sinc(x / 3) if -3.0 <= x < 3.0 else 0.0

    scale = size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    taps = np.zeros((out_size, size))
    for xx in range(out_size):
        centre = (xx + 0.5) * scale
        xmin = max(int(centre - support + 0.5), 0)
        xmax = min(int(centre + support + 0.5), size)
        weights = [lanczos((x - centre + 0.5) / filterscale) for x in range(xmin, xmax)]
        total = sum(weights)
        for x, weight in zip(range(xmin, xmax), weights, strict=True):
            k = weight / total if total != 0.0 else weight
            taps[xx, x] = math.trunc(k * (1 << _PIL_PRECISION_BITS) + (0.5 if k >= 0 else -0.5))
    taps.flags.writeable = False
    return taps


def phash_hex(values: np.ndarray) -> list[str]:
    """uint64 hashes -> 16-digit hex strings, the format of str(imagehash.ImageHash)."""
    return [f"{int(v):016x}" for v in values]


def phash_from_hex(strings: Sequence[str]) -> np.ndarray:
    return np.array([int(s, 16) for s in strings], dtype=np.uint64)


def decode_batch(payloads: Sequence[bytes | np.ndarray | Rejected], names: Sequence[str],
                 target: Target) -> BatchResult:
    """Decode, validate and hash a batch. A payload that is a Rejected (a failed fetch) passes through."""
    images, result = [], BatchResult(images=np.zeros((0, *target.shape), np.uint8))
    for position, (payload, name) in enumerate(zip(payloads, names, strict=True)):
        try:
            image = conform(decode(payload, name), target)
        except Rejected as r:
            result.rejected.append((position, r.reason, r.detail))
            continue
        except Exception as e:  # noqa: BLE001 - one file never aborts the run; its row says why
            result.rejected.append((position, "decode_error", unexpected(e)))
            continue
        images.append(image)
        result.accepted.append(position)
        result.sha256.append(pixel_sha256(image))
    if images:
        result.images = np.stack(images)
        result.phash = phash(result.images)
    else:
        result.phash = np.zeros(0, np.uint64)
    return result


def infer_target(samples: Sequence[tuple[bytes | np.ndarray | Rejected, str]], image_size: int | None,
                 channels: int | None, where: str) -> Target:
    """The target shape: what was asked for, else the most common shape among the samples."""
    for value, name, allowed in ((image_size, "--image-size", SUPPORTED_SIZES),
                                 (channels, "--channels", SUPPORTED_CHANNELS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, got {value}")
    shapes: Counter[tuple[int, ...]] = Counter()
    for payload, name in samples:
        try:
            shapes[decode(payload, name).shape] += 1
        except Exception:  # noqa: S112 - Rejected or not: the main pass quarantines it
            continue
    if shapes:
        (h, w, c), _ = shapes.most_common(1)[0]
    elif image_size is not None and channels is not None:
        h, w, c = image_size, image_size, channels
    else:
        raise ValueError(f"{where}: none of the first {len(samples)} files could be decoded, so "
                         "the image shape cannot be inferred; pass --image-size and --channels")
    size = image_size
    if size is None:
        if h != w or h not in SUPPORTED_SIZES:
            raise ValueError(f"{where}: images are {w}x{h} (the most common size among the first "
                             f"{len(samples)} files); the model supports square {SUPPORTED_SIZES} "
                             "px images: pass --image-size 28, 32 or 64 to resize")
        size = h
    # Asking for a size or a channel count is what allows resizing or converting.
    return Target(size=size, channels=channels or c, resize=image_size is not None,
                  convert=channels is not None)
