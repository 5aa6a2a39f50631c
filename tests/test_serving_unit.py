"""Serving parts without the server: request checks on the gRPC raw-bytes path, results that do
not depend on what a request was batched with, and the dynamic batcher's grouping."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferRequest

from kubevae.config import ModelConfig
from kubevae.model import VAE
from serving.batcher import DynamicBatcher
from serving.codec import ModelSpec, parse_params, parse_v1, parse_v2, plain_parameters, prior_latents
from serving.config import Limits
from serving.grpc_client import infer_request
from serving.http import binary_request_error
from serving.ops import OpRequest, run_batch

SIZE, LATENT = 28, 4
SPEC = ModelSpec(SIZE, 1, LATENT)


def grpc_request(op, **kwargs) -> InferRequest:
    """What kserve's gRPC servicer hands the model: raw_input_contents, not JSON data."""
    return InferRequest.from_grpc(infer_request("kubevae", op, **kwargs))


@pytest.mark.parametrize("value", [np.nan, -0.5, 1.5, np.inf])
def test_grpc_raw_fp32_images_outside_0_1_or_nan_are_refused(value):
    images = np.full((1, SIZE, SIZE, 1), 0.5, np.float32)
    images[0, 3, 4, 0] = value
    with pytest.raises(InvalidInput, match=r"FP32 pixel values must be in \[0, 1\]"):
        parse_v2(grpc_request("encode", images=images), SPEC, Limits())


def test_grpc_raw_latents_must_be_finite_and_of_the_model_dimension():
    with pytest.raises(InvalidInput, match="finite"):
        parse_v2(grpc_request("generate", latents=np.full((2, LATENT), np.nan, np.float32)), SPEC, Limits())
    with pytest.raises(InvalidInput, match=f"latent_dim = {LATENT}"):
        parse_v2(grpc_request("generate", latents=np.zeros((2, LATENT + 1), np.float32)), SPEC, Limits())
    parsed = parse_v2(grpc_request("generate", latents=np.ones((2, LATENT), np.float32)), SPEC, Limits())
    assert parsed.latents.shape == (2, LATENT) and parsed.latents.dtype == np.float32


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(image_size=SIZE, latent_dim=LATENT)).eval()


@pytest.mark.parametrize("op,params", [("encode", {}), ("reconstruct", {}),
                                        ("score", {"k": 4, "seed": 11})])
def test_a_result_does_not_depend_on_the_requests_it_was_batched_with(vae, op, params):
    rng = np.random.default_rng(0)
    mine = OpRequest(op, images=rng.integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8), params=params)
    others = [OpRequest(op, images=rng.integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8),
                        params={**params, "seed": 99 + n} if "seed" in params else params)
              for n in (3, 1)]
    (alone,) = run_batch(vae, [mine])
    batched = run_batch(vae, [others[0], mine, others[1]])
    assert [len(r[next(iter(r))]) for r in batched] == [3, 2, 1]
    for name, value in alone.items():
        # uint8 images may round one step apart: batch size can change float summation order
        tolerance = {"atol": 1} if value.dtype == np.uint8 else {"rtol": 1e-5, "atol": 1e-4}
        np.testing.assert_allclose(batched[1][name].astype(float), value.astype(float), **tolerance)


def test_generate_batches_latents_and_returns_them_per_request(vae):
    first = OpRequest("generate", latents=np.zeros((1, LATENT), np.float32))
    second = OpRequest("generate", latents=np.full((2, LATENT), 2.0, np.float32))
    results = run_batch(vae, [first, second])
    np.testing.assert_array_equal(results[1]["latent"], second.latents)
    assert results[0]["image"].shape == (1, SIZE, SIZE, 1) and results[1]["image"].dtype == np.uint8
    assert not np.array_equal(results[1]["image"][0], results[0]["image"][0])


class RecordingModel:
    """A stand-in model call that records its batches, takes a little time, and fails on
    request: the batcher's grouping is what is under test here."""

    def __init__(self, seconds: float = 0.02):
        self.seconds, self.batches, self.threads = seconds, [], set()

    def __call__(self, requests):
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.params["tag"] for r in requests])
        time.sleep(self.seconds)
        if any(r.params.get("fail") for r in requests):
            raise RuntimeError("model failure")
        return [{"tag": np.full(r.size, r.params["tag"])} for r in requests]


def tagged(op, tag, size=1, **params):
    return OpRequest(op, images=np.zeros((size, SIZE, SIZE, 1), np.uint8), params={"tag": tag, **params})


