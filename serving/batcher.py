"""Dynamic batching: concurrent compatible requests share one model call.

All model work runs on one dedicated thread, so the event loop (HTTP, gRPC, JSON) keeps
accepting requests while the model computes. While that thread is busy, requests queue up;
when it frees, the oldest request's queue is run as one batch of at most `max_images` images.
When the thread is idle, a batch may wait up to `max_delay_s` for company (0 = never wait:
batches then form only from requests that arrived while the model was busy, which costs a
lone request no latency at all).

Cheap requests are not stuck behind expensive ones:
- a merged batch holds at most `max_work` decodes (serving.ops.OpRequest.work), the same bound
  as one request, so whatever runs when a request arrives ends within one bounded batch;
- the next batch is the queue whose head asks for the least work (shortest job first), so an
  encode of one image overtakes queued score requests of 64 images x k; a head that has waited
  `starve_s` (half the deadline) goes first whatever its work, so heavy requests still run
  under a stream of cheap ones;
- at most `max_pending` requests are in the batcher at once (the next gets Overloaded: 429),
  and each has `timeout_s` (DeadlineExceeded: 504; one that has not started is never run).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from serving.errors import DeadlineExceeded, Overloaded
from serving.ops import OpRequest

# Served at /metrics beside KServe's own request_*_seconds histograms.
BATCH_IMAGES = Histogram("kubevae_batch_images", "images per model call (dynamic batching)",
                         ["model_name", "op"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
PENDING = Gauge("kubevae_pending_requests", "requests queued or running in the batcher", ["model_name"])
REFUSED = Counter("kubevae_refused_requests", "requests refused: overloaded (429) or past their "
                  "deadline (504)", ["model_name", "reason"])

RunBatch = Callable[[list[OpRequest]], list[dict[str, np.ndarray]]]


@dataclass
class _Job:
    request: OpRequest
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, *, max_images: int, max_delay_s: float,
                 model_name: str = "model", max_work: int | None = None, max_pending: int = 2**31,
                 timeout_s: float | None = None):
        self._run_batch = run_batch
        self.model_name = model_name
        self.max_images = max_images
        self.max_delay_s = max_delay_s
        self.max_work = max_work
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.pending = 0
        self.starve_s = timeout_s / 2 if timeout_s else 10.0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubevae-model")
        self._queues: dict[Hashable, collections.deque[_Job]] = {}
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def run_now(self, requests: list[OpRequest]) -> list[dict[str, np.ndarray]]:
        """Run on the model thread and wait (for warm-up, before the event loop exists)."""
        return self._executor.submit(self._run_batch, requests).result()

    async def submit(self, request: OpRequest) -> dict[str, np.ndarray]:
        if self.pending >= self.max_pending:
            REFUSED.labels(self.model_name, "overloaded").inc()
            raise Overloaded(f"the server has {self.pending} requests queued or running, its limit "
                             f"(--max-pending-requests); retry later")
        wakeup = self._ensure_consumer()
        job = _Job(request, asyncio.get_running_loop().create_future())
        key = request.batch_key if request.batch_key is not None else object()
        self._queues.setdefault(key, collections.deque()).append(job)
        wakeup.set()
        self.pending += 1
        PENDING.labels(self.model_name).set(self.pending)
        try:
            # shield: on timeout the job is cancelled below, so that an unstarted one is skipped
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout_s)
        except TimeoutError:
            job.future.cancel()
            REFUSED.labels(self.model_name, "deadline").inc()
            raise DeadlineExceeded(f"not answered within {self.timeout_s:g} s "
                                   f"(--request-timeout-s); the server is busy, retry later") from None
        finally:
            self.pending -= 1
            PENDING.labels(self.model_name).set(self.pending)

    def _ensure_consumer(self) -> asyncio.Event:
        """The running consumer's wake-up event (a new consumer when none runs on this loop)."""
        wakeup = self._wakeup
        if self._consumer is None or self._consumer.done() or wakeup is None:
            wakeup = self._wakeup = asyncio.Event()
            self._consumer = asyncio.get_running_loop().create_task(self._consume(wakeup))
        return wakeup

    async def _consume(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                wakeup.clear()
                await wakeup.wait()
                continue
            now = time.monotonic()
            key = min(self._queues, key=lambda k: self._priority(k, now))
            await self._wait_for_company(key, wakeup)
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
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(result)

    def _priority(self, key: Hashable, now: float) -> tuple:
        """Heads that waited `starve_s` first (oldest first), then the least work (oldest first)."""
        head = self._queues[key][0]
        if now - head.arrived >= self.starve_s:
            return (0, head.arrived)
        return (1, head.request.work, head.arrived)

    async def _wait_for_company(self, key: Hashable, wakeup: asyncio.Event) -> None:
        queue = self._queues[key]
        while sum(j.request.size for j in queue) < self.max_images:
            remaining = queue[0].arrived + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, key: Hashable) -> list[_Job]:
        queue = self._queues[key]
        jobs: list[_Job] = []
        images, work = 0, 0
        while queue and (not jobs or (images + queue[0].request.size <= self.max_images and (
                self.max_work is None or work + queue[0].request.work <= self.max_work))):
            job = queue.popleft()
            if job.future.done():  # cancelled while waiting, or past its deadline
                continue
            jobs.append(job)
            images += job.request.size
            work += job.request.work
        if not queue:
            del self._queues[key]
        return jobs

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
