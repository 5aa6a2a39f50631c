"""benchmarks/gpu_check.sh, the CUDA check for the first GPU machine, run here in its CPU mode
(every step, tiny) and its dry-run mode, so that it still works on the day a GPU comes."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, subprocess_env

from kubevae import hardware

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _summary(results):
    with open(results / "summary.tsv") as f:
        return {row[0]: row[1] for row in csv.reader(f, delimiter="\t")}


@pytest.mark.slow  # the whole check: install, training, resume, benchmarks, a server
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    results = tmp_path / "results"
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", str(results)], capture_output=True, text=True,
                          timeout=1500, env=subprocess_env(KUBEVAE_PYTHON=sys.executable))
    summary = _summary(results)
    assert done.returncode == 0, (summary, done.stdout[-3000:], done.stderr[-2000:])
    for name in ("train", "resume", "throughput", "serve", "serving-bench"):
        assert summary[name] == "ok", (name, summary)
    logs = {p.name.split("-", 1)[1]: p.read_text() for p in results.glob("[0-9][0-9]-*.log")}
    assert "resumed from" in logs["resume.log"] and "step=12" in logs["resume.log"]
    # The train step runs at --precision auto: bf16 on a CPU with native bf16 (AMX, AVX512-BF16).
    expected = hardware.choose_precision("auto", torch.device("cpu")).describe()
    assert f"precision: {expected};" in logs["train.log"] and "mfu=" in logs["train.log"]
    bench = json.loads((results / "throughput.json").read_text())
    assert {v["variant"] for v in bench["variants"]} == {
        "fp32 channels_last", "reference (PIL DataLoader, fp32 contiguous)"}
    assert all(v["images_per_s"] > 0 and v["mfu"] > 0 for v in bench["variants"])
    served = json.loads((results / "serve-v2.json").read_text())
    assert all(shape[0] == 4 for shape in served["output_shapes"].values())
    assert (results / "serving.json").is_file() and (results / "machine.txt").is_file()


@pytest.mark.slow
def test_gpu_check_dry_run_plans_the_cuda_steps_and_runs_nothing(tmp_path):
    results = tmp_path / "plan"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(results)], capture_output=True,
                          text=True, timeout=300, env=subprocess_env(KUBEVAE_PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr
    assert set(_summary(results).values()) <= {"planned", "present", "not-run"}
    assert "train --dataset sprites" in done.stdout and "--device cuda" in done.stdout
    assert "--compile" in done.stdout and not (results / "model").exists()


def test_gpu_check_rejects_an_unknown_option(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--gpu-please"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "unknown option --gpu-please" in done.stderr
