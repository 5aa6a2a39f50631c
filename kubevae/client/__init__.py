"""kubevae.client: call a served kubevae model over V1 or V2 (Open Inference Protocol) REST.

    from kubevae.client import Client
    with Client("http://127.0.0.1:8080", model_name="kubevae", protocol="v2") as client:
        client.ready()                              # True once the model is loaded and warm
        enc = client.encode(images)                 # images: uint8 N x H x W x C (or float [0, 1])
        enc["mu"], enc["logvar"]                    # float32 N x D each
        client.reconstruct(images)["image"]         # uint8 N x H x W x C
        client.generate(n=8, seed=0)["image"]       # or client.generate(latents=z)
        client.score(images, k=16, seed=0)["iwae_nll"]   # also neg_elbo, recon_nll, kl
        client.traverse(images, dim=0, steps=7)["image"] # uint8 N x S x H x W x C

Behind the Kubeflow gateway, give the gateway's URL and the InferenceService's host name:
    Client("http://GATEWAY", model_name="kubevae", host="kubevae.NAMESPACE.example.com",
           headers={"Cookie": "authservice_session=..."})

The operation travels as the request parameter "op" on both protocols (see serving/codec.py).
This module uses httpx, numpy and kubevae.images (no torch): the core library never imports kserve.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kubevae.images import from_png, png_bytes, to_uint8

PROTOCOLS = ("v1", "v2")
IMAGE_OUTPUTS = ("image",)


class ServerError(RuntimeError):
    """A non-2xx answer: the HTTP status, the server's message and the request id."""

    def __init__(self, status: int, message: str, request_id: str | None):
        super().__init__(f"HTTP {status}: {message} (request id {request_id})")
        self.status, self.message, self.request_id = status, message, request_id


@dataclass
class Prediction:
    """The outputs of one request by name (numpy arrays, first axis = item) and its id."""

    outputs: dict[str, np.ndarray]
    request_id: str
    model_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.outputs


# -- payloads (also used by benchmarks/serving.py) --------------------------------------------
def request_params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, **{k: v for k, v in params.items() if v is not None}}


def v1_payload(op: str, images: np.ndarray | None = None, latents: np.ndarray | None = None,
               *, png: bool = False, **params: Any) -> dict[str, Any]:
    """{"instances": [...], "parameters": {"op": ...}}; images as nested lists of 0..255
    integers, or as {"b64": PNG} when png=True."""
    body: dict[str, Any] = {"parameters": request_params(op, params)}
    if images is not None:
        images = to_uint8(images)
        body["instances"] = [encode_png(i) for i in images] if png else images.tolist()
    elif latents is not None:
        body["instances"] = np.asarray(latents, np.float32).tolist()
    return body


def v2_payload(op: str, images: np.ndarray | None = None, latents: np.ndarray | None = None,
               *, request_id: str | None = None, **params: Any) -> dict[str, Any]:
    """An Open Inference Protocol request: one tensor "images" (UINT8, or FP32 in [0, 1]) or
    "latents" (FP32), row-major data, and the op in the request-level parameters."""
    body: dict[str, Any] = {"parameters": request_params(op, params), "inputs": []}
    if request_id:
        body["id"] = request_id
    if images is not None:
        images = np.asarray(images)
        datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
        body["inputs"].append(tensor("images", images.astype(np.uint8 if datatype == "UINT8" else np.float32),
                                     datatype))
    elif latents is not None:
        body["inputs"].append(tensor("latents", np.asarray(latents, np.float32), "FP32"))
    return body


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "data": array.ravel().tolist()}


def decode_v2(body: dict[str, Any]) -> Prediction:
    dtypes = {"UINT8": np.uint8, "FP32": np.float32}
    outputs = {o["name"]: np.asarray(o["data"], dtype=dtypes.get(o["datatype"], np.float32))
               .reshape(o["shape"]) for o in body["outputs"]}
    return Prediction(outputs, body.get("id", ""), body.get("model_name"), body)


def decode_v1(body: dict[str, Any]) -> Prediction:
    predictions = body["predictions"]
    names = list(predictions[0]) if predictions else []
    outputs = {}
    for name in names:
        column = [p[name] for p in predictions]
        if name in IMAGE_OUTPUTS:
            outputs[name] = np.asarray([decode_png_tree(c) for c in column], np.uint8)
        else:
            outputs[name] = np.asarray(column, np.float32)
    return Prediction(outputs, body.get("id", ""), None, body)


def decode_png_tree(value: Any) -> Any:
    """{"b64": PNG} -> uint8 H x W x C; lists of them recursively; arrays pass through."""
    if isinstance(value, dict):
        return decode_png(value["b64"])
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [decode_png_tree(v) for v in value]
    return value


