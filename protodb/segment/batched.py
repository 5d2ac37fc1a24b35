"""Batched segmentation for accelerators: several images' windows go through each extractor together.

One image gives a handful of window crops (two sizes plus the whole image), too few to keep a GPU busy.
:meth:`protodb.segment.segmenter.VocabularySegmenter.segment_many` moves the images to the device through
pinned memory (:func:`to_device`, non-blocking copies), cuts every image's crops exactly as
:func:`protodb.features.crops.window_calls` does, runs each extractor once per crop shape over all images
(:func:`batched_features`, in chunks of ``max_crops``), then scores each image against its own match table
(the pre-filter may keep other classes per image) with the unchanged single-image code, which is handed the
features already computed (:class:`Replay`). Labels are those of ``segment`` up to the floating-point
effect of another batch size.

The CPU path never comes here (``protodb segment`` without ``--ray``, and workers on CPU, segment one
image at a time as before).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import PIL.Image
import torch

from protodb.features.crops import window_calls
from protodb.images import to_tensor

#: Crops per extractor call when batching across images.
MAX_CROPS = 64


class Replay:
    """Stands for an extractor inside :func:`window_grid_scores`: returns, call by call, the features
    computed beforehand for this image's crops."""

    def __init__(self, extractor, feats: list[torch.Tensor]):
        self.patch_size = extractor.patch_size
        self.device = getattr(extractor, "device", None)
        self.tile = getattr(extractor, "tile", None)  # so the windows resolve as the extractor's did
        self._feats = deque(feats)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        feats = self._feats.popleft()
        if feats.shape[0] != crops.shape[0]:
            raise RuntimeError(f"batched features for {feats.shape[0]} crops handed to a call with {crops.shape[0]}")
        return feats


def to_device(image: PIL.Image.Image, device: torch.device) -> torch.Tensor:
    """(3, H, W) float in [0, 1] on ``device``; on CUDA through pinned memory, without blocking."""
    t = to_tensor(image)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def batched_features(extractor, tensors: Sequence[torch.Tensor], spec, max_crops: int = MAX_CROPS
                     ) -> list[list[torch.Tensor]]:
    """For each image, the features of each of its window calls, in call order; crops of one shape are
    extracted together across images."""
    calls: list[list[torch.Tensor]] = []  # per image: crops per call
    spec = spec.resolved(getattr(extractor, "tile", None))  # as window_grid_scores resolves it
    for t in tensors:
        _sizes, _resized, _plan, it = window_calls(t, extractor.patch_size, spec, getattr(extractor, "device", None))
        calls.append([crops for _idx, crops in it])
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for k, image_calls in enumerate(calls):
        for j, crops in enumerate(image_calls):
            by_shape.setdefault(tuple(crops.shape[1:]), []).append((k, j))
    out: list[list[Any]] = [[None] * len(c) for c in calls]
    for members in by_shape.values():
        stacked = torch.cat([calls[k][j] for k, j in members])
        sizes = [int(calls[k][j].shape[0]) for k, j in members]
        feats = torch.cat([extractor(stacked[i:i + max_crops]) for i in range(0, stacked.shape[0], max_crops)])
        offset = 0
        for (k, j), n in zip(members, sizes):
            out[k][j] = feats[offset:offset + n]
            offset += n
    return out
