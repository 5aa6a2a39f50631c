"""Where images come from: a local folder, an S3-compatible bucket, or built-in data.

    DIR, file:///DIR           every .png/.jpg/.jpeg/.bmp/.npy file below DIR (recursively)
    s3://BUCKET/PREFIX         every such object below PREFIX, read with the `minio` SDK
    minio://BUCKET/PREFIX      the same (the scheme only says which server you run)
    builtin://sprites?n=&seed= the procedural dSprites equivalent (all 737,280 without n)
    builtin://digits           scikit-learn's bundled 8x8 digits (1,797; needs --image-size)

S3 settings come from environment variables only, so that no secret lands in a pipeline
parameter, a command line or a log (in Kubernetes, mount them from a Secret):

    S3_ENDPOINT            host:port or http(s)://host:port of the server (aliases, in order:
                           AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MINIO_ENDPOINT);
                           default s3.amazonaws.com
    AWS_ACCESS_KEY_ID      access key (absent: anonymous requests, for public buckets)
    AWS_SECRET_ACCESS_KEY  secret key
    AWS_SESSION_TOKEN      optional, for temporary credentials
    AWS_REGION             optional (or AWS_DEFAULT_REGION); absent: asked of the server
    S3_USE_HTTPS           true/false; default: the endpoint URL's scheme, else true
    S3_VERIFY_SSL          true/false, default true (false only for self-signed test servers)
    S3_CA_BUNDLE           a CA bundle file for private CAs (default SSL_CERT_FILE, else certifi)
    S3_MAX_RETRIES         retries per request on connection errors and 500/502/503/504, default 5
    S3_RETRY_BACKOFF       backoff factor in seconds, default 0.2: waits 0, 2b, 4b, 8b, ...
    S3_TIMEOUT             connect and read timeout in seconds, default 60

Item ids are paths relative to the folder or prefix (POSIX separators): they stay the same when
data is appended, which is what keeps split assignments stable.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import pandas as pd

from kubevae.ingest.decode import IMAGE_EXTENSIONS, Rejected

S3_SCHEMES = ("s3", "minio")
BUILTINS = ("sprites", "digits")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SourceError(RuntimeError):
    """The source cannot be read at all: unreachable, unauthorized, missing or malformed."""


@dataclass(frozen=True)
class Entry:
    key: str            # the item id: relative path, or a built-in item id
    uri: str            # where it came from, for people and for the manifest
    size: int | None = None


@dataclass
class Listing:
    entries: list[Entry]                    # candidate image files, sorted by key
    ignored: list[str] = field(default_factory=list)   # other files (not images), by key


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

    def fetch(self, keys: Sequence[str]) -> list[bytes | np.ndarray | Rejected]:
        raise NotImplementedError

    def builtin(self) -> BuiltinInfo | None:
        return None


def open_source(uri: str) -> Source:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(f"--source {_redact(uri)}: credentials in the URI are not allowed; "
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


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.password else uri


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
        if not self.root.is_dir():
            raise SourceError(f"--source {self.root}: not a folder (expected a folder of images, "
                              "s3://, minio:// or builtin://)")
        entries, ignored = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if is_image_name(name):
                    entries.append(Entry(key, path.as_uri(), path.stat().st_size))
                else:
                    ignored.append(key)
        entries.sort(key=lambda e: e.key)
        return Listing(entries, sorted(ignored))

    def fetch(self, keys: Sequence[str]) -> list[bytes | np.ndarray | Rejected]:
        out: list[bytes | np.ndarray | Rejected] = []
        for key in keys:
            try:
                out.append((self.root / key).read_bytes())
            except OSError as e:
                out.append(Rejected("read_error", f"{type(e).__name__}: {e}"))
        return out


# --- S3 / MinIO -------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Config:
    endpoint: str
    secure: bool
    verify: bool
    ca_bundle: str | None
    region: str | None
    max_retries: int
    backoff: float
    timeout: float
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "S3Config":
        env = dict(os.environ if env is None else env)
        raw = next((env[k] for k in ("S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                     "MINIO_ENDPOINT") if env.get(k)), "s3.amazonaws.com")
        host, url_secure = _parse_endpoint(raw)
        secure = _env_bool(env, "S3_USE_HTTPS", True if url_secure is None else url_secure)
        if url_secure is not None and secure != url_secure:
            raise ValueError(f"S3_USE_HTTPS={env['S3_USE_HTTPS']!r} contradicts the endpoint "
                             f"{raw!r}; drop one of them")
        access, secret = env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None
        if bool(access) != bool(secret):
            raise ValueError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither")
        return cls(endpoint=host, secure=secure, verify=_env_bool(env, "S3_VERIFY_SSL", True),
                   ca_bundle=env.get("S3_CA_BUNDLE") or env.get("SSL_CERT_FILE") or None,
                   region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
                   max_retries=_env_number(env, "S3_MAX_RETRIES", 5, int),
                   backoff=_env_number(env, "S3_RETRY_BACKOFF", 0.2, float),
                   timeout=_env_number(env, "S3_TIMEOUT", 60.0, float),
                   access_key=access, secret_key=secret,
                   session_token=env.get("AWS_SESSION_TOKEN") or None)

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def client(self):
        import certifi
        import urllib3
        from minio import Minio

        retry = urllib3.Retry(total=self.max_retries, connect=self.max_retries,
                              read=self.max_retries, status=self.max_retries,
                              backoff_factor=self.backoff, status_forcelist=(500, 502, 503, 504),
                              raise_on_status=True)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout), maxsize=16,
            cert_reqs="CERT_REQUIRED" if self.verify else "CERT_NONE",
            ca_certs=self.ca_bundle or certifi.where(), retries=retry)
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                     session_token=self.session_token, secure=self.secure, region=self.region,
                     http_client=http, cert_check=self.verify)


def _parse_endpoint(raw: str) -> tuple[str, bool | None]:
    if "://" not in raw:
        return raw.strip("/"), None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"S3_ENDPOINT={raw!r}: expected host:port or http(s)://host:port "
                         "(no path)")
    return parts.netloc, parts.scheme == "https"


def _env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ValueError(f"{name}={env[name]!r}: expected true or false")


def _env_number(env: dict[str, str], name: str, default, kind):
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a {kind.__name__}") from None
    if number < 0:
        raise ValueError(f"{name}={value!r}: expected a number >= 0")
    return number


_clients: dict[S3Config, Any] = {}
_clients_lock = threading.Lock()


def s3_client(config: S3Config):
    """One client per process and configuration (urllib3 pools are thread-safe)."""
    with _clients_lock:
        if config not in _clients:
            _clients[config] = config.client()
        return _clients[config]


@dataclass
class S3Source(Source):
    scheme: str
    bucket: str
    prefix: str
    config: S3Config | None = None
    parallel = "thread"

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.uri = f"{self.scheme}://{self.bucket}/{self.prefix}"
        self.config = self.config or S3Config.from_env()

    def list(self) -> Listing:
        client = s3_client(self.config)
        with _s3_errors(self.uri, self.config, "listing"):
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

    def fetch(self, keys: Sequence[str]) -> list[bytes | np.ndarray | Rejected]:
        return [self._get(self.prefix + key) for key in keys]

    def _get(self, name: str) -> bytes | Rejected:
        client = s3_client(self.config)
        response = None
        try:
            response = client.get_object(self.bucket, name)
            return response.read()
        except Exception as e:  # one bad object is quarantined, not fatal; retries happened below
            return Rejected("read_error", f"{self.scheme}://{self.bucket}/{name}: {_describe(e)}")
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def read(self, name: str) -> bytes:
        """A whole object (a metadata file), with clear errors."""
        client = s3_client(self.config)
        with _s3_errors(f"{self.scheme}://{self.bucket}/{name}", self.config, "reading"):
            response = client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()


class _s3_errors:
    """Turn SDK and transport exceptions into one SourceError that says what to check."""

    def __init__(self, what: str, config: S3Config, action: str):
        self.what, self.config, self.action = what, config, action

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, SourceError):
            return False
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = f"{self.what} at {self.config.url} (S3_ENDPOINT)"
        if isinstance(error, S3Error):
            if error.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                              "InvalidToken", "ExpiredToken", "AllAccessDisabled"):
                raise SourceError(f"{where}: unauthorized ({error.code}: {error.message}); check "
                                  "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket "
                                  "policy") from None
            if error.code in ("NoSuchBucket", "NoSuchKey"):
                raise SourceError(f"{where}: {error.code} ({error.message})") from None
            raise SourceError(f"{where}: {self.action} failed: {error.code}: {error.message}") from None
        if isinstance(error, (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError)):
            raise SourceError(f"{where}: {self.action} failed after {self.config.max_retries} "
                              f"retries with backoff (S3_MAX_RETRIES, S3_RETRY_BACKOFF): "
                              f"{_describe(error)}") from None
        return False


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    text = f"{type(error).__name__}: {reason or error}"
    return text if len(text) < 300 else text[:297] + "..."


def read_uri(ref: str) -> tuple[bytes, str]:
    """Bytes of a local path or an s3:// / minio:// object, and its name (for the format)."""
    parts = urlsplit(ref)
    if parts.scheme.lower() in S3_SCHEMES:
        source = S3Source(parts.scheme.lower(), parts.netloc, "")
        return source.read(unquote(parts.path.lstrip("/"))), parts.path
    path = Path(unquote(parts.path) if parts.scheme == "file" else ref).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--metadata {ref}: file not found")
    return path.read_bytes(), path.name


