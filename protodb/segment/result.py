"""What segmenting one input gives: :class:`ImageResult`, and its encodings.

Every runner consumes the same typed result: the local loop and the Ray actors hand it to the writer
(:class:`protodb.segment.outputs.OutputWriter`: label PNG, overlay, JSON, explain image) and report
:meth:`ImageResult.output`; the HTTP service answers :meth:`ImageResult.document` plus the outputs a request
asks for; Ray rows are :func:`to_row` / :func:`from_row` of the same two. A failed input is an
:class:`protodb.entities.InputFailure` (one line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

from protodb.entities import InputFailure, SegmentOutput
from protodb.segment.outputs import label_values


@dataclass(frozen=True, eq=False)
class ImageResult:
    """One labelled image.

    ``input``: the input's name (path, URL or upload name); ``image``: the RGB image labelled;
    ``labels``: (H, W) int32 vocabulary index per pixel (``len(vocabulary["classes"])`` is the background
    when the vocabulary has one); ``scores``: (H, W) float32 the winning cosine per pixel; ``present``:
    {class: {"fraction", "score"}} for every label present (``background`` included); ``kept``: the classes
    the pre-filter kept (every class when there is no pre-filter); ``winners``: per class present, the
    prototype that won it (set, support image, box; empty unless ``explain``); ``vocabulary``: the loaded
    vocabulary (name, version, classes, background, extractors, the sets used); ``settings``: the resolved
    segment settings; ``prefilter``: whether a pre-filter chose ``kept``; ``seconds``: segmenting time;
    ``runner_up`` / ``runner_up_labels``: (H, W) float32 the best other column's score per pixel and (H, W)
    int32 that column (vocabulary index space), when asked for (``SegmentOptions.runner_up``) and more than
    one column competed, else None.
    """

    input: str
    image: PIL.Image.Image
    labels: np.ndarray
    scores: np.ndarray
    present: dict[str, dict[str, float]]
    kept: tuple[str, ...]
    winners: dict[str, dict[str, Any]]
    vocabulary: dict[str, Any]
    settings: dict[str, Any]
    prefilter: bool = False
    seconds: float = 0.0
    runner_up: np.ndarray | None = None
    runner_up_labels: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the input."""
        return (self.image.width, self.image.height)

    @property
    def names(self) -> list[str]:
        return list(self.vocabulary["classes"])

    @property
    def background(self) -> bool:
        return bool(self.vocabulary["background"])

    @property
    def explain(self) -> bool:
        return bool(self.settings.get("explain"))

    def values(self) -> tuple[np.ndarray, dict[int, str]]:
        """The label PNG's values (with a background, 0 = background and class i = i + 1) and their legend."""
        return label_values(self.labels, self.names, self.background)

    def document(self, name: str | None = None) -> dict[str, Any]:
        """The JSON written beside each input's outputs (and the base of the HTTP answer): input (``name``,
        by default the input's own), size, vocabulary, present, prefilter_kept, settings, legend and, with
        explain, the winners."""
        _, legend = self.values()
        doc = {"input": self.input if name is None else name, "size": list(self.size), "vocabulary": self.vocabulary,
               "present": self.present, "prefilter_kept": list(self.kept) if self.prefilter else None,
               "settings": self.settings, "legend": {str(k): v for k, v in legend.items()}}
        if self.winners:
            doc["explain"] = self.winners
        return doc

    def output(self, files: dict[str, str] | None) -> SegmentOutput:
        """What a segment report lists for this input (the files written, when any)."""
        return SegmentOutput(input=self.input, size=self.size, present=self.present, files=files,
                             explain=self.winners if self.explain else None)


def to_row(item: ImageResult | InputFailure, files: dict[str, str] | None = None) -> dict[str, str]:
    """One small record per input (strings only: a Ray Data row): the report entry, or the failure."""
    if isinstance(item, InputFailure):
        return {"input": item.input, "error": item.error, "output": "null", "vocabulary": "null", "settings": "null"}
    return {"input": item.input, "error": "", "output": json.dumps(item.output(files).to_dict()),
            "vocabulary": json.dumps(item.vocabulary), "settings": json.dumps(item.settings)}


def from_row(row: dict[str, Any]) -> tuple[SegmentOutput | InputFailure, dict[str, Any], dict[str, Any]]:
    """(report entry or failure, vocabulary, settings) of a :func:`to_row` record."""
    if row.get("error"):
        return InputFailure(str(row["input"]), str(row["error"])), {}, {}
    out = json.loads(row["output"])
    entry = SegmentOutput(input=out["input"], size=tuple(out["size"]), present=out["present"],
                          files=out.get("files"), explain=out.get("explain"))
    return entry, json.loads(row["vocabulary"]), json.loads(row["settings"])
