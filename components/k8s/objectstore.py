"""Folders to and from S3-compatible object storage (MinIO, SeaweedFS, AWS S3), for pods.

`kubevae train` reads and writes local folders. On a cluster the data split, the model and
the KFP artifacts live in object storage, so the training pods move them:

    python -m components.k8s.objectstore download s3://bucket/splits /data/splits
    python -m components.k8s.objectstore upload /work/model s3://bucket/models/run-1

(components.k8s.entrypoint uploads the model folder after `kubevae train` succeeds.)

Settings come from the environment, the same names KServe's storage initializer reads:
S3_ENDPOINT (host:port), S3_USE_HTTPS (0/1), AWS_REGION, and the credentials
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (from a Kubernetes Secret, never from arguments).
KFP artifact URIs (minio://bucket/key) are the same S3 objects and are accepted too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Mapping
from urllib.parse import urlparse

SCHEMES = ("s3", "minio")


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at the ends) of an s3:// or minio:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES or not parsed.netloc:
        raise ValueError(f"object URI: expected s3://BUCKET/PREFIX or minio://BUCKET/PREFIX, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def s3_uri(uri: str) -> str:
    """The s3:// form of an object URI (KServe's storage initializer knows s3://, not minio://)."""
    bucket, prefix = parse_uri(uri)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def is_object_uri(uri: str) -> bool:
    return urlparse(uri).scheme in SCHEMES


def client_from_env(env: Mapping[str, str] = os.environ):
    from minio import Minio

    missing = [k for k in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
    if missing:
        raise RuntimeError(f"object storage: environment variable(s) {missing} not set; they come "
                           f"from the kubevae-settings ConfigMap and the kubevae-s3 Secret")
    endpoint = env["S3_ENDPOINT"]
    for scheme in ("http://", "https://"):
        endpoint = endpoint.removeprefix(scheme)
    return Minio(endpoint, access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                 secure=env.get("S3_USE_HTTPS", "1") not in ("0", "false", "False"),
                 region=env.get("AWS_REGION") or None)


def download(client, uri: str, dest: str | os.PathLike) -> int:
    """Copy every object under `uri` into folder `dest` (whole or not at all). Returns the count."""
    from kubevae.storage import atomic_dir

    bucket, prefix = parse_uri(uri)
    count = 0
    with atomic_dir(dest) as tmp:
        for obj in client.list_objects(bucket, prefix=f"{prefix}/" if prefix else "", recursive=True):
            relative = _relative_key(obj.object_name, prefix)
            client.fget_object(bucket, obj.object_name, str(tmp.joinpath(*relative.parts)))
            count += 1
        if count == 0:
            raise FileNotFoundError(f"download: no objects under {uri}")
    return count


def upload(client, src: str | os.PathLike, uri: str) -> int:
    """Copy every file under folder `src` to `uri`/<relative path>. Returns the count."""
    bucket, prefix = parse_uri(uri)
    root = Path(src)
    if not root.is_dir():
        raise NotADirectoryError(f"upload: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"upload: {root} holds no files")
    if not client.bucket_exists(bucket):
        raise FileNotFoundError(f"upload: bucket {bucket!r} does not exist at the S3 endpoint")
    for path in files:
        key = str(PurePosixPath(prefix, path.relative_to(root).as_posix())) if prefix \
            else path.relative_to(root).as_posix()
        client.fput_object(bucket, key, str(path))
    return len(files)


def _relative_key(name: str, prefix: str) -> PurePosixPath:
    relative = PurePosixPath(name[len(prefix):].lstrip("/") if prefix else name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"download: refusing object key {name!r} (it leaves the target folder)")
    return relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.k8s.objectstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    d = sub.add_parser("download", help="copy the objects under URI into a new folder")
    d.add_argument("uri")
    d.add_argument("folder")
    u = sub.add_parser("upload", help="copy a folder's files under URI")
    u.add_argument("folder")
    u.add_argument("uri")
    args = parser.parse_args(argv)
    if args.verb == "download":
        print(f"downloaded {download(client_from_env(), args.uri, args.folder)} files "
              f"from {args.uri} to {args.folder}", flush=True)
        return 0
    print(f"uploaded {upload(client_from_env(), args.folder, args.uri)} files "
          f"from {args.folder} to {args.uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
