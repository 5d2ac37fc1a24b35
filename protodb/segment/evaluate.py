"""``protodb eval``: mIoU of a vocabulary on a labelled dataset (mmsegmentation conventions)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from protodb.errors import InvalidInput
from protodb.segment.datasets import iter_dataset, label_convention, load_label
from protodb.images import load_image
from protodb.segment.metrics import MIoU
from protodb.segment.run import SegmentOptions, Segmenter, settings


def evaluate(db, dataset: str, root: str | Path, opts: SegmentOptions, *, split: str = "val",
             limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Segment every image of the split and score it. Intersections and unions are summed over the
    whole split per class; mIoU is their mean over classes that occur (prediction or label)."""
    conv = label_convention(dataset)
    if opts.background is None:
        opts.background = bool(conv["background"])
    seg = Segmenter(db, opts)
    k = len(seg.vocab.names)
    if k != conv["num_classes"] - (1 if conv["background"] else 0):
        raise InvalidInput(
            f"vocabulary has {k} classes, dataset {dataset} scores "
            f"{conv['num_classes'] - (1 if conv['background'] else 0)}; use its vocabulary (--vocab {conv['vocabulary']})")
    from protodb.vocabularies import load_builtin

    expected = list(load_builtin(conv["vocabulary"])["classes"])
    if seg.vocab.names != expected:
        raise InvalidInput(f"vocabulary classes differ from {dataset}'s (names and order must match: "
                           f"{', '.join(expected[:5])}, ...); use --vocab {conv['vocabulary']}")
    if seg.vocab.background != bool(conv["background"]):
        raise InvalidInput(f"dataset {dataset} {'has' if conv['background'] else 'has no'} background class; "
                           f"{'drop' if seg.vocab.background else 'add'} --no-background")
    names = seg.vocab.names + (["background"] if seg.vocab.background else [])
    metric = MIoU(len(names), ignore_index=255, names=names)
    pairs = list(iter_dataset(dataset, root, split=split, limit=limit))
    if not pairs:
        raise InvalidInput(f"no images found for {dataset} split {split!r} under {root}")
    t0 = time.perf_counter()
    for i, (img_path, lab_path) in enumerate(pairs):
        image = load_image(img_path)
        gt = load_label(lab_path, conv)
        if gt.shape != (image.height, image.width):
            raise InvalidInput(f"label {lab_path} is {gt.shape[1]}x{gt.shape[0]}, image is {image.width}x{image.height}")
        pred = seg.segment(image)["labels"]
        metric.update(pred.astype(np.int64), gt)
        if progress:
            progress(i + 1, len(pairs))
    res = metric.result()
    elapsed = time.perf_counter() - t0
    return {"dataset": dataset, "split": split, "root": str(root), "images": len(pairs),
            "miou": res["miou"], "per_class": res["per_class"], "accuracy": res.get("accuracy"),
            "seconds_per_image": round(elapsed / len(pairs), 3),
            "vocabulary": seg.vocab.describe(), "settings": settings(seg)}
