"""Serving latency and throughput: the real KServe server against the same model in-process.

For encode and score (one 64x64 image per request, V2 REST by default) at concurrency 1, 8
and 32: p50 / p95 / p99 latency and requests per second against `kubevae serve` on loopback,
beside the raw in-process model time for the same batches (run_batch on 1, 8 and 32 images,
with the server's thread count), and their ratio. Then an endurance run: 10,000 encode
requests at concurrency 32, which must all succeed.

Goals (2 CPU cores): p99 <= 15 ms for one encode at concurrency 1; throughput at concurrency
32 >= 70% of the raw model's throughput on batches of 32; zero errors in the endurance run.
The load generator (aiohttp) runs on the same cores as the server: read ratios, not absolutes.

  nice -n 10 .venv/bin/python benchmarks/serving.py [--model DIR] [--requests 400]
      [--api v2|v1|v2-binary|grpc] [--images-per-request 1] [--batch-delay-ms 0] [--json out.json]

--compare v2 v2-binary: two APIs against one server instead, encode at concurrency 32 (see
--compare-op, --compare-concurrency), in alternating rounds (A B, B A, A B, ...), so that a
change in the machine's load hits both alike; it reports each round's throughput ratio
(second API / first) and their median. docs/serving.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# This file is benchmarks/serving.py: drop its folder from the path, or it hides the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kubevae.client import v1_payload, v2_payload  # noqa: E402
from kubevae.config import ModelConfig, ObjectiveConfig  # noqa: E402
from kubevae.model import VAE, load_model, save_model  # noqa: E402
from serving.http import binary_request_body  # noqa: E402
from serving.local import LocalServer  # noqa: E402
from serving.ops import OpRequest, run_batch  # noqa: E402

OPS = ("encode", "score")
CONCURRENCY = (1, 8, 32)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: a fresh 64x64 VAE)")
    parser.add_argument("--requests", type=int, default=400, help="requests per (op, concurrency)")
    parser.add_argument("--endurance", type=int, default=10_000,
                        help="encode requests at concurrency 32 that must all succeed (0: skip)")
    # Not --protocol: importing kserve parses sys.argv, and kserve owns a --protocol flag.
    parser.add_argument("--api", default="v2", choices=["v1", "v2", "v2-binary", "grpc"],
                        help="v2: JSON tensors; v2-binary: the binary tensor extension; grpc: raw contents")
    parser.add_argument("--images-per-request", type=int, default=1,
                        help="images in each request (the raw reference runs batches of "
                             "concurrency x this many)")
    parser.add_argument("--k", type=int, default=16, help="IWAE samples for score")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (server and raw)")
    parser.add_argument("--batch-delay-ms", type=float, default=0.0)
    parser.add_argument("--batch-max-images", type=int, default=32)
    parser.add_argument("--compare", nargs=2, default=None, metavar="API",
                        choices=["v1", "v2", "v2-binary", "grpc"],
                        help="compare two APIs in alternating rounds instead of the full table")
    parser.add_argument("--rounds", type=int, default=6, help="--compare: rounds (each runs both APIs)")
    parser.add_argument("--compare-op", default="encode", choices=OPS)
    parser.add_argument("--compare-concurrency", type=int, default=32)
    parser.add_argument("--json", default=None, help="write the figures here too")
    return parser.parse_args()


# -- raw model --------------------------------------------------------------------------------
class RawModel:
    """run_batch in this process, the server's code path without the server, with the
    server's thread count. Timed right before and after each server run (the machine is
    shared: a reference taken minutes apart would compare different loads)."""

    def __init__(self, model_dir: Path, images: np.ndarray, k: int, threads: int):
        torch.set_num_threads(threads)
        self.vae = load_model(model_dir).eval()
        self.images, self.k = images, k

    def seconds(self, op: str, requests: int, images_per_request: int | None = None,
                budget_s: float = 1.0) -> float:
        """Seconds per model call on `requests` requests of `images_per_request` images."""
        images = self.images[:images_per_request] if images_per_request else self.images
        params = {"k": self.k, "seed": 0} if op == "score" else {}
        batch = [OpRequest(op, images=images, params=params) for _ in range(requests)]
        started = time.perf_counter()
        run_batch(self.vae, batch)  # warm, and a first estimate
        first = time.perf_counter() - started
        n = max(2, min(30, int(budget_s / max(first, 1e-4))))
        started = time.perf_counter()
        for _ in range(n):
            run_batch(self.vae, batch)
        return (time.perf_counter() - started) / n


# -- load generation --------------------------------------------------------------------------
def request_body(protocol: str, op: str, images: np.ndarray, k: int) -> tuple[bytes, dict]:
    params = {"k": k} if op == "score" else {}
    if protocol == "v2-binary":
        return binary_request_body(op, images, **params)
    build = v1_payload if protocol == "v1" else v2_payload
    return json.dumps(build(op, images, **params)).encode(), {"content-type": "application/json"}


async def closed_loop(send: Callable[[], Awaitable[bool]], total: int, concurrency: int
                      ) -> tuple[list[float], int]:
    """`concurrency` clients sending back to back until `total` requests went out: the latency
    of each request, and how many failed (send() returned False)."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def client() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            errors += not await send()
            latencies.append(time.perf_counter() - started)
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


