"""The training container's entry point: run a command, timestamp its output, upload results.

    python -m components.k8s.entrypoint [--download URI=FOLDER ...] [--upload FOLDER=URI ...] \
        -- kubevae train ...

- Every output line is prefixed with an RFC 3339 UTC timestamp and a space. Katib's StdOut
  metrics collector orders metrics by that leading timestamp; without it every metric gets the
  zero time and neither medianstop nor the "latest" metric strategy can tell epochs apart.
- The exit status of the command is passed through; SIGTERM from the kubelet is forwarded.
- Before the command, every pod downloads each URI into its FOLDER (a TrainJob's pods: the
  Trainer's runtime patches can change a pod but cannot add an init container to it). These
  are KFP artifacts, uploaded by KFP's launcher without a completion marker, so none is asked for.
- Only when the command succeeded on the node-0 pod (kubevae.training.distributed.node_rank:
  the PyTorchJob Master, the TrainJob's node 0), each FOLDER is uploaded to its URI, so
  workers never race the master. The upload (kubevae.objectstore.upload) writes its
  completion marker last; readers require it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

from kubevae import objectstore


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(command: list[str], uploads: Sequence[tuple[str, str]] = (), *, out: TextIO = sys.stdout,
        env: Mapping[str, str] = os.environ, clock: Callable[[], str] = timestamp,
        client_factory=objectstore.client_from_env,
        downloads: Sequence[tuple[str, str]] = ()) -> int:
    from kubevae.training.distributed import node_rank

    if not command:
        raise ValueError("entrypoint: no command given after --")
    for uri, folder in downloads:
        count = objectstore.download(client_factory(env), uri, folder, require_marker=False)
        out.write(f"{clock()} downloaded {count} files from {uri} to {folder}\n")
        out.flush()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1, env={**env, "PYTHONUNBUFFERED": "1"})

    def forward(signum, _frame):  # the kubelet's SIGTERM must reach the trainer
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        if child.stdout is None:  # started with stdout=PIPE above
            raise RuntimeError("the trainer was started without a stdout pipe")
        for line in child.stdout:
            out.write(f"{clock()} {line}")
            out.flush()
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0 or node_rank(env) != 0 or not uploads:
        return code
    client = client_factory(env)
    for folder, uri in uploads:
        count = objectstore.upload(client, folder, uri)
        out.write(f"{clock()} uploaded {count} files from {folder} to {uri}\n")
    out.flush()
    return 0


def _pair(text: str) -> tuple[str, str]:
    """--upload FOLDER=URI."""
    folder, uri = _folder_and_uri(text, uri_first=False)
    return folder, uri


def _download(text: str) -> tuple[str, str]:
    """--download URI=FOLDER."""
    folder, uri = _folder_and_uri(text, uri_first=True)
    return uri, folder


def _folder_and_uri(text: str, *, uri_first: bool) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    uri, folder = (left, right) if uri_first else (right, left)
    if not sep or not folder or not uri:
        raise argparse.ArgumentTypeError(
            f"expected {'URI=FOLDER' if uri_first else 'FOLDER=URI'}, got {text!r}")
    try:
        objectstore.parse_uri(uri)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return folder, uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.k8s.entrypoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--download", type=_download, action="append", default=[], metavar="URI=FOLDER",
                        help="before the command, download URI (s3:// or minio://) into FOLDER")
    parser.add_argument("--upload", type=_pair, action="append", default=[], metavar="FOLDER=URI",
                        help="after success on rank 0, upload FOLDER to URI (s3:// or minio://)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run(command, args.upload, downloads=args.download)


if __name__ == "__main__":
    sys.exit(main())
