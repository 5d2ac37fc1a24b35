"""Long work a page can follow: jobs with a state, a place in line, elapsed time and a cancel.

``POST /api/jobs/segment`` (and, later, other kinds: a build started from the page) puts a piece of
work on the same bounded :class:`protodb.serve.jobs.WorkQueue` as every synchronous request and
answers at once with a job id; ``GET /api/jobs/{id}`` tells where it stands, ``GET
/api/jobs/{id}/result`` gives what it produced and ``DELETE /api/jobs/{id}`` cancels it (or forgets a
finished one).

States: ``queued`` (``position`` 1 = next to start) -> ``running`` -> ``done`` | ``failed`` (with the
error and the HTTP status the synchronous endpoint would have answered) | ``cancelled``. A queued job
that is cancelled never runs. A running one cannot be interrupted mid-image: it is ``cancelling``
until its worker finishes, then ``cancelled`` and its result is dropped. Work that can stop between
steps (a build) receives the :class:`Job` and checks :attr:`Job.cancel_requested`; it may report
``progress`` with :meth:`Job.report`.

Bounded: the work itself waits in the queue (503 + Retry-After when full, like every request); a
finished job is kept ``ttl`` seconds for its result, and at most ``max_jobs`` jobs are held — the
oldest finished ones are forgotten first, and when every held job is unfinished a new one gets 503.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable

from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.serve.jobs import Overloaded, Ticket, WorkQueue

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "cancelled")


def status_of(err: BaseException) -> int:
    """The HTTP status a synchronous endpoint answers for ``err``."""
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, InvalidInput):
        return 400
    if isinstance(err, MemoryError):
        return 507
    return 500


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


class Job:
    """One job: what it is, where it stands, and what it produced."""

    def __init__(self, kind: str, label: str):
        self.id = secrets.token_urlsafe(12)
        self.kind, self.label = kind, label
        self.state = "queued"
        self.created = time.time()
        self._t0 = time.monotonic()
        self._started: float | None = None
        self._finished: float | None = None
        self.cancel_requested = False
        self.result: bytes | None = None
        self.media_type = "application/json"
        self.error: str | None = None
        self.status: int | None = None
        self.progress: dict[str, Any] | None = None
        self.ticket: Ticket | None = None
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def report(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """Progress of work that has steps (shown as ``progress``: done, total, note)."""
        self.progress = {"done": done, "total": total, "note": note}

    def finished_since(self, now: float) -> float | None:
        return None if self._finished is None else now - self._finished

    def _finish(self, state: str) -> None:
        self.state = state
        self._finished = time.monotonic()

    def to_dict(self, queue: WorkQueue) -> dict[str, Any]:
        now = time.monotonic()
        end = self._finished or now
        position = self.ticket.position() if self.ticket is not None and self.state == "queued" else None
        started = self._started
        out = {"id": self.id, "kind": self.kind, "label": self.label, "state": self.state,
               "position": position, "ahead": None if position is None else position - 1,
               "created_at": round(self.created, 3), "elapsed": round(end - self._t0, 2),
               "queued_seconds": round((started or end) - self._t0, 2),
               "running_seconds": None if started is None else round(end - started, 2),
               "typical_seconds": queue.mean_seconds, "progress": self.progress,
               "url": f"/api/jobs/{self.id}"}
        if self.state == "done":
            out["result_url"] = f"/api/jobs/{self.id}/result"
        if self.state == "failed":
            out.update(error=self.error, status=self.status)
        stats = queue.stats()
        out["queue"] = {"workers": stats["workers"], "running": stats["running"], "waiting": stats["waiting"]}
        return out


class JobTable:
    """The jobs of one server (thread-safe); work runs on ``queue``."""

    def __init__(self, queue: WorkQueue, max_jobs: int = 16, ttl: float = 300.0):
        self.queue, self.max_jobs, self.ttl = queue, int(max_jobs), float(ttl)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.expired = 0

    def _expire(self) -> None:
        """Forget finished jobs older than ``ttl`` (caller holds _lock)."""
        now = time.monotonic()
        for jid in [j.id for j in self._jobs.values() if (j.finished_since(now) or 0) > self.ttl]:
            del self._jobs[jid]
            self.expired += 1

    def _make_room(self) -> None:
        """Room for one more job: drop the oldest finished ones beyond the cap, else 503 (caller holds _lock)."""
        self._expire()
        while len(self._jobs) >= self.max_jobs:
            done = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j._finished)
            if not done:
                wait = self.queue.retry_after()
                raise Overloaded(wait, len(self._jobs), f"the server holds {len(self._jobs)} unfinished jobs, its "
                                                        f"limit (--max-jobs); retry in {wait} s")
            del self._jobs[done[0].id]
            self.expired += 1

    def submit(self, kind: str, label: str, fn: Callable[..., Any], *args, pass_job: bool = False) -> Job:
        """Queue ``fn(*args)`` (``fn(*args, job=job)`` with ``pass_job``) as a job; it returns the result
        bytes (JSON). :class:`Overloaded` when the queue or the job table is full."""
        job = Job(kind, label)
        with self._lock:
            self._make_room()
            job.ticket = self.queue.submit(self._run, job, fn, args, pass_job)
            self._jobs[job.id] = job
        return job

    @staticmethod
    def _run(job: Job, fn: Callable[..., Any], args, pass_job: bool) -> None:
        with job._lock:
            if job.cancel_requested:  # cancelled in the instant it was starting
                job._finish("cancelled")
                return
            job.state = "running"
            job._started = time.monotonic()
        try:
            result = fn(*args, job=job) if pass_job else fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported in the job, as the endpoint would answer
            with job._lock:
                if job.cancel_requested:
                    job._finish("cancelled")
                    return
                job.status = status_of(err)
                if job.status == 500 and not isinstance(err, ProtoDBError):
                    log.error("job %s (%s) failed", job.id, job.label, exc_info=err)
                    job.error = f"internal error ({type(err).__name__}); see the server log"
                elif isinstance(err, MemoryError):
                    job.error = "not enough memory for this image; send a smaller one"
                else:
                    job.error = _first_line(err)
                job._finish("failed")
            return
        with job._lock:
            if job.cancel_requested:
                job._finish("cancelled")  # the result is dropped
            else:
                job.result = result
                job._finish("done")

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id[:40]!r} here (finished jobs are kept {self.ttl:g} s)")
        return job

    def cancel(self, job_id: str) -> tuple[Job, bool]:
        """Cancel a queued or running job; forget a finished one. Returns (job, forgotten)."""
        job = self.get(job_id)
        with job._lock:
            if job.finished:
                with self._lock:
                    self._jobs.pop(job.id, None)
                return job, True
            job.cancel_requested = True
            if job.state == "queued" and job.ticket is not None and job.ticket.cancel():
                job._finish("cancelled")
            elif job.state == "running":
                job.state = "cancelling"
        return job, False

    def stats(self) -> dict[str, Any]:
        with self._lock:
            states: dict[str, int] = {}
            for j in self._jobs.values():
                states[j.state] = states.get(j.state, 0) + 1
            return {"held": len(self._jobs), "max_jobs": self.max_jobs, "ttl": self.ttl, "states": states,
                    "expired": self.expired}
