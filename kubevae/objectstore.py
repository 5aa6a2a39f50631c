"""Object storage (MinIO, SeaweedFS, AWS S3): settings, the client, URIs, read, download, upload.

The one module that talks to object storage. Ingest (`--source s3://...`, `--metadata s3://...`),
`kubevae split --previous-split s3://...` and the pods (components.k8s.entrypoint and the
fetch-data init container) all go through it, so they agree on every setting:

    python -m kubevae.objectstore download s3://bucket/models/run-1 /work/model
    python -m kubevae.objectstore upload /work/model s3://bucket/models/run-1

URIs: s3://BUCKET/PREFIX, or minio://BUCKET/PREFIX (KFP's artifact URIs: the same objects).

Settings come from environment variables only, so that no secret lands in a pipeline parameter,
a command line or a log (in Kubernetes, mount them from a Secret):

    S3_ENDPOINT            host:port or http(s)://host:port of the server (aliases, in order:
                           AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MINIO_ENDPOINT);
                           default s3.amazonaws.com
    AWS_ACCESS_KEY_ID      access key (absent: anonymous requests, for public buckets)
    AWS_SECRET_ACCESS_KEY  secret key
    AWS_SESSION_TOKEN      optional, for temporary credentials
    AWS_REGION             optional (or AWS_DEFAULT_REGION); absent: asked of the server
    S3_USE_HTTPS           true/false (1/0, yes/no); default: the endpoint URL's scheme, else true
    S3_VERIFY_SSL          true/false, default true (false only for self-signed test servers)
    S3_CA_BUNDLE           a CA bundle file for private CAs (default SSL_CERT_FILE, else certifi)
    S3_MAX_RETRIES         retries per request on connection errors and 500/502/503/504, default 5
    S3_RETRY_BACKOFF       backoff factor in seconds, default 0.2: waits 0, 2b, 4b, 8b, ...
    S3_TIMEOUT             connect and read timeout in seconds, default 60

Folder uploads are made atomic for readers: `upload` first deletes the folder's completion
marker (COMPLETE_MARKER, if an earlier upload left one), then writes every file, then writes
the marker last: a JSON list of every key with its size and sha256. `download` requires the
marker and fetches exactly the files it lists, checking each size and checksum, so a reader
never takes a half-written folder (or a mix of two uploads) for a whole one. Folders that KFP's
own launcher uploads (the artifacts a step outputs) carry no marker; KFP starts the next step
only after that upload finished, so their readers pass `require_marker=False`
(`--no-require-marker`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEMES = ("s3", "minio")
COMPLETE_MARKER = ".kubevae-complete.json"
MARKER_FORMAT = "kubevae-upload/1"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_UNAUTHORIZED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                 "ExpiredToken", "AllAccessDisabled")


class ObjectStoreError(RuntimeError):
    """Object storage cannot be used: unreachable, unauthorized, missing, or an incomplete upload."""


# --- URIs -------------------------------------------------------------------------------------

def is_object_uri(uri: str) -> bool:
    return urlsplit(str(uri)).scheme.lower() in SCHEMES


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at the ends) of an s3:// or minio:// URI."""
    parts = urlsplit(str(uri))
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise ValueError(f"object URI: expected s3://BUCKET/PREFIX or minio://BUCKET/PREFIX, got {uri!r}")
    if parts.username or parts.password:
        raise ValueError(f"object URI {redact(uri)}: credentials in the URI are not allowed; set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
    return parts.netloc, unquote(parts.path).strip("/")


def s3_uri(uri: str) -> str:
    """The s3:// form of an object URI (KServe's storage initializer knows s3://, not minio://)."""
    bucket, prefix = parse_uri(uri)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.password else uri


# --- settings and the client ------------------------------------------------------------------

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
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Config:
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


def client_for(config: S3Config):
    """One client per process and configuration (urllib3 pools are thread-safe)."""
    with _clients_lock:
        if config not in _clients:
            _clients[config] = config.client()
        return _clients[config]


def client_from_env(env: Mapping[str, str] | None = None):
    return client_for(S3Config.from_env(env))


def endpoint_of(client) -> str:
    """The client's server, for error messages (never its credentials)."""
    base = getattr(client, "_base_url", None)
    host = getattr(base, "host", None)
    if host:
        return f"{'https' if getattr(base, 'is_https', True) else 'http'}://{host}"
    return "the S3 endpoint"


class errors:
    """Turn SDK and transport exceptions into one `kind` error that says what to check."""

    def __init__(self, what: str, endpoint: str, action: str, *, retries: int | None = None,
                 kind: type[Exception] = ObjectStoreError):
        self.what, self.endpoint, self.action, self.retries, self.kind = what, endpoint, action, retries, kind

    def __enter__(self):
        return self

    def __exit__(self, _type, error, _tb):
        if error is None or isinstance(error, (ObjectStoreError, ValueError, FileNotFoundError,
                                               NotADirectoryError)):
            return False
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = f"{self.what} at {self.endpoint} (S3_ENDPOINT)"
        if isinstance(error, S3Error):
            if error.code in _UNAUTHORIZED:
                raise self.kind(f"{where}: unauthorized ({error.code}: {error.message}); check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket "
                                "policy") from None
            if error.code in ("NoSuchBucket", "NoSuchKey"):
                raise self.kind(f"{where}: {error.code} ({error.message})") from None
            raise self.kind(f"{where}: {self.action} failed: {error.code}: {error.message}") from None
        if isinstance(error, (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError)):
            retries = f" after {self.retries} retries with backoff (S3_MAX_RETRIES, " \
                      "S3_RETRY_BACKOFF)" if self.retries is not None else ""
            raise self.kind(f"{where}: {self.action} failed{retries}: {describe(error)}") from None
        return False


def describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    text = f"{type(error).__name__}: {reason or error}"
    text = text if len(text) < 300 else text[:297] + "..."
    if "timed out" in text.lower() or "timeout" in text.lower():
        text += " (each connect and read waits at most S3_TIMEOUT seconds)"
    return text


# --- read ---------------------------------------------------------------------------------------

def read_object(client, bucket: str, key: str, *, max_bytes: int | None = None,
                what: str | None = None, limit_hint: str = "") -> bytes:
    """One whole object; with `max_bytes`, an object larger than that is refused before it is read."""
    what = what or f"s3://{bucket}/{key}"
    with errors(what, endpoint_of(client), "reading"):
        if max_bytes is not None:
            size = client.stat_object(bucket, key).size
            if size > max_bytes:
                raise ValueError(f"{what}: {size} bytes; the limit is {max_bytes} bytes{limit_hint}")
        response = client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


def read_uri(ref: str | os.PathLike, *, what: str = "input", max_bytes: int | None = None,
             limit_hint: str = "", client=None) -> tuple[bytes, str]:
    """The bytes of a local file or an s3:// / minio:// object, and its name (for the format).
    With `max_bytes`, a larger file is refused before it is read."""
    text = str(ref)
    if is_object_uri(text):
        bucket, key = parse_uri(text)
        client = client or client_from_env()
        return read_object(client, bucket, key, max_bytes=max_bytes, what=f"{what} {text}",
                           limit_hint=limit_hint), key
    parts = urlsplit(text)
    path = Path(unquote(parts.path) if parts.scheme == "file" else text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {text}: file not found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{what} {text}: {size} bytes; the limit is {max_bytes} bytes{limit_hint}")
    return path.read_bytes(), path.name


# --- folders: download and upload ---------------------------------------------------------------

def download(client, uri: str, dest: str | os.PathLike, *, require_marker: bool = True) -> int:
    """Copy the folder at `uri` into folder `dest` (whole or not at all). Returns the file count.

    With `require_marker` (the default) the folder must carry the completion marker that
    `upload` writes last; exactly the files it lists are fetched and checked."""
    from kubevae.storage import atomic_dir

    bucket, prefix = parse_uri(uri)
    base = f"{prefix}/" if prefix else ""
    with errors(uri, endpoint_of(client), "download"):
        files: dict[str, dict | None]
        if require_marker:
            files = dict(_read_marker(client, bucket, base, uri))
        else:
            files = {_relative_key(o.object_name, prefix).as_posix(): None
                     for o in client.list_objects(bucket, prefix=base, recursive=True)
                     if not o.is_dir and o.object_name != base + COMPLETE_MARKER}
        if not files:
            raise FileNotFoundError(f"download: no objects under {uri}")
        with atomic_dir(dest) as tmp:
            for relative, expected in sorted(files.items()):
                target = tmp.joinpath(*_relative_key(base + relative, prefix).parts)
                client.fget_object(bucket, base + relative, str(target))
                if expected is not None:
                    _check_file(target, expected, f"{uri}/{relative}")
    return len(files)


def upload(client, src: str | os.PathLike, uri: str) -> int:
    """Copy every file under folder `src` to `uri`/<relative path>, then the completion marker.
    Returns the file count (without the marker)."""
    bucket, prefix = parse_uri(uri)
    base = f"{prefix}/" if prefix else ""
    root = Path(src)
    if not root.is_dir():
        raise NotADirectoryError(f"upload: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    if not files:
        raise FileNotFoundError(f"upload: {root} holds no files")
    with errors(uri, endpoint_of(client), "upload"):
        if not client.bucket_exists(bucket):
            raise FileNotFoundError(f"upload: bucket {bucket!r} does not exist at {endpoint_of(client)}")
        # The old marker goes first: from here until the new one is written, readers see an
        # incomplete folder rather than a mix of the old and the new files.
        client.remove_object(bucket, base + COMPLETE_MARKER)
        listed = {}
        for path in files:
            relative = path.relative_to(root).as_posix()
            client.fput_object(bucket, base + relative, str(path))
            listed[relative] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        marker = json.dumps({"format": MARKER_FORMAT, "files": listed}, indent=1, sort_keys=True).encode()
        client.put_object(bucket, base + COMPLETE_MARKER, io.BytesIO(marker), len(marker),
                          content_type="application/json")
    return len(files)


def _read_marker(client, bucket: str, base: str, uri: str) -> dict[str, dict]:
    try:
        raw = read_object(client, bucket, base + COMPLETE_MARKER, max_bytes=64 << 20)
    except ObjectStoreError as e:
        if "NoSuchKey" not in str(e):
            raise
        present = any(True for _ in client.list_objects(bucket, prefix=base, recursive=True))
        if not present:
            raise FileNotFoundError(f"download: no objects under {uri}") from None
        raise ObjectStoreError(
            f"download: {uri} has no completion marker {COMPLETE_MARKER}: its upload is still "
            "running or was interrupted (upload writes the marker last); for a folder that "
            "KFP itself uploaded, pass --no-require-marker") from None
    try:
        marker = json.loads(raw)
        files = marker["files"]
        if marker.get("format") != MARKER_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {marker.get('format')!r}")
        for relative, entry in files.items():
            _relative_key(base + relative, base.rstrip("/"))
            if not isinstance(entry["size"], int) or not isinstance(entry["sha256"], str):
                raise ValueError(f"entry {relative!r}: {entry!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ObjectStoreError(f"download: {uri}/{COMPLETE_MARKER} is not a {MARKER_FORMAT} "
                               f"marker ({type(e).__name__}: {e})") from None
    return files


def _check_file(path: Path, expected: dict, where: str) -> None:
    size = path.stat().st_size
    if size != expected["size"] or _sha256(path) != expected["sha256"]:
        raise ObjectStoreError(f"download: {where} does not match the completion marker "
                               f"({size} bytes, expected {expected['size']}; or its sha256 "
                               "differs): it changed after the upload")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _relative_key(name: str, prefix: str) -> PurePosixPath:
    relative = PurePosixPath(name[len(prefix):].lstrip("/") if prefix else name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"download: refusing object key {name!r} (it leaves the target folder)")
    return relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubevae.objectstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    d = sub.add_parser("download", help="copy the objects under URI into a new folder")
    d.add_argument("uri")
    d.add_argument("folder")
    d.add_argument("--no-require-marker", dest="require_marker", action="store_false",
                   help="accept a folder without the completion marker (one that KFP uploaded)")
    u = sub.add_parser("upload", help="copy a folder's files under URI, then the completion marker")
    u.add_argument("folder")
    u.add_argument("uri")
    args = parser.parse_args(argv)
    try:
        if args.verb == "download":
            count = download(client_from_env(), args.uri, args.folder, require_marker=args.require_marker)
            print(f"downloaded {count} files from {args.uri} to {args.folder}", flush=True)
        else:
            count = upload(client_from_env(), args.folder, args.uri)
            print(f"uploaded {count} files from {args.folder} to {args.uri}", flush=True)
    except (ObjectStoreError, ValueError, OSError) as e:
        print(f"kubevae.objectstore {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
