"""The one place where the backend is chosen: `get_backend("local" | "kubernetes")`."""

from __future__ import annotations

from components.backends.base import Backend

BACKENDS = {
    "local": "components.backends.local:LocalBackend",
    "kubernetes": "components.backends.kubernetes:KubernetesBackend",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}")
    import importlib

    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
