"""Fuzzing the real server: well over 1,000 generated malformed requests (hypothesis) on V1,
V2 REST (JSON and the binary tensor extension) and gRPC. Every one must get a 4xx (gRPC:
INVALID_ARGUMENT or another client-error code), never a 5xx, and the server must still be
healthy at the end. The strategies draw huge integers (hundreds of digits), long shapes (past
numpy's 64 dimensions) and non-ASCII digits ("²", "٣") in headers and parameters."""

import base64
import json
import math
import re

import grpc
import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.model import VAE, save_model
from serving.grpc_client import GrpcClient
from serving.local import LocalServer

pytestmark = pytest.mark.slow  # fuzzing a running server: many requests

SIZE, LATENT, MAX_BATCH = 28, 4, 4
SENT = {"http": 0, "grpc": 0}
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLIENT_ERRORS_GRPC = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                      grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("fuzz") / "model"
    save_model(model_dir, VAE(ModelConfig(image_size=SIZE, latent_dim=LATENT)), ObjectiveConfig())
    args = ["--max-batch-size", str(MAX_BATCH), "--max-payload-bytes", "65536", "--max-iwae-k", "8"]
    with LocalServer(model_dir, grpc=True, args=args,
                     log_path=tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


# -- strategies -------------------------------------------------------------------------------
def as_int(text: str) -> int:
    """What the server reads from a numeric string: ASCII digits only."""
    return int(text) if re.fullmatch(r"\s*[+-]?[0-9]{1,20}\s*", text) else -1


huge_integers = st.integers(10**20, 10**400) | st.integers(-10**400, -10**20)
# Unicode decimal digits and superscripts: Python's isdigit() / int() / float() take many of them
unicode_digits = st.text(st.sampled_from("²³¹٣۴߀०১๒０"), min_size=1, max_size=4) \
    | st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | huge_integers
           | st.floats(allow_nan=True) | st.text(max_size=12) | unicode_digits)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=24)
ops = st.sampled_from(["encode", "reconstruct", "generate", "score", "traverse"])
bad_op = st.text(max_size=10).filter(lambda s: s not in {"encode", "reconstruct", "generate", "score", "traverse"})
bad_params = st.one_of(
    st.fixed_dictionaries({"op": bad_op}),
    st.fixed_dictionaries({"op": st.just("score"), "k": st.integers(9, 10**9) | st.integers(-5, 0)
                           | huge_integers
                           # numeric strings are accepted (gRPC clients send them): only bad ones
                           | (st.text(max_size=4) | unicode_digits).filter(lambda t: not 1 <= as_int(t) <= 8)}),
    st.fixed_dictionaries({"op": st.just("traverse"), "dim": st.just(0),
                           "steps": huge_integers | unicode_digits.filter(lambda t: as_int(t) < 0)}),
    st.fixed_dictionaries({"op": st.just("traverse"), "dim": st.just(0), "span": huge_integers}),
    st.fixed_dictionaries({"op": st.just("generate"), "n": huge_integers | unicode_digits.filter(lambda t: as_int(t) < 0),
                           "seed": st.just(0)}),
    st.fixed_dictionaries({"op": st.just("traverse"), "dim": st.integers(LATENT, 10**6) | st.integers(-9, -1)}),
    st.fixed_dictionaries({"op": st.just("traverse")}),  # dim missing
    st.fixed_dictionaries({"op": st.just("generate"), "n": st.integers(MAX_BATCH + 1, 10**6) | st.integers(-3, 0)}),
    st.fixed_dictionaries({"op": ops, "unknown_" + "x": json_values}),
    st.fixed_dictionaries({"op": st.just("traverse"), "dim": st.just(0),
                           "span": st.floats(allow_nan=True).filter(lambda v: not 0 < v <= 10)}),
    json_values.filter(lambda v: v is not None and not isinstance(v, dict)),  # None = no parameters
)
good_image = st.just(np.zeros((SIZE, SIZE, 1), int).tolist())
bad_images = st.one_of(
    st.lists(json_values, max_size=3),                                   # garbage instances
    st.just([]),                                                         # empty batch
    st.just([np.zeros((SIZE, SIZE, 1), int).tolist()] * (MAX_BATCH + 1)),  # over the limit
    st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4)).filter(
        lambda s: s != (SIZE, SIZE, 1)).map(lambda s: [np.zeros(s, int).tolist()]),  # wrong size
    st.integers().filter(lambda v: not 0 <= v <= 255).map(
        lambda v: [np.full((SIZE, SIZE, 1), 0, object).tolist()[:-1] + [[[v]] * SIZE]]),  # range
    st.builds(lambda s: [{"b64": s}], st.text(max_size=40)),             # bad base64 / not PNG
    st.builds(lambda b: [{"b64": base64.b64encode(b).decode()}], st.binary(max_size=64)),
)


