"""Parameter profiles. `quick` runs the whole pipeline on 2 CPU cores in minutes (make run);
`full` sizes the run for a GPU cluster."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # quick: sized for `make run` on 2 CPU cores (the target is about 5 minutes with the install).
    # Measured with `kubevae train` on the quick profile's own split and judged by test PSNR and
    # by benchmarks/sprite_shapes.py (is a reconstruction nearer its own shape than a disc of the
    # same area at the same centre of mass?), on an idle 2-core AMD EPYC with avx512_bf16:
    # - 64 px, not 32: at 32 px no beta >= 1 paid for shape. Every square and heart came back a
    #   disc (0-5% nearer their shape) at beta 1 to 1.8 and 1,500 to 6,000 steps;
    #   only ellipses kept theirs. The network can draw them: at beta = 0.05 (almost an
    #   autoencoder, 37 nats of KL) 34% of squares and 73% of hearts showed their shape, so at
    #   32 px the few edge pixels that tell a square from a disc are worth fewer nats than the
    #   code costs. At 64 px those pixels count four times: beta = 1, 3,000 steps gave 68% of
    #   squares and 99% of hearts (24.5 dB); 1,500 steps still gave 0% of squares.
    # - zoom=1.6 (sprites drawn 1.6x larger; positions span 23 of the 64 px instead of 37): at
    #   dSprites' size a sprite's shape lies in even fewer pixels.
    # - the final run in one process of two threads (workers 1): on 2 cores two gloo
    #   processes of one thread each were slower, measured minutes apart: at 64 px about 1,500
    #   against 2,150 images/s (the DDP train step took 174 s), at 32 px 2,800 against 4,500.
    #   torchrun with 2 gloo processes is tested in tests/test_training.py; clusters use `full`.
    # - lr 1e-3: at 1,500 steps, 5e-4 left every ellipse round; 2e-3 gained little more.
    # - beta from 1 to 4 (4x), latent size 10, a grid of two trials: one at each end, so that
    #   the summary and the study report show what beta does (rate, PSNR, the objective and its
    #   interval at both ends; issue 26 section 4). The earlier range [1, 1.5] kept every trial
    #   out of collapse but made the choice noise (val_mig 0.0607 against 0.0597). At 64 px,
    #   3,000 steps: beta 1.0 (latent 10) 68% of squares, 99% of hearts, 24.5 dB; beta 1.4
    #   (latent 12) 23%, 67%, 22.9 dB; beta 1.8 (latent 12) 8%, 42%, 22.3 dB. A search over beta
    #   in [1, 4] x {6, 10} (at 32 px) chose beta = 3.5, latent 6: 3 active units, every sprite a
    #   round blob; at 200 steps, beta ~6.5 collapsed both trials.
    # - objective_metric auto: val_mig where the data has factor columns (the built-in
    #   sprites), udr elsewhere (e.g. builtin://digits), so the profile runs on any data.
    # - conv_channels 16, 32, 64, 64 (Burgess et al.'s 32, 32, 64, 64 with a narrower first
    #   layer): the 32-wide layers between the 32- and 16-px grids took most of the step's time.
    #   On an AVX2-only 2-core AMD EPYC (Zen 3, fp32) the train step ran at 780-870 against
    #   430-590 images/s, and at beta 1.4, latent 12, 3,000 steps the narrow model gave 24.2 dB,
    #   65% of squares and 95% of hearts (the full width, on the Zen 4 above: 22.9 dB, 23%, 67%).
    # - val_every_steps 500: the final run validates 5 times, not at the end of each of its 35
    #   epochs. On the Zen 3 one pass over the 639 validation images took 0.8 s, about 9
    #   training steps (at 3,000 steps, 34 s of a 311-s train step). Trials still validate
    #   every epoch.
    # - train_steps 2,500 (the same split, beta 1.4, latent 12, lr 1e-3, kubevae train alone on
    #   the Zen 3): 153 s, 23.7 dB, 55% of squares, 89% of hearts; 3,000 steps: 199 s, 24.2 dB,
    #   65%, 95%; 2,000 steps: 22.7 dB, 22%, 72% (at lr 2e-3: 22.4 dB, 6%, 44%); batch 32 for
    #   4,000 steps: 23.7 dB, 56%, 89%, and no faster. Widths 16, 16, 32, 64 at 3,000 steps:
    #   22.1 dB, 7%, 46%.
    # Two trials run side by side, one thread each: on 2 cores this beats one trial on two
    # threads. Trials get 300 steps: a beta = 4 run had 0 active units at step 150 and 10 at 225.
    "quick": {
        "source_uri": "builtin://sprites?n=6000&seed=0&zoom=1.6",
        "image_size": 64,
        "backend": "local",
        "objective_metric": "auto",
        "algorithm": "grid",
        "beta_min": 1.0,
        "beta_max": 4.0,
        "latent_dims": [10],
        "lr": 1e-3,
        "conv_channels": [16, 32, 64, 64],
        "max_trials": 2,
        "parallel_trials": 2,
        "trial_steps": 300,
        "train_steps": 2500,
        "val_every_steps": 500,
        "batch_size": 64,
        "workers": 1,
        "iwae_k": 8,
        "metric_protocol": "fast",
    },
    "full": {
        "source_uri": "builtin://sprites",
        "backend": "kubernetes",
        "latent_dims": [6, 8, 10, 12],
        "max_trials": 24,
        "parallel_trials": 4,
        "trial_steps": 20_000,
        "train_steps": 300_000,  # disentanglement_lib's budget (at batch 64)
        "batch_size": 64,
        "workers": 4,
        "gpus_per_worker": 1,
        "iwae_k": 100,
    },
}


def profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ValueError(f"--profile: expected one of {sorted(PROFILES)}, got {name!r}")
    return dict(PROFILES[name])
