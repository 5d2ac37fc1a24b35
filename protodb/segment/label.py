"""Labelling one image: sliding-window scores per extractor, their ensemble, optional PAMR, argmax,
and for each label present the prototype that won it (explanations).

Label convention (as :class:`protodb.segment.match.MatchTable`): ``0..C-1`` are the classes in
vocabulary order, ``C`` is the background (only when the tables have a background column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.segment.match import MatchTable
from protodb.features.windows import WindowSpec
from protodb.segment.pamr import affinities
from protodb.segment.pamr import pamr as refine
from protodb.segment.windows import window_grid_scores

# Score maps (C', H, W) are kept whole up to this many floats (256 MB); above, labels come from a
# column-chunked argmax and SegmentResult.scores is None.
FULL_SCORES_MAX = 1 << 26


@dataclass
class SegmentResult:
    """Segmentation of one image.

    ``labels``: (H, W) int32 column index per pixel: 0..C-1 the classes of ``names``, C the background
    (only when ``background``). ``scores``: (C', H, W) float32 (CPU) ensembled (and refined) score maps, or
    None when C' x H x W exceeds ``FULL_SCORES_MAX`` (labels then come from a column-chunked argmax).
    ``best``: (H, W) float32 the winning score per pixel. ``winners``: column -> {"prototype_index": table
    row in extractor ``extractor``'s table, "prototype_id": its id or None, "score": cosine of that
    prototype with the patch, "extractor": index into the extractor list, "window": window index,
    "patch": (row, col) in that window's patch grid, "pixel": (y, x) of the patch centre in the image}
    for each column present in ``labels``. ``fractions``: column -> share of the image's pixels (present
    columns only, summing to 1). ``second`` / ``second_labels``: (H, W) the runner-up per pixel — the
    highest score of any other column and that column (None when only one column competes); on an
    exact tie the runner-up's score equals ``best``.
    """

    labels: np.ndarray
    scores: torch.Tensor | None
    names: list[str]
    background: bool
    best: torch.Tensor
    winners: dict[int, dict]
    fractions: dict[int, float]
    second: torch.Tensor | None = None
    second_labels: np.ndarray | None = None

    @property
    def column_names(self) -> list[str]:
        """Names of the C' label values; the background column is called ``"background"``."""
        return list(self.names) + (["background"] if self.background else [])


def segment_image(image: torch.Tensor, extractors: Sequence[tuple[Callable, MatchTable]], *,
                  windows=None, pamr: bool = False, pamr_iterations: int = 10,
                  runner_up: bool = True, bg_margin: float = 0.0) -> SegmentResult:
    """Segment ``image``: (3, H, W) float32 RGB in [0, 1] with one or more (extractor, table) pairs.

    For each extractor, sliding-window score maps (:func:`protodb.segment.windows.window_scores`) at the
    image's size; the ensemble is their mean; optionally refined by PAMR; the label is the argmax over
    columns. All tables must have the same columns (same names, same background flag). Explanations: for
    each column present, the patch (over all extractors and windows) whose centre pixel carries that label
    and whose score for the column is highest, with the prototype reaching that score. ``runner_up``: also
    the best other column per pixel (``second``, ``second_labels``; one more max over the score maps).
    ``bg_margin``: subtracted from the background column's scores (every extractor's, before the ensemble,
    PAMR and the argmax; ``scores`` and ``best`` carry it): in clutter the background column, the union of
    every class's background prototypes, outnumbers each class's own and wins by its count.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise InvalidInput(f"image must be (3, H, W) RGB in [0, 1]; got {tuple(image.shape)}")
    if not extractors:
        raise InvalidInput("no extractors given: segmenting needs at least one (extractor, table) pair")
    first = extractors[0][1]
    for _, table in extractors[1:]:
        if table.names != first.names or table.background != first.background:
            raise InvalidInput("all extractors' tables must list the same classes in the same order")
    spec = windows or WindowSpec()
    H, W = int(image.shape[1]), int(image.shape[2])
    grids, passes = [], []  # per extractor: one grid per scale; every scale's windows
    for extract, table in extractors:
        per_scale, patches = [], []
        for scale_spec in spec.at_scales():
            grid, kept = window_grid_scores(image, extract, table, scale_spec, keep_patches=True)
            grid = grid.float().to(first.vectors.device)
            if bg_margin and table.background:
                grid[-1] -= float(bg_margin)
            per_scale.append(grid)
            patches += kept
        grids.append(per_scale)
        passes.append(patches)
    cols = first.num_columns

    def upsampled(c0: int, c1: int) -> torch.Tensor:
        """Ensemble score maps of columns [c0, c1) at (H, W): the mean over extractors of each one's mean
        over scales of its upsampled grids."""
        total = None
        for per_scale in grids:
            ups = [F.interpolate(g[None, c0:c1], size=(H, W), mode="bilinear", align_corners=False)[0]
                   for g in per_scale]
            mean = sum(ups) / len(ups)
            total = mean if total is None else total + mean
        return total / len(grids)

    if cols * H * W <= FULL_SCORES_MAX:
        scores = upsampled(0, cols)
        if pamr:  # on the first table's device: 10 x 48 shifted multiply-adds of (C', H, W)
            scores = refine(image[None].float().to(scores.device), scores[None], iterations=pamr_iterations)[0]
        scores = scores.cpu()
        best, labels = scores.max(dim=0)
        second, second_idx = best_other(scores, labels) if runner_up else (None, None)
    else:  # many classes: argmax over column chunks, never holding (C', H, W)
        # With PAMR every column is refined, chunk by chunk, with affinities computed once: PAMR is linear
        # and per column given its affinities, so this equals refining (C', H, W) at once; a column that
        # wins nowhere before refinement can win after it, so none may be skipped.
        best = torch.full((H, W), float("-inf"), device=first.vectors.device)
        labels = torch.zeros((H, W), dtype=torch.int64, device=first.vectors.device)
        second = torch.full((H, W), float("-inf"), device=first.vectors.device)
        second_idx = torch.zeros((H, W), dtype=torch.int64, device=first.vectors.device)
        step = max(1, FULL_SCORES_MAX // (H * W))
        alpha = affinities(image[None].float().to(first.vectors.device)) if pamr else None  # (1, 48, H, W)
        for c0 in range(0, cols, step):
            c1 = min(cols, c0 + step)
            chunk = upsampled(c0, c1)
            if alpha is not None:
                chunk = refine(None, chunk[None], iterations=pamr_iterations, alpha=alpha)[0]
            v, a = chunk.max(dim=0)
            v2, a2 = best_other(chunk, a) if runner_up else (None, None)
            better = v > best
            # the runner-up after this chunk: the loser of (best so far, the chunk's best) against the
            # better of the two runners-up
            lose_v, lose_i = torch.where(better, best, v), torch.where(better, labels, a + c0)
            keep_v = torch.where(better, v2 if v2 is not None else torch.full_like(v, float("-inf")), second)
            keep_i = torch.where(better, (a2 + c0) if a2 is not None else labels, second_idx)
            take = lose_v >= keep_v
            second = torch.where(take, lose_v, keep_v)
            second_idx = torch.where(take, lose_i, keep_i)
            best = torch.where(better, v, best)
            labels = torch.where(better, a + c0, labels)
        scores = None
        best, labels = best.cpu(), labels.cpu()
        if cols > 1 and runner_up:
            second, second_idx = second.cpu(), second_idx.cpu()
        else:
            second = second_idx = None
    labels_np = labels.numpy().astype(np.int32)
    counts = np.bincount(labels_np.ravel(), minlength=cols)
    fractions = {int(c): float(n) / labels_np.size for c, n in enumerate(counts) if n}
    winners = _winners(labels, best, passes, [t for _, t in extractors], (H, W))
    return SegmentResult(labels=labels_np, scores=scores, names=list(first.names),
                         background=first.background, best=best, winners=winners, fractions=fractions,
                         second=second, second_labels=None if second_idx is None else second_idx.numpy().astype(np.int32))


def best_other(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(values, columns) of the best column other than ``labels`` per pixel of ``scores`` (C', H, W);
    (None, None) with a single column. On an exact tie the runner-up scores the same as the winner.

    One more max() over ``scores`` with the winners set aside: the winners' entries are set to -inf in
    place and put back afterwards (exactly: ``scores`` is unchanged on return), so no copy of the score
    maps is made (topk along the class axis is several times slower)."""
    if scores.shape[0] < 2:
        return None, None
    index = labels.to(scores.device)[None]
    kept = scores.gather(0, index)
    scores.scatter_(0, index, float("-inf"))
    try:
        return scores.max(dim=0)
    finally:
        scores.scatter_(0, index, kept)


def _winners(labels: torch.Tensor, best: torch.Tensor, passes: list, tables: list[MatchTable],
             size: tuple[int, int]) -> dict[int, dict]:
    """For each label present: the highest-scoring patch whose centre pixel has that label."""
    H, W = size
    present = torch.unique(labels).tolist()
    found: dict[int, dict] = {}
    for k, patches in enumerate(passes):
        for wi, p in enumerate(patches):
            cy, cx = p.centres()  # (h,), (w,) pixel coordinates in the image
            lab = labels[cy][:, cx]  # (h, w) label at each patch centre
            for c in present:
                mask = lab == c
                if not bool(mask.any()):
                    continue
                sc = torch.where(mask, p.scores[c], float("-inf"))
                flat = int(sc.argmax())
                r, q = divmod(flat, sc.shape[1])
                score = float(sc[r, q])
                if c not in found or score > found[c]["score"]:
                    row = int(p.best[c, r, q])
                    found[c] = {"prototype_index": row, "prototype_id": tables[k].ids[row] if row >= 0 else None,
                                "score": score, "extractor": k, "window": wi, "patch": (r, q),
                                "pixel": (int(cy[r]), int(cx[q]))}
    for c in present:  # regions too small to hold a patch centre: the patch under their best pixel
        if c in found:
            continue
        region = torch.where(labels == c, best, float("-inf"))
        y, x = divmod(int(region.argmax()), W)
        for k, patches in enumerate(passes):
            for wi, p in enumerate(patches):
                cell = p.cell_of(y, x)
                if cell is None:
                    continue
                r, q = cell
                score = float(p.scores[c, r, q])
                if c not in found or score > found[c]["score"]:
                    row = int(p.best[c, r, q])
                    found[c] = {"prototype_index": row, "prototype_id": tables[k].ids[row] if row >= 0 else None,
                                "score": score, "extractor": k, "window": wi, "patch": (r, q), "pixel": (y, x)}
    return found
