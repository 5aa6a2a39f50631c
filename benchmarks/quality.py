"""Quality at a chosen budget: the default 64-px beta-VAE on the built-in sprites, K seeds.

Trains K seeds of one setting with `kubevae train` (the same loop as the pipeline), evaluates each
with `kubevae evaluate`'s code (kubevae.evaluation.full) and prints, with every setting:
MIG, FactorVAE score, DCI (disentanglement, completeness, informativeness), PSNR and the negative
ELBO at beta = 1, per seed, then the best and the median over seeds.

The reference budget is disentanglement_lib's: 300,000 steps at batch 64 (Locatello et al. 2019),
best on a GPU. The training images are a subset of the factorial drawn with the seed; the
evaluation sample is drawn separately from the whole factorial (disentanglement_lib also scores
on the training distribution; there is no held-out requirement for these metrics).

Example (a CPU budget):
  python benchmarks/quality.py --steps 3000 --seeds 3 --dataset-size 60000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SCORES = ("mig", "factor_vae", "dci_disentanglement", "dci_completeness", "dci_informativeness",
          "psnr", "neg_elbo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300_000, help="optimizer steps per seed")
    p.add_argument("--seeds", type=int, default=3, help="K: seeds of the same setting")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: the trainer's (5e-4)")
    p.add_argument("--dataset-size", type=int, default=737_280, help="training sprites (all by default)")
    p.add_argument("--eval-size", type=int, default=20_000, help="sprites in the evaluation sample")
    p.add_argument("--protocol", default="disentanglement_lib", choices=["disentanglement_lib", "fast"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="where models and results go (default: a temp dir)")
    a = p.parse_args(argv)

    import torch

    from kubevae.config import ModelConfig, ObjectiveConfig, TrainConfig
    from kubevae.data import sprites
    from kubevae.evaluation.full import evaluate_model
    from kubevae.training.loop import train

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    out = Path(a.out or tempfile.mkdtemp(prefix="kubevae-quality-"))
    eval_dir = out / "eval-data"
    if not (eval_dir / "dataset.json").exists():
        sprites.write(eval_dir, n=a.eval_size, seed=10_000)
    settings = {"steps": a.steps, "batch_size": a.batch_size, "beta": a.beta, "latent_dim": a.latent_dim,
                "lr": a.lr or TrainConfig().lr, "dataset_size": a.dataset_size, "seeds": a.seeds,
                "eval_size": a.eval_size, "protocol": a.protocol, "device": device,
                "model": "Burgess et al. 2018 conv encoder/decoder, 64 px, Bernoulli, summed losses"}
    print("settings:", json.dumps(settings), flush=True)
    rows = []
    for seed in range(a.seeds):
        start = time.monotonic()
        cfg = TrainConfig(dataset="sprites", dataset_size=a.dataset_size, out=str(out / f"seed-{seed}"),
                          steps=a.steps, batch_size=a.batch_size, lr=a.lr or TrainConfig().lr,
                          seed=seed, device=a.device, tracking=False, log_images=False,
                          checkpoint_every=max(1000, a.steps // 10),
                          model=ModelConfig(latent_dim=a.latent_dim),
                          objective=ObjectiveConfig(beta=a.beta))
        train(cfg)
        train_s = time.monotonic() - start
        metrics = evaluate_model(cfg.out, eval_dir, out / f"eval-{seed}", split="all", iwae_k=0,
                                 seed=seed, protocol=a.protocol, device=device)
        row = {"seed": seed, **{k: metrics.get(k) for k in SCORES}, "train_s": round(train_s, 1)}
        rows.append(row)
        print("seed", json.dumps(row), flush=True)
    summary = {}
    for k in SCORES:
        values = [r[k] for r in rows if r[k] is not None]
        if values:
            best = min(values) if k == "neg_elbo" else max(values)
            summary[k] = {"best": best, "median": statistics.median(values)}
    print("summary:", json.dumps(summary), flush=True)
    (out / "quality.json").write_text(json.dumps({"settings": settings, "seeds": rows, "summary": summary},
                                                 indent=2))
    print(f"written {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
