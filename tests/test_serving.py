"""The real KServe server (`kubevae serve`, a subprocess on free loopback ports), called through
kubevae.client on V1 and V2 REST and through gRPC, checked against the model run in-process."""

import base64
import io
import json
import math
import subprocess
import sys
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import torch
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.rest.v2_datamodels import InferenceResponse, ModelMetadataResponse
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from kubevae.client import Client, ServerError, v1_payload, v2_payload
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.evaluation.bounds import elbo_terms, iwae_nll
from kubevae.model import VAE, load_model, save_model
from serving.grpc_client import GrpcClient, infer_request
from serving.http import binary_request_body
from serving.local import LocalServer

SIZE, LATENT = 28, 4
MAX_BATCH, MAX_PAYLOAD = 16, 256 * 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("served") / "model"
    save_model(out, VAE(ModelConfig(image_size=SIZE, latent_dim=LATENT)), ObjectiveConfig())
    return out


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    args = ["--max-batch-size", str(MAX_BATCH), "--max-payload-bytes", str(MAX_PAYLOAD),
            "--batch-delay-ms", "20"]
    with LocalServer(model_dir, grpc=True, args=args, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def vae(model_dir):
    return load_model(model_dir)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, SIZE, SIZE, 1), dtype=np.uint8)


def unit(images):
    return VAE.to_unit(torch.from_numpy(images))


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_every_operation_matches_the_model_in_process(server, vae, images, protocol):
    with Client(server.url, protocol=protocol) as client, torch.inference_mode():
        assert client.live() and client.ready()
        x = unit(images)

        encoded = client.encode(images)
        mu, logvar = vae.encode(x)
        np.testing.assert_allclose(encoded["mu"], mu.numpy(), atol=1e-4)
        np.testing.assert_allclose(encoded["logvar"], logvar.numpy(), atol=1e-4)
        assert encoded["mu"].dtype == np.float32 and encoded["mu"].shape == (3, LATENT)

        recon = client.reconstruct(images)["image"]
        expected = vae.mean_image(vae.decode(mu)).mul(255).round().permute(0, 2, 3, 1).numpy()
        assert recon.dtype == np.uint8 and recon.shape == images.shape
        assert np.abs(recon.astype(int) - expected.astype(int)).max() <= 1

        sampled = client.generate(n=5, seed=7)
        prior = vae.sample(5, torch.Generator().manual_seed(7)).mul(255).round().permute(0, 2, 3, 1)
        assert sampled["image"].shape == (5, SIZE, SIZE, 1)
        assert np.abs(sampled["image"].astype(int) - prior.numpy().astype(int)).max() <= 1
        z = np.linspace(-2, 2, 2 * LATENT, dtype=np.float32).reshape(2, LATENT)
        decoded = client.generate(latents=z)
        np.testing.assert_allclose(decoded["latent"], z)
        direct = vae.mean_image(vae.decode(torch.from_numpy(z))).mul(255).round().permute(0, 2, 3, 1)
        assert np.abs(decoded["image"].astype(int) - direct.numpy().astype(int)).max() <= 1

        scores = client.score(images, k=8, seed=3)
        generator = torch.Generator().manual_seed(3)
        eps = torch.randn(3, LATENT, generator=generator)
        recon_nll, kl = elbo_terms(vae, x, eps)
        iwae = iwae_nll(vae, x, 8, generator)
        np.testing.assert_allclose(scores["neg_elbo"], (recon_nll + kl).numpy(), rtol=1e-4)
        np.testing.assert_allclose(scores["kl"], kl.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores["iwae_nll"], iwae.numpy(), rtol=1e-4)
        again = client.score(images, k=8, seed=3)
        np.testing.assert_array_equal(again["iwae_nll"], scores["iwae_nll"])

        walk = client.traverse(images[:2], dim=1, steps=5, span=2.0)
        assert walk["image"].shape == (2, 5, SIZE, SIZE, 1) and walk["latent"].shape == (2, 5, LATENT)
        np.testing.assert_allclose(walk["latent"][:, :, 1], np.tile(np.linspace(-2, 2, 5), (2, 1)), atol=1e-6)
        np.testing.assert_allclose(walk["latent"][:, :, 0], np.repeat(mu[:2, :1].numpy(), 5, axis=1), atol=1e-4)
        from_latents = client.traverse(latents=z, dim=0, steps=3)
        assert from_latents["image"].shape == (2, 3, SIZE, SIZE, 1)


