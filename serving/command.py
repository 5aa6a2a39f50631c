"""Serve a kubevae model with KServe: V1 and V2 (Open Inference Protocol) over HTTP, V2 over gRPC.

Endpoints (NAME = --model-name):
  POST /v1/models/NAME:predict   {"instances": [...], "parameters": {"op": "encode"}}
  POST /v2/models/NAME/infer     {"inputs": [{"name": "images", "datatype": "UINT8",
                                  "shape": [N, H, W, C], "data": [...]}], "parameters": {"op": ...}}
  GET  /v2/models/NAME (metadata), /v2/models/NAME/ready, /v2/health/live, /v2/health/ready,
  GET  /metrics (Prometheus, KServe's own); gRPC GRPCInferenceService on --grpc-port.
  The V2 repository extension (/v2/repository/..., gRPC RepositoryModelLoad/Unload) answers
  403 / PERMISSION_DENIED unless --enable-model-repository is given.
Overload: a request over --max-request-work is a 400; past --max-pending-requests a 429; not
answered within --request-timeout-s a 504 (gRPC: RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED).
The request parameter "op" selects the operation: encode (default), reconstruct, generate,
score, traverse. See serving/codec.py for every parameter, input and output.
"""

from __future__ import annotations

import argparse

from serving.config import Limits, ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, limits = ServeConfig(model_dir="."), Limits()
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="model folder with model.safetensors and config.json "
                             "(/mnt/models on a cluster)")
    parser.add_argument("--http-port", type=int, default=d.http_port, help="HTTP port (V1 and V2 REST)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="gRPC port for the V2 protocol; gRPC is off when not given")
    parser.add_argument("--model-name", default=d.model_name, help="the model's name in the URLs")
    parser.add_argument("--max-batch-size", type=int, default=limits.max_batch_size,
                        help="most images (or latents, or generate n) in one request")
    parser.add_argument("--max-payload-bytes", type=int, default=d.max_payload_bytes,
                        help="largest HTTP request body or gRPC message accepted")
    parser.add_argument("--max-iwae-k", type=int, default=limits.max_iwae_k,
                        help="most importance samples a score request may ask for")
    parser.add_argument("--max-request-work", type=int, default=limits.max_request_work,
                        help="most decodes one request may cost: images x k (score), "
                             "images x steps (traverse), images otherwise")
    parser.add_argument("--max-pending-requests", type=int, default=d.max_pending_requests,
                        help="most requests queued or running at once; more get HTTP 429 "
                             "(set the InferenceService's containerConcurrency to match)")
    parser.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s,
                        help="a request not answered within this gets HTTP 504 / DEADLINE_EXCEEDED")
    parser.add_argument("--enable-model-repository", action="store_true",
                        help="allow the V2 model-repository extension (load, unload, index); "
                             "off: anyone who reaches the server could unload the model")
    parser.add_argument("--batch-max-images", type=int, default=d.batch_max_images,
                        help="dynamic batching: most images merged into one model call")
    parser.add_argument("--batch-delay-ms", type=float, default=d.batch_delay_ms,
                        help="dynamic batching: longest wait for more requests when the model is "
                             "idle (0: batch only what queued while the model was busy)")
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads for the model (leave a core for the HTTP loop)")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (JSON lines on stderr)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model_dir=args.model, model_name=args.model_name, http_port=args.http_port,
        grpc_port=args.grpc_port,
        limits=Limits(max_batch_size=args.max_batch_size, max_iwae_k=args.max_iwae_k,
                      default_iwae_k=min(Limits().default_iwae_k, args.max_iwae_k),
                      max_request_work=args.max_request_work),
        max_payload_bytes=args.max_payload_bytes, batch_max_images=args.batch_max_images,
        max_pending_requests=args.max_pending_requests, request_timeout_s=args.request_timeout_s,
        enable_model_repository=args.enable_model_repository,
        batch_delay_ms=args.batch_delay_ms, device=args.device, threads=args.threads,
        log_level=args.log_level)


def run(args: argparse.Namespace) -> int:
    from serving.server import build  # kserve is imported only when serving
    model, server = build(config_from_args(args))  # a bad model folder or flag: kubevae.cli says which
    server.start([model])
    return 0
