"""Sliding-window scoring, as in OVDiff (the windows themselves are planned and cut by
:mod:`protodb.features.windows`): the image is resized so its short side is ``short_side``, square
windows of each size slide over it with ``stride`` (the last one flush with the border), the whole image is
one more window; each window's patch scores are upsampled to its pixels and overlapping windows averaged.

Sub-patch sampling (``WindowSpec.subpatch = n``, for thin objects): every window is extracted n x n times,
shifted by multiples of patch/n (the resized image padded by replicating its border), and the passes'
patch features interleaved into one grid at stride patch/n. A pole a few pixels wide then has patches
centred on it instead of always sharing a 14-pixel patch with what surrounds it; with perfect patch scores,
the pole's attainable IoU on CamVid val rises from 3 (stride 14 at short side 448) to 33 (stride 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from protodb import subpatch
from protodb.errors import InvalidInput
from protodb.features.crops import resize_for, window_calls
from protodb.features.windows import Window, WindowSpec, plan_windows
from protodb.segment.match import MatchTable, score_patches


@dataclass
class PatchScores:
    """Patch-level scores of one window. ``scores``: (C', h, w) float32; ``best``: (C', h, w) int64 table
    row of the winning prototype; ``window`` in resized pixels; ``image_size`` (H, W) original and
    ``resized`` (H', W'); ``patch``: side of one grid cell in resized pixels (the extractor's patch over
    ``subpatch``, so not always an integer)."""

    window: Window
    scores: torch.Tensor
    best: torch.Tensor
    image_size: tuple[int, int]
    resized: tuple[int, int]
    patch: float

    def centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(h,), (w,) int64: original-image row / column of each patch centre."""
        (H, W), (H2, W2), p = self.image_size, self.resized, self.patch
        h, w = self.scores.shape[1:]
        ys = ((self.window.top + (torch.arange(h) + 0.5) * p) * H / H2).long().clamp_(0, H - 1)
        xs = ((self.window.left + (torch.arange(w) + 0.5) * p) * W / W2).long().clamp_(0, W - 1)
        return ys, xs

    def cell_of(self, y: int, x: int) -> tuple[int, int] | None:
        """(row, col) of the patch holding original pixel (y, x), or None when it is outside the window."""
        (H, W), (H2, W2), p = self.image_size, self.resized, self.patch
        y2, x2 = (y + 0.5) * H2 / H - self.window.top, (x + 0.5) * W2 / W - self.window.left
        if not (0 <= y2 < self.window.height and 0 <= x2 < self.window.width):
            return None
        return int(y2 // p), int(x2 // p)


@dataclass
class WindowFeatures:
    """The features of one image's windows for one extractor and one scale (what
    :func:`window_features` computes and :func:`window_grid_scores` scores). ``size`` (H, W) original,
    ``resized`` (H', W'), ``plan`` the windows in resized pixels, ``feats`` per window (n h, n w, D) at
    ``subpatch`` n."""

    size: tuple[int, int]
    resized: tuple[int, int]
    plan: list[Window]
    feats: list[torch.Tensor]
    subpatch: int


@torch.no_grad()
def window_features(image: torch.Tensor, extract: Callable[[torch.Tensor], torch.Tensor],
                    spec: WindowSpec | None = None) -> WindowFeatures:
    """The extractor's features of every window of ``image`` (3, H, W) float RGB in [0, 1] under ``spec``
    (resolved for the extractor: a tiled one's default windows are its tiles).

    Every window's crop goes through the extractor (windows of one size batched; an extractor with
    ``window_features`` gets all windows of the image at once, so a tiled one runs each shared tile once,
    also per shifted copy of the image with ``subpatch``: 4 x 15 tiles, not 2 x 2 x 30, at n = 2). With
    ``spec.subpatch = n`` each window's n x n shifted passes are interleaved into one (n h, n w) grid.
    An extractor stand-in with ``precomputed(spec)`` (:class:`Precomputed`) hands back features computed
    before."""
    spec = (spec or WindowSpec()).resolved(getattr(extract, "tile", None))  # the extractor's windows
    known = getattr(extract, "precomputed", None)
    if known is not None:
        return known(spec)
    p = int(getattr(extract, "patch_size"))
    n = max(1, int(spec.subpatch))
    device = getattr(extract, "device", None)
    shared = hasattr(extract, "window_features") and (n == 1 or getattr(extract, "tile", None) is not None)
    if shared:
        (H, W), (H2, W2), img = resize_for(image, p, spec, device)
        plan = plan_windows(H, W, spec, p)
        if n == 1:
            feats_of = list(extract.window_features(img[0], plan))
        else:  # sub-patch passes of a tiled extractor: each shifted copy of the image through all its windows
            padded = subpatch.pad(img, p)[0]  # at once, so the windows of one shift share their tiles
            per_shift = [extract.window_features(padded[:, p + dy:p + dy + H2, p + dx:p + dx + W2], plan)
                         for dy, dx in subpatch.shifts(p, n)]
            feats_of = [subpatch.interleave(torch.stack([s[i] for s in per_shift]), n) for i in range(len(plan))]
        calls = iter(())
    else:
        (H, W), (H2, W2), plan, calls = window_calls(image, p, spec, device)
        feats_of = [None] * len(plan)
    for idx, crops in calls:
        feats = extract(crops)
        wh, ww = int(crops.shape[2]), int(crops.shape[3])
        h, w = wh // p, ww // p
        if feats.shape[:3] != (len(idx) * n * n, h, w):
            raise InvalidInput(f"extractor returned features {tuple(feats.shape)} for crops "
                               f"{tuple(crops.shape)}; expected (B, h/{p}, w/{p}, D)")
        for j, i in enumerate(idx):  # (n*n, h, w, D) passes -> (h*n, w*n, D)
            feats_of[i] = subpatch.interleave(feats[j * n * n:(j + 1) * n * n], n)
    return WindowFeatures((H, W), (H2, W2), plan, feats_of, n)


class Precomputed:
    """Stands for an extractor in :func:`window_grid_scores` when its features of this image were computed
    before (two-stage matching computes them once for stage 1 and scores them in stage 2): ``by_spec`` maps
    each resolved :class:`WindowSpec` (one per scale) to its :class:`WindowFeatures`."""

    def __init__(self, extractor, by_spec: dict[WindowSpec, WindowFeatures]):
        self.patch_size = extractor.patch_size
        self.device = getattr(extractor, "device", None)
        self.tile = getattr(extractor, "tile", None)  # so the windows resolve as the extractor's did
        self._by_spec = by_spec

    def precomputed(self, spec: WindowSpec) -> WindowFeatures:
        if spec not in self._by_spec:
            raise RuntimeError(f"no features were computed for windows {spec}")
        return self._by_spec[spec]


@torch.no_grad()
def window_grid_scores(image: torch.Tensor, extract: Callable[[torch.Tensor], torch.Tensor], table: MatchTable,
                       spec: WindowSpec | None = None, *, keep_patches: bool = False):
    """Sliding-window scores of ``image`` on the resized image's PATCH GRID, for one extractor.

    The windows' features (:func:`window_features`) are scored in ONE pass over the prototypes
    (:func:`score_patches` on the stacked patches, so the prototype matrix is streamed once per image, not
    once per window), and each window's (C', h, w) scores are added at its cell offset. Windows always lie
    on the patch grid (sizes, stride and the resized image are multiples of the patch), so no pixel-level
    accumulation is needed. With ``spec.subpatch = n`` the grid is at stride patch/n.
    Returns ``(scores (C', n H'/p, n W'/p) float32 on the table's device, patches or None)``.
    """
    spec = (spec or WindowSpec()).resolved(getattr(extract, "tile", None))  # the extractor's windows
    p = int(getattr(extract, "patch_size"))
    wf = window_features(image, extract, spec)
    (H, W), (H2, W2), plan, feats_of, n = wf.size, wf.resized, wf.plan, wf.feats, wf.subpatch
    D = feats_of[0].shape[-1]
    flat = torch.cat([f.reshape(-1, D) for f in feats_of])
    sc_all, best_all = score_patches(flat[:, None, :], table)  # (C', N, 1)
    tdev = table.vectors.device
    gh, gw = H2 // p * n, W2 // p * n
    acc = torch.zeros(table.num_columns, gh, gw, device=tdev)
    count = torch.zeros(1, gh, gw, device=tdev)
    kept: list[PatchScores | None] = [None] * len(plan)
    offset = 0
    for i, win in enumerate(plan):
        h, w = win.height // p * n, win.width // p * n
        sc = sc_all[:, offset:offset + h * w, 0].reshape(-1, h, w)
        r0, c0 = win.top // p * n, win.left // p * n
        acc[:, r0:r0 + h, c0:c0 + w] += sc.to(tdev)
        count[:, r0:r0 + h, c0:c0 + w] += 1
        if keep_patches:
            best = best_all[:, offset:offset + h * w, 0].reshape(-1, h, w)
            kept[i] = PatchScores(win, sc.float().cpu(), best.cpu(), (H, W), (H2, W2), p / n)
        offset += h * w
    out = acc / count
    return (out, kept) if keep_patches else (out, None)


@torch.no_grad()
def window_scores(image: torch.Tensor, extract: Callable[[torch.Tensor], torch.Tensor], table: MatchTable,
                  spec: WindowSpec | None = None, *, keep_patches: bool = False):
    """Sliding-window score maps of ``image``: (3, H, W) float RGB in [0, 1] for one extractor.

    :func:`window_grid_scores` upsampled bilinearly to the original (H, W).
    Returns (C', H, W) float32 on the table's device, and with ``keep_patches`` also the list of
    :class:`PatchScores` (on CPU) in :func:`plan_windows` order. Memory: C' x H x W floats.
    """
    grid, kept = window_grid_scores(image, extract, table, spec, keep_patches=keep_patches)
    H, W = int(image.shape[1]), int(image.shape[2])
    out = F.interpolate(grid[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return (out, kept) if keep_patches else out
