"""``--dry-run``: what a build or a segmentation would do, and how many GPU-hours it would take, for any
runner (this process or Ray).

Nothing is started (no Ray, no model) and nothing is written. The estimate multiplies images by
per-image costs kept as data (``protodb/data/costs.json``, each with its source); a database's own
``HOME/costs.json`` (written by ``benchmarks/bench_gpu.py --save-costs HOME`` on its GPUs) wins.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Sequence

from protodb.entities import BuildPlan, CostEstimate, InputFailure, SegmentPlan

COSTS_FILE = "costs.json"


def load_costs(home: Path | None = None) -> dict:
    """The packaged per-image costs, with ``home/costs.json`` entries (when present) on top."""
    costs = json.loads(resources.files("protodb").joinpath("data", COSTS_FILE).read_text(encoding="utf-8"))
    own = Path(home) / COSTS_FILE if home is not None else None
    if own is not None and own.is_file():
        for section, entries in json.loads(own.read_text(encoding="utf-8")).items():
            if isinstance(entries, dict):
                costs.setdefault(section, {}).update(entries)
    return costs


def cost_of(costs: dict, section: str, name: str | None) -> tuple[float, str]:
    """(seconds per image, source) of ``name`` in ``section`` (its ``default`` entry when not listed)."""
    table = costs.get(section, {})
    entry = table.get(name or "") or table.get("default") or {}
    return float(entry.get("seconds_per_image", 0.0)), str(entry.get("source", "no recorded cost"))


def shards_of(images: int, shard_size: int, batch_size: int) -> list[list[int]]:
    """Generation shards of a class: index ranges of ``shard_size`` rounded up to whole generator batches
    (so every batch is the one a single process would draw: same images, same bytes). One shard or none:
    the class task draws its images itself."""
    size = max(1, batch_size) * max(1, math.ceil(max(1, shard_size) / max(1, batch_size)))
    if images <= size:
        return []
    return [list(range(start, min(images, start + size))) for start in range(0, images, size)]


def build_plan(classes: Sequence[tuple[str, int]], already_built: Sequence[str], *, shard_size: int,
               batch_size: int, generator: str, preset: str | None, ray: str | None,
               home: Path | None = None) -> BuildPlan:
    """The plan of building ``classes`` ((name, generated images) each)."""
    costs = load_costs(home)
    gen_s, gen_src = cost_of(costs, "generate", generator)
    build_s, build_src = cost_of(costs, "build", preset)
    images = sum(n for _, n in classes)
    shards = sum(len(shards_of(n, shard_size, batch_size)) for _, n in classes) if ray else 0
    seconds = images * (gen_s + build_s)
    per_image = gen_s + build_s
    return BuildPlan(
        classes=tuple(name for name, _ in classes), already_built=tuple(already_built), images=images,
        tasks={"generation_shards": shards, "class_builds": len(classes)}, shard_size=shard_size,
        generator=generator, ray=ray,
        estimate=CostEstimate(seconds_per_image=round(per_image, 4), images=images, seconds=round(seconds, 1),
                              gpu_hours=round(seconds / 3600, 3), source=f"generate: {gen_src}; build: {build_src}"))


def segment_plan(to_segment: Sequence[str], skipped: Sequence[str], failed: Sequence[InputFailure], *,
                 batch_size: int, extractor: str | None, ray: str | None, home: Path | None = None) -> SegmentPlan:
    costs = load_costs(home)
    per_image, source = cost_of(costs, "segment", extractor)
    n = len(to_segment)
    return SegmentPlan(
        inputs=n + len(skipped), to_segment=tuple(to_segment), skipped=tuple(skipped), failed=tuple(failed),
        batch_size=batch_size, tasks=math.ceil(n / max(1, batch_size)) if n else 0, ray=ray,
        estimate=CostEstimate(seconds_per_image=per_image, images=n, seconds=round(n * per_image, 1),
                              gpu_hours=round(n * per_image / 3600, 3), source=source))
