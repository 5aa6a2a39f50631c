"""Where images come from: a local folder, an S3-compatible bucket, or built-in data.

    DIR, file:///DIR           every .png/.jpg/.jpeg/.bmp/.npy file below DIR (recursively)
    s3://BUCKET/PREFIX         every such object below PREFIX, read with the `minio` SDK
    minio://BUCKET/PREFIX      the same (the scheme only says which server you run)
    builtin://sprites?n=&seed=&zoom=  the procedural dSprites equivalent (all 737,280 without
                               n; zoom draws the sprites larger, see kubevae.data.sprites)
    builtin://digits           scikit-learn's bundled 8x8 digits (1,797; needs --image-size)

S3 settings come from environment variables only; kubevae.objectstore lists them.

Item ids are paths relative to the folder or prefix (POSIX separators): they stay the same when
data is appended, which is what keeps split assignments stable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import pandas as pd

from kubevae import objectstore
from kubevae.ingest.decode import IMAGE_EXTENSIONS, Rejected
from kubevae.objectstore import ObjectStoreError, S3Config

S3_SCHEMES = objectstore.SCHEMES
BUILTINS = ("sprites", "digits")


class SourceError(ObjectStoreError):
    """The source cannot be read at all: unreachable, unauthorized, missing or malformed."""


# What Source.fetch returns per key: encoded bytes, a decoded array, or why it was refused. (An
# alias, since inside a Source class body `list` is the method.)
Fetched = list[bytes | np.ndarray | Rejected]


@dataclass(frozen=True)
class Entry:
    key: str            # the item id: relative path, or a built-in item id
    uri: str            # where it came from, for people and for the manifest
    size: int | None = None


@dataclass
class Listing:
    entries: list[Entry]                    # candidate image files, sorted by key
    ignored: list[str] = field(default_factory=list)   # other files (not images), by key
    # image files refused before fetching: (entry, reason, detail); they count as seen
    refused: list[tuple[Entry, str, str]] = field(default_factory=list)
    linked_folders: list[str] = field(default_factory=list)  # symbolic links to folders: not followed


@dataclass
class BuiltinInfo:
    """What a built-in dataset knows about itself: metadata rows keyed by item_id, factors, card."""
    metadata: pd.DataFrame
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] | None = None
    card: dict[str, Any] = field(default_factory=dict)


class Source:
    uri: str
    parallel: str = "process"   # the executor that suits fetching: process (CPU) or thread (I/O)

    def list(self) -> Listing:
        raise NotImplementedError

    def fetch(self, keys: Sequence[str]) -> Fetched:
        raise NotImplementedError

    def builtin(self) -> BuiltinInfo | None:
        return None


def open_source(uri: str) -> Source:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(f"--source {objectstore.redact(uri)}: credentials in the URI are not allowed; "
                         "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
    scheme = parts.scheme.lower()
    if scheme in S3_SCHEMES:
        if not parts.netloc:
            raise ValueError(f"--source {uri}: expected {scheme}://BUCKET/PREFIX")
        return S3Source(scheme, parts.netloc, unquote(parts.path.lstrip("/")))
    if scheme == "builtin":
        return BuiltinSource.parse(parts.netloc, parts.query, uri)
    if scheme == "file":
        return LocalSource(Path(unquote(parts.path)))
    if scheme and len(scheme) > 1:  # (one letter: a Windows drive)
        raise ValueError(f"--source {uri}: unsupported scheme {scheme!r}; expected a folder, "
                         "s3://BUCKET/PREFIX, minio://BUCKET/PREFIX or builtin://sprites|digits")
    return LocalSource(Path(uri))


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# --- local folder -----------------------------------------------------------------------------

@dataclass
class LocalSource(Source):
    root: Path

    def __post_init__(self) -> None:
        self.root = self.root.expanduser().resolve()
        self.uri = str(self.root)

    def list(self) -> Listing:
        """Every file below the root. Links: a link to a file is followed only when its target
        lies inside the root (else it is refused as outside_source, or broken_link when the
        target is missing); links to folders are never followed, only counted, since following
        them could leave the root or list the same files twice. A name that is not valid UTF-8
        is refused as bad_name (its id could not be stored)."""
        if not self.root.is_dir():
            raise SourceError(f"--source {self.root}: not a folder (expected a folder of images, "
                              "s3://, minio:// or builtin://)")
        listing = Listing([])
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in list(dirnames):
                if os.path.islink(os.path.join(dirpath, name)):
                    listing.linked_folders.append(_printable(
                        (Path(dirpath) / name).relative_to(self.root).as_posix()))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not is_image_name(name):
                    listing.ignored.append(_printable(key))
                    continue
                problem = self._problem(path, key)
                if problem:
                    entry = Entry(_printable(key), _printable(path.as_uri()))
                    listing.refused.append((entry, *problem))
                else:
                    listing.entries.append(Entry(key, path.as_uri(), path.stat().st_size))
        listing.entries.sort(key=lambda e: e.key)
        listing.ignored.sort()
        return listing

    def _problem(self, path: Path, key: str) -> tuple[str, str] | None:
        if _printable(key) != key:
            return "bad_name", f"the file name is not valid UTF-8: {ascii(os.fsencode(path.name))}"
        if not path.is_symlink():
            return None
        target = path.resolve()
        if not target.exists():
            return "broken_link", f"a link to {_printable(str(target))}, which does not exist"
        if not target.is_relative_to(self.root):
            return "outside_source", f"a link to {_printable(str(target))}, outside {self.root}"
        return None

    def fetch(self, keys: Sequence[str]) -> Fetched:
        out: Fetched = []
        for key in keys:
            path = self.root / key
            try:
                if not path.resolve().is_relative_to(self.root):  # changed since the listing
                    out.append(Rejected("outside_source", f"{path} now leads outside {self.root}"))
                    continue
                out.append(path.read_bytes())
            except OSError as e:
                out.append(Rejected("read_error", f"{type(e).__name__}: {e}"))
        return out


def _printable(text: str) -> str:
    """`text` as valid UTF-8: bytes that are not (os.walk gives them as surrogates) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


