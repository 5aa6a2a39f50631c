"""benchmarks/selection.py: its stacked trainer takes each model's own steps, its regret is the
test MIG lost by the chosen beta, and its smoke mode runs end to end."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location(
    "selection_benchmark", Path(__file__).parents[1] / "benchmarks" / "selection.py")
assert SPEC is not None and SPEC.loader is not None
bench = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = bench  # dataclasses look their module up there
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize("objective", ["beta", "tcvae"])
def test_stacked_models_take_the_steps_each_would_take_alone(objective):
    """vmap over stacked parameters, one Adam: each model ends where the trainer's own step
    (kubevae.training.loop.train_step with kubevae.objectives.Objective) takes it alone."""
    args = bench.parse_args(["--steps", "3", "--batch-size", "6", "--latent-dim", "3",
                             "--precision", "fp32", "--warmup-lr-steps", "2", "--lr", "1e-3"])
    train = torch.randint(0, 256, (40, 28, 28, 1), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    config = bench.model_config(3, train)
    members = [bench.Member(objective, beta, seed) for beta in (1.0, 8.0) for seed in (0, 1)]
    stacked = bench.Group(members, config, train, args, stacked=True)
    alone = bench.Group(members, config, train, args, stacked=False)
    assert stacked.stacked and not alone.stacked
    for _ in range(3):
        stacked.step()
        alone.step()
    a, b = stacked.state(), alone.state()
    assert set(a) == set(b)
    # Equal but for float reassociation, which Adam magnifies where a gradient is ~0 (its
    # update is then lr * g / |g|): a few of the ~7 million weights differ, by less than the
    # three steps' lr.
    differ = sum(int(((a[n] - b[n]).abs() > 1e-5).sum()) for n in a)
    assert differ < 1e-4 * sum(a[n].numel() for n in a)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 3 * args.lr
    # The betas of one seed started alike and parted ways: beta reached each model.
    assert not torch.allclose(a["encoder.head.weight"][0], a["encoder.head.weight"][2])


def test_regret_is_the_test_mig_lost_by_the_beta_each_rule_chooses():
    args = bench.parse_args(["--betas", "1", "4", "16", "--objectives", "beta", "--seeds", "2"])
    test = {1.0: 0.10, 4.0: 0.30, 16.0: 0.20}
    val = {1.0: 0.1, 4.0: 0.2, 16.0: 0.5}  # val MIG prefers 16
    udr = {1.0: 0.2, 4.0: 0.9, 16.0: 0.1}  # UDR prefers 4
    rows = [{"objective": "beta", "beta": b, "seed": s, "test_mig": test[b] + 0.01 * s,
             "test_factor_vae": 0.5, "val_mig": val[b] - (0.45 if (b, s) == (16.0, 1) else 0.0),
             "udr": udr[b], "mig_by_step": {10: 0.0}} for b in test for s in (0, 1)]
    regret = bench.summarize(rows, args)["regret"]["beta"]
    assert (regret["test_best_beta"], regret["val_mig_beta"], regret["udr_beta"]) == (4.0, 16.0, 4.0)
    assert regret["regret_val_mig"] == pytest.approx(0.10)
    assert regret["regret_udr"] == pytest.approx(0.0)
    # Seed 0 picks 16 on its own val MIG (regret 0.10), seed 1 picks 4 (regret 0).
    assert regret["regret_val_mig_per_seed_mean"] == pytest.approx(0.05)


@pytest.mark.slow
def test_smoke_mode_runs_the_grid_end_to_end(tmp_path):
    """`--tiny`: about a minute on 2 shared cores (20 s idle), hence slow."""
    result = bench.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == 2 * 2 * 2  # objectives x betas x seeds
    assert {tuple(map(int, r["mig_by_step"])) for r in saved["rows"]} == {(2, 4)}
    assert all(0 <= r["test_mig"] <= 1 and 0 <= r["val_mig"] <= 1 for r in saved["rows"])
    assert set(saved["summary"]["regret"]) == {"beta", "tcvae"}
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == \
        ["beta-step0000002.pt", "beta-step0000004.pt", "tcvae-step0000002.pt", "tcvae-step0000004.pt"]
    assert result["measure"]["beta"]["ratio"] > 0

    # An interrupted run resumes by scoring the objectives whose final checkpoint exists and
    # training the others again; scoring the saved weights one by one gives the same figures.
    (tmp_path / "tcvae-step0000004.pt").unlink()
    again = bench.main(["--tiny", "--out", str(tmp_path), "--reuse-checkpoints", "--one-by-one",
                        "--no-measure"])
    assert set(again["train_seconds"]) == {"tcvae"}
    reused = [(old, new) for old, new in zip(saved["rows"], again["rows"], strict=True)
              if old["objective"] == "beta"]
    assert len(reused) == 4
    for old, new in reused:
        assert (new["objective"], new["beta"], new["seed"]) == (old["objective"], old["beta"], old["seed"])
        assert new["test_mig"] == pytest.approx(old["test_mig"], abs=1e-6)
        assert new["mig_by_step"] == pytest.approx({int(k): v for k, v in old["mig_by_step"].items()}, abs=1e-6)


def test_a_budget_buys_the_steps_its_probe_says_fit(monkeypatch):
    """--budget-minutes: every group is probed; steps = TRAIN_SHARE x budget / (seconds per step
    of all groups). The clock is replaced, so the arithmetic is checked, not this machine."""
    args = bench.parse_args(["--objectives", "beta", "tcvae", "--betas", "1", "--seeds", "2",
                             "--batch-size", "4", "--latent-dim", "3", "--precision", "fp32",
                             "--budget-minutes", "10", "--probe-steps", "2"])
    train = torch.randint(0, 256, (20, 28, 28, 1), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    ticks = iter(range(0, 1000, 10))  # each probe of 2 steps "takes" 10 s: 5 s a step per group
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    split = bench.Split(train, None, None)  # type: ignore[arg-type]
    steps = bench.steps_for_budget(args, split, bench.model_config(3, train), {})
    assert steps == int(bench.TRAIN_SHARE * 10 * 60 / (5 + 5))
