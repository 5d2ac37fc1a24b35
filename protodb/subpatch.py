"""Sub-patch sampling: a ViT's patch grid sampled n times per axis, for objects narrower than a patch.

The image (already at its feature size, sides multiples of the patch p) is padded by replicating its
border and cut n x n times, shifted by :func:`offsets` (about p/n apart, centred); each shifted copy goes
through the extractor as usual and the passes' (h, w) patch grids are interleaved into one (n h, n w)
grid: cell (r, c) is the patch whose top-left corner is at (r p/n + o_0, c p/n + o_0) of the image, so
cells are centred at about ((r + 1/2) p/n, (c + 1/2) p/n). Used by the sliding windows of ``segment``
(``--subpatch N``); support images keep the plain grid (sampling them 2x2 too did not help on CamVid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def offsets(patch: int, n: int) -> list[int]:
    """The n shifts (pixels, per axis), spaced patch/n apart and centred; ``[0]`` for n = 1."""
    if n <= 1:
        return [0]
    return [math.floor((k + 0.5) * patch / n - patch / 2 + 0.5) for k in range(n)]


def shifts(patch: int, n: int) -> list[tuple[int, int]]:
    """(dy, dx) of the n x n passes, row shift major (the order :func:`interleave` expects)."""
    return [(dy, dx) for dy in offsets(patch, n) for dx in offsets(patch, n)]


def pad(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 2p, W + 2p), the border replicated: room for every shift."""
    return F.pad(images, (patch, patch, patch, patch), mode="replicate")


def crops(padded: torch.Tensor, top: int, left: int, height: int, width: int, patch: int, n: int) -> torch.Tensor:
    """The n x n shifted copies of the (height, width) window at (top, left) of the image that
    :func:`pad` made ``padded`` (B, C, H + 2p, W + 2p) from: (B * n * n, C, height, width), image major,
    then :func:`shifts` order."""
    B, C = padded.shape[:2]
    out = [padded[:, :, patch + top + dy:patch + top + dy + height, patch + left + dx:patch + left + dx + width]
           for dy, dx in shifts(patch, n)]
    return torch.stack(out, dim=1).reshape(B * n * n, C, height, width)


def interleave(passes: torch.Tensor, n: int) -> torch.Tensor:
    """(n * n, h, w, D) features of one image's passes -> (h n, w n, D): cell (r n + ky, c n + kx) is
    patch (r, c) of pass (ky, kx)."""
    if n <= 1:
        return passes[0]
    _, h, w, D = passes.shape
    return passes.reshape(n, n, h, w, D).permute(2, 0, 3, 1, 4).reshape(h * n, w * n, D)
