"""Segmenting a set of inputs: one function over a warm segmenter, whatever runs it.

:func:`segment_inputs` loads each input, labels it and yields, in input order, one
:class:`protodb.segment.result.ImageResult` per input that worked and one
:class:`protodb.entities.InputFailure` (one line) per input that did not; a bad input never stops the
others. The local loop (:func:`protodb.segment.run.segment_files`), the Ray actors
(:mod:`protodb.distributed.segment`) and the HTTP handler (:mod:`protodb.serve.routes_api`) only feed it
inputs and consume its results.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import PIL.Image

from protodb.entities import InputFailure
from protodb.errors import ProtoDBError
from protodb.segment.result import ImageResult

if TYPE_CHECKING:
    from protodb.segment.segmenter import VocabularySegmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentInput:
    """One input: its name (a path, URL or upload name, as reported) and how to load it as RGB (a
    :class:`protodb.errors.ProtoDBError` for what cannot be read; called once, possibly on another
    thread)."""

    name: str
    load: Callable[[], PIL.Image.Image]


def input_failure(name: str, err: BaseException) -> InputFailure:
    """The one line reported for an input that failed: a protodb error's own message, else (an image
    too large for this machine's memory, an odd runtime error) what could not be done and why."""
    if isinstance(err, ProtoDBError):
        return InputFailure(name, str(err), cause=err)
    first = str(err).splitlines()[0][:160] if str(err) else ""
    return InputFailure(name, f"{name}: could not be segmented ({type(err).__name__}: {first})", cause=err)


#: What one input may fail with and the others still run: protodb's own errors, and an image too big or
#: odd for this machine (torch raises RuntimeError for out-of-memory and shape problems).
INPUT_ERRORS = (ProtoDBError, MemoryError, RuntimeError)


def segment_inputs(segmenter: "VocabularySegmenter", inputs: Iterable[SegmentInput], *,
                   batch_size: int = 1) -> Iterator[ImageResult | InputFailure]:
    """Label every input with ``segmenter``, yielding its result or its failure in input order.

    ``batch_size`` > 1 groups inputs for :meth:`VocabularySegmenter.segment_many` (batched extractor calls
    on CUDA; a batch that fails together is segmented again one by one)."""
    pending: list[tuple[SegmentInput, PIL.Image.Image | InputFailure]] = []

    def flush() -> Iterator[ImageResult | InputFailure]:
        loaded = [(i, im) for i, im in pending if not isinstance(im, InputFailure)]
        done: dict[int, ImageResult] = {}
        if segmenter.batches and len(loaded) > 1:
            try:
                results = segmenter.segment_many([im for _, im in loaded], [i.name for i, _ in loaded])
                done = {id(i): r for (i, _), r in zip(loaded, results)}
            except (MemoryError, RuntimeError) as err:  # too big together: one by one below
                log.warning("batch of %d failed (%s); segmenting one by one", len(loaded), err)
        for item, image in pending:
            if isinstance(image, InputFailure):
                yield image
                continue
            if id(item) in done:
                yield done[id(item)]
                continue
            try:
                yield dataclasses.replace(segmenter.segment(image), input=item.name)
            except INPUT_ERRORS as err:
                log.warning("%s failed: %s", item.name, err)
                yield input_failure(item.name, err)
        pending.clear()

    for item in inputs:
        try:
            image: PIL.Image.Image | InputFailure = item.load()
        except INPUT_ERRORS as err:
            image = input_failure(item.name, err)
        pending.append((item, image))
        if len(pending) >= max(1, batch_size):
            yield from flush()
    yield from flush()
