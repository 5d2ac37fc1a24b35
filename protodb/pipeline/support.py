"""Support images of a class, persisted one by one: generated (with attention maps) or exemplars.

Generated images are committed as they arrive (a crash loses at most one batch); a re-run finds the
images of the same generation run by index and draws only the missing ones. A concurrent run of the
same class stores the same rows first at worst: its rows are used. The rows are written through
:class:`protodb.services.support.SupportService`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL.Image
from protodb.entities import SupportImageRecord
from protodb.hashing import sha256_json
from protodb.images import attention_png, decode_attention, decode_rgb, png_bytes
from protodb.pipeline.config import ExemplarInput, GenerationConfig
from protodb.pipeline.generate import generate
from protodb.services.support import SupportService
from protodb.stores import Stores

log = logging.getLogger(__name__)
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class SupportImage:
    """A stored support image. attention: (H, W) float32 in [0, 1] for generated images; given_mask /
    given_background: (H, W) bool for exemplars with masks."""

    id: str
    sha: str
    image: PIL.Image.Image
    source: str
    attention: np.ndarray | None = None
    given_mask: np.ndarray | None = None
    given_background: np.ndarray | None = None


class SupportStage:
    """Draws and stores support images (artifacts here, rows through :class:`SupportService`)."""

    def __init__(self, stores: Stores, support: SupportService, progress: Progress):
        self.stores = stores
        self.support = support
        self.progress = progress

    # ------------------------------------------------------------------ generation
    def _run_rows(self, class_id: str, name: str, gen: GenerationConfig, dtype_name: str) -> str:
        spec = gen.spec
        spec_record = {**spec.to_dict(), "resolved_revision": gen.revision, "device_dtype": dtype_name}
        spec_id = sha256_json(spec_record)
        run_id = sha256_json({"class": name, "spec": spec_id, "prompt": gen.prompt,
                              "negative": gen.negative_prompt, "seed": gen.seed})[:32]
        return self.support.generation_run(class_id, run_id, spec_id, spec_record, model_id=spec.model_id,
                                           revision=gen.revision, prompt=gen.prompt,
                                           negative_prompt=gen.negative_prompt, seed=gen.seed, images=gen.images)

    def generated(self, class_id: str, name: str, gen: GenerationConfig, load_pipeline: Callable[[], object],
                  dtype_name: str, batch_size: int) -> tuple[str, list[SupportImage], int]:
        """(run id, the run's first ``gen.images`` images in index order, how many were drawn now)."""
        run_id = self._run_rows(class_id, name, gen, dtype_name)
        done = self.support.generated(run_id, below=gen.images)
        missing = [i for i in range(gen.images) if i not in done]
        self.progress("generate", 0, gen.images)
        if done:
            log.info("%s: %d of %d images already generated (resuming)", name, len(done), gen.images)
            self.progress("generate", len(done), None)
        fresh: dict[int, tuple[SupportImageRecord, PIL.Image.Image, np.ndarray]] = {}
        if missing:
            pipe = load_pipeline()
            for g in generate(pipe, gen.spec, name, missing, gen.seed, prompt=gen.prompt,
                              negative_prompt=gen.negative_prompt or "", batch_size=batch_size):
                rec = self._store_generated(class_id, run_id, g, gen.prompt)
                fresh[g.index] = (rec, g.image, g.attention)
                self.progress("generate", 1, None)
        out = []
        for i in range(gen.images):
            if i in fresh:
                rec, img, att = fresh[i]
            else:
                rec = done[i]
                img = decode_rgb(self.stores.artifacts.get(rec.sha256))
                att = decode_attention(self.stores.artifacts.get(rec.attention_sha256))
            out.append(SupportImage(id=rec.id, sha=rec.sha256, image=img, source="generated", attention=att))
        return run_id, out, len(missing)

    def generate_indices(self, class_id: str, name: str, gen: GenerationConfig, load_pipeline: Callable[[], object],
                         dtype_name: str, batch_size: int, indices: Sequence[int]) -> int:
        """Draw and store only images ``indices`` of the class's generation run (one shard of a
        distributed build; :meth:`generated` then finds them stored). Indices already stored are kept.
        Returns how many were drawn now; progress: ``("generate", 1, None)`` per image drawn."""
        run_id = self._run_rows(class_id, name, gen, dtype_name)
        wanted = sorted({int(i) for i in indices if 0 <= int(i) < gen.images})
        done = set(self.support.generated(run_id, wanted))
        missing = [i for i in wanted if i not in done]
        if missing:
            pipe = load_pipeline()
            for g in generate(pipe, gen.spec, name, missing, gen.seed, prompt=gen.prompt,
                              negative_prompt=gen.negative_prompt or "", batch_size=batch_size):
                self._store_generated(class_id, run_id, g, gen.prompt)
                self.progress("generate", 1, None)
        return len(missing)

    def _store_generated(self, class_id: str, run_id: str, g, prompt: str) -> SupportImageRecord:
        sha = self.stores.artifacts.put(png_bytes(g.image))
        att_sha = self.stores.artifacts.put(attention_png(g.attention))
        return self.support.store_generated(class_id, run_id, g.index, sha256=sha, attention_sha256=att_sha,
                                            width=g.image.width, height=g.image.height, seed=g.seed, prompt=prompt)

    # ------------------------------------------------------------------ exemplars
    def exemplars(self, class_id: str, loaded: list[ExemplarInput]) -> list[SupportImage]:
        out = []
        self.progress("exemplars", 0, len(loaded))
        for ex in loaded:
            sha = self.stores.artifacts.put(png_bytes(ex.image))
            image_id = self.support.exemplar(class_id, sha256=sha, width=ex.image.width, height=ex.image.height,
                                             origin=ex.path.name, source=ex.source)
            if any(s.id == image_id for s in out):  # the same photo twice (an exemplar also corrected): once
                continue
            out.append(SupportImage(id=image_id, sha=sha, image=ex.image, source=ex.source,
                                    given_mask=ex.mask, given_background=ex.background))
            self.progress("exemplars", 1, None)
        return out