def test_concurrent_requests_share_model_calls_up_to_the_limit_and_get_their_own_results():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_images=4, max_delay_s=0.0)
        try:
            return await asyncio.gather(*(batcher.submit(tagged("encode", i)) for i in range(10)))
        finally:
            batcher.close()

    results = asyncio.run(scenario())
    assert [int(r["tag"][0]) for r in results] == list(range(10))
    assert sorted(t for batch in model.batches for t in batch) == list(range(10))
    assert max(len(b) for b in model.batches) == 4  # merged while the model was busy, never more
    assert len(model.batches) <= 5
    assert all(name.startswith("kubevae-model") for name in model.threads)


def test_requests_with_different_keys_never_share_a_call_and_a_failure_stays_in_its_batch():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_images=8, max_delay_s=0.01)
        try:
            calls = [batcher.submit(tagged("encode", 0)), batcher.submit(tagged("score", 1, k=4)),
                     batcher.submit(tagged("score", 2, k=8)), batcher.submit(tagged("encode", 3)),
                     batcher.submit(tagged("reconstruct", 4, fail=True))]
            results = await asyncio.gather(*calls, return_exceptions=True)
            after = await batcher.submit(tagged("reconstruct", 5))  # still serving
            return results, after
        finally:
            batcher.close()

    results, after = asyncio.run(scenario())
    assert isinstance(results[4], RuntimeError)
    assert [int(r["tag"][0]) for r in results[:4]] == [0, 1, 2, 3]
    assert int(after["tag"][0]) == 5
    groups = {tuple(sorted(b)) for b in model.batches}
    assert (0, 3) in groups  # the two encodes waited for each other (10 ms delay)
    assert all(not ({1, 2} <= set(b)) for b in model.batches)  # score k=4 and k=8 stay apart


def test_a_request_larger_than_the_batch_limit_runs_alone():
    model = RecordingModel(seconds=0.0)

    async def scenario():
        batcher = DynamicBatcher(model, max_images=2, max_delay_s=0.0)
        try:
            return await asyncio.gather(batcher.submit(tagged("encode", 0, size=5)),
                                        batcher.submit(tagged("encode", 1, size=1)))
        finally:
            batcher.close()

    big, small = asyncio.run(scenario())
    assert big["tag"].tolist() == [0] * 5 and small["tag"].tolist() == [1]
    assert [0] in model.batches and [1] in model.batches


def test_client_behind_a_gateway_sends_the_host_header_and_extra_headers_on_every_call():
    """kubevae.client against an InferenceService behind the Kubeflow (Istio) gateway: the
    gateway routes on the Host header, so every request must carry it."""
    import httpx

    from kubevae.client import Client

    seen = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/ready"):
            return httpx.Response(200, json={"name": "vae", "ready": True})
        if request.url.path.startswith("/v1/"):
            return httpx.Response(200, json={"predictions": [{"mu": [0.0] * LATENT, "logvar": [0.0] * LATENT}]},
                                  headers={"x-request-id": "r1"})
        return httpx.Response(200, headers={"x-request-id": "r2"}, json={
            "model_name": "vae", "id": "r2",
            "outputs": [{"name": "mu", "shape": [1, LATENT], "datatype": "FP32", "data": [0.5] * LATENT}]})

    images = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    for protocol in ("v1", "v2"):
        with Client("http://gateway.local:8080", model_name="vae", protocol=protocol,
                    host="vae.team-a.example.com", headers={"Cookie": "authservice_session=x"},
                    transport=httpx.MockTransport(gateway)) as client:
            assert client.ready()
            encoded = client.encode(images)
        assert encoded["mu"].shape == (1, LATENT) and encoded.request_id in ("r1", "r2")
    assert [r.url.path for r in seen] == ["/v2/models/vae/ready", "/v1/models/vae:predict",
                                          "/v2/models/vae/ready", "/v2/models/vae/infer"]
    assert {r.headers["host"] for r in seen} == {"vae.team-a.example.com"}
    assert {r.headers["cookie"] for r in seen} == {"authservice_session=x"}
    assert {r.url.host for r in seen} == {"gateway.local"}


