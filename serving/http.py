"""HTTP guards around the FastAPI app that kserve.ModelServer builds, and JSON logs.

- Request bodies over `max_payload_bytes` are refused with HTTP 413 before they are read in
  full: at once when Content-Length says so, else as the bytes stream in (Starlette's
  RequestBodyLimitMiddleware).
- Every response carries an `x-request-id` header: the caller's, when it is a sane token, or a
  new one; the model sees the same id in its request headers and puts it in the body.
- Request-validation errors (FastAPI's 422, e.g. a V2 body that is not an inference request)
  become HTTP 400 with a short message that never echoes the input.
- V2 infer bodies are JSON whatever their Content-Type, unless they use the binary tensor
  extension (inference-header-content-length): those are decoded by `binary_infer_request`
  (serving.server puts it in kserve's data plane), which checks them first, since kserve's
  parser answers 500 to malformed ones, and keeps each tensor's bytes as they came.
- One JSON log line per HTTP request (method, path, status, latency, request id, and op and
  item count for inferences); never any image data.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import sys
import time
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import Message

from serving.codec import MAX_DIMS, new_request_id
from serving.errors import install_handlers

V2_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# A byte count in a header: ASCII digits only ("²".isdigit() is True, and int("٣") is 3).
_BYTE_COUNT = re.compile(r"^[0-9]{1,15}$")
# The per-request log entry; the model adds op and items to it.
REQUEST_LOG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kubevae_request_log", default=None)
access_log = logging.getLogger("kubevae.serving.access")


def sane_request_id(value: str | None) -> str:
    return value if value and _SANE_ID.match(value) else new_request_id()


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would cost every request a task switch)."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = sane_request_id(given.decode("latin-1"))
        scope = dict(scope, headers=[*headers, (b"x-request-id", request_id.encode())])
        entry: dict[str, Any] = {"request_id": request_id, "method": scope.get("method"),
                                 "path": scope.get("path"), "status": None}
        token = REQUEST_LOG.set(entry)
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = _header(headers, b"content-length")
            declared_bytes = byte_count(declared)
            if declared_bytes is not None and declared_bytes > self.max_body_bytes:
                await too_large(self.max_body_bytes)(scope, receive, send_with_id)
                return
            if scope.get("method") == "POST" and V2_INFER_PATH.match(scope.get("path", "")):
                scope = json_unless_binary(scope)
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_LOG.reset(token)
            entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            level = logging.WARNING if (entry["status"] or 500) >= 400 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, "http request", extra={"fields": entry})


def json_unless_binary(scope: dict) -> dict:
    """Without the binary extension an OIP request can only be JSON, whatever the Content-Type
    says (curl -d sends application/x-www-form-urlencoded): tell FastAPI so."""
    headers = scope["headers"]
    if _header(headers, b"inference-header-content-length") is not None:
        return scope
    content_type = _header(headers, b"content-type")
    if content_type and _is_json(content_type):
        return scope
    return dict(scope, headers=[(k, v) for k, v in headers if k != b"content-type"]
                + [(b"content-type", b"application/json")])


def byte_count(value: str | None) -> int | None:
    """A header's non-negative integer, or None when it is absent or not plain ASCII digits."""
    return int(value) if value is not None and _BYTE_COUNT.match(value) else None


def _header(headers: list, name: bytes) -> str | None:
    value = next((v for k, v in headers if k == name), None)
    return None if value is None else value.decode("latin-1")


def _is_json(content_type: str) -> bool:
    main = content_type.split(";")[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


BINARY_ITEMSIZE = {"UINT8": 1, "FP32": 4}


def binary_request_error(body: bytes, header: str) -> str | None:
    """What is wrong with a request in the binary tensor extension of the V2 protocol (JSON
    header of `header` bytes, then each input's raw row-major bytes), or None."""
    length = byte_count(header)
    if length is None or length > len(body):
        return (f"inference-header-content-length: expected the byte length of the JSON part "
                f"(0..{len(body)}, ASCII digits), got {header[:20]!r}")
    try:
        head = orjson.loads(body[:length])
    except orjson.JSONDecodeError as error:
        return f"binary request: malformed JSON in the first {length} bytes ({error})"
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        return "binary request: expected a JSON object with a list \"inputs\""
    if head.get("id") is not None and not isinstance(head["id"], str):
        return "binary request: \"id\" must be a string"
    outputs = head.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        return "binary request: \"outputs\" must be a list of {\"name\": ...} objects"
    declared = 0
    for i, tensor in enumerate(head["inputs"]):
        if not (isinstance(tensor, dict) and isinstance(tensor.get("name"), str)
                and isinstance(tensor.get("datatype"), str) and isinstance(tensor.get("shape"), list)
                and len(tensor["shape"]) <= MAX_DIMS
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in tensor["shape"])):
            return (f"inputs[{i}]: expected name (string), datatype (string) and shape (at most "
                    f"{MAX_DIMS} non-negative integers)")
        if tensor.get("data") is not None:
            continue  # JSON data: checked with the rest of the request
        size = (tensor.get("parameters") or {}).get("binary_data_size") \
            if isinstance(tensor.get("parameters") or {}, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"inputs[{i}]: expected \"data\" or parameters.binary_data_size (bytes)"
        if tensor["datatype"] not in BINARY_ITEMSIZE:
            return f"inputs[{i}].datatype: expected UINT8 or FP32, got {tensor['datatype'][:20]!r}"
        expected = math.prod(tensor["shape"]) * BINARY_ITEMSIZE[tensor["datatype"]]
        if size != expected:
            return (f"inputs[{i}]: binary_data_size is {size}; shape {tensor['shape']} of "
                    f"{tensor['datatype']} needs {expected}")
        declared += size
    if declared != len(body) - length:
        return (f"binary request: {len(body) - length} bytes follow the JSON part, the inputs "
                f"declare {declared}")
    return None


def binary_infer_request(body: bytes, header: str | None, model_name: str) -> InferRequest:
    """A V2 REST request in the binary tensor extension, checked, with each binary input kept
    as its bytes (as gRPC keeps raw_input_contents), which serving.codec reads with one
    np.frombuffer. kserve's InferRequest.from_bytes makes a Python number of every element
    instead, which made the extension slower than JSON (docs/serving.md)."""
    error = binary_request_error(body, header or "")
    if error is not None:
        raise InvalidInput(error)
    length = int(header or "")
    head = orjson.loads(body[:length])
    inputs, start = [], length
    for tensor in head["inputs"]:
        infer_input = InferInput(name=tensor["name"], shape=tensor["shape"],
                                 datatype=tensor["datatype"], parameters=tensor.get("parameters"))
        if tensor.get("data") is not None:
            infer_input.data = tensor["data"]
        else:
            end = start + tensor["parameters"]["binary_data_size"]
            infer_input._raw_data = body[start:end]
            start = end
        inputs.append(infer_input)
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters"))
               for o in head.get("outputs") or []]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=head.get("id"),
                        parameters=head.get("parameters"), request_outputs=outputs or None)


