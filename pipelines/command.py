"""Compile, run, submit or schedule the kubevae pipeline.

  kubevae pipeline compile --out kubevae_pipeline.yaml        # upload in the Kubeflow UI
  kubevae pipeline run --local --profile quick                 # the whole DAG on this machine
  kubevae pipeline submit --host URL [--param name=value ...]  # a run on a cluster
  kubevae pipeline schedule --host URL --cron "0 3 * * 1"      # recurring retraining

KFP's cron has 6 fields (seconds first); a usual 5-field expression is accepted and converted
by prefixing "0" seconds. Scheduled runs are one at a time (max_concurrency 1), without
catch-up. Authentication to KFP comes from the environment (KF_PIPELINES_SA_TOKEN_PATH,
KFP_EXISTING_TOKEN or KFP_COOKIES), never from parameters.
"""

from __future__ import annotations

import argparse
import json

from pipelines.profiles import PROFILES, profile


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    c.add_argument("--out", default="kubevae_pipeline.yaml")
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
    for action in (s, k):
        action.add_argument("--host", required=True, help="the KFP API endpoint")
        action.add_argument("--namespace", default="kubeflow", help="the Kubeflow profile namespace")
        action.add_argument("--experiment", default="kubevae")
    k.add_argument("--cron", required=True, help='cron expression, 5 fields ("0 3 * * 1") or 6')
    k.add_argument("--name", default="kubevae-retrain")


def arguments_from(a: argparse.Namespace) -> dict:
    from pipelines.pipeline import PARAMETERS

    values = profile(a.profile) if a.profile else {}
    for item in a.param:
        name, sep, raw = item.partition("=")
        if not sep or name not in PARAMETERS:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(PARAMETERS)}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def run(a: argparse.Namespace) -> int:
    if a.action == "compile":
        from pipelines.submit import compile_pipeline

        print(f"wrote {compile_pipeline(a.out)}")
    elif a.action == "run":
        from pipelines.local_run import print_summary, run_local

        arguments = {"backend": "local", **arguments_from(a)}
        print_summary(run_local(arguments, a.run_dir))
    elif a.action == "submit":
        from pipelines.submit import submit

        print(f"run id: {submit(a.host, arguments_from(a), namespace=a.namespace, experiment=a.experiment)}")
    else:
        from pipelines.submit import schedule

        print(f"recurring run id: {schedule(a.host, a.cron, arguments_from(a), namespace=a.namespace, experiment=a.experiment, name=a.name)}")
    return 0
