"""Compile the pipeline; upload it, submit runs and manage recurring runs with kfp.Client.

Credentials never travel as parameters: kfp.Client reads KF_PIPELINES_SA_TOKEN_PATH (a
projected service-account token in-cluster) or KFP_EXISTING_TOKEN / KFP_COOKIES from the
environment here. Every error the KFP API answers becomes a KfpError carrying its message.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler

from pipelines.kfp_versions import DEFAULT_KFP_BACKEND
from pipelines.pipeline import DESCRIPTION, PIPELINE_NAME, pipeline_for

SERVICE_ACCOUNT = "kubevae-pipeline-runner"
REPO = Path(__file__).resolve().parents[1]
PAGE_SIZE = 100


class KfpError(OSError):
    """An answer of the KFP API (or no answer), worded for the person who ran the command. An
    I/O error, so that the CLI's one error policy prints it (`kubevae pipeline: error: ...`)."""


def compile_pipeline(out: str | Path, kfp_backend: str = DEFAULT_KFP_BACKEND) -> Path:
    """The pipeline YAML for a KFP backend version (pipelines.pipeline.pipeline_for): "2.16",
    the default, runs on 2.16 and 2.17; "2.17" adds the run's deadline and TTLs."""
    pipeline = pipeline_for(kfp_backend)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
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


def version_name() -> str:
    """The name of an uploaded pipeline version: package version + git commit (`-dirty` when
    the working tree has changes), e.g. `0.1.0-3f2a9c1d7e4b`."""
    from kubevae import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,  # noqa: S607
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit = os.environ.get("KUBEVAE_GIT_COMMIT", "")
        if not commit:
            raise KfpError("cannot name the pipeline version: no git checkout here and "
                           "KUBEVAE_GIT_COMMIT is not set; pass --version NAME") from None
        dirty = False
    return f"{__version__}-{commit}" + ("-dirty" if dirty else "")


# ---- the client and its errors ------------------------------------------------------------------

def client(host: str, namespace: str):
    import kfp

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            # kfp.Client retries this 5 times, 5 s apart, logging a traceback each time, even
            # for a 401; one attempt answers as clearly and at once.
            return self._healthz_api.healthz_service_get_healthz()

    with _api_errors(host, namespace):
        return Client(host=host, namespace=namespace,
                      existing_token=os.environ.get("KFP_EXISTING_TOKEN") or None,
                      cookies=os.environ.get("KFP_COOKIES") or None)


HINTS = {
    401: "the token is missing or expired: refresh KFP_EXISTING_TOKEN (or KFP_COOKIES, or the "
         "token at KF_PIPELINES_SA_TOKEN_PATH)",
    403: "the token is valid but may not act in namespace {namespace!r}: check --namespace and "
         "the profile's contributors, or refresh an expired token",
    404: "not found: check --namespace ({namespace!r}) and --host",
    409: "a resource with that name already exists",
}


def describe_api_error(error: Exception, host: str, namespace: str) -> str:
    """`HTTP 401 Unauthorized from HOST: <the server's message> (<what to do>)`."""
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", "") or ""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    message = ""
    if body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or parsed.get("error") or "")
        except json.JSONDecodeError:
            message = body.strip().splitlines()[0][:300] if body.strip() else ""
    hint = HINTS.get(status, "").format(namespace=namespace) if isinstance(status, int) else ""
    text = f"HTTP {status} {reason} from the KFP API at {host}"
    if message:
        text += f": {message}"
    return text + (f" ({hint})" if hint else "")


class _api_errors:
    """Turn kfp_server_api's ApiException and connection failures into a KfpError."""

    def __init__(self, host: str, namespace: str):
        self.host, self.namespace = host, namespace

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None:
            return False
        from kfp_server_api.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(error, ApiException):
            raise KfpError(describe_api_error(error, self.host, self.namespace)) from error
        if isinstance(error, HTTPError):
            raise KfpError(f"cannot reach the KFP API at {self.host}: {error} (check --host)") from error
        return False


