"""Stands in for `kubevae train` in tuner tests: parses its arguments with the real `kubevae train`
parser (strictly: a wrong flag fails fast) and prints the same metric lines, with known
functions of beta and latent size: val_neg_elbo (minimum at beta = 2, latent_dim = 6) and
val_mig (maximum at the same point), every 10 steps."""

import math

from kubevae.training.command import parser

args = parser().parse_args()
loss = 100 + 10 * (math.log(args.beta) - math.log(2.0)) ** 2 + (args.latent_dim - 6) ** 2
steps = args.steps if args.steps is not None else 10 * args.epochs
for epoch, step in enumerate(range(10, steps + 1, 10), start=1):
    elbo = loss + 50.0 / step
    line = f"epoch={epoch} step={step} val_neg_elbo={elbo:.6g} val_recon={elbo - 5:.6g} val_kl=5 val_active_units=3"
    if args.objective_metric == "val_mig":
        line += f" val_mig={1.0 / (elbo - 99.0):.6g} collapsed=0"
    print(line, flush=True)
