"""Building prototypes: add-class, add-vocab (in this process or on Ray)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import AddClassResult, AddVocabResult
from protodb.names import check_tag_name
from protodb.pipeline.config import AddClassRequest, parse_bg_value
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.options import BUILD_RUN, BuildRun, LexiconOpt, print_build_plan
from protodb_cli.output import EXIT_PARTIAL, err_console, say

top = typer.Typer()


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
    support_windows: Annotated[Optional[bool], typer.Option("--support-windows/--single-pass", help="Featurise support images through segment's sliding windows, each patch the mean over its windows (default; --speed fast: one pass), or in one pass over the whole image (faster builds).", show_default=False)] = None,
    augment: Annotated[Optional[list[str]], typer.Option(help="More views of each exemplar photo as support images, repeatable: zoom (two crops of 2/3 of each side, objects 1.5x larger), light (the photo at dusk and at noon). For classes from a few photos.", show_default=False)] = None,
    mask_tau: Annotated[Optional[str], typer.Option(help="Normalised cut's affinity threshold: a cosine (MaskCut's 0.2, the default) or pQ, the Q-th percentile of each photo's patch cosines (p80: the 20% most similar pairs are edges, on any extractor).", show_default=False)] = None,
    segmenter: Annotated[str, typer.Option(help="Unsupervised region proposals: auto (an installed plugin such as CutLER when its checkpoint is there, else ncut), ncut, or a plugin name.")] = "auto",
    stuff: Annotated[Optional[bool], typer.Option("--stuff/--thing", help="Override the thing/stuff label.", show_default=False)] = None,
    lexicon: LexiconOpt = None,
    parts: Annotated[Optional[int], typer.Option("-k", "--parts", help="Part prototypes (k-means K); default: the paper's 32 per 64 support images, at least 32 (64 generated images: 32; 123 photos: 62).", show_default=False)] = None,
    vocab: Annotated[Optional[str], typer.Option(help="Also add the class to this vocabulary.")] = None,
    new_version: Annotated[bool, typer.Option(help="Build a new version even if the same config exists.")] = False,
    with_corrections: Annotated[bool, typer.Option("--with-corrections", help="Add the class's stored corrections (protodb corrections ls) as exemplars with their masks.")] = False,
    run: Annotated[BuildRun, BUILD_RUN] = None,
) -> None:
    """Build prototypes for a class: generate support images, mask them, extract, cluster.

    Re-running continues where a crash stopped; the same config twice gives one version. With --ray the
    generation is split into shards spread over the workers, which write to the database themselves.

    Example: protodb add-class boat
    Example: protodb add-class boat --preset tiny --images 4
    Example: protodb add-class road --images 0 --exemplars photos/ --masks labels/ --mask-value 3
    Example: protodb add-class boat --images 256 --ray auto --shard-size 32
    Example: protodb add-class boat --speed fast   # one support pass, int8 on CPUs without bf16 units
    Example: protodb add-class boat --preset tiny --images 4 --with-corrections
    Example: protodb add-class fence --lexicon ovdiff   # thing/stuff from the OVDiff authors' table
    Example: protodb add-class cup --images 0 --exemplars photos/ --masks labels/ --mask-value 47 --augment zoom
    """
    req = AddClassRequest(
        name=name, images=images, generator=generator, steps=steps, guidance=guidance, size=size, seed=seed,
        prompt=prompt, negative_prompt=negative_prompt, extractors=tuple(extractor or ()), exemplars=exemplars,
        masks=masks, mask_value=mask_value, bg_value=parse_bg_value(bg_value), exemplar_background=exemplar_background,
        mask_min_fraction=mask_min_fraction, segmenter=segmenter, mask_extractor=mask_extractor, mask_tau=mask_tau,
        support_windows=support_windows, kind=None if stuff is None else ("stuff" if stuff else "thing"), lexicon=lexicon,
        k=parts, new_version=new_version, augment=tuple(augment or ()),
        with_corrections=with_corrections,
        device=run.device, dtype=run.dtype, batch_size=run.batch_size, yes=run.yes, speed=run.speed)
    if vocab:
        check_tag_name(vocab)  # before any work: a bad name must not leave a built class behind
    if run.dry_run:
        ctx.emit(ctx.db.plan_build([req], preset=run.preset, runner=run.runner), print_build_plan)
        return
    with ctx.progress() as progress:
        res = ctx.db.add_class(req, preset=run.preset, progress=progress, runner=run.runner)
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
    run: Annotated[BuildRun, BUILD_RUN] = None,
) -> None:
    """Build every class of a vocabulary that has no prototypes yet (models load once). A class that
    fails is listed and the others are still built (exit code 3). With --ray the classes (and their
    generation shards) are spread over the workers; re-running resumes and builds nothing twice.

    Example: protodb add-vocab voc --images 64
    Example: protodb add-vocab lvis --ray auto --catalog postgresql://me@db/team --dry-run
    """
    template = AddClassRequest(name=name, images=images, generator=generator, seed=seed,
                               extractors=tuple(extractor or ()), device=run.device, dtype=run.dtype, yes=run.yes,
                               batch_size=run.batch_size, speed=run.speed)
    on_result = None if ctx.json else (lambda r: print_built(r) if not ctx.quiet else None)
    if run.dry_run:
        ctx.emit(ctx.db.plan_build([template], preset=run.preset, runner=run.runner, vocab=name), print_build_plan)
        return
    with ctx.progress() as progress:
        res = ctx.db.add_vocab(name, template, preset=run.preset, progress=progress, on_result=on_result,
                               runner=run.runner)

    def human(r: AddVocabResult) -> None:
        say(f"{r.vocab}: {len(r.classes)} classes built, {len(r.already_built)} already had prototypes"
            + (f", {len(r.failed)} failed" if r.failed else ""))

    ctx.emit(res, human)
    for f in res.failed:
        err_console.print(f"error: {f.name}: {f.error}", markup=False, highlight=False)
    if res.failed:
        raise typer.Exit(EXIT_PARTIAL if res.classes or res.already_built else 1)
