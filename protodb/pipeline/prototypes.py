"""Class-, instance- and part-level prototypes from masked patch features (OVDiff).

For one class, the support images' patch features under the foreground masks are summarised at
three levels, and the same three for the background masks:

* class: the mean of every masked patch of every image (1 prototype);
* instance: the mean of each image's masked patches (1 per image that has any);
* part: k-means centroids of all masked patches together (K = 32 in the paper).

All vectors are L2-normalised, so matching a pixel to a prototype is a cosine similarity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import ThreadpoolController

from protodb.errors import InvalidInput

KINDS = ("class", "instance", "part", "bg_class", "bg_instance", "bg_part")

# k-means is fitted on at most this many patches (a seeded random subset), then every patch is
# assigned to its nearest centroid. 64 images x 1024 patches would otherwise cost ~10 s on 2 cores.
MAX_FIT_PATCHES = 16_384
KMEANS_MAX_ITER = 100
# Single-threaded BLAS for the whole build: on 2 busy cores multi-threaded OpenBLAS spun for 0.8 s
# on a 256-patch k-means that takes 0.04 s on one thread, and was 1.5x slower at 65k patches too.
# (scikit-learn's Lloyd iterations still use their OpenMP threads.)
_THREADS = ThreadpoolController()


@dataclass(frozen=True, eq=False)
class Prototype:
    """One prototype vector and where it came from.

    kind: one of ``KINDS``. vector: (D,) float32, L2-normalised.
    image_index: source support image (instance: that image; part: the image of the member patch
    nearest the centroid; class: None).
    region: (y0, x0, y1, x1) in PATCH-GRID coordinates of that image, end-exclusive (instance:
    bounding box of the image's masked patches; part: the nearest member patch (y, x, y+1, x+1);
    class: None).
    weight: number of patches it summarises.
    """

    kind: str
    vector: np.ndarray
    image_index: int | None
    region: tuple[int, int, int, int] | None
    weight: float


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (zero vectors stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.maximum(norm, np.float32(1e-12))


def _to_numpy(feats: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(feats, dtype=np.float32)


def _gather(
    feats: list[np.ndarray], masks: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masked patches of all images, image after image.

    Returns x: (n, D) float32 unit rows; image: (n,) int image index; yx: (n, 2) int grid
    position; offsets: (n_images + 1,) int, image i's rows are x[offsets[i]:offsets[i + 1]].
    """
    counts = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    d = feats[0].shape[-1]
    x = np.empty((int(offsets[-1]), d), dtype=np.float32)
    yx = np.empty((int(offsets[-1]), 2), dtype=np.int64)
    for i, (f, m) in enumerate(zip(feats, masks)):
        if counts[i]:
            x[offsets[i] : offsets[i + 1]] = f[m]
            yx[offsets[i] : offsets[i + 1]] = np.argwhere(m)
    x = _unit(x)
    image = np.repeat(np.arange(len(masks), dtype=np.int64), counts)
    return x, image, yx, offsets


def _kmeans(x: np.ndarray, k: int, seed: int, max_fit: int) -> tuple[np.ndarray, np.ndarray]:
    """K-means on unit vectors; returns (centroids (k', D) unit float32, labels (n,) int).

    Euclidean k-means (scikit-learn, k-means++ init, n_init=1) fitted on unit-norm inputs, at most
    ``max_fit`` of them (seeded subset); centroids are then L2-normalised and every patch is
    assigned to the most cosine-similar one. This is spherical k-means up to the centroid norms
    during the iterations (on the sphere, Euclidean distance is monotone in cosine).
    """
    n = x.shape[0]
    n_clusters = min(k, n)
    fit = x
    if n > max_fit:
        rng = np.random.default_rng(seed)
        fit = x[np.sort(rng.choice(n, size=max_fit, replace=False))]
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=1, max_iter=KMEANS_MAX_ITER)
    # float64 on purpose: scikit-learn's k-means++ up-casts float32 distances chunk by chunk,
    # which made the init ~10x slower than the whole fit in float64.
    km.fit(fit.astype(np.float64))
    centroids = _unit(km.cluster_centers_)
    labels = np.argmax(x @ centroids.T, axis=1)
    return centroids, labels


