"""Training throughput: the project's train step in every precision and layout it can use, and a
plain fp32 reference loop, in one run, with images/s, GFLOP/s, MFU and the ratios.

- kubevae: images stay uint8 in memory (on the GPU when there is one), batches are gathered by
  index and converted on the device; the step of kubevae.training.loop, in fp32 or bf16
  autocast, contiguous or channels_last; `--compile` adds torch.compile of the auto choice
  (and, on CUDA, torch.compile with CUDA graphs: mode reduce-overhead).
- reference: a DataLoader that decodes one PNG per sample with PIL, fp32, contiguous memory.
All run the same default 64-px model, batch size, optimizer and loss. FLOPs per image are counted
once with torch.utils.flop_counter; MFU is against kubevae.hardware.peak_flops for each
variant's precision (its source is printed). This machine is shared and noisy: variants are
interleaved round by round and each keeps its best round, so read the ratios; the load
average is printed with them.

  .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--rounds 3] [--batch-size 256]
      [--compile] [--device auto|cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kubevae import hardware
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data import sprites
from kubevae.model import VAE
from kubevae.objectives import Objective
from kubevae.training.loop import gather_batch, step_noise, train_step
from kubevae.training.throughput import train_step_flops_per_image


class PngFolder(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        array = np.asarray(Image.open(self.files[i]).convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(array)[None]


@dataclass
class Variant:
    name: str
    precision: str
    run_steps: Callable[[int], None]
    best: float = 0.0  # images/s


def timed(run_steps, steps: int, batch: int, device: torch.device) -> float:
    run_steps(1)  # warm-up: allocator, kernels, first batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run_steps(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def fresh_model(device: torch.device, memory_format=torch.contiguous_format):
    torch.manual_seed(0)
    vae = VAE(ModelConfig()).to(device, memory_format=memory_format)
    return vae, torch.optim.Adam(vae.parameters(), lr=1e-3)


def project_step(data, a, device, precision: hardware.Precision, objective,
                 compile_mode: str | None = None) -> Callable[[int], None]:
    """kubevae's train step with `precision` (and torch.compile when compile_mode is set)."""
    vae, opt = fresh_model(device, precision.memory_format)
    model = torch.compile(vae, mode=compile_mode) if compile_mode else vae
    order = torch.randperm(len(data))
    state = {"step": 0}

    def run(k: int) -> None:
        for _ in range(k):
            s = state["step"] % (a.steps + 1)
            x = gather_batch(data, order[s * a.batch_size:(s + 1) * a.batch_size], device,
                             precision.memory_format)
            eps = step_noise(0, s, a.batch_size, vae.config.latent_dim).to(device)
            terms = train_step(model, vae, objective, opt, x, eps, s, precision.autocast())
            terms.loss.item()  # the loop reads the loss every step; so does this
            state["step"] += 1
    return run


