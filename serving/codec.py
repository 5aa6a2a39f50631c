"""Requests to validated arrays, and results back to V1 / V2 responses.

How a request selects its operation: the request-level parameter "op" (default "encode"),
the same on every protocol:
    V1        POST /v1/models/NAME:predict  {"instances": [...], "parameters": {"op": "score"}}
    V2 REST   POST /v2/models/NAME/infer    {"inputs": [...], "parameters": {"op": "score"}}
    V2 gRPC   ModelInferRequest.parameters["op"].string_param = "score"
Other parameters, all optional: score: k (IWAE samples), seed; generate: n, seed (sample from
the prior instead of decoding given latents); traverse: dim (required), steps, span;
V1 only: image_format ("array" or "png") for image outputs.

Inputs (images are N x H x W x C, row-major, at the model's size and channels):
    V1   instances: images as nested lists of integers 0..255 (H x W x C), or {"b64": PNG};
         for generate (and optionally traverse) latents as lists of D numbers.
    V2   one input tensor: "images" UINT8 [N, H, W, C] (0..255) or FP32 [N, H, W, C] in [0, 1],
         or "latents" FP32 [N, D] (generate, traverse).
Every violation raises kserve's InvalidInput (HTTP 400, gRPC INVALID_ARGUMENT) with a message
saying what was expected; messages never echo the payload.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from kubevae.client import encode_png  # {"b64": PNG}; the pixels: kubevae.images
from serving.config import DEFAULT_OP, OPS, Limits
from serving.ops import OpRequest

IMAGE_OPS = ("encode", "reconstruct", "score")
# Parameters that belong to the protocol, not to an operation (KServe reads them itself).
PROTOCOL_PARAMS = {"binary_data_output", "content_type"}
OP_PARAMS = {
    "encode": set(),
    "reconstruct": {"image_format"},
    "generate": {"n", "seed", "image_format"},
    "score": {"k", "seed"},
    "traverse": {"dim", "steps", "span", "image_format"},
}
IMAGE_FORMATS = ("array", "png")
MAX_SEED = 2**63 - 1
V1_KEYS = {"instances", "parameters", "id"}
# Dimensions of an input tensor: ours have 2 (latents) or 4 (images); numpy stops at 64.
MAX_DIMS = 8
# Parameters sent as strings (gRPC clients often do): ASCII only, since int() and float() also
# read other scripts' digits ("٣" is 3) and a limit on length keeps int() cheap.
_INTEGER_TEXT = re.compile(r"^\s*[+-]?[0-9]{1,20}\s*$")
_NUMBER_TEXT = re.compile(r"^\s*[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?\s*$")


@dataclass(frozen=True)
class ModelSpec:
    """The shapes a served model accepts."""

    image_size: int
    channels: int
    latent_dim: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


# -- parameters -------------------------------------------------------------------------------
def plain_parameters(parameters: Any) -> dict[str, Any]:
    """V2 REST parameters (a dict) or gRPC ones (a map of InferParameter) -> a plain dict."""
    if parameters is None:
        return {}
    if isinstance(parameters, dict):
        return dict(parameters)
    plain = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice") if hasattr(value, "WhichOneof") else None
        plain[key] = getattr(value, choice) if choice else None
    return plain


def parse_params(raw: Any, limits: Limits, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The operation and its validated parameters (defaults filled in)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"parameters: expected a JSON object, got {type(raw).__name__}")
    op = raw.get("op", DEFAULT_OP)
    if op not in OPS:
        raise InvalidInput(f"parameters.op: expected one of {list(OPS)}, got {_short(op)}")
    unknown = sorted(set(raw) - OP_PARAMS[op] - PROTOCOL_PARAMS - {"op"})
    if unknown:
        raise InvalidInput(f"parameters: unknown parameter(s) {[_short(u) for u in unknown]} "
                           f"for op {op!r}; expected some of {sorted(OP_PARAMS[op])}")
    params: dict[str, Any] = {}
    if op in ("score", "generate"):
        params["seed"] = _integer(raw, "seed", 0, 0, MAX_SEED)
    if op == "score":
        params["k"] = _integer(raw, "k", limits.default_iwae_k, 1, limits.max_iwae_k)
    if op == "generate" and "n" in raw:
        params["n"] = _integer(raw, "n", None, 1, limits.max_batch_size)
    if op == "traverse":
        if "dim" not in raw:
            raise InvalidInput(f"parameters.dim: required for op 'traverse', an integer "
                               f"0..{spec.latent_dim - 1} (the latent dimension to vary)")
        params["dim"] = _integer(raw, "dim", None, 0, spec.latent_dim - 1)
        params["steps"] = _integer(raw, "steps", limits.default_traverse_steps, 2,
                                   limits.max_traverse_steps)
        params["span"] = _number(raw, "span", limits.default_traverse_span, 0.0,
                                 limits.max_traverse_span)
    if "image_format" in OP_PARAMS[op]:
        fmt = raw.get("image_format", "array")
        if fmt not in IMAGE_FORMATS:
            raise InvalidInput(f"parameters.image_format: expected one of {list(IMAGE_FORMATS)}, "
                               f"got {_short(fmt)}")
        params["image_format"] = fmt
    return op, params


def _integer(raw: Mapping, name: str, default: Any, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        value = int(value)  # gRPC clients often send every parameter as a string
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"parameters.{name}: expected an integer {low}..{high}, got {_short(value)}")
    return value


def _number(raw: Mapping, name: str, default: float, low: float, high: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        value = float(value)  # gRPC InferParameter has no float field
    # Compared as they are: Python compares an int of any size with a float exactly, while
    # math.isfinite(10**400) or float(10**400) raise OverflowError.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)) or not low < value <= high:
        raise InvalidInput(f"parameters.{name}: expected a number in ({low}, {high}], "
                           f"got {_short(value)}")
    return float(value)


def _short(value: Any, limit: int = 40) -> str:
    """A value for an error message: never a payload, at most `limit` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {value.bit_length()} bits"  # repr() refuses over 4,300 digits
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__})"


