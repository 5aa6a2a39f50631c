"""The training loop: one readable loop for one process, torchrun and a PyTorchJob alike.

Determinism across world sizes and restarts: the global batch is split evenly over the
processes (DistributedSampler, seeded per epoch), and the reparameterization noise of step t is
drawn for the whole global batch from a generator seeded by (seed, t), each process taking its
own rows. So a 2-process run takes the same steps as a 1-process run, and a run resumed from a
checkpoint at step s continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from kubevae import hardware, tracking
from kubevae.config import TrainConfig, to_dict
from kubevae.errors import ParameterError
from kubevae.evaluation.bounds import evaluate_images
from kubevae.model import VAE, save_model
from kubevae.objectives import Objective, Posterior, with_schedule
from kubevae.progress import progress
from kubevae.training import checkpoint, distributed, scoring
from kubevae.training.data import TrainingData, load
from kubevae.training.throughput import Meter, train_step_flops_per_image

MAX_VAL_IMAGES = 10_000


def train(cfg: TrainConfig, run_name: str = "train") -> dict[str, Any]:
    """Train a beta-VAE as `cfg` says and write the model folder to cfg.out. Returns metrics."""
    dist = distributed.setup(cfg.device)
    try:
        return _train(cfg, dist, run_name)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: distributed.Distributed, run_name: str) -> dict[str, Any]:
    threads = hardware.configure_threads()
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    data = load(cfg.data, cfg.dataset, cfg.dataset_size, cfg.seed)
    precision = hardware.choose_precision(cfg.precision, dist.device, cfg.deterministic)
    # Module.to takes memory_format (torch.nn.Module.to's docstring); torch's overloads omit it.
    vae = VAE(model_config_for(cfg, data)).to(dist.device, memory_format=precision.memory_format)  # type: ignore[call-overload]
    on_cuda = dist.device.type == "cuda"
    plan = StepPlan.make(cfg, len(data.train), dist.world_size)
    cfg = dataclasses.replace(cfg, objective=with_schedule(cfg.objective, plan.total_steps,
                                                           len(data.train)))
    score_objective = scoring.validation_scorer(cfg, data)  # the search objective, if any
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_lr_steps, plan.total_steps))
    objective = Objective(cfg.objective, vae.config.latent_dim, dist.device)
    ckpt_dir = Path(cfg.checkpoint_dir or f"{cfg.out}.ckpt")
    step, history = resume(cfg, ckpt_dir, vae, optimizer, scheduler, dist, objective)
    model = vae
    if dist.enabled:
        model = DistributedDataParallel(vae, device_ids=[dist.device] if on_cuda else None)
        objective.distribute(lambda m: DistributedDataParallel(m, device_ids=[dist.device] if on_cuda else None))

    images = data.train.to(dist.device) if on_cuda else data.train
    # DistributedSampler reads only len() of its dataset, so the indices stand in for it.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(images)),  # type: ignore[arg-type]
        num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    autocast = precision.autocast()
    meter = make_meter(vae, images, precision, threads, dist)
    track = tracking.start_run(tracking.training_run_name(run_name, cfg.objective.beta, cfg.model.latent_dim),
                               experiment=cfg.experiment, require=cfg.require_tracking,
                               enabled=cfg.tracking, parent_run_id=cfg.parent_run_id,
                               tags={"kubevae.step": "train"}) if dist.is_main \
        else contextlib.nullcontext(tracking.DISABLED)

    with track as tracker:
        tracker.log_params({**flat_params(cfg), "world_size": dist.world_size, **data.source,
                            **hardware_params(precision, meter, threads)})
        tracker.log_data_inputs(cfg.data, ("train", "val"))
        val_metrics: dict[str, Any] = {}
        for epoch in range(step // plan.steps_per_epoch, plan.epochs):
            if step >= plan.total_steps:
                break
            sampler.set_epoch(epoch)
            order = torch.tensor(list(iter(sampler)))
            sums = torch.zeros(4 if objective.estimates_tc else 3, dtype=torch.float64)
            first = step - epoch * plan.steps_per_epoch
            batches = range(first, min(plan.steps_per_epoch, first + plan.total_steps - step))
            meter.start()
            for b in progress(batches, desc=f"epoch {epoch + 1}/{plan.epochs}", total=len(batches),
                              enabled=dist.is_main):
                idx = order[b * plan.local_batch:(b + 1) * plan.local_batch]
                x = gather_batch(images, idx, dist.device, precision.memory_format)
                eps = step_noise(cfg.seed, step, cfg.batch_size, vae.config.latent_dim)
                eps = eps[dist.rank::dist.world_size].to(dist.device)
                terms = train_step(model, vae, objective, optimizer, x, eps, step, autocast)
                scheduler.step()
                step += 1
                sums += torch.tensor([float(terms.loss.detach()), float(terms.recon), float(terms.kl),
                                      *([] if terms.tc is None else [float(terms.tc)])],
                                     dtype=torch.float64)
                if step % cfg.checkpoint_every == 0:
                    save_checkpoint(cfg, ckpt_dir, step, epoch, vae, optimizer, scheduler, history, dist,
                                    objective)
            train_metrics = {**reduce_means(sums, len(batches), dist),
                             **meter.rates(len(batches) * cfg.batch_size)}
            val_metrics = {}
            if dist.is_main and validation_due(cfg.val_every, step - len(batches), step,
                                               plan.total_steps):
                val_metrics = validate(cfg, vae, data, dist)
                val_metrics.update(score_objective(vae, val_metrics, dist.device))
            record = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                      **train_metrics, **val_metrics}
            history.append(record)
            if dist.is_main:
                print_metrics(record)
                tracker.log_metrics(record, step=step)
            save_checkpoint(cfg, ckpt_dir, step, epoch, vae, optimizer, scheduler, history, dist,
                            objective)
        final = {**(history[-1] if history else {}), "history": history}
        if dist.is_main:
            finish(cfg, vae, data, final, tracker, dist)
        dist.barrier()
    return final


def gather_batch(images: torch.Tensor, idx: torch.Tensor, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 images by index -> float [0, 1] on the device, in the model's memory format."""
    x = VAE.to_unit(images[idx].to(device, non_blocking=True))
    return x.contiguous(memory_format=memory_format)


