"""Building prototypes: add-class, add-vocab, label."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import AddClassResult, AddVocabResult, LabelHistory
from protodb.lazy import lazy_import
from protodb.names import check_tag_name
from protodb.pipeline.config import AddClassRequest, parse_bg_value
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.output import EXIT_PARTIAL, err_console, say
# --- scale-out on Ray (issue 11): options, plans; the distributed modules load only with --ray/--dry-run
from protodb_cli.ray_opts import (DryRunOpt, GpusPerTaskOpt, RayOpt, ShardSizeOpt, WorkersOpt, print_build_plan,
                                  ray_options)

dist_build = lazy_import("protodb.distributed.build")
# ---

top = typer.Typer()

PresetOpt = Annotated[Optional[str], typer.Option(
    help="'paper': OVDiff as published (SD 1.5, 64 images; SD + DINO ViT-B/8 + CLIP ViT-B/16 features; K=32). "
         "'tiny': tiny random-weight generator and extractor built locally (offline, seconds; results NOT meaningful).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CPUs with bf16 units, fp16 on GPUs), float32, bfloat16, float16.")]
YesOpt = Annotated[bool, typer.Option("--yes", help="Confirm a very large build (over 1024 generated images).")]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per generator/extractor call.")]


def register(app: typer.Typer) -> None:
    app.registered_commands.extend(top.registered_commands)


def print_built(res: AddClassResult) -> None:
    for note in res.skipped:
        say(f"skipped exemplar {note}")
    note = " [preset tiny: stand-in models, not meaningful]" if res.preset == "tiny" else ""
    for b in res.sets:
        c = b.set.counts
        verb = "unchanged" if b.reused else "ready"
        say(f"{res.name}@{b.set.version} ({b.set.extractor}) {verb}: "
            f"{c.get('class', 0)} class, {c.get('instance', 0)} instance, {c.get('part', 0)} part | "
            f"background {c.get('bg_class', 0)}/{c.get('bg_instance', 0)}/{c.get('bg_part', 0)} "
            f"[{res.kind}, label from {res.label_source}]{note}")


@command(top, "add-class", db=WRITE)
def add_class(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Class name, e.g. boat or 'potted plant'.")],
    images: Annotated[Optional[int], typer.Option(help="Generated support images (default 64; 4 with --preset tiny; 0 = exemplars only).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (default: the generator's, 30 for sd15).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale (default: the generator's, 8.0 for sd15).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image size in pixels (default: the generator's, 512 for sd15).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; image i uses a seed derived from (seed, class, i).")] = 0,
    generator: Annotated[Optional[str], typer.Option(help="Generator name (sd15, sd-turbo, lcm-sd15) or a local diffusers folder.")] = None,
    extractor: Annotated[Optional[list[str]], typer.Option(help="Extractor(s); repeat for an ensemble (default dinov2-vits14).")] = None,
    mask_extractor: Annotated[Optional[str], typer.Option(help="Whose features make the support masks, shared by every extractor (default: the first).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt template with {name} (default 'a good picture of a {name}').")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Negative prompt ('' for none).")] = None,
    exemplars: Annotated[Optional[Path], typer.Option(help="Folder of real support images.")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Folder of masks for the exemplars (matched by file stem).")] = None,
    mask_value: Annotated[Optional[int], typer.Option(help="Masks are label maps: this value is the class.")] = None,
    bg_value: Annotated[str, typer.Option(help="Label maps: this value is background (default 0); other labels are never background. 'none': the maps have no background label, every other label is background.")] = "0",
    exemplar_background: Annotated[bool, typer.Option("--exemplar-background/--no-exemplar-background", help="Take background prototypes from exemplar photos (off for cluttered photos).")] = True,
    mask_min_fraction: Annotated[float, typer.Option(help="Given masks: share of a patch the class must cover for the patch to be foreground.")] = 0.5,
    support_windows: Annotated[bool, typer.Option("--support-windows/--single-pass", help="Featurise support images through segment's sliding windows, each patch the mean over its windows (default), or in one pass over the whole image (faster builds).")] = True,
    segmenter: Annotated[str, typer.Option(help="Unsupervised region proposals: auto (an installed plugin such as CutLER when its checkpoint is there, else ncut), ncut, or a plugin name.")] = "auto",
    stuff: Annotated[Optional[bool], typer.Option("--stuff/--thing", help="Override the thing/stuff label.", show_default=False)] = None,
    parts: Annotated[Optional[int], typer.Option("-k", "--parts", help="Part prototypes (k-means K); default: the paper's 32 per 64 support images, at least 32 (64 generated images: 32; 123 photos: 62).", show_default=False)] = None,
    vocab: Annotated[Optional[str], typer.Option(help="Also add the class to this vocabulary.")] = None,
    new_version: Annotated[bool, typer.Option(help="Build a new version even if the same config exists.")] = False,
    yes: YesOpt = False,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSizeOpt = 4,
    ray: RayOpt = None, workers: WorkersOpt = None, gpus_per_task: GpusPerTaskOpt = None,
    shard_size: ShardSizeOpt = None, dry_run: DryRunOpt = False,
) -> None:
    """Build prototypes for a class: generate support images, mask them, extract, cluster.

    Re-running continues where a crash stopped; the same config twice gives one version. With --ray the
    generation is split into shards spread over the workers, which write to the database themselves.

    Example: protodb add-class boat
    Example: protodb add-class boat --preset tiny --images 4
    Example: protodb add-class road --images 0 --exemplars photos/ --masks labels/ --mask-value 3
    Example: protodb add-class boat --images 256 --ray auto --shard-size 32
    """
    req = AddClassRequest(
        name=name, images=images, generator=generator, steps=steps, guidance=guidance, size=size, seed=seed,
        prompt=prompt, negative_prompt=negative_prompt, extractors=tuple(extractor or ()), exemplars=exemplars,
        masks=masks, mask_value=mask_value, bg_value=parse_bg_value(bg_value), exemplar_background=exemplar_background,
        mask_min_fraction=mask_min_fraction, segmenter=segmenter, mask_extractor=mask_extractor,
        support_windows=support_windows, kind=None if stuff is None else ("stuff" if stuff else "thing"), k=parts, new_version=new_version,
        device=device, dtype=dtype, batch_size=batch_size, yes=yes)
    if vocab:
        check_tag_name(vocab)  # before any work: a bad name must not leave a built class behind
    ropts = ray_options(ray, workers=workers, gpus=gpus_per_task, shard_size=shard_size)
    if dry_run:
        ctx.emit(dist_build.plan(ctx.db, [req], [], preset=preset, opts=ropts), print_build_plan)
        return
    with ctx.progress() as progress:
        if ropts is not None:
            res = dist_build.add_class(ctx.db, req, preset=preset, opts=ropts, progress=progress)
        else:
            res = ctx.db.add_class(req, preset=preset, progress=progress)
    if vocab:
        ctx.db.vocabs.add(vocab, [res.name], create=True)
        res = dataclasses.replace(res, vocab=vocab)
    ctx.emit(res, print_built)


@command(top, "add-vocab", db=WRITE)
def add_vocab(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Vocabulary: built-in (voc, context, coco-object, ade20k, cityscapes, camvid) or yours.")],
    images: Annotated[Optional[int], typer.Option(help="Generated support images per class.")] = None,
    extractor: Annotated[Optional[list[str]], typer.Option(help="Extractor(s) (repeatable).")] = None,
    generator: Annotated[Optional[str], typer.Option(help="Generator name or local folder.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    yes: YesOpt = False,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSizeOpt = 4,
    ray: RayOpt = None, workers: WorkersOpt = None, gpus_per_task: GpusPerTaskOpt = None,
    shard_size: ShardSizeOpt = None, dry_run: DryRunOpt = False,
) -> None:
    """Build every class of a vocabulary that has no prototypes yet (models load once). A class that
    fails is listed and the others are still built (exit code 3). With --ray the classes (and their
    generation shards) are spread over the workers; re-running resumes and builds nothing twice.

    Example: protodb add-vocab voc --images 64
    Example: protodb add-vocab lvis --ray auto --catalog postgresql://me@db/team --dry-run
    """
    template = AddClassRequest(name=name, images=images, generator=generator, seed=seed,
                               extractors=tuple(extractor or ()), device=device, dtype=dtype, yes=yes,
                               batch_size=batch_size)
    ropts = ray_options(ray, workers=workers, gpus=gpus_per_task, shard_size=shard_size)
    on_result = None if ctx.json else (lambda r: print_built(r) if not ctx.quiet else None)
    if dry_run:
        _vocab, requests, present = dist_build.vocab_requests(ctx.db, name, template, preset)
        ctx.emit(dist_build.plan(ctx.db, requests, present, preset=preset, opts=ropts), print_build_plan)
        return
    with ctx.progress() as progress:
        if ropts is not None:
            res = dist_build.add_vocab(ctx.db, name, template, preset=preset, opts=ropts, progress=progress,
                                       on_result=on_result)
        else:
            res = ctx.db.add_vocab(name, template, preset=preset, progress=progress, on_result=on_result)

    def human(r: AddVocabResult) -> None:
        say(f"{r.vocab}: {len(r.classes)} classes built, {len(r.already_built)} already had prototypes"
            + (f", {len(r.failed)} failed" if r.failed else ""))

    ctx.emit(res, human)
    for f in res.failed:
        err_console.print(f"error: {f.name}: {f.error}", markup=False, highlight=False)
    if res.failed:
        raise typer.Exit(EXIT_PARTIAL if res.classes or res.already_built else 1)


def _history(data: LabelHistory) -> None:
    say(f"{data.name}: {data.kind}")
    for h in data.history:
        extra = f" ({h.model}: {h.raw_answer!r})" if h.model else ""
        say(f"  {h.at[:19]}  {h.kind:<5} from {h.source}{extra}")


@command(top, "label")
def label(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Class name.")],
    stuff: Annotated[Optional[bool], typer.Option("--stuff/--thing", help="New label; omit to show the history.", show_default=False)] = None,
) -> None:
    """Show or change a class's thing/stuff label (the history is kept).

    Example: protodb label grass --stuff
    """
    labels = ctx.db.labels
    ctx.emit(labels.history(name) if stuff is None else labels.set(name, "stuff" if stuff else "thing"), _history)
