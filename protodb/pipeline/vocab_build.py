"""``add-vocab`` (and ``add-class`` on a runner): one planner, executors behind one interface.

:func:`plan_vocab` decides which classes of a vocabulary to build (a class, or pinned version, that has ready
sets for every wanted extractor is kept) and :func:`resolved_requests` checks every request before anything
starts (the image-count guard, the preset's defaults). An executor builds a list of requests and reports
each class's result or failure: :class:`LocalExecutor` in this process (models load once), or the Ray
executor (:class:`protodb.distributed.build.RayExecutor`) on actors. :func:`run_vocab` runs a plan on either
and copies a built-in vocabulary into the catalog at the end, so later changes start from it; one failing
class does not stop the others. :func:`plan_builds` is the ``--dry-run`` of either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from protodb.entities import AddClassResult, AddVocabResult, BuildPlan, ClassFailure, Vocabulary
from protodb.errors import NotFound, ProtoDBError
from protodb.models.registry import ModelRegistry
from protodb.names import Ref
from protodb.pipeline.build import ClassBuilder
from protodb.pipeline.config import AddClassRequest, check_image_count, check_request
from protodb.planning import build_plan
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService

log = logging.getLogger(__name__)
Progress = Callable[[str, int, "int | None"], None]
OnResult = Callable[[AddClassResult], None]


@dataclass(frozen=True)
class VocabPlan:
    """Which classes of ``vocab`` to build (``requests``, the template's settings) and which are built."""

    vocab: Vocabulary
    requests: tuple[AddClassRequest, ...]
    already_built: tuple[str, ...]


class BuildExecutor(Protocol):
    """Builds classes; returns (results in request order, failures). A class that fails is a failure, the
    others are still built."""

    def run(self, requests: Sequence[AddClassRequest], *, progress: Progress | None = None,
            on_result: OnResult | None = None) -> tuple[list[AddClassResult], list[ClassFailure]]: ...


def missing_classes(sets: SetService, refs: list[str], extractors: list[str]) -> tuple[list[str], list[str]]:
    """(refs to build, refs already built for every extractor)."""
    todo, present = [], []
    for ref in refs:
        try:
            have = {s.extractor for e in extractors for s in sets.resolve(ref, e)}
        except NotFound:
            have = set()
        (present if set(extractors) <= have else todo).append(ref)
    return todo, present


def plan_vocab(sets: SetService, vocabs: VocabService, registry: ModelRegistry, name: str,
               template: AddClassRequest) -> VocabPlan:
    """The classes of vocabulary ``name`` still to build with ``template``'s settings."""
    vocab = vocabs.show(name)
    wanted = tuple(template.extractors) or tuple(registry.default_extractors)
    todo, present = missing_classes(sets, list(vocab.classes), list(wanted))
    return VocabPlan(vocab, tuple(template.replace(name=Ref.parse(ref).name, extractors=wanted) for ref in todo),
                     tuple(present))


def resolved_requests(registry: ModelRegistry, requests: Sequence[AddClassRequest]) -> list[AddClassRequest]:
    """Requests with their image count resolved (the preset's default) and checked, before anything starts."""
    out = []
    for req in requests:
        name = check_request(req)
        images = registry.default_images if req.images is None else req.images
        check_image_count(images, req.yes)
        out.append(req.replace(name=name, images=images))
    return out


def plan_builds(registry: ModelRegistry, requests: Sequence[AddClassRequest], already_built: Sequence[str], *,
                shard_size: int = 0, ray: str | None = None, home: Path | None = None) -> BuildPlan:
    """``--dry-run``: the plan of building ``requests`` (nothing started, nothing written); ``shard_size`` and
    ``ray`` for a Ray run (generation shards), 0 and None in this process."""
    reqs = resolved_requests(registry, requests)
    generator = next((r.generator for r in reqs if r.generator), None) or registry.default_generator
    batch = reqs[0].batch_size if reqs else 4
    return build_plan([(r.name, int(r.images or 0)) for r in reqs], list(already_built), shard_size=shard_size,
                      batch_size=batch, generator=generator, preset=registry.preset, ray=ray, home=home)


class LocalExecutor:
    """Builds classes one after another in this process with one :class:`ClassBuilder` (models load once)."""

    def __init__(self, builder: ClassBuilder):
        self.builder = builder

    def run(self, requests: Sequence[AddClassRequest], *, progress: Progress | None = None,
            on_result: OnResult | None = None) -> tuple[list[AddClassResult], list[ClassFailure]]:
        results, failed = [], []
        for req in requests:
            try:
                res = self.builder.add_class(req)
            except ProtoDBError as err:
                log.warning("%s failed: %s", req.name, err)
                failed.append(ClassFailure(req.name, str(err)))
                continue
            results.append(res)
            if on_result:
                on_result(res)
        return results, failed


def run_vocab(plan: VocabPlan, executor: BuildExecutor, vocabs: VocabService, *, progress: Progress | None = None,
              on_result: OnResult | None = None) -> AddVocabResult:
    """Build ``plan``'s classes on ``executor``; a built-in vocabulary is then copied into the catalog."""
    results, failures = executor.run(plan.requests, progress=progress, on_result=on_result)
    v = plan.vocab
    if v.builtin:
        vocabs.create(v.name, list(v.classes), description=v.description, replace=True, background=bool(v.background))
    return AddVocabResult(vocab=v.name, classes=tuple(results), already_built=plan.already_built,
                          failed=tuple(failures))
