"""The model's three KServe stages in-process: preprocess decodes every protocol to the same
tensors, predict runs them through the dynamic batcher, postprocess writes the protocol's
response; and the binary tensor extension, decoded from its bytes, reads as kserve's own parser
reads it. (On the real server, KServe's per-stage histograms: tests/test_serving.py.)"""

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from kubevae.client import v1_payload, v2_payload
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.model import VAE, save_model
from serving.codec import ModelSpec, parse_v2
from serving.config import Limits, ServeConfig
from serving.grpc_client import infer_request
from serving.http import binary_infer_request, binary_request_body
from serving.model import ParsedRequest, Prediction, VAEModel
from serving.ops import run_batch

SIZE, LATENT = 28, 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("stages") / "model"
    save_model(model_dir, VAE(ModelConfig(image_size=SIZE, latent_dim=LATENT)), ObjectiveConfig())
    served = VAEModel(ServeConfig(model_dir=str(model_dir), batch_max_images=4, warmup_batches=1))
    served.load()
    yield served
    served.stop()


def payloads(images: np.ndarray) -> dict[str, object]:
    """One encode request per protocol, as kserve hands it to the model."""
    body, headers = binary_request_body("encode", images)
    return {
        "v1": v1_payload("encode", images),
        "v2-json": InferRequest.from_inference_request(
            InferenceRequest.model_validate(v2_payload("encode", images)), "kubevae"),
        "v2-binary": binary_infer_request(body, headers["inference-header-content-length"], "kubevae"),
        "v2-grpc": InferRequest.from_grpc(infer_request("kubevae", "encode", images=images)),
    }


async def stages(model: VAEModel, payload: object) -> tuple[ParsedRequest, Prediction, object]:
    headers = {"x-request-id": "req-7"}
    parsed = await model.preprocess(payload, headers)
    prediction = await model.predict(model.validate(parsed), headers)
    return parsed, prediction, await model.postprocess(prediction, headers)


@pytest.mark.parametrize("protocol", ["v1", "v2-json", "v2-binary", "v2-grpc"])
def test_each_stage_does_its_own_part_on_every_protocol(model, protocol):
    images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
    parsed, prediction, response = asyncio.run(stages(model, payloads(images)[protocol]))

    # preprocess: the decoded, validated tensors, nothing computed yet
    assert parsed.request.op == "encode" and parsed.request_id == "req-7"
    assert parsed.request.images.dtype == np.uint8
    np.testing.assert_array_equal(parsed.request.images, images)
    # predict: the model's arrays, as run_batch gives them for this request alone
    expected = run_batch(model.vae, [parsed.request])[0]
    assert set(prediction.outputs) == {"mu", "logvar"}
    np.testing.assert_allclose(prediction.outputs["mu"], expected["mu"], atol=1e-6)
    # postprocess: the protocol's response
    if protocol == "v1":
        assert response["id"] == "req-7" and len(response["predictions"]) == 3
        np.testing.assert_allclose(response["predictions"][1]["mu"], expected["mu"][1], atol=1e-6)
    else:
        assert isinstance(response, InferResponse)
        mu = next(o for o in response.outputs if o.name == "mu")
        np.testing.assert_allclose(mu.as_numpy() if protocol == "v2-grpc" else mu.data,
                                   expected["mu"], atol=1e-6)


def test_bad_input_fails_in_preprocess(model):
    images = np.zeros((1, SIZE, SIZE + 1, 1), np.uint8)
    for payload in payloads(images).values():
        with pytest.raises(InvalidInput, match="expected"):
            asyncio.run(model.preprocess(payload, {}))


def test_binary_inputs_stay_bytes_until_the_codec_reads_them():
    """kserve's InferRequest.from_bytes makes a Python number of every element (what made the
    binary extension slower than JSON); binary_infer_request keeps the bytes."""
    images = np.arange(2 * SIZE * SIZE, dtype=np.uint8).reshape(2, SIZE, SIZE, 1)
    body, headers = binary_request_body("encode", images)
    request = binary_infer_request(body, headers["inference-header-content-length"], "kubevae")
    assert request.inputs[0].data is None and request.inputs[0]._raw_data == images.tobytes()
    with pytest.raises(InvalidInput, match="bytes follow the JSON part"):
        binary_infer_request(body[:-1], headers["inference-header-content-length"], "kubevae")
    with pytest.raises(InvalidInput, match="inference-header-content-length"):
        binary_infer_request(body, None, "kubevae")


@given(count=st.integers(1, 3), as_float=st.booleans(), seed=st.integers(0, 2**32 - 1),
       op=st.sampled_from(["encode", "reconstruct", "score"]), request_id=st.none() | st.text(max_size=8),
       binary_output=st.booleans())
def test_binary_requests_read_as_kserve_reads_them(count, as_float, seed, op, request_id, binary_output):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, SIZE, SIZE, 1), dtype=np.uint8)
    if as_float:
        images = (images / 255.0).astype(np.float32)
    params = {"binary_data_output": True} if binary_output else {}
    body, headers = binary_request_body(op, images, request_id=request_id, **params)
    length = headers["inference-header-content-length"]
    ours = binary_infer_request(body, length, "kubevae")
    kserves = InferRequest.from_bytes(body, int(length), "kubevae")
    assert (ours.id, ours.parameters, ours.use_binary_outputs) == \
        (kserves.id, kserves.parameters, kserves.use_binary_outputs)
    spec, limits = ModelSpec(SIZE, 1, LATENT), Limits()
    parsed, expected = parse_v2(ours, spec, limits), parse_v2(kserves, spec, limits)
    assert (parsed.op, parsed.params) == (expected.op, expected.params)
    assert parsed.images.dtype == expected.images.dtype
    np.testing.assert_array_equal(parsed.images, expected.images)
