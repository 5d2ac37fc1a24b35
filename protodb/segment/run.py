"""``protodb segment``: a warm segmenter (vocabulary, extractors and pre-filter loaded once) and the
batch driver that labels many inputs, reporting bad ones and finishing the others.

:class:`VocabularySegmenter` is what a long-running process keeps (``protodb serve`` holds one per
vocabulary); :func:`segment_files` drives one over files and writes the outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch

from protodb.device import choose_device, choose_dtype, dtype_name
from protodb.entities import InputFailure, SegmentOutput, SegmentReport
from protodb.errors import ProtoDBError
from protodb.images import decode_rgb, expand_inputs, feature_size, load_image, to_tensor
from protodb.models.extractors import spec_from_dict
from protodb.models.registry import ModelRegistry
from protodb.render import region_box
from protodb.segment.label import segment_image
from protodb.segment.options import SegmentOptions, SegmentSettings, check_options, clip_model_from
from protodb.segment.outputs import check_out, output_stems, support_crop_of, write_outputs
from protodb.segment.prefilter import ClipPrefilter
from protodb.segment.vocab import LoadedVocabulary, load_vocabulary
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService
from protodb.stores import Stores

log = logging.getLogger(__name__)


class VocabularySegmenter:
    """A resolved vocabulary with its loaded extractors and optional CLIP pre-filter."""

    def __init__(self, stores: Stores, sets: SetService, vocabs: VocabService, registry: ModelRegistry,
                 opts: SegmentOptions):
        levels = check_options(opts)
        opts.windows.check()
        self.stores, self.sets, self.opts = stores, sets, opts
        self.device = choose_device(opts.device)
        self.dtype = choose_dtype(self.device, opts.dtype)
        self.vocab: LoadedVocabulary = load_vocabulary(
            sets, vocabs, vocab=opts.vocab, classes=opts.classes, extractors=list(opts.extractors), levels=levels,
            background=opts.background, stuff_threshold=opts.stuff_threshold, skip_missing=opts.skip_missing,
            device=self.device, dtype=self.dtype)
        self.extractors = {}
        for e in self.vocab.extractors:
            record = sets.extractor_row(self.vocab.sets[e][0].extractor_id)
            spec = spec_from_dict({"name": record.name, "kind": record.kind, "config": record.config})
            self.extractors[e] = registry.load_extractor(spec, self.device, self.dtype,
                                                         expect_weights=record.weights_hash)
        clip = clip_model_from(opts) or (registry.default_clip_model if opts.preset else None)
        use_prefilter = opts.prefilter if opts.prefilter is not None else bool(clip)
        self.prefilter = ClipPrefilter(clip, self.device, torch.float32) if use_prefilter else None
        self.settings = SegmentSettings(levels=levels, background=self.vocab.background,
                                        prefilter=self.prefilter is not None, clip_model=clip if use_prefilter else None,
                                        pamr=opts.pamr, device=str(self.device), dtype=dtype_name(self.dtype),
                                        stuff_threshold=opts.stuff_threshold, windows=opts.windows, explain=opts.explain)

    def segment(self, image: PIL.Image.Image) -> dict[str, Any]:
        """Label one RGB image. Returns ``labels`` (H, W) int32 in vocabulary index space (C =
        background), ``scores`` (H, W) float32 the winning score per pixel, ``present`` {name:
        {fraction, score}}, ``kept`` (pre-filter) and ``winners``; when more than one column competed,
        ``runner_up`` (H, W) float32 the best other column's score per pixel and ``runner_up_labels``
        (H, W) that column (vocabulary index space)."""
        keep = self.keep(image)
        res = segment_image(to_tensor(image), self.pairs(keep), windows=self.opts.windows, pamr=self.opts.pamr)
        return self.finish(res, keep)

    def keep(self, image: PIL.Image.Image) -> list[int] | None:
        """The vocabulary columns the pre-filter keeps for ``image`` (None: all of them)."""
        if self.prefilter is None:
            return None
        return self.prefilter.select(image, self.vocab.names, self.vocab.stuff) or None

    def pairs(self, keep: list[int] | None) -> list[tuple[Any, Any]]:
        """(loaded extractor, match table of the ``keep`` columns) per extractor of the vocabulary."""
        return [(self.extractors[e], self.vocab.table_for(e, keep)) for e in self.vocab.extractors]

    def finish(self, res, keep: list[int] | None) -> dict[str, Any]:
        """A :class:`protodb.segment.label.SegmentResult` in vocabulary index space (see :meth:`segment`)."""
        cols = keep if keep is not None else list(range(len(self.vocab.names)))
        C = len(self.vocab.names)
        lut = np.array(cols + ([C] if self.vocab.background else []), np.int32)  # table column -> vocab index
        labels = lut[res.labels]
        best = res.best.numpy()
        present = {}
        for col, frac in res.fractions.items():
            vi = int(lut[col])
            name = "background" if vi == C else self.vocab.names[vi]
            present[name] = {"fraction": round(frac, 6), "score": round(float(best[res.labels == col].mean()), 4)}
        out = {"labels": labels, "scores": best, "present": present, "kept": [self.vocab.names[i] for i in cols], "winners": {}}
        if res.second is not None:  # the runner-up per pixel (what the winner beat), for confidence
            out["runner_up"] = res.second.numpy()
            out["runner_up_labels"] = lut[res.second_labels]
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
            for pset, rows in zip(self.vocab.sets[ext], self.vocab.rows[ext]):
                if pid is not None and pid in rows.ids:
                    j = rows.ids.index(pid)
                    info.update({"set": pset.id, "set_ref": pset.ref, "kind": rows.kinds[j],
                                 "support_image": rows.image_ids[j],
                                 "region": list(rows.regions[j]) if rows.regions[j] is not None else None})
                    if info["support_image"] and info["region"]:
                        info["box"] = self._region_box(ext, pset, info["support_image"], info["region"])
                    break
            out[name] = info
        return out

    def _region_box(self, ext: str, pset, image_id: str, region: list[int]) -> list[int] | None:
        """Patch-grid region of a support image -> [x0, y0, x1, y1] pixels of the stored image."""
        sup = self.sets.support_images([image_id]).get(image_id)
        if sup is None:
            return None
        p = self.extractors[ext].patch_size
        short = pset.params.get("short_side") or self.extractors[ext].input_size or 448
        fh, fw = feature_size(sup.width, sup.height, short, p)
        return region_box(region, (fh // p, fw // p), (sup.width, sup.height))

    def support_crop(self, winner: dict) -> PIL.Image.Image | None:
        """The support-image crop a winner's box names (None when it has none)."""
        image_id, box = winner.get("support_image"), winner.get("box")
        if not image_id or not box:
            return None
        sup = self.sets.support_images([image_id]).get(image_id)
        return support_crop_of(decode_rgb(self.stores.artifacts.get(sup.sha256)) if sup else None, box)

    def meta(self, input_name: str, image: PIL.Image.Image, result: dict) -> dict[str, Any]:
        """The JSON beside each output (legend added by the writer)."""
        return {"input": input_name, "size": [image.width, image.height], "vocabulary": self.vocab.describe(),
                "present": result["present"], "prefilter_kept": result["kept"] if self.prefilter is not None else None,
                "settings": self.settings.to_dict()}

    def write(self, image: PIL.Image.Image, result: dict, out: Path, stem: str, input_name: str) -> dict[str, str]:
        return write_outputs(image, result, out, stem, self.meta(input_name, image, result), self.vocab.names,
                             self.vocab.background, self.support_crop)


