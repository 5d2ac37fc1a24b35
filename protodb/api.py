"""The protodb facade: one object per database, thin over typed stores, services and workflows.

>>> import protodb
>>> db = protodb.open("./protos")
>>> db.sets.resolve("boat")                 # services: db.sets, db.vocabs, db.labels, db.schema, db.sharing
>>> db.add_class(AddClassRequest("boat"))   # workflows: add_class, add_vocab, segment, evaluate, inspect

=====================  =====================================================================
``db.stores``          catalog sessions (+ the retry helper), settings, vectors, artifacts, locks
``db.overview``        ls, info, vocabulary list in plain SQL (no SQLAlchemy import)
``db.services``        every other service (:class:`protodb.services.container.Services`):
                       ``schema``, ``sets``, ``labels``, ``vocabs``, ``support``, ``changes``,
                       ``integrity``, ``sharing``, ``corrections`` — also reachable as ``db.sets`` etc.
=====================  =====================================================================

Workflows take a ``runner``: None runs them in this process, a :class:`protodb.runners.RayOptions` on Ray
(``protodb[ray]``); ``protodb serve`` is the HTTP runner of the same workflows. The services and workflows
are imported on first use: each such import names the heavy library it keeps off the start-up path of the
metadata commands, and all of them are listed in :data:`protodb.lazy.DEFERRED`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from protodb.entities import (
    AddClassResult,
    AddVocabResult,
    BuildPlan,
    CompareReport,
    DbInfo,
    EvalReport,
    ExtractorInfo,
    InspectReport,
    SegmentPlan,
    SegmentReport,
    TeachResult,
    VerifyReport,
)
from protodb.errors import InvalidInput as InvalidInputError
from protodb.errors import NotFound as NotFoundError
from protodb.names import normalize_class_name
from protodb.pipeline.config import rebuild_request
from protodb.runners import DEFAULT_SEGMENT_BATCH, RayOptions
from protodb.segment.options import SegmentOptions
from protodb.services.overview import OverviewService
from protodb.stores import Stores

if TYPE_CHECKING:
    from protodb.inspection import Inspector
    from protodb.models.registry import ModelRegistry
    from protodb.pipeline.build import ClassBuilder
    from protodb.pipeline.config import AddClassRequest
    from protodb.pipeline.vocab_build import BuildExecutor
    from protodb.segment.index import VocabIndexes
    from protodb.segment.options import SegmentOptions
    from protodb.segment.segmenter import VocabularySegmenter
    from protodb.services.changes import ChangeService
    from protodb.services.corrections import CorrectionService
    from protodb.services.container import Services
    from protodb.services.integrity import IntegrityService
    from protodb.services.labels import LabelService
    from protodb.services.schema import SchemaService
    from protodb.services.sets import SetService
    from protodb.services.sharing import SharingService
    from protodb.services.support import SupportService
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

    # ------------------------------------------------------------------ services (made on first use)
    @functools.cached_property
    def services(self) -> "Services":
        from protodb.services.container import Services  # deferred: SQLAlchemy

        return Services(self.stores, self.overview, indexes=lambda: self.indexes)

    @property
    def schema(self) -> "SchemaService":
        return self.services.schema

    @property
    def sets(self) -> "SetService":
        return self.services.sets

    @property
    def labels(self) -> "LabelService":
        return self.services.labels

    @property
    def vocabs(self) -> "VocabService":
        return self.services.vocabs

    @property
    def support(self) -> "SupportService":
        return self.services.support

    @property
    def changes(self) -> "ChangeService":
        return self.services.changes

    @property
    def integrity(self) -> "IntegrityService":
        return self.services.integrity

    @property
    def sharing(self) -> "SharingService":
        return self.services.sharing

    @property
    def corrections(self) -> "CorrectionService":
        return self.services.corrections

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
        from protodb.models.registry import check_weights  # deferred: torch

        def models():
            with self.stores.sessions.reader() as s:
                from_rows = self.sets.extractor_records(s)
            return check_weights(from_rows, self.home)

        report = self.integrity.verify(check_models=models)
        statuses, damage = self.indexes.verify()
        return dataclasses.replace(report, damage=report.damage + tuple(damage), indexes=tuple(statuses))

    @functools.cached_property
    def indexes(self) -> "VocabIndexes":
        """Summary indexes of vocabularies (two-stage matching): build, status, drop
        (:class:`protodb.segment.index.VocabIndexes`)."""
        from protodb.segment.index import VocabIndexes  # deferred: numpy, torch

        return VocabIndexes(self.stores, self.sets, self.vocabs)

    def registry(self, preset: str | None = None) -> "ModelRegistry":
        from protodb.models.registry import ModelRegistry  # deferred: torch

        return ModelRegistry(self.stores, preset)

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
        from protodb.pipeline.build import ClassBuilder  # deferred: torch

        return ClassBuilder.open(self.services, preset=preset, device=device, dtype=dtype, progress=progress)

    def _executor(self, template: "AddClassRequest", preset: str | None, progress: Progress | None,
                  runner: RayOptions | None) -> "BuildExecutor":
        if runner is None:
            from protodb.pipeline.vocab_build import LocalExecutor  # deferred: torch

            return LocalExecutor(self.builder(preset=preset, device=template.device, dtype=template.dtype,
                                              progress=progress))
        from protodb.distributed.build import RayExecutor  # deferred: ray (the optional extra)

        return RayExecutor(self.services, preset, runner)

    def add_class(self, request: "AddClassRequest", *, preset: str | None = None, progress: Progress | None = None,
                  runner: RayOptions | None = None) -> AddClassResult:
        """Build (or find) the prototype sets of one class (see :mod:`protodb.pipeline.build`); on Ray its
        generation shards are spread over the workers."""
        request = request.with_speed()
        if runner is None:
            return self.builder(preset=preset, device=request.device, dtype=request.dtype,
                                progress=progress).add_class(request)
        return self._executor(request, preset, progress, runner).add_class(request, progress=progress)

    def add_vocab(self, name: str, template: "AddClassRequest", *, preset: str | None = None,
                  progress: Progress | None = None, on_result: Callable[[AddClassResult], None] | None = None,
                  runner: RayOptions | None = None) -> AddVocabResult:
        """Build every class of vocabulary ``name`` that has no prototypes yet (``template``'s settings)."""
        from protodb.pipeline import vocab_build  # deferred: torch

        template = template.with_speed()
        plan = vocab_build.plan_vocab(self.sets, self.vocabs, self.registry(preset), name, template)
        vocab_build.resolved_requests(self.registry(preset), plan.requests)  # every request checked up front
        return vocab_build.run_vocab(plan, self._executor(template, preset, progress, runner), self.vocabs,
                                     progress=progress, on_result=on_result)

    def plan_build(self, requests: Sequence["AddClassRequest"], *, preset: str | None = None,
                   runner: RayOptions | None = None, vocab: str | None = None) -> BuildPlan:
        """``--dry-run`` of add-class (``requests``) or add-vocab (``vocab``: its missing classes, each from
        ``requests[0]``'s settings): classes, images, tasks and the estimate; nothing started or written."""
        from protodb.pipeline import vocab_build  # deferred: torch

        reg = self.registry(preset)
        already: Sequence[str] = ()
        if vocab is not None:
            plan = vocab_build.plan_vocab(self.sets, self.vocabs, reg, vocab, requests[0])
            requests, already = plan.requests, plan.already_built
        return vocab_build.plan_builds(reg, requests, already, shard_size=runner.check().shard_size if runner else 0,
                                       ray=runner.address if runner else None, home=self.home)

    # ------------------------------------------------------------------ teaching by example
    def rebuild_with_corrections(self, class_name: str, *, extractor: str | None = None, preset: str | None = None,
                                 device: str = "auto", dtype: str = "auto",
                                 progress: Progress | None = None) -> AddClassResult:
        """A new version of ``class_name`` from its newest version's support (the same generated images,
        found stored; the same exemplar photos and masks) plus every stored correction, with the same
        settings and preset (unless ``preset``). The previous version stays as it was (``boat@N``)."""
        sets = self.sets.resolve(class_name, extractor)
        if not sets:
            raise NotFoundError(f"class {class_name!r} has no ready prototypes; run: protodb add-class {class_name}")
        pset = sets[0]
        req = rebuild_request(pset.class_name, pset.config, pset.params, set_id=pset.id, extractor=pset.extractor,
                              with_corrections=True, device=device, dtype=dtype)
        used = preset or (pset.config or {}).get("preset") or (pset.params or {}).get("preset")
        return self.add_class(req, preset=used, progress=progress)

    def teach(self, class_name: str, image, *, mask=None, label_map=None, values=None, author: str | None = None,
              rebuild: bool = True, extractor: str | None = None, preset: str | None = None, device: str = "auto",
              dtype: str = "auto", settings: dict | None = None, progress: Progress | None = None) -> TeachResult:
        """Store a correction of ``class_name`` on ``image`` (a file or bytes) — ``mask`` (its non-zero pixels
        are the class) or ``label_map`` + ``values`` {value: class} — recorded against the class's newest
        version, then (``rebuild``) build a new version from that version's support plus every correction
        (:meth:`rebuild_with_corrections`). Bad input is refused before anything is written."""
        name = normalize_class_name(class_name)
        current = self.sets.resolve(name, extractor)
        if not current:
            raise NotFoundError(f"class {name!r} has no ready prototypes to correct; run: protodb add-class {name}")
        if mask is not None:
            stored = self.corrections.add(image, mask=mask, class_name=name, author=author, set_id=current[0].id,
                                          settings=settings)
        else:
            stored = self.corrections.add(image, label_map=label_map, values=values, author=author,
                                          set_id=current[0].id, settings=settings)
        built = None
        if rebuild:
            built = self.rebuild_with_corrections(name, extractor=extractor, preset=preset, device=device,
                                                  dtype=dtype, progress=progress)
        return TeachResult(name, stored, current[0].ref, built)

    def compare(self, a: str, b: str, *, images: str | os.PathLike | None = None,
                labels: str | os.PathLike | None = None, values: dict[str, int] | None = None,
                others: Sequence[str] = (), options: "SegmentOptions | None" = None,
                progress: Callable[[int, int], None] | None = None) -> CompareReport:
        """Per-class IoU of versions ``a`` and ``b`` (``boat@1``, ``boat@2``) on the same images, and the
        change: on ``labels`` (label maps by stem; ``values`` {class: value}, else binary masks of the class),
        or on the class's corrected images (those in ``images`` when given). Both segment with the same
        ``others`` classes and ``options`` (see :mod:`protodb.segment.compare`)."""
        from protodb.segment import compare as cmp  # deferred: torch

        name_a, name_b = cmp.class_of(a), cmp.class_of(b)
        if name_a != name_b:
            raise InvalidInputError(f"compare two versions of one class: {a} and {b} name different classes")
        for ref in (a, b):
            if not self.sets.resolve(ref):
                raise NotFoundError(f"no ready prototype set {ref}; see: protodb ls")
        others = [o for o in others if cmp.class_of(o) != name_a]
        if labels is not None:
            if images is None:
                raise InvalidInputError("--labels needs --images (label maps are matched to images by file stem)")
            truths, on = cmp.truth_from_labels(Path(images), Path(labels), name_a, values), "labels"
        else:
            truths, on = cmp.truth_from_corrections(self.corrections, name_a,
                                                    Path(images) if images is not None else None), "corrections"
        base = (options or SegmentOptions()).replace(vocab=None)
        seg_a = self.segmenter(base.replace(classes=",".join([a, *others])))
        seg_b = self.segmenter(base.replace(classes=",".join([b, *others])))
        settings = {"others": list(others), **seg_a.settings.to_dict()}
        return cmp.compare(a, b, seg_a.segment, seg_b.segment, truths, on=on, settings=settings, progress=progress)

    # ------------------------------------------------------------------ segmenting
    def segmenter(self, options: "SegmentOptions") -> "VocabularySegmenter":
        """A warm segmenter: the vocabulary's tables, extractors and pre-filter loaded once."""
        from protodb.segment.segmenter import VocabularySegmenter  # deferred: torch

        return VocabularySegmenter.open(self.services, options)

    def segment(self, inputs: Sequence[str], options: "SegmentOptions", out: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None, *, runner: RayOptions | None = None,
                batch_size: int | None = None, overwrite: bool = False) -> SegmentReport:
        """Label every input (files, folders, globs; with Ray also s3://...); bad inputs are reported and the
        others finish. On Ray, inputs whose outputs exist are skipped unless ``overwrite``."""
        if runner is None:
            from protodb.segment.run import segment_files  # deferred: torch

            return segment_files(self.segmenter(options), [str(i) for i in inputs],
                                 Path(out) if out is not None else None, progress=progress)
        from protodb.distributed import segment as ray_segment  # deferred: ray (the optional extra)

        return ray_segment.segment(self.services, [str(i) for i in inputs], options, str(out), opts=runner,
                                   batch_size=batch_size or DEFAULT_SEGMENT_BATCH, overwrite=overwrite,
                                   progress=progress)

    def plan_segment(self, inputs: Sequence[str], options: "SegmentOptions", out: str, *,
                     runner: RayOptions | None = None, overwrite: bool = False,
                     batch_size: int | None = None) -> SegmentPlan:
        """``--dry-run`` of segment: inputs to label, those whose outputs exist (skipped on Ray unless
        ``overwrite``), tasks and the estimate; nothing started or written."""
        from protodb.segment.inputs import plan_segment  # deferred: fsspec

        return plan_segment(self.services, [str(i) for i in inputs], options, str(out),
                            overwrite=overwrite or runner is None,
                            batch_size=batch_size or (DEFAULT_SEGMENT_BATCH if runner is not None else 1),
                            ray=runner.address if runner else None)

    def evaluate(self, dataset: str, root: str | os.PathLike, options: "SegmentOptions", *, split: str = "val",
                 limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> EvalReport:
        """mIoU of ``options``' vocabulary (default: the dataset's own) on a labelled dataset; the dataset
        is checked before any model loads."""
        from protodb.segment import datasets  # deferred: numpy
        from protodb.segment.evaluate import evaluate

        conv = datasets.label_convention(dataset)
        pairs = list(datasets.iter_dataset(dataset, root, split=split, limit=limit))
        if not options.vocab and not options.classes:
            options = options.replace(vocab=conv["vocabulary"])
        if options.background is None:
            options = options.replace(background=bool(conv["background"]))
        return evaluate(self.segmenter(options), dataset, root, split=split, pairs=pairs, progress=progress)

    # ------------------------------------------------------------------ looking inside
    @functools.cached_property
    def inspector(self) -> "Inspector":
        """Provenance, prototype traces and contact sheets of sets (:class:`protodb.inspection.Inspector`)."""
        from protodb.inspection import Inspector  # deferred: torch

        return Inspector(self.stores, self.sets, self.labels, self.support, self.registry())

    def inspect(self, ref: str, **kwargs) -> InspectReport:
        """Provenance and contact sheets of a set; see :meth:`protodb.inspection.Inspector.inspect`."""
        return self.inspector.inspect(ref, **kwargs)
