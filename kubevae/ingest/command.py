"""Ingest images from a folder, an S3/MinIO bucket or built-in data into a dataset folder.

Examples:
  kubevae ingest --source builtin://sprites?n=20000 --out runs/raw
  kubevae ingest --source builtin://digits --image-size 32 --out runs/digits
  kubevae ingest --source ./photos --metadata ./photos.csv --image-size 64 --out runs/raw
  kubevae ingest --source s3://bucket/faces --metadata s3://bucket/faces.csv --out runs/raw
      (with S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)

Accepts PNG, JPEG, BMP and NPY files. Each file that cannot be used goes to OUT/quarantine.csv
with its reason (zero_byte, undecodable, truncated, wrong_mode, wrong_channels, wrong_size,
nonfinite, out_of_range, constant, read_error, no_metadata_row, too_large, animated, bad_name,
broken_link, outside_source, not_a_file, changed, decode_error); the step fails only
when the quarantined fraction exceeds --max-bad-fraction. Counts (seen = accepted + quarantined)
are printed and written to OUT/card.json and OUT/card.md.

S3 endpoint, credentials and TLS come from the environment only: S3_ENDPOINT (host:port or
http(s)://host:port), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
S3_USE_HTTPS, S3_VERIFY_SSL, S3_CA_BUNDLE, S3_MAX_RETRIES, S3_RETRY_BACKOFF, S3_TIMEOUT.
"""

from __future__ import annotations

import argparse
import sys

from kubevae.ingest.metadata import MAX_METADATA_BYTES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="a folder, s3://BUCKET/PREFIX, minio://BUCKET/PREFIX, "
                        "builtin://sprites[?n=N&seed=S] or builtin://digits")
    p.add_argument("--out", required=True, help="the dataset folder to write")
    p.add_argument("--metadata", default=None,
                   help="CSV or Parquet keyed by relative path (local path or s3:// URI): "
                        "group_id, timestamp, label, factor_<name>, other columns")
    p.add_argument("--path-column", default="path", help="the metadata column holding the path")
    p.add_argument("--image-size", type=int, choices=[28, 32, 64], default=None,
                   help="resize every image to this square size (unset: keep; every image must match)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="convert every image to this many channels (unset: keep; every image must match)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of the files is quarantined")
    p.add_argument("--workers", type=int, default=2, help="parallel decoding workers")
    p.add_argument("--executor", choices=["auto", "process", "thread"], default="auto",
                   help="auto: processes for folders and built-ins, threads for buckets")
    p.add_argument("--batch-size", type=int, default=256, help="files per worker task")
    p.add_argument("--license", default=None, help="the data's license, for the dataset card")
    p.add_argument("--name", default=None, help="a name for the dataset card")
    p.add_argument("--max-metadata-mb", type=float, default=MAX_METADATA_BYTES / 2**20,
                   help="refuse a metadata file larger than this (MiB); it is read whole, and "
                        "pandas holds a CSV in about 13x its size")


def run(a: argparse.Namespace) -> int:
    from kubevae.ingest import IngestError, ingest

    try:
        report = ingest(a.source, a.out, metadata=a.metadata, path_column=a.path_column,
                        image_size=a.image_size, channels=a.channels,
                        max_bad_fraction=a.max_bad_fraction, workers=a.workers,
                        executor=a.executor, batch_size=a.batch_size, license=a.license,
                        name=a.name, max_metadata_bytes=int(a.max_metadata_mb * 2**20))
    except IngestError as e:
        print(e.report.summary(), flush=True)
        print(f"kubevae ingest: error: {e}", file=sys.stderr)
        return 1
    print(report.summary(), flush=True)
    return 0
