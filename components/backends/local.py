"""The local backend: the same `kubevae` commands the cluster runs, on this machine.

- tune:   an Optuna study in the objective's direction (kubevae.study). The
          algorithms map to Optuna's own pieces, as Katib's do to its suggestion services:
              tpe                   TPESampler                      (Katib tpe)
              random                RandomSampler                   (Katib random)
              bayesianoptimization  GPSampler                       (Katib bayesianoptimization)
              grid                  GridSampler over the grid        (Katib grid)
                                    (SearchSpace.grid_points values per range)
              hyperband             TPESampler + HyperbandPruner     (Katib hyperband)
                                    over optimizer steps
          Every algorithm but hyperband prunes with a median pruner over steps, as Katib's
          `medianstop`. Each trial runs `kubevae train` as a subprocess (under torchrun when
          trial_workers > 1) and is judged from the same stdout metric lines Katib reads.
- train:  `torchrun --nproc_per_node=N -m kubevae train` (one plain process when N = 1).
- deploy: the real KServe ModelServer (`kubevae serve`) on a free loopback port, smoke-tested
          with one V1 and one V2 request and stopped; the InferenceService YAML that would be
          applied on a cluster is written beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from components.backends.base import (
    ClusterSettings,
    DeployRequest,
    DeployResult,
    TrainRequest,
    TrainResult,
    TuneRequest,
    train_options,
    trial_options,
)
from components.search_space import SearchSpace
from kubevae.hardware import thread_env
from kubevae.storage import read_json
from kubevae.study import Study, trial_from_line
from kubevae.study import objective as search_objective
from kubevae.training.command import train_argv
from kubevae.training.loop import parse_metrics

ALGORITHMS = ("tpe", "random", "bayesianoptimization", "grid", "hyperband")
HYPERBAND_ETA = 3


class TrialFailed(RuntimeError):
    pass


def check_algorithm(algorithm: str, objective_metric: str) -> None:
    """Refuse, before any trial, what this backend cannot run."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: the local backend supports {list(ALGORITHMS)}, got {algorithm!r}")
    if algorithm == "hyperband" and objective_metric == "udr":
        raise ValueError("algorithm: hyperband stops trials on their per-epoch objective, but udr "
                         "is scored once, after all seeds of a trial; use tpe, random, "
                         "bayesianoptimization or grid with udr")


def sampler(algorithm: str, space: SearchSpace, seed: int, max_trials: int) -> optuna.samplers.BaseSampler:
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "bayesianoptimization":
        return optuna.samplers.GPSampler(seed=seed)
    if algorithm == "grid":
        points = space.grid_points(max_trials)
        return optuna.samplers.GridSampler({p.name: p.grid(points) for p in space.parameters},
                                           seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(algorithm: str, trial_steps: int) -> optuna.pruners.BasePruner:
    if algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, trial_steps // 9),
                                              max_resource=trial_steps,
                                              reduction_factor=HYPERBAND_ETA)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


class LocalBackend:
    name = "local"

    def __init__(self, command=None):
        # How a trial or the training run is started; tests swap in a synthetic trainer that
        # prints the same metric lines.
        self.command = command or train_command

    # -- tune -----------------------------------------------------------------------------
    def tune(self, request: TuneRequest) -> Study:
        check_algorithm(request.algorithm, request.objective_metric)
        direction = search_objective(request.objective_metric).direction
        study = optuna.create_study(
            direction=direction, sampler=sampler(request.algorithm, request.search_space, request.seed,
                                                 request.max_trials),
            pruner=pruner(request.algorithm, request.trial_steps))
        failures: list[str] = []
        last_lines: dict[int, dict[str, float]] = {}

        def objective(trial: optuna.Trial) -> float:
            params = request.search_space.suggest(trial)
            try:
                return self._run_trial(request, trial, params, last_lines)
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
        trials = [trial_from_line(t.number, t.params, t.value, t.state.name,
                                  last_lines.get(t.number, {}), request.objective_metric)
                  for t in study.trials]
        best = study.best_trial
        if best.value is None:  # optuna picks the best among complete trials, which have values
            raise RuntimeError(f"tune: optuna's best trial {best.number} has no value")
        return Study(request.objective_metric, trials, best_trial=best.number, direction=direction,
                     algorithm=request.algorithm)

    def _run_trial(self, request: TuneRequest, trial: optuna.Trial, params: dict[str, Any],
                   last_lines: dict[int, dict[str, float]]) -> float:
        out = Path(request.work_dir) / f"trial-{trial.number:03d}"
        args = train_argv(trial_options(request), data=request.data_dir, out=str(out / "model"),
                          run_name=f"trial-{trial.number}", **params)
        value = None
        with _Process(self.command(args, request.trial_workers), out / "train.log",
                      processes=request.parallel_trials * request.trial_workers) as proc:
            for line in proc.lines():
                metrics = parse_metrics(line) if line.startswith("epoch=") else {}
                if request.objective_metric in metrics:
                    last_lines[trial.number] = metrics
                    value = metrics[request.objective_metric]
                    trial.report(value, step=int(metrics.get("step", metrics["epoch"])))
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
        out = Path(request.out_dir)
        args = train_argv(train_options(request), data=request.data_dir, out=request.out_dir,
                          resume="auto", checkpoint_dir=str(out.parent / f"{out.name}.ckpt"))
        log = out.parent / f"{request.name}.log"
        with _Process(self.command(args, request.workers), log, echo=True,
                      processes=request.workers) as proc:
            for _ in proc.lines():
                pass
        if proc.returncode != 0:
            raise RuntimeError(f"train: `kubevae train` exited with {proc.returncode}; see {log}: "
                               f"{proc.tail()}")
        return TrainResult(request.out_dir, read_json(out / "metrics.json"), training_api="torchrun")

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

    # -- cleanup --------------------------------------------------------------------------
    def cleanup(self, cluster: ClusterSettings, model_name: str) -> list[str]:
        return ["backend=local: no cluster resources; nothing to clean up"]  # every process ended with its step


def train_command(args: list[str], workers: int) -> list[str]:
    if workers > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={workers}", "-m", "kubevae", "train", *args]
    return [sys.executable, "-m", "kubevae", "train", *args]


class _Process:
    """A child process whose output goes to a log file, read line by line as it comes."""

    def __init__(self, command: list[str], log_path: Path, echo: bool = False, processes: int = 1):
        self.command, self.log_path, self.echo = command, Path(log_path), echo
        self.processes = processes  # how many such processes share the cores: threads each
        self._tail: list[str] = []

    def __enter__(self) -> _Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", buffering=1)  # line-buffered: tail -f works
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(self.processes)}
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        return self

    def lines(self) -> Iterator[str]:
        if self.proc.stdout is None:  # Popen was given stdout=PIPE in __enter__
            raise RuntimeError(f"{self.command[0]}: started without a stdout pipe")
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
