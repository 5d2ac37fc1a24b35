"""``protodb segment`` / ``protodb eval``: assemble a vocabulary from the catalog and label images.

A vocabulary (built-in, the user's, or ad hoc ``cat,dog,boat@3``) resolves to the ready prototype
sets of its classes for the chosen extractors; their vectors are read once, filtered (levels, stuff
filter) into one match table per extractor and moved to the device once per run.

Label PNGs: with a background class, value 0 is background and class i of the vocabulary is i + 1
(PASCAL style); without, class i is i. The JSON beside each output carries the legend.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch

from protodb.device import choose_device, choose_dtype, dtype_name
from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.pipeline.imageio import to_tensor
from protodb.segment.match import ClassPrototypes, MatchTable, build_match_table, segment_image
from protodb.segment.windows import WindowSpec

LEVELS = ("class", "instance", "part")


@dataclass
class SegmentOptions:
    vocab: str | None = None
    classes: str | None = None
    extractors: Sequence[str] = ()
    levels: Sequence[str] = LEVELS
    background: bool | None = None  # None: the vocabulary's own setting (True for user vocabularies)
    prefilter: bool | None = None  # None: on when a CLIP model is configured
    clip_model: str | None = None
    pamr: bool = False
    device: str = "auto"
    dtype: str = "auto"
    stuff_threshold: float = 0.85
    windows: WindowSpec = field(default_factory=WindowSpec)
    explain: bool = False


@dataclass
class Vocabulary:
    """What a run segments with: names, refs, stuff flags and one match table per extractor."""

    name: str
    version: int
    refs: list[str]
    names: list[str]
    stuff: list[bool]
    background: bool
    extractors: list[str]
    classes: dict[str, list[ClassPrototypes]]  # extractor → per-class prototypes (vocabulary order)
    tables: dict[str, MatchTable]
    sets: dict[str, list[dict]]  # extractor → set summary per class
    rows: dict[str, list[Any]]  # extractor → PrototypeRows per class (for explanations)

    def table_for(self, extractor: str, keep: list[int] | None, opts: SegmentOptions, device, dtype) -> MatchTable:
        if keep is None or len(keep) == len(self.names):
            return self.tables[extractor]
        return build_match_table([self.classes[extractor][i] for i in keep], background=self.background,
                                 stuff_filter_threshold=opts.stuff_threshold, device=device, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "classes": self.names,
                "background": self.background, "extractors": self.extractors,
                "sets": {e: [f"{s['class']}@{s['version']}" for s in sets] for e, sets in self.sets.items()}}


def parse_levels(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in LEVELS]
    if bad or not items:
        raise InvalidInput(f"--levels takes a comma list of {', '.join(LEVELS)}; got {text!r}")
    return tuple(dict.fromkeys(items))


def resolve_vocabulary(db, opts: SegmentOptions, device, dtype) -> Vocabulary:
    """Look every class up in the catalog; one clear line names the command for a missing class."""
    levels = parse_levels(opts.levels)
    if bool(opts.vocab) == bool(opts.classes):
        raise InvalidInput("give either --vocab NAME or --classes 'cat,dog,boat@3'")
    if opts.vocab:
        v = db.vocab_show(opts.vocab)
        refs, vname, version = list(v["classes"]), v["name"], int(v["version"])
        background = v["background"] if v["background"] is not None else True
    else:
        refs = [c.strip() for c in opts.classes.split(",") if c.strip()]
        vname, version, background = "ad-hoc", 0, True
    if opts.background is not None:
        background = opts.background
    if not refs:
        raise InvalidInput("the vocabulary has no classes")
    extractors = list(dict.fromkeys(opts.extractors)) or _default_extractors(db, refs)
    fg_kinds = list(levels)
    bg_kinds = [f"bg_{k}" for k in levels]
    classes: dict[str, list[ClassPrototypes]] = {}
    sets: dict[str, list[dict]] = {}
    rows_by: dict[str, list[Any]] = {}
    names, stuff = [], []
    for e in extractors:
        classes[e], sets[e], rows_by[e] = [], [], []
        for ref in refs:
            try:
                (summary,) = db.resolve(ref, e)
            except NotFound as err:
                if opts.vocab and "has no prototypes" in str(err):
                    raise NotFound(f"{err}; or build the whole vocabulary: protodb add-vocab {opts.vocab}") from None
                raise
            rows = db.prototypes(summary, kinds=fg_kinds + bg_kinds)
            is_bg = np.array([k.startswith("bg_") for k in rows.kinds], bool)
            vec = torch.from_numpy(rows.vectors)
            ids = list(rows.ids)
            classes[e].append(ClassPrototypes(
                name=summary["class"], stuff=summary["kind"] == "stuff",
                fg=vec[~is_bg], bg=vec[is_bg],
                fg_ids=[i for i, b in zip(ids, is_bg) if not b], bg_ids=[i for i, b in zip(ids, is_bg) if b]))
            sets[e].append(summary)
            rows_by[e].append(rows)
        if not names:
            names = [c.name for c in classes[e]]
            stuff = [c.stuff for c in classes[e]]
    tables = {e: build_match_table(classes[e], background=background,
                                   stuff_filter_threshold=opts.stuff_threshold, device=device, dtype=dtype)
              for e in extractors}
    return Vocabulary(vname, version, refs, names, stuff, background, extractors, classes, tables, sets, rows_by)


def _default_extractors(db, refs: list[str]) -> list[str]:
    """Extractors every class has a ready set for (all of them: an ensemble); first ref decides order."""
    common: list[str] | None = None
    for ref in refs:
        have = [s["extractor"] for s in db.resolve(ref)]
        common = have if common is None else [e for e in common if e in have]
    if not common:
        raise NotFound("the classes share no extractor; rebuild them with a common --extractor NAME")
    return common


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours; index 0 is black (background in PASCAL-style maps)."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(1, n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):  # the PASCAL VOC bit-interleaved colour map
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


class Segmenter:
    """Holds a resolved vocabulary, loaded extractors and the optional pre-filter for a run."""

    def __init__(self, db, opts: SegmentOptions):
        self.db = db
        self.opts = opts
        self.device = choose_device(opts.device)
        self.dtype = choose_dtype(self.device, opts.dtype)
        self.vocab = resolve_vocabulary(db, opts, self.device, self.dtype)
        registry = db.registry()
        self.extractors = {}
        for e in self.vocab.extractors:
            spec = _spec_of(self.vocab.sets[e][0], db)
            self.extractors[e] = registry.load_extractor(spec, self.device, self.dtype)
        clip = opts.clip_model or _env_clip()
        use_prefilter = opts.prefilter if opts.prefilter is not None else bool(clip)
        if use_prefilter and not clip:
            raise InvalidInput("the CLIP pre-filter needs a model: --clip-model PATH_OR_ID or PROTODB_CLIP_MODEL")
        self.prefilter = None
        if use_prefilter:
            from protodb.segment.prefilter import ClipPrefilter

            self.prefilter = ClipPrefilter(clip, self.device, torch.float32)

    def segment(self, image: PIL.Image.Image) -> dict[str, Any]:
        """Label one RGB image. Returns labels (H, W) in vocabulary index space + metadata."""
        keep = None
        if self.prefilter is not None:
            keep = self.prefilter.select(image, self.vocab.names, self.vocab.stuff)
            if not keep:
                keep = list(range(len(self.vocab.names)))
        pairs = [(self.extractors[e], self.vocab.table_for(e, keep, self.opts, self.device, self.dtype))
                 for e in self.vocab.extractors]
        t = to_tensor(image)
        res = segment_image(t, pairs, windows=self.opts.windows, pamr=self.opts.pamr)
        cols = keep if keep is not None else list(range(len(self.vocab.names)))
        C = len(self.vocab.names)
        # column index of the (possibly reduced) table → vocabulary index (C = background)
        lut = np.array(cols + ([C] if self.vocab.background else []), np.int32)
        labels = lut[res.labels]
        present = {}
        for col, frac in res.fractions.items():
            vi = int(lut[col])
            name = "background" if vi == C else self.vocab.names[vi]
            mask = res.labels == col
            present[name] = {"fraction": round(frac, 6),
                             "score": round(float(res.best.numpy()[mask].mean()), 4)}
        out = {"labels": labels, "present": present, "kept": [self.vocab.names[i] for i in cols],
               "winners": {}}
        if self.opts.explain:
            out["winners"] = self._explain(res, lut, C)
        return out

    def _explain(self, res, lut, C) -> dict[str, Any]:
        out = {}
        for col, w in res.winners.items():
            vi = int(lut[col])
            name = "background" if vi == C else self.vocab.names[vi]
            ext = self.vocab.extractors[w["extractor"]]
            pid = w.get("prototype_id")
            info = {"class": name, "score": round(float(w["score"]), 4), "extractor": ext,
                    "pixel": list(map(int, w["pixel"])), "prototype": pid}
            for summary, rows in zip(self.vocab.sets[ext], self.vocab.rows[ext]):
                if pid is not None and pid in rows.ids:
                    j = rows.ids.index(pid)
                    info.update({"set": summary["id"], "set_ref": f"{summary['class']}@{summary['version']}",
                                 "kind": rows.kinds[j], "support_image": rows.image_ids[j],
                                 "region": list(rows.regions[j]) if rows.regions[j] is not None else None})
                    if info["support_image"] and info["region"]:
                        info["box"] = self._region_box(ext, summary, info["support_image"], info["region"])
                    break
            out[name] = info
        return out


    def _region_box(self, ext: str, summary: dict, image_id: str, region: list[int]) -> list[int]:
        """Patch-grid region of a support image → [x0, y0, x1, y1] pixels of the stored image."""
        from protodb.catalog.schema import SupportImageRow
        from protodb.pipeline.imageio import feature_size

        with self.db.session() as s:
            sup = s.get(SupportImageRow, image_id)
            W, H = sup.width, sup.height
        p = self.extractors[ext].patch_size
        short = summary["params"].get("short_side") or self.extractors[ext].input_size or 448
        fh, fw = feature_size(W, H, short, p)
        gh, gw = fh // p, fw // p
        y0, x0, y1, x1 = region
        return [int(x0 * W / gw), int(y0 * H / gh), int(round(x1 * W / gw)), int(round(y1 * H / gh))]


def _env_clip() -> str | None:
    import os

    return os.environ.get("PROTODB_CLIP_MODEL") or None


def _spec_of(summary: dict, db):
    from protodb.catalog.schema import ExtractorRow
    from protodb.models.extractors import spec_from_dict

    with db.session() as s:
        row = s.get(ExtractorRow, summary["extractor_id"])
        return spec_from_dict({"name": row.name, "kind": row.kind, "config": row.config})


# ---------------------------------------------------------------------------------- outputs
def write_outputs(seg: Segmenter, image: PIL.Image.Image, result: dict, out: Path, stem: str) -> dict[str, str]:
    """Palette label PNG, overlay PNG and JSON for one input; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    v = seg.vocab
    C = len(v.names)
    labels = result["labels"]
    if v.background:  # PASCAL style: 0 background, class i → i + 1
        png_values = np.where(labels == C, 0, labels + 1).astype(np.int64)
        legend = {0: "background", **{i + 1: n for i, n in enumerate(v.names)}}
    else:
        png_values = labels.astype(np.int64)
        legend = dict(enumerate(v.names))
    pal = palette(max(legend) + 1)
    if len(pal) <= 256:  # palette PNG: values are class ids, colours for viewing
        lab = PIL.Image.fromarray(png_values.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(pal)] = pal
        lab.putpalette(flat.ravel().tolist())
    else:  # more than 256 labels: 16-bit grey PNG holding the class ids (see the JSON legend)
        lab = PIL.Image.fromarray(png_values.astype(np.uint16))
    paths = {"labels": str(out / f"{stem}.labels.png"), "overlay": str(out / f"{stem}.overlay.png"),
             "json": str(out / f"{stem}.json")}
    lab.save(paths["labels"])
    colour = pal[png_values].astype(np.float32)
    over = (0.45 * np.asarray(image, np.float32) + 0.55 * colour).astype(np.uint8)
    PIL.Image.fromarray(over).save(paths["overlay"])
    meta = {"input": stem, "size": [image.width, image.height], "vocabulary": v.describe(),
            "legend": {str(k): n for k, n in legend.items()}, "present": result["present"],
            "prefilter_kept": result["kept"] if seg.prefilter is not None else None,
            "settings": settings(seg)}
    if result.get("winners"):
        meta["explain"] = result["winners"]
        paths["explain"] = str(out / f"{stem}.explain.png")
        render_explain(seg.db, image, over, result["winners"], Path(paths["explain"]))
    Path(paths["json"]).write_text(json.dumps(meta, indent=1))
    return paths


