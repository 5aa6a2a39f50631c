"""Checkpoints that survive being killed at any moment.

Each checkpoint is written under a temporary name and renamed into place, and its sha256 is
written beside it (also atomically) afterwards: a checkpoint without a matching checksum is
incomplete or corrupt, and `--resume auto` falls back to the previous one. So does a checkpoint
whose checksum matches but which cannot be loaded (written by a broken or different version), or
that lacks a part the trainer restores (`required`). A checkpoint holds
the model, optimizer, scheduler and RNG states, the step and the epoch. It is loaded with
torch.load(weights_only=True), which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from kubevae.storage import atomic_path, atomic_write_text, sha256_file

PATTERN = re.compile(r"^ckpt-(\d{9})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:09d}.pt"


def save(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    directory = Path(directory)
    path = checkpoint_path(directory, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic_write_text(path.with_suffix(".pt.sha256"), sha256_file(path) + "\n")
    _prune(directory, keep)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in the folder, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = {p: int(match.group(1)) for p in directory.iterdir() if (match := PATTERN.match(p.name))}
    return sorted(steps, key=steps.__getitem__, reverse=True)


def is_valid(path: Path) -> bool:
    sidecar = path.with_suffix(".pt.sha256")
    return sidecar.is_file() and sidecar.read_text().strip() == sha256_file(path)


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu",
                required: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint whose checksum matches, that loads, and that holds every key in
    `required`; None when there is none. Each one skipped is named in a warning."""
    for path in list_checkpoints(directory):
        if not is_valid(path):
            warnings.warn(f"{path}: checksum missing or wrong (incomplete or corrupt "
                          f"checkpoint); falling back to the previous one", stacklevel=2)
            continue
        try:
            state = load(path, map_location)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the previous one may do
            warnings.warn(f"{path}: checksum matches but it cannot be loaded ({type(e).__name__}: "
                          f"{str(e)[:200]}); falling back to the previous one", stacklevel=2)
            continue
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        if missing or not isinstance(state, dict):
            warnings.warn(f"{path}: loads but lacks {missing or 'a dict of states'}; falling "
                          f"back to the previous one", stacklevel=2)
            continue
        return state, path
    return None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def _prune(directory: Path, keep: int) -> None:
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
