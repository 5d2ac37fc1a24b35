"""Support images of a class, persisted one by one: generated (with attention maps) or exemplars.

Generated images are committed as they arrive (a crash loses at most one batch); a re-run finds the
images of the same generation run by index and draws only the missing ones. A concurrent run of the
same class stores the same rows first at worst: its rows are used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL.Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protodb.catalog.schema import GenerationRunRow, GeneratorSpecRow, SupportImageRow
from protodb.hashing import sha256_json
from protodb.images import attention_png, decode_attention, decode_rgb, png_bytes
from protodb.pipeline.config import ExemplarInput, GenerationConfig
from protodb.pipeline.generate import generate
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
    def __init__(self, stores: Stores, progress: Progress):
        self.stores = stores
        self.progress = progress

    # ------------------------------------------------------------------ generation
    def _run_rows(self, class_id: str, name: str, gen: GenerationConfig, dtype_name: str) -> str:
        spec = gen.spec
        spec_record = {**spec.to_dict(), "resolved_revision": gen.revision, "device_dtype": dtype_name}
        spec_id = sha256_json(spec_record)
        run_id = sha256_json({"class": name, "spec": spec_id, "prompt": gen.prompt,
                              "negative": gen.negative_prompt, "seed": gen.seed})[:32]

        def rows(s: Session) -> str:  # retried: a concurrent run may insert the same spec/run first
            if s.get(GeneratorSpecRow, spec_id) is None:
                s.add(GeneratorSpecRow(id=spec_id, name=spec.name, model_id=spec.model_id, revision=gen.revision,
                                       scheduler=spec.scheduler, steps=spec.steps, guidance=spec.guidance,
                                       width=spec.width, height=spec.height, dtype=dtype_name, config=spec_record))
                s.flush()
            run = s.get(GenerationRunRow, run_id)
            if run is None:
                s.add(GenerationRunRow(id=run_id, class_id=class_id, generator_spec_id=spec_id, prompt=gen.prompt,
                                       negative_prompt=gen.negative_prompt, base_seed=gen.seed, num_images=gen.images))
            elif run.num_images < gen.images:
                run.num_images = gen.images
            return run_id

        return self.stores.sessions.transact(rows, what="generation run")

    def generated(self, class_id: str, name: str, gen: GenerationConfig, load_pipeline: Callable[[], object],
                  dtype_name: str, batch_size: int) -> tuple[str, list[SupportImage], int]:
        """(run id, the run's first ``gen.images`` images in index order, how many were drawn now)."""
        run_id = self._run_rows(class_id, name, gen, dtype_name)
        with self.stores.sessions.reader() as s:
            done = {r.index_in_run: r for r in s.scalars(select(SupportImageRow).where(
                SupportImageRow.run_id == run_id, SupportImageRow.index_in_run < gen.images))}
        missing = [i for i in range(gen.images) if i not in done]
        self.progress("generate", 0, gen.images)
        if done:
            log.info("%s: %d of %d images already generated (resuming)", name, len(done), gen.images)
            self.progress("generate", len(done), None)
        fresh: dict[int, tuple[SupportImageRow, PIL.Image.Image, np.ndarray]] = {}
        if missing:
            pipe = load_pipeline()
            for g in generate(pipe, gen.spec, name, missing, gen.seed, prompt=gen.prompt,
                              negative_prompt=gen.negative_prompt or "", batch_size=batch_size):
                row = self._store_generated(class_id, run_id, g, gen.prompt)
                fresh[g.index] = (row, g.image, g.attention)
                self.progress("generate", 1, None)
        out = []
        for i in range(gen.images):
            if i in fresh:
                row, img, att = fresh[i]
            else:
                row = done[i]
                img = decode_rgb(self.stores.artifacts.get(row.artifact_sha256))
                att = decode_attention(self.stores.artifacts.get(row.attention_sha256))
            out.append(SupportImage(id=row.id, sha=row.artifact_sha256, image=img, source="generated", attention=att))
        return run_id, out, len(missing)

    def generate_indices(self, class_id: str, name: str, gen: GenerationConfig, load_pipeline: Callable[[], object],
                         dtype_name: str, batch_size: int, indices: Sequence[int]) -> int:
        """Draw and store only images ``indices`` of the class's generation run (one shard of a
        distributed build; :meth:`generated` then finds them stored). Indices already stored are kept.
        Returns how many were drawn now; progress: ``("generate", 1, None)`` per image drawn."""
        run_id = self._run_rows(class_id, name, gen, dtype_name)
        wanted = sorted({int(i) for i in indices if 0 <= int(i) < gen.images})
        with self.stores.sessions.reader() as s:
            done = set(s.scalars(select(SupportImageRow.index_in_run).where(
                SupportImageRow.run_id == run_id, SupportImageRow.index_in_run.in_(wanted))))
        missing = [i for i in wanted if i not in done]
        if missing:
            pipe = load_pipeline()
            for g in generate(pipe, gen.spec, name, missing, gen.seed, prompt=gen.prompt,
                              negative_prompt=gen.negative_prompt or "", batch_size=batch_size):
                self._store_generated(class_id, run_id, g, gen.prompt)
                self.progress("generate", 1, None)
        return len(missing)

    def _store_generated(self, class_id: str, run_id: str, g, prompt: str) -> SupportImageRow:
        sha = self.stores.artifacts.put(png_bytes(g.image))
        att_sha = self.stores.artifacts.put(attention_png(g.attention))
        row = SupportImageRow(class_id=class_id, run_id=run_id, index_in_run=g.index, source="generated",
                              artifact_sha256=sha, attention_sha256=att_sha, width=g.image.width,
                              height=g.image.height, seed=g.seed, prompt=prompt)
        try:
            with self.stores.sessions.session() as s:
                s.add(row)
        except IntegrityError:  # a concurrent run stored this index first: use theirs
            log.info("image %d of run %s was stored by a concurrent run; using it", g.index, run_id)
            with self.stores.sessions.reader() as s:
                row = s.scalar(select(SupportImageRow).where(SupportImageRow.run_id == run_id,
                                                             SupportImageRow.index_in_run == g.index))
        return row

    # ------------------------------------------------------------------ exemplars
    def exemplars(self, class_id: str, loaded: list[ExemplarInput]) -> list[SupportImage]:
        out = []
        self.progress("exemplars", 0, len(loaded))
        for ex in loaded:
            sha = self.stores.artifacts.put(png_bytes(ex.image))

            def row_id(s: Session, sha=sha, ex=ex) -> str:
                row = s.scalar(select(SupportImageRow).where(
                    SupportImageRow.class_id == class_id, SupportImageRow.source == "exemplar",
                    SupportImageRow.artifact_sha256 == sha))
                if row is None:
                    row = SupportImageRow(class_id=class_id, source="exemplar", artifact_sha256=sha,
                                          width=ex.image.width, height=ex.image.height, origin=ex.path.name)
                    s.add(row)
                    s.flush()
                return row.id

            image_id = self.stores.sessions.transact(row_id, what="exemplar row")
            out.append(SupportImage(id=image_id, sha=sha, image=ex.image, source="exemplar",
                                    given_mask=ex.mask, given_background=ex.background))
            self.progress("exemplars", 1, None)
        return out
