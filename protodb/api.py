"""The protodb facade: one object per database, thin over typed stores and services.

>>> import protodb
>>> db = protodb.open("./protos")
>>> db.sets.resolve("boat")                 # services: db.sets, db.vocabs, db.labels, db.schema, db.sharing
>>> db.add_class(AddClassRequest("boat"))   # workflows: add_class, add_vocab, segment, evaluate, inspect

=====================  =====================================================================
``db.stores``          catalog sessions (+ the retry helper), settings, vectors, artifacts, locks
``db.overview``        ls, info, vocabulary list in plain SQL (no SQLAlchemy import)
``db.schema``          catalog revision: current / upgrade / downgrade / check
``db.sets``            prototype sets: commit, resolve, prototypes, ls, tags
``db.labels``          thing/stuff labels and their history
``db.vocabs``          vocabularies
``db.integrity``       verify
``db.sharing``         export / import, remotes, push / pull
=====================  =====================================================================

Workflows load models; their modules (and torch, LanceDB) are imported on first use, so metadata
commands stay fast.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from protodb.entities import (
    AddClassResult,
    AddVocabResult,
    DbInfo,
    EvalReport,
    ExtractorInfo,
    InspectReport,
    SegmentReport,
    VerifyReport,
)
from protodb.lazy import lazy_import
from protodb.services.overview import OverviewService
from protodb.stores import Stores

# Services that use the ORM load on first use: ``ls``, ``info`` and ``vocab list`` (db.overview) never
# import SQLAlchemy.
integrity_service = lazy_import("protodb.services.integrity")
labels_service = lazy_import("protodb.services.labels")
schema_service = lazy_import("protodb.services.schema")
sets_service = lazy_import("protodb.services.sets")
vocabs_service = lazy_import("protodb.services.vocabs")
sharing_service = lazy_import("protodb.services.sharing")  # bundles need pyarrow
registry_mod = lazy_import("protodb.models.registry")
build = lazy_import("protodb.pipeline.build")
vocab_build = lazy_import("protodb.pipeline.vocab_build")
seg_run = lazy_import("protodb.segment.run")
seg_eval = lazy_import("protodb.segment.evaluate")
datasets = lazy_import("protodb.segment.datasets")
inspection = lazy_import("protodb.inspection")

if TYPE_CHECKING:
    from protodb.models.registry import ModelRegistry
    from protodb.pipeline.build import ClassBuilder
    from protodb.pipeline.config import AddClassRequest
    from protodb.segment.options import SegmentOptions
    from protodb.segment.run import VocabularySegmenter
    from protodb.services.integrity import IntegrityService
    from protodb.services.labels import LabelService
    from protodb.services.schema import SchemaService
    from protodb.services.sets import SetService
    from protodb.services.sharing import SharingService
    from protodb.services.vocabs import VocabService

Progress = Callable[[str, int, "int | None"], None]


class ProtoDB:
    """One prototype database. Cheap to open; vectors and artifacts connect on first use.

    path: home folder (default ``$PROTODB_HOME`` or ``~/.protodb``). catalog_url: SQLAlchemy URL
    (default ``$PROTODB_CATALOG_URL`` or ``sqlite:///HOME/catalog.sqlite``). create: create the home
    and an empty catalog when missing (read-only uses pass False: a missing database is NotFound).
    check_schema: refuse a catalog at another revision (only ``protodb db ...`` turns this off).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, catalog_url: str | None = None,
                 create: bool = True, check_schema: bool = True):
        self.stores = Stores.open(path, catalog_url=catalog_url, create=create, check_schema=check_schema)
        self.overview = OverviewService(self.stores)
        self._sharing = None

    # ------------------------------------------------------------------ services (made on first use)
    @functools.cached_property
    def schema(self) -> "SchemaService":
        return schema_service.SchemaService(self.stores)

    @functools.cached_property
    def sets(self) -> "SetService":
        return sets_service.SetService(self.stores)

    @functools.cached_property
    def labels(self) -> "LabelService":
        return labels_service.LabelService(self.stores)

    @functools.cached_property
    def vocabs(self) -> "VocabService":
        return vocabs_service.VocabService(self.stores, self.sets)

    @functools.cached_property
    def integrity(self) -> "IntegrityService":
        return integrity_service.IntegrityService(self.stores)

    # ------------------------------------------------------------------ plumbing
    @property
    def home(self) -> Path:
        return self.stores.home

    @property
    def catalog_url(self) -> str:
        return self.stores.catalog_url

    @property
    def engine(self):
        return self.stores.engine

    @property
    def schema_revision(self) -> str | None:
        return self.stores.schema_revision

    def session(self):
        """A catalog transaction (committed on success): ``with db.session() as s: ...``."""
        return self.stores.sessions.session()

    @property
    def sharing(self) -> "SharingService":
        if self._sharing is None:
            self._sharing = sharing_service.SharingService(self.stores, self.sets, self.vocabs)
        return self._sharing

    def close(self) -> None:
        self.stores.close()

    def __enter__(self) -> "ProtoDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ overview
    def info(self) -> DbInfo:
        return self.overview.info()

    def verify(self) -> VerifyReport:
        """Artifacts, every ready set's vectors (count, kinds, checksum) and local model weights."""
        def models():
            with self.stores.sessions.reader() as s:
                from_rows = self.sets.extractor_records(s)
            return registry_mod.check_weights(from_rows, self.home)

        return self.integrity.verify(check_models=models)

    def registry(self, preset: str | None = None) -> "ModelRegistry":
        return registry_mod.ModelRegistry(self.stores, preset)

    def add_extractor(self, spec) -> ExtractorInfo:
        """Register a user's extractor spec (loaded once first, so a spec that does not fit fails here)."""
        reg = self.registry()
        record = reg.extractor_record(spec, reg.load_extractor(spec, "cpu", "float32"))
        reg.add_user_extractor(spec)
        return ExtractorInfo(spec.name, spec.kind, spec.config, record.dim, record.weights_hash)

    # ------------------------------------------------------------------ building
    def builder(self, *, preset: str | None = None, device: str = "auto", dtype: str = "auto",
                progress: Progress | None = None) -> "ClassBuilder":
        """A class builder whose models stay loaded across classes."""
        return build.ClassBuilder(self.stores, self.sets, self.labels, self.registry(preset),
                                  device=device, dtype=dtype, progress=progress)

    def add_class(self, request: "AddClassRequest", *, preset: str | None = None,
                  progress: Progress | None = None) -> AddClassResult:
        """Build (or find) the prototype sets of one class; see :mod:`protodb.pipeline.build`."""
        builder = self.builder(preset=preset, device=request.device, dtype=request.dtype, progress=progress)
        return builder.add_class(request)

    def add_vocab(self, name: str, template: "AddClassRequest", *, preset: str | None = None,
                  progress: Progress | None = None, on_result: Callable[[AddClassResult], None] | None = None
                  ) -> AddVocabResult:
        """Build every class of vocabulary ``name`` that has no prototypes yet (``template``'s settings)."""
        builder = self.builder(preset=preset, device=template.device, dtype=template.dtype, progress=progress)
        return vocab_build.add_vocab(builder, self.sets, self.vocabs, name, template, on_result=on_result)

    # ------------------------------------------------------------------ segmenting
    def segmenter(self, options: "SegmentOptions") -> "VocabularySegmenter":
        """A warm segmenter: the vocabulary's tables, extractors and pre-filter loaded once."""
        return seg_run.VocabularySegmenter(self.stores, self.sets, self.vocabs, self.registry(options.preset),
                                           options)

    def segment(self, inputs: Sequence[str], options: "SegmentOptions", out: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None) -> SegmentReport:
        """Label every input (files, folders, globs); bad inputs are reported and the others finish."""
        return seg_run.segment_files(self.segmenter(options), [str(i) for i in inputs],
                                     Path(out) if out is not None else None, progress=progress)

    def evaluate(self, dataset: str, root: str | os.PathLike, options: "SegmentOptions", *, split: str = "val",
                 limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> EvalReport:
        """mIoU of ``options``' vocabulary (default: the dataset's own) on a labelled dataset; the dataset
        is checked before any model loads."""
        conv = datasets.label_convention(dataset)
        pairs = list(datasets.iter_dataset(dataset, root, split=split, limit=limit))
        if not options.vocab and not options.classes:
            options = options.replace(vocab=conv["vocabulary"])
        if options.background is None:
            options = options.replace(background=bool(conv["background"]))
        return seg_eval.evaluate(self.segmenter(options), dataset, root, split=split, pairs=pairs, progress=progress)

    def inspect(self, ref: str, **kwargs) -> InspectReport:
        """Provenance and contact sheets of a set; see :meth:`protodb.inspection.Inspector.inspect`."""
        return inspection.Inspector(self.stores, self.sets, self.labels, self.registry()).inspect(ref, **kwargs)
