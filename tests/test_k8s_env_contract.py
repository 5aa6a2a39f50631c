"""One `kubevae train`, three launchers' environment contracts, in real processes (DDP, gloo):

- a PyTorchJob pod (Training Operator 1.9): WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT;
- a TrainJob node (Kubeflow Trainer v2, torch runtime): PET_NNODES, PET_NPROC_PER_NODE,
  PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, and nothing else;
- local torchrun (the local backend's command).

The pod commands are the ones the builders put into the PyTorchJob and the TrainJob (entry
point and all), run as two "pods" on loopback with their own /work and /checkpoints folders.
Each contract trains the same model; a TrainJob node restarted after its pod was lost resumes
from its checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from safetensors.torch import load_file

from components.backends.local import train_command as local_command
from components.k8s import to_dict
from components.k8s.jobspec import TrainingJob
from components.k8s.pytorchjob import build_pytorchjob
from components.k8s.trainjob import build_trainjob
from kubevae.training.distributed import launcher_environment, node_rank

TINY = ("--dataset", "sprites", "--dataset-size", "128", "--batch-size", "32", "--latent-dim", "4",
        "--deterministic", "--no-mlflow-model", "--no-tracking", "--seed", "3", "--iwae-k", "0")
BIN = str(Path(sys.executable).parent)
pytestmark = pytest.mark.slow  # eight short DDP runs: about 2 CPU-minutes  # `python` and `kubevae` of this venv, as in the image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pod_command(container: dict, pod_dir: Path) -> list[str]:
    """The container's command and args with its volumes' paths moved under pod_dir."""
    moved = {"/work": str(pod_dir / "work"), "/checkpoints": str(pod_dir / "checkpoints")}

    def move(arg: str) -> str:
        for mount, local in moved.items():
            if arg == mount or arg.startswith(mount + "/"):
                return local + arg[len(mount):]
        return arg

    return [move(a) for a in container["command"] + container["args"]]


def _run_pods(command_for_rank, env_for_rank, world: int = 2) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(command_for_rank(r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_for_rank(r)) for r in range(world)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


def _pod_env(**launcher: str) -> dict[str, str]:
    base = {k: v for k, v in subprocess_env().items()
            if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")}
    return {**base, "PATH": f"{BIN}:{base.get('PATH', '')}", "HOME": base.get("HOME", "/tmp"), **launcher}


def _trainjob_node(job: dict) -> dict:
    from k8s_checks import trainjob_pod_spec

    return trainjob_pod_spec(job)["containers"][0]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{contract: (model folder, processes)} for the three contracts, one epoch each."""
    tmp = tmp_path_factory.mktemp("contracts")
    job = TrainingJob(image="img", train_args=(*TINY, "--epochs", "1"), workers=2)
    out = {}

    pytorch = to_dict(build_pytorchjob(job, "j", "ns"))["spec"]["pytorchReplicaSpecs"]["Master"]["template"][
        "spec"]["containers"][0]
    port = _free_port()
    out["pytorchjob"] = (tmp / "pytorchjob-0" / "work" / "model", _run_pods(
        lambda r: _pod_command(pytorch, tmp / f"pytorchjob-{r}"),
        lambda r: _pod_env(WORLD_SIZE="2", RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))))

    node = _trainjob_node(to_dict(build_trainjob(job, "j", "ns")))
    port = _free_port()
    out["trainjob"] = (tmp / "trainjob-0" / "work" / "model", _run_pods(
        lambda r: _pod_command(node, tmp / f"trainjob-{r}"),
        lambda r: _pod_env(PET_NNODES="2", PET_NPROC_PER_NODE="1", PET_NODE_RANK=str(r),
                           PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port))))

    local = tmp / "torchrun" / "model"
    args = [*TINY, "--epochs", "1", "--out", str(local), "--checkpoint-dir", str(tmp / "torchrun" / "ckpt")]
    out["torchrun"] = (local, _run_pods(lambda r: local_command(args, 2), lambda r: _pod_env(), world=1))
    return tmp, job, out


def test_the_same_kubevae_train_trains_the_same_model_under_every_contract(trained):
    _, _, out = trained
    reference = _weights(out["torchrun"][0])
    for contract in ("pytorchjob", "trainjob"):
        model, procs = out[contract]
        weights = _weights(model)
        for name in reference:
            assert torch.allclose(weights[name], reference[name], atol=1e-5, rtol=1e-4), (contract, name)
        # Node 0 alone prints the metric lines (timestamped by the entry point) and writes the model.
        assert sum(" epoch=" in line for line in procs[0].stdout.splitlines()) == 1, contract
        assert not any(" epoch=" in line for line in procs[1].stdout.splitlines()), contract
        assert not (model.parents[1].parent / model.parents[1].name.replace("-0", "-1") / "work" / "model").exists()


def test_a_restarted_trainjob_node_resumes_from_its_checkpoint(trained):
    """A lost pod comes back with the same claim: both nodes rerun the same command with more
    epochs and continue from step of the first run instead of starting over."""
    tmp, job, _ = trained
    from dataclasses import replace

    longer = replace(job, train_args=(*TINY, "--epochs", "2"))
    node = _trainjob_node(to_dict(build_trainjob(longer, "j", "ns")))
    port = _free_port()
    procs = _run_pods(lambda r: _pod_command(node, tmp / f"trainjob-{r}"),
                      lambda r: _pod_env(PET_NNODES="2", PET_NPROC_PER_NODE="1", PET_NODE_RANK=str(r),
                                         PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port)))
    assert "resumed from" in procs[0].stdout  # the entry point passes stderr on as stdout
    epochs = [line for line in procs[0].stdout.splitlines() if " epoch=" in line]
    assert len(epochs) == 1 and " epoch=2 " in epochs[0]  # epoch 1 was not trained again


def test_the_trainjob_mapping_and_its_errors():
    pet = {"PET_NNODES": "3", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "2",
           "PET_MASTER_ADDR": "j-node-0-0.j", "PET_MASTER_PORT": "29500"}
    assert launcher_environment(pet) == {"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0",
                                         "MASTER_ADDR": "j-node-0-0.j", "MASTER_PORT": "29500"}
    # Under torchrun (several processes per node) its own variables win over the PET_* ones.
    child = {**pet, "PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "6", "RANK": "5", "LOCAL_RANK": "1",
             "GROUP_RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    assert launcher_environment(child)["RANK"] == "5"
    assert launcher_environment({}) == {}
    with pytest.raises(RuntimeError, match="several processes per node need torchrun"):
        launcher_environment({**pet, "PET_NPROC_PER_NODE": "2"})
    with pytest.raises(RuntimeError, match="PET_MASTER_ADDR"):
        launcher_environment({k: v for k, v in pet.items() if k != "PET_MASTER_ADDR"})
    with pytest.raises(RuntimeError, match="no elastic range"):
        launcher_environment({**pet, "PET_NNODES": "1:3"})
    assert [node_rank(e) for e in (pet, child, {"RANK": "1"}, {})] == [2, 2, 1, 0]


def test_several_processes_per_node_run_torchrun_which_reads_the_pet_variables():
    job = TrainingJob(image="img", train_args=TINY, procs_per_pod=2, workers=2)
    node = _trainjob_node(to_dict(build_trainjob(job, "j", "ns")))
    assert node["command"][-4:] == ["torchrun", "--no-python", "kubevae", "train"]
    assert to_dict(build_trainjob(job, "j", "ns"))["spec"]["trainer"]["numProcPerNode"] == 2
    assert os.environ.get("PET_NNODES") is None  # nothing here pretends to be a TrainJob
