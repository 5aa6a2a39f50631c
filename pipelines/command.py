"""Compile, run, submit or schedule the kubevae pipeline.

  kubevae pipeline compile --out kubevae_pipeline.yaml        # upload in the Kubeflow UI
  kubevae pipeline compile --kfp-backend 2.17                  # + the run's deadline and TTLs
  kubevae pipeline run --local --profile quick                 # the whole DAG on this machine
  kubevae pipeline run --local                                 # the cluster defaults: hours
  kubevae pipeline upload --host URL --name kubevae            # a pipeline (version) for the UI
  kubevae pipeline submit --host URL [--param name=value ...]  # a run on a cluster
  kubevae pipeline schedule --host URL --cron "0 3 * * 1"      # recurring retraining
  kubevae pipeline schedules --host URL list|disable ID|enable ID|delete ID

`upload` creates the pipeline the first time and then adds a version named after the package
version and the git commit. `submit` and `schedule` run the package compiled now, or an
uploaded version with --pipeline NAME [--version NAME]. KFP's cron has 6 fields (seconds
first); a usual 5-field expression is accepted and converted by prefixing "0" seconds.
Scheduled runs are one at a time (max_concurrency 1), without catch-up, with
previous_split=champion unless --param sets it. Authentication to KFP comes from the
environment (KF_PIPELINES_SA_TOKEN_PATH, KFP_EXISTING_TOKEN or KFP_COOKIES), never from
parameters. An error the KFP API answers is printed as `kubevae pipeline: error: ...` (exit 2).

`--kfp-backend` (compile, upload, submit, schedule) says which KFP backend the compiled YAML is
for: 2.16 (the default; Kubeflow 26.03's, and 2.17 reads it too) or 2.17, which adds the run's
active deadline and TTLs. Never send a 2.17 YAML to a 2.16 backend: its API server drops the
whole Kubernetes platform spec (Secrets, ConfigMap, labels, step deadlines) without an error.
A --param value is converted to the parameter's declared type where nothing is lost (300 for a
float, "1" for an integer, true/false, a JSON or comma-separated list); otherwise the error
names the parameter, its type and the value.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.kfp_versions import DEFAULT_KFP_BACKEND, KFP_BACKENDS
from pipelines.profiles import PROFILES, profile

KFP_BACKEND_HELP = ("the KFP backend version the YAML is compiled for: 2.16 (default; runs on "
                    "2.16 and 2.17) or 2.17 (adds the run's active deadline and TTLs; a 2.16 "
                    "backend would silently drop the whole Kubernetes platform spec)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    c.add_argument("--out", default="kubevae_pipeline.yaml")
    c.add_argument("--kfp-backend", choices=KFP_BACKENDS, default=DEFAULT_KFP_BACKEND,
                   help=KFP_BACKEND_HELP)
    r = sub.add_parser("run", help="run the pipeline locally with kfp.local")
    r.add_argument("--local", action="store_true", required=True,
                   help="run with kfp.local's SubprocessRunner (the only way to run it here)")
    r.add_argument("--run-dir", default="runs/local", help="pipeline root, MLflow store, logs")
    for action in (r, s := sub.add_parser("submit", help="submit a run to a KFP cluster"),
                   k := sub.add_parser("schedule", help="create a recurring run on a KFP cluster")):
        action.add_argument("--profile", choices=sorted(PROFILES), default=None,
                            help="a parameter profile (quick: laptop; full: GPU cluster)")
        action.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                            help="override one pipeline parameter (JSON values allowed)")
    u = sub.add_parser("upload", help="upload the pipeline (first time) or a new version of it")
    ls = sub.add_parser("schedules", help="list, disable, enable or delete recurring runs")
    for action in (s, k, u, ls):
        action.add_argument("--host", required=True, help="the KFP API endpoint")
    for action in (s, k, ls):
        action.add_argument("--namespace", default="kubeflow", help="the Kubeflow profile namespace")
    for action in (s, k):
        action.add_argument("--experiment", default="kubevae")
        action.add_argument("--pipeline", default=None,
                            help="run this uploaded pipeline instead of the package compiled now")
        action.add_argument("--version", default=None,
                            help="the uploaded version to run (default: the newest)")
    k.add_argument("--cron", required=True, help='cron expression, 5 fields ("0 3 * * 1") or 6')
    k.add_argument("--name", default="kubevae-retrain")
    for action in (s, k, u):
        # None: the default (2.16); submit and schedule refuse it with --pipeline
        action.add_argument("--kfp-backend", choices=KFP_BACKENDS, default=None,
                            help=KFP_BACKEND_HELP)
    u.add_argument("--name", default="kubevae", help="the pipeline's name in the Kubeflow UI")
    u.add_argument("--version", default=None,
                   help="the new version's name (default: package version + git commit)")
    u.add_argument("--namespace", default=None,
                   help="upload a namespaced pipeline (default: shared by all profiles)")
    ls.add_argument("change", nargs="?", choices=("list", "disable", "enable", "delete"),
                    default="list")
    ls.add_argument("recurring_run_id", nargs="?", help="the recurring run (from `list`)")


def arguments_from(a: argparse.Namespace) -> dict:
    """The profile's values, then each --param, every one of the parameter's declared type."""
    from pipelines.params import coerce_arguments, declared_types, from_text

    types = declared_types()
    values = coerce_arguments(profile(a.profile), types) if a.profile else {}
    for item in a.param:
        name, sep, raw = item.partition("=")
        if not sep or name not in types:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(types)}")
        values[name] = from_text(name, raw, types[name])
    return values


def cluster_defaults_warning(arguments: dict) -> str:
    """What a local run without --profile is in for: the defaults size a GPU cluster's run."""
    from pipelines.pipeline import PARAMETERS

    def value(name: str):
        return arguments.get(name, PARAMETERS[name][0])

    return (f"kubevae pipeline run: warning: no --profile, so this run uses the cluster defaults "
            f"({value('max_trials')} trials of {value('trial_steps'):,} steps, a final run of "
            f"{value('train_steps'):,} steps on {value('source_uri')}), which take hours on a "
            f"laptop. --profile quick (what `make run` uses) runs the whole pipeline in minutes.")


