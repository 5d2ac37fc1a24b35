"""Heavy work off the event loop: a fixed pool of worker threads behind a bounded queue.

``workers`` jobs run at once, ``queue_size`` more may wait; a job beyond that is refused at once
(:class:`Overloaded`, answered 503 with ``Retry-After``) rather than queued without bound, so a burst
can never grow memory or latency without limit. Retry-After is the expected wait for the queue ahead:
the recent mean job time x jobs in flight / workers, rounded up, 1 to 60 s.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Overloaded(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int, in_flight: int):
        super().__init__(f"the server is busy ({in_flight} requests in flight); retry in {retry_after} s")
        self.retry_after = retry_after


class WorkQueue:
    def __init__(self, workers: int, queue_size: int, name: str = "protodb-serve"):
        self.workers, self.queue_size = int(workers), int(queue_size)
        self.capacity = self.workers + self.queue_size
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._mean = 1.0  # seconds, exponential moving average of job times
        self.done = 0
        self.refused = 0

    def _admit(self) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                self.refused += 1
                raise Overloaded(self.retry_after_locked(), self._in_flight)
            self._in_flight += 1

    def retry_after_locked(self) -> int:
        return int(min(60, max(1, math.ceil(self._mean * self._in_flight / self.workers))))

    def _run(self, fn: Callable[..., Any], args, kwargs) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            with self._lock:
                self._in_flight -= 1
                self.done += 1
                self._mean = 0.8 * self._mean + 0.2 * took

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` on a worker and await its result; :class:`Overloaded` when full (nothing queued)."""
        self._admit()
        try:
            future = self._pool.submit(self._run, fn, args, kwargs)
        except BaseException:
            with self._lock:
                self._in_flight -= 1
            raise
        return await asyncio.wrap_future(future)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"workers": self.workers, "queue_size": self.queue_size, "in_flight": self._in_flight,
                    "done": self.done, "refused": self.refused, "mean_seconds": round(self._mean, 4)}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
