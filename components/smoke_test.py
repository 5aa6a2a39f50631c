from kfp.dsl import Input, Markdown, Model, Output

from components.base import component


@component
def smoke_test(endpoint: str, model: Input[Model], model_name: str, backend: str,
               result: Output[Markdown]) -> str:
    """One V1 and one V2 request against the deployed endpoint; fails the run if either fails.

    Args:
        endpoint: The endpoint the deploy step returned.
        model: The deployed model folder (the requests use its image shape).
        model_name: The served model name.
        backend: kubernetes or local, as in deploy.

    Returns:
        result: Each request and its result.
        Output: "passed" (the step fails otherwise).
    """
    from pathlib import Path

    from components.backends import get_backend

    outcome = get_backend(backend).smoke_test(endpoint, model_name, model.path)
    Path(result.path).write_text(
        "# Smoke test\n\n| request | result |\n|---|---|\n" +
        "".join(f"| {k} | {v} |\n" for k, v in outcome.items()))
    return "passed"
