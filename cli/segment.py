"""Labelling images: segment and eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import EvalReport, SegmentReport
from protodb.segment.options import SegmentOptions
from protodb_cli.app import Ctx, command
from protodb_cli.options import SEGMENT_RUN, SEGMENTING, SegmentRun, SkipOpt, print_segment_plan
from protodb_cli.output import EXIT_PARTIAL, err_console, say, table

top = typer.Typer()


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
    explain: Annotated[bool, typer.Option("--explain", help="For each region: the winning prototype and the support region it came from (JSON + side-by-side PNG).")] = False,
    skip_missing: SkipOpt = False,
    preset: Annotated[Optional[str], typer.Option(help="'paper': turn on the pre-filter with CLIP ViT-B/16 (openai/clip-vit-base-patch16) unless --clip-model is given.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder for label PNGs, overlays and JSON (default: DB/out/segment, inside the database home; with --ray also s3://...); outputs mirror the inputs' relative paths.")] = None,
    segmenting: Annotated[SegmentOptions, SEGMENTING] = None,
    run: Annotated[SegmentRun, SEGMENT_RUN] = None,
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
    Example: protodb segment street.png --vocab camvid --speed fast   # whole image only: ~3x cheaper on a CPU
    Example: protodb segment 's3://b/imgs/**/*.jpg' --vocab voc --out s3://b/out/ --ray auto --batch-size 16
    """
    opts = segmenting.replace(explain=explain, skip_missing=skip_missing, preset=preset)
    target = out or str(ctx.db.home / "out" / "segment")
    if run.dry_run:
        ctx.emit(ctx.db.plan_segment(inputs, opts, target, runner=run.runner, overwrite=run.overwrite,
                                     batch_size=run.batch_size), print_segment_plan)
        return
    with ctx.input_progress("segment") as progress:
        report = ctx.db.segment(inputs, opts, target, progress=progress, runner=run.runner,
                                batch_size=run.batch_size, overwrite=run.overwrite)
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
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N images.")] = None,
    segmenting: Annotated[SegmentOptions, SEGMENTING] = None,
) -> None:
    """mIoU of a vocabulary on a labelled dataset (intersections/unions summed over the split).

    Example: protodb eval --dataset camvid --root ../shared/data/camvid --vocab camvid --no-background
    """
    with ctx.input_progress("eval") as progress:
        res = ctx.db.evaluate(dataset, root, segmenting, split=split, limit=limit, progress=progress)
    ctx.emit(res, _eval)
