"""Errors a caller can fix, and how each caller names what was wrong.

The library checks its inputs where they are used and names them by their field names
(`latent_dim`, `batch_size`). A user never typed those: they typed a flag (`--latent-dim`) or a
pipeline parameter (`latent_dims`). `ParameterError` keeps the field name apart from the message,
so that the CLI (kubevae.cli) and the pipeline components can say it the way their user spelled
it, with one policy for every command: `kubevae <cmd>: error: ...`, exit status 2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class ParameterError(ValueError):
    """`name` (a library field name) is `got`, where `expected` was expected."""

    def __init__(self, name: str, expected: str, got: Any):
        self.name, self.expected, self.got = name, expected, got
        super().__init__(f"{name}: expected {expected}, got {got!r}")

    def spelled(self, spelling: str) -> ParameterError:
        """The same error, naming the parameter as the caller spelled it."""
        return ParameterError(spelling, self.expected, self.got)


def require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ParameterError(name, expected, got)


@contextmanager
def spelled_as(spellings: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ParameterError under the caller's name for the field (e.g. a pipeline parameter)."""
    try:
        yield
    except ParameterError as error:
        if error.name in spellings:
            raise error.spelled(spellings[error.name]) from None
        raise
