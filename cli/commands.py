"""Pipeline commands registered on the main app: add-class, add-vocab, label, extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from protodb_cli.common import (
    CatalogOpt,
    DbOpt,
    JsonOpt,
    QuietOpt,
    err_console,
    handle_errors,
    human_bytes,
    open_db,
    print_json,
    say,
)
from protodb_cli.main import app
from protodb_cli.progress import stage_progress

extractor_app = typer.Typer(help="Feature extractors: list them, add your own ONNX ViT.", no_args_is_help=True)
app.add_typer(extractor_app, name="extractor")

PresetOpt = Annotated[Optional[str], typer.Option(
    help="'tiny': tiny random-weight generator and extractor built locally (offline, seconds; "
         "results NOT meaningful).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CPUs with bf16 units, fp16 on GPUs), float32, bfloat16, float16.")]


def _print_add_result(res: dict, quiet: bool) -> None:
    note = " [preset tiny: stand-in models, not meaningful]" if res.get("preset") else ""
    for s in res["sets"]:
        c = s["counts"]
        verb = "unchanged" if s["reused"] else "ready"
        say(f"{res['name']}@{s['version']} ({s['extractor']}) {verb}: "
            f"{c.get('class', 0)} class, {c.get('instance', 0)} instance, {c.get('part', 0)} part | "
            f"background {c.get('bg_class', 0)}/{c.get('bg_instance', 0)}/{c.get('bg_part', 0)} "
            f"[{res['kind']}, label from {res['label_source']}]{note}", quiet)


@app.command("add-class")
@handle_errors
def add_class(
    name: Annotated[str, typer.Argument(help="Class name, e.g. boat or 'potted plant'.")],
    images: Annotated[Optional[int], typer.Option(help="Generated support images (default 64; 4 with --preset tiny; 0 = exemplars only).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (default: the generator's, 30 for sd15).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale (default: the generator's, 8.0 for sd15).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image size in pixels (default: the generator's, 512 for sd15).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; image i uses a seed derived from (seed, class, i).")] = 0,
    generator: Annotated[Optional[str], typer.Option(help="Generator name (sd15, sd-turbo, lcm-sd15) or a local diffusers folder.")] = None,
    extractor: Annotated[Optional[list[str]], typer.Option(help="Extractor(s); repeat for an ensemble (default dinov2-vits14).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt template with {name} (default 'a good picture of a {name}').")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Negative prompt ('' for none).")] = None,
    exemplars: Annotated[Optional[Path], typer.Option(help="Folder of real support images.")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Folder of masks for the exemplars (matched by file stem).")] = None,
    mask_value: Annotated[Optional[int], typer.Option(help="Masks are label maps: this value is the class.")] = None,
    mask_min_fraction: Annotated[float, typer.Option(help="Given masks: share of a patch the class must cover for the patch to be foreground.")] = 0.5,
    segmenter: Annotated[str, typer.Option(help="Unsupervised region proposals: auto (an installed plugin such as CutLER when its checkpoint is there, else ncut), ncut, or a plugin name.")] = "auto",
    stuff: Annotated[Optional[bool], typer.Option("--stuff/--thing", help="Override the thing/stuff label.", show_default=False)] = None,
    parts: Annotated[int, typer.Option("-k", "--parts", help="Part prototypes (k-means K).")] = 32,
    vocab: Annotated[Optional[str], typer.Option(help="Also add the class to this vocabulary.")] = None,
    new_version: Annotated[bool, typer.Option(help="Build a new version even if the same config exists.")] = False,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per generator/extractor call.")] = 4,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Build prototypes for a class: generate support images, mask them, extract, cluster.

    Re-running continues where a crash stopped; the same config twice gives one version.

    Example: protodb add-class boat
    Example: protodb add-class boat --preset tiny --images 4
    Example: protodb add-class road --images 0 --exemplars photos/ --masks labels/ --mask-value 3
    """
    from protodb.pipeline.build import AddClassRequest

    req = AddClassRequest(
        name=name, images=images, generator=generator, steps=steps, guidance=guidance, size=size,
        seed=seed, prompt=prompt, negative_prompt=negative_prompt, extractors=tuple(extractor or ()),
        exemplars=exemplars, masks=masks, mask_value=mask_value, mask_min_fraction=mask_min_fraction,
        segmenter=segmenter,
        kind=None if stuff is None else ("stuff" if stuff else "thing"), k=parts,
        new_version=new_version, device=device, dtype=dtype, batch_size=batch_size,
    )
    if vocab:
        from protodb.catalog.sets import check_tag_name

        check_tag_name(vocab)  # before any work: a bad name must not leave a built class behind
    pdb = open_db(db, catalog)
    with stage_progress(quiet or json) as progress:
        res = pdb.add_class(req, preset=preset, progress=progress)
    if vocab:
        pdb.vocab_add(vocab, [res["name"]], create=True)
        res["vocab"] = vocab
    print_json(res) if json else _print_add_result(res, quiet)


