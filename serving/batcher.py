"""Dynamic batching: concurrent compatible requests share one model call.

All model work runs on one dedicated thread, so the event loop (HTTP, gRPC, JSON) keeps
accepting requests while the model computes. While that thread is busy, requests queue up;
when it frees, the oldest request's queue is run as one batch of at most `max_images` images.
When the thread is idle, a batch may wait up to `max_delay_s` for company (0 = never wait:
batches then form only from requests that arrived while the model was busy, which costs a
lone request no latency at all).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np
from prometheus_client import Histogram

from serving.ops import OpRequest

# Served at /metrics beside KServe's own request_*_seconds histograms.
BATCH_IMAGES = Histogram("kubevae_batch_images", "images per model call (dynamic batching)",
                         ["model_name", "op"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

RunBatch = Callable[[list[OpRequest]], list[dict[str, np.ndarray]]]


@dataclass
class _Job:
    request: OpRequest
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, *, max_images: int, max_delay_s: float,
                 model_name: str = "model"):
        self._run_batch = run_batch
        self.model_name = model_name
        self.max_images = max_images
        self.max_delay_s = max_delay_s
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubevae-model")
        self._queues: dict[Hashable, collections.deque[_Job]] = {}
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def run_now(self, requests: list[OpRequest]) -> list[dict[str, np.ndarray]]:
        """Run on the model thread and wait (for warm-up, before the event loop exists)."""
        return self._executor.submit(self._run_batch, requests).result()

    async def submit(self, request: OpRequest) -> dict[str, np.ndarray]:
        self._ensure_consumer()
        job = _Job(request, asyncio.get_running_loop().create_future())
        key = request.batch_key if request.batch_key is not None else object()
        self._queues.setdefault(key, collections.deque()).append(job)
        self._wakeup.set()
        return await job.future

    def _ensure_consumer(self) -> None:
        if self._consumer is None or self._consumer.done():
            self._wakeup = asyncio.Event()
            self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key = min(self._queues, key=lambda k: self._queues[k][0].arrived)
            await self._wait_for_company(key)
            jobs = self._take(key)
            if not jobs:
                continue
            images = sum(j.request.size for j in jobs)
            self.batch_sizes[images] += 1
            BATCH_IMAGES.labels(self.model_name, jobs[0].request.op).observe(images)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [j.request for j in jobs])
            except Exception as error:  # a model failure fails this batch, not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(jobs, results):
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(result)

    async def _wait_for_company(self, key: Hashable) -> None:
        queue = self._queues[key]
        while sum(j.request.size for j in queue) < self.max_images:
            remaining = queue[0].arrived + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, key: Hashable) -> list[_Job]:
        queue = self._queues[key]
        jobs, images = [], 0
        while queue and (not jobs or images + queue[0].request.size <= self.max_images):
            job = queue.popleft()
            if job.future.done():  # cancelled while waiting
                continue
            jobs.append(job)
            images += job.request.size
        if not queue:
            del self._queues[key]
        return jobs

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
