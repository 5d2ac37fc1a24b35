"""``protodb eval``: mIoU of a vocabulary on a labelled dataset (mmsegmentation conventions)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from protodb.entities import EvalReport
from protodb.errors import InvalidInput
from protodb.images import load_image
from protodb.segment.datasets import iter_dataset, label_convention, load_label
from protodb.segment.metrics import MIoU
from protodb.segment.segmenter import VocabularySegmenter
from protodb.vocabularies import load_builtin


def check_vocabulary(segmenter: VocabularySegmenter, dataset: str, conv: dict) -> list[str]:
    """The segmenter's classes must be the dataset's, in order, with its background convention."""
    v = segmenter.vocab
    k = conv["num_classes"] - (1 if conv["background"] else 0)
    if len(v.names) != k:
        raise InvalidInput(f"vocabulary has {len(v.names)} classes, dataset {dataset} scores {k}; "
                           f"use its vocabulary (--vocab {conv['vocabulary']})")
    expected = list(load_builtin(conv["vocabulary"])["classes"])
    if v.names != expected:
        raise InvalidInput(f"vocabulary classes differ from {dataset}'s (names and order must match: "
                           f"{', '.join(expected[:5])}, ...); use --vocab {conv['vocabulary']}")
    if v.background != bool(conv["background"]):
        raise InvalidInput(f"dataset {dataset} {'has' if conv['background'] else 'has no'} background class; "
                           f"{'drop' if v.background else 'add'} --no-background")
    return v.names + (["background"] if v.background else [])


def evaluate(segmenter: VocabularySegmenter, dataset: str, root: str | Path, *, split: str = "val",
             limit: int | None = None, pairs: list | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Segment every image of the split and score it. Intersections and unions are summed over the
    whole split per class; mIoU is their mean over classes that occur (prediction or label)."""
    conv = label_convention(dataset)
    names = check_vocabulary(segmenter, dataset, conv)
    metric = MIoU(len(names), ignore_index=255, names=names)
    if pairs is None:  # (the facade lists them before loading any model, so a bad root fails fast)
        pairs = list(iter_dataset(dataset, root, split=split, limit=limit))
    t0 = time.perf_counter()
    for i, (img_path, lab_path) in enumerate(pairs):
        image = load_image(img_path)
        gt = load_label(lab_path, conv)
        if gt.shape != (image.height, image.width):
            raise InvalidInput(f"label {lab_path} is {gt.shape[1]}x{gt.shape[0]}, image is {image.width}x{image.height}")
        metric.update(segmenter.segment(image, str(img_path)).labels.astype(np.int64), gt)
        if progress:
            progress(i + 1, len(pairs))
    res = metric.result()
    return EvalReport(dataset=dataset, split=split, root=str(root), images=len(pairs), miou=res["miou"],
                      per_class=res["per_class"], accuracy=res.get("accuracy"),
                      seconds_per_image=round((time.perf_counter() - t0) / len(pairs), 3),
                      vocabulary=segmenter.vocab.describe(), settings=segmenter.settings.to_dict())
