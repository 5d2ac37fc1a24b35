"""Options and output shared by the commands that can run on Ray (add-class, add-vocab, segment).

Nothing here imports Ray or the distributed modules' heavy dependencies: they load when ``--ray`` (or
``--dry-run``) is given.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from protodb.distributed.cluster import RayOptions
from protodb.entities import BuildPlan, SegmentPlan
from protodb.errors import InvalidInput
from protodb_cli.output import say

RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", help="Run on Ray (pip install 'protodb[ray]'): local (a private instance on this machine), auto "
    "(the cluster 'ray start --head' started here) or a cluster ADDRESS (host:6379, ray://host:10001). More than "
    "one node needs a shared database (protodb init --catalog postgresql://... --vectors s3://... --artifacts "
    "s3://...).", show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
    help="With --ray: workers (each keeps its models loaded; default one per GPU, or one per CPU).",
    show_default=False)]
GpusPerTaskOpt = Annotated[Optional[float], typer.Option(
    help="With --ray: GPUs per worker (default 1 on a GPU cluster, 0 on CPU; 0.5 lets two share a GPU).",
    show_default=False)]
ShardSizeOpt = Annotated[Optional[int], typer.Option(
    help="With --ray: generated images per generation task (rounded up to whole --batch-size batches; "
    "default 16).", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print the plan (what would be built or segmented, tasks, estimated GPU-hours) and stop.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(
    help="With --ray: segmenting actors (default one per GPU, or one per CPU).", show_default=False)]
GpusPerWorkerOpt = Annotated[Optional[float], typer.Option(
    help="With --ray: GPUs per segmenting actor (default 1 on a GPU cluster, 0 on CPU).", show_default=False)]
SegBatchOpt = Annotated[Optional[int], typer.Option(
    help="With --ray: images per actor call (batched through the extractors on CUDA; default 8).",
    show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="With --ray: segment inputs whose outputs exist already (by default they are skipped).")]

DEFAULT_SHARD_SIZE = 16
DEFAULT_SEGMENT_BATCH = 8


def ray_options(address: str | None, *, workers: int | None = None, gpus: float | None = None,
                shard_size: int | None = None, workers_flag: str = "--workers",
                gpus_flag: str = "--gpus-per-task", **only_with_ray) -> RayOptions | None:
    """RayOptions for ``--ray ADDRESS`` (None without it; options that need it are refused then)."""
    if address is None:
        given = {workers_flag: workers, gpus_flag: gpus, "--shard-size": shard_size, **only_with_ray}
        used = [flag for flag, value in given.items() if value not in (None, False)]
        if used:
            raise InvalidInput(f"{', '.join(used)} only apply with --ray (e.g. --ray local)")
        return None
    return RayOptions(address=address, workers=workers, gpus_per_task=gpus,
                      shard_size=shard_size or DEFAULT_SHARD_SIZE).check()


def print_build_plan(p: BuildPlan) -> None:
    where = f"on Ray ({p.ray})" if p.ray else "in this process"
    say(f"plan {where}: {len(p.classes)} classes to build, {len(p.already_built)} already built")
    if p.classes:
        shown = ", ".join(p.classes[:12]) + (f", ... ({len(p.classes) - 12} more)" if len(p.classes) > 12 else "")
        say(f"  build: {shown}")
    say(f"  images to generate: up to {p.images} ({p.generator}; images already stored are reused)")
    say(f"  tasks: {p.tasks['generation_shards']} generation shards of {p.shard_size} images, "
        f"{p.tasks['class_builds']} class builds" if p.ray else f"  tasks: {p.tasks['class_builds']} class builds")
    e = p.estimate
    say(f"  estimate: {e.gpu_hours:.2f} GPU-hours = {e.seconds:g} s ({e.seconds_per_image:g} s per image; {e.source})")


def print_segment_plan(p: SegmentPlan) -> None:
    where = f"on Ray ({p.ray})" if p.ray else "in this process"
    say(f"plan {where}: {len(p.to_segment)} of {p.inputs} inputs to segment, {len(p.skipped)} already have "
        f"outputs (--overwrite redoes them), {len(p.failed)} unusable")
    for f in p.failed:
        say(f"  unusable: {f.error}")
    say(f"  tasks: {p.tasks} batches of up to {p.batch_size} images")
    e = p.estimate
    say(f"  estimate: {e.gpu_hours:.3f} GPU-hours = {e.seconds:g} s ({e.seconds_per_image:g} s per image; {e.source})")
