"""One search space for both tuners: Katib on a cluster, Optuna on a laptop.

    space = default_search_space(0.5, 16.0, [4, 6, 10], tune_lr=True)
    params = space.suggest(optuna_trial)          # {"beta": 2.1, "latent_dim": 6, "lr": 4e-4}
    space.train_args(params)                      # ["--beta=2.1", "--latent-dim=6", "--lr=0.0004"]
    space.to_katib()                              # [V1beta1ParameterSpec, ...] for the Experiment
    space.katib_train_args()                      # ["--beta=${trialParameters.beta}", ...]
    space.parse_assignments(katib_assignments)    # Katib's strings back to typed values

beta is searched log-uniformly: what matters is its order of magnitude. The objective a tuner
minimizes must not depend on beta (see TuneRequest.objective_metric), else the smallest beta wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

Kind = Literal["double", "int", "categorical"]
KINDS = ("double", "int", "categorical")

# Search-space parameter -> `kubevae train` flag. A parameter may imply more flags: tuning the
# KL capacity only means something under the capacity objective.
FLAGS: dict[str, str] = {
    "beta": "--beta",
    "latent_dim": "--latent-dim",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "capacity_max": "--capacity-max",
    "gamma": "--gamma",
    "epochs": "--epochs",
}
IMPLIED_FLAGS: dict[str, tuple[str, ...]] = {
    "capacity_max": ("--objective=capacity",),
    "gamma": ("--objective=capacity",),
}


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter. double/int take min and max (log=True: log-uniform, min > 0);
    categorical takes values."""

    name: str
    kind: Kind
    min: float | int | None = None
    max: float | int | None = None
    log: bool = False
    values: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        where = f"search space parameter {self.name!r}"
        if self.name not in FLAGS:
            raise ValueError(f"{where}: no `kubevae train` flag is known for it; "
                             f"expected one of {sorted(FLAGS)}")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical":
            values = tuple(self.values or ())
            object.__setattr__(self, "values", values)
            if not values:
                raise ValueError(f"{where}: a categorical parameter needs a non-empty list of values")
            if len({str(v) for v in values}) != len(values):
                raise ValueError(f"{where}: values must be distinct, got {list(values)}")
            if self.min is not None or self.max is not None or self.log:
                raise ValueError(f"{where}: a categorical parameter takes values, not min/max/log")
            return
        if self.values is not None:
            raise ValueError(f"{where}: a {self.kind} parameter takes min and max, not values")
        if self.min is None or self.max is None or not self.min < self.max:
            raise ValueError(f"{where}: expected min < max, got min={self.min}, max={self.max}")
        if self.kind == "int" and (int(self.min) != self.min or int(self.max) != self.max):
            raise ValueError(f"{where}: an int parameter needs integer bounds, got "
                             f"[{self.min}, {self.max}]")
        if self.log and self.min <= 0:
            raise ValueError(f"{where}: a log-uniform range needs min > 0, got {self.min}")
        if self.log and self.kind == "int":
            # Katib's suggestion services return log-uniform ints as floats ("7.0"); a
            # categorical list says the same thing and behaves the same on both tuners.
            raise ValueError(f"{where}: log-uniform int ranges are not supported; "
                             f"use a categorical list of sizes")

    # -- Optuna -------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.min), int(self.max))
        return trial.suggest_float(self.name, float(self.min), float(self.max), log=self.log)

    # -- Katib --------------------------------------------------------------------------------
    def to_katib(self, grid_points: int | None = None) -> Any:
        from kubeflow.katib.models import V1beta1FeasibleSpace, V1beta1ParameterSpec

        if self.kind == "categorical":
            space = V1beta1FeasibleSpace(list=[str(v) for v in self.values])
            return V1beta1ParameterSpec(name=self.name, parameter_type="categorical",
                                        feasible_space=space)
        if grid_points is not None:
            # Katib's grid steps linearly through double ranges; list the points instead so a
            # log-uniform range stays log-spaced.
            space = V1beta1FeasibleSpace(list=[_fmt(v) for v in self.grid(grid_points)])
            return V1beta1ParameterSpec(name=self.name, parameter_type="categorical",
                                        feasible_space=space)
        space = V1beta1FeasibleSpace(min=_fmt(self.min), max=_fmt(self.max),
                                     distribution="logUniform" if self.log else "uniform")
        return V1beta1ParameterSpec(name=self.name, parameter_type=self.kind, feasible_space=space)

    def grid(self, points: int) -> list[Any]:
        """`points` values spread over the range (log-spaced when log=True)."""
        if self.kind == "categorical":
            return list(self.values)
        if points < 2:
            raise ValueError(f"grid points for {self.name!r}: expected at least 2, got {points}")
        lo, hi = float(self.min), float(self.max)
        if self.log:
            values = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (points - 1))
                      for i in range(points)]
        else:
            values = [lo + i * (hi - lo) / (points - 1) for i in range(points)]
        if self.kind == "int":
            return sorted({int(round(v)) for v in values})
        return [float(_fmt(v)) for v in values]

    def parse(self, text: str) -> Any:
        """A value as Katib hands it over (always a string) -> the typed value."""
        try:
            if self.kind == "categorical":
                by_text = {str(v): v for v in self.values}
                if text not in by_text:
                    raise ValueError(f"not one of {list(by_text)}")
                return by_text[text]
            if self.kind == "int":
                number = float(text)
                if number != int(number):
                    raise ValueError("not an integer")
                return int(number)
            return float(text)
        except ValueError as e:
            raise ValueError(f"parameter {self.name!r}: cannot read {text!r} as a {self.kind} "
                             f"value ({e})") from None


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(self.parameters))
        names = [p.name for p in self.parameters]
        if not names:
            raise ValueError("search space: expected at least one parameter")
        if len(set(names)) != len(names):
            raise ValueError(f"search space: parameter names must be distinct, got {names}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"search space has no parameter {name!r}; it has {self.names}")

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.parameters}

    def to_katib(self, grid_points: int | None = None) -> list[Any]:
        return [p.to_katib(grid_points) for p in self.parameters]

    def combinations(self, grid_points: int) -> int:
        """How many points a grid search over this space has."""
        return math.prod(len(p.grid(grid_points)) for p in self.parameters)

    def train_args(self, params: dict[str, Any]) -> list[str]:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"search-space values missing for {missing}; got {sorted(params)}")
        return train_args({n: params[n] for n in self.names})

    def katib_train_args(self) -> list[str]:
        """`kubevae train` flags with Katib's ${trialParameters.NAME} placeholders."""
        return train_args({n: "${trialParameters.%s}" % n for n in self.names})

    def parse_assignments(self, assignments: Iterable[dict[str, str]]) -> dict[str, Any]:
        """Katib's parameterAssignments ([{name, value}], strings) -> typed values."""
        values = {a["name"]: a["value"] for a in assignments}
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"Katib assignments lack {missing}; got {sorted(values)}")
        return {n: self[n].parse(str(values[n])) for n in self.names}