# -- images (the conversions themselves: kubevae.images) -------------------------------------
def encode_png(image: np.ndarray) -> dict[str, str]:
    """uint8 H x W x C -> {"b64": base64 PNG}, as V1 carries images."""
    return {"b64": base64.b64encode(png_bytes(image)).decode("ascii")}


def decode_png(b64: str) -> np.ndarray:
    return from_png(base64.b64decode(b64))


def load_images(paths: Iterable[str | Path], channels: int | None = None) -> np.ndarray:
    """Image files -> uint8 N x H x W x C. With `channels` (1 or 3) each file is converted to
    grayscale or RGB; no resizing: the server says when the size is wrong."""
    from PIL import Image
    arrays = []
    for path in paths:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB") if channels is not None else opened
            array = np.asarray(image, dtype=np.uint8)
        arrays.append(array[:, :, None] if array.ndim == 2 else array)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images: expected one size for all files, got {sorted(shapes)}")
    return np.stack(arrays)


def save_png(path: str | Path, image: np.ndarray) -> None:
    from kubevae.storage import atomic_write_bytes
    atomic_write_bytes(path, png_bytes(image))


# -- the client -------------------------------------------------------------------------------
class Client:
    def __init__(self, url: str, model_name: str = "kubevae", *, protocol: str = "v2",
                 host: str | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 60.0, png: bool = False,
                 transport: httpx.BaseTransport | None = None):
        """url: the server (http://127.0.0.1:8080) or the Kubeflow/Istio gateway;
        host: the InferenceService's host name, sent as the Host header behind a gateway;
        png: send V1 images as base64 PNG instead of nested lists."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        self.model_name, self.protocol, self.png = model_name, protocol, png
        all_headers = dict(headers or {})
        if host:
            all_headers["Host"] = host
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=all_headers, timeout=timeout,
                                 transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- health and metadata
    def live(self) -> bool:
        return self._get("/v2/health/live").get("live") is True

    def ready(self) -> bool:
        """The model is loaded, warmed up and answering."""
        try:
            return self._get(f"/v2/models/{self.model_name}/ready").get("ready") is True
        except (ServerError, httpx.TransportError):
            return False

    def metadata(self) -> dict[str, Any]:
        return self._get(f"/v2/models/{self.model_name}")

    def image_shape(self) -> tuple[int, int, int]:
        images = next(i for i in self.metadata()["inputs"] if i["name"] == "images")
        return tuple(images["shape"][1:])

    # -- operations
    def encode(self, images: np.ndarray) -> Prediction:
        return self.infer("encode", images=images)

    def reconstruct(self, images: np.ndarray) -> Prediction:
        return self.infer("reconstruct", images=images)

    def generate(self, latents: np.ndarray | None = None, *, n: int | None = None,
                 seed: int | None = None) -> Prediction:
        if (latents is None) == (n is None):
            raise ValueError("generate: give latents or n, not both")
        return self.infer("generate", latents=latents, n=n, seed=seed)

    def score(self, images: np.ndarray, *, k: int | None = None, seed: int | None = None) -> Prediction:
        return self.infer("score", images=images, k=k, seed=seed)

    def traverse(self, images: np.ndarray | None = None, *, latents: np.ndarray | None = None,
                 dim: int, steps: int | None = None, span: float | None = None) -> Prediction:
        return self.infer("traverse", images=images, latents=latents, dim=dim, steps=steps, span=span)

    def infer(self, op: str, *, images: np.ndarray | None = None, latents: np.ndarray | None = None,
              request_id: str | None = None, **params: Any) -> Prediction:
        headers = {"x-request-id": request_id} if request_id else {}
        if self.protocol == "v1":
            if self.png and op in ("reconstruct", "generate", "traverse"):
                params.setdefault("image_format", "png")  # images come back as PNG too
            body = v1_payload(op, images, latents, png=self.png, **params)
            return decode_v1(self._post(f"/v1/models/{self.model_name}:predict", body, headers))
        body = v2_payload(op, images, latents, request_id=request_id, **params)
        return decode_v2(self._post(f"/v2/models/{self.model_name}/infer", body, headers))

    # -- transport
    def _get(self, path: str) -> dict[str, Any]:
        return self._check(self.http.get(path))

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return self._check(self.http.post(path, json=body, headers=headers))

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        request_id = response.headers.get("x-request-id")
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            raise ServerError(response.status_code, str(message)[:2000], request_id)
        body = response.json()
        if isinstance(body, dict) and not body.get("id") and request_id:
            body["id"] = request_id
        return body
