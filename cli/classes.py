"""Classes and their sets: ls, inspect (provenance + contact sheets), label (thing/stuff), alias (tags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protodb.entities import ClassVersions, InspectReport, LabelHistory, TaggedSets
from protodb_cli.app import Ctx, command
from protodb_cli.output import human_bytes, say, table

top = typer.Typer()


def _ls(classes: list[ClassVersions]) -> None:
    rows = [(c.name, c.kind, v.version, ",".join(v.extractors), v.images, sum(v.counts.values()), ",".join(v.tags),
             human_bytes(v.bytes)) for c in classes for v in c.versions]
    table(["class", "kind", "version", "extractors", "images", "prototypes", "tags", "bytes"], rows,
          empty="no classes yet; add one with: protodb add-class boat")


@command(top, "ls")
def ls_(ctx: Ctx, names: Annotated[Optional[list[str]], typer.Argument(help="Only these classes.")] = None) -> None:
    """List classes with their ready versions, extractors, thing/stuff label and sizes.

    Example: protodb ls --json
    """
    ctx.emit(ctx.db.overview.ls(names), _ls)


def _inspect(data: InspectReport) -> None:
    p = data.provenance
    say(f"{data.class_name} — versions: " + ", ".join(f"{v.version} ({','.join(v.extractors)})" for v in data.versions))
    say(f"set {p['set']} (version {p['version']}, {p['status']}, protodb {p['protodb_version']})")
    g = p["generator"]
    if g:
        say(f"generator: {g['model_id']} @ {g['revision']}, {g['scheduler']}, {g['steps']} steps, "
            f"guidance {g['guidance']}, {g['size'][0]}x{g['size'][1]}, {g['dtype']}")
        say(f"prompt: {g['prompt']!r}  negative: {g['negative_prompt']!r}  base seed {g['base_seed']}")
    views = sum(i['source'] == 'view' for i in p['images'])
    say(f"images: {len(p['images'])} ({sum(i['source'] == 'exemplar' for i in p['images'])} exemplars, "
        + (f"{views} views (--augment {' '.join(p['config'].get('augment') or [])}), " if views else "")
        + f"{sum(i['source'] == 'correction' for i in p['images'])} corrected), "
        f"seeds {p['seeds'][:8]}{' …' if len(p['seeds']) > 8 else ''}")
    e = p["extractor"]
    say(f"extractor: {e['name']} ({e['kind']}, {e['dim']}-d, weights {str(e['weights_hash'])[:16]})")
    for method, params in p["masks"].items():
        say(f"masks: {method} {params}")
    lab = p["label"]
    say(f"label: {lab['kind']} (" + "; ".join(f"{h['source']}→{h['kind']}" for h in lab["history"]) + ")")
    say(f"prototypes: {p['counts']}  bytes: {p['bytes']}")
    corr = p.get("corrections") or {}
    if corr.get("all"):
        used = set(corr.get("used") or ())
        say(f"corrections: {len(corr['all'])} stored, {len(used)} built into this version")
        for c in corr["all"]:
            say(f"  {c['id'][:12]} {c['pixels']} px on {c['origin']} ({c['width']}x{c['height']}) by "
                f"{c['author'] or '-'} at {(c['created_at'] or '')[:19]}{' [in this version]' if c['id'] in used else ''}")
    if p.get("config"):
        c = p["config"]
        say(f"config {p['config_hash'][:16]}: k={c.get('k')} seed={c.get('seed')} short side {c.get('short_side')}, "
            f"masks {c.get('masks', {}).get('segmenter')} on {c.get('masks', {}).get('source')}, "
            f"pipeline {c.get('pipeline_version')}, built by protodb {c.get('built_by')}")
    if p["params"].get("preset"):
        say(f"[preset {p['params']['preset']}: built with stand-in models, not meaningful]")
    for files in data.files.values():
        for path in files.values():
            print(path)


@command(top, "inspect")
def inspect_(
    ctx: Ctx,
    ref: Annotated[str, typer.Argument(help="boat, boat@3 or boat@tag.")],
    extractor: Annotated[Optional[str], typer.Option(help="Which extractor's set (default: the first).")] = None,
    parts: Annotated[bool, typer.Option("--parts", help="Contact sheet: each part prototype's nearest support patches.")] = False,
    background: Annotated[bool, typer.Option("--background", help="The same for background prototypes.")] = False,
    instances: Annotated[bool, typer.Option("--instances", help="The same for instance prototypes.")] = False,
    images: Annotated[bool, typer.Option("--images", help="Support images with fg/bg masks and attention maps.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for sheets (default: DB/out/inspect, inside the database home).")] = None,
    top: Annotated[int, typer.Option(help="Nearest patches shown per prototype.")] = 6,
) -> None:
    """Show a class's versions and provenance (the resolved build config); render what its
    prototypes look like.

    Example: protodb inspect boat
    Example: protodb inspect boat@2 --parts --images --out sheets/
    """
    ctx.emit(ctx.db.inspect(ref, extractor=extractor, parts=parts, background=background, instances=instances,
                            images=images, out=out, top=top), _inspect)


def _tagged(t: TaggedSets) -> None:
    for s in t.sets:
        say(f"{t.tag}: {s.class_name}@{s.version} ({s.extractor})")


@command(top, "alias")
def alias(
    ctx: Ctx,
    tag: Annotated[str, typer.Argument(help="Alias or tag name, e.g. voc:paper.")],
    refs: Annotated[Optional[list[str]], typer.Argument(help="Sets to pin: boat, boat@3, cat@other-tag. None: show what the tag pins.")] = None,
    extractor: Annotated[Optional[str], typer.Option(help="Only this extractor's sets.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Delete the tag.")] = False,
) -> None:
    """Pin prototype sets under a tag (the API calls it a tag; alias is the CLI's word for one):
    then boat@NAME names boat's pinned set, or every set tagged NAME can be used.

    Example: protodb alias voc:paper boat@2 cat@1 dog
    """
    sets = ctx.db.sets
    if remove:
        ctx.emit(sets.untag(tag), lambda u: say(f"removed tag {u.tag} from {u.removed} sets"))
        return
    ctx.emit(sets.tag(tag, refs, extractor=extractor) if refs else sets.tagged(tag), _tagged)


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
