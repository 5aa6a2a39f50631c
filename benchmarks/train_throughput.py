"""Training throughput: kubevae's data path against a plain reference loop, in one run.

- kubevae: images stay uint8 in memory (on the GPU when there is one), batches are gathered by
  index and converted on the device; bf16 autocast and channels_last on CUDA.
- reference: a DataLoader that decodes one PNG per sample with PIL, fp32, contiguous memory.
Both run the same default 64-px model, batch size, optimizer and train step, so the ratio
isolates the data path and the numeric format. Machines here are noisy: read the ratio.

  .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data import sprites
from kubevae.model import VAE
from kubevae.objectives import Objective
from kubevae.training.distributed import pick_device
from kubevae.training.loop import gather_batch, step_noise, train_step


class PngFolder(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        array = np.asarray(Image.open(self.files[i]).convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(array)[None]


def timed(run_steps, steps: int, batch: int, device: torch.device) -> float:
    run_steps(1)  # warm-up: allocator, kernels, first batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run_steps(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    a = parser.parse_args()
    device = pick_device(a.device)
    n = a.batch_size * (a.steps + 1)
    images, _ = sprites.generate(n, seed=0)
    objective = Objective(ObjectiveConfig(beta=4.0))

    def fresh_model(channels_last: bool):
        torch.manual_seed(0)
        vae = VAE(ModelConfig()).to(device)
        if channels_last:
            vae = vae.to(memory_format=torch.channels_last)
        return vae, torch.optim.Adam(vae.parameters(), lr=1e-3)

    # kubevae's path
    vae, opt = fresh_model(device.type == "cuda")
    data = torch.from_numpy(images).to(device) if device.type == "cuda" else torch.from_numpy(images)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    order = torch.randperm(n)
    state = {"step": 0}

    def fast(k: int) -> None:
        for _ in range(k):
            s = state["step"] % (a.steps + 1)
            x = gather_batch(data, order[s * a.batch_size:(s + 1) * a.batch_size], device)
            eps = step_noise(0, s, a.batch_size, vae.config.latent_dim).to(device)
            train_step(vae, vae, objective, opt, x, eps, s, autocast)
            state["step"] += 1

    # the reference loop
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, image in enumerate(images):
            files.append(Path(tmp) / f"{i:06d}.png")
            Image.fromarray(image[..., 0]).save(files[-1])
        ref_vae, ref_opt = fresh_model(False)
        loader = DataLoader(PngFolder(files), batch_size=a.batch_size, shuffle=True, num_workers=0)
        def batches():
            while True:
                yield from loader

        stream = batches()

        def reference(k: int) -> None:
            for _ in range(k):
                x = next(stream).to(device)
                eps = torch.randn(len(x), ref_vae.config.latent_dim, device=device)
                train_step(ref_vae, ref_vae, objective, ref_opt, x, eps, 0, contextlib.nullcontext())

        # Alternate the two and keep each one's best round: other load on the machine then
        # hits both alike instead of whichever happened to run during it.
        fast_ips = ref_ips = 0.0
        for _ in range(a.rounds):
            fast_ips = max(fast_ips, timed(fast, a.steps, a.batch_size, device))
            ref_ips = max(ref_ips, timed(reference, a.steps, a.batch_size, device))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; default 64-px model, batch {a.batch_size}, best of {a.rounds} "
          f"rounds of {a.steps} timed steps")
    print(f"kubevae train step      : {fast_ips:10.1f} images/s")
    print(f"reference (PIL, fp32)   : {ref_ips:10.1f} images/s")
    print(f"ratio kubevae/reference : {fast_ips / ref_ips:10.2f}x")


if __name__ == "__main__":
    main()