async def http_load(url: str, body: bytes, headers: dict, total: int, concurrency: int
                    ) -> tuple[list[float], int]:
    import aiohttp
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def send() -> bool:
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError):  # counted, not fatal
                return False
        return await closed_loop(send, total, concurrency)


async def grpc_load(target: str, request, total: int, concurrency: int) -> tuple[list[float], int]:
    import grpc
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)

        async def send() -> bool:
            try:
                await stub.ModelInfer(request, timeout=60)
                return True
            except grpc.RpcError:
                return False
        return await closed_loop(send, total, concurrency)


def run_load(server: LocalServer, protocol: str, op: str, images: np.ndarray, k: int,
             total: int, concurrency: int) -> dict:
    if protocol == "grpc":
        from serving.grpc_client import infer_request
        request = infer_request(server.model_name, op, images=images, **({"k": k} if op == "score" else {}))
        coroutine = grpc_load(server.grpc_target, request, total, concurrency)
    else:
        path = f"/v1/models/{server.model_name}:predict" if protocol == "v1" \
            else f"/v2/models/{server.model_name}/infer"
        body, headers = request_body(protocol, op, images, k)
        coroutine = http_load(server.url + path, body, headers, total, concurrency)
    started = time.perf_counter()
    latencies, errors = asyncio.run(coroutine)
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"op": op, "concurrency": concurrency, "requests": total, "errors": errors,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "rps": total / elapsed,
            "images_per_s": total * len(images) / elapsed}


def model_and_images(args: argparse.Namespace, tmp: Path) -> tuple[Path, np.ndarray]:
    """The model folder (--model, or a fresh 64x64 VAE in `tmp`) and the images of one request."""
    model_dir = Path(args.model) if args.model else tmp / "model"
    if not args.model:
        torch.manual_seed(0)
        save_model(model_dir, VAE(ModelConfig(image_size=64, latent_dim=10)), ObjectiveConfig())
    config = load_model(model_dir).config
    images = np.random.default_rng(0).integers(
        0, 256, (args.images_per_request, config.image_size, config.image_size, config.channels),
        dtype=np.uint8)
    return model_dir, images