# --- built-in data ----------------------------------------------------------------------------

@dataclass
class BuiltinSource(Source):
    name: str
    n: int | None = None
    seed: int = 0

    @classmethod
    def parse(cls, name: str, query: str, uri: str) -> "BuiltinSource":
        if name not in BUILTINS:
            raise ValueError(f"--source {uri}: unknown built-in {name!r}; expected one of "
                             f"{', '.join('builtin://' + b for b in BUILTINS)}")
        params = dict(parse_qsl(query, keep_blank_values=True))
        allowed = {"n", "seed"} if name == "sprites" else set()
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
        return cls(name, n, seed)

    def __post_init__(self) -> None:
        query = "&".join(f"{k}={v}" for k, v in (("n", self.n), ("seed", self.seed))
                         if v is not None) if self.name == "sprites" else ""
        self.uri = f"builtin://{self.name}" + (f"?{query}" if query else "")

    def list(self) -> Listing:
        if self.name == "sprites":
            from kubevae.data import sprites

            indices = sprites.sample_indices(self.n, self.seed)
            return Listing([Entry(f"sprite-{i:06d}", f"builtin://sprites/{i}") for i in indices])
        count = len(_digits()[0])
        return Listing([Entry(f"digit-{i:04d}", f"builtin://digits/{i}") for i in range(count)])

    def fetch(self, keys: Sequence[str]) -> list[bytes | np.ndarray | Rejected]:
        indices = np.array([int(k.rsplit("-", 1)[1]) for k in keys], dtype=np.int64)
        if self.name == "sprites":
            from kubevae.data import sprites

            return list(sprites.render(sprites.factors_of(indices)))
        return list(_digits()[0][indices])

    def builtin(self) -> BuiltinInfo:
        entries = self.list().entries
        if self.name == "sprites":
            from kubevae.data import sprites

            indices = np.array([int(e.key.rsplit("-", 1)[1]) for e in entries], dtype=np.int64)
            frame = sprites.manifest_for(indices).drop(columns=["source_uri"])
            return BuiltinInfo(frame, tuple(sprites.FACTOR_NAMES), tuple(sprites.FACTOR_SIZES), {
                "name": "sprites (procedural dSprites equivalent)", "seed": self.seed,
                "license": "generated by kubevae; no restrictions",
                # A dense factorial grid: neighbouring positions are 1-pixel shifts by design, so
                # any Hamming threshold > 0 chains the whole set into one group. Equal perceptual
                # hashes (and equal pixels) are still grouped.
                "split_hints": {"near_dup_threshold": 0,
                                "reason": "factorial grid: neighbouring items are 1-pixel shifts "
                                          "by design; only identical perceptual hashes are merged"}})
        _, labels = _digits()
        frame = pd.DataFrame({"item_id": [e.key for e in entries], "label": labels.astype(int)})
        return BuiltinInfo(frame, card={
            "name": "digits (scikit-learn's bundled copy of the UCI optical digits test set)",
            "license": "CC BY 4.0 (UCI Machine Learning Repository: Optical Recognition of "
                       "Handwritten Digits)",
            # 8x8 originals: distinct digits of one class are often within 8 bits of each other.
            "split_hints": {"near_dup_threshold": 6,
                            "reason": "8x8 originals: distinct digits of one class often lie "
                                      "within 8-10 bits; 6 keeps near-copies without chaining"}})


_digits_cache: tuple[np.ndarray, np.ndarray] | None = None


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 N x 8 x 8 (0..16 scaled to 0..255), and labels."""
    global _digits_cache
    if _digits_cache is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        _digits_cache = (np.rint(data.images * (255.0 / 16.0)).astype(np.uint8), data.target)
    return _digits_cache
