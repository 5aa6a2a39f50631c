"""Call a served kubevae model: encode, reconstruct, generate, score or traverse image files.

Numbers (latents, scores) are printed as JSON lines, one per input file (or generated item);
images (reconstruct, generate, traverse) are written as PNG files into --out.
Examples:
  kubevae predict --url http://127.0.0.1:8080 --op score --images a.png b.png
  kubevae predict --url http://127.0.0.1:8080 --op generate --n 8 --out samples/
  kubevae predict --url http://GATEWAY --host kubevae.NS.example.com --op encode --images a.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kubevae.client import PROTOCOLS, Client, ServerError, load_images, save_png

OPS = ("encode", "reconstruct", "generate", "score", "traverse")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server or gateway URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--op", required=True, choices=OPS, help="the operation")
    parser.add_argument("--images", nargs="+", default=[], metavar="FILE",
                        help="image files (PNG, JPEG, ...) at the model's size")
    parser.add_argument("--model-name", default="kubevae", help="the served model's name")
    parser.add_argument("--protocol", default="v2", choices=PROTOCOLS, help="V1 or V2 REST")
    parser.add_argument("--host", default=None,
                        help="Host header: the InferenceService's host name behind a gateway")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra HTTP header (repeatable), e.g. 'Cookie: authservice_session=...'")
    parser.add_argument("--out", default=None, help="folder for output images (reconstruct, generate, traverse)")
    parser.add_argument("--n", type=int, default=None, help="generate: number of prior samples")
    parser.add_argument("--latents", default=None, help="generate/traverse: a .npy file of N x D latents")
    parser.add_argument("--seed", type=int, default=None, help="generate/score: random seed (server default 0)")
    parser.add_argument("--k", type=int, default=None, help="score: IWAE importance samples (server default 16)")
    parser.add_argument("--dim", type=int, default=None, help="traverse: the latent dimension to vary")
    parser.add_argument("--steps", type=int, default=None, help="traverse: images per input (server default 7)")
    parser.add_argument("--span", type=float, default=None, help="traverse: values in [-span, span] (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def run(args: argparse.Namespace) -> int:
    headers = dict(parse_header(h) for h in args.header)
    with Client(args.url, args.model_name, protocol=args.protocol, host=args.host,
                headers=headers, timeout=args.timeout) as client:
        try:
            result = call(client, args)
        except (ServerError, ValueError, FileNotFoundError) as error:
            print(f"kubevae predict: error: {error}", file=sys.stderr)
            return 1
    names = [Path(p).name for p in args.images] or [f"item{i}" for i in range(len(next(iter(result.outputs.values()))))]
    for i, name in enumerate(names):
        numbers = {k: v[i].tolist() for k, v in result.outputs.items() if k != "image"}
        print(json.dumps({"item": name, "request_id": result.request_id, **numbers}))
    if "image" in result:
        write_images(result["image"], names, args)
    return 0


def call(client: Client, args: argparse.Namespace):
    if args.op in ("reconstruct", "generate", "traverse") and not args.out:
        raise ValueError(f"--out: required for --op {args.op} (the images are written there)")
    latents = np.load(args.latents, allow_pickle=False) if args.latents else None
    images = None
    if args.images:
        # Convert each file to the model's channels (grayscale or RGB); sizes are not changed.
        images = load_images(args.images, channels=client.image_shape()[2])
    if args.op == "generate":
        return client.generate(latents, n=args.n, seed=args.seed)
    if args.op == "traverse":
        if args.dim is None:
            raise ValueError("--dim: required for --op traverse")
        return client.traverse(images, latents=latents, dim=args.dim, steps=args.steps, span=args.span)
    if images is None:
        raise ValueError(f"--images: required for --op {args.op}")
    if args.op == "score":
        return client.score(images, k=args.k, seed=args.seed)
    return client.infer(args.op, images=images)


def write_images(images: np.ndarray, names: list[str], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        stem = Path(name).stem
        if images.ndim == 5:  # traverse: N x S x H x W x C
            for s, image in enumerate(images[i]):
                save_png(out / f"{stem}-{args.op}-dim{args.dim}-{s:02d}.png", image)
        else:
            save_png(out / f"{stem}-{args.op}.png", images[i])
    print(f"wrote {images.shape[0] * (images.shape[1] if images.ndim == 5 else 1)} image(s) to {out}",
          file=sys.stderr)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header: expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()
