"""Pipeline arguments coerced to the types the pipeline declares.

`--param NAME=VALUE` reads VALUE as JSON when it is JSON, else as text, so `beta_min=300` is an
int and `tune_lr=True` a string; kfp.local and the KFP API want a float and a bool. Each value
becomes its parameter's declared type where that loses nothing (int -> float, 3.0 -> 3,
"1" -> 1, "true" -> True, a JSON or comma-separated text -> a list); anything else is a
ValueError that names the parameter, its type and the value given.
"""

from __future__ import annotations

import json
import math
from typing import Any

# KFP's parameter types (the compiled spec's) -> the Python type a value must have.
PYTHON_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "List": list,
                "Dict": dict}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def declared_types() -> dict[str, str]:
    """Parameter name -> KFP type (String, Integer, Float, Boolean, List, Dict), as compiled."""
    from pipelines.pipeline import kubevae_pipeline

    return {name: spec.type for name, spec in kubevae_pipeline.component_spec.inputs.items()}


def parse_text(raw: str) -> Any:
    """JSON where the text is JSON, else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def from_text(name: str, raw: str, kfp_type: str) -> Any:
    """A --param value as typed on the command line, as parameter `name` wants it. A string
    parameter takes the text itself (`group_column=123` is "123"; a JSON string is unquoted)."""
    value = parse_text(raw)
    if kfp_type == "String" and not isinstance(value, str):
        return raw
    if kfp_type == "List" and not isinstance(value, (list, dict)):
        value = raw  # `8` or `4,6,10`: comma-separated values
    return coerce(name, value, kfp_type)


def coerce(name: str, value: Any, kfp_type: str) -> Any:
    """`value` as parameter `name` of KFP type `kfp_type` wants it, or a ValueError."""
    expected = PYTHON_TYPES.get(kfp_type)
    if expected is None:  # a type this module does not know: leave it to KFP
        return value
    converted = _convert(value, expected)
    if converted is _BAD:
        raise ValueError(f"--param {name}: expected {_WORDS[expected]} ({kfp_type}), got "
                         f"{value!r} ({type(value).__name__})")
    return converted


def coerce_arguments(arguments: dict[str, Any], types: dict[str, str] | None = None) -> dict[str, Any]:
    """Every argument coerced to its declared type (unknown names are left to the caller)."""
    types = declared_types() if types is None else types
    return {name: coerce(name, value, types[name]) if name in types else value
            for name, value in arguments.items()}


_BAD = object()
_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          list: "a JSON list or comma-separated values", dict: "a JSON object"}


def _convert(value: Any, expected: type) -> Any:
    if expected is str:  # the CLI passes a string parameter's text as typed (from_text)
        return value if isinstance(value, str) else _BAD
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        return _BAD
    if expected is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if expected is float:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else _BAD
        return _BAD
    if expected is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            parsed = parse_text(value)
            if isinstance(parsed, list):
                return parsed
            if value.strip() and not value.strip().startswith(("[", "{")):
                return [parse_text(item.strip()) for item in value.split(",")]
        return _BAD
    if expected is dict:
        if isinstance(value, dict):
            return value
        if isinstance(value, str) and isinstance(parsed := parse_text(value), dict):
            return parsed
        return _BAD
    return _BAD  # pragma: no cover - PYTHON_TYPES lists every type handled above


def _number(text: str) -> Any:
    """An int or float from text ("1", "1e3", "0.5"), else the text itself."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