def make_meter(vae: VAE, images: torch.Tensor, precision: hardware.Precision, threads: int,
               dist: distributed.Distributed) -> Meter:
    """Count the step's FLOPs once, on two real images, and find the peak to measure MFU by."""
    x = gather_batch(images, torch.arange(min(2, len(images))), dist.device, precision.memory_format)
    eps = torch.zeros(len(x), vae.config.latent_dim, device=dist.device)
    flops = train_step_flops_per_image(vae, x, eps)
    peak = hardware.peak_flops(dist.device, precision.name, threads)
    if dist.is_main:
        print(f"precision: {precision.describe()}; {threads} threads per process; "
              f"{flops / 1e6:.1f} MFLOP per image per step; peak {fmt_flops(peak.flops)} per "
              f"process ({peak.source})", file=sys.stderr, flush=True)
    return Meter(flops, peak, dist.world_size, dist.device)


def fmt_flops(flops: float | None) -> str:
    return "unknown" if flops is None else f"{flops / 1e9:.1f} GFLOP/s"


def hardware_params(precision: hardware.Precision, meter: Meter, threads: int) -> dict[str, Any]:
    return {"precision": precision.name, "channels_last": precision.channels_last,
            "precision_reason": precision.reason, "threads_per_process": threads,
            "flops_per_image": meter.flops_per_image, "peak_flops": meter.peak.flops,
            "peak_source": meter.peak.source, "peak_device": meter.peak.device}


def train_step(model, vae: VAE, objective: Objective, optimizer, x: torch.Tensor,
               eps: torch.Tensor, step: int, autocast) -> Any:
    """One optimizer step; `model` is the VAE or its DDP wrapper. Returns the loss terms.
    The objective's own step (FactorVAE's discriminator) follows the VAE's."""
    with autocast:
        params, mu, logvar = model(x, eps)
    recon = -vae.log_likelihood(x, params)
    posterior = Posterior.sample(mu, logvar, eps)  # the z the decoder saw, in fp32
    terms = objective(recon, posterior, step)
    optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    optimizer.step()
    objective.update(posterior)
    return terms


@dataclasses.dataclass
class StepPlan:
    local_batch: int
    steps_per_epoch: int
    total_steps: int  # cfg.steps when given (it wins over epochs), else epochs full passes

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    @classmethod
    def make(cls, cfg: TrainConfig, num_images: int, world_size: int) -> StepPlan:
        # Named by field: the CLI says --batch-size, a pipeline step batch_size (kubevae.errors).
        if cfg.batch_size % world_size:
            raise ParameterError("batch_size", f"a global batch that divides evenly over "
                                 f"WORLD_SIZE={world_size} processes", cfg.batch_size)
        steps_per_epoch = num_images // cfg.batch_size
        if steps_per_epoch == 0:
            raise ParameterError("batch_size", f"at most the {num_images} training images",
                                 cfg.batch_size)
        total = cfg.steps if cfg.steps is not None else steps_per_epoch * cfg.epochs
        return cls(cfg.batch_size // world_size, steps_per_epoch, total)


def model_config_for(cfg: TrainConfig, data: TrainingData):
    h, w, c = data.image_shape
    if h != w:
        raise ValueError(f"images are {h}x{w}; expected square images (28, 32 or 64 px)")
    # Normalization statistics come from the training data only (see kubevae.split).
    return dataclasses.replace(cfg.model, image_size=h, channels=c,
                               input_mean=tuple(data.mean), input_std=tuple(data.std))


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to a tenth of the learning rate."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))
    return factor


def step_noise(seed: int, step: int, global_batch: int, latent_dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(global_batch, latent_dim, generator=generator)


def reduce_means(sums: torch.Tensor, n_batches: int, dist: distributed.Distributed) -> dict[str, float]:
    if dist.enabled:
        sums = sums.to(dist.device)
        torch.distributed.all_reduce(sums)
        sums = sums.cpu() / dist.world_size
    means = (sums / max(1, n_batches)).tolist()
    names = ("train_loss", "train_recon", "train_kl", "train_tc")
    return dict(zip(names[:len(means)], means, strict=True))


def validation_due(every: int, before: int, after: int, total: int) -> bool:
    """Whether the epoch that ran steps (before, after] ends with a validation: every epoch
    when `every` is 0, else when it reached a multiple of `every`, and always the last one
    (its numbers are the run's final metrics)."""
    return every == 0 or after >= total or after // every > before // every


def validate(cfg: TrainConfig, vae: VAE, data: TrainingData, dist) -> dict[str, Any]:
    if data.val is None or len(data.val) == 0:
        return {}
    metrics = evaluate_images(vae, data.val, iwae_k=cfg.iwae_k, seed=cfg.seed, device=dist.device,
                              max_images=MAX_VAL_IMAGES)
    return {f"val_{k}": v for k, v in metrics.items() if k not in ("kl_per_dim", "num_images")}


# Katib's default StdOut metrics-collector regex: what the cluster reads, the local tuner reads too.
KATIB_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def parse_metrics(line: str) -> dict[str, float]:
    """The name=value pairs of one metric line, read exactly as Katib reads them."""
    return {m.group(1): float(m.group(2)) for m in KATIB_METRIC.finditer(line)
            if m.group(2) not in ("", "+", "-")}


def print_metrics(record: dict[str, Any]) -> None:
    """One line of name=value pairs on stdout: what Katib's StdOut metrics collector parses."""
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in record.items()), flush=True)


