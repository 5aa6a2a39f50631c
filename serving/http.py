"""HTTP guards around the FastAPI app that kserve.ModelServer builds, and JSON logs.

- Request bodies over `max_payload_bytes` are refused with HTTP 413 before they are read in
  full: at once when Content-Length says so, else as the bytes stream in (Starlette's
  RequestBodyLimitMiddleware).
- Every response carries an `x-request-id` header: the caller's, when it is a sane token, or a
  new one; the model sees the same id in its request headers and puts it in the body.
- Request-validation errors (FastAPI's 422, e.g. a V2 body that is not an inference request)
  become HTTP 400 with a short message that never echoes the input.
- One JSON log line per HTTP request (method, path, status, latency, request id, and op and
  item count for inferences); never any image data.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from serving.codec import new_request_id

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The per-request log entry; the model adds op and items to it.
REQUEST_LOG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kubevae_request_log", default=None)
log = logging.getLogger("kubevae.serving")
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

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = next((v for k, v in headers if k == b"content-length"), None)
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await too_large(self.max_body_bytes)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_LOG.reset(token)
            entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            level = logging.WARNING if (entry["status"] or 500) >= 400 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, "http request", extra={"fields": entry})


def install(app: FastAPI, max_payload_bytes: int) -> None:
    """Add the guards to kserve's app. Call before ModelServer.start(): the middleware stack
    is built on the first request, after kserve has added its own routes and handlers."""
    # Starlette's limiter counts streamed bytes; RequestContextMiddleware, outside it, refuses a
    # too-large Content-Length up front (with a JSON message and the request id).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_payload_bytes)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_payload_bytes)

    async def validation_error(_request: Any, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": describe_validation(error)})

    async def http_error(_request: Any, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 413:
            return too_large(max_payload_bytes)
        return JSONResponse(status_code=error.status_code, content={"error": str(error.detail)},
                            headers=getattr(error, "headers", None))

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


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
