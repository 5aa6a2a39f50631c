"""The local backend: the same `kubevae` commands the cluster runs, on this machine.

- tune:   an Optuna study (TPE sampler, as Katib's default `tpe`; a median pruner that mirrors
          Katib's `medianstop`). Each trial runs `kubevae train` as a subprocess (under torchrun
          when trial_workers > 1) and is judged from the same stdout metric lines Katib reads.
- train:  `torchrun --nproc_per_node=N -m kubevae train` (one plain process when N = 1).
- deploy: the real KServe ModelServer (`kubevae serve`) on a free loopback port, smoke-tested
          with one V1 and one V2 request and stopped; the InferenceService YAML that would be
          applied on a cluster is written beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import optuna

from components.backends.base import (DeployRequest, DeployResult, TrainRequest, TrainResult,
                                      TrialRecord, TuneRequest, TuneResult)
from kubevae.hardware import thread_env
from kubevae.storage import read_json
from kubevae.training.loop import parse_metrics

SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "bayesianoptimization": lambda seed: optuna.samplers.GPSampler(seed=seed),
}


class TrialFailed(RuntimeError):
    pass


class LocalBackend:
    name = "local"

    def __init__(self, command=None):
        # How a trial or the training run is started; tests swap in a synthetic trainer that
        # prints the same metric lines.
        self.command = command or train_command

    # -- tune -----------------------------------------------------------------------------
    def tune(self, request: TuneRequest) -> TuneResult:
        if request.algorithm not in SAMPLERS:
            raise ValueError(f"algorithm: the local backend supports {sorted(SAMPLERS)}, "
                             f"got {request.algorithm!r} (grid and hyperband run on Katib only)")
        study = optuna.create_study(
            direction="minimize", sampler=SAMPLERS[request.algorithm](request.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
        failures: list[str] = []

        def objective(trial: optuna.Trial) -> float:
            params = request.search_space.suggest(trial)
            try:
                return self._run_trial(request, trial, params)
            except TrialFailed as e:
                failures.append(str(e))
                if len(failures) > request.max_failed_trials:
                    study.stop()
                raise

        study.optimize(objective, n_trials=request.max_trials, n_jobs=request.parallel_trials,
                       catch=(TrialFailed,))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"tune: no trial completed ({len(failures)} failed): "
                               f"{failures[-1] if failures else 'no trials ran'}")
        records = [TrialRecord(t.number, dict(t.params), t.value, t.state.name) for t in study.trials]
        best = study.best_trial
        return TuneResult(best_params=dict(best.params),
                          best_value=float(best.value), trials=records)

    def _run_trial(self, request: TuneRequest, trial: optuna.Trial, params: dict[str, Any]) -> float:
        out = Path(request.work_dir) / f"trial-{trial.number:03d}"
        args = ["--data", request.data_dir, "--out", str(out / "model"),
                "--epochs", str(request.trial_epochs), "--batch-size", str(request.batch_size),
                "--seed", str(request.seed), "--run-name", f"trial-{trial.number}",
                "--no-mlflow-model", *request.search_space.train_args(params)]
        if request.objective_metric == "val_iwae_nll":
            args += ["--iwae-k", "16"]
        value = None
        with _Process(self.command(args, request.trial_workers), out / "train.log",
                      processes=request.parallel_trials * request.trial_workers) as proc:
            for line in proc.lines():
                metrics = parse_metrics(line) if line.startswith("epoch=") else {}
                if request.objective_metric in metrics:
                    value = metrics[request.objective_metric]
                    trial.report(value, step=int(metrics["epoch"]))
                    if trial.should_prune():
                        proc.stop()
                        raise optuna.TrialPruned()
        if proc.returncode != 0:
            raise TrialFailed(f"trial {trial.number} ({params}) exited with {proc.returncode}; "
                              f"see {out / 'train.log'}: {proc.tail()}")
        if value is None:
            raise TrialFailed(f"trial {trial.number} printed no {request.objective_metric}= line")
        return value

    # -- train ----------------------------------------------------------------------------
    def train(self, request: TrainRequest) -> TrainResult:
        args = ["--data", request.data_dir, "--out", request.out_dir,
                "--epochs", str(request.epochs), "--batch-size", str(request.batch_size),
                "--seed", str(request.seed), "--run-name", request.name, "--resume", "auto",
                "--checkpoint-dir", str(Path(request.out_dir).parent / f"{Path(request.out_dir).name}.ckpt"),
                *request.extra_args, *_flags(request.params)]
        log = Path(request.out_dir).parent / f"{request.name}.log"
        with _Process(self.command(args, request.workers), log, echo=True,
                      processes=request.workers) as proc:
            for _ in proc.lines():
                pass
        if proc.returncode != 0:
            raise RuntimeError(f"train: `kubevae train` exited with {proc.returncode}; see {log}: "
                               f"{proc.tail()}")
        return TrainResult(request.out_dir, read_json(Path(request.out_dir) / "metrics.json"))

    # -- deploy ---------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> DeployResult:
        from components.k8s.inferenceservice import write_inferenceservice

        manifest = write_inferenceservice(request, Path(request.manifest_dir))
        smoke = self.smoke_test(f"local+{request.model_dir}", request.model_name, request.model_dir)
        return DeployResult(endpoint=f"local+{request.model_dir}", manifest_path=str(manifest),
                            status="ready", smoke=smoke)

    def smoke_test(self, endpoint: str, model_name: str, model_dir: str) -> dict[str, Any]:
        """Start the real ModelServer on loopback, send one V1 and one V2 request, stop it."""
        from components.backends.smoke import smoke_test
        from serving.local import LocalServer

        log = Path(model_dir).parent / f"serve-{model_name}.log"
        with LocalServer(model_dir, model_name=model_name, log_path=log) as server:
            return smoke_test(server.url, model_name)


def train_command(args: list[str], workers: int) -> list[str]:
    if workers > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={workers}", "-m", "kubevae", "train", *args]
    return [sys.executable, "-m", "kubevae", "train", *args]


def _flags(params: dict[str, Any]) -> list[str]:
    from components.search_space import train_args

    return train_args(params)


class _Process:
    """A child process whose output goes to a log file, read line by line as it comes."""

    def __init__(self, command: list[str], log_path: Path, echo: bool = False, processes: int = 1):
        self.command, self.log_path, self.echo = command, Path(log_path), echo
        self.processes = processes  # how many such processes share the cores: threads each
        self._tail: list[str] = []

    def __enter__(self) -> "_Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", buffering=1)  # line-buffered: tail -f works
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(self.processes)}
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        return self

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._tail = (self._tail + [line.rstrip()])[-20:]
            if self.echo:
                print(line, end="", flush=True)
            yield line.rstrip()
        self.proc.wait()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def tail(self) -> str:
        return " | ".join(self._tail[-5:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