# -- the batch delay, prior samples, request parsing ----------------------------------------------
def test_an_idle_model_waits_up_to_the_delay_for_company():
    model = RecordingModel(seconds=0.0)

    async def scenario():
        batcher = DynamicBatcher(model, max_images=64, max_delay_s=0.05)
        try:
            first = asyncio.create_task(batcher.submit(tagged("encode", 0)))
            await asyncio.sleep(0.01)  # arrives within the delay: shares the first one's call
            await asyncio.gather(first, batcher.submit(tagged("encode", 1)))
        finally:
            batcher.close()

    asyncio.run(scenario())
    assert model.batches == [[0, 1]]


def test_generate_with_n_draws_the_same_latents_as_vae_sample(vae):
    z = prior_latents({"n": 3, "seed": 11}, SPEC)
    images = run_batch(vae, [OpRequest("generate", latents=z)])[0]["image"]
    with torch.inference_mode():
        expected = vae.sample(3, torch.Generator().manual_seed(11))
    expected = expected.mul(255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_parameters_defaults_strings_from_grpc_and_errors():
    limits = Limits(max_batch_size=8, max_iwae_k=32, default_iwae_k=16)
    assert parse_params({}, limits, SPEC) == ("encode", {})
    assert parse_params({"op": "score"}, limits, SPEC) == ("score", {"seed": 0, "k": 16})
    grpc_map = pb.ModelInferRequest().parameters
    grpc_map["op"].string_param = "traverse"
    grpc_map["dim"].int64_param = 2
    grpc_map["span"].string_param = "1.5"  # InferParameter has no float field
    op, params = parse_params(plain_parameters(grpc_map), limits, SPEC)
    assert (op, params) == ("traverse", {"dim": 2, "steps": 7, "span": 1.5, "image_format": "array"})
    for raw, message in [({"op": "score", "k": 33}, "1..32"), ({"op": "score", "k": True}, "parameters.k"),
                         ({"op": "traverse", "dim": 4}, "0..3"), ({"op": "generate", "n": 9}, "1..8"),
                         ({"op": "traverse", "dim": 0, "span": float("nan")}, "parameters.span"),
                         ({"op": "encode", "seed": 1}, "unknown parameter"), ([], "JSON object"),
                         ({"op": "score", "k": "\u00b2"}, "parameters.k")]:  # isdigit, yet no int
        with pytest.raises(InvalidInput, match=message):
            parse_params(raw, limits, SPEC)


def test_v1_bodies_from_raw_bytes_and_latents_for_traverse():
    limits = Limits()
    body = json.dumps({"instances": [[0.5] * 4], "parameters": {"op": "traverse", "dim": 1}}).encode()
    parsed = parse_v1(body, SPEC, limits)  # curl -d sends no JSON content type: still parsed
    assert parsed.latents.shape == (1, 4) and parsed.images is None
    with pytest.raises(InvalidInput, match="malformed JSON"):
        parse_v1(b"{not json", SPEC, limits)
    with pytest.raises(InvalidInput, match="not both"):
        parse_v1({"instances": [[0.0] * 4], "parameters": {"op": "generate", "n": 2}}, SPEC, limits)


def test_binary_request_checker():
    head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 1],
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    assert binary_request_error(head + b"\0" * 4, str(len(head))) is None
    assert "bytes follow" in binary_request_error(head + b"\0" * 5, str(len(head)))
    assert "byte length of the JSON part" in binary_request_error(head, "")
    assert "byte length of the JSON part" in binary_request_error(head, str(len(head) + 1))
    assert "malformed JSON" in binary_request_error(head, "3")
    fp16 = head.replace(b"UINT8", b"FP16")
    assert "expected UINT8 or FP32" in binary_request_error(fp16 + b"\0" * 4, str(len(fp16)))


class WorkModel(RecordingModel):
    """Takes `seconds` per unit of work (OpRequest.work), like a decoder."""

    def __call__(self, requests):
        self.batches.append([r.params["tag"] for r in requests])
        time.sleep(self.seconds * sum(r.work for r in requests))
        return [{"tag": np.full(r.size, r.params["tag"])} for r in requests]


def test_a_cheap_request_overtakes_queued_expensive_ones_and_merged_batches_keep_the_work_bound():
    """Two score requests of 4 images x k = 16 are queued behind a running one; an encode of one
    image arriving after them runs next, not third. A merged batch never exceeds max_work."""
    model = WorkModel(seconds=0.002)  # 64 decodes: 0.13 s

    async def scenario():
        batcher = DynamicBatcher(model, max_images=32, max_delay_s=0.0, max_work=64)
        try:
            heavy = [asyncio.create_task(batcher.submit(tagged("score", i, size=4, k=16))) for i in range(3)]
            await asyncio.sleep(0.03)  # the first is running, two are queued
            started = time.perf_counter()
            await batcher.submit(tagged("encode", 9))
            light = time.perf_counter() - started
            await asyncio.gather(*heavy)
            return light
        finally:
            batcher.close()

    light = asyncio.run(scenario())
    assert model.batches[1] == [9], model.batches  # ran right after the one already running
    assert all(len(b) == 1 for b in model.batches)  # 2 x 64 decodes would be over max_work
    assert light < 0.2  # one heavy batch (0.13 s) at most, not three (0.39 s)