# --- S3 / MinIO (settings, client and errors: kubevae.objectstore) ---------------------------

@dataclass
class S3Source(Source):
    scheme: str
    bucket: str
    prefix: str
    config: S3Config = field(default_factory=S3Config.from_env)
    parallel = "thread"

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.uri = f"{self.scheme}://{self.bucket}/{self.prefix}"

    def _errors(self, what: str, action: str) -> objectstore.errors:
        return objectstore.errors(what, self.config.url, action, retries=self.config.max_retries,
                                  kind=SourceError)

    def list(self) -> Listing:
        client = objectstore.client_for(self.config)
        with self._errors(self.uri, "listing"):
            if not client.bucket_exists(self.bucket):
                raise SourceError(f"{self.uri}: bucket {self.bucket!r} does not exist at "
                                  f"{self.config.url} (S3_ENDPOINT)")
            objects = [o for o in client.list_objects(self.bucket, prefix=self.prefix,
                                                      recursive=True) if not o.is_dir]
        entries, ignored = [], []
        for obj in objects:
            key = obj.object_name[len(self.prefix):]
            if is_image_name(key):
                entries.append(Entry(key, f"{self.scheme}://{self.bucket}/{obj.object_name}", obj.size))
            else:
                ignored.append(key)
        entries.sort(key=lambda e: e.key)
        return Listing(entries, sorted(ignored))

    def fetch(self, keys: Sequence[str]) -> Fetched:
        return [self._get(self.prefix + key) for key in keys]

    def _get(self, name: str) -> bytes | Rejected:
        client = objectstore.client_for(self.config)
        response = None
        try:
            response = client.get_object(self.bucket, name)
            return response.read()
        except Exception as e:  # one bad object is quarantined, not fatal; retries happened below
            return Rejected("read_error", f"{self.scheme}://{self.bucket}/{name}: {objectstore.describe(e)}")
        finally:
            if response is not None:
                response.close()
                response.release_conn()


