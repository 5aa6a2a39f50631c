from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.base import component


@component
def deploy(model: Input[Model], model_name: str, backend: str, namespace: str, image: str,
           canary_percent: int, deployment_mode: str, run_id: str, inference_service: Output[Artifact],
           summary: Output[Markdown]) -> str:
    """Serve the promoted model: a KServe InferenceService (canary for updates), or locally the
    real ModelServer on loopback.

    Args:
        model: The promoted model folder.
        model_name: The InferenceService (and served model) name.
        backend: kubernetes (a KServe InferenceService) or local (a loopback ModelServer).
        namespace: Namespace of the InferenceService; empty = the run's namespace.
        image: The predictor image.
        canary_percent: Traffic share of the new model when an InferenceService is updated.
        deployment_mode: KServe deployment mode: Knative, Standard or Standard-direct.
        run_id: The KFP run; labels what the step creates so that the exit handler finds it.

    Returns:
        inference_service: The InferenceService YAML that was (or would be) applied.
        summary: Status, endpoint and smoke-test result.
        Output: The endpoint URL.
    """
    from pathlib import Path

    from components.backends import get_backend
    from components.backends.base import ClusterSettings, DeployRequest

    Path(inference_service.path).mkdir(parents=True, exist_ok=True)
    result = get_backend(backend).deploy(DeployRequest(
        model_name=model_name, model_dir=model.path, model_uri=model.uri,
        manifest_dir=inference_service.path, canary_percent=canary_percent,
        cluster=ClusterSettings(namespace=namespace, image=image, deployment_mode=deployment_mode,
                                run_id=run_id)))
    Path(summary.path).write_text(
        f"# Deploy: {model_name}\n\n| | |\n|---|---|\n| status | {result.status} |\n"
        f"| endpoint | `{result.endpoint}` |\n| InferenceService | `{result.manifest_path}` |\n"
        f"| smoke test | {result.smoke} |\n")
    return result.endpoint