def binary_request_body(op: str, images: np.ndarray | None = None, latents: np.ndarray | None = None,
                        request_id: str | None = None, **params: Any) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a request in the binary tensor extension (what
    `binary_infer_request` reads), for tests and benchmarks: one tensor, "images" (UINT8, or
    FP32 in [0, 1]) or "latents" (FP32), and the op with its parameters."""
    name, array = ("images", images) if images is not None else ("latents", latents)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
    head: dict[str, Any] = {"inputs": [{
        "name": name, "datatype": "UINT8" if array.dtype == np.uint8 else "FP32",
        "shape": list(array.shape), "parameters": {"binary_data_size": array.nbytes}}],
        "parameters": {"op": op, **params}}
    if request_id is not None:
        head["id"] = request_id
    json_part = orjson.dumps(head)
    return json_part + array.tobytes(), {"inference-header-content-length": str(len(json_part)),
                                         "content-type": "application/octet-stream"}


def install(app: FastAPI, max_payload_bytes: int) -> None:
    """Add the guards to kserve's app. Call before ModelServer.start(): the middleware stack
    is built on the first request, after kserve has added its own routes and handlers."""
    # Starlette's limiter counts streamed bytes; RequestContextMiddleware, outside it, refuses a
    # too-large Content-Length up front (with a JSON message and the request id).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_payload_bytes)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_payload_bytes)

    async def validation_error(_request: Any, error: Exception) -> JSONResponse:
        if not isinstance(error, RequestValidationError):  # registered for this class only
            raise error
        return JSONResponse(status_code=400, content={"error": describe_validation(error)})

    async def http_error(_request: Any, error: Exception) -> JSONResponse:
        if not isinstance(error, StarletteHTTPException):  # registered for this class (and subclasses)
            raise error
        if error.status_code == 413:
            return too_large(max_payload_bytes)
        return JSONResponse(status_code=error.status_code, content={"error": str(error.detail)},
                            headers=getattr(error, "headers", None))

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    install_handlers(app)  # 403 repository disabled, 429 overloaded, 504 deadline


def too_large(limit: int) -> JSONResponse:
    return JSONResponse(status_code=413, headers={"connection": "close"}, content={
        "error": f"request body is over the limit of {limit} bytes (--max-payload-bytes); "
                 f"send fewer images per request"})


def describe_validation(error: RequestValidationError, limit: int = 5) -> str:
    """FastAPI's validation errors, without the offending input (which may be an image)."""
    parts = []
    for item in error.errors()[:limit]:
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        if item.get("type") == "json_invalid":
            parts.append(f"malformed JSON ({item.get('ctx', {}).get('error', 'decode error')} "
                         f"at character {location})")
        else:
            parts.append(f"{location}: {item.get('msg', 'invalid')}")
    more = len(error.errors()) - limit
    suffix = f" (and {more} more)" if more > 0 else ""
    return ("expected an Open Inference Protocol request {\"inputs\": [{\"name\", \"shape\", "
            "\"datatype\", \"data\"}], \"parameters\": {...}}: " + "; ".join(parts) + suffix)


# -- logs -------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields`."""

    max_message = 2000

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > self.max_message:  # never let a payload into the logs wholesale
            message = message[:self.max_message] + "...(truncated)"
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname, "logger": record.name, "message": message}
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)[-self.max_message:]
        return json.dumps(entry, default=str)


class QuietInvalidInput(logging.Filter):
    """kserve logs every InvalidInput (a 400) at ERROR with a traceback; keep one short
    warning instead: bad input is the caller's problem, not the server's."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kserve.errors import InvalidInput
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, InvalidInput):
            record.msg, record.args, record.exc_info = f"invalid input: {error}", (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for kserve, uvicorn and kubevae; the plain access log is off
    (RequestContextMiddleware writes a structured one)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(QuietInvalidInput())
    logging.captureWarnings(True)  # library warnings become JSON lines too
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "kubevae", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    # kserve's timing middleware logs two lines per request; the access log has the latency.
    if level != "DEBUG":
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
