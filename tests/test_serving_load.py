"""The real server under load, and with the model-repository extension enabled: a cheap request
is not stuck behind expensive ones, too many requests get 429, and the InferenceService's
liveness probe fails once the model is unloaded (so that the kubelet restarts the container).

One server for the module (starting one takes up to a minute on the shared CI machines); the
unload test is last, since it takes the model away."""

import statistics
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from components.k8s.inferenceservice import build_inference_service
from kubevae.client import Client, v2_payload
from kubevae.config import ModelConfig, ObjectiveConfig
from kubevae.model import VAE, save_model
from serving.local import LocalServer

pytestmark = pytest.mark.slow  # a server under load

SIZE, LATENT = 28, 4
MAX_WORK, MAX_PENDING = 256, 8
HEAVY = {"images": 8, "k": 32}  # 8 x 32 = 256 decodes: the most one request may cost
HEAVY_CLIENTS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("load") / "model"
    save_model(model_dir, VAE(ModelConfig(image_size=SIZE, latent_dim=LATENT)), ObjectiveConfig())
    args = ["--max-request-work", str(MAX_WORK), "--max-pending-requests", str(MAX_PENDING),
            "--max-iwae-k", "64", "--enable-model-repository"]
    with LocalServer(model_dir, grpc=False, args=args,
                     log_path=tmp_path_factory.mktemp("logs") / "serve.log") as running:
        yield running


def heavy_body():
    images = np.random.default_rng(0).integers(0, 256, (HEAVY["images"], SIZE, SIZE, 1), dtype=np.uint8)
    return v2_payload("score", images, k=HEAVY["k"])


def timed_post(http: httpx.Client, body) -> tuple[int, float]:
    started = time.perf_counter()
    status = http.post("/v2/models/kubevae/infer", json=body).status_code
    return status, time.perf_counter() - started


def test_a_light_request_stays_fast_under_a_stream_of_heavy_ones(server):
    """Stated bound: while 6 clients keep sending score requests of 8 images x k = 32 (each the
    most work a request may ask for), a one-image encode answers within 2 x H + 0.5 s, H being
    one heavy request's time alone: it waits for the batch already running, not for the queue.
    (First come, first served, it waited for the queued ones too: about 6 x H.)"""
    body, light = heavy_body(), v2_payload("encode", np.zeros((1, SIZE, SIZE, 1), np.uint8))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert timed_post(http, body)[0] == 200  # warm
        alone = statistics.median(timed_post(http, body)[1] for _ in range(3))
        stop, statuses, heavy_latencies = threading.Event(), [], []

        def keep_sending():
            with httpx.Client(base_url=server.url, timeout=60) as own:
                while not stop.is_set():
                    status, seconds = timed_post(own, body)
                    statuses.append(status)
                    heavy_latencies.append(seconds)

        senders = [threading.Thread(target=keep_sending) for _ in range(HEAVY_CLIENTS)]
        for sender in senders:
            sender.start()
        try:
            time.sleep(3 * alone)  # let the queue fill
            light_latencies = []
            for _ in range(5):
                status, seconds = timed_post(http, light)
                assert status == 200
                light_latencies.append(seconds)
                time.sleep(alone / 2)
        finally:
            stop.set()
            for sender in senders:
                sender.join()
    bound = 2 * alone + 0.5
    assert set(statuses) == {200}, statuses
    assert max(light_latencies) < bound, (light_latencies, alone, heavy_latencies)
    # the stream did queue up: the heavy requests themselves waited for each other
    assert statistics.median(heavy_latencies) > 2 * alone, (heavy_latencies, alone)


def test_over_the_pending_limit_requests_get_429_and_the_work_limit_400(server):
    body = heavy_body()
    results: list[httpx.Response] = []
    gate = threading.Barrier(MAX_PENDING + 6)

    def send():
        with httpx.Client(base_url=server.url, timeout=60) as http:
            gate.wait()
            results.append(http.post("/v2/models/kubevae/infer", json=body))

    threads = [threading.Thread(target=send) for _ in range(MAX_PENDING + 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) == {200, 429} and statuses.count(200) >= MAX_PENDING // 2, statuses
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "--max-pending-requests" in refused.json()["error"]
    with Client(server.url) as client:
        assert client.ready()  # still serving
        too_much = httpx.post(f"{server.url}/v2/models/kubevae/infer",
                              json=v2_payload("score", np.zeros((8, SIZE, SIZE, 1), np.uint8), k=64))
        assert too_much.status_code == 400 and "over the limit of 256" in too_much.json()["error"]


def test_the_liveness_probe_fails_once_the_model_is_unloaded(server):
    """With --enable-model-repository (off by default), an unload is honoured; the probe the
    InferenceService declares then fails, so the kubelet restarts the container."""
    isvc = build_inference_service("kubevae", "ns", "image", "s3://bucket/model")
    probe = isvc.spec.predictor.containers[0].liveness_probe
    assert probe is not None and probe.http_get.port == 8080
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get(probe.http_get.path).status_code == 200
        assert http.get("/v2/health/live").status_code == 200
        assert http.post("/v2/repository/models/kubevae/unload").status_code == 200
        assert http.get(probe.http_get.path).status_code >= 400
        # kserve's own liveness route still says "live": it cannot be the probe
        assert http.get("/v2/health/live").status_code == 200
