"""One search space for both tuners: Katib on a cluster, an Optuna study locally.

A `SearchSpace` is a list of `Parameter`s. It turns into Katib ParameterSpecs (`to_katib`),
into Optuna suggestions (`suggest`), and its values into `kubevae train` flags (`train_args`,
through the trainer's own builder kubevae.training.command.train_argv), so the two backends
search the same space and launch trials the same way.

beta is searched log-uniformly over [1, 16] by default, the range of disentanglement_lib's
beta-VAE grid {1, 2, 4, 6, 8, 16} (Locatello et al. 2019) with summed losses: its effect on the
posterior is multiplicative, so the range should get as many trials below 4 as above it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

KINDS = ("double", "int", "categorical")

# The `kubevae train` options a search may vary (their dest names; train_argv spells the flags).
# `steps` is the resource Katib's hyperband varies.
SEARCHABLE = ("beta", "latent_dim", "lr", "capacity_max", "gamma", "steps")
MAX_GRID_POINTS = 5  # values per double range in a grid search, at most


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # "double" | "int" | "categorical"
    min: float | None = None
    max: float | None = None
    log: bool = False
    values: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        where = f"search space parameter {self.name!r}"
        if self.name not in SEARCHABLE:
            raise ValueError(f"{where}: name must be one of {sorted(SEARCHABLE)} "
                             f"(the `kubevae train` options it can set)")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical":
            if not self.values:
                raise ValueError(f"{where}: a categorical parameter needs a non-empty `values` list")
            if self.min is not None or self.max is not None or self.log:
                raise ValueError(f"{where}: a categorical parameter takes `values`, not min/max/log")
            object.__setattr__(self, "values", tuple(self.values))
            return
        if self.values is not None:
            raise ValueError(f"{where}: a {self.kind} parameter takes min/max, not `values`")
        if self.min is None or self.max is None or not self.min < self.max:
            raise ValueError(f"{where}: expected min < max, got min={self.min} max={self.max}")
        if self.log and self.min <= 0:
            raise ValueError(f"{where}: a log-uniform range needs min > 0, got {self.min}")
        if self.kind == "int" and (self.min != int(self.min) or self.max != int(self.max)):
            raise ValueError(f"{where}: an int parameter needs whole min/max, got {self.min}..{self.max}")

    @property
    def choices(self) -> tuple[Any, ...]:
        """A categorical parameter's values."""
        if self.values is None:
            raise ValueError(f"search space parameter {self.name!r}: a {self.kind} parameter has no "
                             f"`values`; expected a categorical parameter here")
        return self.values

    @property
    def bounds(self) -> tuple[float, float]:
        """A double or int parameter's (min, max)."""
        if self.min is None or self.max is None:
            raise ValueError(f"search space parameter {self.name!r}: a {self.kind} parameter has no "
                             f"min/max; expected a double or int parameter here")
        return self.min, self.max

    def grid(self, points: int) -> list[Any]:
        """Values a grid search tries: the list itself, every int, or `points` spaced values
        (geometrically when log)."""
        if self.kind == "categorical":
            return list(self.choices)
        low, high = self.bounds
        if self.kind == "int":
            return list(range(int(low), int(high) + 1))
        if points < 2:
            raise ValueError(f"grid points for {self.name!r}: expected >= 2, got {points}")
        if self.log:
            lo, hi = math.log(low), math.log(high)
            return [_round(math.exp(lo + (hi - lo) * i / (points - 1))) for i in range(points)]
        return [_round(low + (high - low) * i / (points - 1)) for i in range(points)]


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(self.parameters))
        names = [p.name for p in self.parameters]
        if not names:
            raise ValueError("search space: expected at least one parameter")
        if len(set(names)) != len(names):
            raise ValueError(f"search space: duplicate parameter names in {names}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def with_parameter(self, parameter: Parameter) -> SearchSpace:
        """This space plus one parameter (replacing one of the same name)."""
        kept = [p for p in self.parameters if p.name != parameter.name]
        return replace(self, parameters=(*kept, parameter))

    def grid_points(self, max_trials: int) -> int:
        """Values per double range in a grid search: as many as let max_trials trials cover
        the grid (so that two trials of a one-double grid try its two ends), at least 2 and at
        most MAX_GRID_POINTS."""
        doubles = [p for p in self.parameters if p.kind == "double"]
        if not doubles:
            return MAX_GRID_POINTS
        others = math.prod(len(p.grid(2)) for p in self.parameters if p.kind != "double")
        per_double = int((max(1, max_trials) / others) ** (1 / len(doubles)) + 1e-9)
        return min(MAX_GRID_POINTS, max(2, per_double))

    # -- Katib ---------------------------------------------------------------------------
    def to_katib(self, grid_points: int | None = None) -> list[Any]:
        """kubeflow.katib V1beta1ParameterSpecs. Log ranges use Katib's `logUniform`
        distribution. With `grid_points` (Katib's grid needs a finite set), every double
        becomes a categorical list of that many values."""
        from kubeflow.katib import V1beta1FeasibleSpace, V1beta1ParameterSpec

        specs = []
        for p in self.parameters:
            if p.kind == "categorical" or (grid_points and p.kind == "double"):
                space = V1beta1FeasibleSpace(list=[str(v) for v in p.grid(grid_points or 0)])
                kind = "categorical"
            else:
                low, high = p.bounds
                space = V1beta1FeasibleSpace(
                    min=_katib_number(low, p.kind), max=_katib_number(high, p.kind),
                    distribution="logUniform" if p.log else "uniform")
                kind = p.kind
            specs.append(V1beta1ParameterSpec(name=p.name, parameter_type=kind, feasible_space=space))
        return specs

    # -- Optuna --------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """One point from an optuna.Trial: {name: value}."""
        values: dict[str, Any] = {}
        for p in self.parameters:
            if p.kind == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                low, high = p.bounds
                values[p.name] = trial.suggest_int(p.name, int(low), int(high), log=p.log)
            else:
                low, high = p.bounds
                values[p.name] = trial.suggest_float(p.name, float(low), float(high), log=p.log)
        return values

    def optuna_distributions(self) -> dict[str, Any]:
        """The same space as optuna distributions (for study.ask / enqueue)."""
        import optuna

        out: dict[str, Any] = {}
        for p in self.parameters:
            if p.kind == "categorical":
                out[p.name] = optuna.distributions.CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                low, high = p.bounds
                out[p.name] = optuna.distributions.IntDistribution(int(low), int(high), log=p.log)
            else:
                low, high = p.bounds
                out[p.name] = optuna.distributions.FloatDistribution(low, high, log=p.log)
        return out

    # -- trials --------------------------------------------------------------------------
    def train_args(self, values: Mapping[str, Any]) -> list[str]:
        """`kubevae train` flags for these values, in the space's order. Values may also be
        Katib placeholders such as "${trialParameters.beta}"."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"train args: no value for search-space parameter(s) {missing}")
        return train_args({n: values[n] for n in self.names})

    def parse(self, assignments: Mapping[str, str]) -> dict[str, Any]:
        """Typed values from strings (Katib's parameter assignments)."""
        out: dict[str, Any] = {}
        for p in self.parameters:
            if p.name not in assignments:
                raise ValueError(f"parameter assignments: {p.name!r} missing from {dict(assignments)}")
            out[p.name] = _typed(p, assignments[p.name])
        return out


def train_args(values: Mapping[str, Any]) -> list[str]:
    """`kubevae train` flags for {search-space name: value}; unknown names are an error."""
    from kubevae.training.command import train_argv

    unknown = [n for n in values if n not in SEARCHABLE]
    if unknown:
        raise ValueError(f"train args: unknown parameter(s) {unknown}; known: {sorted(SEARCHABLE)}")
    if any(isinstance(v, bool) for v in values.values()):
        raise ValueError(f"train args: boolean values have no flag form, got {dict(values)}")
    return train_argv(dict(values))


def default_search_space(beta_min: float = 1.0, beta_max: float = 16.0,
                         latent_dims: Iterable[int] = (4, 6, 10), tune_lr: bool = False,
                         tune_capacity: bool = False) -> SearchSpace:
    """beta log-uniform, latent size categorical; optionally the learning rate (log-uniform over
    Adam's literature range 1e-4..5e-4: disentanglement_lib to 1Konny / YannDubs) and the
    capacity objective's C_max (5..30 nats, the public configs' range) and gamma."""
    dims = tuple(int(d) for d in latent_dims)
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"latent_dims: expected positive sizes, got {list(latent_dims)}")
    params = [Parameter("beta", "double", beta_min, beta_max, log=True),
              Parameter("latent_dim", "categorical", values=tuple(sorted(set(dims))))]
    if tune_lr:
        params.append(Parameter("lr", "double", 1e-4, 5e-4, log=True))
    if tune_capacity:
        params += [Parameter("capacity_max", "double", 5.0, 30.0),
                   Parameter("gamma", "double", 100.0, 1000.0, log=True)]
    return SearchSpace(tuple(params))


def _typed(p: Parameter, text: str) -> Any:
    if p.kind == "categorical":
        for v in p.choices:
            if str(v) == str(text):
                return v
        raise ValueError(f"parameter {p.name!r}: {text!r} is not one of {list(p.choices)}")
    try:
        return int(float(text)) if p.kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"parameter {p.name!r}: expected a number, got {text!r}") from None


def _katib_number(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def _round(x: float) -> float:
    return float(f"{x:.4g}")