def compare(args: argparse.Namespace, server: LocalServer, images: np.ndarray) -> dict:
    """Both APIs in alternating rounds on one server: each round's req/s and their ratio."""
    first, second = args.compare
    op, c = args.compare_op, args.compare_concurrency
    total = args.requests if op == "encode" else max(64, args.requests // 4)
    for api in (first, second):
        run_load(server, api, op, images, args.k, 50, 8)  # warm the path
    rps: dict[str, list[float]] = {first: [], second: []}
    errors = 0
    for round_ in range(args.rounds):
        for api in (first, second) if round_ % 2 == 0 else (second, first):
            row = run_load(server, api, op, images, args.k, total, c)
            rps[api].append(row["rps"])
            errors += row["errors"]
            print(f"round {round_ + 1}: {api:>9} {op} c={c}: {row['rps']:7.1f} req/s  p50 "
                  f"{row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}", flush=True)
    ratios = [b / a for a, b in zip(rps[first], rps[second], strict=True)]
    summary = {"op": op, "concurrency": c, "requests": total, "rps": rps, "ratios": ratios,
               "median_ratio": float(np.median(ratios)), "errors": errors}
    print(f"{second} / {first} ({op}, c={c}), per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {summary['median_ratio']:.2f}; median req/s {first} {np.median(rps[first]):.0f}, "
          f"{second} {np.median(rps[second]):.0f}")
    return summary


def server_args(args: argparse.Namespace, clients: int) -> list[str]:
    return ["--threads", str(args.threads), "--batch-delay-ms", str(args.batch_delay_ms),
            "--batch-max-images", str(args.batch_max_images), "--log-level", "WARNING",
            "--max-iwae-k", str(max(args.k, 16)),
            # throughput, not admission, is measured here: admit every client
            "--max-pending-requests", str(clients)]


def machine() -> str:
    """The CPU model, cores and load average (Linux): the figures depend on all three."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores, load average {load}"


def main() -> int:
    args = parse_args()
    if args.compare:
        return main_compare(args)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, images = model_and_images(args, Path(tmp))
        raw = RawModel(model_dir, images, args.k, args.threads)
        rows = []
        print(f"protocol {args.api}, {args.images_per_request} image(s) of "
              f"{list(images.shape[1:])} per request, torch threads {args.threads}, "
              f"batch delay {args.batch_delay_ms} ms, batch max {args.batch_max_images} images", flush=True)
        with LocalServer(model_dir, grpc=args.api == "grpc",
                         args=server_args(args, max(CONCURRENCY))) as server:
            for op in OPS:
                run_load(server, args.api, op, images, args.k, 50, 8)  # warm the path
                for c in CONCURRENCY:
                    total = args.requests if op == "encode" else max(64, args.requests // 4)
                    raw_before = (raw.seconds(op, c), raw.seconds(op, 32, 1))
                    row = run_load(server, args.api, op, images, args.k, total, c)
                    raw_after = (raw.seconds(op, c), raw.seconds(op, 32, 1))
                    raw_same_s = (raw_before[0] + raw_after[0]) / 2
                    raw_32_s = (raw_before[1] + raw_after[1]) / 2
                    raw_same = c * len(images) / raw_same_s  # images/s on the same batch
                    row.update(raw_ms=raw_same_s * 1000, raw_images_per_s=raw_same,
                               raw_batch32_ms=raw_32_s * 1000,
                               of_raw_same_batch=row["images_per_s"] / raw_same,
                               of_raw_batch32=row["images_per_s"] / (32 / raw_32_s),
                               overhead_ratio=row["p50_ms"] / (raw.seconds(op, 1) * 1000))
                    rows.append(row)
                    print(format_row(row), flush=True)
            endurance = run_load(server, args.api, "encode", images, args.k, args.endurance, 32) \
                if args.endurance else None
        if endurance:
            print(f"endurance: {endurance['requests']} encode requests at concurrency 32: "
                  f"{endurance['errors']} errors, {endurance['rps']:.0f} req/s, p99 {endurance['p99_ms']:.1f} ms")
        goals = {
            f"p99 encode c=1 <= 15 ms ({len(images)} image(s) per request)": rows[0]["p99_ms"] <= 15.0,
            "encode c=32 >= 70% of raw batch-32 throughput": rows[2]["of_raw_batch32"] >= 0.70,
            "score c=32 >= 70% of raw batch-32 throughput": rows[5]["of_raw_batch32"] >= 0.70,
        }
        if endurance:
            goals[f"endurance: {endurance['requests']} requests, zero errors"] = endurance["errors"] == 0
        for goal, met in goals.items():
            print(f"goal {'MET' if met else 'NOT MET'}: {goal}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "endurance": endurance, "goals": goals,
                                                   "args": vars(args)}, indent=2))
        return 0 if not endurance or endurance["errors"] == 0 else 1


def main_compare(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, images = model_and_images(args, Path(tmp))
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}", flush=True)
        print(f"compare {args.compare[0]} and {args.compare[1]}: {args.images_per_request} image(s) of "
              f"{list(images.shape[1:])} per request, torch threads {args.threads}, {args.rounds} rounds",
              flush=True)
        with LocalServer(model_dir, grpc="grpc" in args.compare,
                         args=server_args(args, args.compare_concurrency)) as server:
            summary = compare(args, server, images)
        print(f"after: {machine()}")
        if args.json:
            Path(args.json).write_text(json.dumps({"compare": summary, "machine": machine(),
                                                   "args": vars(args)}, indent=2))
        # a failed request is fast: a comparison with failures means nothing
        return 0 if summary["errors"] == 0 else 1


def format_row(row: dict) -> str:
    return (f"{row['op']:>6} c={row['concurrency']:>2}: p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f}  "
            f"p99 {row['p99_ms']:6.2f}  {row['rps']:7.1f} req/s {row['images_per_s']:7.1f} img/s  "
            f"errors {row['errors']} | raw same batch: {row['raw_ms']:6.2f} ms = "
            f"{row['raw_images_per_s']:7.1f} img/s, raw batch of 32: {row['raw_batch32_ms']:6.2f} ms | server/raw "
            f"same batch {row['of_raw_same_batch']:.0%}, of raw batch-32 {row['of_raw_batch32']:.0%}, "
            f"p50/raw(1) {row['overhead_ratio']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
