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

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import pandas as pd

from kubevae import objectstore
from kubevae.ingest.decode import IMAGE_EXTENSIONS, Rejected, max_file_bytes, size_problem
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
        """Every entry below the root, walked without recursion (any depth) and classified by
        lstat before anything is opened:

        - a regular file with an image extension is a candidate; a file larger than any image
          within the limits (decode.max_file_bytes: a sparse 10 GB file) is refused as too_large;
        - anything else with an image extension (a FIFO, a socket, a device) is refused as
          not_a_file and never opened (opening a FIFO blocks; /dev/zero never ends);
        - a link to a file is followed only to a regular file inside the root (else it is refused
          as outside_source, not_a_file, or broken_link when it leads nowhere or loops); links to
          folders are never followed, only counted (following them could leave the root or loop);
        - a name that is not valid UTF-8 is refused as bad_name (its id could not be stored);
        - a folder that cannot be listed is a read_error row (its files were not seen);
        - every other name is ignored (counted). Hidden files are entries like any other."""
        if not self.root.is_dir():
            raise SourceError(f"--source {self.root}: not a folder (expected a folder of images, "
                              "s3://, minio:// or builtin://)")
        listing = Listing([])
        pending = [""]  # folders (relative paths) still to list, depth first
        while pending:
            folder = pending.pop()
            where = os.path.join(self.root, folder)
            try:
                with os.scandir(where) as scan:
                    children = sorted(scan, key=lambda child: child.name)
            except OSError as e:
                listing.refused.append((self._entry(folder + "/"), "read_error",
                                        f"a folder that cannot be listed ({_os_error(e)}); the "
                                        "files in it were not seen"))
                continue
            folders = []
            for child in children:
                key = f"{folder}/{child.name}" if folder else child.name
                try:
                    if child.is_dir(follow_symlinks=False):
                        folders.append(key)
                    else:
                        self._classify(child, key, listing)
                except OSError as e:  # an entry that vanished, a name too long for the system
                    if is_image_name(child.name):
                        listing.refused.append((self._entry(key), "read_error", _os_error(e)))
                    else:
                        listing.ignored.append(_printable(key))
            pending.extend(reversed(folders))
        listing.entries.sort(key=lambda e: e.key)
        listing.ignored.sort()
        return listing

    def _entry(self, key: str, size: int | None = None) -> Entry:
        return Entry(_printable(key), _printable((self.root / key).as_uri()), size)

    def _classify(self, child: os.DirEntry, key: str, listing: Listing) -> None:
        image = is_image_name(child.name)
        if child.is_symlink():
            try:
                target = os.stat(child.path)  # follows the link: stat opens nothing
            except OSError as e:
                if image:
                    listing.refused.append((self._entry(key), "broken_link", _link_problem(child.path, e)))
                else:
                    listing.ignored.append(_printable(key))
                return
            if stat.S_ISDIR(target.st_mode):
                listing.linked_folders.append(_printable(key))
                return
        elif image:
            target = child.stat(follow_symlinks=False)
        if not image:
            listing.ignored.append(_printable(key))
            return
        problem = self._problem(child, key, target)
        if problem:
            listing.refused.append((self._entry(key), problem.reason, problem.detail))
        else:
            listing.entries.append(Entry(key, (self.root / key).as_uri(), target.st_size))

    def _problem(self, child: os.DirEntry, key: str, target: os.stat_result) -> Rejected | None:
        if _printable(key) != key:
            return Rejected("bad_name", "the file name is not valid UTF-8: "
                                        f"{ascii(os.fsencode(child.name))}")
        if child.is_symlink():
            real = os.path.realpath(child.path)
            if not _inside(real, self.root):
                return Rejected("outside_source", f"a link to {_printable(real)}, outside {self.root}")
            if not stat.S_ISREG(target.st_mode):
                return Rejected("not_a_file", f"a link to {_printable(real)}, {_file_kind(target.st_mode)}, "
                                              "not a regular file; not opened")
        elif not stat.S_ISREG(target.st_mode):
            return Rejected("not_a_file", f"{_file_kind(target.st_mode)}, not a regular file; not opened")
        return size_problem(target.st_size, child.name)

    def fetch(self, keys: Sequence[str]) -> Fetched:
        return [self._read(key) for key in keys]

    def _read(self, key: str) -> bytes | Rejected:
        """The bytes of one listed file, read without following anything out of the root: the
        link-free path is opened one folder at a time (O_NOFOLLOW), so a folder or file swapped
        for a link after the listing is refused, not followed; what is not a regular file is
        never opened, and the read stops past the size limit (a file that keeps growing)."""
        path = os.path.join(self.root, key)
        try:
            listed = tuple(key.split("/"))
            if not {"", ".", ".."} & set(listed):
                # The listed path itself first: most files are plain files, read without the
                # cost of realpath. A link on the way (one the listing followed, or one that
                # replaced a folder since) is resolved and checked below, as every path was.
                try:
                    return _read_below(self.root, listed, key, links_changed=False)
                except _LinkedFile:
                    pass
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
            real = os.path.realpath(path)
            if not _inside(real, self.root):
                return Rejected("outside_source", f"{key} now leads to {_printable(real)}, outside "
                                                  f"{self.root} (changed since the listing)")
            parts = Path(real).relative_to(self.root).parts
            return _read_below(self.root, parts, key)
        except FileNotFoundError:
            return Rejected("changed", f"{key} no longer exists (removed after the listing)")
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return Rejected("changed", f"{key}: its path changed after the listing (a part of "
                                           f"it is now a link or a file: {_os_error(e)}); not followed")
            return Rejected("read_error", f"{key}: {_os_error(e)}")