def check_work(request: OpRequest, limits: Limits) -> OpRequest:
    """Refuse a request whose work (decoded latents: images x k, images x steps) is over the
    limit, though each factor is within its own."""
    if request.work > limits.max_request_work:
        factors = {"score": f"{request.size} images x k = {request.params.get('k')}",
                   "traverse": f"{request.size} inputs x steps = {request.params.get('steps')}"}
        raise InvalidInput(f"{request.op}: {factors.get(request.op, f'{request.size} items')} is "
                           f"{request.work} decodes, over the limit of {limits.max_request_work} "
                           f"per request (--max-request-work); send fewer images per request")
    return request


# -- V1 ---------------------------------------------------------------------------------------
def parse_v1(body: Any, spec: ModelSpec, limits: Limits) -> OpRequest:
    return check_work(_parse_v1(body, spec, limits), limits)


def _parse_v1(body: Any, spec: ModelSpec, limits: Limits) -> OpRequest:
    if isinstance(body, (bytes, str)):
        # kserve hands over the raw body when Content-Type is not JSON (curl -d sends
        # application/x-www-form-urlencoded): accept it if it is JSON all the same.
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"request body: malformed JSON ({error}); expected "
                               "{\"instances\": [...], \"parameters\": {...}}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"request body: expected a JSON object with \"instances\", "
                           f"got a JSON {type(body).__name__}")
    unknown = sorted(set(body) - V1_KEYS)
    if unknown:
        raise InvalidInput(f"request body: unknown field(s) {[_short(u) for u in unknown]}; "
                           f"expected some of {sorted(V1_KEYS)}")
    op, params = parse_params(body.get("parameters"), limits, spec)
    instances = body.get("instances")
    if op == "generate" and "n" in params:
        if instances is not None:
            raise InvalidInput("generate: give either instances (latents) or parameters.n, not both")
        return OpRequest(op, latents=prior_latents(params, spec), params=params)
    if not isinstance(instances, list):
        raise InvalidInput(f"instances: expected a list of {_v1_expected(op, spec)}, "
                           f"got {_short(instances) if instances is None else type(instances).__name__}")
    _check_count(len(instances), limits, "instances")
    if op == "generate" or (op == "traverse" and _looks_like_latents(instances)):
        return OpRequest(op, latents=v1_latents(instances, spec), params=params)
    return OpRequest(op, images=v1_images(instances, spec), params=params)


def _v1_expected(op: str, spec: ModelSpec) -> str:
    image = (f"images (nested lists {list(spec.image_shape)} of integers 0..255, "
             f"or {{\"b64\": PNG}})")
    latent = f"latents (lists of {spec.latent_dim} numbers)"
    return {"generate": latent, "traverse": f"{image} or {latent}"}.get(op, image)


def _looks_like_latents(instances: list) -> bool:
    first = instances[0]
    return isinstance(first, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in first)