@st.composite
def malformed_v1(draw):
    kind = draw(st.sampled_from(["garbage", "bad_params", "bad_instances", "bad_latents"]))
    if kind == "garbage":
        return draw(json_values.filter(lambda v: not (isinstance(v, dict) and "instances" in v)))
    if kind == "bad_params":
        return {"instances": draw(good_image.map(lambda i: [i])), "parameters": draw(bad_params)}
    if kind == "bad_instances":
        return {"instances": draw(bad_images), "parameters": {"op": draw(st.sampled_from(["encode", "reconstruct", "score"]))}}
    dim = draw(st.integers(0, 12).filter(lambda d: d != LATENT))
    return {"instances": [[0.0] * dim], "parameters": {"op": "generate"}}


@st.composite
def malformed_v2(draw):
    """An inference request with one thing (at least) wrong."""
    shape = [1, SIZE, SIZE, 1]
    tensor = {"name": "images", "datatype": "UINT8", "shape": shape, "data": [0] * math.prod(shape)}
    body = {"inputs": [tensor], "parameters": {"op": "encode"}}
    fault = draw(st.sampled_from(["name", "datatype", "shape", "data", "values", "params", "inputs",
                                  "garbage", "field_types", "latents"]))
    if fault == "name":
        tensor["name"] = draw(st.text(max_size=10).filter(lambda s: s not in ("images",)))
    elif fault == "datatype":
        tensor["datatype"] = draw(st.text(max_size=8).filter(lambda s: s.upper() not in ("UINT8", "FP32")))
    elif fault == "shape":
        tensor["shape"] = draw(st.lists(st.integers(-3, 64), max_size=6).filter(lambda s: s != shape)
                               | st.lists(st.integers(0, 2), min_size=9, max_size=80)  # long shapes
                               | st.lists(st.integers(0, 10**30) | huge_integers, min_size=1, max_size=5))
    elif fault == "data":
        tensor["data"] = draw(st.lists(st.integers(0, 255), max_size=50) | st.lists(json_values, max_size=5))
    elif fault == "values":
        value = draw(st.integers().filter(lambda v: not 0 <= v <= 255) | st.floats().filter(lambda v: v != int(v) if math.isfinite(v) else True))
        tensor["data"] = [value] + [0] * (math.prod(shape) - 1)
    elif fault == "params":
        body["parameters"] = draw(bad_params)
    elif fault == "inputs":
        body["inputs"] = draw(st.just([]) | st.just([tensor, tensor]) | st.lists(json_values, max_size=3))
    elif fault == "garbage":
        return draw(json_values)
    elif fault == "field_types":
        key = draw(st.sampled_from(["name", "datatype", "shape", "data"]))
        tensor[key] = draw(json_values.filter(lambda v: not isinstance(v, list) or key != "data"))
        if key == "shape" and tensor[key] == shape:
            tensor[key] = None
    else:
        dim = draw(st.integers(0, 9).filter(lambda d: d != LATENT))
        body = {"inputs": [{"name": "latents", "datatype": "FP32", "shape": [1, dim], "data": [0.0] * dim}],
                "parameters": {"op": "generate"}}
    return body


# Header values as HTTP allows them (visible ASCII): httpx refuses others before sending.
# Or raw bytes: Latin-1 and UTF-8 encodings of non-ASCII digits ("²" is 0xB2 in Latin-1).
random_binary_requests = st.tuples(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8) | st.integers(-10, 10**6).map(str)
    | st.integers(10**20, 10**400).map(str)
    | st.text(st.sampled_from("0123456789²³¹"), min_size=1, max_size=6).map(lambda t: t.encode("latin-1"))
    | unicode_digits.map(lambda t: t.encode("utf-8")),
    st.binary(max_size=280) | json_values.map(lambda v: json.dumps(v).encode()))