_NOFOLLOW = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class _LinkedFile(Exception):
    """The file at the end of the path is a symbolic link."""


def _read_below(root: Path, parts: tuple[str, ...], key: str, links_changed: bool = True) -> bytes | Rejected:
    """links_changed: a link at the end is a change since the listing (a resolved path), else
    _LinkedFile is raised (the listed path, which may end in a link the listing followed)."""
    if not parts:
        return Rejected("not_a_file", f"{key} now leads to the source folder itself")
    folder = os.open(root, _NOFOLLOW | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _NOFOLLOW | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        info = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            if not links_changed:
                raise _LinkedFile
            return Rejected("changed", f"{key} became a link after the listing; not followed")
        if not stat.S_ISREG(info.st_mode):
            return Rejected("not_a_file", f"{key} is now {_file_kind(info.st_mode)}, not a regular "
                                          "file (changed after the listing); not opened")
        # O_NONBLOCK: should it have become a FIFO in between, opening it does not wait for a writer.
        fd = os.open(parts[-1], _NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=folder)
    finally:
        os.close(folder)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Rejected("not_a_file", f"{key} is now {_file_kind(info.st_mode)}, not a regular "
                                          "file (changed after the listing)")
        too_large = size_problem(info.st_size, key, "when opened")
        if too_large:
            return too_large
        limit = max_file_bytes(key)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(8 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            return Rejected("too_large", f"{key} grew past {limit} bytes while it was read; not read further")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root).rstrip(os.sep) + os.sep)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a UNIX socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"))
    return next((text for test, text in kinds if test(mode)), f"file type {oct(stat.S_IFMT(mode))}")


def _link_problem(path: str, error: OSError) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if error.errno == errno.ELOOP:
        return f"a link to {_printable(target)} that loops back on itself (ELOOP)"
    if isinstance(error, FileNotFoundError):
        return f"a link to {_printable(os.path.realpath(path))}, which does not exist"
    return f"a link to {_printable(target)} that cannot be followed ({_os_error(error)})"


def _os_error(error: OSError) -> str:
    """`error` without its file name (which the row already names)."""
    return f"{type(error).__name__}: {error.strerror or error}"


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
        """Every object below the prefix. Folder markers (keys ending in /) and other names are
        ignored; image keys that could not be a relative path (an empty, `.` or `..` segment: a
        client or server that normalises the path would read another object, perhaps outside
        the prefix) are refused as bad_name, and objects larger than the size limit as
        too_large, on their listed size, before a byte is downloaded."""
        client = objectstore.client_for(self.config)
        with self._errors(self.uri, "listing"):
            if not client.bucket_exists(self.bucket):
                raise SourceError(f"{self.uri}: bucket {self.bucket!r} does not exist at "
                                  f"{self.config.url} (S3_ENDPOINT)")
            objects = list(client.list_objects(self.bucket, prefix=self.prefix, recursive=True))
        listing = Listing([])
        for obj in objects:
            name = obj.object_name or ""
            key = name[len(self.prefix):] if name.startswith(self.prefix) else name
            entry = Entry(key, f"{self.scheme}://{self.bucket}/{name}", obj.size)
            if name.endswith("/") or not is_image_name(key):  # a folder marker, or not an image
                listing.ignored.append(key)
                continue
            problem = _key_problem(key) or size_problem(obj.size, key)
            if problem:
                listing.refused.append((entry, problem.reason, problem.detail))
            else:
                listing.entries.append(entry)
        listing.entries.sort(key=lambda e: e.key)
        listing.ignored.sort()
        return listing

    def fetch(self, keys: Sequence[str]) -> Fetched:
        return [self._get(self.prefix + key) for key in keys]

    def _get(self, name: str) -> bytes | Rejected:
        """One object, its size checked on the response's Content-Length before the body is
        read and its body read no further than the limit. Every read waits at most S3_TIMEOUT
        (and is retried S3_MAX_RETRIES times)."""
        client = objectstore.client_for(self.config)
        where = f"{self.scheme}://{self.bucket}/{name}"
        limit = max_file_bytes(name)
        response = None
        try:
            response = client.get_object(self.bucket, name)
            length = response.headers.get("Content-Length")
            too_large = size_problem(int(length), name, "the response's Content-Length") \
                if length and length.isdigit() else None
            if too_large:
                return too_large
            data = response.read(limit + 1)
            if len(data) > limit:
                return Rejected("too_large", f"{where}: the body runs past {limit} bytes; not "
                                             "read further")
            return data
        except Exception as e:  # one bad object is quarantined, not fatal; retries happened below
            if getattr(e, "code", None) == "NoSuchKey":
                return Rejected("changed", f"{where} no longer exists (NoSuchKey: removed after "
                                           "the listing)")
            return Rejected("read_error", f"{where}: {objectstore.describe(e)}")
        finally:
            if response is not None:
                response.close()
                response.release_conn()


def _key_problem(key: str) -> Rejected | None:
    parts = key.split("/")
    if "" in parts or "." in parts or ".." in parts:
        return Rejected("bad_name", f"the object key {key!r} (below the prefix) has an empty, '.' "
                                    "or '..' segment: it is not a relative path, and a client "
                                    "that normalises it would read another object")
    if "\ufffd" in key:
        return Rejected("bad_name", f"the object key {key!r} holds bytes that are not UTF-8")
    return None


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
