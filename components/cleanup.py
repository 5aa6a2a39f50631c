from kfp import dsl
from kfp.dsl import Markdown, Output

from components.base import component


@component
def cleanup(backend: str, namespace: str, run_id: str, model_name: str,
            status: dsl.PipelineTaskFinalStatus, report: Output[Markdown]) -> str:
    """The exit handler: runs when the run ends, whether it succeeded or not. On a cluster it
    deletes this run's Katib Experiments, TrainJobs and PyTorchJobs that still run and rolls
    back a canary the run left half-rolled; locally nothing outlives a step. Records both.

    Args:
        backend: kubernetes or local; only a cluster has anything to clean up.
        namespace: Namespace the run created its resources in; empty = the run's namespace.
        run_id: The KFP run whose resources (labelled with it) are cleaned up.
        model_name: The InferenceService whose half-rolled canary is rolled back.
        status: How the run ended (KFP fills it in).

    Returns:
        report: What was deleted or rolled back, and how the run ended.
        Output: The same actions, one per line.
    """
    from pathlib import Path

    from components.backends import get_backend
    from components.backends.base import ClusterSettings

    actions = get_backend(backend).cleanup(ClusterSettings(namespace=namespace, run_id=run_id), model_name)
    lines = "".join(f"- {a}\n" for a in actions)
    Path(report.path).write_text(f"# Cleanup after the run\n\nRun `{run_id}` ended {status.state}.\n\n{lines}")
    print(f"cleanup after {status.state}:\n{lines}", end="")
    return "\n".join(actions)