def v1_latents(instances: list, spec: ModelSpec) -> np.ndarray:
    try:
        array = np.asarray(instances, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"instances: expected latents, lists of {spec.latent_dim} numbers "
                           f"each (latent_dim = {spec.latent_dim})") from None
    return check_latents(array, "instances", spec)


def v1_images(instances: list, spec: ModelSpec) -> np.ndarray:
    if all(isinstance(i, dict) for i in instances):
        return np.stack([decode_png(i, f"instances[{n}]", spec) for n, i in enumerate(instances)])
    if any(isinstance(i, dict) for i in instances):
        raise InvalidInput("instances: expected all images as nested lists or all as {\"b64\": PNG}, "
                           "not a mix")
    try:
        array = np.asarray(instances)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"instances: expected images as nested lists of shape "
                           f"{list(spec.image_shape)} (H x W x C), all the same shape") from None
    if array.ndim != 4 or array.shape[1:] != spec.image_shape:
        raise InvalidInput(f"instances: expected images of shape {list(spec.image_shape)} "
                           f"(H x W x C), got shape {list(array.shape[1:])}")
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise InvalidInput("instances: expected pixel values as integers 0..255 "
                           "(send floats in [0, 1] as a V2 FP32 tensor)")
    return array.astype(np.uint8)


def decode_png(instance: dict, where: str, spec: ModelSpec) -> np.ndarray:
    if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
        raise InvalidInput(f"{where}: expected {{\"b64\": \"<base64 PNG>\"}}")
    try:
        data = base64.b64decode(instance["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: b64 is not valid base64") from None
    mode = "L" if spec.channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            # The header alone tells the size: check it before decoding any pixels.
            if image.size != (spec.image_size, spec.image_size):
                raise InvalidInput(f"{where}: expected a {spec.image_size}x{spec.image_size} PNG, "
                                   f"got {image.size[0]}x{image.size[1]}")
            if image.mode != mode:
                raise InvalidInput(f"{where}: expected a PNG of mode {mode} "
                                   f"({spec.channels} channel(s)), got mode {image.mode}")
            pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    except InvalidInput:
        raise
    except Exception:  # PIL raises many types for corrupt files
        raise InvalidInput(f"{where}: b64 does not decode to a valid PNG image") from None
    return pixels.reshape(spec.image_shape)


# -- V2 (REST and gRPC) -----------------------------------------------------------------------
def parse_v2(request: InferRequest, spec: ModelSpec, limits: Limits) -> OpRequest:
    return check_work(_parse_v2(request, spec, limits), limits)


def _parse_v2(request: InferRequest, spec: ModelSpec, limits: Limits) -> OpRequest:
    op, params = parse_params(plain_parameters(request.parameters), limits, spec)
    inputs = request.inputs or []
    if op == "generate" and "n" in params:
        if inputs:
            raise InvalidInput("generate: give either a \"latents\" input or parameters.n, not both")
        return OpRequest(op, latents=prior_latents(params, spec), params=params)
    expected = {"generate": "\"latents\" FP32 [N, D]",
                "traverse": "\"images\" or \"latents\""}.get(op, "\"images\" UINT8 or FP32 [N, H, W, C]")
    if len(inputs) != 1:
        raise InvalidInput(f"inputs: expected exactly one input tensor, {expected}; got {len(inputs)}")
    tensor = inputs[0]
    allowed = {"generate": ("latents",), "traverse": ("images", "latents")}.get(op, ("images",))
    if tensor.name not in allowed:
        raise InvalidInput(f"inputs[0].name: expected {' or '.join(map(repr, allowed))} for op "
                           f"{op!r}, got {_short(tensor.name)}")
    if tensor.name == "latents":
        return OpRequest(op, latents=check_latents(v2_array(tensor, ("FP32",), limits),
                                                   "latents", spec), params=params)
    return OpRequest(op, images=check_v2_images(v2_array(tensor, ("UINT8", "FP32"), limits), spec),
                     params=params)


def v2_array(tensor: Any, datatypes: tuple[str, ...], limits: Limits) -> np.ndarray:
    """An InferInput's data as a numpy array of its declared shape, checked on the way."""
    name = tensor.name
    if tensor.datatype not in datatypes:
        raise InvalidInput(f"{name}: expected datatype {' or '.join(datatypes)}, got {_short(tensor.datatype)}")
    shape = list(tensor.shape)
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{name}: expected a shape of at most {MAX_DIMS} dimensions "
                           f"([N, H, W, C] or [N, D]), got {len(shape)}")
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        raise InvalidInput(f"{name}: expected shape as a list of non-negative integers, got {_short(shape)}")
    _check_count(shape[0], limits, f"{name} (shape[0])")
    count = math.prod(shape)
    dtype = np.uint8 if tensor.datatype == "UINT8" else np.float32
    raw = getattr(tensor, "_raw_data", None)
    if raw is not None:  # binary tensor data (gRPC raw_input_contents, REST binary extension)
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise InvalidInput(f"{name}: raw contents hold {len(raw)} bytes; shape {shape} of "
                               f"{tensor.datatype} needs {count * np.dtype(dtype).itemsize}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{name}: expected data as a flat (row-major) or nested list of "
                           f"numbers") from None
    if values.size != count:
        raise InvalidInput(f"{name}: shape {shape} needs {count} values, data has {values.size}")
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.isfinite(values).all()):
        raise InvalidInput(f"{name}: expected finite numbers of datatype {tensor.datatype}")
    if dtype == np.uint8:
        if values.dtype.kind == "f" and (values != np.round(values)).any():
            raise InvalidInput(f"{name}: UINT8 data must be integers 0..255")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput(f"{name}: UINT8 data must be integers 0..255")
    return values.astype(dtype).reshape(shape)