def save_checkpoint(cfg, ckpt_dir, step, epoch, vae, optimizer, scheduler, history, dist,
                    objective: Objective | None = None) -> None:
    if not dist.is_main:
        return
    state = {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
             "rng_cpu": torch.get_rng_state(), "history": history,
             "model_config": to_dict(vae.config),
             "objective": objective.state_dict() if objective is not None else {}}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    checkpoint.save(ckpt_dir, step, state, keep=cfg.keep_checkpoints)


RESUMED = ("model", "optimizer", "scheduler", "rng_cpu", "step")  # what resume() reads


def resume(cfg, ckpt_dir, vae, optimizer, scheduler, dist,
           objective: Objective | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Restore the newest valid checkpoint. Only rank 0 reads it (it alone writes them, and
    other pods may not see its disk); the others receive the same state from it, so every
    process resumes at the same step instead of waiting for each other forever."""
    if cfg.resume in (None, "never"):
        return 0, []
    found = None
    if dist.is_main:
        found = checkpoint.load_latest(ckpt_dir, map_location="cpu", required=RESUMED) \
            if cfg.resume == "auto" \
            else (checkpoint.load(cfg.resume, map_location="cpu"), Path(cfg.resume))
    if dist.enabled:
        shared = [found]
        torch.distributed.broadcast_object_list(shared, src=0)
        found = shared[0]
    if found is None:
        return 0, []
    state, path = found
    vae.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if objective is not None:
        objective.load_state_dict(state.get("objective", {}))  # FactorVAE's discriminator
    torch.set_rng_state(state["rng_cpu"].cpu())
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
    if dist.is_main:
        print(f"resumed from {path} at step {state['step']}", file=sys.stderr, flush=True)
    return int(state["step"]), list(state.get("history", []))


def flat_params(cfg: TrainConfig) -> dict[str, Any]:
    params = to_dict(cfg)
    params.pop("model")
    params.pop("objective")
    return {**params, **{f"model.{k}": v for k, v in to_dict(cfg.model).items()},
            **{f"objective.{k}": v for k, v in to_dict(cfg.objective).items()}}


def finish(cfg: TrainConfig, vae: VAE, data: TrainingData, final: dict[str, Any],
           tracker: tracking.Tracker, dist) -> None:
    """Write the model folder and log what people look at: images, metrics, the model."""
    start = time.monotonic()
    extra = {"training": {**data.source, "world_size": dist.world_size, "steps": final.get("step"),
                          "epochs": len(final.get("history", [])),
                          "batch_size": cfg.batch_size, "lr": cfg.lr,
                          "seed": cfg.seed}}
    save_model(cfg.out, vae, cfg.objective, metrics=final, extra=extra)
    if not tracker.enabled:
        return
    from kubevae import images

    vae.eval()
    tracker.log_artifact(Path(cfg.out) / "metrics.json")
    if cfg.log_images:
        x = VAE.to_unit((data.val if data.val is not None else data.train)[:8].to(dist.device))
        tracker.log_image(images.reconstruction_grid(vae, x), "reconstructions.png")
        tracker.log_image(images.samples_grid(vae, seed=cfg.seed), "samples.png")
    if cfg.log_mlflow_model:
        from kubevae import mlflow_model

        info = tracker.call("log_model", mlflow_model.log_pyfunc, cfg.out, data.image_shape,
                            vae.config.latent_dim)
        if info is not None:
            tracker.set_tags({"kubevae.model_uri": info.model_uri})
    print(f"logged to MLflow run {tracker.run_id} in {time.monotonic() - start:.1f}s",
          file=sys.stderr, flush=True)