# ---- what the CLI does --------------------------------------------------------------------------

@dataclass
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    created_pipeline: bool


def upload(host: str, name: str = PIPELINE_NAME, *, namespace: str | None = None,
           version: str | None = None, kfp_backend: str | None = None) -> Uploaded:
    """Upload the compiled pipeline: the first time as a new pipeline `name` (its first version
    carries the same name), afterwards as a new version named `version` (default: package
    version + git commit). An existing version name is an error (409), never overwritten.
    `kfp_backend`: the backend version the YAML is compiled for (default: 2.16, runs on both)."""
    version = version or version_name()
    kfp_client = client(host, namespace or "kubeflow")
    with _api_errors(host, namespace or ""), tempfile.TemporaryDirectory() as tmp:
        package = str(compile_pipeline(Path(tmp) / "pipeline.yaml",
                                       kfp_backend or DEFAULT_KFP_BACKEND))
        pipeline_id = _pipeline_id(kfp_client, name, namespace)
        if pipeline_id is None:
            pipeline = kfp_client.upload_pipeline(package, pipeline_name=name, namespace=namespace,
                                                  description=DESCRIPTION)
            first = kfp_client.list_pipeline_versions(pipeline.pipeline_id).pipeline_versions
            return Uploaded(pipeline.pipeline_id, first[0].pipeline_version_id,
                            first[0].display_name, True)
        added = kfp_client.upload_pipeline_version(package, version, pipeline_id=pipeline_id)
        return Uploaded(pipeline_id, added.pipeline_version_id, added.display_name, False)


def _pipeline_id(kfp_client, name: str, namespace: str | None) -> str | None:
    """The pipeline called `name` in `namespace`, else the shared one (no namespace)."""
    for where in dict.fromkeys([namespace, None]):
        found = kfp_client.list_pipelines(filter=_name_filter(name), namespace=where).pipelines or []
        matching = [p for p in found if p.display_name == name]
        if matching:
            return matching[0].pipeline_id
    return None


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                       "stringValue": name}]})


def resolve_version(kfp_client, pipeline: str, version: str | None,
                    namespace: str | None = None) -> tuple[str, str]:
    """(pipeline_id, version_id) of an uploaded pipeline; the newest version when `version`
    is None."""
    pipeline_id = _pipeline_id(kfp_client, pipeline, namespace)
    if pipeline_id is None:
        raise KfpError(f"--pipeline {pipeline!r}: no such pipeline on the cluster; upload it "
                       f"first (kubevae pipeline upload --name {pipeline})")
    if version is None:
        versions = kfp_client.list_pipeline_versions(pipeline_id, page_size=1,
                                                     sort_by="created_at desc").pipeline_versions
    else:
        versions = [v for v in kfp_client.list_pipeline_versions(
            pipeline_id, filter=_name_filter(version), page_size=PAGE_SIZE).pipeline_versions or []
            if v.display_name == version]
    if not versions:
        raise KfpError(f"--version {version!r}: pipeline {pipeline!r} has no such version")
    return pipeline_id, versions[0].pipeline_version_id


def _source(kfp_client, tmp: str, pipeline: str | None, version: str | None,
            namespace: str | None, kfp_backend: str | None = None) -> dict[str, Any]:
    """Where a run's pipeline comes from: an uploaded version, or the package compiled now (for
    `kfp_backend`, default 2.16)."""
    if pipeline is None:
        if version is not None:
            raise KfpError("--version needs --pipeline (the uploaded pipeline's name)")
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", kfp_backend or DEFAULT_KFP_BACKEND)
        return {"pipeline_package_path": str(package)}
    pipeline_id, version_id = resolve_version(kfp_client, pipeline, version, namespace)
    return {"pipeline_id": pipeline_id, "version_id": version_id}


def _check_source(pipeline: str | None, kfp_backend: str | None) -> None:
    """Before any request: --kfp-backend chooses how the package is compiled now, so it has no
    meaning for an uploaded version."""
    if pipeline is not None and kfp_backend is not None:
        raise KfpError("--kfp-backend applies to the package compiled now; an uploaded version "
                       "(--pipeline) runs as it was compiled at upload (upload --kfp-backend)")


