"""The refusals the server makes besides bad input (kserve's InvalidInput: 400 / INVALID_ARGUMENT).

Each is a grpc_interceptor GrpcException, so that kserve's gRPC interceptor answers it with its
own status code; `install_handlers` gives the REST app the matching HTTP status:
    RepositoryDisabled  403  PERMISSION_DENIED   the model-repository extension is off
    Overloaded          429  RESOURCE_EXHAUSTED  too many requests in the server (Retry-After)
    DeadlineExceeded    504  DEADLINE_EXCEEDED   not answered within --request-timeout-s
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException

HTTP_STATUS = {StatusCode.PERMISSION_DENIED: 403, StatusCode.RESOURCE_EXHAUSTED: 429,
               StatusCode.DEADLINE_EXCEEDED: 504}


class RepositoryDisabled(GrpcException):
    status_code = StatusCode.PERMISSION_DENIED
    details = ("the model-repository extension (load, unload, index) is disabled on this server; "
               "start it with --enable-model-repository to allow it")


class Overloaded(GrpcException):
    status_code = StatusCode.RESOURCE_EXHAUSTED
    retry_after_s = 1


class DeadlineExceeded(GrpcException):
    status_code = StatusCode.DEADLINE_EXCEEDED


def install_handlers(app: FastAPI) -> None:
    async def refused(_request: Any, error: Exception) -> JSONResponse:
        if not isinstance(error, GrpcException):  # registered for its subclasses only
            raise error
        headers = {"retry-after": str(error.retry_after_s)} if isinstance(error, Overloaded) else None
        return JSONResponse(status_code=HTTP_STATUS.get(error.status_code, 500),
                            content={"error": error.details}, headers=headers)

    for kind in (RepositoryDisabled, Overloaded, DeadlineExceeded):
        app.add_exception_handler(kind, refused)
