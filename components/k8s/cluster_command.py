"""Check a cluster namespace before kubevae's first run there (read-only).

  kubevae cluster check --namespace team-a
  kubevae cluster check --namespace team-a --no-write                # not even the S3 marker
  kubevae cluster check --namespace team-a --s3-endpoint 127.0.0.1:9000 \\
      --mlflow-url http://127.0.0.1:5000                             # through kubectl port-forward

Uses the kubeconfig's current context, or the pod's service account inside a pod. Prints one
table: each check, its status (ok / missing / warn / could not check) and what to change,
pointing into docs/cluster.md (the cluster admin's steps A1-A5, the namespace owner's B1-B4). Exit status 0 when
nothing is missing, 1 otherwise. It changes nothing in the cluster; the only write is one small
marker object under the pipeline root's `kubevae-preflight/` folder, deleted at once (skip it
with --no-write). See components/k8s/preflight.py for every check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.k8s import preflight
from components.k8s.training_apis import TRAINING_API_NAMES


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("check", help="check a namespace: CRDs, runtime, Secrets, RBAC, S3, MLflow, "
                       "NetworkPolicies")
    c.add_argument("--namespace", "-n", required=True, help="the Kubeflow profile namespace of the runs")
    c.add_argument("--service-account", default=preflight.SERVICE_ACCOUNT,
                   help="the service account the runs use, whose permissions are reviewed (default: "
                   f"{preflight.SERVICE_ACCOUNT})")
    c.add_argument("--training-api", choices=TRAINING_API_NAMES, default="trainer",
                   help="the pipeline's training_api: which training CRD must be served (default: trainer)")
    c.add_argument("--no-write", dest="write", action="store_false",
                   help="skip the S3 write test (one marker object, put and deleted)")
    c.add_argument("--s3-prefix", default=None, metavar="S3_URI",
                   help="where to test reading and writing (default: the kfp-launcher ConfigMap's "
                   "defaultPipelineRoot, else KFP's default)")
    c.add_argument("--s3-endpoint", default=None, metavar="HOST:PORT",
                   help="the object store as seen from here, e.g. through kubectl port-forward "
                   "(default: the kubevae-settings ConfigMap's S3_ENDPOINT)")
    c.add_argument("--mlflow-url", default=None, metavar="URL",
                   help="MLflow as seen from here (default: the ConfigMap's MLFLOW_TRACKING_URI)")
    c.add_argument("--rbac", type=Path, default=preflight.RBAC_FILE,
                   help="the Roles whose calls are reviewed (default: the checkout's manifests/base/rbac.yaml)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per S3 or MLflow request (default: 10)")


def run(args: argparse.Namespace) -> int:
    options = preflight.Options(
        namespace=args.namespace, service_account=args.service_account,
        training_api=args.training_api, write=args.write, s3_prefix=args.s3_prefix,
        s3_endpoint=args.s3_endpoint, mlflow_url=args.mlflow_url, rbac_file=args.rbac,
        timeout_s=args.timeout)
    rows = preflight.check(preflight.connect(), options)
    print(preflight.render(rows), flush=True)
    status = preflight.exit_status(rows)
    counts = {s: sum(r.status == s for r in rows) for s in
              (preflight.OK, preflight.MISSING, preflight.WARN, preflight.UNKNOWN)}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()) + " -- "
          + ("nothing missing." if status == 0 else "fix the rows marked missing, then run this again."),
          flush=True)
    return status
