"""Sharing: export / import bundle files, remotes, push / pull."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import ExportReport, ImportReport, PullReport, PushReport, Remote
from protodb.names import quoted
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.output import human_bytes, say, table

top = typer.Typer()
remote_app = typer.Typer(help="Remotes: where pushed prototype sets live (s3://bucket/prefix, file://..., any fsspec URL).",
                         no_args_is_help=True)

VocabOpt = Annotated[Optional[str], typer.Option("--vocab", help="Share a vocabulary: its classes' sets and its definition.")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Share classes: 'boat,cat@2' (newest per extractor unless pinned).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Share every ready set of every class (and every vocabulary).")]
LeanOpt = Annotated[bool, typer.Option("--lean", help="Prototypes + provenance only: leave out support images, masks and attention maps.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Verify and report what would be added or skipped; write nothing.")]
MaxBytesOpt = Annotated[Optional[int], typer.Option("--max-bytes", help="Refuse bundles that unpack to more bytes than this (default 2 GiB; or PROTODB_IMPORT_MAX_BYTES).", show_default=False)]
MaxMemberOpt = Annotated[Optional[int], typer.Option("--max-member-bytes", help="Refuse any single member larger than this (default 1 GiB; or PROTODB_IMPORT_MAX_MEMBER_BYTES).", show_default=False)]


def print_import(res: ImportReport) -> None:
    verb = "would add" if res.dry_run else "added"
    a, k = res.added, res.skipped
    say(f"bundle {res.bundle} (protodb {res.protodb_version}, schema {res.schema_revision}"
        f"{', lean' if res.lean else ''}): {verb} {len(a['sets'])} sets, {len(a['classes'])} new classes, "
        f"{a['images']} images, {a['masks']} masks, {a['artifacts']} artifacts; skipped {len(k['sets'])} sets "
        "already here")
    for s in a["sets"]:
        note = f" (was version {s['original_version']} there)" if s["renumbered"] else ""
        say(f"  {verb} {s['class']}@{s['version']} ({s['extractor']}){note}")
    for s in k["sets"]:
        say(f"  skipped {s['class']}@{s['version']} ({s['extractor']}): already here")
    if res.origin_tag:
        say(f"  tagged {res.origin_tag}: name these sets with CLASS@{res.origin_tag}")
    for v in a["vocabularies"]:
        say(f"  vocabulary {v}")
    for t in k["tags"]:
        say(f"  tag {t} not imported: that tag pins another set here")
    for w in res.warnings:
        say(f"  warning: {w}")
    for ix in res.indexes:
        what = f"index of {ix['vocabulary']} ({ix['extractor']}, {ix['kind']})"
        if ix["state"] == "failed":
            say(f"  warning: the {what} was not rebuilt here ({ix.get('error')}); the import stands: "
                f"rebuild it with: protodb index build {quoted(ix['vocabulary'])}")
        else:
            say(f"  {what}: " + {"rebuilt": "rebuilt here", "fresh": "already fresh here",
                                 "would rebuild": "would be rebuilt here"}.get(ix["state"], ix["state"]))


@command(top, "export")
def export(
    ctx: Ctx,
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle file to write (.tar, or .tar.gz/.tgz for gzip).")],
    vocab: VocabOpt = None, classes: ClassesOpt = None, all_: AllOpt = False, lean: LeanOpt = False,
    gzip: Annotated[Optional[bool], typer.Option("--gzip/--no-gzip", help="Compress (default: from the file name).", show_default=False)] = None,
) -> None:
    """Write prototype sets and everything they depend on as one archive another team can import.

    The same sets always give the same bytes (sorted members, fixed times, manifest with sha256s).

    Example: protodb export --vocab pets -o pets.tar.gz
    Example: protodb export --classes boat,cat@2 -o boats.tar --lean
    Example: protodb export --all -o everything.tar.gz
    """
    with ctx.progress("bytes") as progress:
        res = ctx.db.sharing.export(out, vocab=vocab, classes=classes, all_sets=all_, lean=lean, compress=gzip,
                                    progress=progress)

    def human(r: ExportReport) -> None:
        say(f"wrote {r.path} ({human_bytes(r.bytes)}, bundle {r.bundle}{', lean' if r.lean else ''}): "
            f"{len(r.sets)} sets of {len(r.classes)} classes, {r.artifacts} artifacts")

    ctx.emit(res, human)


@command(top, "import", db=WRITE)
def import_(
    ctx: Ctx,
    bundle: Annotated[Path, typer.Argument(help="Bundle file written by protodb export.")],
    dry_run: DryRunOpt = False, max_bytes: MaxBytesOpt = None, max_member_bytes: MaxMemberOpt = None,
) -> None:
    """Merge a bundle into this database: every hash, row and the schema are checked first, nothing
    here is overwritten (sets already here are skipped; a class that exists here with other
    provenance gets the imported sets as new versions, tagged import:<bundle hash>).

    Example: protodb import pets.tar.gz --dry-run
    Example: protodb import pets.tar.gz && protodb segment photo.jpg --vocab pets
    """
    with ctx.progress("bytes") as progress:
        res = ctx.db.sharing.import_bundle(bundle, dry_run=dry_run, max_bytes=max_bytes,
                                           max_member_bytes=max_member_bytes, progress=progress)
    ctx.emit(res, print_import)


@command(remote_app, "add", db=WRITE)
def remote_add(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Short name, e.g. team.")],
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix, file:///path, a folder, or any fsspec URL.")],
) -> None:
    """Remember a remote (credentials come from the standard AWS environment/config).

    Example: protodb remote add team s3://our-bucket/protodb
    Example: protodb remote add nas /mnt/nas/protodb
    """
    ctx.emit(ctx.db.sharing.remote_add(name, url), lambda r: say(f"remote {r.name} → {r.url}"))


@command(remote_app, "list")
def remote_list(ctx: Ctx) -> None:
    """List remotes.

    Example: protodb remote list --json
    """
    def human(rows: list[Remote]) -> None:
        if not rows:
            say("no remotes yet; add one with: protodb remote add team s3://bucket/prefix")
        for r in rows:
            say(f"{r.name}\t{r.url}")

    ctx.emit(ctx.db.sharing.remote_list(), human)


@command(remote_app, "show")
def remote_show(ctx: Ctx, name: str) -> None:
    """List what a remote holds (pushed vocabularies and classes).

    Example: protodb remote show team
    """
    ctx.emit(ctx.db.sharing.remote_show(name), lambda rows: table(
        ["kind", "name", "bundle", "sets", "bytes", "pushed at"],
        [(r.kind, r.name, r.bundle, r.sets, human_bytes(r.bytes or 0), str(r.pushed_at or "")[:19]) for r in rows],
        empty=f"remote {name} holds nothing yet"))


@command(remote_app, "remove")
def remote_remove(ctx: Ctx, name: str) -> None:
    """Forget a remote (nothing on it is deleted).

    Example: protodb remote remove team
    """
    ctx.emit(ctx.db.sharing.remote_remove(name), lambda r: say(f"forgot remote {r.name} ({r.url})"))


@command(top, "push")
def push(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Remote name (see: protodb remote list).")],
    vocab: VocabOpt = None, classes: ClassesOpt = None, all_: AllOpt = False, lean: LeanOpt = False,
) -> None:
    """Upload prototype sets to a remote; only objects it lacks move, and the ref is written last,
    so an interrupted push resumes when run again.

    Example: protodb push team --vocab pets
    Example: protodb push team --classes boat,cat
    """
    with ctx.progress("bytes") as progress:
        res = ctx.db.sharing.push(name, vocab=vocab, classes=classes, all_sets=all_, lean=lean, progress=progress)

    def human(r: PushReport) -> None:
        say(f"pushed to {r.remote} ({r.url}): {r.uploaded} objects uploaded ({human_bytes(r.uploaded_bytes)}), "
            f"{r.already_there} already there")
        for ref in r.refs:
            say(f"  {ref['kind']}/{ref['name']}: bundle {ref['bundle']}, {ref['sets']} sets")
        for w in r.warnings:
            say(f"  warning: {w}")

    ctx.emit(res, human)


@command(top, "pull", db=WRITE)
def pull(
    ctx: Ctx,
    name: Annotated[str, typer.Argument(help="Remote name (see: protodb remote list).")],
    vocab: VocabOpt = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Classes pushed there: 'boat,cat'.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Everything the remote holds.")] = False,
    dry_run: DryRunOpt = False, max_bytes: MaxBytesOpt = None, max_member_bytes: MaxMemberOpt = None,
) -> None:
    """Fetch what this database lacks from a remote (each object checked by sha256) and import
    it exactly as `protodb import` does; an interrupted pull resumes from the local cache.

    Example: protodb pull team --vocab pets
    Example: protodb pull team --all --dry-run
    """
    with ctx.progress("bytes") as progress:
        res = ctx.db.sharing.pull(name, vocab=vocab, classes=classes, all_sets=all_, dry_run=dry_run,
                                  max_bytes=max_bytes, max_member_bytes=max_member_bytes, progress=progress)

    def human(r: PullReport) -> None:
        say(f"pulled from {r.remote} ({r.url}): {human_bytes(r.downloaded_bytes)} downloaded")
        for imp in r.imports:
            say(f"{imp.ref['kind']}/{imp.ref['name']}:")
            print_import(imp)

    ctx.emit(res, human)