def experiment_id(kfp_client, experiment: str, namespace: str) -> str:
    return kfp_client.create_experiment(experiment, namespace=namespace).experiment_id


def submit(host: str, arguments: dict[str, Any], *, namespace: str = "kubeflow",
           experiment: str = PIPELINE_NAME, run_name: str | None = None,
           pipeline: str | None = None, version: str | None = None,
           kfp_backend: str | None = None) -> str:
    """One run in `experiment`, as the pipeline's service account."""
    _check_source(pipeline, kfp_backend)
    kfp_client = client(host, namespace)
    with _api_errors(host, namespace), tempfile.TemporaryDirectory() as tmp:
        source = _source(kfp_client, tmp, pipeline, version, namespace, kfp_backend)
        run = kfp_client.run_pipeline(
            experiment_id=experiment_id(kfp_client, experiment, namespace),
            job_name=run_name or f"{PIPELINE_NAME} {version or 'local package'}",
            params=arguments, service_account=SERVICE_ACCOUNT, **source)
    return run.run_id


def schedule(host: str, cron: str, arguments: dict[str, Any], *, namespace: str = "kubeflow",
             experiment: str = PIPELINE_NAME, name: str = "kubevae-retrain",
             pipeline: str | None = None, version: str | None = None,
             kfp_backend: str | None = None) -> str:
    """A recurring retraining run: one at a time (max_concurrency 1), no catch-up of missed
    runs, `previous_split=champion` unless given (every item keeps the champion's split).
    With `pipeline` (and `version`), the schedule runs an uploaded version the UI can show."""
    _check_source(pipeline, kfp_backend)
    arguments = {"previous_split": "champion", **arguments}
    cron = to_kfp_cron(cron)
    kfp_client = client(host, namespace)
    with _api_errors(host, namespace), tempfile.TemporaryDirectory() as tmp:
        experiment_ref = experiment_id(kfp_client, experiment, namespace)
        if any(r.display_name == name for r in _recurring_runs(kfp_client, experiment_ref)):
            raise KfpError(f"--name {name!r}: experiment {experiment!r} already has a recurring "
                           "run with that name; delete it first (kubevae pipeline schedules "
                           "delete ID) or choose another --name")
        source = _source(kfp_client, tmp, pipeline, version, namespace, kfp_backend)
        recurring = kfp_client.create_recurring_run(
            experiment_id=experiment_ref, job_name=name, cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=arguments,
            service_account=SERVICE_ACCOUNT, **source)
    return recurring.recurring_run_id


def _recurring_runs(kfp_client, experiment_ref: str | None, namespace: str | None = None) -> list:
    found: list[Any] = []
    token = ""
    while True:
        page = kfp_client.list_recurring_runs(page_token=token, page_size=PAGE_SIZE,
                                              experiment_id=experiment_ref, namespace=namespace)
        found += page.recurring_runs or []
        token = page.next_page_token
        if not token:
            return found


def list_schedules(host: str, *, namespace: str = "kubeflow") -> list[dict[str, Any]]:
    kfp_client = client(host, namespace)
    with _api_errors(host, namespace):
        runs = _recurring_runs(kfp_client, None, namespace)
    return [{"id": r.recurring_run_id, "name": r.display_name, "status": r.status,
             "cron": r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else None,
             "version": (r.pipeline_version_reference.pipeline_version_id
                         if r.pipeline_version_reference else "inline package")} for r in runs]


def change_schedule(host: str, action: str, recurring_run_id: str, *,
                    namespace: str = "kubeflow") -> None:
    """`disable`, `enable` or `delete` one recurring run."""
    kfp_client = client(host, namespace)
    method = {"disable": kfp_client.disable_recurring_run, "enable": kfp_client.enable_recurring_run,
              "delete": kfp_client.delete_recurring_run}[action]
    with _api_errors(host, namespace):
        method(recurring_run_id)
