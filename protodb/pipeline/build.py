"""``add-class``: from a class name (and/or real exemplars) to ready prototype sets.

Stages, each resumable and recorded in the catalog::

    generate  → support images + cross-attention maps (persisted one by one: a crash loses ≤ 1 batch)
    exemplars → real support images (+ given masks)
    extract   → patch features per (image, extractor), cached by content hash
    masks     → foreground/background per image (ncut + attention, given masks, or ncut alone)
    prototypes→ class / instance / part, foreground and background (k-means)
    commit    → vectors, then one catalog transaction marking each set ready

Everything is validated before the first write, so bad input leaves the database unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
from scipy import ndimage
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from protodb.catalog.schema import (
    GenerationRunRow,
    GeneratorSpecRow,
    LabelRow,
    MaskRow,
    SupportImageRow,
)
from protodb.catalog.sets import get_class, normalize_class_name
from protodb.device import choose_device, choose_dtype, dtype_name
from protodb.errors import InvalidInput
from protodb.images import IMAGE_EXTENSIONS, load_image
from protodb.pipeline import imageio
from protodb.pipeline.features import FeatureCache, featurize
from protodb.storage.vectors import PrototypeRows

PIPELINE_VERSION = 1  # bump when the way prototypes are computed from the same inputs changes

# progress(stage, advance, total): total is given once per stage with advance=0
Progress = Callable[[str, int, int | None], None]


@dataclass
class AddClassRequest:
    """What ``protodb add-class`` was asked to build. Defaults follow the OVDiff paper."""

    name: str
    images: int | None = None  # default: 64 (OVDiff), 4 with --preset tiny
    generator: str | None = None  # default: sd15 (tiny with --preset tiny)
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    seed: int = 0
    prompt: str | None = None
    negative_prompt: str | None = None
    extractors: Sequence[str] = ()  # default: dinov2-vits14 (tiny-vit with --preset tiny)
    exemplars: Path | None = None
    masks: Path | None = None
    mask_value: int | None = None
    kind: str | None = None  # "thing" | "stuff" override
    k: int = 32
    new_version: bool = False
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    short_side: int | None = None  # feature resolution of support images (default: 448; tiny: 64)
    mask_min_fraction: float = 0.5  # given masks: a patch is foreground when this share of it is
    segmenter: str = "auto"  # unsupervised proposals: auto (an installed, usable plugin, else ncut), ncut, NAME


@dataclass
class SupportImage:
    id: str
    sha: str
    image: PIL.Image.Image
    source: str
    attention: np.ndarray | None = None  # (H, W) float32 in [0, 1] for generated images
    given_mask: np.ndarray | None = None  # (H, W) bool for exemplars with masks


@dataclass
class AddClassResult:
    name: str
    kind: str
    label_source: str
    sets: list[dict[str, Any]] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    generated: int = 0
    reused_images: int = 0
    exemplars: int = 0
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "label_source": self.label_source,
            "generated_images": self.generated, "reused_images": self.reused_images,
            "exemplar_images": self.exemplars, "preset": self.preset,
            "sets": [{**s, "reused": r} for s, r in zip(self.sets, self.reused)],
        }


def _sha_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _mask_digest(mask: np.ndarray | None) -> str | None:
    """Content hash of a given mask, so corrected masks make a new set."""
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    return hashlib.sha256(np.packbits(m).tobytes() + str(m.shape).encode()).hexdigest()[:16]


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_label_map(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as im:
        arr = np.asarray(im)
    return arr if arr.ndim == 2 else arr[..., 0]


def validate(req: AddClassRequest, registry) -> dict[str, Any]:
    """Check every input before anything is written; returns the resolved pieces."""
    name = normalize_class_name(req.name)
    if req.images is None:
        req.images = 4 if registry.preset == "tiny" else 64
    req.generator = req.generator or registry.default_generator
    req.extractors = tuple(req.extractors) or (registry.default_extractor,)
    if req.images < 0:
        raise InvalidInput(f"--images must be >= 0, got {req.images}")
    if not 0.0 < req.mask_min_fraction <= 1.0:
        raise InvalidInput(f"--mask-min-fraction must be in (0, 1], got {req.mask_min_fraction}")
    if req.k < 1:
        raise InvalidInput(f"-k must be >= 1, got {req.k}")
    if req.kind not in (None, "thing", "stuff"):
        raise InvalidInput(f"kind must be thing or stuff, got {req.kind!r}")
    specs = [registry.extractor_spec(e) for e in dict.fromkeys(req.extractors)]
    exemplar_files: list[Path] = []
    mask_files: dict[str, Path] = {}
    if req.exemplars is not None:
        folder = Path(req.exemplars)
        if not folder.is_dir():
            raise InvalidInput(f"exemplar folder {folder} does not exist")
        exemplar_files = _list_images(folder)
        if not exemplar_files:
            raise InvalidInput(f"exemplar folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if req.masks is not None:
        if req.exemplars is None:
            raise InvalidInput("--masks needs --exemplars (masks are matched to exemplars by file stem)")
        mfolder = Path(req.masks)
        if not mfolder.is_dir():
            raise InvalidInput(f"mask folder {mfolder} does not exist")
        by_stem = {p.stem: p for p in _list_images(mfolder)}
        mask_files = {p.stem: by_stem[p.stem] for p in exemplar_files if p.stem in by_stem}
        if not mask_files:
            raise InvalidInput(f"no mask in {mfolder} matches an exemplar file name (matched by stem)")
    elif req.mask_value is not None:
        raise InvalidInput("--mask-value needs --masks")
    loaded = load_exemplars(exemplar_files, mask_files, req.mask_value) if exemplar_files else []
    if req.images == 0 and not exemplar_files:
        raise InvalidInput("nothing to build from: --images 0 and no --exemplars")
    generator = None
    if req.images > 0:
        generator = registry.generator_spec(req.generator)
        changes = {}
        if req.steps is not None:
            changes["steps"] = req.steps
        if req.guidance is not None:
            changes["guidance"] = req.guidance
        if req.size is not None:
            changes["width"] = changes["height"] = req.size
        if req.prompt is not None:
            template = req.prompt
            if "{name}" not in template:
                template, n = re.subn(re.escape(name), "{name}", template, flags=re.IGNORECASE)
                if not n:
                    raise InvalidInput(f"--prompt must contain the class name or '{{name}}': {req.prompt!r}")
            try:
                template.format(name=name)
            except (KeyError, IndexError, ValueError):
                raise InvalidInput(f"--prompt may hold no other {{...}} field than {{name}}: {req.prompt!r}") from None
            changes["prompt_template"] = template
        if req.negative_prompt is not None:
            changes["negative_prompt"] = req.negative_prompt or None
        generator = generator.replace(**changes) if changes else generator
        from protodb.models.generators import resolve_model_folder

        resolve_model_folder(generator)  # weights must exist (or download) before anything is written
    return {"name": name, "extractors": specs, "exemplars": loaded, "generator": generator}


MIN_OBJECT_AREA = 0.03  # an object segment covers at least 3% of the image


def object_segment(segments: list[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """The foreground of an exemplar without a mask and without attention.

    Normalised cut splits the image but does not say which side is the object; as in MaskCut's
    corner rule, the object is the candidate (a segment, or the rest of the image) touching the
    image border least, relative to its own border length. Returns (h, w) bool (empty if none).
    """
    h, w = grid
    border = np.zeros(grid, bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    candidates = list(segments)
    if segments:
        rest = ~np.logical_or.reduce(segments)
        if rest.any():
            candidates.append(rest)
    best, best_score = np.zeros(grid, bool), None
    for c in candidates:
        if c.mean() < MIN_OBJECT_AREA:
            continue
        score = (c & border).sum() / max(1, border.sum())  # share of the frame it occupies
        if best_score is None or score < best_score:
            best, best_score = c, score
    return best


def load_exemplars(files: list[Path], masks: dict[str, Path], mask_value: int | None
                   ) -> list[tuple[Path, PIL.Image.Image, np.ndarray | None]]:
    """Decode exemplar images (EXIF-rotated, RGB) and their masks; exemplars whose mask is empty
    (the class is not in that image) are left out. Raises InvalidInput for unreadable files."""
    from protodb.pipeline.masks import masks_from_labels

    out = []
    for path in files:
        image = load_image(path)  # EXIF, 16-bit, CMYK, alpha, bombs: as for segment inputs
        given = None
        if path.stem in masks:
            try:
                lm = _load_label_map(masks[path.stem])
            except Exception as err:  # noqa: BLE001
                raise InvalidInput(f"cannot read mask {masks[path.stem]}: {err}") from err
            if lm.shape != (image.height, image.width):
                raise InvalidInput(f"mask {masks[path.stem]} is {lm.shape[1]}x{lm.shape[0]}, "
                                   f"exemplar {path.name} is {image.width}x{image.height}")
            given = masks_from_labels(lm, mask_value)
            if not given.any():
                continue  # this exemplar does not show the class
        out.append((path, image, given))
    if files and not out:
        raise InvalidInput(f"no exemplar shows the class (every mask is empty for value {mask_value})")
    return out


class ClassBuilder:
    """Runs add-class for one database; models are loaded once and shared across classes."""

    def __init__(self, db, registry, *, device: str = "auto", dtype: str = "auto",
                 progress: Progress | None = None):
        self.db = db
        self.registry = registry
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, dtype)
        self.progress = progress or (lambda stage, n, total: None)
        self.cache = FeatureCache(Path(db.home) / "cache" / "features")
        self.segmenter = None  # None: the built-in normalised cut; else a plugin (see segmenters.py)

    # ------------------------------------------------------------------ entry point
    def add_class(self, req: AddClassRequest) -> AddClassResult:
        plan = validate(req, self.registry)
        from protodb.pipeline.segmenters import choose

        self.segmenter = choose(req.segmenter)
        name = plan["name"]
        extractors = [self.registry.load_extractor(s, self.device, self.dtype) for s in plan["extractors"]]
        label = self._label(name, req.kind)
        result = AddClassResult(name=name, kind=label["kind"], label_source=label["source"],
                                preset=self.registry.preset)
        def class_row(s):
            cls = self.db.ensure_class(s, name, label=label)
            if label["source"] == "manual" and cls.kind != label["kind"]:
                cls.kind = label["kind"]
                s.add(LabelRow(class_id=cls.id, **label))
            return cls.id, cls.kind

        class_id, result.kind = self.db.transact(class_row)
        support: list[SupportImage] = []
        run_id = None
        if plan["generator"] is not None and req.images > 0:
            run_id, gen_images, n_new = self._generate(class_id, name, plan["generator"], req)
            support += gen_images
            result.generated, result.reused_images = n_new, len(gen_images) - n_new
        if plan["exemplars"]:
            ex = self._store_exemplars(class_id, plan["exemplars"])
            support += ex
            result.exemplars = len(ex)
        for spec, extractor in zip(plan["extractors"], extractors):
            summary, reused = self._build_set(name, class_id, spec, extractor, support, run_id, req)
            result.sets.append(summary)
            result.reused.append(reused)
        return result

    # ------------------------------------------------------------------ labels
    def _label(self, name: str, override: str | None) -> dict[str, Any]:
        from protodb.pipeline.labels import classify

        with self.db.session() as s:
            existing = get_class(s, name)
            if existing is not None and override is None:
                return {"kind": existing.kind, "source": "existing", "model": None, "prompt": None,
                        "raw_answer": None}
        lab = classify(name, override=override)
        return {"kind": lab.kind, "source": lab.source, "model": lab.model, "prompt": lab.prompt,
                "raw_answer": lab.raw_answer}

    # ------------------------------------------------------------------ generation
    def _generate(self, class_id: str, name: str, spec, req: AddClassRequest):
        from protodb.models.generators import model_revision
        from protodb.pipeline.generate import generate

        revision = model_revision(spec)  # from the files: no need to load the model yet
        spec_record = {**spec.to_dict(), "resolved_revision": revision, "device_dtype": dtype_name(self.dtype)}
        spec_id = _sha_json(spec_record)
        prompt = spec.prompt_template.format(name=name)
        negative = spec.negative_prompt
        run_id = _sha_json({"class": name, "spec": spec_id, "prompt": prompt, "negative": negative,
                            "seed": req.seed})[:32]
        def run_rows(s):  # retried: a concurrent run may insert the same spec/run first
            if s.get(GeneratorSpecRow, spec_id) is None:
                s.add(GeneratorSpecRow(
                    id=spec_id, name=spec.name, model_id=spec.model_id, revision=revision,
                    scheduler=spec.scheduler, steps=spec.steps, guidance=spec.guidance,
                    width=spec.width, height=spec.height, dtype=dtype_name(self.dtype),
                    config=spec_record,
                ))
                s.flush()
            run = s.get(GenerationRunRow, run_id)
            if run is None:
                s.add(GenerationRunRow(id=run_id, class_id=class_id, generator_spec_id=spec_id,
                                       prompt=prompt, negative_prompt=negative, base_seed=req.seed,
                                       num_images=req.images))
            elif run.num_images < req.images:
                run.num_images = req.images

        self.db.transact(run_rows)
        with self.db.session() as s:
            done = {r.index_in_run: r for r in s.scalars(
                select(SupportImageRow).where(SupportImageRow.run_id == run_id,
                                              SupportImageRow.index_in_run < req.images))}
        missing = [i for i in range(req.images) if i not in done]
        self.progress("generate", 0, req.images)
        if done:
            self.progress("generate", len(done), None)
        new_rows: dict[int, SupportImageRow] = {}
        attention: dict[int, np.ndarray] = {}
        images: dict[int, PIL.Image.Image] = {}
        if missing:
            pipe = self.registry.load_pipeline(spec, self.device, self.dtype)
            for g in generate(pipe, spec, name, missing, req.seed, prompt=prompt,
                              negative_prompt=negative or "", batch_size=req.batch_size):
                sha = self.db.artifacts.put(imageio.png_bytes(g.image))
                att_sha = self.db.artifacts.put(imageio.attention_png(g.attention))
                row = SupportImageRow(
                    class_id=class_id, run_id=run_id, index_in_run=g.index, source="generated",
                    artifact_sha256=sha, attention_sha256=att_sha, width=g.image.width,
                    height=g.image.height, seed=g.seed, prompt=prompt,
                )
                try:
                    with self.db.session() as s:
                        s.add(row)
                except IntegrityError:  # a concurrent run stored this index first: use theirs
                    with self.db.session() as s:
                        row = s.scalar(select(SupportImageRow).where(
                            SupportImageRow.run_id == run_id, SupportImageRow.index_in_run == g.index))
                new_rows[g.index] = row
                images[g.index] = g.image
                attention[g.index] = g.attention
                self.progress("generate", 1, None)
        out = []
        for i in range(req.images):
            row = done.get(i) or new_rows[i]
            img = images.get(i) or imageio.decode_rgb(self.db.artifacts.get(row.artifact_sha256))
            att = attention.get(i)
            if att is None:
                att = imageio.decode_attention(self.db.artifacts.get(row.attention_sha256))
            out.append(SupportImage(id=row.id, sha=row.artifact_sha256, image=img, source="generated",
                                    attention=att))
        return run_id, out, len(missing)

    # ------------------------------------------------------------------ exemplars
    def _store_exemplars(self, class_id: str, loaded: list[tuple[Path, PIL.Image.Image, np.ndarray | None]]
                         ) -> list[SupportImage]:
        out = []
        self.progress("exemplars", 0, len(loaded))
        for path, image, given in loaded:
            sha = self.db.artifacts.put(imageio.png_bytes(image))
            with self.db.session() as s:
                row = s.scalar(select(SupportImageRow).where(
                    SupportImageRow.class_id == class_id, SupportImageRow.source == "exemplar",
                    SupportImageRow.artifact_sha256 == sha))
                if row is None:
                    row = SupportImageRow(class_id=class_id, source="exemplar", artifact_sha256=sha,
                                          width=image.width, height=image.height, origin=path.name)
                    s.add(row)
                    s.flush()
                image_id = row.id
            out.append(SupportImage(id=image_id, sha=sha, image=image, source="exemplar",
                                    given_mask=given))
            self.progress("exemplars", 1, None)
        return out

    # ------------------------------------------------------------------ one set per extractor
    def _build_set(self, name, class_id, spec, extractor, support: list[SupportImage], run_id,
                   req: AddClassRequest) -> tuple[dict, bool]:
        from protodb.pipeline.masks import attention_fg_bg, downsample_mask, ncut_segments
        from protodb.pipeline.prototypes import build_prototypes

        ext_info = self.registry.extractor_record(spec, extractor)
        short_side = req.short_side or self.registry.default_short_side
        mask_params = {"given_value": req.mask_value, "min_fraction": req.mask_min_fraction}
        config_hash = _sha_json({
            "pipeline": PIPELINE_VERSION, "extractor": ext_info["id"], "images": [s.sha for s in support],
            "given": [_mask_digest(s.given_mask) for s in support], "mask_value": req.mask_value,
            "k": req.k, "seed": req.seed, "short_side": short_side, "min_fraction": req.mask_min_fraction,
            "segmenter": None if self.segmenter is None else [self.segmenter.name, self.segmenter.params()],
        })
        if not req.new_version:
            found = self.db.find_set(name, ext_info["id"], config_hash)
            if found is not None:
                return found, True
        self.progress(f"extract {spec.name}", 0, len(support))
        feats = featurize(extractor, [(s.sha, s.image) for s in support], short_side=short_side,
                          cache=self.cache, batch_size=max(1, req.batch_size),
                          progress=lambda n: self.progress(f"extract {spec.name}", n, None))
        fgs, bgs = [], []
        plugin = self.segmenter
        self.progress(f"masks {spec.name}", 0, len(support))
        for sup, f in zip(support, feats):
            grid = tuple(f.shape[:2])
            if sup.given_mask is not None:
                fg = downsample_mask(sup.given_mask, grid, req.mask_min_fraction)
                bg = downsample_mask(~sup.given_mask, grid, 1.0)  # patches with no class pixel
                method, params = "given", {**mask_params, "grid": list(grid)}
            elif sup.attention is not None:
                proposals = plugin.segment(sup.image, grid) if plugin is not None else None
                res = attention_fg_bg(f, sup.attention, segments=proposals)
                fg, bg, method, params = res.fg, res.bg, res.method, res.params
                if plugin is not None:
                    method, params = f"{plugin.name}+attention", {**params, plugin.name: plugin.params()}
            else:
                proposals = plugin.segment(sup.image, grid) if plugin is not None else ncut_segments(f)
                fg = object_segment(proposals, grid)
                bg = ~ndimage.binary_dilation(fg, iterations=1) if fg.any() else np.zeros(grid, bool)
                method, params = "ncut+border", {"n_segments": 3, "tau": 0.2, "dilate": 1,
                                                 "min_area": MIN_OBJECT_AREA, "grid": list(grid)}
                if plugin is not None:
                    method, params = f"{plugin.name}+border", {"dilate": 1, "min_area": MIN_OBJECT_AREA,
                                                               "grid": list(grid), plugin.name: plugin.params()}
            fgs.append(fg)
            bgs.append(bg)
            self._store_masks(sup, fg, bg, method, params, ext_info)
            self.progress(f"masks {spec.name}", 1, None)
        self.progress(f"prototypes {spec.name}", 0, 1)
        protos = build_prototypes(feats, fgs, bgs, k=req.k, seed=req.seed, background=True)
        if not protos:
            raise InvalidInput(f"no foreground found in any support image of {name!r}; "
                               "try more --images or give --masks")
        rows = PrototypeRows(
            vectors=np.stack([p.vector for p in protos]),
            kinds=[p.kind for p in protos],
            image_ids=[support[p.image_index].id if p.image_index is not None else None for p in protos],
            regions=[tuple(int(v) for v in p.region) if p.region is not None else None for p in protos],
            weights=[float(p.weight) for p in protos],
        )
        self.progress(f"prototypes {spec.name}", 1, None)
        summary = self.db.write_set(
            name, ext_info, rows, config_hash=config_hash, image_ids=[s.id for s in support],
            run_id=run_id,
            params={"k": req.k, "seed": req.seed, "short_side": short_side, "mask_value": req.mask_value,
                    "pipeline": PIPELINE_VERSION, "preset": self.registry.preset,
                    "device": str(self.device), "dtype": dtype_name(self.dtype)},
        )
        return summary, False

    def _store_masks(self, sup: SupportImage, fg, bg, method, params, ext_info) -> None:
        size = (sup.image.width, sup.image.height)
        up = lambda m: np.asarray(PIL.Image.fromarray(m.astype(np.uint8) * 255).resize(size, PIL.Image.NEAREST)) > 127  # noqa: E731
        self.db.transact(lambda s: self.db.ensure_extractor(s, **ext_info))
        with self.db.session() as s:
            for role, m in (("foreground", fg), ("background", bg)):
                sha = self.db.artifacts.put(imageio.mask_png(up(m)))
                exists = s.scalar(select(MaskRow.id).where(
                    MaskRow.image_id == sup.id, MaskRow.role == role, MaskRow.artifact_sha256 == sha,
                    MaskRow.extractor_id == ext_info["id"]))
                if exists is None:
                    s.add(MaskRow(image_id=sup.id, role=role, artifact_sha256=sha, method=method,
                                  params=params, extractor_id=ext_info["id"]))