@app.command("label")
@handle_errors
def label(
    name: Annotated[str, typer.Argument(help="Class name.")],
    stuff: Annotated[Optional[bool], typer.Option("--stuff/--thing", help="New label; omit to show the history.", show_default=False)] = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Show or change a class's thing/stuff label (the history is kept).

    Example: protodb label grass --stuff
    """
    pdb = open_db(db, catalog)
    data = pdb.label_history(name) if stuff is None else pdb.set_label(name, "stuff" if stuff else "thing")
    if json:
        print_json(data)
        return
    say(f"{data['name']}: {data['kind']}")
    for h in data["history"]:
        extra = f" ({h['model']}: {h['raw_answer']!r})" if h["model"] else ""
        say(f"  {h['at'][:19]}  {h['kind']:<5} from {h['source']}{extra}")


@extractor_app.command("list")
@handle_errors
def extractor_list(preset: PresetOpt = None, db: DbOpt = None, catalog: CatalogOpt = None,
                   json: JsonOpt = False) -> None:
    """List the extractors this database can use (built-in, yours, preset).

    Example: protodb extractor list --json
    """
    reg = open_db(db, catalog).registry(preset)
    rows = []
    for name in reg.extractor_names():
        spec = reg.extractor_spec(name)
        rows.append({"name": name, "kind": spec.kind, "config": spec.config})
    if json:
        print_json(rows)
        return
    table = Table("name", "kind", "model / path", "patch", "input")
    for r in rows:
        c = r["config"]
        table.add_row(r["name"], r["kind"], str(c.get("model") or c.get("path") or c.get("checkpoint")),
                      str(c.get("patch_size")), str(c.get("input_size")))
    err_console.print(table)


@extractor_app.command("add")
@handle_errors
def extractor_add(
    name: Annotated[str, typer.Argument(help="Name to use with --extractor.")],
    onnx: Annotated[Path, typer.Option(help="ONNX ViT file.")],
    output_name: Annotated[str, typer.Option(help="Tensor holding the patch tokens (graph output or intermediate).")],
    input_size: Annotated[int, typer.Option(help="Input size of the graph (pixels).")],
    patch_size: Annotated[int, typer.Option(help="Patch size (pixels).")],
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean, e.g. 0.485,0.456,0.406 (ImageNet default).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std (ImageNet default).")] = None,
    prefix_tokens: Annotated[Optional[int], typer.Option(help="Leading class/register tokens (default: inferred).")] = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Register your own ONNX ViT as an extractor (stored as data in the catalog).

    Example: protodb extractor add focus --onnx vit.onnx --output-name /backbone/layernorm/Add_1_output_0 --input-size 224 --patch-size 14
    """
    from protodb.errors import InvalidInput
    from protodb.models.extractors import IMAGENET_MEAN, IMAGENET_STD, load_extractor, onnx_spec

    if not onnx.is_file():
        raise InvalidInput(f"ONNX file {onnx} does not exist")

    def triple(text, default):
        if text is None:
            return default
        try:
            vals = tuple(float(v) for v in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 3:
            raise InvalidInput(f"expected three comma-separated numbers, got {text!r}")
        return vals

    spec = onnx_spec(name, str(onnx.resolve()), output_name, input_size, patch_size,
                     mean=triple(mean, IMAGENET_MEAN), std=triple(std, IMAGENET_STD),
                     prefix_tokens=prefix_tokens)
    extractor = load_extractor(spec)  # fails here, with one line, if the graph does not fit
    pdb = open_db(db, catalog)
    reg = pdb.registry()
    reg.add_user_extractor(spec)
    record = reg.extractor_record(spec, extractor)
    out = {"name": name, "kind": "onnx", "dim": record["dim"], "weights_hash": record["weights_hash"],
           "config": spec.config}
    print_json(out) if json else say(f"extractor {name} added ({record['dim']}-d, weights {record['weights_hash'][:12]})")


@app.command("add-vocab")
@handle_errors
def add_vocab(
    name: Annotated[str, typer.Argument(help="Vocabulary: built-in (voc, context, coco-object, ade20k, cityscapes, camvid) or yours.")],
    images: Annotated[Optional[int], typer.Option(help="Generated support images per class.")] = None,
    extractor: Annotated[Optional[list[str]], typer.Option(help="Extractor(s) (repeatable).")] = None,
    generator: Annotated[Optional[str], typer.Option(help="Generator name or local folder.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Build every class of a vocabulary that has no prototypes yet (models load once).

    Example: protodb add-vocab voc --images 64
    """
    from protodb.pipeline.build import AddClassRequest

    from protodb.errors import NotFound

    pdb = open_db(db, catalog)
    vocab = pdb.vocab_show(name)
    reg = pdb.registry(preset)
    wanted = list(extractor or ()) or [reg.default_extractor]
    results, present = [], []
    with stage_progress(quiet or json) as progress:
        for ref in vocab["classes"]:
            try:  # a class (or pinned version) that already has sets for every extractor is kept
                have = {s["extractor"] for e in wanted for s in pdb.resolve(ref, e)}
                if set(wanted) <= have:
                    present.append(ref)
                    continue
            except NotFound:
                pass
            req = AddClassRequest(name=ref.split("@")[0], images=images, generator=generator, seed=seed,
                                  extractors=tuple(wanted), device=device, dtype=dtype)
            res = pdb.add_class(req, preset=preset, progress=progress)
            results.append(res)
            if not json:
                _print_add_result(res, quiet)
    if vocab["builtin"]:
        pdb.vocab_create(name, vocab["classes"], description=vocab.get("description"), replace=True,
                         background=bool(vocab["background"]))
    if not json:
        say(f"{name}: {len(results)} classes built, {len(present)} already had prototypes", quiet)
    if json:
        print_json({"vocab": name, "classes": results, "already_built": present})


vocab_app = typer.Typer(help="Vocabularies: named lists of classes to segment with.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")


def _print_vocab(v: dict, json: bool) -> None:
    if json:
        print_json(v)
        return
    src = "built-in" if v["builtin"] else f"version {v['version']}"
    say(f"{v['name']} ({src}, {len(v['classes'])} classes): {', '.join(v['classes'])}")


@vocab_app.command("list")
@handle_errors
def vocab_list(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """List vocabularies (yours and the built-in ones).

    Example: protodb vocab list --json
    """
    rows = open_db(db, catalog).vocab_list()
    if json:
        print_json(rows)
        return
    table = Table("name", "classes", "version", "source", "description")
    for r in rows:
        table.add_row(r["name"], str(r["classes"]), str(r["version"]),
                      "built-in" if r["builtin"] else "catalog", r["description"] or "")
    err_console.print(table)


@vocab_app.command("show")
@handle_errors
def vocab_show(name: str, db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """Show a vocabulary's classes.

    Example: protodb vocab show voc
    """
    _print_vocab(open_db(db, catalog).vocab_show(name), json)


@vocab_app.command("create")
@handle_errors
def vocab_create(
    name: str,
    classes: Annotated[list[str], typer.Argument(help="Classes; pin versions with boat@3.")],
    description: Annotated[Optional[str], typer.Option(help="What it is for.")] = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Create a vocabulary.

    Example: protodb vocab create pets cat dog "guinea pig"
    """
    _print_vocab(open_db(db, catalog).vocab_create(name, classes, description=description), json)


@vocab_app.command("add")
@handle_errors
def vocab_add(name: str, classes: list[str], db: DbOpt = None, catalog: CatalogOpt = None,
              json: JsonOpt = False) -> None:
    """Add classes to a vocabulary (or re-pin them).

    Example: protodb vocab add pets hamster boat@2
    """
    _print_vocab(open_db(db, catalog).vocab_add(name, classes), json)


@vocab_app.command("remove")
@handle_errors
def vocab_remove(name: str, classes: list[str], db: DbOpt = None, catalog: CatalogOpt = None,
                 json: JsonOpt = False) -> None:
    """Remove classes from a vocabulary.

    Example: protodb vocab remove pets hamster
    """
    _print_vocab(open_db(db, catalog).vocab_remove(name, classes), json)


@app.command("inspect")
@handle_errors
def inspect_(
    ref: Annotated[str, typer.Argument(help="boat, boat@3 or boat@tag.")],
    extractor: Annotated[Optional[str], typer.Option(help="Which extractor's set (default: the first).")] = None,
    parts: Annotated[bool, typer.Option("--parts", help="Contact sheet: each part prototype's nearest support patches.")] = False,
    background: Annotated[bool, typer.Option("--background", help="The same for background prototypes.")] = False,
    instances: Annotated[bool, typer.Option("--instances", help="The same for instance prototypes.")] = False,
    images: Annotated[bool, typer.Option("--images", help="Support images with fg/bg masks and attention maps.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for sheets (default ./protodb-inspect).")] = None,
    top: Annotated[int, typer.Option(help="Nearest patches shown per prototype.")] = 6,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Show a class's versions and provenance; render what its prototypes look like.

    Example: protodb inspect boat
    Example: protodb inspect boat@2 --parts --images --out sheets/
    """
    data = open_db(db, catalog).inspect(ref, extractor=extractor, parts=parts, background=background,
                                        instances=instances, images=images, out=out, top=top)
    if json:
        print_json(data)
        return
    p = data["provenance"]
    say(f"{data['class']} — versions: " + ", ".join(
        f"{v['version']} ({','.join(v['extractors'])})" for v in data["versions"]))
    say(f"set {p['set']} (version {p['version']}, {p['status']}, protodb {p['protodb_version']})")
    g = p["generator"]
    if g:
        say(f"generator: {g['model_id']} @ {g['revision']}, {g['scheduler']}, {g['steps']} steps, "
            f"guidance {g['guidance']}, {g['size'][0]}x{g['size'][1]}, {g['dtype']}")
        say(f"prompt: {g['prompt']!r}  negative: {g['negative_prompt']!r}  base seed {g['base_seed']}")
    say(f"images: {len(p['images'])} ({sum(i['source'] == 'exemplar' for i in p['images'])} exemplars), "
        f"seeds {p['seeds'][:8]}{' …' if len(p['seeds']) > 8 else ''}")
    e = p["extractor"]
    say(f"extractor: {e['name']} ({e['kind']}, {e['dim']}-d, weights {str(e['weights_hash'])[:16]})")
    for method, params in p["masks"].items():
        say(f"masks: {method} {params}")
    lab = p["label"]
    say(f"label: {lab['kind']} (" + "; ".join(f"{h['source']}→{h['kind']}" for h in lab["history"]) + ")")
    say(f"prototypes: {p['counts']}  bytes: {p['bytes']}")
    if p["params"].get("preset"):
        say(f"[preset {p['params']['preset']}: built with stand-in models, not meaningful]")
    for label_, files in data["files"].items():
        for kind_, path in files.items():
            print(path) if not json else None


def _segment_options(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr,
                     device, dtype, explain):
    from protodb.segment.run import SegmentOptions, parse_levels

    return SegmentOptions(vocab=vocab, classes=classes, extractors=tuple(extractor or ()),
                          levels=parse_levels(levels), background=background, prefilter=prefilter,
                          clip_model=clip_model, pamr=pamr, device=device, dtype=dtype, explain=explain)


VocabOpt = Annotated[Optional[str], typer.Option(help="Vocabulary: voc, context, coco-object, ade20k, cityscapes, camvid, or yours.")]
ClassesOpt = Annotated[Optional[str], typer.Option(help="Ad hoc vocabulary: 'cat,dog,boat@3'.")]
SegExtractorOpt = Annotated[Optional[list[str]], typer.Option("--extractor", help="Extractor(s) to ensemble (default: every one all classes have).")]
LevelsOpt = Annotated[str, typer.Option(help="Prototype levels taking part: any of class,instance,part.")]
BackgroundOpt = Annotated[Optional[bool], typer.Option("--background/--no-background", help="Score a background class (default: the vocabulary's setting).", show_default=False)]
PrefilterOpt = Annotated[Optional[bool], typer.Option("--prefilter/--no-prefilter", help="CLIP multi-label pre-filter (default: on when a CLIP model is configured).", show_default=False)]
ClipOpt = Annotated[Optional[str], typer.Option(help="CLIP model (hub id or folder) for the pre-filter; or PROTODB_CLIP_MODEL.")]
PamrOpt = Annotated[bool, typer.Option("--pamr", help="Refine with PAMR (10 iterations, dilations 1,2,4,8,12,24).")]


@app.command("segment")
@handle_errors
def segment(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or glob patterns.")],
    vocab: VocabOpt = None, classes: ClassesOpt = None, extractor: SegExtractorOpt = None,
    levels: LevelsOpt = "class,instance,part", background: BackgroundOpt = None,
    prefilter: PrefilterOpt = None, clip_model: ClipOpt = None, pamr: PamrOpt = False,
    explain: Annotated[bool, typer.Option("--explain", help="For each region: the winning prototype and the support region it came from (JSON + side-by-side PNG).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for label PNGs, overlays and JSON (default ./protodb-out).")] = None,
    device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Label every pixel of images with the classes of a vocabulary.

    Writes, per input: NAME.labels.png (palette; with background 0 = background, class i = i+1),
    NAME.overlay.png and NAME.json (classes present, pixel fractions, scores, vocabulary version).
    Exit code 3 when some inputs failed (the others are still written).

    Example: protodb segment photo.jpg --vocab voc --out out/
    Example: protodb segment 'street/*.png' --classes "car,road,sky" --no-background --json
    """
    from protodb.segment.run import segment_files

    opts = _segment_options(vocab, classes, extractor, levels, background, prefilter, clip_model, pamr,
                            device, dtype, explain)
    pdb = open_db(db, catalog)
    with _input_progress(quiet or json, "segment") as progress:
        report = segment_files(pdb, inputs, opts, out or Path("protodb-out"), progress=progress)
    summary = {"vocabulary": report.vocabulary, "settings": report.settings, "outputs": report.outputs,
               "failed": report.failed, "seconds": round(report.seconds, 3)}
    if json:
        print_json(summary)
    else:
        for o in report.outputs:
            shown = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in
                              sorted(o["present"].items(), key=lambda kv: -kv[1]["fraction"]))
            say(f"{o['input']}: {shown}", quiet)
            for f in o.get("files", {}).values():
                say(f"  {f}", quiet)
    for f in report.failed:
        err_console.print(f"error: {f['error']}", markup=False, highlight=False)
    if report.failed:  # 3: some inputs failed, the others were written; 1: nothing succeeded
        raise typer.Exit(3 if report.outputs else 1)


@app.command("eval")
@handle_errors
def eval_(
    dataset: Annotated[str, typer.Option(help="voc, context, context60, context59, coco-object, ade20k, cityscapes, camvid.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (mmsegmentation layout).")],
    vocab: VocabOpt = None, classes: ClassesOpt = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N images.")] = None,
    extractor: SegExtractorOpt = None, levels: LevelsOpt = "class,instance,part",
    background: BackgroundOpt = None, prefilter: PrefilterOpt = None, clip_model: ClipOpt = None,
    pamr: PamrOpt = False, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """mIoU of a vocabulary on a labelled dataset (intersections/unions summed over the split).

    Example: protodb eval --dataset camvid --root ../shared/data/camvid --vocab camvid --no-background
    """
    from protodb.segment.evaluate import evaluate

    from protodb.segment.datasets import label_convention

    default_vocab = label_convention(dataset)["vocabulary"]  # unknown names: one line listing them
    opts = _segment_options(vocab or (None if classes else default_vocab),
                            classes, extractor, levels, background, prefilter, clip_model, pamr,
                            device, dtype, False)
    pdb = open_db(db, catalog)
    with _input_progress(quiet or json, "eval") as progress:
        res = evaluate(pdb, dataset, root, opts, split=split, limit=limit, progress=progress)
    if json:
        print_json(res)
        return
    table = Table("class", "IoU")
    for name, iou in res["per_class"].items():
        table.add_row(str(name), "-" if iou is None else f"{100 * iou:.1f}")
    err_console.print(table)
    miou = "n/a" if res["miou"] is None else f"{100 * res['miou']:.2f}"
    say(f"mIoU {miou} on {res['images']} images of {dataset}/{split} "
        f"({res['seconds_per_image']} s/image)")


import contextlib  # noqa: E402


@contextlib.contextmanager
def _input_progress(quiet: bool, label: str):
    """progress(done, total) over inputs: a rich bar on a terminal, silent otherwise."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console) as bars:
        task = bars.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        yield update


@app.command("demo")
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo database, pictures and report.")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer classes (the test suite's form).")] = False,
    json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Offline end-to-end demo: build classes from real photos with a real DINOv2 (ONNX), draw one
    class with a stand-in generator, segment, inspect, write a report.

    Example: protodb demo --out demo-out
    """
    from protodb.demo import run_demo

    res = run_demo(out, quick=quick, say=(lambda m: None) if (quiet or json) else say)
    if json:
        print_json(res)


# ---------------------------------------------------------------------------------- sharing
ShareVocabOpt = Annotated[Optional[str], typer.Option("--vocab", help="Share a vocabulary: its classes' sets and its definition.")]
ShareClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Share classes: 'boat,cat@2' (newest per extractor unless pinned).")]
ShareAllOpt = Annotated[bool, typer.Option("--all", help="Share every ready set of every class (and every vocabulary).")]
LeanOpt = Annotated[bool, typer.Option("--lean", help="Prototypes + provenance only: leave out support images, masks and attention maps.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Verify and report what would be added or skipped; write nothing.")]
MaxBytesOpt = Annotated[Optional[int], typer.Option("--max-bytes", help="Refuse bundles that unpack to more bytes than this (default 2 GiB; or PROTODB_IMPORT_MAX_BYTES).", show_default=False)]
MaxMemberOpt = Annotated[Optional[int], typer.Option("--max-member-bytes", help="Refuse any single member larger than this (default 1 GiB; or PROTODB_IMPORT_MAX_MEMBER_BYTES).", show_default=False)]

remote_app = typer.Typer(help="Remotes: where pushed prototype sets live (s3://bucket/prefix, file://..., any fsspec URL).",
                         no_args_is_help=True)
app.add_typer(remote_app, name="remote")


def _print_import(res: dict, quiet: bool) -> None:
    verb = "would add" if res["dry_run"] else "added"
    a, k = res["added"], res["skipped"]
    say(f"bundle {res['bundle']} (protodb {res['protodb_version']}, schema {res['schema_revision']}"
        f"{', lean' if res['lean'] else ''}): {verb} {len(a['sets'])} sets, {len(a['classes'])} new classes, "
        f"{a['images']} images, {a['masks']} masks, {a['artifacts']} artifacts; skipped {len(k['sets'])} sets "
        "already here", quiet)
    for s in a["sets"]:
        note = f" (was version {s['original_version']} there)" if s["renumbered"] else ""
        say(f"  {verb} {s['class']}@{s['version']} ({s['extractor']}){note}", quiet)
    for s in k["sets"]:
        say(f"  skipped {s['class']}@{s['version']} ({s['extractor']}): already here", quiet)
    if res["origin_tag"]:
        say(f"  tagged {res['origin_tag']}: name these sets with CLASS@{res['origin_tag']}", quiet)
    for v in a["vocabularies"]:
        say(f"  vocabulary {v}", quiet)
    for t in k["tags"]:
        say(f"  tag {t} not imported: that tag pins another set here", quiet)
    for w in res["warnings"]:
        say(f"  warning: {w}", quiet)


@app.command("export")
@handle_errors
def export(
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle file to write (.tar, or .tar.gz/.tgz for gzip).")],
    vocab: ShareVocabOpt = None, classes: ShareClassesOpt = None, all_: ShareAllOpt = False,
    lean: LeanOpt = False,
    gzip: Annotated[Optional[bool], typer.Option("--gzip/--no-gzip", help="Compress (default: from the file name).", show_default=False)] = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Write prototype sets and everything they depend on as one archive another team can import.

    The same sets always give the same bytes (sorted members, fixed times, manifest with sha256s).

    Example: protodb export --vocab pets -o pets.tar.gz
    Example: protodb export --classes boat,cat@2 -o boats.tar --lean
    Example: protodb export --all -o everything.tar.gz
    """
    pdb = open_db(db, catalog)
    with stage_progress(quiet or json, unit="bytes") as progress:
        res = pdb.export_bundle(out, vocab=vocab, classes=classes, all_sets=all_, lean=lean, compress=gzip,
                                progress=progress)
    if json:
        print_json(res)
        return
    say(f"wrote {res['path']} ({human_bytes(res['bytes'])}, bundle {res['bundle']}{', lean' if res['lean'] else ''}): "
        f"{len(res['sets'])} sets of {len(res['classes'])} classes, {res['artifacts']} artifacts", quiet)


@app.command("import")
@handle_errors
def import_(
    bundle: Annotated[Path, typer.Argument(help="Bundle file written by protodb export.")],
    dry_run: DryRunOpt = False, max_bytes: MaxBytesOpt = None, max_member_bytes: MaxMemberOpt = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Merge a bundle into this database: every hash and the schema are checked first, nothing
    here is overwritten (sets already here are skipped; a class that exists here with other
    provenance gets the imported sets as new versions, tagged import:<bundle hash>).

    Example: protodb import pets.tar.gz --dry-run
    Example: protodb import pets.tar.gz && protodb segment photo.jpg --vocab pets
    """
    pdb = open_db(db, catalog)
    with stage_progress(quiet or json, unit="bytes") as progress:
        res = pdb.import_bundle(bundle, dry_run=dry_run, max_bytes=max_bytes, max_member_bytes=max_member_bytes,
                                progress=progress)
    print_json(res) if json else _print_import(res, quiet)


@remote_app.command("add")
@handle_errors
def remote_add(
    name: Annotated[str, typer.Argument(help="Short name, e.g. team.")],
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix, file:///path, a folder, or any fsspec URL.")],
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Remember a remote (credentials come from the standard AWS environment/config).

    Example: protodb remote add team s3://our-bucket/protodb
    Example: protodb remote add nas /mnt/nas/protodb
    """
    res = open_db(db, catalog).remote_add(name, url)
    print_json(res) if json else say(f"remote {res['name']} → {res['url']}", quiet)


@remote_app.command("list")
@handle_errors
def remote_list(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """List remotes.

    Example: protodb remote list --json
    """
    rows = open_db(db, catalog).remote_list()
    if json:
        print_json(rows)
        return
    if not rows:
        say("no remotes yet; add one with: protodb remote add team s3://bucket/prefix")
    for r in rows:
        say(f"{r['name']}\t{r['url']}")


@remote_app.command("show")
@handle_errors
def remote_show(name: str, db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """List what a remote holds (pushed vocabularies and classes).

    Example: protodb remote show team
    """
    rows = open_db(db, catalog).remote_show(name)
    if json:
        print_json(rows)
        return
    table = Table("kind", "name", "bundle", "sets", "bytes", "pushed at")
    for r in rows:
        table.add_row(r["kind"], r["name"], str(r["bundle"]), str(r["sets"]), human_bytes(r["bytes"] or 0),
                      str(r["pushed_at"] or "")[:19])
    err_console.print(table if rows else f"remote {name} holds nothing yet")


@remote_app.command("remove")
@handle_errors
def remote_remove(name: str, db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
                  quiet: QuietOpt = False) -> None:
    """Forget a remote (nothing on it is deleted).

    Example: protodb remote remove team
    """
    res = open_db(db, catalog).remote_remove(name)
    print_json(res) if json else say(f"forgot remote {res['name']} ({res['url']})", quiet)


@app.command("push")
@handle_errors
def push(
    name: Annotated[str, typer.Argument(help="Remote name (see: protodb remote list).")],
    vocab: ShareVocabOpt = None, classes: ShareClassesOpt = None, all_: ShareAllOpt = False,
    lean: LeanOpt = False,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Upload prototype sets to a remote; only objects it lacks move, and the ref is written last,
    so an interrupted push resumes when run again.

    Example: protodb push team --vocab pets
    Example: protodb push team --classes boat,cat
    """
    pdb = open_db(db, catalog)
    with stage_progress(quiet or json, unit="bytes") as progress:
        res = pdb.push(name, vocab=vocab, classes=classes, all_sets=all_, lean=lean, progress=progress)
    if json:
        print_json(res)
        return
    say(f"pushed to {res['remote']} ({res['url']}): {res['uploaded']} objects uploaded "
        f"({human_bytes(res['uploaded_bytes'])}), {res['already_there']} already there", quiet)
    for r in res["refs"]:
        say(f"  {r['kind']}/{r['name']}: bundle {r['bundle']}, {r['sets']} sets", quiet)
    for w in res["warnings"]:
        say(f"  warning: {w}", quiet)


@app.command("pull")
@handle_errors
def pull(
    name: Annotated[str, typer.Argument(help="Remote name (see: protodb remote list).")],
    vocab: ShareVocabOpt = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Classes pushed there: 'boat,cat'.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Everything the remote holds.")] = False,
    dry_run: DryRunOpt = False, max_bytes: MaxBytesOpt = None, max_member_bytes: MaxMemberOpt = None,
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Fetch what this database lacks from a remote (each object checked by sha256) and import
    it exactly as `protodb import` does; an interrupted pull resumes from the local cache.

    Example: protodb pull team --vocab pets
    Example: protodb pull team --all --dry-run
    """
    pdb = open_db(db, catalog)
    with stage_progress(quiet or json, unit="bytes") as progress:
        res = pdb.pull(name, vocab=vocab, classes=classes, all_sets=all_, dry_run=dry_run, max_bytes=max_bytes,
                       max_member_bytes=max_member_bytes, progress=progress)
    if json:
        print_json(res)
        return
    say(f"pulled from {name} ({res['url']}): {human_bytes(res['downloaded_bytes'])} downloaded", quiet)
    for r in res["imports"]:
        say(f"{r['ref']['kind']}/{r['ref']['name']}:", quiet)
        _print_import(r, quiet)