def settings(seg: Segmenter) -> dict[str, Any]:
    o = seg.opts
    return {"levels": list(parse_levels(o.levels)), "background": seg.vocab.background,
            "prefilter": seg.prefilter is not None, "pamr": o.pamr, "device": str(seg.device),
            "dtype": dtype_name(seg.dtype), "stuff_threshold": o.stuff_threshold,
            "windows": {"short_side": o.windows.short_side, "sizes": list(o.windows.sizes),
                        "stride": o.windows.stride, "whole": o.windows.whole}}


def render_explain(db, image: PIL.Image.Image, overlay: np.ndarray, winners: dict, path: Path) -> None:
    """Left: the overlay with each region's winning pixel marked; right: the support region that won."""
    import PIL.ImageDraw

    from protodb.catalog.schema import SupportImageRow
    from protodb.inspection import CELL, _crop
    from protodb.pipeline import imageio

    rows = len(winners)
    W = overlay.shape[1] + 2 * (CELL + 8) + 8
    H = max(overlay.shape[0], rows * (CELL + 20) + 8)
    sheet = PIL.Image.new("RGB", (W, H), (250, 250, 250))
    sheet.paste(PIL.Image.fromarray(overlay), (0, 0))
    draw = PIL.ImageDraw.Draw(sheet)
    x0 = overlay.shape[1] + 8
    for r, (name, w) in enumerate(sorted(winners.items())):
        y = 4 + r * (CELL + 20)
        py, px = w["pixel"]
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], outline=(255, 255, 255), width=2)
        draw.text((px + 6, py - 6), name, fill=(255, 255, 255))
        draw.text((x0, y + CELL + 2), f"{name} {w.get('kind', '?')} {w['score']:.2f}", fill=(0, 0, 0))
        if w.get("support_image") and w.get("box"):
            with db.session() as s:
                sup = s.get(SupportImageRow, w["support_image"])
                sha = sup.artifact_sha256 if sup else None
            if sha:
                im = imageio.decode_rgb(db.artifacts.get(sha))
                sheet.paste(_crop(im, list(w["box"])), (x0, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


# ---------------------------------------------------------------------------------- batch driver
@dataclass
class RunReport:
    outputs: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def segment_files(db, inputs: Sequence[str], opts: SegmentOptions, out: Path | None,
                  progress: Callable[[int, int], None] | None = None) -> RunReport:
    """Segment every input; a bad input is reported and the others still finish."""
    from protodb.images import expand_inputs, load_image

    report = RunReport()
    paths: list[Path] = []
    for arg in inputs:  # a missing input is one failure; the others still run
        try:
            paths += [p for p in expand_inputs([arg]) if p not in paths]
        except ProtoDBError as err:
            report.failed.append({"input": str(arg), "error": str(err)})
    seg = Segmenter(db, opts)
    t0 = time.perf_counter()
    stems: dict[str, int] = {}
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
            result = seg.segment(image)
            stem = path.stem
            if stem in stems:  # same file name in two folders: keep both
                stems[stem] += 1
                stem = f"{stem}-{stems[stem]}"
            else:
                stems[stem] = 0
            entry = {"input": str(path), "size": [image.width, image.height], "present": result["present"]}
            if out is not None:
                entry["files"] = write_outputs(seg, image, result, out, stem)
            if opts.explain:
                entry["explain"] = result["winners"]
            report.outputs.append(entry)
        except ProtoDBError as err:
            report.failed.append({"input": str(path), "error": str(err)})
        if progress:
            progress(i + 1, len(paths))
    report.seconds = time.perf_counter() - t0
    report.vocabulary = seg.vocab.describe()  # type: ignore[attr-defined]
    report.settings = settings(seg)  # type: ignore[attr-defined]
    return report
