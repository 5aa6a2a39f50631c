"""Quality at a chosen budget: the default 64-px beta-VAE on the built-in sprites, K seeds.

Trains K seeds of one setting with the pipeline's training loop (kubevae.training.loop.train),
evaluates each with `kubevae evaluate`'s code (kubevae.evaluation.full) and prints, with every
setting: MIG, FactorVAE score, DCI (disentanglement, completeness, informativeness), PSNR and the
negative ELBO at beta = 1, per seed, then the best and the median over seeds.

Budget: either `--steps` per seed, or `--budget-minutes M`: the K seeds train side by side, one
process and one thread each (on a small CPU this is the most images per second, and every seed
sees the same load), and each gets the number of steps it can take in M minutes of wall time:
a probe of `--probe-steps` steps, run by all K processes at once (so under the same
contention) on a small sample (one epoch of the probe's steps: the time of a step does not
depend on the data's size), measures steps per second; steps = 0.9 x rate x M x 60 (the margin
pays for making the data and for the per-epoch validation). The steps are fixed before training starts, so the learning-rate schedule
runs its whole course; a probe never counts as training. Training then evaluation are timed
separately (`train_s`, `eval_s` per seed); the evaluation comes on top of the budget.

The reference budget is disentanglement_lib's: 300,000 steps at batch 64 (Locatello et al. 2019),
best on a GPU. The training images are a subset of the factorial drawn with the seed; the
evaluation sample is drawn separately from the whole factorial (disentanglement_lib also scores
on the training distribution; there is no held-out requirement for these metrics).

Examples:
  python benchmarks/quality.py --budget-minutes 30 --seeds 3 --dataset-size 60000   # a CPU
  python benchmarks/quality.py --steps 300000 --seeds 3 --dataset-size 737280       # a GPU
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCORES = ("mig", "factor_vae", "dci_disentanglement", "dci_completeness", "dci_informativeness",
          "psnr", "neg_elbo")
BUDGET_MARGIN = 0.9  # of the budget spent on optimizer steps; the rest pays for validation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per seed (default without --budget-minutes: 300000)")
    budget.add_argument("--budget-minutes", type=float, default=None,
                        help="wall-clock training time of the seeds, side by side (see above)")
    p.add_argument("--probe-steps", type=int, default=60, help="steps of the rate probe")
    p.add_argument("--seeds", type=int, default=3, help="K: seeds of the same setting")
    p.add_argument("--parallel", type=int, default=None,
                   help="seeds trained at once (default: all K with --budget-minutes, else 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: the trainer's")
    p.add_argument("--dataset-size", type=int, default=737_280, help="training sprites (all by default)")
    p.add_argument("--eval-size", type=int, default=20_000, help="sprites in the evaluation sample")
    p.add_argument("--protocol", default="disentanglement_lib", choices=["disentanglement_lib", "fast"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="where models and results go (default: a temp dir)")
    a = p.parse_args(argv)

    import torch

    from kubevae.config import TrainConfig
    from kubevae.data import sprites

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    parallel = a.parallel or (a.seeds if a.budget_minutes else 1)
    threads = 1 if parallel > 1 else None  # None: the trainer's own choice (every core)
    out = Path(a.out or tempfile.mkdtemp(prefix="kubevae-quality-"))
    eval_dir = out / "eval-data"
    if not (eval_dir / "dataset.json").exists():
        sprites.write(eval_dir, n=a.eval_size, seed=10_000)
    lr = a.lr or TrainConfig().lr
    job = {"batch_size": a.batch_size, "beta": a.beta, "latent_dim": a.latent_dim, "lr": lr,
           "dataset_size": a.dataset_size, "device": a.device, "threads": threads, "out": str(out)}
    context = multiprocessing.get_context("spawn")  # a fresh torch per process: threads take effect
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context) as pool:
        probe = None
        steps = a.steps or 300_000
        if a.budget_minutes:
            probe = measure_rate(pool, job, a.seeds, a.probe_steps)
            steps = max(1, int(BUDGET_MARGIN * probe["steps_per_s"] * a.budget_minutes * 60))
        settings = {"steps": steps, "budget_minutes": a.budget_minutes, "probe": probe,
                    "seeds": a.seeds, "parallel": parallel, "threads_per_seed": threads or "auto",
                    **{k: job[k] for k in ("batch_size", "beta", "latent_dim", "lr", "dataset_size")},
                    "eval_size": a.eval_size, "protocol": a.protocol, "device": device,
                    "cpu_cores": os.cpu_count(), "load_at_start": load_average(),
                    "model": "Burgess et al. 2018 conv encoder/decoder, 64 px, Bernoulli, summed losses"}
        print("settings:", json.dumps(settings), flush=True)
        futures = [pool.submit(run_seed, job, seed, steps, str(eval_dir), a.protocol, device)
                   for seed in range(a.seeds)]
        rows = []
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            print("seed", json.dumps(row), flush=True)
    rows.sort(key=lambda r: r["seed"])
    summary = summarize(rows)
    settings["load_at_end"] = load_average()
    print("summary:", json.dumps(summary), flush=True)
    print(f"load average at start {settings['load_at_start']}, at end {settings['load_at_end']}")
    (out / "quality.json").write_text(json.dumps({"settings": settings, "seeds": rows, "summary": summary},
                                                 indent=2))
    print(f"written {out / 'quality.json'}")
    return 0


def train_config(job: dict[str, Any], seed: int, steps: int, out: str):
    from kubevae.config import ModelConfig, ObjectiveConfig, TrainConfig

    return TrainConfig(dataset="sprites", dataset_size=job["dataset_size"], out=out, steps=steps,
                       batch_size=job["batch_size"], lr=job["lr"], seed=seed, device=job["device"],
                       tracking=False, log_images=False, resume="never",
                       checkpoint_every=max(1000, steps // 10),
                       model=ModelConfig(latent_dim=job["latent_dim"]),
                       objective=ObjectiveConfig(beta=job["beta"]))


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainer leaves a set value alone
        torch.set_num_threads(threads)


def probe_seed(job: dict[str, Any], seed: int, steps: int) -> float:
    """Optimizer steps per second of one seed's process (compute only: the trainer's meter)."""
    import dataclasses

    from kubevae.training.data import VAL_FRACTION
    from kubevae.training.loop import train

    set_threads(job["threads"])
    # Just enough images for one epoch of `steps` (the built-in data holds VAL_FRACTION out).
    sample = int(job["batch_size"] * (steps + 1) / (1 - VAL_FRACTION) * 1.1)
    cfg = dataclasses.replace(train_config(job, seed, steps, f"{job['out']}/probe-{seed}"),
                              dataset_size=sample)
    final = train(cfg)
    return final["history"][0]["images_per_s"] / job["batch_size"]


def measure_rate(pool, job: dict[str, Any], seeds: int, probe_steps: int) -> dict[str, Any]:
    """All seeds' processes probe at once; the slowest sets the pace (every seed trains the
    same steps)."""
    start = time.monotonic()
    rates = list(pool.map(probe_seed, [job] * seeds, range(seeds), [probe_steps] * seeds))
    return {"probe_steps": probe_steps, "steps_per_s_each": [round(r, 3) for r in rates],
            "steps_per_s": min(rates), "probe_wall_s": round(time.monotonic() - start, 1)}


def run_seed(job: dict[str, Any], seed: int, steps: int, eval_dir: str, protocol: str,
             device: str) -> dict[str, Any]:
    from kubevae.evaluation.full import evaluate_model
    from kubevae.training.loop import train

    set_threads(job["threads"])
    cfg = train_config(job, seed, steps, f"{job['out']}/seed-{seed}")
    start = time.monotonic()
    final = train(cfg)
    train_s = time.monotonic() - start
    metrics = evaluate_model(cfg.out, eval_dir, f"{job['out']}/eval-{seed}", split="all", iwae_k=0,
                             seed=seed, protocol=protocol, device=device)
    return {"seed": seed, **{k: metrics.get(k) for k in SCORES}, "steps": final.get("step"),
            "train_s": round(train_s, 1), "eval_s": round(time.monotonic() - start - train_s, 1)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from kubevae.registry import LOWER_IS_BETTER

    summary = {}
    for k in SCORES:
        values = [r[k] for r in rows if r.get(k) is not None]
        if values:
            best = min(values) if k in LOWER_IS_BETTER else max(values)
            summary[k] = {"best": best, "median": statistics.median(values)}
    return summary


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
