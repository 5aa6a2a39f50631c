"""Does the search pick the right beta? A grid of beta x objective x seed on the built-in sprites.

Every (objective, beta, seed) trains the default 64-px model on the training part of one draw
of sprites; the draw is split by a seeded permutation into train (80%), val (10%) and test (10%).
Then, per (objective, beta), with the spread over seeds:
- test MIG and test FactorVAE score (kubevae.metrics.disentanglement.compute, the protocol of
  `--protocol`, counts capped at the test split's size);
- MIG against steps: the test MIG of the models saved at `--evals` checkpoints;
- the regret of selection: for each objective, the beta that val MIG chooses (per seed, as one
  search would, and on the seeds' mean) and the beta that UDR (over the seeds, on val images)
  chooses, against the beta with the best mean test MIG: regret = MIG(test-best) - MIG(chosen).

Several models in one process. The models of one objective (every beta and seed) train
stacked: torch.func.stack_module_state gives each parameter a leading model axis, and
torch.func.vmap runs the train step of all of them as one (its convolutions become grouped
convolutions), with one Adam over the stacked parameters (Adam is elementwise, so each model's
update is its own). Models of one seed share their initialization, batches and noise (common
random numbers across beta). FactorVAE's discriminators are not stacked: its models train one
after another with the trainer's own step (kubevae.training.loop.train_step). `--measure`
times, in the same run and interleaved, a few stacked steps against the same steps taken one
model at a time, and prints the ratio of images per second.

Examples (the CPU figures and the machine: docs/measurements.md):
  python benchmarks/selection.py --tiny                                   # smoke, seconds
  python benchmarks/selection.py --measure-only --objectives beta tcvae   # stacked vs one-by-one
  python benchmarks/selection.py --betas 1 4 16 --objectives beta tcvae --seeds 3 \\
      --budget-minutes 80 --dataset-size 100000 --out runs/selection     # the CPU grid (90 min)
  python benchmarks/selection.py --betas 1 2 4 8 16 --objectives beta tcvae factor --seeds 3 \\
      --steps 300000 --dataset-size 737280 --device cuda --out runs/selection-gpu   # a GPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from kubevae import hardware
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.data import sprites
from kubevae.evaluation.encoding import encode, mean_representation
from kubevae.metrics import CachedRepresentation, GroundTruthData, MetricProtocol
from kubevae.metrics.disentanglement import compute
from kubevae.metrics.udr import udr_details
from kubevae.model import VAE
from kubevae.objectives import Objective, Posterior, penalized_loss, tc_terms, with_schedule
from kubevae.training.loop import lr_lambda, train_step

STACKABLE = ("beta", "tcvae")  # objectives whose whole step vmaps (factor's discriminator does not)
METRIC_SEED = 0
UDR_IMAGES = 1000


@dataclasses.dataclass(frozen=True)
class Member:
    objective: str
    beta: float
    seed: int


@dataclasses.dataclass
class Split:
    train: torch.Tensor  # uint8 N x H x W x C
    val: GroundTruthData
    test: GroundTruthData


def make_split(dataset_size: int, seed: int) -> Split:
    images, manifest = sprites.generate(dataset_size, seed)
    factors = manifest[[f"factor_{n}" for n in sprites.FACTOR_NAMES]].to_numpy(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = n_test = max(2, len(images) // 10)
    parts = np.split(order, [n_val, n_val + n_test])

    def truth(idx: np.ndarray) -> GroundTruthData:
        idx = np.sort(idx)
        return GroundTruthData(images[idx], factors[idx], factor_sizes=sprites.FACTOR_SIZES,
                               factor_names=sprites.FACTOR_NAMES)
    return Split(torch.from_numpy(images[np.sort(parts[2])]), truth(parts[0]), truth(parts[1]))


def model_config(latent_dim: int, train: torch.Tensor) -> ModelConfig:
    x = train[:10_000].float() / 255.0
    return ModelConfig(image_size=train.shape[1], channels=train.shape[3], latent_dim=latent_dim,
                       input_mean=(float(x.mean()),), input_std=(float(x.std()),))


# -- training ---------------------------------------------------------------------------------------
class Group:
    """The models of one objective and their optimizers, stacked (vmap) or one by one."""

    def __init__(self, members: list[Member], config: ModelConfig, train: torch.Tensor,
                 args: argparse.Namespace, stacked: bool):
        self.members, self.config, self.args = members, config, args
        self.kind = members[0].objective
        self.stacked = stacked and self.kind in STACKABLE
        self.device = torch.device(args.device)
        # On a GPU the uint8 images move there once; batches are gathered on the device.
        self.train = train.to(self.device) if self.device.type == "cuda" else train
        self.precision = hardware.choose_precision(args.precision, self.device)
        self.objective_config = with_schedule(ObjectiveConfig(kind=self.kind), args.steps, len(train))
        models = []
        for m in members:
            torch.manual_seed(m.seed)  # one seed, one initialization, whatever its beta
            models.append(VAE(config).to(self.device))
        # One stream of batches and noise per seed: the betas of a seed see the same ones.
        self.generators = {m.seed: torch.Generator().manual_seed(m.seed) for m in members}
        schedule = lr_lambda(args.warmup_lr_steps, args.steps)
        if self.stacked:
            self.params, self.buffers = stack_module_state(models)  # type: ignore[arg-type]
            self.base = copy.deepcopy(models[0]).to("meta")
            self.betas = torch.tensor([m.beta for m in members], device=self.device)
            self.optimizers = [torch.optim.Adam(list(self.params.values()), lr=args.lr)]
        else:
            self.models = models
            self.objectives = [Objective(dataclasses.replace(self.objective_config, beta=m.beta),
                                         config.latent_dim, self.device) for m in members]
            self.optimizers = [torch.optim.Adam(v.parameters(), lr=args.lr) for v in models]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in self.optimizers]
        self.steps_done = 0

    def _batches(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        xs, eps = {}, {}
        for seed, generator in self.generators.items():
            idx = torch.randint(len(self.train), (self.args.batch_size,), generator=generator)
            xs[seed] = VAE.to_unit(self.train[idx.to(self.train.device)].to(self.device))
            eps[seed] = torch.randn(self.args.batch_size, self.config.latent_dim,
                                    generator=generator).to(self.device)
        return xs, eps

    def _member_loss(self, params, buffers, x, eps, beta):
        with self.precision.autocast():
            out, mu, logvar = functional_call(self.base, (params, buffers), (x, eps))
        recon = -self.base.log_likelihood(x, out).mean()
        posterior = Posterior.sample(mu, logvar, eps)
        tc = None
        if self.kind == "tcvae":
            tc = tc_terms(posterior, self.objective_config.dataset_size_tc,
                          self.objective_config.tc_estimator)["tc"]
        return penalized_loss(self.kind, recon, posterior.kl().mean(), beta, 1.0, tc)

    def _total_loss(self, params, x, eps):
        losses = vmap(self._member_loss)(params, self.buffers, x, eps, self.betas)
        return losses.sum(), losses

    def step(self) -> None:
        xs, eps = self._batches()
        if self.stacked:
            x = torch.stack([xs[m.seed] for m in self.members])
            e = torch.stack([eps[m.seed] for m in self.members])
            total, losses = self._total_loss(self.params, x, e)
            if not torch.isfinite(losses).all():
                raise FloatingPointError(f"step {self.steps_done}: a loss is not finite: {losses}")
            self.optimizers[0].zero_grad(set_to_none=True)
            total.backward()
            self.optimizers[0].step()
        else:
            for i, m in enumerate(self.members):
                train_step(self.models[i], self.models[i], self.objectives[i], self.optimizers[i],
                           xs[m.seed], eps[m.seed], self.steps_done, self.precision.autocast())
        for scheduler in self.schedulers:
            scheduler.step()
        self.steps_done += 1

    def member_vae(self, i: int) -> VAE:
        if not self.stacked:
            return self.models[i]
        vae = VAE(self.config)
        vae.load_state_dict({k: v[i].detach().cpu() for k, v in {**self.params, **self.buffers}.items()})
        return vae.to(self.device)

    def load(self, state: dict[str, torch.Tensor], steps_done: int) -> None:
        """Set the models' weights from a checkpoint of `state` (for scoring, not for resuming:
        the optimizers' moments and the batch streams are not in it)."""
        if self.stacked:
            with torch.no_grad():
                for k, v in {**self.params, **self.buffers}.items():
                    v.copy_(state[k].to(v.device))
        else:
            for i, vae in enumerate(self.models):
                vae.load_state_dict({k: v[i] for k, v in state.items()})
        self.steps_done = steps_done

    def state(self) -> dict[str, torch.Tensor]:
        """The models' weights, stacked along a first axis (a checkpoint of the group)."""
        if self.stacked:
            return {k: v.detach().cpu().clone() for k, v in {**self.params, **self.buffers}.items()}
        states = [v.state_dict() for v in self.models]
        return {k: torch.stack([s[k].detach().cpu() for s in states]) for k in states[0]}


