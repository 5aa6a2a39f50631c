"""A loopback Kubeflow Pipelines API server that holds every request to KFP's own REST spec.

The specification is `../shared/kfp-api/kfp_api_single_file.swagger.json` (v2beta1, kfp 2.17.0;
its README names the source). For every request the server checks:
- the method and the path against `paths` (an undeclared route answers 404 NOT_IMPLEMENTED and
  is recorded as a spec violation);
- every query parameter against the operation's declared parameters (name and type);
- the JSON body against the operation's body definition, strictly: an unknown field or a wrong
  type fails (400, and a recorded violation). The only relaxation is the protobuf JSON
  mapping's own: an int64 declared `type: string, format: int64` may also be sent as a number;
- a multipart upload carries `uploadfile`, and the file is a compiled pipeline spec.
Every answer is validated against the operation's 200 schema before it is sent.

Behind the checks sits a small in-memory KFP: experiments, pipelines and versions, runs and
recurring runs, bearer-token authentication (401), forbidden namespaces (403), unknown
namespaces (404) and duplicate names (409), answered with a googleRpcStatus body as KFP does.

Tests read `server.violations` (must stay empty) and `server.requests` (what was sent).
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "kfp-api" / "kfp_api_single_file.swagger.json"

# google.rpc.Code values for the statuses the fake answers with.
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 501: 12}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, plain: bool = False):
        super().__init__(message)
        self.status, self.message, self.plain = status, message, plain


@dataclass
class Operation:
    method: str
    template: str
    pattern: re.Pattern
    spec: dict[str, Any]

    @property
    def operation_id(self) -> str:
        return self.spec["operationId"]


def strict(schema: Any) -> Any:
    """The spec's schemas, made strict: objects with declared properties accept nothing else;
    int64/uint64 strings also accept JSON numbers (proto3 JSON mapping)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("type") == "string" and out.get("format") in ("int64", "uint64"):
        kept = {k: v for k, v in out.items() if k not in ("type", "format")}
        return {**kept, "anyOf": [{"type": "string", "pattern": r"^-?[0-9]+$"}, {"type": "integer"}]}
    if "$ref" in out and len(out) > 1:  # `{"type": "object", "$ref": ...}`: the ref decides
        return {"$ref": out["$ref"]}
    return out


