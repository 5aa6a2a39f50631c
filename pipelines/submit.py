"""Compile the pipeline, submit a run and schedule recurring runs with kfp.Client.

Credentials never travel as parameters: kfp.Client reads KF_PIPELINES_SA_TOKEN_PATH (a
projected service-account token in-cluster) or KFP_EXISTING_TOKEN / KFP_COOKIES from the
environment here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler

from pipelines.pipeline import PIPELINE_NAME, kubevae_pipeline

SERVICE_ACCOUNT = "kubevae-pipeline-runner"


def compile_pipeline(out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(kubevae_pipeline, str(out))
    return out


def to_kfp_cron(expression: str) -> str:
    """KFP's cron has six fields, seconds first. A usual 5-field expression gets "0 " in front."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"--cron: expected 5 fields (minute hour day month weekday) or KFP's 6 "
                     f"(seconds first), got {len(fields)} in {expression!r}")


def client(host: str, namespace: str):
    import kfp

    return kfp.Client(host=host, namespace=namespace,
                      existing_token=os.environ.get("KFP_EXISTING_TOKEN") or None,
                      cookies=os.environ.get("KFP_COOKIES") or None)


def submit(host: str, arguments: dict[str, Any], *, namespace: str = "kubeflow",
           experiment: str = PIPELINE_NAME, run_name: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        result = client(host, namespace).create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=SERVICE_ACCOUNT)
    return result.run_id


def schedule(host: str, cron: str, arguments: dict[str, Any], *, namespace: str = "kubeflow",
             experiment: str = PIPELINE_NAME, name: str = "kubevae-retrain") -> str:
    """A recurring retraining run: one at a time (max_concurrency 1) and no catch-up of missed
    runs. Pass previous_split so that existing items keep their split."""
    kfp_client = client(host, namespace)
    experiment_id = kfp_client.create_experiment(experiment, namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        recurring = kfp_client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=to_kfp_cron(cron),
            max_concurrency=1, no_catchup=True, params=arguments,
            pipeline_package_path=str(package), service_account=SERVICE_ACCOUNT)
    return recurring.recurring_run_id
