"""``add-class``: from a class name (and/or real exemplars) to ready prototype sets.

Stages, each resumable and recorded in the catalog::

    resolve    -> the frozen BuildConfig (every input checked before anything is written)
    label      -> thing/stuff (manual, LLM or lexicon), with its history
    support    -> generated images + attention maps (persisted one by one), exemplars (+ masks)
    masks      -> one fg/bg mask per support image, on the mask extractor's grid, stored once
    extract    -> patch features per (image, extractor), cached by content hash
    prototypes -> class / instance / part, foreground and background (k-means)
    commit     -> vectors, then one catalog transaction marking each set ready

The same configuration twice gives one set (unless ``new_version``), on every catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from protodb.entities import FOREGROUND_KINDS, AddClassResult, BuiltSet, ExtractorRecord
from protodb.errors import InvalidInput
from protodb.names import quoted
from protodb.images import decode_mask, decode_rgb, mask_png
from protodb.device import choose_device, choose_dtype, compute_dtype, dtype_name
from protodb.models.generators import model_revision, resolve_model_folder
from protodb.models.registry import ModelRegistry
from protodb.pipeline import segmenters
from protodb.pipeline.config import (
    AddClassRequest,
    BuildConfig,
    ExemplarInput,
    GenerationConfig,
    MaskConfig,
    check_image_count,
    check_request,
    effective_bg_value,
    generator_changes,
    parts_for,
)
from protodb.pipeline.exemplars import find_exemplars, load_exemplars
from protodb.features.cache import FeatureCache
from protodb.features.featurize import featurize
from protodb.features.windows import support_plan
from protodb.pipeline.prototypes import build_prototypes
from protodb.pipeline.support import SupportImage, SupportStage
from protodb.pipeline.views import check_views, with_views
from protodb.pipeline.support_masks import GridMasks, for_extractor, masks_for, ncut_params, upsample
from protodb.services.corrections import CorrectionService
from protodb.services.labels import LabelService, label_record
from protodb.services.sets import SetService
from protodb.services.support import SupportService
from protodb.storage.vectors import PrototypeRows
from protodb.stores import Stores
from protodb.thing_stuff import Label, classify

if TYPE_CHECKING:
    from protodb.services.container import Services

log = logging.getLogger(__name__)
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class Resolved:
    """A checked request: its frozen config and the loaded pieces it needs."""

    config: BuildConfig
    extractors: list  # loaded Extractor objects, in config.extractors order
    exemplars: list
    plugin: object | None
    skipped: tuple[str, ...] = ()


class ClassBuilder:
    """Runs add-class for one database; models are loaded once and shared across classes."""

    def __init__(self, stores: Stores, sets: SetService, labels: LabelService, support: SupportService,
                 registry: ModelRegistry, *, device: str = "auto", dtype: str = "auto", progress: Progress | None = None):
        self.stores, self.sets, self.labels, self.registry = stores, sets, labels, registry
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device, dtype)
        self.progress = progress or (lambda stage, n, total: None)
        self.cache = FeatureCache(stores.cache_dir / "features")
        self.support = support
        self.stage = SupportStage(stores, support, self.progress)

    @classmethod
    def open(cls, services: "Services", *, preset: str | None = None, device: str = "auto", dtype: str = "auto",
             progress: Progress | None = None) -> "ClassBuilder":
        """A builder over one database's services with the models of ``preset`` (the facade's and every
        Ray worker's way of making one)."""
        return cls(services.stores, services.sets, services.labels, services.support,
                   ModelRegistry(services.stores, preset), device=device, dtype=dtype, progress=progress)

    # ------------------------------------------------------------------ resolve
    def resolve(self, req: AddClassRequest) -> Resolved:
        """Check every input before anything is written; returns the frozen config."""
        name = check_request(req)
        req = req.with_speed()
        reg = self.registry
        images = reg.default_images if req.images is None else req.images
        names = list(dict.fromkeys(req.extractors)) or list(reg.default_extractors)
        specs = [reg.extractor_spec(e) for e in names]
        source = req.mask_extractor or (reg.default_mask_extractor if reg.default_mask_extractor in names else names[0])
        if source not in names:
            raise InvalidInput(f"--mask-extractor {source} is not one of this build's extractors ({', '.join(names)})")
        augment = check_views(req.augment)
        files, mask_files, skipped = find_exemplars(req.exemplars, req.masks)
        carried = self._carried(req.support_from) if req.support_from else []
        corrected = self._corrections(name) if req.with_corrections else []
        if images == 0 and not files and not carried and not corrected:
            raise InvalidInput("nothing to build from: --images 0 and no --exemplars")
        check_image_count(images, req.yes)
        generation = self._generation(req, name, images)
        plugin = segmenters.choose(req.segmenter)
        bg_value = effective_bg_value(req.mask_value, req.bg_value)
        if bg_value != req.bg_value:
            log.info("label value %s is the class itself: every other label is its background", req.mask_value)
        exemplars = load_exemplars(files, mask_files, req.mask_value, bg_value) if files else []
        exemplars = with_views(carried + exemplars, augment, req.seed) + corrected
        loaded = [reg.load_extractor(s, self.device, self.dtype) for s in specs]
        records = tuple(reg.extractor_record(s, e) for s, e in zip(specs, loaded))
        masks = MaskConfig(segmenter=plugin.name if plugin is not None else "ncut",
                           segmenter_params=plugin.params() if plugin is not None else ncut_params(req.mask_tau),
                           source=source, source_id=records[names.index(source)].id, given_value=req.mask_value, bg_value=bg_value,
                           min_fraction=req.mask_min_fraction, exemplar_background=req.exemplar_background)
        k = req.k if req.k is not None else parts_for(images + len(exemplars))
        config = BuildConfig(class_name=name, generation=generation, extractors=records, k=k, seed=req.seed,
                             short_side=req.short_side or reg.default_short_side, masks=masks, preset=reg.preset,
                             new_version=req.new_version, exemplars=tuple(e.digest() for e in exemplars),
                             support_windows=support_plan(req.support_windows, getattr(loaded[0], "tile", None)),
                             augment=augment)
        return Resolved(config, loaded, exemplars, plugin, tuple(skipped))

    def _corrections(self, name: str) -> list[ExemplarInput]:
        """The class's stored corrections as exemplars, one per corrected image (the union of its masks);
        the rest of each image is its background, as for an exemplar with a binary mask."""
        groups = CorrectionService(self.stores).by_image(name)
        if not groups:
            raise InvalidInput(f"class {name!r} has no corrections; add one with: protodb teach {quoted(name)} "
                               "IMAGE --mask MASK")
        return [ExemplarInput(path=Path(recs[0].origin or f"correction-{recs[0].id}.png"), image=image, mask=mask,
                              source="correction", corrections=tuple(r.id for r in recs))
                for recs, image, mask in groups]

    def _carried(self, set_id: str) -> list[ExemplarInput]:
        """The exemplar photos of set ``set_id`` (not its corrections: those come from the corrections
        table), from the stored artifacts, with the masks they were given (none: masked again as then)."""
        pset = self.sets.get(set_id)
        info = self.support.images_of(pset)
        given = [e for e in (pset.config or {}).get("exemplars", []) if e.get("source", "exemplar") == "exemplar"]
        photos = [i for i in info["images"] if i["source"] == "exemplar"]
        out = []
        for i, img in enumerate(photos):
            digest = given[i] if i < len(given) else {}
            image = decode_rgb(self.stores.artifacts.get(img["sha256"]))
            mask = background = None
            if digest.get("mask") and img["masks"].get("foreground"):
                mask = decode_mask(self.stores.artifacts.get(img["masks"]["foreground"]))
                if digest.get("background") and img["masks"].get("background"):
                    background = decode_mask(self.stores.artifacts.get(img["masks"]["background"]))
            out.append(ExemplarInput(path=Path(img["origin"] or f"{img['sha256'][:16]}.png"), image=image, mask=mask,
                                     background=background))
        return out

    def _generation(self, req: AddClassRequest, name: str, images: int) -> GenerationConfig | None:
        if images <= 0:
            return None
        reg = self.registry
        spec = reg.generator_spec(req.generator or reg.default_generator)
        changes = generator_changes(req, name)
        spec = spec.replace(**changes) if changes else spec
        resolve_model_folder(spec)  # weights must exist (or download) before anything is written
        return GenerationConfig(spec, model_revision(spec), images, req.seed,
                                spec.prompt_template.format(name=name), spec.negative_prompt)

    # ------------------------------------------------------------------ entry points
    def generate_shard(self, req: AddClassRequest, indices) -> int:
        """Draw and store only generated images ``indices`` of ``req``'s class: one shard of a
        distributed build (``protodb.distributed``); :meth:`add_class` then finds them stored and only
        draws what is still missing. Returns how many images were drawn now."""
        name = check_request(req)
        gen = self._generation(req, name, self.registry.default_images if req.images is None else req.images)
        if gen is None:
            return 0
        label = self._label(name, req.kind, req.lexicon)
        class_id, _ = self._class_row(name, label)
        return self.stage.generate_indices(
            class_id, name, gen, lambda: self.registry.load_pipeline(gen.spec, self.device, compute_dtype(self.dtype)),
            dtype_name(compute_dtype(self.dtype)), req.batch_size, indices)

    def add_class(self, req: AddClassRequest) -> AddClassResult:
        plan = self.resolve(req)
        cfg = plan.config
        label = self._label(cfg.class_name, req.kind, req.lexicon)
        class_id, kind = self._class_row(cfg.class_name, label)
        support: list[SupportImage] = []
        run_id, generated, reused_images = None, 0, 0
        if cfg.generation is not None:
            run_id, gen_images, generated = self.stage.generated(
                class_id, cfg.class_name, cfg.generation,
                lambda: self.registry.load_pipeline(cfg.generation.spec, self.device, compute_dtype(self.dtype)),
                dtype_name(compute_dtype(self.dtype)), req.batch_size)
            support += gen_images
            reused_images = len(gen_images) - generated
        if plan.exemplars:
            support += self.stage.exemplars(class_id, plan.exemplars)
        built = self._build_sets(plan, support, run_id, req.batch_size)
        return AddClassResult(name=cfg.class_name, kind=kind, label_source=label.source,
                              generated_images=generated, reused_images=reused_images,
                              exemplar_images=len(plan.exemplars), preset=self.registry.preset, sets=tuple(built),
                              skipped=plan.skipped)

    # ------------------------------------------------------------------ labels
    def _label(self, name: str, override: str | None, lexicon: str | None = None) -> Label:
        existing = self.labels.current(name)
        if existing is not None and override is None:
            return Label(kind=existing, source="existing")
        return classify(name, override=override, lexicon=lexicon)

    def _class_row(self, name: str, label: Label) -> tuple[str, str]:
        record = label_record(label)
        return self.sets.class_for_build(name, record if label.source != "existing" else None,
                                         record if label.source == "manual" else None)

    # ------------------------------------------------------------------ sets
    def _build_sets(self, plan: Resolved, support: list[SupportImage], run_id, batch_size: int) -> list[BuiltSet]:
        cfg = plan.config
        shas = [s.sha for s in support]
        todo, out = [], {}
        for i, record in enumerate(cfg.extractors):
            sc = cfg.set_config(record, shas)
            found = None if cfg.new_version else self.sets.find(cfg.class_name, record.id, sc.config_hash)
            if found is not None:
                log.info("%s: a set with this config exists (%s); reusing it", cfg.class_name, found.ref)
                out[i] = BuiltSet(found, True)
            else:
                todo.append(i)
        if not todo:
            return [out[i] for i in range(len(cfg.extractors))]
        src = next(i for i, r in enumerate(cfg.extractors) if r.name == cfg.masks.source)
        feats = {src: self._features(cfg, src, plan.extractors[src], support, batch_size)}
        shared = self._masks(cfg, plan, src, support, feats[src])
        for i in todo:
            record = cfg.extractors[i]
            f = feats.get(i) or self._features(cfg, i, plan.extractors[i], support, batch_size)
            grids = [for_extractor(m, tuple(x.shape[:2]), (s.image.width, s.image.height), cfg.masks.min_fraction)
                     for m, x, s in zip(shared, f, support)]
            out[i] = self._commit(cfg, record, support, f, grids, run_id)
        return [out[i] for i in range(len(cfg.extractors))]

    def _features(self, cfg: BuildConfig, i: int, extractor, support: list[SupportImage], batch_size: int):
        stage = f"extract {cfg.extractors[i].name}"
        self.progress(stage, 0, len(support))
        plan = cfg.support_features
        return featurize(extractor, [(s.sha, s.image) for s in support], short_side=plan.short_side,
                         cache=self.cache, batch_size=max(1, batch_size), progress=lambda n: self.progress(stage, n, None),
                         windows=plan.window_spec())

    def _masks(self, cfg: BuildConfig, plan: Resolved, src: int, support: list[SupportImage], feats) -> list[GridMasks]:
        """One mask per support image on the source extractor's grid, stored once (its extractor id)."""
        record = cfg.extractors[src]
        self.sets.register_extractor(record)
        stage = f"masks {record.name}"
        self.progress(stage, 0, len(support))
        out = []
        for sup, f in zip(support, feats):
            m = masks_for(f, tuple(f.shape[:2]), image=sup.image, attention=sup.attention, given=sup.given_mask,
                          given_background=sup.given_background, min_fraction=cfg.masks.min_fraction,
                          exemplar_background=cfg.masks.exemplar_background, plugin=plan.plugin,
                          tau=cfg.masks.segmenter_params.get("tau", 0.2))
            self._store_masks(sup, m, record)
            out.append(m)
            self.progress(stage, 1, None)
        return out

    def _store_masks(self, sup: SupportImage, m: GridMasks, record: ExtractorRecord) -> None:
        size = (sup.image.width, sup.image.height)
        pixels = {"foreground": m.fg_pixels if m.fg_pixels is not None else upsample(m.fg, size),
                  "background": m.bg_pixels if m.bg_pixels is not None else upsample(m.bg, size)}
        digests = {role: self.stores.artifacts.put(mask_png(px)) for role, px in pixels.items()}
        self.support.store_masks(sup.id, record.id, digests, method=m.method, params=m.params)

    def _commit(self, cfg: BuildConfig, record: ExtractorRecord, support: list[SupportImage], feats, grids,
                run_id) -> BuiltSet:
        stage = f"prototypes {record.name}"
        self.progress(stage, 0, 1)
        protos = build_prototypes(feats, [g[0] for g in grids], [g[1] for g in grids], k=cfg.k, seed=cfg.seed,
                                  background=True)
        if not any(p.kind in FOREGROUND_KINDS for p in protos):
            raise InvalidInput(f"no foreground found in any support image of {cfg.class_name!r}; nothing was "
                               "committed; try more --images or give --masks")
        rows = PrototypeRows(
            vectors=np.stack([p.vector for p in protos]), kinds=[p.kind for p in protos],
            image_ids=[support[p.image_index].id if p.image_index is not None else None for p in protos],
            regions=[tuple(int(v) for v in p.region) if p.region is not None else None for p in protos],
            weights=[float(p.weight) for p in protos])
        self.progress(stage, 1, None)
        sc = cfg.set_config(record, [s.sha for s in support])
        params = {"k": cfg.k, "seed": cfg.seed, "short_side": cfg.short_side, "mask_value": cfg.masks.given_value,
                  "pipeline": cfg.pipeline_version, "preset": cfg.preset, "device": str(self.device),
                  "dtype": dtype_name(self.dtype), "mask_extractor": cfg.masks.source,
                  "support_windows": cfg.support_windows}
        kw = dict(config_hash=sc.config_hash, config=sc.to_dict(), image_ids=[s.id for s in support], run_id=run_id,
                  params=params)
        if cfg.new_version:
            return BuiltSet(self.sets.commit(cfg.class_name, record, rows, **kw), False)
        return self.sets.commit_unless_present(cfg.class_name, record, rows, **kw)
