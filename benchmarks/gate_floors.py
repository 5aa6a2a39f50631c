"""What the gate's floors see: rate, active units and PSNR against the mean image's, on the test
split, for model folders given on the command line (the calibration of kubevae.registry.Floors).

  python benchmarks/gate_floors.py --split SPLIT_DIR MODEL_DIR [MODEL_DIR ...]

Prints one row per model, scored as the gate scores it (kubevae.evaluation.full.model_scores),
and whether each floor of Floors() holds. The models in docs/evaluation.md were trained with
`kubevae train --data SPLIT --steps S --beta B --latent-dim 10 --conv-channels 16,32,64,64
--lr 1e-3 --batch-size 64`.
"""

from __future__ import annotations

import argparse

from kubevae.evaluation.full import model_scores
from kubevae.model import load_model
from kubevae.registry import Floors, load_test_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, help="a split folder (its test/ is scored)")
    p.add_argument("models", nargs="+", help="model folders written by kubevae train")
    a = p.parse_args()
    dataset, floors = load_test_split(a.split), Floors()
    print("| model | active units | rate (KL, nats) | PSNR (dB) | mean image PSNR (dB) | gain (dB) | floors |")
    print("|---|---|---|---|---|---|---|")
    for model in a.models:
        s = model_scores(load_model(model), dataset, seed=0, protocol="fast").scores
        failed = [row["floor"] for row in floors.check(s) if not row["passed"]]
        print(f"| {model} | {s['active_units']} | {s['kl']:.4f} | {s['psnr']:.2f} | "
              f"{s['mean_image_psnr']:.2f} | {s['psnr'] - s['mean_image_psnr']:+.2f} | "
              f"{'fail: ' + ', '.join(failed) if failed else 'hold'} |")


if __name__ == "__main__":
    main()
