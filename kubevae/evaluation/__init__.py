"""Evaluation: likelihood bounds and reconstruction quality that do not depend on beta, so that
models trained with different beta can be compared (and tuned) on one scale."""
