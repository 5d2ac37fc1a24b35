"""Mean intersection-over-union, mmsegmentation convention: per-class intersections and unions are summed
over the whole split (not averaged per image); pixels whose ground truth is ``ignore_index`` are not
counted; classes whose summed union is 0 (absent from both ground truth and predictions) get IoU None and
are left out of the mean (mmsegmentation's nanmean)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from protodb.errors import InvalidInput


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(np.int64, copy=False)


class MIoU:
    """Accumulates a confusion matrix. Labels are 0..num_classes-1 (the background, when the dataset has
    one, is just one of them: see :mod:`protodb.segment.datasets`); ``names`` (optional, num_classes long)
    key ``per_class`` by name instead of index."""

    def __init__(self, num_classes: int, ignore_index: int = 255, names: Sequence[str] | None = None):
        if num_classes <= 0:
            raise InvalidInput(f"num_classes must be positive; got {num_classes}")
        if names is not None and len(names) != num_classes:
            raise InvalidInput(f"{len(names)} names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.names = list(names) if names is not None else None
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [gt, pred]
        self.images = 0

    def update(self, pred, gt) -> None:
        """Add one image. ``pred``, ``gt``: (H, W) integer arrays or tensors of the same shape; ``gt`` holds
        0..num_classes-1 or ``ignore_index``; ``pred`` 0..num_classes-1 wherever ``gt`` is not ignored."""
        pred, gt = _array(pred), _array(gt)
        if pred.shape != gt.shape:
            raise InvalidInput(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        keep = gt != self.ignore_index
        p, g = pred[keep], gt[keep]
        k = self.num_classes
        if g.size and (g.min() < 0 or g.max() >= k):
            raise InvalidInput(f"ground truth has label {int(g.min() if g.min() < 0 else g.max())} outside "
                               f"0..{k - 1} (ignore {self.ignore_index}): check the label convention")
        if p.size and (p.min() < 0 or p.max() >= k):
            raise InvalidInput(f"prediction has label {int(p.min() if p.min() < 0 else p.max())} outside 0..{k - 1}")
        self.confusion += np.bincount(g * k + p, minlength=k * k).reshape(k, k)
        self.images += 1

    def result(self) -> dict:
        """{"miou": mean IoU over classes with union > 0 (None if none), "per_class": {name or index: IoU or
        None}, "intersection": per-class list, "union": per-class list, "accuracy": pixel accuracy or None,
        "images": count}."""
        inter = np.diag(self.confusion)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        keys = self.names or list(range(self.num_classes))
        per_class = {key: (float(i / u) if u else None) for key, i, u in zip(keys, inter, union)}
        valid = [v for v in per_class.values() if v is not None]
        total = int(self.confusion.sum())
        return {
            "miou": float(np.mean(valid)) if valid else None,
            "per_class": per_class,
            "intersection": inter.tolist(),
            "union": union.tolist(),
            "accuracy": float(inter.sum() / total) if total else None,
            "images": self.images,
        }