def reference_step(files, a, device, objective) -> Callable[[int], None]:
    vae, opt = fresh_model(device)
    loader = DataLoader(PngFolder(files), batch_size=a.batch_size, shuffle=True, num_workers=0)

    def batches():
        while True:
            yield from loader
    stream = batches()

    def run(k: int) -> None:
        for _ in range(k):
            x = next(stream).to(device)
            eps = torch.randn(len(x), vae.config.latent_dim, device=device)
            train_step(vae, vae, objective, opt, x, eps, 0, contextlib.nullcontext()).loss.item()
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--only", default=None,
                        help="comma-separated variant names to run (default: all), e.g. "
                             "'fp32 channels_last,bf16 channels_last,reference'")
    parser.add_argument("--json", default=None, help="write the figures here too")
    a = parser.parse_args(argv)
    device = hardware.pick_device(a.device)
    threads = hardware.configure_threads()
    n = a.batch_size * (a.steps + 1)
    images, _ = sprites.generate(n, seed=0)
    data = torch.from_numpy(images).to(device)
    objective = Objective(ObjectiveConfig(beta=4.0))
    auto = hardware.choose_precision("auto", device)
    load_before = os.getloadavg()

    x = gather_batch(data, torch.arange(2), device)
    flops_per_image = train_step_flops_per_image(fresh_model(device)[0], x, torch.zeros(2, 10, device=device))

    variants: list[Variant] = []
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        for channels_last in (False, True):
            p = hardware.Precision(precision, channels_last, device.type, "benchmark")
            layout = "channels_last" if channels_last else "contiguous"
            variants.append(Variant(f"{precision} {layout}", precision,
                                    project_step(data, a, device, p, objective)))
    if a.compile:
        variants.append(Variant(f"{auto.name} channels_last + compile", auto.name,
                                project_step(data, a, device, auto, objective, "default")))
        if device.type == "cuda":
            variants.append(Variant(f"{auto.name} channels_last + compile + CUDA graphs", auto.name,
                                    project_step(data, a, device, auto, objective, "reduce-overhead")))
    if a.only:
        wanted = {w.strip() for w in a.only.split(",")}
        variants = [v for v in variants if v.name in wanted]

    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        if not a.only or "reference" in {w.strip() for w in a.only.split(",")}:
            files = []
            for i, image in enumerate(images):
                files.append(Path(tmp) / f"{i:06d}.png")
                Image.fromarray(image[..., 0]).save(files[-1])
            reference = Variant("reference (PIL DataLoader, fp32 contiguous)", "fp32",
                                reference_step(files, a, device, objective))
        everything = variants + ([reference] if reference else [])
        compile_seconds = {}
        for v in everything:  # first call: compiles where torch.compile is on
            start = time.perf_counter()
            v.run_steps(1)
            compile_seconds[v.name] = time.perf_counter() - start
        # Interleave and keep each one's best round: load on the machine then hits all alike.
        for _ in range(a.rounds):
            for v in everything:
                v.best = max(v.best, timed(v.run_steps, a.steps, a.batch_size, device))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else hardware.cpu_info().model
    peaks = {p: hardware.peak_flops(device, p, threads) for p in ("fp32", "bf16")}
    base = next((v for v in everything if v.name == "fp32 contiguous"), None)
    print(f"device: {name}, {threads} threads; default 64-px model, batch {a.batch_size}, best of "
          f"{a.rounds} rounds of {a.steps} timed steps; {flops_per_image / 1e6:.1f} MFLOP per image "
          f"per train step (torch.utils.flop_counter)")
    print(f"auto precision here: {auto.describe()}")
    for p, peak in peaks.items():
        print(f"peak {p}: {'unknown' if peak.flops is None else f'{peak.flops / 1e9:,.1f} GFLOP/s'} ({peak.source})")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = f"{'variant':48s} {'images/s':>10s} {'GFLOP/s':>9s} {'MFU':>7s} {'vs ref':>7s} {'vs fp32':>8s}"
    print(header)
    print("-" * len(header))
    rows = []
    for v in everything:
        gflops = v.best * flops_per_image / 1e9
        peak = peaks[v.precision].flops
        mfu = gflops * 1e9 / peak if peak else None
        row = {"variant": v.name, "precision": v.precision, "images_per_s": v.best,
               "gflops": gflops, "mfu": mfu, "first_step_s": compile_seconds[v.name],
               "vs_reference": v.best / reference.best if reference else None,
               "vs_fp32_contiguous": v.best / base.best if base else None}
        rows.append(row)
        mark = "  <- auto" if v.name == f"{auto.name} channels_last" else ""
        print(f"{v.name:48s} {v.best:10.1f} {gflops:9.1f} {_fmt(mfu, '.1%'):>7s} "
              f"{_fmt(row['vs_reference'], '.2f', 'x'):>7s} "
              f"{_fmt(row['vs_fp32_contiguous'], '.2f', 'x'):>8s}{mark}")
    if a.compile:
        print("first step (includes compilation): " + ", ".join(
            f"{k}: {s:.1f}s" for k, s in compile_seconds.items() if "compile" in k))
    result = {"device": name, "threads": threads, "batch_size": a.batch_size, "steps": a.steps,
              "rounds": a.rounds, "flops_per_image": flops_per_image, "auto": auto.describe(),
              "peaks": {p: {"flops": k.flops, "source": k.source} for p, k in peaks.items()},
              "load_before": load_before, "load_after": os.getloadavg(), "variants": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


if __name__ == "__main__":
    main()
