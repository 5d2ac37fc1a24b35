"""Teaching by example: teach (store a correction and rebuild), corrections ls, compare (before and after)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import CompareReport, CorrectionRecord, TeachResult
from protodb.errors import InvalidInput
from protodb.segment.options import SegmentOptions
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.build import print_built
from protodb_cli.options import DeviceOpt, DtypeOpt, PresetOpt
from protodb_cli.output import say, table

top = typer.Typer()
corrections_app = typer.Typer(help="Corrections: pixels of a class marked on an image, kept with provenance.",
                              no_args_is_help=True)


def print_corrections(recs: tuple[CorrectionRecord, ...] | list[CorrectionRecord]) -> None:
    rows = [(r.id[:12], r.class_name, r.origin or "", f"{r.width}x{r.height}", r.pixels, r.author or "",
             r.set_id[:12] if r.set_id else "", (r.created_at or "")[:19]) for r in recs]
    table(["id", "class", "image", "size", "pixels", "author", "corrected set", "time"], rows,
          empty="no corrections yet; add one with: protodb teach CLASS IMAGE --mask MASK")


def parse_values(items: list[str] | None) -> dict[int, str]:
    """``--value 3=boat`` (repeatable) -> {3: "boat"}."""
    out: dict[int, str] = {}
    for item in items or []:
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise InvalidInput(f"--value takes VALUE=CLASS (e.g. 3=boat), got {item!r}")
        out[int(value)] = name.strip()
    return out


@command(corrections_app, "ls")
def corrections_ls(
    ctx: Ctx,
    name: Annotated[Optional[str], typer.Argument(help="Only this class's corrections.")] = None,
) -> None:
    """List corrections: class, image, size, pixels marked, author, the set that was corrected, time.

    Example: protodb corrections ls boat --json
    """
    ctx.emit(list(ctx.db.corrections.ls(name)), print_corrections)


def _taught(res: TeachResult) -> None:
    for r in res.corrections:
        say(f"stored correction {r.id[:12]}: {r.pixels} pixels of {r.class_name} on {r.origin} "
            f"({r.width}x{r.height}), correcting {res.previous}")
    if res.built is not None:
        print_built(res.built)
        now = f"{res.class_name}@{res.built.sets[0].set.version}"
        if now == res.previous:
            say(f"{now} already holds these pixels: nothing new to build")
        else:
            say(f"{res.previous} stays as it was; compare: protodb compare {res.previous} {now}")


@command(top, "teach", db=WRITE)
def teach(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="The class the marked pixels show.")],
    image: Annotated[Optional[Path], typer.Argument(help="The image that was segmented (none: rebuild from the stored corrections).")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="PNG the image's size: non-zero pixels are the class.")] = None,
    label_map: Annotated[Optional[Path], typer.Option(help="Or a label map for several classes at once (with --value).")] = None,
    value: Annotated[Optional[list[str]], typer.Option(help="With --label-map: VALUE=CLASS, repeatable (3=boat).")] = None,
    author: Annotated[Optional[str], typer.Option(help="Who made the correction (free text).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild/--store-only", help="Build a new version now (default), or only store the correction.")] = True,
    extractor: Annotated[Optional[str], typer.Option(help="Which extractor's set to rebuild (default: the first).")] = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Correct a class by example: store the marked pixels as a correction (image + mask, with the
    source image's hash, the version corrected, author and time), then build a new version from the
    current version's support plus every correction of the class. The previous version stays (boat@N).

    Example: protodb teach boat photo.jpg --mask boat-mask.png --author ana
    Example: protodb teach boat street.png --label-map fixed.png --value 3=boat --value 5=water --store-only

    Without IMAGE: only the rebuild, from the stored corrections (it also resumes a rebuild that was killed).

    Example: protodb teach boat
    """
    values = parse_values(value)
    if label_map is not None and not values:
        raise InvalidInput("--label-map needs --value VALUE=CLASS (repeatable)")
    if image is None and mask is None and label_map is None:  # a rebuild alone (e.g. after one was killed)
        with ctx.progress() as progress:
            built = ctx.db.rebuild_with_corrections(name, extractor=extractor, preset=preset, device=device,
                                                    dtype=dtype, progress=progress)
        ctx.emit(built, print_built)
        return
    if image is None or (mask is None and label_map is None):
        raise InvalidInput("give IMAGE with --mask MASK (or --label-map MAP with --value VALUE=CLASS)")
    with ctx.progress() as progress:
        res = ctx.db.teach(name, image, mask=mask, label_map=label_map, values=values or None, author=author,
                           rebuild=rebuild, extractor=extractor, preset=preset, device=device, dtype=dtype,
                           progress=progress)
    ctx.emit(res, _taught)


def _compared(rep: CompareReport) -> None:
    rows = []
    for cls, c in rep.classes.items():
        fmt = (lambda v: "-" if v is None else f"{100 * v:.1f}")
        change = "-" if c["change"] is None else f"{100 * c['change']:+.1f}"
        rows.append((cls, fmt(c["a"]), fmt(c["b"]), change, c["pixels"]))
    table(["class", f"IoU {rep.a}", f"IoU {rep.b}", "change", "pixels"], rows)
    where = "the class's corrected images" if rep.on == "corrections" else "the labelled images"
    say(f"on {rep.images} of {where}")


@command(top, "compare")
def compare(
    ctx: Ctx,
    a: Annotated[str, typer.Argument(help="One version: boat@1 (or boat@tag).")],
    b: Annotated[str, typer.Argument(help="The other: boat@2 (or boat, the newest).")],
    images: Annotated[Optional[Path], typer.Option(help="Folder of images (without --labels: only the corrected ones among them).")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Folder of label maps matched to --images by file stem.")] = None,
    value: Annotated[Optional[list[str]], typer.Option(help="With --labels: VALUE=CLASS, repeatable; default: the maps are binary masks of the class.")] = None,
    other: Annotated[Optional[list[str]], typer.Option("--with", help="Other classes both versions compete with (repeatable).")] = None,
    background: Annotated[Optional[bool], typer.Option("--background/--no-background", help="Score a background class (default on).", show_default=False)] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Before and after: segment the same images with two versions of a class and print each class's
    IoU for both and the change — on labelled images, or (without --labels) on the class's corrected
    images, the corrected pixels being the truth.

    Example: protodb compare boat@1 boat@2
    Example: protodb compare road@1 road@2 --images val/ --labels val_labels/ --value 3=road --with sky --json
    """
    values = {cls: v for v, cls in parse_values(value).items()}
    opts = SegmentOptions(background=background, device=device, dtype=dtype)
    with ctx.input_progress("compare") as progress:
        rep = ctx.db.compare(a, b, images=images, labels=labels, values=values or None, others=tuple(other or ()),
                             options=opts, progress=progress)
    ctx.emit(rep, _compared)