def test_v1_png_images_in_and_out(server, images):
    with Client(server.url, protocol="v1", png=True) as client:
        plain = Client(server.url, protocol="v1")
        np.testing.assert_allclose(client.encode(images)["mu"], plain.encode(images)["mu"], atol=1e-6)
        out = client.reconstruct(images)
        assert isinstance(out.raw["predictions"][0]["image"], dict)  # {"b64": PNG}
        np.testing.assert_array_equal(out["image"], plain.reconstruct(images)["image"])
        plain.close()


def test_grpc_inference_and_errors(server, images):
    with Client(server.url) as rest, GrpcClient(server.grpc_target) as client:
        assert client.ready("kubevae")
        response = client.infer_raw(infer_request("kubevae", "encode", images=images, request_id="grpc-1"))
        assert response.id == "grpc-1" and response.model_name == "kubevae"
        outputs = client.infer("kubevae", "encode", images=images)
        np.testing.assert_allclose(outputs["mu"], rest.encode(images)["mu"], atol=1e-6)
        traversed = client.infer("kubevae", "traverse", images=images[:1], dim=2, span=1.5, steps=3)
        np.testing.assert_allclose(traversed["latent"][0, :, 2], [-1.5, 0.0, 1.5], atol=1e-6)
        for op, kwargs, expected in [
            ("nope", {"images": images}, "parameters.op"),
            ("encode", {"images": images[:, :10]}, "expected shape [N, 28, 28, 1]"),
            ("generate", {"latents": np.zeros((2, LATENT + 1))}, "latent_dim = 4"),
        ]:
            with pytest.raises(grpc.RpcError) as error:
                client.infer("kubevae", op, **kwargs)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in error.value.details()
        with pytest.raises(grpc.RpcError) as error:  # over --max-payload-bytes
            client.infer("kubevae", "encode", images=np.zeros((MAX_BATCH, 128, 128, 1), np.uint8))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_v2_responses_follow_the_open_inference_protocol(server, images):
    http = httpx.Client(base_url=server.url)
    body = v2_payload("score", images, request_id="req-42", k=4)
    response = http.post("/v2/models/kubevae/infer", json=body, headers={"x-request-id": "trace-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-1"
    payload = response.json()
    InferenceResponse.model_validate(payload)  # KServe's model of rest_predict_v2.yaml
    assert payload["model_name"] == "kubevae" and payload["id"] == "req-42"
    assert payload["parameters"] == {"op": "score", "iwae_k": 4}
    for output in payload["outputs"]:
        assert set(output) >= {"name", "shape", "datatype", "data"}
        assert output["datatype"] == "FP32" and output["shape"] == [3]
        assert len(output["data"]) == math.prod(output["shape"])
    encoded = http.post("/v2/models/kubevae/infer", json=v2_payload("reconstruct", images)).json()
    (image,) = encoded["outputs"]
    assert image["name"] == "image" and image["datatype"] == "UINT8" and image["shape"] == [3, SIZE, SIZE, 1]
    assert len(image["data"]) == 3 * SIZE * SIZE and encoded["id"]
    # FP32 images in [0, 1] are the same images as UINT8 ones
    as_float = http.post("/v2/models/kubevae/infer", json=v2_payload("encode", images / 255.0)).json()
    as_uint8 = http.post("/v2/models/kubevae/infer", json=v2_payload("encode", images)).json()
    np.testing.assert_allclose(as_float["outputs"][0]["data"], as_uint8["outputs"][0]["data"], atol=1e-4)

    metadata = http.get("/v2/models/kubevae").json()
    ModelMetadataResponse.model_validate(metadata)
    assert metadata["name"] == "kubevae"
    assert {"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 1]} in metadata["inputs"]
    assert {o["name"] for o in metadata["outputs"]} >= {"mu", "logvar", "image", "latent", "neg_elbo", "iwae_nll"}
    http.close()


def test_v2_binary_tensor_extension(server, images):
    """Raw row-major bytes after the JSON part (inference-header-content-length), and binary
    outputs on request (binary_data_output), as kserve implements the extension."""
    body, headers = binary_request_body("encode", images, binary_data_output=True)
    response = httpx.post(f"{server.url}/v2/models/kubevae/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:json_length])
    size = meta["outputs"][0]["parameters"]["binary_data_size"]
    mu = np.frombuffer(response.content[json_length:json_length + size], np.float32).reshape(3, LATENT)
    with Client(server.url) as client:
        np.testing.assert_allclose(mu, client.encode(images)["mu"], atol=1e-6)
    short = httpx.post(f"{server.url}/v2/models/kubevae/infer", content=body[:-1], headers=headers)
    assert short.status_code == 400 and "bytes follow the JSON part" in short.json()["error"]


def test_health_metrics_and_request_ids(server, images):
    http = httpx.Client(base_url=server.url)
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/kubevae/ready").json() == {"name": "kubevae", "ready": True}
    assert http.get("/v1/models/kubevae").json() == {"name": "kubevae", "ready": True}
    v1 = http.post("/v1/models/kubevae:predict", json=v1_payload("encode", images))
    assert v1.json()["id"] == v1.headers["x-request-id"]
    bad = http.post("/v1/models/kubevae:predict", json={"instances": []})
    assert bad.status_code == 400 and bad.headers["x-request-id"]
    assert http.get("/nowhere").headers["x-request-id"]
    metrics = http.get("/metrics").text
    assert 'request_predict_seconds_count{model_name="kubevae"}' in metrics
    assert "kubevae_batch_images_bucket" in metrics
    http.close()


STAGES = ("preprocess", "predict", "postprocess")


def stage_counts(http: httpx.Client) -> dict[str, float]:
    """KServe's request_{stage}_seconds histograms for this model: observations and seconds
    (0 before a histogram's first observation, when it has no line yet)."""
    figures = {f"{stage}_{kind}": 0.0 for stage in STAGES for kind in ("count", "sum")}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            stage = sample.name.removeprefix("request_").split("_seconds_")[0]
            if stage in STAGES and sample.labels.get("model_name") == "kubevae" \
                    and sample.name.endswith(("_count", "_sum")):
                figures[f"{stage}_{sample.name.rsplit('_', 1)[1]}"] = sample.value
    return figures


def test_kserve_times_parsing_inference_and_answering_as_separate_stages(server, images):
    """Parsing is preprocess, the model (with its queue) predict, the response postprocess: a
    malformed request fails in preprocess, so KServe's preprocess histogram counts it and the
    predict and postprocess ones do not; a good request, on any protocol, is counted once by each."""
    http = httpx.Client(base_url=server.url)
    before = stage_counts(http)
    bad = http.post("/v2/models/kubevae/infer", json=v2_payload("encode", images[:, :5]))
    assert bad.status_code == 400 and "expected shape" in bad.json()["error"]
    after_bad = stage_counts(http)
    assert {s: after_bad[f"{s}_count"] - before[f"{s}_count"] for s in STAGES} == \
        {"preprocess": 1, "predict": 0, "postprocess": 0}

    body, headers = binary_request_body("encode", images)
    assert http.post("/v1/models/kubevae:predict", json=v1_payload("encode", images)).status_code == 200
    assert http.post("/v2/models/kubevae/infer", json=v2_payload("encode", images)).status_code == 200
    assert http.post("/v2/models/kubevae/infer", content=body, headers=headers).status_code == 200
    with GrpcClient(server.grpc_target) as client:
        client.infer("kubevae", "encode", images=images)
    after = stage_counts(http)
    assert {s: after[f"{s}_count"] - after_bad[f"{s}_count"] for s in STAGES} == dict.fromkeys(STAGES, 4)
    assert all(after[f"{s}_sum"] > after_bad[f"{s}_sum"] for s in STAGES)
    http.close()


def test_concurrent_requests_are_batched_and_routed_back(server, vae):
    """16 concurrent single-image requests (batch delay 20 ms): each gets its own answer, and
    the batch-size histogram records model calls of more than one image."""
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(16, SIZE, SIZE, 1), dtype=np.uint8)
    results = [None] * len(batch)

    def call(i):
        with Client(server.url) as client:
            results[i] = client.encode(batch[i:i + 1])["mu"][0]

    before = batched_calls(server)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.inference_mode():
        expected, _ = vae.encode(unit(batch))
    np.testing.assert_allclose(np.stack(results), expected.numpy(), atol=1e-4)
    assert batched_calls(server) > before


def batched_calls(server) -> float:
    """Model calls of more than one image so far (encode), from the Prometheus histogram."""
    metrics = httpx.get(f"{server.url}/metrics").text
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("kubevae_batch_images_bucket") and 'op="encode"' in line:
            le = line.split('le="')[1].split('"')[0]
            counts[le] = float(line.rsplit(" ", 1)[1])
    return counts.get("+Inf", 0.0) - counts.get("1.0", 0.0)


def png_b64(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_V1 = [
    ({"instances": []}, "the batch is empty"),
    ({"instances": np.zeros((MAX_BATCH + 1, SIZE, SIZE, 1), int).tolist()}, "over the limit of 16"),
    ({"instances": np.zeros((1, SIZE, SIZE, 3), int).tolist()}, "expected images of shape [28, 28, 1]"),
    ({"instances": np.zeros((1, 14, 14, 1), int).tolist()}, "expected images of shape [28, 28, 1]"),
    ({"instances": np.full((1, SIZE, SIZE, 1), 300).tolist()}, "integers 0..255"),
    ({"instances": np.full((1, SIZE, SIZE, 1), 0.5).tolist()}, "integers 0..255"),
    ({"instances": [[[0]]], "parameters": {"op": "explode"}}, "parameters.op: expected one of"),
    ({"instances": [{"b64": "not base64!"}]}, "not valid base64"),
    ({"instances": [{"b64": base64.b64encode(b"GIF89a....").decode()}]}, "valid PNG"),
    ({"instances": [{"b64": png_b64(np.zeros((32, 32), np.uint8))}]}, "expected a 28x28 PNG"),
    ({"instances": [{"b64": png_b64(np.zeros((SIZE, SIZE, 3), np.uint8))}]}, "mode L"),
    ({"instances": [[0.0] * (LATENT + 1)], "parameters": {"op": "generate"}}, "latent_dim = 4"),
    ({"parameters": {"op": "generate", "n": 0}}, "parameters.n: expected an integer 1..16"),
    ({"instances": [[[0]]], "parameters": {"op": "score", "k": 10**6}}, "parameters.k"),
    ({"instances": [[0.0] * LATENT], "parameters": {"op": "traverse"}}, "parameters.dim: required"),
    ({"instances": [[0.0] * LATENT], "parameters": {"op": "traverse", "dim": LATENT}}, "parameters.dim"),
    ({"instances": [[[0]]], "parameters": {"op": "encode", "k": 3}}, "unknown parameter"),
    ({"instances": [[[0]]], "extra": 1}, "unknown field"),
    ([1, 2, 3], "JSON object"),
    # Each factor within its limit, their product (the work) not: 16 images x k = 128
    ({"instances": np.zeros((MAX_BATCH, SIZE, SIZE, 1), int).tolist(), "parameters": {"op": "score", "k": 128}},
     "2048 decodes, over the limit of 1024"),
    ({"instances": [[[0]]], "parameters": {"op": "score", "k": "\u0663"}}, "parameters.k"),  # Arabic-Indic 3
]


@pytest.mark.parametrize("body,expected", BAD_V1, ids=[e for _, e in BAD_V1])
def test_bad_v1_requests_get_400_with_a_clear_message(server, body, expected):
    response = httpx.post(f"{server.url}/v1/models/kubevae:predict", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def v2_tensor(name="images", datatype="UINT8", shape=(1, SIZE, SIZE, 1), data=None):
    count = math.prod(shape)
    return {"name": name, "datatype": datatype, "shape": list(shape),
            "data": [0] * count if data is None else data}


BAD_V2 = [
    ({"inputs": [v2_tensor(datatype="FP64")]}, "expected datatype UINT8 or FP32"),
    ({"inputs": [v2_tensor(shape=(1, SIZE, SIZE))]}, "expected shape [N, 28, 28, 1]"),
    ({"inputs": [v2_tensor(shape=(1, 32, 32, 1))]}, "expected shape [N, 28, 28, 1]"),
    ({"inputs": [v2_tensor(data=[0] * 10)]}, "needs 784 values, data has 10"),
    ({"inputs": [v2_tensor(data=[256] * 784)]}, "integers 0..255"),
    ({"inputs": [v2_tensor(datatype="FP32", data=[1.5] * 784)]}, "must be in [0, 1]"),
    ({"inputs": [v2_tensor(data=["a"] * 784)]}, "finite numbers"),
    ({"inputs": [v2_tensor(shape=(0, SIZE, SIZE, 1), data=[])]}, "the batch is empty"),
    ({"inputs": [v2_tensor(shape=(MAX_BATCH + 1, SIZE, SIZE, 1))]}, "over the limit of 16"),
    ({"inputs": [v2_tensor()], "parameters": {"op": "unknown"}}, "parameters.op"),
    ({"inputs": [v2_tensor("latents", "FP32", (1, LATENT + 1))], "parameters": {"op": "generate"}},
     "latent_dim = 4"),
    ({"inputs": [v2_tensor("pixels")]}, "inputs[0].name"),
    ({"inputs": [v2_tensor(), v2_tensor()]}, "exactly one input tensor"),
    ({"inputs": []}, "exactly one input tensor"),
    ({"inputs": [{"name": "images"}]}, "expected an Open Inference Protocol request"),
    ({"instances": [[[0]]]}, "expected an Open Inference Protocol request"),
    ({"inputs": [v2_tensor(shape=(1,) * 65)]}, "at most 8 dimensions"),
    ({"inputs": [v2_tensor("latents", "FP32", (1, LATENT))],
      "parameters": {"op": "traverse", "dim": 0, "span": 10**400}}, "parameters.span: expected a number"),
    ({"inputs": [v2_tensor("latents", "FP32", (1, LATENT))],
      "parameters": {"op": "traverse", "dim": 0, "steps": "\u00b2"}}, "parameters.steps"),
    ({"inputs": [v2_tensor(shape=(MAX_BATCH, SIZE, SIZE, 1))], "parameters": {"op": "score", "k": 128}},
     "over the limit of 1024"),
]


@pytest.mark.parametrize("body,expected", BAD_V2, ids=[e for _, e in BAD_V2])
def test_bad_v2_requests_get_400_with_a_clear_message(server, body, expected):
    response = httpx.post(f"{server.url}/v2/models/kubevae/infer", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


@pytest.mark.parametrize("header", [b"\xb2", b"\xb2\xb3", b"1\xb9", "\u0663".encode(), b"9" * 400, b"-1", b"+12"])
def test_malformed_binary_length_headers_get_400(server, header):
    """inference-header-content-length with a non-JSON Content-Type: only ASCII digits are a
    length ("²".isdigit() is True in Python, and int() then raised a 500)."""
    response = httpx.post(f"{server.url}/v2/models/kubevae/infer", content=b'{"inputs": []}',
                          headers={"inference-header-content-length": header,
                                   "content-type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    assert "inference-header-content-length" in response.json()["error"]


def test_grpc_shapes_of_more_than_64_dimensions_are_invalid_argument(server):
    request = pb.ModelInferRequest(model_name="kubevae")
    request.parameters["op"].string_param = "encode"
    request.inputs.add(name="images", datatype="UINT8", shape=[1] * 65)
    request.raw_input_contents.append(b"\0")
    with GrpcClient(server.grpc_target) as client, pytest.raises(grpc.RpcError) as error:
        client.infer_raw(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 8 dimensions" in error.value.details()


def test_the_model_repository_extension_is_refused_by_default(server, images):
    """Anyone who reached the server could unload the model (and nothing brought it back):
    load, unload and index answer 403 / PERMISSION_DENIED unless --enable-model-repository."""
    http = httpx.Client(base_url=server.url)
    for action in ("unload", "load"):
        response = http.post(f"/v2/repository/models/kubevae/{action}")
        assert response.status_code == 403, response.text
        assert "--enable-model-repository" in response.json()["error"]
    with GrpcClient(server.grpc_target) as client:
        for method, message in [("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="kubevae")),
                                ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="kubevae"))]:
            with pytest.raises(grpc.RpcError) as error:
                getattr(client.stub, method)(message, timeout=30)
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert http.get("/v2/models/kubevae/ready").json()["ready"] is True
    assert http.post("/v2/models/kubevae/infer", json=v2_payload("encode", images)).status_code == 200
    http.close()


@pytest.mark.parametrize("path", ["/v1/models/kubevae:predict", "/v2/models/kubevae/infer"])
def test_malformed_json_and_oversized_bodies_are_refused(server, path):
    malformed = httpx.post(server.url + path, content=b'{"instances": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    # V1 bodies are parsed by kserve ("Unrecognized request format: ..."), V2 by FastAPI.
    assert any(m in malformed.json()["error"] for m in ("malformed JSON", "Unrecognized request format"))
    big = b"[" + b"0," * (MAX_PAYLOAD // 2) + b"0]"
    too_big = httpx.post(server.url + path, content=big, headers={"content-type": "application/json"})
    assert too_big.status_code == 413
    assert f"over the limit of {MAX_PAYLOAD} bytes" in too_big.json()["error"]

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        for _ in range(40):
            yield b" " * 8192

    streamed = httpx.post(server.url + path, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_client_raises_server_errors_with_message_and_request_id(server):
    with Client(server.url) as client:
        with pytest.raises(ServerError) as error:
            client.encode(np.zeros((1, 5, 5, 1), np.uint8))
    assert error.value.status == 400 and "expected shape" in error.value.message
    assert error.value.request_id


def test_logs_are_json_lines_without_image_payloads(server):
    marker = png_b64(np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE))
    ok = httpx.post(f"{server.url}/v1/models/kubevae:predict", json={"instances": [{"b64": marker}]})
    bad = httpx.post(f"{server.url}/v1/models/kubevae:predict",
                     json={"instances": [{"b64": marker}], "parameters": {"op": "?"}})
    assert ok.status_code == 200 and bad.status_code == 400
    wanted = {ok.headers["x-request-id"], bad.headers["x-request-id"]}
    deadline = time.monotonic() + 10
    while True:  # the access line is written once the response is sent: it may trail the client
        text = server.log_path.read_text()
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        ids = {e["request_id"]: e for e in entries if e["logger"] == "kubevae.serving.access"}
        if wanted <= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert marker[:40] not in text
    assert ids[ok.headers["x-request-id"]]["op"] == "encode"
    assert ids[bad.headers["x-request-id"]]["status"] == 400


def test_grpc_requests_get_one_log_line_each_with_status_op_and_latency(server, images):
    """gRPC has no HTTP access log: the model writes its line, from the stage that ends the
    request (postprocess when answered, preprocess when the input is bad)."""
    with GrpcClient(server.grpc_target) as client:
        client.infer_raw(infer_request("kubevae", "reconstruct", images=images),
                         metadata=(("x-request-id", "grpc-ok-1"),))
        with pytest.raises(grpc.RpcError):
            client.infer_raw(infer_request("kubevae", "traverse", images=images),  # no dim
                             metadata=(("x-request-id", "grpc-bad-1"),))
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
        grpc_lines = [e for e in lines if e["message"] == "grpc request"
                      and e.get("request_id") in ("grpc-ok-1", "grpc-bad-1")]
        if len(grpc_lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_id = {e["request_id"]: e for e in grpc_lines}
    assert len(grpc_lines) == 2
    ok, bad = by_id["grpc-ok-1"], by_id["grpc-bad-1"]
    assert (ok["status"], ok["op"], ok["items"], ok["protocol"]) == ("OK", "reconstruct", 3, "v2-grpc")
    assert ok["latency_ms"] > 0
    assert bad["status"] == "INVALID_ARGUMENT" and "parameters.dim" in bad["error"]


@pytest.mark.slow
def test_predict_command_writes_scores_and_images(server, tmp_path, images):
    files = []
    for i, image in enumerate(images):
        path = tmp_path / f"in{i}.png"
        Image.fromarray(image[:, :, 0]).save(path)
        files.append(str(path))
    score = subprocess.run([sys.executable, "-m", "kubevae", "predict", "--url", server.url, "--op", "score",
                            "--k", "4", "--images", *files], capture_output=True, text=True, timeout=60)
    assert score.returncode == 0, score.stderr
    lines = [json.loads(line) for line in score.stdout.splitlines()]
    assert [line["item"] for line in lines] == ["in0.png", "in1.png", "in2.png"]
    assert all(math.isfinite(line["iwae_nll"]) for line in lines)
    out = tmp_path / "out"
    recon = subprocess.run([sys.executable, "-m", "kubevae", "predict", "--url", server.url, "--protocol", "v1",
                            "--op", "reconstruct", "--images", *files, "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert recon.returncode == 0, recon.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"in{i}-reconstruct.png" for i in range(3)]
    bad = subprocess.run([sys.executable, "-m", "kubevae", "predict", "--url", server.url, "--op", "traverse",
                          "--images", *files, "--out", str(out), "--dim", "99"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "parameters.dim" in bad.stderr


@pytest.mark.slow
def test_serve_refuses_weights_that_do_not_match_the_config(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "metrics.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["latent_dim"] = LATENT + 2
    (broken / "config.json").write_text(json.dumps(config))
    server = LocalServer(broken, grpc=False, log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match="exited with code"):
        server.start()
    assert "has shape" in (tmp_path / "log").read_text()