def run(a: argparse.Namespace) -> int:
    from pipelines import submit

    if a.action == "compile":
        backends = "2.16 and 2.17" if a.kfp_backend == "2.16" else f"{a.kfp_backend} only"
        print(f"wrote {submit.compile_pipeline(a.out, a.kfp_backend)} (for KFP {backends})")
    elif a.action == "run":
        from pipelines.local_run import print_summary, run_local

        arguments = {"backend": "local", **arguments_from(a)}
        if a.profile is None:
            print(cluster_defaults_warning(arguments), file=sys.stderr, flush=True)
        print_summary(run_local(arguments, a.run_dir))
    elif a.action == "upload":
        done = submit.upload(a.host, a.name, namespace=a.namespace, version=a.version,
                             kfp_backend=a.kfp_backend)
        what = "created pipeline" if done.created_pipeline else "added version to pipeline"
        print(f"{what} {a.name!r} ({done.pipeline_id}): version {done.version_name!r} "
              f"({done.version_id})")
    elif a.action == "submit":
        run_id = submit.submit(a.host, arguments_from(a), namespace=a.namespace,
                               experiment=a.experiment, pipeline=a.pipeline, version=a.version,
                               kfp_backend=a.kfp_backend)
        print(f"run id: {run_id}")
    elif a.action == "schedule":
        recurring = submit.schedule(a.host, a.cron, arguments_from(a), namespace=a.namespace,
                                    experiment=a.experiment, name=a.name, pipeline=a.pipeline,
                                    version=a.version, kfp_backend=a.kfp_backend)
        print(f"recurring run id: {recurring}")
    elif a.change == "list":
        for r in submit.list_schedules(a.host, namespace=a.namespace):
            print(f"{r['id']}  {r['name']}  {r['status']}  cron={r['cron']!r}  version={r['version']}")
    else:
        if not a.recurring_run_id:
            raise ValueError(f"schedules {a.change}: expected a recurring run id (see `schedules list`)")
        submit.change_schedule(a.host, a.change, a.recurring_run_id, namespace=a.namespace)
        print(f"{a.change}d recurring run {a.recurring_run_id}")
    return 0
