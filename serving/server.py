"""Start kserve.ModelServer (HTTP V1 + V2, optional gRPC V2) with a VAEModel."""

from __future__ import annotations

import gc
from typing import Any

from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from serving.config import ServeConfig
from serving.errors import RepositoryDisabled
from serving.http import binary_infer_request, configure_logging, install
from serving.model import VAEModel

# Responses can be larger than requests (generate: n images from a few numbers).
MIN_GRPC_SEND_BYTES = 64 * 2**20


def build(config: ServeConfig):
    """The loaded, warmed-up model and a ModelServer ready to start()."""
    configure_logging(config.log_level)
    model = VAEModel(config)
    model.load()
    # Everything alive now (torch, kserve, the model) lives as long as the process: take it out
    # of the cyclic collector's scans, which otherwise run every few hundred allocations and
    # cost milliseconds per request (a V1 image is ~4,000 small JSON lists).
    gc.collect()
    gc.freeze()
    # kserve reads its gRPC options from its own module-level flags (kserve.model_server.args),
    # and serves the module-level FastAPI app: both are set here, before start().
    import kserve.model_server as kserve_server
    kserve_server.args.grpc_max_receive_message_length = config.max_payload_bytes
    kserve_server.args.grpc_max_send_message_length = max(MIN_GRPC_SEND_BYTES,
                                                          config.max_payload_bytes)
    install(kserve_server.app, config.max_payload_bytes)
    server = kserve_server.ModelServer(
        http_port=config.http_port,
        grpc_port=config.grpc_port or 0,
        enable_grpc=config.grpc_port is not None,
        workers=1,  # one process: one model, one dynamic batcher
        enable_docs_url=False,
        enable_latency_logging=False,  # the JSON access log carries the latency
    )
    # Before start(), which hands the data plane to the REST and gRPC servers.
    server.dataplane = RawTensorDataPlane(model_registry=server.registered_models)
    if not config.enable_model_repository:
        # Both the REST routes (/v2/repository/models/NAME/load|unload) and the gRPC methods
        # (RepositoryModelLoad|Unload) call this one object: replacing it closes both.
        server.model_repository_extension = DisabledRepository()
    return model, server


class RawTensorDataPlane(DataPlane):
    """kserve's data plane, but V2 REST bodies in the binary tensor extension keep their tensors
    as bytes (serving.http.binary_infer_request) instead of becoming lists of Python numbers."""

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> Any:
        if isinstance(body, bytes):
            return binary_infer_request(body, headers.get(INFERENCE_CONTENT_LENGTH_HEADER), model_name)
        return super().decode_inference_request(body, headers, model_name)


class DisabledRepository(ModelRepositoryExtension):
    """The V2 model-repository extension, refused: an unloaded model stays gone (the REST
    load route cannot reload a custom model), so only an explicit setting may enable it."""

    def __init__(self) -> None:
        pass

    async def index(self, filter_ready: bool | None = False) -> list[dict[str, str]]:
        raise RepositoryDisabled()

    async def load(self, model_name: str) -> None:
        raise RepositoryDisabled()

    async def unload(self, model_name: str) -> None:
        raise RepositoryDisabled()


def serve(config: ServeConfig) -> None:
    model, server = build(config)
    server.start([model])
