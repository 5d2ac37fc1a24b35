"""Where a workflow runs: the runner seam of ``segment``, ``add-class`` and ``add-vocab``.

A workflow is written once (:func:`protodb.segment.workflow.segment_inputs`, :class:`protodb.pipeline.build.ClassBuilder`
behind :func:`protodb.pipeline.vocab_build.run_vocab`); runners only feed it inputs and consume its typed results:

=========  ==================================================================================================
local      ``runner=None``: this process (:func:`protodb.segment.run.segment_files`,
           :class:`protodb.pipeline.vocab_build.LocalExecutor`)
Ray        ``runner=RayOptions(...)``: actors holding the same warm segmenter / class builder
           (:mod:`protodb.distributed`, imported only when asked for: Ray is an optional extra)
HTTP       ``protodb serve``: a request feeds its uploads to the same workflow (:mod:`protodb.serve`)
=========  ==================================================================================================

This module holds only what the command line and the facade need to name a runner: nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from protodb.errors import InvalidInput

#: Generated images per generation task of a Ray build (``--shard-size``).
DEFAULT_SHARD_SIZE = 16
#: Images per Ray segmenting actor call (``--batch-size``).
DEFAULT_SEGMENT_BATCH = 8


@dataclass(frozen=True)
class RayOptions:
    """How work runs on Ray. address: ``local``, ``auto`` or ADDRESS. workers: actors (``--workers``;
    ``--concurrency`` for segment; default one per GPU / ``gpus_per_task``, or one per CPU).
    gpus_per_task: GPUs each worker holds (``--gpus-per-task`` / ``--gpus-per-worker``; default 1 on a GPU
    cluster, 0 on CPU; fractions share a GPU). shard_size: generated images per generation task.
    task_retries: how often a build task whose worker died is run again."""

    address: str = "local"
    workers: int | None = None
    gpus_per_task: float | None = None
    cpus_per_worker: float | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    task_retries: int = 3

    def check(self) -> "RayOptions":
        if self.shard_size < 1:
            raise InvalidInput(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.task_retries < 0:
            raise InvalidInput(f"task retries must be >= 0, got {self.task_retries}")
        return self