class Spec:
    def __init__(self, path: Path = SPEC_PATH):
        self.document = json.loads(path.read_text())
        self.definitions = strict(self.document["definitions"])
        self.operations: list[Operation] = []
        for template, methods in self.document["paths"].items():
            regex = re.sub(r"\{[^}]+\}", "([^/:]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
            for method, op in methods.items():
                self.operations.append(Operation(method.upper(), template, re.compile(f"^{regex}$"), op))
        # Literal routes win over templated ones (`/pipelines/upload` before `/pipelines/{id}`).
        self.operations.sort(key=lambda o: o.template.count("{"))

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations:
            found = op.pattern.match(path)
            if op.method == method and found:
                names = re.findall(r"\{([^}]+)\}", op.template)
                return op, dict(zip(names, found.groups(), strict=True))
        return None

    def validate(self, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        resolved = {**strict(schema), "definitions": self.definitions}
        validator = jsonschema.Draft4Validator(resolved)
        return [f"{where}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in validator.iter_errors(value)]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Store:
    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)


class KfpApiServer:
    """Start with `with KfpApiServer() as server:`; `server.url` is the host for kfp.Client."""

    def __init__(self, *, token: str = "valid-token",  # noqa: S107 (a test token)
                 namespaces=("kubeflow", "team-a"), forbidden_namespaces=("other-team",)):
        self.spec = Spec()
        self.token = token
        self.namespaces = set(namespaces)
        self.forbidden = set(forbidden_namespaces)
        self.store = Store()
        self.requests: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> KfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()

    def calls(self, operation_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["operation"] == operation_id]

    # ---- request handling -------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                status, body, content_type = server.handle(
                    self.command, self.path, dict(self.headers.items()),
                    self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        return Handler

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes):
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        record: dict[str, Any] = {"method": method, "path": url.path, "query": query,
                                  "operation": None, "body": None, "headers": headers}
        with self._lock:
            self.requests.append(record)
        try:
            found = self.spec.match(method, url.path)
            if found is None:
                message = f"{method} {url.path}: no such route in the KFP v2beta1 spec"
                self._violation(message)
                raise ApiError(404, message)
            op, path_params = found
            record["operation"] = op.operation_id
            self._check_auth(headers)
            body = self._check_request(op, query, headers, raw, record)
            record["body"] = body
            with self._lock:
                answer = getattr(self, "op_" + op.operation_id)(path_params, query, body)
            errors = self.spec.validate(op.spec["responses"]["200"]["schema"], answer,
                                        f"response of {op.operation_id}")
            if errors:
                self._violation(*errors)
                raise ApiError(500, "; ".join(errors))
            return 200, json.dumps(answer), "application/json"
        except Exception as e:  # the fake's own bug: a 500 and a recorded violation
            if not isinstance(e, ApiError):
                self._violation(f"{method} {url.path}: the test server failed: {e!r}")
                e = ApiError(500, f"internal error: {e!r}")
            if e.plain:  # an auth proxy in front of KFP (Istio, oauth2-proxy) answers in text
                return e.status, e.message, "text/plain"
            status = {"code": GRPC_CODES.get(e.status, 2), "message": e.message, "details": []}
            return e.status, json.dumps(status), "application/json"

    def _violation(self, *messages: str) -> None:
        with self._lock:
            self.violations.extend(messages)

    def _check_auth(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        given = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if given != f"Bearer {self.token}":
            raise ApiError(401, "Jwt is expired" if given else "Jwt is missing", plain=True)

    def _check_request(self, op: Operation, query: dict[str, str], headers, raw: bytes, record):
        params = op.spec.get("parameters", [])
        declared = {p["name"]: p for p in params if p["in"] == "query"}
        errors = []
        for name, value in query.items():
            if name not in declared:
                errors.append(f"{op.operation_id}: query parameter {name!r} is not in the spec "
                              f"(declared: {sorted(declared)})")
            elif declared[name].get("type") == "integer" and not re.fullmatch(r"-?[0-9]+", value):
                errors.append(f"{op.operation_id}: query parameter {name!r}={value!r} is not an integer")
            elif declared[name].get("enum") and value not in declared[name]["enum"]:
                errors.append(f"{op.operation_id}: query parameter {name!r}={value!r} not in "
                              f"{declared[name]['enum']}")
        body = None
        body_param = next((p for p in params if p["in"] == "body"), None)
        form = [p for p in params if p["in"] == "formData"]
        if body_param is not None:
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as e:
                errors.append(f"{op.operation_id}: body is not JSON: {e}")
            else:
                errors += self.spec.validate(body_param["schema"], body, f"{op.operation_id} body")
        elif form:
            body = self._multipart(op, headers, raw, form, errors)
        elif raw.strip():
            errors.append(f"{op.operation_id}: a body was sent but the spec declares none")
        if errors:
            self._violation(*errors)
            raise ApiError(400, "; ".join(errors))
        return body

    def _multipart(self, op, headers, raw, form, errors) -> dict[str, Any]:
        content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            errors.append(f"{op.operation_id}: expected multipart/form-data, got {content_type!r}")
            return {}
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                 for part in message.iter_parts()}
        for p in form:
            if p.get("required") and p["name"] not in parts:
                errors.append(f"{op.operation_id}: form field {p['name']!r} is required")
        unknown = set(parts) - {p["name"] for p in form}
        if unknown:
            errors.append(f"{op.operation_id}: unknown form field(s) {sorted(unknown)}")
        spec = None
        if "uploadfile" in parts:
            try:
                # The pipeline spec, then (with kfp-kubernetes) the platform spec.
                spec = next(yaml.safe_load_all(parts["uploadfile"]))
                assert isinstance(spec, dict) and "pipelineInfo" in spec and "root" in spec
            except Exception:
                errors.append(f"{op.operation_id}: uploadfile is not a compiled pipeline spec")
        return {"pipeline_spec": spec}

    # ---- namespaces and names ---------------------------------------------------------------

    def _namespace(self, namespace: str | None) -> str:
        namespace = namespace or "kubeflow"
        if namespace in self.forbidden:
            raise ApiError(403, f"PermissionDenied: user is not authorized to access namespace "
                                f"{namespace!r}")
        if namespace not in self.namespaces:
            raise ApiError(404, f"NotFound: namespace {namespace!r} not found")
        return namespace

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    @staticmethod
    def _filter_name(query: dict[str, str]) -> str | None:
        if "filter" not in query:
            return None
        predicates = json.loads(query["filter"])["predicates"]
        names = [p.get("stringValue", p.get("string_value")) for p in predicates
                 if p["key"] in ("display_name", "name", "name")]
        return names[0] if names else None

    def _experiment(self, experiment_id: str) -> dict:
        if experiment_id not in self.store.experiments:
            raise ApiError(404, f"NotFound: experiment {experiment_id!r} not found")
        return self.store.experiments[experiment_id]

    def _check_parameters(self, body: dict) -> None:
        """Like KFP's backend: a run's parameters must be inputs of the pipeline it runs."""
        spec = body.get("pipeline_spec")
        reference = body.get("pipeline_version_reference")
        if reference:
            version = self.store.versions.get(reference.get("pipeline_version_id", ""))
            if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
                raise ApiError(404, f"NotFound: pipeline version {reference} not found")
            spec = version["pipeline_spec"]
        elif spec and "pipeline_spec" in spec:  # with a platform spec (kfp-kubernetes) beside it
            if set(spec) - {"pipeline_spec", "platform_spec"}:
                raise ApiError(400, f"InvalidArgument: pipeline_spec has unknown keys "
                                    f"{sorted(set(spec) - {'pipeline_spec', 'platform_spec'})}")
            spec = spec["pipeline_spec"]
        if not spec or "root" not in spec:
            raise ApiError(400, "InvalidArgument: a run needs pipeline_spec or pipeline_version_reference")
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        given = (body.get("runtime_config") or {}).get("parameters", {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ApiError(400, f"InvalidArgument: unknown pipeline parameter(s) {unknown}")

    # ---- operations (named after the spec's operationId) -------------------------------------

    def op_HealthzService_GetHealthz(self, path, query, body):
        return {"multi_user": True, "pipeline_store": "database"}

    def op_ExperimentService_ListExperiments(self, path, query, body):
        namespace = self._namespace(query.get("namespace"))
        name = self._filter_name(query)
        found = [e for e in self.store.experiments.values()
                 if e["namespace"] == namespace and (name is None or e["display_name"] == name)]
        return {"experiments": found, "total_size": len(found)} if found else {}

    def op_ExperimentService_CreateExperiment(self, path, query, body):
        namespace = self._namespace(body.get("namespace"))
        if any(e["display_name"] == body["display_name"] and e["namespace"] == namespace
               for e in self.store.experiments.values()):
            raise ApiError(409, f"AlreadyExists: experiment {body['display_name']!r} already "
                                f"exists in namespace {namespace!r}")
        experiment = {"experiment_id": self._new_id("experiment"), "display_name": body["display_name"],
                      "namespace": namespace, "created_at": now(), "storage_state": "AVAILABLE"}
        if body.get("description"):
            experiment["description"] = body["description"]
        self.store.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def op_PipelineService_ListPipelines(self, path, query, body):
        namespace = query.get("namespace")
        if namespace:
            self._namespace(namespace)
        name = self._filter_name(query)
        found = [{k: v for k, v in p.items() if k != "versions"} for p in self.store.pipelines.values()
                 if (name is None or p["display_name"] == name) and p.get("namespace", "") == (namespace or "")]
        return {"pipelines": found, "total_size": len(found)} if found else {}

    def op_UploadPipeline(self, path, query, body):
        namespace = query.get("namespace") or ""
        if namespace:
            self._namespace(namespace)
        name = query.get("name") or query.get("display_name")
        if not name:
            raise ApiError(400, "InvalidArgument: pipeline name is empty")
        if any(p["display_name"] == name and p.get("namespace", "") == namespace
               for p in self.store.pipelines.values()):
            raise ApiError(409, f"AlreadyExists: a pipeline named {name!r} already exists")
        pipeline = {"pipeline_id": self._new_id("pipeline"), "display_name": name, "name": name,
                    "created_at": now()}
        if namespace:
            pipeline["namespace"] = namespace
        if query.get("description"):
            pipeline["description"] = query["description"]
        self.store.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, body["pipeline_spec"], query.get("description"))
        return pipeline

    def _add_version(self, pipeline_id: str, name: str, spec: dict, description: str | None) -> dict:
        if any(v["display_name"] == name and v["pipeline_id"] == pipeline_id
               for v in self.store.versions.values()):
            raise ApiError(409, f"AlreadyExists: pipeline {pipeline_id!r} already has a version "
                                f"named {name!r}")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id("version"),
                   "display_name": name, "name": name, "created_at": now(), "pipeline_spec": spec}
        if description:
            version["description"] = description
        self.store.versions[version["pipeline_version_id"]] = version
        return version

    def op_UploadPipelineVersion(self, path, query, body):
        pipeline_id = query.get("pipelineid", "")
        if pipeline_id not in self.store.pipelines:
            raise ApiError(404, f"NotFound: pipeline {pipeline_id!r} not found")
        return self._add_version(pipeline_id, query.get("name") or query.get("display_name") or "",
                                 body["pipeline_spec"], query.get("description"))

    def op_PipelineService_ListPipelineVersions(self, path, query, body):
        if path["pipeline_id"] not in self.store.pipelines:
            raise ApiError(404, f"NotFound: pipeline {path['pipeline_id']!r} not found")
        name = self._filter_name(query)
        found = [v for v in self.store.versions.values() if v["pipeline_id"] == path["pipeline_id"]
                 and (name is None or v["display_name"] == name)]
        return self._page("pipeline_versions", found, query, "pipeline_version_id")

    @staticmethod
    def _page(key: str, items: list[dict], query: dict[str, str], id_key: str) -> dict:
        """KFP's paging: `sort_by` ("created_at desc"), `page_size`, `next_page_token`. Ids
        count up, so they order items created within the same second."""
        items = sorted(items, key=lambda i: int(i[id_key].rsplit("-", 1)[1]),
                       reverse=query.get("sort_by", "").endswith(" desc"))
        start = int(query.get("page_token") or 0)
        size = int(query.get("page_size") or 10)
        page = items[start:start + size]
        out: dict[str, Any] = {key: page, "total_size": len(items)} if page else {}
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def op_RunService_CreateRun(self, path, query, body):
        experiment = self._experiment(body.get("experiment_id", ""))
        self._namespace(experiment["namespace"])
        self._check_parameters(body)
        run = {**copy.deepcopy(body), "run_id": self._new_id("run"), "created_at": now(),
               "state": "PENDING", "storage_state": "AVAILABLE"}
        run.pop("pipeline_spec", None)
        self.store.runs[run["run_id"]] = run
        return run

    def op_RecurringRunService_CreateRecurringRun(self, path, query, body):
        experiment = self._experiment(body.get("experiment_id", ""))
        namespace = self._namespace(experiment["namespace"])
        self._check_parameters(body)
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        if cron is not None and len(cron.split()) != 6:  # KFP's robfig/cron parser with seconds
            raise ApiError(400, f"InvalidArgument: cron {cron!r}: expected 6 fields")
        recurring = {**copy.deepcopy(body), "recurring_run_id": self._new_id("recurring"),
                     "created_at": now(), "updated_at": now(), "namespace": namespace,
                     "status": "ENABLED" if body.get("mode") != "DISABLE" else "DISABLED"}
        recurring.pop("pipeline_spec", None)
        self.store.recurring_runs[recurring["recurring_run_id"]] = recurring
        return recurring

    def _recurring(self, recurring_run_id: str) -> dict:
        if recurring_run_id not in self.store.recurring_runs:
            raise ApiError(404, f"NotFound: recurring run {recurring_run_id!r} not found")
        return self.store.recurring_runs[recurring_run_id]

    def op_RecurringRunService_ListRecurringRuns(self, path, query, body):
        if "experiment_id" in query:
            self._experiment(query["experiment_id"])
            found = [r for r in self.store.recurring_runs.values()
                     if r["experiment_id"] == query["experiment_id"]]
        else:
            namespace = self._namespace(query.get("namespace"))
            found = [r for r in self.store.recurring_runs.values() if r["namespace"] == namespace]
        return self._page("recurringRuns", found, query, "recurring_run_id")

    def op_RecurringRunService_GetRecurringRun(self, path, query, body):
        return self._recurring(path["recurring_run_id"])

    def op_RecurringRunService_DisableRecurringRun(self, path, query, body):
        recurring = self._recurring(path["recurring_run_id"])
        recurring.update(mode="DISABLE", status="DISABLED", updated_at=now())
        return {}

    def op_RecurringRunService_EnableRecurringRun(self, path, query, body):
        recurring = self._recurring(path["recurring_run_id"])
        recurring.update(mode="ENABLE", status="ENABLED", updated_at=now())
        return {}

    def op_RecurringRunService_DeleteRecurringRun(self, path, query, body):
        self._recurring(path["recurring_run_id"])
        del self.store.recurring_runs[path["recurring_run_id"]]
        return {}

    def __getattr__(self, name: str):
        if name.startswith("op_"):  # a spec route this fake does not implement
            def not_implemented(path, query, body):
                raise ApiError(501, f"{name[3:]} is not implemented by the test server")
            return not_implemented
        raise AttributeError(name)
