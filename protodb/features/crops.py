"""Cutting an image into the extractor calls of its window plan (:mod:`protodb.features.windows`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protodb import subpatch
from protodb.errors import InvalidInput
from protodb.features.windows import WindowSpec, plan_windows, resized_size


@torch.no_grad()
def resize_for(image: torch.Tensor, patch: int, spec: WindowSpec, device=None):
    """``image`` (3, H, W) float RGB in [0, 1] resized as ``spec`` scores it: returns ``((H, W), (H', W'),
    (1, 3, H', W') float32 in [0, 1])``, on ``device`` when given."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise InvalidInput(f"image must be (3, H, W) RGB in [0, 1]; got {tuple(image.shape)}")
    H, W = int(image.shape[1]), int(image.shape[2])
    H2, W2 = resized_size(H, W, spec, int(patch))
    img = image.float()[None]
    if (H2, W2) != (H, W):
        img = F.interpolate(img, size=(H2, W2), mode="bilinear", align_corners=False, antialias=True)
        img = img.clamp_(0, 1)
    if device is not None:
        img = img.to(device)
    return (H, W), (H2, W2), img


@torch.no_grad()
def window_calls(image: torch.Tensor, patch: int, spec: WindowSpec, device=None):
    """The extractor calls :func:`window_grid_scores` makes for ``image``, in order: the image is resized
    (on ``device`` when it is already there), its windows planned and grouped by size, each group cut
    into calls of about ``spec.batch`` crops. Returns ``((H, W), (H', W'), plan, iterator of (window
    indices, crops (len(indices) * n * n, 3, h, w)))`` with n = ``spec.subpatch``: per window its n x n
    shifted crops (:func:`protodb.subpatch.crops`). Batched segmentation extracts these crops
    for several images at once."""
    p = int(patch)
    (H, W), (H2, W2), img = resize_for(image, p, spec, device)
    plan = plan_windows(H, W, spec, p)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, win in enumerate(plan):
        groups.setdefault((win.height, win.width), []).append(i)
    n = max(1, int(spec.subpatch))
    per_call = max(1, spec.batch // (n * n))
    padded = subpatch.pad(img, p) if n > 1 else None  # shifted copies reach up to a patch beyond a window

    def calls():  # lazily, so that only one batch of crops exists at a time
        for (wh, ww), members in groups.items():
            for b in range(0, len(members), per_call):
                idx = members[b:b + per_call]
                if padded is None:
                    yield idx, torch.cat([img[:, :, plan[i].top:plan[i].top + wh, plan[i].left:plan[i].left + ww]
                                          for i in idx])
                else:
                    yield idx, torch.cat([subpatch.crops(padded, plan[i].top, plan[i].left, wh, ww, p, n)
                                          for i in idx])

    return (H, W), (H2, W2), plan, calls()
