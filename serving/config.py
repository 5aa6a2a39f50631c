"""The server's settings, in one typed place (the `kubevae serve` flags map onto it)."""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("encode", "reconstruct", "generate", "score", "traverse")
DEFAULT_OP = "encode"


@dataclass
class Limits:
    """What one request may ask for; anything beyond gets HTTP 400 / INVALID_ARGUMENT."""

    # Images (or latents) in one request, and n for generate.
    max_batch_size: int = 64
    # Importance samples for the IWAE bound of `score`.
    max_iwae_k: int = 256
    default_iwae_k: int = 16
    # Images along one latent dimension for `traverse`.
    max_traverse_steps: int = 32
    default_traverse_steps: int = 7
    max_traverse_span: float = 10.0
    default_traverse_span: float = 3.0
    # The work of one request, in decoded latents: images x k for score, images x steps for
    # traverse, the image count otherwise. Each factor alone is bounded above; their product is
    # what the model thread spends, and what a cheap request queued behind it waits for.
    # The default admits a full batch at the default k (64 x 16) and at the default steps.
    max_request_work: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_iwae_k", "max_traverse_steps", "max_request_work"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not 1 <= self.default_iwae_k <= self.max_iwae_k:
            raise ValueError(f"default_iwae_k: expected 1..{self.max_iwae_k}, got {self.default_iwae_k}")


@dataclass
class ServeConfig:
    model_dir: str
    model_name: str = "kubevae"
    http_port: int = 8080
    # gRPC (Open Inference Protocol) is served only when a port is given.
    grpc_port: int | None = None
    limits: Limits = None  # type: ignore[assignment]
    # Request bodies (HTTP) and messages (gRPC) larger than this are refused.
    max_payload_bytes: int = 16 * 2**20
    # Dynamic batching: concurrent compatible requests are merged into one model call of at
    # most `batch_max_images` images, waiting at most `batch_delay_ms` for company.
    batch_max_images: int = 32
    batch_delay_ms: float = 0.0
    # Admission: requests in the server at once (queued or running); the next one gets HTTP 429
    # / RESOURCE_EXHAUSTED. The InferenceService's containerConcurrency is set to the same
    # number, so that Knative queues (or scales out) instead of sending more.
    max_pending_requests: int = 16
    # A request not answered within this many seconds gets HTTP 504 / DEADLINE_EXCEEDED; if it
    # has not started by then it is dropped from the queue unrun.
    request_timeout_s: float = 30.0
    # The V2 model-repository extension (load, unload, index; REST and gRPC) lets a caller
    # unload the served model: refused (403 / PERMISSION_DENIED) unless enabled here.
    enable_model_repository: bool = False
    device: str = "cpu"
    # torch intra-op threads for the model; the event loop (HTTP, JSON) needs a core too.
    threads: int = 1
    warmup_batches: int = 3
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = Limits()
        if self.max_payload_bytes < 1024:
            raise ValueError(f"max_payload_bytes: expected at least 1024, got {self.max_payload_bytes}")
        if self.batch_max_images < 1:
            raise ValueError(f"batch_max_images: expected a positive integer, got {self.batch_max_images}")
        if self.batch_delay_ms < 0:
            raise ValueError(f"batch_delay_ms: expected a number >= 0, got {self.batch_delay_ms}")
        if self.max_pending_requests < 1:
            raise ValueError(f"max_pending_requests: expected a positive integer, got {self.max_pending_requests}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s: expected a number > 0, got {self.request_timeout_s}")
        if self.threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {self.threads}")
