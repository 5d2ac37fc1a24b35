"""Labelling images: segment and eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import EvalReport, SegmentReport
from protodb.lazy import lazy_import
from protodb.segment.options import SegmentOptions, WindowSpec, parse_levels, parse_scales
from protodb_cli.app import Ctx, command
from protodb_cli.build import DeviceOpt, DtypeOpt
from protodb_cli.output import EXIT_PARTIAL, err_console, input_progress, say, table
# --- scale-out on Ray (issue 11): Ray Data segmentation; loaded only with --ray/--dry-run
from protodb_cli.ray_opts import (DEFAULT_SEGMENT_BATCH, ConcurrencyOpt, DryRunOpt, GpusPerWorkerOpt, OverwriteOpt,
                                  RayOpt, SegBatchOpt, print_segment_plan, ray_options)

dist_segment = lazy_import("protodb.distributed.segment")
# ---

top = typer.Typer()

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
SkipOpt = Annotated[bool, typer.Option("--skip-missing", help="Segment with the usable classes when some have no (foreground) prototypes; say which were left out.")]


def register(app: typer.Typer) -> None:
    app.registered_commands.extend(top.registered_commands)


def options(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr, device, dtype,
            explain=False, skip_missing=False, preset=None, scales="1", subpatch=1) -> SegmentOptions:
    return SegmentOptions(vocab=vocab, classes=classes, extractors=tuple(extractor or ()), levels=parse_levels(levels),
                          background=background, prefilter=prefilter, clip_model=clip_model, pamr=pamr, device=device,
                          dtype=dtype, explain=explain, skip_missing=skip_missing, preset=preset,
                          windows=WindowSpec(scales=parse_scales(scales), subpatch=subpatch).check())


def _report(report: SegmentReport) -> None:
    for o in report.outputs:
        shown = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in sorted(o.present.items(), key=lambda kv: -kv[1]["fraction"]))
        say(f"{o.input}: {shown}")
        for f in (o.files or {}).values():
            say(f"  {f}")
    for name in report.vocabulary.get("skipped", []):
        say(f"left out (no usable prototypes): {name}")


@command(top, "segment")
def segment(
    ctx: Ctx,
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or glob patterns.")],
    vocab: VocabOpt = None, classes: ClassesOpt = None, extractor: ExtractorOpt = None,
    levels: LevelsOpt = "class,instance,part", background: BackgroundOpt = None,
    prefilter: PrefilterOpt = None, clip_model: ClipOpt = None, pamr: PamrOpt = False,
    explain: Annotated[bool, typer.Option("--explain", help="For each region: the winning prototype and the support region it came from (JSON + side-by-side PNG).")] = False,
    skip_missing: SkipOpt = False,
    scales: ScalesOpt = "1", subpatch: SubpatchOpt = 1,
    preset: Annotated[Optional[str], typer.Option(help="'paper': turn on the pre-filter with CLIP ViT-B/16 (openai/clip-vit-base-patch16) unless --clip-model is given.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder for label PNGs, overlays and JSON (default ./protodb-out; with --ray also s3://...); outputs mirror the inputs' relative paths.")] = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    ray: RayOpt = None, concurrency: ConcurrencyOpt = None, batch_size: SegBatchOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None, overwrite: OverwriteOpt = False, dry_run: DryRunOpt = False,
) -> None:
    """Label every pixel of images with the classes of a vocabulary.

    Writes, per input: NAME.labels.png (palette; with background 0 = background, class i = i+1),
    NAME.overlay.png and NAME.json (classes present, pixel fractions, scores, vocabulary version,
    the resolved settings). Inputs from several folders keep their relative paths under --out.
    Exit code 3 when some inputs failed (the others are still written).

    With --ray the inputs (also s3://bucket/imgs/**/*.jpg) go through Ray Data to actors that keep the
    vocabulary loaded and write the outputs themselves; inputs whose outputs exist are skipped.

    Example: protodb segment photo.jpg --vocab voc --out out/
    Example: protodb segment 'street/*.png' --classes "car,road,sky" --no-background --json
    Example: protodb segment street.png --vocab camvid --subpatch 2
    Example: protodb segment 's3://b/imgs/**/*.jpg' --vocab voc --out s3://b/out/ --ray auto --batch-size 16
    """
    opts = options(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr, device, dtype,
                   explain, skip_missing, preset, scales, subpatch)
    ropts = ray_options(ray, workers=concurrency, gpus=gpus_per_worker, workers_flag="--concurrency",
                        gpus_flag="--gpus-per-worker", **{"--batch-size": batch_size, "--overwrite": overwrite})
    target = out or "protodb-out"
    if dry_run:
        ctx.emit(dist_segment.plan(ctx.db, inputs, opts, target, overwrite=overwrite or ropts is None,
                                   batch_size=batch_size or (DEFAULT_SEGMENT_BATCH if ropts else 1),
                                   address=ray), print_segment_plan)
        return
    with input_progress(ctx.quiet or ctx.json, "segment") as progress:
        if ropts is not None:
            report = dist_segment.segment(ctx.db, inputs, opts, target, opts=ropts, overwrite=overwrite,
                                          batch_size=batch_size or DEFAULT_SEGMENT_BATCH, progress=progress)
        else:
            report = ctx.db.segment(inputs, opts, Path(target), progress=progress)
    for name in report.skipped[:1]:
        ctx.say(f"{len(report.skipped)} inputs already have outputs and were skipped (--overwrite redoes them), "
                f"e.g. {name}")
    ctx.emit(report, _report)
    for f in report.failed:
        err_console.print(f"error: {f.error}", markup=False, highlight=False)
    if report.failed:  # 3: some inputs failed, the others were written; 1: nothing succeeded
        raise typer.Exit(EXIT_PARTIAL if report.outputs else 1)


def _eval(res: EvalReport) -> None:
    table(["class", "IoU"], [(name, "-" if iou is None else f"{100 * iou:.1f}") for name, iou in res.per_class.items()])
    miou = "n/a" if res.miou is None else f"{100 * res.miou:.2f}"
    say(f"mIoU {miou} on {res.images} images of {res.dataset}/{res.split} ({res.seconds_per_image} s/image)")


@command(top, "eval")
def eval_(
    ctx: Ctx,
    dataset: Annotated[str, typer.Option(help="voc, context, context60, context59, coco-object, ade20k, cityscapes, camvid.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (mmsegmentation layout).")],
    vocab: VocabOpt = None, classes: ClassesOpt = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N images.")] = None,
    extractor: ExtractorOpt = None, levels: LevelsOpt = "class,instance,part",
    background: BackgroundOpt = None, prefilter: PrefilterOpt = None, clip_model: ClipOpt = None,
    pamr: PamrOpt = False, scales: ScalesOpt = "1", subpatch: SubpatchOpt = 1, device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """mIoU of a vocabulary on a labelled dataset (intersections/unions summed over the split).

    Example: protodb eval --dataset camvid --root ../shared/data/camvid --vocab camvid --no-background
    """
    opts = options(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr, device, dtype,
                   scales=scales, subpatch=subpatch)
    with input_progress(ctx.quiet or ctx.json, "eval") as progress:
        res = ctx.db.evaluate(dataset, root, opts, split=split, limit=limit, progress=progress)
    ctx.emit(res, _eval)
