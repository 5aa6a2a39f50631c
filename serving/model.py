"""`VAEModel`: the kserve.Model that serves a kubevae model folder.

It loads model.safetensors and config.json (never a pickle) from a folder (/mnt/models on a
cluster, where KServe's storage initializer puts the InferenceService's storageUri), checks
every tensor's shape against the config, puts the VAE in eval mode and warms every operation
up before it reports ready.

A request goes through KServe's three stages, each timed in its own histogram
(request_preprocess_seconds, request_predict_seconds, request_postprocess_seconds):
    preprocess   V1 (a dict) or V2 (an InferRequest, REST or gRPC) -> a `ParsedRequest`: the
                 validated, decoded tensors (serving.codec); bad input fails here
    predict      the tensors -> output arrays, in a dynamic batch on the model thread
                 (serving.batcher); the time spent queued for the model counts here
    postprocess  the arrays -> a V1 dict or a V2 InferResponse (serving.codec)
The operation is the request parameter "op" (see serving.codec).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from grpc_interceptor.exceptions import GrpcException
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from kubevae.hardware import pick_device
from kubevae.model import CONFIG_FILE, VAE, WEIGHTS_FILE, load_model
from serving.batcher import DynamicBatcher
from serving.codec import ModelSpec, parse_v1, parse_v2, v1_response, v2_response
from serving.config import OPS, ServeConfig
from serving.http import REQUEST_LOG, sane_request_id
from serving.ops import OpRequest, run_batch

log = logging.getLogger("kubevae.serving")


@dataclass
class ParsedRequest:
    """What preprocess hands on: the decoded request, and what the response needs."""

    request: OpRequest
    request_id: str
    v2: InferRequest | None  # the V2 request answered (its id, protocol, binary outputs); None for V1
    # The request's log entry: the HTTP access log's (serving.http), or the gRPC line's own.
    log_fields: dict[str, Any]
    over_http: bool
    started: float


@dataclass
class Prediction:
    """What predict hands on: the request and its output arrays (serving.ops)."""

    parsed: ParsedRequest
    outputs: dict[str, np.ndarray]


class VAEModel(Model):
    def __init__(self, config: ServeConfig):
        super().__init__(config.model_name)
        self.config = config
        self.vae: VAE | None = None
        self.spec: ModelSpec | None = None
        self.batcher: DynamicBatcher | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def load(self) -> bool:
        model_dir = Path(self.config.model_dir)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"{model_dir / name}: not found; expected a kubevae model "
                                        f"folder ({CONFIG_FILE} + {WEIGHTS_FILE})")
        torch.set_num_threads(self.config.threads)
        vae = load_model(model_dir, device=pick_device(self.config.device)).eval()
        cfg = vae.config
        spec = ModelSpec(cfg.image_size, cfg.channels, cfg.latent_dim)
        self.vae, self.spec = vae, spec
        self.batcher = DynamicBatcher(functools.partial(run_batch, vae),
                                      max_images=self.config.batch_max_images,
                                      max_delay_s=self.config.batch_delay_ms / 1000,
                                      model_name=self.name,
                                      max_work=self.config.limits.max_request_work,
                                      max_pending=self.config.max_pending_requests,
                                      timeout_s=self.config.request_timeout_s)
        self.warm_up()
        self.ready = True
        log.info("model ready", extra={"fields": {
            "model_name": self.name, "model_dir": str(model_dir), "image_shape": list(spec.image_shape),
            "latent_dim": spec.latent_dim, "device": str(vae.input_mean.device)}})
        return self.ready

    def warm_up(self) -> None:
        """Run every operation at a few batch sizes, so that the first real requests do not
        pay for lazy initialization (allocator, kernels)."""
        started = time.perf_counter()
        spec, batcher = self.loaded()
        sizes = sorted({1, max(1, self.config.batch_max_images // 2), self.config.batch_max_images})
        for size in sizes[:max(1, self.config.warmup_batches)]:
            images = np.zeros((size, *spec.image_shape), np.uint8)
            latents = np.zeros((size, spec.latent_dim), np.float32)
            for op in ("encode", "reconstruct"):
                batcher.run_now([OpRequest(op, images=images)])
            batcher.run_now([OpRequest("generate", latents=latents)])
        one = np.zeros((1, *spec.image_shape), np.uint8)
        batcher.run_now([OpRequest("score", images=one, params={"k": 2, "seed": 0})])
        batcher.run_now([OpRequest("traverse", images=one,
                                        params={"dim": 0, "steps": 2, "span": 1.0})])
        log.info("warm-up done", extra={"fields": {
            "ops": list(OPS), "batch_sizes": sizes, "ms": round((time.perf_counter() - started) * 1000, 1)}})

    def loaded(self) -> tuple[ModelSpec, DynamicBatcher]:
        """The model's spec and batcher; KServe calls load() before it routes a request here."""
        if self.spec is None or self.batcher is None:
            raise RuntimeError(f"model {self.name!r} used before load()")
        return self.spec, self.batcher

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

    # -- metadata (GET /v2/models/NAME) -------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        spec, _ = self.loaded()
        h, w, c = spec.image_shape
        return [{"name": "images", "datatype": "UINT8", "shape": [-1, h, w, c]},
                {"name": "latents", "datatype": "FP32", "shape": [-1, spec.latent_dim]}]

    def get_output_types(self) -> list[dict]:
        spec, _ = self.loaded()
        h, w, c = spec.image_shape
        d = spec.latent_dim
        return [{"name": "mu", "datatype": "FP32", "shape": [-1, d]},
                {"name": "logvar", "datatype": "FP32", "shape": [-1, d]},
                {"name": "image", "datatype": "UINT8", "shape": [-1, h, w, c]},
                {"name": "latent", "datatype": "FP32", "shape": [-1, d]},
                {"name": "neg_elbo", "datatype": "FP32", "shape": [-1]},
                {"name": "iwae_nll", "datatype": "FP32", "shape": [-1]},
                {"name": "recon_nll", "datatype": "FP32", "shape": [-1]},
                {"name": "kl", "datatype": "FP32", "shape": [-1]}]

    # -- inference: KServe's Model.__call__ runs preprocess -> validate -> predict -> postprocess
    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ParsedRequest:
        started = time.perf_counter()
        entry = REQUEST_LOG.get()
        fields: dict[str, Any] = entry if entry is not None else {}
        request_id = sane_request_id((headers or {}).get("x-request-id"))
        fields.update(request_id=request_id, protocol=protocol_name(payload), op=None)
        try:
            request = self.parse(payload)
        except InvalidInput as error:
            log_failure(fields, error, over_http=entry is not None)
            raise
        fields.update(op=request.op, items=request.size, work=request.work)
        v2 = payload if isinstance(payload, InferRequest) else None
        return ParsedRequest(request, request_id, v2, fields, entry is not None, started)

    def validate(self, payload: Any) -> Any:
        # preprocess validated the request; kserve's own check is for dict payloads
        return payload

    async def predict(self, payload: ParsedRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Prediction:
        try:
            outputs = await self.loaded()[1].submit(payload.request)
        except GrpcException as error:  # refused: overloaded (429) or past its deadline (504)
            log_failure(payload.log_fields, error, payload.over_http)
            raise
        return Prediction(payload, outputs)

    async def postprocess(self, result: Prediction, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        parsed, request = result.parsed, result.parsed.request
        response: dict | InferResponse
        if parsed.v2 is not None:
            response = v2_response(result.outputs, request.op, request.params, self.name, parsed.v2,
                                   parsed.v2.id or parsed.request_id)
        else:
            response = v1_response(result.outputs, request.params, parsed.request_id)
        if not parsed.over_http:  # HTTP requests are logged by serving.http, with their status
            log.info("grpc request", extra={"fields": {
                **parsed.log_fields, "status": "OK",
                "latency_ms": round((time.perf_counter() - parsed.started) * 1000, 3)}})
        return response

    def parse(self, payload: Any) -> OpRequest:
        """The validated request. Whatever goes wrong while parsing is the request's fault (400 /
        INVALID_ARGUMENT), never the server's: an error that serving.codec did not foresee is
        logged with its traceback and still answered as bad input."""
        spec, _ = self.loaded()
        try:
            return parse_v2(payload, spec, self.config.limits) if isinstance(payload, InferRequest) \
                else parse_v1(payload, spec, self.config.limits)
        except InvalidInput:
            raise
        except Exception as error:
            log.warning("unforeseen error while parsing a request", exc_info=True)
            raise InvalidInput(f"the request could not be parsed ({type(error).__name__}); expected "
                               f"an inference request as described in the model's metadata "
                               f"(GET /v2/models/{self.name})") from None


def log_failure(fields: dict[str, Any], error: Exception, over_http: bool) -> None:
    """Note the error in the request's log entry; a gRPC request's line is written here (an
    HTTP one is written by serving.http with its status)."""
    fields["error"] = str(error)
    if not over_http:
        status = error.status_string if isinstance(error, GrpcException) else "INVALID_ARGUMENT"
        log.warning("grpc request", extra={"fields": {**fields, "status": status}})


def protocol_name(payload: Any) -> str:
    if isinstance(payload, InferRequest):
        return "v2-grpc" if payload.from_grpc else "v2-rest"
    return "v1"