def test_an_expensive_request_is_not_starved_by_a_stream_of_cheap_ones():
    model = WorkModel(seconds=0.002)

    async def scenario():
        # a head that waited timeout_s / 2 = 0.2 s goes first
        batcher = DynamicBatcher(model, max_images=1, max_delay_s=0.0, max_work=64, timeout_s=0.4)
        try:
            cheap = [asyncio.create_task(batcher.submit(tagged("encode", 1)))]
            await asyncio.sleep(0)
            heavy = asyncio.create_task(batcher.submit(tagged("score", 0, size=4, k=16)))
            started = time.perf_counter()
            while time.perf_counter() - started < 0.5:  # a cheap request every 1 ms, 2 ms of work each
                cheap.append(asyncio.create_task(batcher.submit(tagged("encode", len(cheap) + 1))))
                await asyncio.sleep(0.001)
            await asyncio.gather(heavy, *cheap, return_exceptions=True)
            return heavy.result()
        finally:
            batcher.close()

    assert int(asyncio.run(scenario())["tag"][0]) == 0  # answered, within its deadline
    order = [b[0] for b in model.batches]
    assert 0 < order.index(0) < len(order) - 1  # cheap ones went first, then it, before the rest


def test_past_the_pending_limit_requests_are_refused_and_late_ones_are_dropped_unrun():
    from serving.errors import DeadlineExceeded, Overloaded

    model = WorkModel(seconds=0.1)  # each request 0.1 s: the 1st ends in time, the 2nd late,
    # and the 3rd would start at 0.2 s, past its deadline of 0.15 s

    async def scenario():
        batcher = DynamicBatcher(model, max_images=1, max_delay_s=0.0, max_pending=3, timeout_s=0.15)
        try:
            calls = [asyncio.create_task(batcher.submit(tagged("encode", i))) for i in range(5)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await asyncio.sleep(0.3)
            batcher.close()

    results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results[3:]] == ["Overloaded", "Overloaded"]
    assert isinstance(results[3], Overloaded) and "--max-pending-requests" in results[3].details
    assert int(results[0]["tag"][0]) == 0
    assert isinstance(results[1], DeadlineExceeded) and isinstance(results[2], DeadlineExceeded)
    assert "--request-timeout-s" in results[2].details
    assert [b[0] for b in model.batches] == [0, 1]  # the 3rd never started: never run


def test_refusals_get_their_http_status_and_grpc_code():
    import grpc
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.errors import DeadlineExceeded, Overloaded, RepositoryDisabled, install_handlers

    app = FastAPI()
    install_handlers(app)
    for path, error in [("/repo", RepositoryDisabled()), ("/busy", Overloaded("busy")),
                        ("/late", DeadlineExceeded("late"))]:
        app.add_api_route(path, lambda error=error: (_ for _ in ()).throw(error))
    client = TestClient(app)
    assert client.get("/repo").status_code == 403
    busy = client.get("/busy")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and busy.json() == {"error": "busy"}
    assert client.get("/late").status_code == 504
    assert (RepositoryDisabled.status_code, Overloaded.status_code, DeadlineExceeded.status_code) == (
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_the_work_of_a_request_is_bounded_not_only_its_factors():
    from serving.codec import check_work

    limits = Limits(max_batch_size=64, max_iwae_k=256, max_request_work=1024)
    for op, size, params, work in [("score", 64, {"k": 16}, 1024), ("traverse", 32, {"steps": 32}, 1024),
                                   ("encode", 64, {}, 64)]:
        assert check_work(tagged(op, 0, size=size, **params), limits).work == work
    with pytest.raises(InvalidInput, match=r"64 images x k = 256 is 16384 decodes, over the limit of 1024"):
        check_work(tagged("score", 0, size=64, k=256), limits)
    with pytest.raises(InvalidInput, match="--max-request-work"):
        check_work(tagged("traverse", 0, size=33, steps=32), limits)
