"""Stands in for `kubevae train` in the run-lineage tests: parses its arguments with the real
parser (strictly), opens its MLflow run as `kubevae train` does (the config's parent run, else
the process's enclosing run), prints one metric line and writes metrics.json."""

import json
from pathlib import Path

from kubevae import tracking
from kubevae.training.command import config_from_args, parser

args = parser().parse_args()
cfg = config_from_args(args)
with tracking.start_run(args.run_name, experiment=cfg.experiment, require=True,
                        parent_run_id=cfg.parent_run_id, tags={"kubevae.step": "train"}):
    print("epoch=1 step=10 val_neg_elbo=101.5 val_recon=96.5 val_kl=5 val_active_units=3", flush=True)
Path(cfg.out).mkdir(parents=True, exist_ok=True)
(Path(cfg.out) / "metrics.json").write_text(json.dumps({"val_neg_elbo": 101.5}))
