"""Dynamic micro-batching: requests that arrive together run as one batch on one of the worker threads."""

from __future__ import annotations

import collections
import threading
import time

from training.serve.model import HTTPError


class _Job:
    __slots__ = ("images", "done", "result", "error")

    def __init__(self, images: list[bytes]):
        self.images = images
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class MicroBatcher:
    """Groups concurrent requests' images into batches for ``predict`` (a list of bytes -> array [N, K])."""

    def __init__(
        self, predict, max_batch_size: int = 32, max_wait_ms: float = 5.0, workers: int = 1, active_clients=None
    ):
        self.predict = predict
        # How many clients are likely to send again soon (a callable); a batch waits for that many requests.
        self.active_clients = active_clients or (lambda: 0)
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.workers = max(1, workers)
        self._cv = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._arriving = 0  # requests being read/parsed right now: worth a short wait
        self._closed = False
        self.batches = 0
        self.images = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def arriving(self) -> None:
        with self._cv:
            self._arriving += 1

    def arrived(self) -> None:
        """A request announced with ``arriving`` will not submit (it failed, or it was not a predict)."""
        with self._cv:
            self._arriving -= 1
            self._cv.notify_all()

    def submit(self, images: list[bytes], announced: bool = True) -> _Job:
        job = _Job(images)
        with self._cv:
            if self._closed:
                raise HTTPError(503, "server is shutting down")
            self._queue.append(job)
            if announced:
                self._arriving -= 1
            self._cv.notify_all()
        return job

    def __call__(self, images: list[bytes], announced: bool = True):
        job = self.submit(images, announced)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            batch = [self._queue.popleft()]
            n = len(batch[0].images)
            deadline = time.monotonic() + self.max_wait
            # The active clients' requests are shared among the workers, so that while one worker predicts, the
            # next batch forms and runs on another instead of queueing behind it.
            active = self.active_clients()
            limit = self.max_batch_size if active <= 0 else min(self.max_batch_size, -(-active // self.workers))
            while n < limit:
                if self._queue:
                    if n + len(self._queue[0].images) > self.max_batch_size:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    n += len(job.images)
                    continue
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    break
                if self._arriving <= 0 and len(batch) * self.workers >= active:
                    break
                self._cv.wait(remaining)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        import numpy as np

        images = [b for job in batch for b in job.images]
        try:
            step = self.max_batch_size
            parts = [self.predict(images[i : i + step]) for i in range(0, len(images), step)]
            probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        except Exception as err:  # noqa: BLE001 - isolate the request that broke the batch
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
                return
            batch[0].error = err
            batch[0].done.set()
            return
        self.batches += 1
        self.images += len(images)
        start = 0
        for job in batch:
            job.result = probs[start : start + len(job.images)]
            start += len(job.images)
            job.done.set()
