"""``add-vocab``: build every class of a vocabulary that has no prototypes yet (models load once).

A class (or pinned version) that already has ready sets for every wanted extractor is kept. One
failing class does not stop the others: its error is recorded and the run goes on. A built-in
vocabulary is copied into the catalog at the end, so later changes start from it.
"""

from __future__ import annotations

import logging
from typing import Callable

from protodb.entities import AddClassResult, AddVocabResult, ClassFailure
from protodb.errors import NotFound, ProtoDBError
from protodb.names import Ref
from protodb.pipeline.build import ClassBuilder
from protodb.pipeline.config import AddClassRequest
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService

log = logging.getLogger(__name__)


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


def add_vocab(builder: ClassBuilder, sets: SetService, vocabs: VocabService, name: str,
              template: AddClassRequest, on_result: Callable[[AddClassResult], None] | None = None) -> AddVocabResult:
    """Build the missing classes of vocabulary ``name`` with ``template``'s settings."""
    vocab = vocabs.show(name)
    wanted = list(template.extractors) or list(builder.registry.default_extractors)
    todo, present = missing_classes(sets, list(vocab.classes), wanted)
    results, failed = [], []
    for ref in todo:
        cname = Ref.parse(ref).name
        try:
            res = builder.add_class(template.replace(name=cname, extractors=tuple(wanted)))
        except ProtoDBError as err:
            log.warning("%s failed: %s", cname, err)
            failed.append(ClassFailure(cname, str(err)))
            continue
        results.append(res)
        if on_result:
            on_result(res)
    if vocab.builtin:
        vocabs.create(name, list(vocab.classes), description=vocab.description, replace=True,
                      background=bool(vocab.background))
    return AddVocabResult(vocab=name, classes=tuple(results), already_built=tuple(present), failed=tuple(failed))