def segment_files(segmenter: VocabularySegmenter, inputs: Sequence[str], out: Path | None,
                  progress: Callable[[int, int], None] | None = None) -> SegmentReport:
    """Segment every input with a loaded segmenter; a bad input is reported and the others finish."""
    failed: list[InputFailure] = []
    paths: list[Path] = []
    for arg in inputs:  # a missing input is one failure; the others still run
        try:
            paths += [p for p in expand_inputs([arg]) if p not in paths]
        except ProtoDBError as err:
            failed.append(InputFailure(str(arg), str(err)))
    if out is not None:
        out = check_out(out)
    stems = output_stems(paths)
    outputs: list[SegmentOutput] = []
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
            result = segmenter.segment(image)
            files = segmenter.write(image, result, out, stems[path], stems[path]) if out is not None else None
            outputs.append(SegmentOutput(input=str(path), size=(image.width, image.height), present=result["present"],
                                         files=files, explain=result["winners"] if segmenter.opts.explain else None))
        except ProtoDBError as err:
            failed.append(InputFailure(str(path), str(err)))
        except (MemoryError, RuntimeError) as err:  # one input too big for this machine: the others still run
            log.warning("%s failed: %s", path, err)
            failed.append(InputFailure(str(path), f"{path}: could not be segmented ({type(err).__name__}: "
                                                   f"{str(err).splitlines()[0][:160] if str(err) else ''})"))
        if progress:
            progress(i + 1, len(paths))
    return SegmentReport(vocabulary=segmenter.vocab.describe(), settings=segmenter.settings.to_dict(),
                         outputs=tuple(outputs), failed=tuple(failed), seconds=time.perf_counter() - t0)
