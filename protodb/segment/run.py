"""``protodb segment`` in this process: the local runner of :func:`protodb.segment.workflow.segment_inputs`.

It lists the inputs (files, folders, globs), names their outputs, feeds them to the workflow one by one and
writes each result with the one writer (:class:`protodb.segment.outputs.OutputWriter`); a bad input is
reported and the others finish. The Ray runner (:mod:`protodb.distributed.segment`) and the HTTP service
(:mod:`protodb.serve`) drive the same workflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from protodb.entities import InputFailure, SegmentOutput, SegmentReport
from protodb.images import load_image
from protodb.segment.inputs import list_inputs, stems_of
from protodb.segment.outputs import OutputWriter
from protodb.segment.result import ImageResult
from protodb.segment.segmenter import VocabularySegmenter
from protodb.segment.workflow import SegmentInput, segment_inputs


def segment_files(segmenter: VocabularySegmenter, inputs: Sequence[str], out: Path | None,
                  progress: Callable[[int, int], None] | None = None) -> SegmentReport:
    """Segment every input with a loaded segmenter, writing under ``out`` (None: write nothing)."""
    paths, failed = list_inputs([str(i) for i in inputs], remote=False)
    writer = OutputWriter(out, segmenter.support_crop) if out is not None else None
    stems = stems_of(paths)
    outputs: list[SegmentOutput] = []
    failures: list[InputFailure] = list(failed)
    t0 = time.perf_counter()
    items = (SegmentInput(p, lambda p=p: load_image(p)) for p in paths)
    for i, item in enumerate(segment_inputs(segmenter, items)):
        if isinstance(item, ImageResult):
            files = writer.write(item, stems[item.input]) if writer is not None else None
            outputs.append(item.output(files))
        else:
            failures.append(item)
        if progress:
            progress(i + 1, len(paths))
    return SegmentReport(vocabulary=segmenter.vocab.describe(), settings=segmenter.settings.to_dict(),
                         outputs=tuple(outputs), failed=tuple(failures), seconds=time.perf_counter() - t0)