# -- scoring ----------------------------------------------------------------------------------------
def protocol_for(name: str, data: GroundTruthData) -> MetricProtocol:
    """The protocol with every count capped at the split's size (a small test split cannot
    give disentanglement_lib's 10,000 points)."""
    protocol = MetricProtocol.named(name)
    fraction = min(1.0, len(data) / protocol.mig_num_train)
    return protocol if fraction >= 1 else protocol.scaled(fraction)


def score(vae: VAE, data: GroundTruthData, protocol: MetricProtocol, metrics: tuple[str, ...],
          device: str) -> dict[str, float]:
    represent = CachedRepresentation(data, mean_representation(vae, device))
    out = {}
    for metric in metrics:
        result = compute(metric, data, represent, METRIC_SEED, protocol)
        out[metric] = float(result.scores[metric])
    return out


def udr_of(vaes: list[VAE], data: GroundTruthData, device: str) -> float:
    pick = np.sort(np.random.default_rng(METRIC_SEED).permutation(len(data))[:UDR_IMAGES])
    codes, kls = [], []
    for vae in vaes:
        mu, logvar = encode(vae, data.images[pick], device=device)
        codes.append(mu)
        kls.append((0.5 * (mu**2 + np.exp(logvar) - 1 - logvar)).mean(axis=0))
    return float(udr_details(codes, kls)["udr"])


