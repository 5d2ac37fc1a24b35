"""The warm segmenter: a vocabulary's match tables, its extractors and the optional CLIP pre-filter,
loaded once and kept (``protodb serve`` holds one per vocabulary, a Ray actor one per worker).

:meth:`VocabularySegmenter.segment` labels one image and returns a typed
:class:`protodb.segment.result.ImageResult`; :meth:`VocabularySegmenter.segment_many` labels several,
batching their extractor calls on CUDA. Driving it over many inputs is
:func:`protodb.segment.workflow.segment_inputs`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import PIL.Image
import torch

from protodb.device import choose_device, choose_dtype, compute_dtype, dtype_name
from protodb.features.plan import SupportFeatures
from protodb.features.windows import window_plan
from protodb.images import decode_rgb, to_tensor
from protodb.models.extractors import spec_from_dict
from protodb.models.registry import ModelRegistry
from protodb.render import region_box
from protodb.segment import batched
from protodb.segment.label import SegmentResult, segment_image
from protodb.segment.windows import Precomputed, window_features
from protodb.segment.options import (
    DEFAULT_SHORTLIST,
    TWO_STAGE_MIN_CLASSES,
    SegmentOptions,
    SegmentSettings,
    check_options,
    clip_model_from,
    with_speed,
)
from protodb.segment.outputs import support_crop_of
from protodb.segment.prefilter import ClipPrefilter
from protodb.segment.result import ImageResult
from protodb.segment.index import VocabIndexes, read_summary
from protodb.segment.shortlist import AnnSearch, ExactSearch, Shortlister
from protodb.segment.vocab import LoadedVocabulary, ResolvedVocabulary, load_vocabulary, resolve_vocabulary
from protodb.speed import speed_preset
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService
from protodb.stores import Stores

if TYPE_CHECKING:
    from protodb.services.container import Services

log = logging.getLogger(__name__)


class VocabularySegmenter:
    """A resolved vocabulary with its loaded extractors and optional CLIP pre-filter."""

    def __init__(self, stores: Stores, sets: SetService, vocabs: VocabService, registry: ModelRegistry,
                 opts: SegmentOptions):
        levels = check_options(opts)
        opts.windows.check()
        self.stores, self.sets, self.opts = stores, sets, opts
        self.device = choose_device(opts.device)
        opts = self.opts = with_speed(opts, self.device)
        self.dtype = choose_dtype(self.device, opts.dtype)
        resolved = resolve_vocabulary(sets, vocabs, vocab=opts.vocab, classes=opts.classes,
                                      extractors=list(opts.extractors), background=opts.background,
                                      skip_missing=opts.skip_missing)
        size = opts.shortlist or DEFAULT_SHORTLIST
        two_stage = not opts.exhaustive and (opts.shortlist is not None or len(resolved.refs) >= TWO_STAGE_MIN_CLASSES)
        two_stage = two_stage and size < len(resolved.refs)  # a shortlist of every class is the exhaustive path
        self.vocab: LoadedVocabulary = load_vocabulary(
            sets, vocabs, vocab=opts.vocab, classes=opts.classes, extractors=list(opts.extractors), levels=levels,
            background=opts.background, stuff_threshold=opts.stuff_threshold, skip_missing=opts.skip_missing,
            device=self.device, dtype=compute_dtype(self.dtype), lazy=two_stage, resolved=resolved)
        #: stage 1 of two-stage matching (None: every class is scored, the exhaustive path)
        self.stage1: Shortlister | None = (Shortlister(self._stage1_search(stores, sets, vocabs, resolved), size)
                                           if two_stage else None)
        opts = self.opts = self._windows_as_built(opts)
        self.extractors = {}
        for e in self.vocab.extractors:
            record = sets.extractor_row(self.vocab.sets[e][0].extractor_id)
            spec = spec_from_dict({"name": record.name, "kind": record.kind, "config": record.config})
            self.extractors[e] = registry.load_extractor(spec, self.device, self.dtype,
                                                         expect_weights=record.weights_hash)
            if opts.speed:  # the preset's segment-time passes (tiles, mirror); prototypes are unchanged
                self.extractors[e] = speed_preset(opts.speed).segment_extractor(self.extractors[e])
        clip = clip_model_from(opts) or (registry.default_clip_model if opts.preset else None)
        use_prefilter = opts.prefilter if opts.prefilter is not None else bool(clip)
        self.prefilter = ClipPrefilter(clip, self.device, torch.float32, stores=stores) if use_prefilter else None
        if self.prefilter is not None:  # the class prompts' text embeddings: from the database, or computed once
            computed = self.prefilter.warm(self.vocab.names, self.vocab.stuff)
            log.info("CLIP pre-filter: %d class prompt embeddings computed, %d from the database", computed,
                     sum(not s for s in self.vocab.stuff) - computed)
        # the windows each extractor is scored through (a tiled extractor's are its tiles): recorded resolved
        tiles = {e: getattr(x, "tile", None) for e, x in self.extractors.items()}
        resolved_windows = {e: opts.windows.resolved(t) for e, t in tiles.items()}
        first = resolved_windows[self.vocab.extractors[0]]
        per_extractor = ({e: window_plan(w) for e, w in resolved_windows.items()}
                         if any(w != first for w in resolved_windows.values()) else {})
        self.settings = SegmentSettings(levels=levels, background=self.vocab.background,
                                        prefilter=self.prefilter is not None, clip_model=clip if use_prefilter else None,
                                        pamr=opts.pamr, device=str(self.device), dtype=dtype_name(self.dtype),
                                        stuff_threshold=opts.stuff_threshold, windows=first, explain=opts.explain,
                                        windows_by_extractor=per_extractor,
                                        passes={e: x.passes() for e, x in self.extractors.items()
                                                if hasattr(x, "passes")},
                                        speed=opts.speed, bg_margin=float(opts.bg_margin), vote=int(opts.vote),
                                        matching=self.stage1.describe() if self.stage1 else {"mode": "exhaustive"})

        #: whether :meth:`segment_many` batches extractor calls across images (on CUDA; the CPU path
        #: segments one image at a time)
        self.batches = self.device.type == "cuda"

    @staticmethod
    def _stage1_search(stores: Stores, sets: SetService, vocabs: VocabService, resolved: ResolvedVocabulary):
        """Stage 1 over the vocabulary's summary index when it is fresh (IVF-PQ through LanceDB, or a flat
        one read into memory), else over an exact summary read from the sets (the index stale or absent)."""
        indexes = VocabIndexes(stores, sets, vocabs)
        e0 = resolved.extractors[0]
        C = len(resolved.refs)
        rec, state = indexes.fresh_record(resolved, e0)
        info = {"extractor": e0, "index_state": state, "index_table": rec["table"] if rec else None}
        if rec is not None and rec.get("kind") == "ivf_pq":
            return AnnSearch(indexes.tables, rec["table"], C, rec["params"],
                             {**info, "stage1": "ivf_pq", "index_params": rec["params"]},
                             rec["rows"] / max(1, rec["classes"]))
        if rec is not None:
            owner, vectors = indexes.tables.read(rec["table"])
            return ExactSearch(vectors, owner, C, {**info, "stage1": "flat", "index_params": {}})
        if state == "stale":
            log.warning("the index of %s is stale (its sets changed); stage 1 reads an exact summary instead; "
                        "rebuild it: protodb index build %s", resolved.name, resolved.name)
        summary = read_summary(stores, sets, resolved.sets[e0])
        return ExactSearch(summary.vectors, summary.owner, C, {**info, "stage1": "exact", "index_params": {}})

    def _windows_as_built(self, opts: SegmentOptions) -> SegmentOptions:
        """Windows left to the default (sizes and stride None) become the window plan every set of the
        vocabulary recorded for its support images, when they all recorded the same one: the prototypes'
        contexts are then the photo's. Only sets built before a tiled extractor's default windows became its
        tiles recorded another plan (448/336 at stride 224) than the default; explicit windows always win."""
        w = opts.windows
        if w.sizes is not None or w.stride is not None:
            return opts
        plans = {json.dumps((s.config or {}).get("support_windows"), sort_keys=True)
                 for e in self.vocab.extractors for s in self.vocab.sets[e]}
        plan = json.loads(plans.pop()) if len(plans) == 1 else None
        if not plan:
            return opts
        log.info("windows as the prototypes were built: sizes %s at stride %s", plan["sizes"], plan["stride"])
        return opts.replace(windows=dataclasses.replace(w, sizes=tuple(int(v) for v in plan["sizes"]),
                                                        stride=int(plan["stride"])))

    @classmethod
    def open(cls, services: "Services", options: SegmentOptions) -> "VocabularySegmenter":
        """A segmenter over one database's services (the facade's and every Ray worker's way of making one)."""
        return cls(services.stores, services.sets, services.vocabs, ModelRegistry(services.stores, options.preset),
                   options)

    def segment(self, image: PIL.Image.Image, name: str = "image") -> ImageResult:
        """Label one RGB image (see :class:`ImageResult`)."""
        t0 = time.perf_counter()
        keep = self.keep(image)
        tensor = to_tensor(image)
        if self.stage1 is None:
            pairs = self.pairs(keep)
        else:
            e0 = self.vocab.extractors[0]
            ext0 = self.extractors[e0]
            by_spec = {}  # the first extractor's features, once: stage 1 reads them, stage 2 scores them
            for sc in self.opts.windows.at_scales():
                resolved = sc.resolved(getattr(ext0, "tile", None))
                by_spec[resolved] = window_features(tensor, ext0, resolved)  # a tiled one shares its tiles
            keep = self.shortlist([f for wf in by_spec.values() for f in wf.feats], keep)
            pairs = self.pairs(keep)
            pairs[0] = (Precomputed(ext0, by_spec), pairs[0][1])
        res = segment_image(tensor, pairs, windows=self.opts.windows, pamr=self.opts.pamr,
                            runner_up=self.opts.runner_up, bg_margin=self.opts.bg_margin)
        return self.finish(res, keep, image, name, time.perf_counter() - t0)

    def shortlist(self, feats: list[torch.Tensor], keep: list[int] | None) -> list[int]:
        """Stage 1: the vocabulary columns to score for an image whose first extractor gave ``feats``
        (its window calls' (B, h, w, D) features)."""
        patches = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats]).float().cpu()
        return self.stage1.shortlist(patches, keep)

    def segment_many(self, images: Sequence[PIL.Image.Image], names: Sequence[str]) -> list[ImageResult]:
        """:meth:`segment` of every image; on CUDA the images' window crops go through each extractor
        together (:mod:`protodb.segment.batched`): the same labels up to the floating-point effect of
        another batch size."""
        if not self.batches or len(images) < 2:
            return [self.segment(im, n) for im, n in zip(images, names)]
        t0 = time.perf_counter()
        spec = self.opts.windows
        tensors = [batched.to_device(im, self.device) for im in images]
        keeps = [self.keep(im) for im in images]
        feats = {e: batched.batched_features(self.extractors[e], tensors, spec) for e in self.vocab.extractors}
        if self.stage1 is not None:
            keeps = [self.shortlist(feats[self.vocab.extractors[0]][k], keeps[k]) for k in range(len(tensors))]
        out = []
        for k, t in enumerate(tensors):
            pairs = [(batched.Replay(self.extractors[e], feats[e][k]), table)
                     for e, (_ext, table) in zip(self.vocab.extractors, self.pairs(keeps[k]))]
            res = segment_image(t, pairs, windows=spec, pamr=self.opts.pamr, runner_up=self.opts.runner_up,
                                bg_margin=self.opts.bg_margin)
            out.append(self.finish(res, keeps[k], images[k], names[k], (time.perf_counter() - t0) / len(images)))
        return out

    def keep(self, image: PIL.Image.Image) -> list[int] | None:
        """The vocabulary columns the pre-filter keeps for ``image`` (None: all of them)."""
        if self.prefilter is None:
            return None
        return self.prefilter.select(image, self.vocab.names, self.vocab.stuff) or None

    def pairs(self, keep: list[int] | None) -> list[tuple[Any, Any]]:
        """(loaded extractor, match table of the ``keep`` columns) per extractor of the vocabulary."""
        tables = [self.vocab.table_for(e, keep) for e in self.vocab.extractors]
        for t in tables:
            t.vote = int(self.opts.vote)
        return list(zip((self.extractors[e] for e in self.vocab.extractors), tables))

    def finish(self, res: SegmentResult, keep: list[int] | None, image: PIL.Image.Image, name: str,
               seconds: float) -> ImageResult:
        """A :class:`protodb.segment.label.SegmentResult` (table columns) in vocabulary index space."""
        cols = keep if keep is not None else list(range(len(self.vocab.names)))
        C = len(self.vocab.names)
        lut = np.array(cols + ([C] if self.vocab.background else []), np.int32)  # table column -> vocab index
        labels = lut[res.labels]
        best = res.best.numpy()
        present = {}
        for col, frac in res.fractions.items():
            vi = int(lut[col])
            cname = "background" if vi == C else self.vocab.names[vi]
            present[cname] = {"fraction": round(frac, 6), "score": round(float(best[res.labels == col].mean()), 4)}
        winners = self._explain(res, lut, C) if self.opts.explain else {}
        second = res.second is not None  # the runner-up per pixel (what the winner beat), for confidence
        return ImageResult(input=name, image=image, labels=labels, scores=best, present=present,
                           kept=tuple(self.vocab.names[i] for i in cols), winners=winners,
                           vocabulary=self.vocab.describe(), settings=self.settings.to_dict(),
                           prefilter=self.prefilter is not None, seconds=seconds,
                           runner_up=res.second.numpy() if second else None,
                           runner_up_labels=lut[res.second_labels] if second else None)

    def _explain(self, res: SegmentResult, lut: np.ndarray, C: int) -> dict[str, Any]:
        out = {}
        for col, w in res.winners.items():
            vi = int(lut[col])
            name = "background" if vi == C else self.vocab.names[vi]
            ext = self.vocab.extractors[w["extractor"]]
            pid = w.get("prototype_id")
            info = {"class": name, "score": round(float(w["score"]), 4), "extractor": ext,
                    "pixel": list(map(int, w["pixel"])), "prototype": pid}
            for pset, rows in self.vocab.loaded_rows(ext):
                if pid is not None and pid in rows.ids:
                    j = rows.ids.index(pid)
                    info.update({"set": pset.id, "set_ref": pset.ref, "kind": rows.kinds[j],
                                 "support_image": rows.image_ids[j],
                                 "region": list(rows.regions[j]) if rows.regions[j] is not None else None})
                    if info["support_image"] and info["region"]:
                        info["box"] = self._region_box(ext, pset, info["support_image"], info["region"])
                    if info["support_image"]:  # generated, exemplar, or correction (taught by a user)
                        sup = self.sets.support_images([info["support_image"]]).get(info["support_image"])
                        info["support_source"] = sup.source if sup is not None else None
                    break
            out[name] = info
        return out

    def _region_box(self, ext: str, pset, image_id: str, region: list[int]) -> list[int] | None:
        """Patch-grid region of a support image -> [x0, y0, x1, y1] pixels of the stored image."""
        sup = self.sets.support_images([image_id]).get(image_id)
        if sup is None:
            return None
        plan = SupportFeatures.of(pset.config, pset.params)
        return region_box(region, plan.grid(sup.width, sup.height, self.extractors[ext].patch_size),
                          (sup.width, sup.height))

    def support_crop(self, winner: dict) -> PIL.Image.Image | None:
        """The support-image crop a winner's box names (None when it has none)."""
        image_id, box = winner.get("support_image"), winner.get("box")
        if not image_id or not box:
            return None
        sup = self.sets.support_images([image_id]).get(image_id)
        return support_crop_of(decode_rgb(self.stores.artifacts.get(sup.sha256)) if sup else None, box)