def check_v2_images(array: np.ndarray, spec: ModelSpec) -> np.ndarray:
    if array.ndim != 4 or array.shape[1:] != spec.image_shape:
        raise InvalidInput(f"images: expected shape [N, {', '.join(map(str, spec.image_shape))}] "
                           f"(N x H x W x C), got {list(array.shape)}")
    # Written so that NaN fails too: raw contents (gRPC) skip the finite check of JSON data.
    if array.dtype == np.float32 and not ((array >= 0.0) & (array <= 1.0)).all():
        raise InvalidInput("images: FP32 pixel values must be in [0, 1], no NaN "
                           "(or send UINT8 0..255)")
    return array


def check_latents(array: np.ndarray, where: str, spec: ModelSpec) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] != spec.latent_dim:
        raise InvalidInput(f"{where}: expected latents of shape [N, {spec.latent_dim}] "
                           f"(latent_dim = {spec.latent_dim}), got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where}: latents must be finite numbers")
    return array.astype(np.float32)


def prior_latents(params: dict[str, Any], spec: ModelSpec) -> np.ndarray:
    """n latents from N(0, I), seeded: the same draw as kubevae.model.VAE.sample."""
    generator = torch.Generator().manual_seed(params["seed"])
    return torch.randn(params["n"], spec.latent_dim, generator=generator).numpy()


def _check_count(count: int, limits: Limits, where: str) -> None:
    if count == 0:
        raise InvalidInput(f"{where}: the batch is empty; expected 1..{limits.max_batch_size} items")
    if count > limits.max_batch_size:
        raise InvalidInput(f"{where}: {count} items is over the limit of {limits.max_batch_size} "
                           f"per request (--max-batch-size); split the batch")


# -- responses --------------------------------------------------------------------------------
DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32"}


def v1_response(result: dict[str, np.ndarray], params: dict[str, Any], request_id: str) -> dict:
    """{"id": ..., "predictions": [one object per item, with one key per output]}."""
    columns = {}
    for name, array in result.items():
        if name == "image" and params.get("image_format") == "png":
            columns[name] = [encode_png(a) if a.ndim == 3 else [encode_png(i) for i in a]
                             for a in array]
        else:
            columns[name] = array.tolist()
    count = len(next(iter(columns.values())))
    return {"id": request_id,
            "predictions": [{name: column[i] for name, column in columns.items()} for i in range(count)]}


def v2_response(result: dict[str, np.ndarray], op: str, params: dict[str, Any], model_name: str,
                request: InferRequest, request_id: str) -> InferResponse:
    outputs = []
    for name, array in result.items():
        array = np.ascontiguousarray(array)
        output = InferOutput(name=name, shape=list(array.shape), datatype=DATATYPES[array.dtype])
        if request.from_grpc:
            # gRPC: raw_output_contents (kserve's to_grpc mishandles numpy data with raw inputs)
            output.set_data_from_numpy(array, binary_data=True)
        else:
            output.data = array  # REST: JSON lists, or binary when binary_data_output is set
        outputs.append(output)
    response_params = {"op": op}
    if op == "score":
        response_params["iwae_k"] = params["k"]
    return InferResponse(response_id=request_id, model_name=model_name, infer_outputs=outputs,
                         parameters=response_params, use_binary_outputs=request.use_binary_outputs)


def new_request_id() -> str:
    return uuid.uuid4().hex