# -- the grid ---------------------------------------------------------------------------------------
def steps_for_budget(args: argparse.Namespace, split: Split, config: ModelConfig,
                     ratios: dict[str, float]) -> int:
    """The steps per model that train every objective's group in TRAIN_SHARE of the budget,
    from `--probe-steps` timed steps of each group (after one untimed step); the rest of the
    budget pays for making the data and scoring the checkpoints."""
    seconds_per_step = 0.0
    for kind in args.objectives:
        members = [Member(kind, b, s) for b in args.betas for s in range(args.seeds)]
        group = Group(members, config, split.train, args, stacked=_stacks(args, kind, ratios))
        group.step()
        t0 = time.perf_counter()
        for _ in range(args.probe_steps):
            group.step()
        seconds_per_step += (time.perf_counter() - t0) / args.probe_steps
    steps = int(TRAIN_SHARE * args.budget_minutes * 60 / seconds_per_step)
    print(f"budget {args.budget_minutes:g} min: {seconds_per_step:.2f} s per step of all "
          f"{len(args.objectives)} groups -> {steps} steps per model (load average "
          f"{_load():.1f})", flush=True)
    return max(args.evals, steps)


TRAIN_SHARE = 0.85


def run_grid(args: argparse.Namespace, ratios: dict[str, float] | None = None) -> dict[str, Any]:
    """ratios: per objective, stacked against one-by-one images/s as `measure` found them."""
    ratios = ratios or {}
    torch.set_num_threads(args.threads or torch.get_num_threads())
    start = time.monotonic()
    split = make_split(args.dataset_size, args.data_seed)
    config = model_config(args.latent_dim, split.train)
    if args.budget_minutes:
        args.steps = steps_for_budget(args, split, config, ratios)
    protocols = {name: protocol_for(args.protocol, d) for name, d in (("val", split.val),
                                                                      ("test", split.test))}
    evals = sorted({max(1, round(args.steps * k / args.evals)) for k in range(1, args.evals + 1)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for kind in args.objectives:
        members = [Member(kind, b, s) for b in args.betas for s in range(args.seeds)]
        group = Group(members, config, split.train, args, stacked=_stacks(args, kind, ratios))
        t0 = time.monotonic()
        train_s = 0.0
        curves: dict[int, dict[int, float]] = {i: {} for i in range(len(members))}
        # A group is reused only whole: its final checkpoint exists, so every model in it
        # trained without a break (a checkpoint holds weights, not Adam's moments).
        reuse = args.reuse_checkpoints and (out / f"{kind}-step{evals[-1]:07d}.pt").exists()
        for target in evals:
            path = out / f"{kind}-step{target:07d}.pt"
            if reuse:
                group.load(torch.load(path, weights_only=True), target)
            else:
                t1 = time.monotonic()
                while group.steps_done < target:
                    group.step()
                train_s += time.monotonic() - t1
                torch.save(group.state(), path)
            for i in range(len(members)):
                mig = score(group.member_vae(i), split.test, protocols["test"], ("mig",), args.device)
                curves[i][target] = mig["mig"]
            rate = ("reused" if reuse else
                    f"{group.steps_done * len(members) * args.batch_size / train_s:.0f} images/s")
            print(f"{kind}: step {target}/{args.steps}, {rate} "
                  f"({len(members)} models, {'stacked' if group.stacked else 'one by one'})",
                  flush=True)
        if not reuse:
            timing[kind] = train_s
        vaes = [group.member_vae(i) for i in range(len(members))]
        for i, m in enumerate(members):
            test = score(vaes[i], split.test, protocols["test"], ("mig", "factor_vae"), args.device)
            val = score(vaes[i], split.val, protocols["val"], ("mig",), args.device)
            rows.append({**dataclasses.asdict(m), "test_mig": test["mig"],
                         "test_factor_vae": test["factor_vae"], "val_mig": val["mig"],
                         "mig_by_step": curves[i]})
        for b in args.betas:
            same = [vaes[i] for i, m in enumerate(members) if m.beta == b]
            value = udr_of(same, split.val, args.device) if len(same) >= 2 else float("nan")
            for row in rows:
                if row["objective"] == kind and row["beta"] == b:
                    row["udr"] = value
        print(f"{kind}: trained and scored in {time.monotonic() - t0:.0f} s", flush=True)
    result = {"settings": {k: v for k, v in vars(args).items()}, "rows": rows,
              "summary": summarize(rows, args), "train_seconds": timing,
              "total_seconds": time.monotonic() - start}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per (objective, beta): mean and spread over seeds; per objective: the regret."""
    table, regret = [], {}
    for kind in args.objectives:
        means = {}
        for b in args.betas:
            cell = [r for r in rows if r["objective"] == kind and r["beta"] == b]
            mig, fvae = [r["test_mig"] for r in cell], [r["test_factor_vae"] for r in cell]
            means[b] = {"test_mig": float(np.mean(mig)), "val_mig": float(np.mean([r["val_mig"] for r in cell])),
                        "udr": cell[0]["udr"]}
            steps = sorted(cell[0]["mig_by_step"])
            table.append({"objective": kind, "beta": b, "seeds": len(cell),
                          "test_mig_mean": float(np.mean(mig)), "test_mig_sd": _sd(mig),
                          "test_mig_min": min(mig), "test_mig_max": max(mig),
                          "factor_vae_mean": float(np.mean(fvae)), "factor_vae_sd": _sd(fvae),
                          "mig_by_step": {s: float(np.median([r["mig_by_step"][s] for r in cell]))
                                          for s in steps}})
        best = max(args.betas, key=lambda b: means[b]["test_mig"])
        by_val = max(args.betas, key=lambda b: means[b]["val_mig"])
        finite_udr = [b for b in args.betas if np.isfinite(means[b]["udr"])]
        by_udr = max(finite_udr, key=lambda b: means[b]["udr"]) if finite_udr else None
        per_seed = []
        for s in range(args.seeds):  # one search = one seed per beta, chosen on its val MIG
            seed_rows = {r["beta"]: r for r in rows if r["objective"] == kind and r["seed"] == s}
            chosen = max(seed_rows, key=lambda b: seed_rows[b]["val_mig"])
            per_seed.append(means[best]["test_mig"] - means[chosen]["test_mig"])
        regret[kind] = {
            "test_best_beta": best, "val_mig_beta": by_val, "udr_beta": by_udr,
            "regret_val_mig": means[best]["test_mig"] - means[by_val]["test_mig"],
            "regret_udr": (means[best]["test_mig"] - means[by_udr]["test_mig"]) if by_udr else None,
            "regret_val_mig_per_seed_mean": float(np.mean(per_seed))}
    return {"table": table, "regret": regret}


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def report(result: dict[str, Any]) -> str:
    summary = result["summary"]
    lines = ["| objective | beta | seeds | test MIG mean ± sd [min, max] | FactorVAE mean ± sd |",
             "|---|---|---|---|---|"]
    for r in summary["table"]:
        lines.append(f"| {r['objective']} | {r['beta']:g} | {r['seeds']} | {r['test_mig_mean']:.3f} ± "
                     f"{r['test_mig_sd']:.3f} [{r['test_mig_min']:.3f}, {r['test_mig_max']:.3f}] | "
                     f"{r['factor_vae_mean']:.3f} ± {r['factor_vae_sd']:.3f} |")
    steps = list(summary["table"][0]["mig_by_step"]) if summary["table"] else []
    lines += ["", "MIG (median over seeds) against steps:", "",
              "| objective | beta | " + " | ".join(str(s) for s in steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    for r in summary["table"]:
        lines.append(f"| {r['objective']} | {r['beta']:g} | "
                     + " | ".join(f"{r['mig_by_step'][s]:.3f}" for s in steps) + " |")
    lines += ["", "| objective | test-best beta | val_mig's beta (regret) | UDR's beta (regret) | "
              "val_mig per seed, mean regret |", "|---|---|---|---|---|"]
    for kind, g in summary["regret"].items():
        udr = "n/a" if g["udr_beta"] is None else f"{g['udr_beta']:g} ({g['regret_udr']:.3f})"
        lines.append(f"| {kind} | {g['test_best_beta']:g} | {g['val_mig_beta']:g} "
                     f"({g['regret_val_mig']:.3f}) | {udr} | {g['regret_val_mig_per_seed_mean']:.3f} |")
    return "\n".join(lines)


# -- stacked against one by one ----------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Images per second of `--measure-steps` steps, stacked and one model at a time, in
    interleaved rounds (the CPU is shared: each keeps its best round)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    split = make_split(max(args.batch_size * 4, 1000), args.data_seed)
    config = model_config(args.latent_dim, split.train)
    out: dict[str, Any] = {}
    for kind in args.objectives:
        members = [Member(kind, b, s) for b in args.betas for s in range(args.seeds)]
        best = {"stacked": 0.0, "one_by_one": 0.0}
        for _ in range(args.rounds):
            for name, stacked in (("stacked", True), ("one_by_one", False)):
                group = Group(members, config, split.train, args, stacked=stacked)
                group.step()  # warm-up: first-call costs are not throughput
                t0 = time.perf_counter()
                for _ in range(args.measure_steps):
                    group.step()
                rate = args.measure_steps * len(members) * args.batch_size / (time.perf_counter() - t0)
                best[name] = max(best[name], rate)
        out[kind] = {"models": len(members), "images_per_s": best,
                     "ratio": best["stacked"] / best["one_by_one"],
                     "member_steps_per_s": best["stacked"] / args.batch_size}
        print(f"{kind}: {len(members)} models, stacked {best['stacked']:.0f} images/s, one by one "
              f"{best['one_by_one']:.0f} images/s: x{out[kind]['ratio']:.2f} "
              f"(load average {_load():.1f}, {torch.get_num_threads()} threads)", flush=True)
    return out


def _stacks(args: argparse.Namespace, kind: str, ratios: dict[str, float]) -> bool:
    """Stack an objective's models unless told not to, or unless this run measured stacking
    slower for it (as on an idle 2-core CPU: docs/measurements.md)."""
    ratio = ratios.get(kind)
    return not args.one_by_one and (ratio is None or ratio >= 1)


def _load() -> float:
    import os

    return os.getloadavg()[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    p.add_argument("--objectives", nargs="+", default=["beta", "tcvae"],
                   choices=["beta", "tcvae", "factor"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps per model")
    p.add_argument("--budget-minutes", type=float, default=0,
                   help="instead of --steps: as many steps as fit this many minutes, from a "
                        "timed probe of every group on this machine")
    p.add_argument("--probe-steps", type=int, default=5)
    p.add_argument("--evals", type=int, default=6, help="checkpoints scored for MIG against steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-lr-steps", type=int, default=100)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--dataset-size", type=int, default=100_000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--protocol", default="fast", choices=["fast", "disentanglement_lib"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--one-by-one", action="store_true", help="train without stacking")
    p.add_argument("--reuse-checkpoints", action="store_true",
                   help="score, instead of training again, an objective whose checkpoints for "
                        "these --steps are all in --out (from an earlier, interrupted run)")
    p.add_argument("--measure-only", action="store_true",
                   help="only time stacked against one-by-one steps")
    p.add_argument("--measure-steps", type=int, default=5)
    p.add_argument("--no-measure", action="store_true", help="skip the stacked/one-by-one timing")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="runs/selection")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run: 2 betas x 2 seeds, 4 steps of batch 8 on 600 images")
    args = p.parse_args(argv)
    if args.tiny:
        args.betas, args.seeds, args.steps, args.evals = [1.0, 8.0], 2, 4, 2
        args.dataset_size, args.latent_dim, args.warmup_lr_steps = 600, 4, 2
        args.batch_size, args.measure_steps, args.rounds, args.probe_steps = 8, 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    measured = {} if args.no_measure else measure(args)
    if args.measure_only:
        return {"measure": measured}
    result = run_grid(args, {kind: m["ratio"] for kind, m in measured.items()})
    result["measure"] = measured
    Path(args.out, "results.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
