"""Options several commands share, each declared once.

Single options are ``Annotated`` aliases (``DeviceOpt``); groups of options that travel together are
:class:`protodb_cli.app.OptionGroup` s whose command parameter receives one value:

=================  ==========================================================================================
``BUILD_RUN``      add-class, add-vocab: --yes --preset --device --dtype --batch-size, the Ray runner
                   (--ray --workers --gpus-per-task --shard-size) and --dry-run -> :class:`BuildRun`
``SEGMENTING``     segment, eval: the vocabulary and how it labels (--vocab --classes --extractor --levels
                   --background --prefilter --clip-model --pamr --scales --subpatch --window-sizes
                   --window-stride --no-whole --device --dtype)
                   -> :class:`protodb.segment.options.SegmentOptions`
``SEGMENT_RUN``    segment: the Ray runner (--ray --concurrency --batch-size --gpus-per-worker --overwrite)
                   and --dry-run -> :class:`SegmentRun`
=================  ==========================================================================================

Nothing here imports Ray: a runner is named by :class:`protodb.runners.RayOptions` and the facade loads
:mod:`protodb.distributed` only when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from protodb.entities import BuildPlan, SegmentPlan
from protodb.errors import InvalidInput
from protodb.features.windows import WindowSpec
from protodb.speed import speed_preset
from protodb.runners import DEFAULT_SHARD_SIZE, RayOptions
from protodb.segment.options import (
    DEFAULT_SHORTLIST,
    TWO_STAGE_MIN_CLASSES,
    SegmentOptions,
    parse_levels,
    parse_scales,
)
from protodb_cli.app import OptionGroup
from protodb_cli.output import say

# ------------------------------------------------------------------------------------------ single options
PresetOpt = Annotated[Optional[str], typer.Option(
    help="'paper': OVDiff as published (SD 1.5, 64 images; SD + DINO ViT-B/8 + CLIP ViT-B/16 features; K=32). "
         "'tiny': tiny random-weight generator and extractor built locally (offline, seconds; results NOT meaningful).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CPUs with bf16 units, fp16 on GPUs), float32, bfloat16, float16, "
                                         "int8 (CPU: linear layers of torch extractors int8-quantised).")]
SpeedOpt = Annotated[Optional[str], typer.Option(help="Speed preset: best (default), balanced (int8 on CPUs without bf16 units), fast (whole image only, int8 there); see the README's speed table.")]
YesOpt = Annotated[bool, typer.Option("--yes", help="Confirm a very large build (over 1024 generated images).")]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per generator/extractor call.")]
VocabOpt = Annotated[Optional[str], typer.Option(help="Vocabulary: voc, context, coco-object, ade20k, cityscapes, camvid, or yours.")]
ClassesOpt = Annotated[Optional[str], typer.Option(help="Ad hoc vocabulary: 'cat,dog,boat@3'.")]
ExtractorOpt = Annotated[Optional[list[str]], typer.Option("--extractor", help="Extractor(s) to ensemble (default: every one all classes have).")]
LevelsOpt = Annotated[str, typer.Option(help="Prototype levels taking part: any of class,instance,part.")]
BackgroundOpt = Annotated[Optional[bool], typer.Option("--background/--no-background", help="Score a background class (default: the vocabulary's setting).", show_default=False)]
PrefilterOpt = Annotated[Optional[bool], typer.Option("--prefilter/--no-prefilter", help="CLIP multi-label pre-filter (default: on when a CLIP model is configured).", show_default=False)]
ClipOpt = Annotated[Optional[str], typer.Option(help="CLIP model (hub id or folder) for the pre-filter; or PROTODB_CLIP_MODEL.")]
PamrOpt = Annotated[bool, typer.Option("--pamr", help="Refine with PAMR (10 iterations, dilations 1,2,4,8,12,24).")]
ScalesOpt = Annotated[str, typer.Option(help="Window passes at these multiples of the 448-px short side, averaged (e.g. 1,1.5: finer detail for thin objects, ~3x the time).")]
SubpatchOpt = Annotated[int, typer.Option(min=1, max=4, help="Sample the patch grid N times per axis (N x N shifted passes per window, N^2 the time): score maps at stride patch/N, for objects narrower than a patch (poles, signs, people far away).")]
BgMarginOpt = Annotated[float, typer.Option(help="Subtract this from the background's score before the argmax (cluttered photos: the background, every class's background prototypes together, wins by its count).")]
VoteOpt = Annotated[int, typer.Option(min=1, max=64, help="A class's score is the mean of its N best prototype similarities (kNN voting; 1: the single best).")]
SkipOpt = Annotated[bool, typer.Option("--skip-missing", help="Segment with the usable classes when some have no (foreground) prototypes; say which were left out.")]

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


# ------------------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class BuildRun:
    """How add-class / add-vocab run: ``runner`` None (this process) or Ray; ``dry_run``: plan only."""

    yes: bool
    preset: str | None
    device: str
    dtype: str
    batch_size: int
    runner: RayOptions | None
    dry_run: bool
    speed: str | None = None


def _build_run(yes, preset, device, dtype, batch_size, ray, workers, gpus_per_task, shard_size, dry_run,
               speed) -> BuildRun:
    if speed:
        speed_preset(speed)  # one line for a bad name, before anything else
    return BuildRun(yes, preset, device, dtype, batch_size,
                    ray_options(ray, workers=workers, gpus=gpus_per_task, shard_size=shard_size), dry_run, speed)


BUILD_RUN = OptionGroup({
    "yes": (YesOpt, False), "preset": (PresetOpt, None), "device": (DeviceOpt, "auto"), "dtype": (DtypeOpt, "auto"),
    "batch_size": (BatchSizeOpt, 4), "ray": (RayOpt, None), "workers": (WorkersOpt, None),
    "gpus_per_task": (GpusPerTaskOpt, None), "shard_size": (ShardSizeOpt, None), "dry_run": (DryRunOpt, False),
    "speed": (SpeedOpt, None),
}, _build_run)


LexiconOpt = Annotated[Optional[str], typer.Option(
    "--lexicon", help="Thing/stuff lexicon for classes no LLM labels: builtin (protodb's stuff list) or ovdiff (the "
    "OVDiff authors' table); or PROTODB_LEXICON.", show_default=False)]
ExhaustiveOpt = Annotated[bool, typer.Option(
    "--exhaustive", help="Score every class of the vocabulary (no shortlist), whatever its size.")]
WindowSizesOpt = Annotated[Optional[str], typer.Option(
    "--window-sizes", metavar="S,S", help="Square windows scored at these sides, in pixels of the resized photo "
    "(default: the extractor's windows: a tiled extractor's own tiles, else 448,336); 'none': only the whole image.",
    show_default=False)]
WindowStrideOpt = Annotated[Optional[int], typer.Option(
    "--window-stride", metavar="PX", help="Step between windows in pixels (default: the extractor's: its tile "
    "stride, else 224).", show_default=False)]
NoWholeOpt = Annotated[bool, typer.Option("--no-whole", help="Do not score the whole image as one more window.")]
ShortlistOpt = Annotated[Optional[int], typer.Option(
    "--shortlist", metavar="N", help="Two-stage matching: per image, score only the N classes a summary index "
    f"shortlists (default: on with {DEFAULT_SHORTLIST} from {TWO_STAGE_MIN_CLASSES} classes; build the index: "
    "protodb index build VOCAB).", show_default=False)]


def parse_window_sizes(text: str | None) -> tuple[int, ...] | None:
    """``--window-sizes``: None (the extractor's), ``none`` (no windows: the whole image only) or ``S,S``."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidInput(f"--window-sizes takes pixel sides like 448,336 (or none); got {text!r}") from None
    if not sizes:
        raise InvalidInput(f"--window-sizes takes pixel sides like 448,336 (or none); got {text!r}")
    return sizes


def _segmenting(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr, scales, subpatch,
                window_sizes, window_stride, no_whole, device, dtype, speed, bg_margin, vote, exhaustive,
                shortlist) -> SegmentOptions:
    if speed:
        speed_preset(speed)
        if window_sizes is not None or window_stride is not None or no_whole:
            raise InvalidInput("--speed sets the windows itself: give --speed or --window-sizes/--window-stride/"
                               "--no-whole, not both")
    windows = WindowSpec(scales=parse_scales(scales), subpatch=subpatch, sizes=parse_window_sizes(window_sizes),
                         stride=window_stride, whole=not no_whole).check()
    return SegmentOptions(vocab=vocab, classes=classes, extractors=tuple(extractor or ()), levels=parse_levels(levels),
                          background=background, prefilter=prefilter, clip_model=clip_model, pamr=pamr, device=device,
                          dtype=dtype, windows=windows,
                          speed=speed, bg_margin=bg_margin, vote=vote, exhaustive=exhaustive, shortlist=shortlist)


SEGMENTING = OptionGroup({
    "vocab": (VocabOpt, None), "classes": (ClassesOpt, None), "extractor": (ExtractorOpt, None),
    "levels": (LevelsOpt, "class,instance,part"), "background": (BackgroundOpt, None),
    "prefilter": (PrefilterOpt, None), "clip_model": (ClipOpt, None), "pamr": (PamrOpt, False),
    "scales": (ScalesOpt, "1"), "subpatch": (SubpatchOpt, 1), "window_sizes": (WindowSizesOpt, None),
    "window_stride": (WindowStrideOpt, None), "no_whole": (NoWholeOpt, False), "device": (DeviceOpt, "auto"),
    "dtype": (DtypeOpt, "auto"), "speed": (SpeedOpt, None), "bg_margin": (BgMarginOpt, 0.0), "vote": (VoteOpt, 1),
    "exhaustive": (ExhaustiveOpt, False), "shortlist": (ShortlistOpt, None),
}, _segmenting)


@dataclass(frozen=True)
class SegmentRun:
    """How segment runs: ``runner`` None (this process) or Ray (``batch_size`` images per actor call,
    ``overwrite`` redoes inputs whose outputs exist); ``dry_run``: plan only."""

    runner: RayOptions | None
    batch_size: int | None
    overwrite: bool
    dry_run: bool


def _segment_run(ray, concurrency, batch_size, gpus_per_worker, overwrite, dry_run) -> SegmentRun:
    runner = ray_options(ray, workers=concurrency, gpus=gpus_per_worker, workers_flag="--concurrency",
                         gpus_flag="--gpus-per-worker", **{"--batch-size": batch_size, "--overwrite": overwrite})
    return SegmentRun(runner, batch_size, overwrite, dry_run)


SEGMENT_RUN = OptionGroup({
    "ray": (RayOpt, None), "concurrency": (ConcurrencyOpt, None), "batch_size": (SegBatchOpt, None),
    "gpus_per_worker": (GpusPerWorkerOpt, None), "overwrite": (OverwriteOpt, False), "dry_run": (DryRunOpt, False),
}, _segment_run)


# ------------------------------------------------------------------------------------------ plans
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