# --- built-in data ----------------------------------------------------------------------------

@dataclass
class BuiltinSource(Source):
    name: str
    n: int | None = None
    seed: int = 0
    zoom: float = 1.0

    @classmethod
    def parse(cls, name: str, query: str, uri: str) -> BuiltinSource:
        if name not in BUILTINS:
            raise ValueError(f"--source {uri}: unknown built-in {name!r}; expected one of "
                             f"{', '.join('builtin://' + b for b in BUILTINS)}")
        params = dict(parse_qsl(query, keep_blank_values=True))
        allowed = {"n", "seed", "zoom"} if name == "sprites" else set()
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"--source {uri}: unknown parameter(s) {unknown}; builtin://{name} "
                             f"takes {sorted(allowed) or 'none'}")
        try:
            n = int(params["n"]) if "n" in params else None
            seed = int(params.get("seed", 0))
        except ValueError:
            raise ValueError(f"--source {uri}: n and seed must be integers") from None
        if n is not None and n < 1:
            raise ValueError(f"--source {uri}: n must be at least 1, got {n}")
        from kubevae.data.sprites import positions

        try:
            zoom = float(params.get("zoom", 1.0))
        except ValueError:
            raise ValueError(f"--source {uri}: zoom must be a number, got {params['zoom']!r}") from None
        try:
            positions(zoom)
        except ValueError as error:
            raise ValueError(f"--source {uri}: {error}") from None
        return cls(name, n, seed, zoom)

    def __post_init__(self) -> None:
        query = "&".join(f"{k}={v}" for k, v in (("n", self.n), ("seed", self.seed),
                                                 ("zoom", self.zoom if self.zoom != 1.0 else None))
                         if v is not None) if self.name == "sprites" else ""
        self.uri = f"builtin://{self.name}" + (f"?{query}" if query else "")

    def list(self) -> Listing:
        if self.name == "sprites":
            from kubevae.data import sprites

            indices = sprites.sample_indices(self.n, self.seed)
            return Listing([Entry(f"sprite-{i:06d}", f"builtin://sprites/{i}") for i in indices])
        count = len(_digits()[0])
        return Listing([Entry(f"digit-{i:04d}", f"builtin://digits/{i}") for i in range(count)])

    def fetch(self, keys: Sequence[str]) -> Fetched:
        indices = np.array([int(k.rsplit("-", 1)[1]) for k in keys], dtype=np.int64)
        if self.name == "sprites":
            from kubevae.data import sprites

            return list(sprites.render(sprites.factors_of(indices), zoom=self.zoom))
        return list(_digits()[0][indices])

    def builtin(self) -> BuiltinInfo:
        entries = self.list().entries
        if self.name == "sprites":
            from kubevae.data import sprites

            indices = np.array([int(e.key.rsplit("-", 1)[1]) for e in entries], dtype=np.int64)
            frame = sprites.manifest_for(indices).drop(columns=["source_uri"])
            return BuiltinInfo(frame, tuple(sprites.FACTOR_NAMES), tuple(sprites.FACTOR_SIZES), {
                "name": "sprites (procedural dSprites equivalent)", "seed": self.seed,
                "zoom": self.zoom,
                "license": "generated by kubevae; no restrictions"})
        _, labels = _digits()
        frame = pd.DataFrame({"item_id": [e.key for e in entries], "label": labels.astype(int)})
        return BuiltinInfo(frame, card={
            "name": "digits (scikit-learn's bundled copy of the UCI optical digits test set)",
            "license": "CC BY 4.0 (UCI Machine Learning Repository: Optical Recognition of "
                       "Handwritten Digits)"})


_digits_cache: tuple[np.ndarray, np.ndarray] | None = None


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 N x 8 x 8 (0..16 scaled to 0..255), and labels."""
    global _digits_cache
    if _digits_cache is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        _digits_cache = (np.rint(data.images * (255.0 / 16.0)).astype(np.uint8), data.target)
    return _digits_cache
