"""Unsupervised foreground/background masks on a patch grid.

OVDiff splits every support image into foreground and background by combining two signals:

* an unsupervised segmenter that proposes a few regions from the patch features alone: MaskCut's
  repeated normalised cut (CutLER; :func:`ncut_segments`);
* the generator's cross-attention map for the class token, which says which region is the object
  (:func:`attention_fg_bg`).

Everything here works in PATCH-GRID coordinates ``(h, w)`` (the feature extractor's grid); pixel
masks are brought to that grid with :func:`downsample_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.linalg import eigh
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import ThreadpoolController

from protodb.errors import InvalidInput

# Below this many patches the generalised eigenproblem is solved densely (exact, a few ms);
# above it with Lanczos (ARPACK) on matrix-vector products, which keeps 4096 patches well under 0.5 s.
_DENSE_MAX_PATCHES = 512
# Lanczos basis size: 10 vectors converge in ~10-15 matrix products on patch graphs with structure
# (scipy's default of 20 always spends at least 20 products, ~1.5 ms each at 4096 patches).
_LANCZOS_NCV = 10
# Lanczos restarts allowed per cut (about 8 products each). Graphs that need more are nearly
# edgeless (hundreds of tiny components, eigenvalues piled up at 1): no meaningful cut, so the
# segmentation stops there instead of spending seconds.
_LANCZOS_MAX_RESTARTS = 15
# The eigen-solves run with single-threaded BLAS: on 2 busy cores, multi-threaded OpenBLAS spent up
# to 1 s spinning on a 256 x 256 eigh that takes 3 ms on one thread. (threadpoolctl comes with
# scikit-learn.) Only the one large product, the affinity matrix, uses all BLAS threads.
_THREADS = ThreadpoolController()


@dataclass
class MaskResult:
    """Foreground / background of one image on its patch grid.

    fg, bg: (h, w) bool, never overlapping. method: ``"ncut+attention"`` when the normalised-cut
    segments were used, ``"attention-threshold"`` for the fallback. params: every parameter that
    produced the masks (JSON-able), to be stored with them in the catalog.
    """

    fg: np.ndarray
    bg: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def _as_feature_grid(feats: torch.Tensor | np.ndarray) -> np.ndarray:
    """(h, w, D) any float dtype/device -> (h, w, D) float32 numpy, L2-normalised (idempotent).

    The graph work below stays in numpy: alternating torch (OpenMP) and numpy (OpenBLAS) kernels
    makes the two thread pools fight over the cores and was 3-5x slower on a 2-core machine.
    """
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to(device="cpu", dtype=torch.float32).numpy()
    arr = np.asarray(feats, dtype=np.float32)
    if arr.ndim != 3 or 0 in arr.shape:
        raise InvalidInput(
            f"patch features must have shape (h, w, D), got {arr.shape}; reshape the extractor output to the patch grid"
        )
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    return arr / np.maximum(norm, np.float32(1e-12))


# MaskCut's rules for the extra masks (rounds after the first): one overlapping the previous round's
# mask with IoU above MAX_IOU, or covering at most MIN_AREA of the grid, is dropped.
MAX_IOU = 0.5
MIN_AREA = 0.01
RULES = "maskcut"  # recorded with the masks: corner/seed orientation, seed component, taken patches zeroed


def _fiedler_vector(adj: np.ndarray, alive: np.ndarray, deg01: np.ndarray, eps: float,
                    link: float = 0.0) -> np.ndarray | None:
    """Second-smallest generalised eigenvector of (D - W) x = lambda D x over ALL N patches.

    adj: (N, N) float32 of 0/1, the thresholded affinity of the original features. alive: (N,) float32,
    1 for the patches not yet taken, 0 for taken ones, whose features count as zero: their 0/1 affinity
    to every patch (themselves included) is ``link`` = [0 > tau] (0 for tau >= 0), i.e.
    P = a a^T * adj + link (1 - a a^T). deg01: (N,) row sums of P. W = 1 where P is 1 and ``eps``
    elsewhere (MaskCut's eps keeps every degree positive), i.e. W = (1 - eps) P + eps. Solved through the
    symmetric form M = D^-1/2 W D^-1/2: its second-LARGEST eigenvector y gives x = D^-1/2 y (so
    x^T D x = 1, as the generalised solver's normalisation). Small graphs: dense LAPACK; large ones:
    Lanczos (ARPACK) on products with ``adj`` (no (N, N) copy per round).
    Returns x: (N,) float64 (sign arbitrary), or None when Lanczos does not converge within
    ``_LANCZOS_MAX_RESTARTS``.
    """
    n = adj.shape[0]
    inv_sqrt = 1.0 / np.sqrt(deg01.astype(np.float64) * (1.0 - eps) + eps * n)
    if n <= _DENSE_MAX_PATCHES:
        both = np.outer(alive, alive).astype(np.float64)
        p = adj.astype(np.float64) * both + link * (1.0 - both)
        w = p * (1.0 - eps) + eps
        m = (inv_sqrt[:, None] * w) * inv_sqrt[None, :]
        _, vecs = eigh(m, subset_by_index=[n - 2, n - 1])
        y = vecs[:, 0]
    else:
        s32 = inv_sqrt.astype(np.float32)
        a32 = alive.astype(np.float32)

        def matvec(v: np.ndarray) -> np.ndarray:
            u = s32 * np.asarray(v, dtype=np.float32).reshape(-1)
            pu = a32 * (adj @ (a32 * u))  # taken rows and columns of P are 0 ...
            if link:
                pu += link * (u.sum() - a32 * float(a32 @ u))  # ... or 1 (tau < 0) off the alive block
            wu = pu * (1.0 - eps) + eps * u.sum()
            return (s32 * wu).astype(np.float64)

        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(n)  # fixed start: deterministic results
        try:
            vals, vecs = eigsh(op, k=2, which="LA", v0=v0, ncv=_LANCZOS_NCV, tol=1e-6, maxiter=_LANCZOS_MAX_RESTARTS)
        except ArpackNoConvergence:
            return None
        y = vecs[:, int(np.argmin(vals))]
    return inv_sqrt * y


def maskcut_partition(x: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """MaskCut's object mask from one bipartition eigenvector, in this order:

    1. fg = the patches with x > mean(x) (mean over all N patches);
    2. corner rule: if fg holds >= 3 of the grid's 4 corner patches, reverse (fg = x <= mean);
    3. otherwise seed rule: if the seed s = argmax |x| is not in fg, reverse;
    4. the component seed is the patch furthest into the chosen side: argmax x when not reversed,
       argmin x when reversed (the same patch as s except after a corner reversal);
    5. the mask is the 4-connected component of fg containing that seed.

    x: (N,) float, N = h * w in row-major grid order. Returns ((h, w) bool mask, never empty;
    ``"corners"``, ``"seed"`` or None: why the partition was reversed).
    """
    h, w = grid
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    fg = x > x.mean()
    corners = fg[[0, w - 1, (h - 1) * w, h * w - 1]]  # 4 lookups, as MaskCut (they coincide on 1-wide grids)
    reverse = "corners" if int(corners.sum()) >= 3 else ("seed" if not fg[int(np.argmax(np.abs(x)))] else None)
    if reverse:
        fg, seed = ~fg, int(np.argmin(x))
    else:
        seed = int(np.argmax(x))
    labels, _ = ndimage.label(fg.reshape(h, w))  # default structure: 4-connectivity
    return labels == labels.reshape(-1)[seed], reverse


def _orient(x: np.ndarray) -> np.ndarray:
    """The eigenvector with the sign that makes its largest-magnitude entry positive (the first such
    entry on ties).

    An eigenvector's sign is arbitrary (LAPACK and ARPACK may return either), and MaskCut's outcome
    depends on it when the seed lies on a side holding >= 3 corners: with x[seed] > 0 that side is
    x > mean, the corner rule fires and the other side is taken; with x[seed] < 0 the side x > mean is
    the other one, the corner rule cannot fire and the seed rule reverses to the seed's side. Fixing
    x[seed] > 0 makes the result the same on every solver and keeps the corner rule effective (the seed
    rule then never fires: the seed, the maximum, is above the mean)."""
    return -x if x[int(np.argmax(np.abs(x)))] < 0 else x


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def parse_tau(value: float | str | None) -> float | str:
    """MaskCut's affinity threshold: a cosine in [-1, 1] (MaskCut's fixed 0.2 by default) or ``"pQ"``, the
    Q-th percentile (0 < Q < 100) of the image's own pairwise patch cosines (:func:`resolve_tau`).

    A fixed 0.2 was chosen for DINO ViT-B/8 keys; on DINOv2 ViT-S/14 tokens 80-100% of patch pairs are
    above it, so the graph is nearly complete and the cut says little. A percentile keeps the graph's
    density the same on every extractor and photo."""
    if value is None:
        return 0.2
    if isinstance(value, str) and value.strip().lower().startswith("p"):
        try:
            q = float(value.strip()[1:])
        except ValueError:
            q = float("nan")
        if not 0 < q < 100:
            raise InvalidInput(f"--mask-tau takes a cosine in [-1, 1] or pQ with 0 < Q < 100 (e.g. p80); got {value!r}")
        return f"p{q:g}"
    try:
        tau = float(value)
    except (TypeError, ValueError):
        tau = float("nan")
    if not -1.0 <= tau <= 1.0:
        raise InvalidInput(f"--mask-tau takes a cosine in [-1, 1] or pQ with 0 < Q < 100 (e.g. p80); got {value!r}")
    return tau


def resolve_tau(flat: np.ndarray, tau: float | str) -> float:
    """The threshold :func:`ncut_segments` uses on ``flat`` (N, D) unit features: ``tau`` itself, or for
    ``"pQ"`` the Q-th percentile of the N (N - 1) / 2 cosines between distinct patches (linear
    interpolation, numpy's default)."""
    tau = parse_tau(tau)
    if isinstance(tau, float):
        return tau
    n = flat.shape[0]
    if n < 2:
        return 0.2
    sims = (flat @ flat.T)[np.triu_indices(n, k=1)]
    return float(np.percentile(sims, float(tau[1:])))


def ncut_segments(
    feats: torch.Tensor | np.ndarray, n_segments: int = 3, tau: float | str = 0.2, eps: float = 1e-5,
    *, max_iou: float = MAX_IOU, min_area: float = MIN_AREA,
) -> list[np.ndarray]:
    """Up to ``n_segments`` regions of an image by repeated normalised cut, with MaskCut's rules (CutLER).

    feats: (h, w, D) float, L2-normalised patch features (re-normalised here, which is harmless).
    Each round r = 0, 1, ...:

    * the features of the patches already taken are set to zero (they stay in the graph);
      W = [F F^T > tau] (binary, ``eps`` where False) over all h * w patches, so a taken patch has
      affinity ``eps`` to everything;
    * solve (D - W) x = lambda D x for the second-smallest eigenvector x;
    * pseudo-mask = :func:`maskcut_partition` of x signed so that the seed argmax |x| is positive
      (:func:`_orient`): split at the mean, corner rule, seed rule, the seed's 4-connected component.
      So the object is the seed's side of the cut, unless that side holds >= 3 of the 4 corner
      patches, then the other side;
    * rounds r >= 1: the pseudo-mask is dropped (made empty) when its IoU with the previous round's
      pseudo-mask exceeds ``max_iou`` or it covers at most ``min_area`` of the grid. As in MaskCut,
      "previous" is the previous round's pseudo-mask after this rule, so empty after a drop; and a drop
      takes nothing, so the next round sees the same graph and gets the same pseudo-mask, compared with
      that empty mask;
    * the patches of the kept pseudo-mask are taken; the segment of the round is the pseudo-mask minus
      the patches taken before it (so segments are disjoint); empty segments are not returned.

    The loop ends early, with the same result, after a drop for the area rule (every later round would
    repeat that cut and drop it). Protodb's own stops (MaskCut has none; the cut would be arbitrary):
    every patch is taken; the 0/1 graph is complete (every pair connected, e.g. uniform features) or has
    no edge but self-loops; (large grids) the eigensolver does not converge, which happens on nearly
    edgeless graphs.

    ``tau`` may be ``"pQ"``: the Q-th percentile of this image's patch cosines (:func:`resolve_tau`).

    Returns: list of (h, w) bool arrays, disjoint, non-empty, in the order found (possibly fewer
    than ``n_segments``, possibly none).
    """
    if n_segments < 1:
        raise InvalidInput(f"n_segments must be >= 1, got {n_segments}")
    grid = _as_feature_grid(feats)
    h, w, d = grid.shape
    flat = grid.reshape(h * w, d)
    tau = resolve_tau(flat, tau)
    adj = flat @ flat.T  # (N, N) float32 cosine similarities, turned in place into 0/1 affinity
    np.greater(adj, np.float32(tau), out=adj, casting="unsafe")

    with _THREADS.limit(limits=1, user_api="blas"):
        return _repeated_cuts(adj, (h, w), n_segments, eps, link=1.0 if 0.0 > tau else 0.0,
                              max_iou=max_iou, min_area=min_area)


def _repeated_cuts(adj: np.ndarray, grid: tuple[int, int], n_segments: int, eps: float, *,
                   link: float = 0.0, max_iou: float = MAX_IOU, min_area: float = MIN_AREA,
                   trace: list | None = None) -> list[np.ndarray]:
    """The cut loop of :func:`ncut_segments` on the (N, N) 0/1 float32 affinity ``adj`` of an (h, w) grid's
    original features. ``link``: the 0/1 affinity of a zeroed (taken) patch, [0 > tau].

    ``trace``: when a list, one dict per round is appended: ``"mask"`` (h, w) bool pseudo-mask before the
    drop rule, ``"reversed"`` (see :func:`maskcut_partition`), ``"dropped"`` (None, ``"overlap"`` or
    ``"area"``), ``"segment"`` (h, w) bool, the round's output (possibly empty).
    """
    h, w = grid
    n = h * w
    diag = np.diagonal(adj).astype(np.float64)
    taken = np.zeros(n, dtype=bool)
    previous = np.zeros((h, w), dtype=bool)
    repeat = None  # the last pseudo-mask when nothing was taken since it (same graph, same cut)
    segments: list[np.ndarray] = []
    for r in range(n_segments):
        if taken.all():
            break
        if repeat is not None:
            mask, reverse = repeat
        else:
            alive = (~taken).astype(np.float32)
            n_alive = float(alive.sum())
            deg01 = alive * (adj @ alive) + link * (n - alive * n_alive)  # float32 counts, exact below 2**24
            n_edges = float(deg01.sum(dtype=np.float64))
            self_loops = float(diag @ alive) + link * (n - n_alive)
            if n_edges >= float(n) * n or n_edges <= self_loops:
                break  # complete graph, or no edge but self-loops: nothing to cut
            x = _fiedler_vector(adj, alive, deg01, eps, link)
            if x is None:
                break
            x = _orient(x)
            mask, reverse = maskcut_partition(x, grid)
        dropped = None
        if r >= 1:
            if _iou(mask, previous) > max_iou:
                dropped = "overlap"
            elif int(np.count_nonzero(mask)) / h / w <= min_area:
                dropped = "area"
        kept = np.zeros_like(mask) if dropped else mask
        segment = kept & ~taken.reshape(h, w)
        if trace is not None:
            trace.append({"mask": mask, "reversed": reverse, "dropped": dropped, "segment": segment})
        if segment.any():
            segments.append(segment)
        if dropped == "area":
            break  # the graph is unchanged: every later round repeats this cut and drops it again
        repeat = (mask, reverse) if dropped else None
        taken |= kept.reshape(-1)
        previous = kept
    return segments


def resize_area(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) float -> (h, w) float32, each cell the mean over its pixel bin.

    Bins are those of adaptive average pooling: rows floor(i*H/h) .. ceil((i+1)*H/h) (end-exclusive),
    so non-divisible sizes and upsampling both work. Uses an integral image (float64).
    """
    img = np.asarray(image, dtype=np.float64)
    big_h, big_w = img.shape
    h, w = grid
    integral = np.zeros((big_h + 1, big_w + 1), dtype=np.float64)
    integral[1:, 1:] = img.cumsum(axis=0).cumsum(axis=1)
    y0 = (np.arange(h) * big_h) // h
    y1 = -((-(np.arange(h) + 1) * big_h) // h)
    x0 = (np.arange(w) * big_w) // w
    x1 = -((-(np.arange(w) + 1) * big_w) // w)
    sums = (
        integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (sums / area).astype(np.float32)


def attention_fg_bg(
    feats: torch.Tensor | np.ndarray,
    attention: np.ndarray,
    *,
    n_segments: int = 3,
    tau: float | str = 0.2,
    fg_threshold: float = 0.5,
    bg_threshold: float = 0.2,
    erode: int = 1,
    eps: float = 1e-5,
    segments: list[np.ndarray] | None = None,
) -> MaskResult:
    """Foreground and background of one support image (OVDiff's combination of ncut and attention).

    (One function on purpose: the candidate weighting, the fallback and the erosion read the same
    arrays in order, and splitting them would pass half a dozen intermediate grids around.)

    ``segments``: (h, w) bool proposals from another unsupervised segmenter (a plugin such as
    CutLER); by default the normalised-cut segments of ``feats``.

    feats: (h, w, D) float, L2-normalised patch features. attention: (H, W) float in [0, 1], the
    class token's cross-attention map (any resolution; area-averaged to the (h, w) grid).

    Candidates are the :func:`ncut_segments` plus the rest of the image (complement of their
    union) when non-empty; each is weighted by its mean attention. Foreground = the highest-weighted
    candidate (ties: the first found); background = the lowest-weighted candidate (ties: the
    largest) restricted to patches with attention < ``bg_threshold``, then eroded ``erode`` times
    (the image border counts as background, so only boundaries with other regions shrink).

    Fallback (method ``"attention-threshold"``) when ncut finds no segment, there is a single
    candidate, or fg/bg would come out empty: fg = attention > fg_threshold,
    bg = attention < bg_threshold (not eroded).

    Returns MaskResult with fg, bg: (h, w) bool, disjoint.
    """
    grid = _as_feature_grid(feats)
    h, w = int(grid.shape[0]), int(grid.shape[1])
    att = np.asarray(attention, dtype=np.float32)
    if att.ndim != 2 or att.size == 0:
        raise InvalidInput(f"attention must be a 2-D (H, W) map, got shape {att.shape}; pass one map per image")
    if not np.isfinite(att).all() or att.min() < -1e-6 or att.max() > 1 + 1e-6:
        raise InvalidInput("attention must hold finite values in [0, 1]; min-max normalise the map first")
    if not 0.0 <= bg_threshold <= fg_threshold <= 1.0:
        raise InvalidInput(f"need 0 <= bg_threshold <= fg_threshold <= 1, got bg={bg_threshold}, fg={fg_threshold}")
    if erode < 0:
        raise InvalidInput(f"erode must be >= 0 patches, got {erode}")

    att_grid = resize_area(att, (h, w))
    params: dict[str, Any] = {
        "n_segments": int(n_segments),
        "tau": parse_tau(tau),
        "eps": float(eps),
        "fg_threshold": float(fg_threshold),
        "bg_threshold": float(bg_threshold),
        "erode": int(erode),
        "grid": [h, w],
        "ncut_rules": RULES,  # corner/seed orientation, seed component, taken patches zeroed
        "ncut_max_iou": float(MAX_IOU),
        "ncut_min_area": float(MIN_AREA),
    }

    if segments is None:
        segments = ncut_segments(grid, n_segments=n_segments, tau=tau, eps=eps)
    else:
        segments = [np.asarray(m, bool) for m in segments if np.asarray(m, bool).any()]
    candidates = list(segments)
    if segments:
        rest = ~np.logical_or.reduce(segments)
        if rest.any():
            candidates.append(rest)
    params["n_ncut_segments"] = len(segments)

    if len(candidates) >= 2:
        weights = [float(att_grid[c].mean()) for c in candidates]
        # ties: fg -> the first found (ncut segments before the rest); bg -> the largest region
        i_fg = max(range(len(candidates)), key=lambda i: (weights[i], -i))
        i_bg = min(range(len(candidates)), key=lambda i: (weights[i], -int(candidates[i].sum()), i))
        fg = candidates[i_fg].copy()
        bg = candidates[i_bg] & (att_grid < bg_threshold) if i_bg != i_fg else np.zeros_like(fg)
        if erode > 0 and bg.any():
            bg = ndimage.binary_erosion(bg, iterations=erode, border_value=1)
        bg &= ~fg
        if fg.any() and bg.any():
            return MaskResult(fg=fg, bg=bg, method="ncut+attention", params=params)

    fg = att_grid > fg_threshold
    bg = (att_grid < bg_threshold) & ~fg
    return MaskResult(fg=fg, bg=bg, method="attention-threshold", params=params)


def masks_from_labels(label_map: np.ndarray, value: int | None) -> np.ndarray:
    """Binary mask from a label image (exemplar support sets).

    label_map: (H, W) int (or bool). value None -> label_map != 0; otherwise label_map == value.
    Returns (H, W) bool.
    """
    lm = np.asarray(label_map)
    if lm.ndim != 2:
        raise InvalidInput(f"label map must be 2-D (H, W), got shape {lm.shape}; load masks as single-channel images")
    if value is None:
        return lm != 0
    return lm == value


def downsample_mask(mask: np.ndarray, grid: tuple[int, int], min_fraction: float = 0.5) -> np.ndarray:
    """Pixel mask -> patch-grid mask.

    mask: (H, W) bool; grid: (h, w). A patch is in the mask when at least ``min_fraction`` of the
    pixels it covers are (area average; non-divisible sizes use adaptive pooling bins).
    Returns (h, w) bool.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InvalidInput(f"mask must be 2-D (H, W), got shape {m.shape}")
    if not 0.0 < min_fraction <= 1.0:
        raise InvalidInput(f"min_fraction must be in (0, 1], got {min_fraction}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise InvalidInput(f"grid must be positive (h, w), got {grid}")
    frac = resize_area(m.astype(np.float32), (h, w))
    return frac >= np.float32(min_fraction) - 1e-6