def train_args(params: dict[str, Any]) -> list[str]:
    """Parameter values -> `kubevae train` flags, one `--flag=value` token each (Katib joins the
    trial command with spaces, so a flag and its value must stay one token)."""
    unknown = sorted(set(params) - set(FLAGS))
    if unknown:
        raise ValueError(f"no `kubevae train` flag for parameter(s) {unknown}; "
                         f"known: {sorted(FLAGS)}")
    args: list[str] = []
    for name, value in params.items():
        for implied in IMPLIED_FLAGS.get(name, ()):
            if implied not in args:
                args.append(implied)
        args.append(f"{FLAGS[name]}={value!r}" if isinstance(value, float) else f"{FLAGS[name]}={value}")
    return args


def default_search_space(beta_min: float, beta_max: float, latent_dims: Sequence[int],
                         tune_lr: bool = False, tune_capacity: bool = False,
                         lr_range: tuple[float, float] = (1e-4, 3e-3),
                         capacity_range: tuple[float, float] = (5.0, 50.0)) -> SearchSpace:
    """beta log-uniform on [beta_min, beta_max] and the latent size from `latent_dims`;
    optionally the learning rate (log-uniform) and, instead of beta, the KL capacity C_max of
    the capacity objective (beta plays no part there)."""
    dims = [int(d) for d in latent_dims]
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"latent_dims: expected a non-empty list of positive sizes, got {list(latent_dims)}")
    parameters: list[Parameter] = []
    if tune_capacity:
        parameters.append(Parameter("capacity_max", "double", min=capacity_range[0],
                                    max=capacity_range[1]))
    else:
        parameters.append(Parameter("beta", "double", min=beta_min, max=beta_max, log=True))
    parameters.append(Parameter("latent_dim", "categorical", values=tuple(sorted(set(dims)))))
    if tune_lr:
        parameters.append(Parameter("lr", "double", min=lr_range[0], max=lr_range[1], log=True))
    return SearchSpace(tuple(parameters))


def _fmt(value: Any) -> str:
    """Numbers as short, exact-enough strings ("0.5", "16", "0.0001")."""
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)
