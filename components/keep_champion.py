from kfp.dsl import Input, Markdown, Output

from components.base import component


@component
def keep_champion(decision_report: Input[Markdown], model_name: str,
                  summary: Output[Markdown]) -> str:
    """The branch taken when the gate does not promote: nothing is deployed. Whatever served
    before (the champion, if there is one) keeps serving; the decision report says which.

    Args:
        decision_report: The gate's decision report.
        model_name: The registered model whose champion keeps serving.

    Returns:
        summary: Why nothing was deployed, with the gate's decision.
        Output: "kept".
    """
    from pathlib import Path

    decision = Path(decision_report.path).read_text()
    Path(summary.path).write_text(
        f"# Not deployed\n\nThe candidate of `{model_name}` is registered as `challenger` and "
        f"nothing new was deployed; the `champion`, if there is one, keeps serving.\n\n{decision}")
    return "kept"
