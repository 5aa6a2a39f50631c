"""Input checks, random-state handling and protocol notes shared by the metrics (private to
kubevae.metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def protocol_note(reference: str, used: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    """How the settings a score was computed with compare with the published protocol's:
    "disentanglement_lib mig.gin (num_train=10000, num_bins=20)" when they are its settings,
    else "disentanglement_lib mig.gin, except num_train=500 (theirs: 10000)". A setting passed
    as None was not recorded, and is said so rather than assumed."""
    differences = [f"{key} not recorded (theirs: {value})" if used.get(key) is None
                   else f"{key}={used[key]} (theirs: {value})"
                   for key, value in theirs.items() if used.get(key) != value]
    if differences:
        return f"{reference}, except {', '.join(differences)}"
    return f"{reference} ({', '.join(f'{key}={value}' for key, value in theirs.items())})"


def as_generator(random_state) -> np.random.Generator:
    """An explicit seed, a Generator or a legacy RandomState -> a numpy Generator.

    None is refused: every score must be reproducible from its stated seed.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return np.random.default_rng(int(random_state))
    raise TypeError(f"random_state: expected an int seed, a numpy Generator or RandomState, "
                    f"got {random_state!r}")


def check_codes(codes, name: str = "codes") -> np.ndarray:
    array = np.asarray(codes, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty array of shape [N, D], got shape "
                         f"{np.shape(codes)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains {int((~np.isfinite(array)).sum())} non-finite values")
    return array


def check_factors(factors, n: int, name: str = "factors") -> np.ndarray:
    array = np.asarray(factors)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected an integer array of shape [N, K], got shape "
                         f"{np.shape(factors)}")
    if array.shape[0] != n:
        raise ValueError(f"{name}: has {array.shape[0]} rows, but the codes have {n}")
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ValueError(f"{name}: expected integer factor values, got dtype {array.dtype} "
                             f"with non-integer entries")
        array = rounded
    return array.astype(np.int64)


def check_pair(codes, factors, codes_name: str, factors_name: str) -> tuple[np.ndarray, np.ndarray]:
    codes = check_codes(codes, codes_name)
    return codes, check_factors(factors, len(codes), factors_name)
