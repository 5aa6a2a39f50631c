"""Stands in for `kubevae train` in tuner tests: reads the same flags and prints the same
metric lines, with val_neg_elbo a known function of beta and latent size (minimum at beta = 2,
latent_dim = 6)."""

import argparse
import math

parser = argparse.ArgumentParser()
parser.add_argument("--beta", type=float, required=True)
parser.add_argument("--latent-dim", type=int, required=True)
parser.add_argument("--epochs", type=int, default=1)
args, _ = parser.parse_known_args()
loss = 100 + 10 * (math.log(args.beta) - math.log(2.0)) ** 2 + (args.latent_dim - 6) ** 2
for epoch in range(1, args.epochs + 1):
    print(f"epoch={epoch} step={epoch * 10} val_neg_elbo={loss + 5.0 / epoch:.6g}", flush=True)