@st.composite
def structured_binary_requests(draw):
    """A JSON part with a correct length header, then raw bytes; something is off in the
    tensors (datatype, shape, binary_data_size, byte count) or in the request's fields."""
    shape = draw(st.sampled_from([[1, SIZE, SIZE, 1], [1, LATENT], [2, SIZE, SIZE]])
                 | st.lists(st.integers(0, 30), max_size=4))
    datatype = draw(st.sampled_from(["UINT8", "FP32", "FP16", "INT64", "BYTES", "x"]))
    itemsize = {"FP32": 4, "INT64": 8, "FP16": 2}.get(datatype, 1)
    size = math.prod(shape) * itemsize
    declared = draw(st.just(size) | st.integers(-2, size + 8) | st.none() | st.text(max_size=3))
    actual = draw(st.just(size) | st.integers(0, size + 8))
    name = draw(st.sampled_from(["images", "latents", "other"]))
    params = draw(st.just({"op": "encode"}) | bad_params)
    head = {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": declared}}], "parameters": params}
    if draw(st.booleans()):
        head["id"] = draw(json_values)
    if draw(st.booleans()):
        head["outputs"] = draw(st.lists(json_values, max_size=2))
    raw = json.dumps(head).encode()
    tail = draw(st.binary(min_size=actual, max_size=actual)) if actual <= 512 else bytes(actual)
    maybe_valid = (name == "images" and shape[1:] == [SIZE, SIZE, 1]) and datatype in ("UINT8", "FP32") \
        and declared == size == actual and 1 <= shape[0] <= MAX_BATCH and params == {"op": "encode"} \
        and isinstance(head.get("id"), (str, type(None))) and not head.get("outputs")
    assume(not maybe_valid)
    return str(len(raw)), raw + tail


def post_json(http: httpx.Client, path: str, body) -> httpx.Response:
    """JSON as Python writes it, NaN and Infinity included (httpx's json= refuses them)."""
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def check_client_error(response: httpx.Response) -> None:
    SENT["http"] += 1
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers.get("x-request-id"), (response.status_code, response.text[:300])


# -- the fuzz tests: each asserts how many malformed requests it sent ------------------------
EXAMPLES = 300  # x 4 HTTP tests + 200 gRPC = 1,400 malformed requests


def test_fuzz_v1_predict(http):
    @FUZZ
    @given(body=malformed_v1())
    def run(body):
        check_client_error(post_json(http, "/v1/models/kubevae:predict", body))

    assert sent_by(run) >= EXAMPLES


def test_fuzz_v2_infer_json(http):
    @FUZZ
    @given(body=malformed_v2())
    def run(body):
        response = post_json(http, "/v2/models/kubevae/infer", body)
        check_client_error(response)
        assert response.status_code in (400, 413), response.text[:300]

    assert sent_by(run) >= EXAMPLES


def test_fuzz_raw_bodies(http):
    @FUZZ
    @given(path=st.sampled_from(["/v1/models/kubevae:predict", "/v2/models/kubevae/infer"]),
           body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
           content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", None]))
    def run(path, body, content_type):
        headers = {"content-type": content_type} if content_type else {}
        check_client_error(http.post(path, content=body, headers=headers))

    assert sent_by(run) >= EXAMPLES


def test_fuzz_v2_binary_extension(http):
    """The binary tensor extension: inference-header-content-length + JSON + raw bytes."""
    @FUZZ
    @given(request=random_binary_requests | structured_binary_requests())
    def run(request):
        header, content = request
        response = http.post("/v2/models/kubevae/infer", content=content,
                             headers={"inference-header-content-length": header,
                                      "content-type": "application/octet-stream"})
        check_client_error(response)

    assert sent_by(run) >= EXAMPLES


def test_fuzz_grpc(server):
    client = GrpcClient(server.grpc_target)

    @settings(FUZZ, max_examples=200)
    @given(op=ops | bad_op, datatype=st.sampled_from(["UINT8", "FP32", "FP64", "BYTES", "INT8", ""]) | st.text(max_size=5),
           shape=st.lists(st.integers(-2, 40), max_size=5) | st.lists(st.integers(0, 2), min_size=9, max_size=80)
           | st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=5),
           raw=st.binary(max_size=4096), name=st.sampled_from(["images", "latents", "x"]),
           k=st.none() | st.integers(-2, 10**4) | st.integers(2**40, 2**63 - 1) | unicode_digits)
    def run(op, datatype, shape, raw, name, k):
        request = pb.ModelInferRequest(model_name="kubevae")
        request.parameters["op"].string_param = op
        if isinstance(k, str):
            request.parameters["k"].string_param = k
        elif k is not None:
            request.parameters["k"].int64_param = k
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        itemsize = 4 if datatype == "FP32" else 1
        # Random bytes can form a valid request (e.g. 16 bytes = 4 finite FP32 latents):
        # only the ones that cannot are counted, and must fail.
        maybe_valid = bool(shape) and min(shape) >= 0 and 1 <= shape[0] <= MAX_BATCH \
            and len(raw) == math.prod(shape) * itemsize
        try:
            client.infer_raw(request, timeout=30)
        except grpc.RpcError as error:
            assert error.code() in CLIENT_ERRORS_GRPC, (error.code(), error.details())
        else:
            assert maybe_valid, "a malformed gRPC request was accepted"
        if not maybe_valid:
            SENT["grpc"] += 1

    before = SENT["grpc"]
    run()
    client.channel.close()
    assert SENT["grpc"] - before >= 150


def sent_by(run) -> int:
    before = SENT["http"]
    run()
    return SENT["http"] - before


def test_server_still_healthy_after_fuzzing(server, http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/models/kubevae/ready").json()["ready"] is True
    ok = http.post("/v2/models/kubevae/infer", json={
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "data": [0] * SIZE * SIZE}]})
    assert ok.status_code == 200
    assert server.process.poll() is None
