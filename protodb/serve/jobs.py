"""Heavy work off the event loop: a fixed pool of worker threads behind a bounded queue.

``workers`` jobs run at once, ``queue_size`` more may wait; a job beyond that is refused at once
(:class:`Overloaded`, answered 503 with ``Retry-After``) rather than queued without bound, so a burst
can never grow memory or latency without limit. Retry-After is the expected wait for the queue ahead:
the recent mean job time x jobs in flight / workers, rounded up, 1 to 60 s.

Work is run first come, first served; :meth:`WorkQueue.submit` gives a :class:`Ticket` that knows its
place in the line (``position``: 1 = next to start) and can be cancelled while it waits.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class Overloaded(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int, in_flight: int, message: str | None = None):
        super().__init__(message or f"the server is busy ({in_flight} requests in flight); retry in {retry_after} s")
        self.retry_after = retry_after


class Ticket:
    """One piece of work admitted to a :class:`WorkQueue`: its future, place in line, cancellation."""

    def __init__(self, queue: "WorkQueue", seq: int):
        self.queue, self.seq = queue, seq
        self.future: Future | None = None

    def position(self) -> int | None:
        """1 for the next to start, 2 behind it...; None once running (or finished, or cancelled)."""
        return self.queue._position(self.seq)

    def cancel(self) -> bool:
        """Take it out of the line if it has not started (True); False when it runs or ran already."""
        return self.queue._cancel(self)


class WorkQueue:
    def __init__(self, workers: int, queue_size: int, name: str = "protodb-serve"):
        self.workers, self.queue_size = int(workers), int(queue_size)
        self.capacity = self.workers + self.queue_size
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running = 0
        self._seq = itertools.count()
        self._waiting: OrderedDict[int, None] = OrderedDict()  # admitted, not started, in arrival order
        self._mean = 1.0  # seconds, exponential moving average of job times
        self.done = 0
        self.refused = 0
        self.cancelled = 0

    def _admit(self) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                self.refused += 1
                raise Overloaded(self.retry_after_locked(), self._in_flight)
            self._in_flight += 1

    def retry_after(self) -> int:
        with self._lock:
            return self.retry_after_locked()

    def retry_after_locked(self) -> int:
        return int(min(60, max(1, math.ceil(self._mean * self._in_flight / self.workers))))

    def _run(self, seq: int, fn: Callable[..., Any], args, kwargs) -> Any:
        with self._lock:
            self._waiting.pop(seq, None)
            self._running += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            with self._lock:
                self._in_flight -= 1
                self._running -= 1
                self.done += 1
                self._mean = 0.8 * self._mean + 0.2 * took

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Ticket:
        """Admit ``fn`` (:class:`Overloaded` when full, nothing queued) and return its ticket."""
        self._admit()
        ticket = Ticket(self, next(self._seq))
        with self._lock:
            self._waiting[ticket.seq] = None
        try:
            ticket.future = self._pool.submit(self._run, ticket.seq, fn, args, kwargs)
        except BaseException:
            with self._lock:
                self._waiting.pop(ticket.seq, None)
                self._in_flight -= 1
            raise
        return ticket

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` on a worker and await its result; :class:`Overloaded` when full (nothing queued)."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs).future)

    def _position(self, seq: int) -> int | None:
        with self._lock:
            if seq not in self._waiting:
                return None
            for i, s in enumerate(self._waiting, 1):
                if s == seq:
                    return i
        return None

    def _cancel(self, ticket: Ticket) -> bool:
        with self._lock:
            if ticket.seq not in self._waiting or ticket.future is None or not ticket.future.cancel():
                return False
            # cancelled before a worker took it: _run never runs for it, so its place is given back here
            self._waiting.pop(ticket.seq, None)
            self._in_flight -= 1
            self.cancelled += 1
            return True

    @property
    def mean_seconds(self) -> float | None:
        """Recent mean time of one piece of work (None before any finished)."""
        with self._lock:
            return round(self._mean, 3) if self.done else None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"workers": self.workers, "queue_size": self.queue_size, "in_flight": self._in_flight,
                    "running": self._running, "waiting": len(self._waiting), "done": self.done,
                    "refused": self.refused, "cancelled": self.cancelled, "mean_seconds": round(self._mean, 4)}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