def _level(
    feats: list[np.ndarray],
    masks: list[np.ndarray],
    prefix: str,
    k: int,
    seed: int,
    max_fit: int,
) -> list[Prototype]:
    """class, instance... and part... prototypes of one mask family (prefix "" or "bg_")."""
    x, img, yx, offsets = _gather(feats, masks)
    if x.shape[0] == 0:
        return []
    out = [Prototype(prefix + "class", _unit(x.mean(axis=0)), None, None, float(x.shape[0]))]

    for i in range(len(masks)):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if hi == lo:
            continue
        pos = yx[lo:hi]  # (n_i, 2) grid positions of image i's masked patches
        region = (int(pos[:, 0].min()), int(pos[:, 1].min()), int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1)
        out.append(Prototype(prefix + "instance", _unit(x[lo:hi].mean(axis=0)), i, region, float(hi - lo)))

    centroids, labels = _kmeans(x, k, seed, max_fit)
    for c, vec in enumerate(centroids):
        members = np.flatnonzero(labels == c)
        if members.size == 0:  # duplicate centroids (fewer distinct patches than clusters)
            continue
        best = members[int(np.argmax(x[members] @ vec))]
        y, xx = (int(v) for v in yx[best])
        out.append(Prototype(prefix + "part", vec, int(img[best]), (y, xx, y + 1, xx + 1), float(members.size)))
    return out


def build_prototypes(
    feats: Sequence[torch.Tensor | np.ndarray],
    fg: Sequence[np.ndarray],
    bg: Sequence[np.ndarray] | None,
    *,
    k: int = 32,
    seed: int = 0,
    background: bool = True,
    max_fit_patches: int = MAX_FIT_PATCHES,
) -> list[Prototype]:
    """All prototypes of one class from its support images.

    feats[i]: (h_i, w_i, D) float patch features of support image i, L2-normalised (re-normalised
    here); grids may differ between images, D may not. fg[i], bg[i]: (h_i, w_i) bool masks.
    k: part clusters per mask family (fewer when there are fewer masked patches). seed: k-means
    seed (and of the fitting subset when there are more than ``max_fit_patches`` patches).
    background: also build bg_class / bg_instance / bg_part from ``bg`` (may be None when False).

    Returns prototypes ordered class, instance..., part..., bg_class, bg_instance..., bg_part...;
    a family with no masked patch contributes nothing, an image with no masked patch no instance.
    Part clusters that end up with no member patch (duplicate patches) are dropped.
    """
    if len(feats) == 0:
        raise InvalidInput("no support images: pass at least one feature map")
    if k < 1:
        raise InvalidInput(f"k must be >= 1 part prototypes, got {k}")
    if max_fit_patches < 1:
        raise InvalidInput(f"max_fit_patches must be >= 1, got {max_fit_patches}")
    if len(fg) != len(feats) or (background and (bg is None or len(bg) != len(feats))):
        raise InvalidInput("feats, fg and bg must hold one entry per support image; pass lists of equal length")

    arrays = [_to_numpy(f) for f in feats]
    dims = {a.shape[-1] if a.ndim == 3 else None for a in arrays}
    if None in dims or len(dims) != 1:
        shapes = [a.shape for a in arrays]
        raise InvalidInput(f"every feature map must be (h, w, D) with the same D, got shapes {shapes}")

    def masks_of(family: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
        out = []
        for i, (a, m) in enumerate(zip(arrays, family)):
            m = np.asarray(m, dtype=bool)
            if m.shape != a.shape[:2]:
                raise InvalidInput(
                    f"{name}[{i}] has shape {m.shape} but image {i}'s patch grid is {a.shape[:2]}; "
                    "downsample the mask to the grid (protodb.pipeline.masks.downsample_mask)"
                )
            out.append(m)
        return out

    fg_masks = masks_of(fg, "fg")
    bg_masks = masks_of(bg, "bg") if background else None
    with _THREADS.limit(limits=1, user_api="blas"):
        protos = _level(arrays, fg_masks, "", k, seed, max_fit_patches)
        if bg_masks is not None:
            protos += _level(arrays, bg_masks, "bg_", k, seed, max_fit_patches)
    return protos


def count_kinds(protos: Sequence[Prototype]) -> dict[str, int]:
    """Number of prototypes per kind; all six kinds present (0 when absent)."""
    counts = Counter(p.kind for p in protos)
    return {kind: int(counts.get(kind, 0)) for kind in KINDS}
