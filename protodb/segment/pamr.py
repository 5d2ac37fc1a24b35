"""Pixel-Adaptive Mask Refinement (PAMR; Araslanov & Roth, CVPR 2020), written from the paper's description.

Each pixel i looks at the pixels j of 3x3 neighbourhoods at several dilations d (8 neighbours per
dilation, the centre excluded; borders replicated). Its affinity to a neighbour is

    kappa_ij = -mean_over_channels( |I_i - I_j| / (sigma_i + eps) ) * sharpness
    alpha_ij = softmax over the 8 x len(dilations) neighbours j of i (every dilation together) of kappa_ij

where sigma_i (per colour channel) is the standard deviation of the 9 x len(dilations) values of the full
3x3 windows at every dilation, i.e. the centre pixel I_i counted once per dilation (6 times for the default
6 dilations, 54 values in all), so the kernel adapts to local contrast. The deviation is the unbiased one
(divisor 9 x len(dilations) - 1): the reference implementation takes ``torch.std``'s default over the stacked
values. With sharpness 10 and eps 1e-7 the kernel equals the reference's -|I_i - I_j| / (1e-8 + 0.1 sigma_i).

The masks are then repeatedly replaced by their affinity-weighted neighbour average,
m_i <- sum_j alpha_ij m_j: values spread within regions of similar colour and stop at colour edges. The
update is linear in the masks and acts on every channel alike, so channels (e.g. column chunks of a score
map) can be refined separately with the same alpha (:func:`affinities`, passed to :func:`pamr`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _offsets(dilations: tuple[int, ...], centre: bool = False) -> list[tuple[int, int]]:
    """(dy, dx) per dilation in row-major 3x3 order; the centre (0, 0) is included per dilation only when
    ``centre``."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or dy or dx]


def _neighbours(x: torch.Tensor, offsets: list[tuple[int, int]], pad: int):
    """Yield (B, C, H, W) views of ``x`` shifted by each offset (replicate padding)."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    for dy, dx in offsets:
        yield padded[..., pad + dy:pad + dy + H, pad + dx:pad + dx + W]


def local_std(image: torch.Tensor, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)) -> torch.Tensor:
    """``image``: (B, C, H, W) float -> sigma: (B, C, H, W) float32, per channel the unbiased standard
    deviation of the 9 x len(dilations) values of the 3x3 windows at every dilation (centre once per
    dilation, replicate padding). Two passes (mean, then squared deviations): memory O(B C H W)."""
    image = image.float()
    offsets = _offsets(tuple(dilations), centre=True)
    pad = max(dilations)
    total = torch.zeros_like(image)
    for v in _neighbours(image, offsets, pad):
        total += v
    mean = total / len(offsets)
    sq = torch.zeros_like(image)
    for v in _neighbours(image, offsets, pad):
        sq += (v - mean) ** 2
    return (sq / (len(offsets) - 1)).sqrt()


def affinities(image: torch.Tensor, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24),
               sharpness: float = 10.0, eps: float = 1e-7) -> torch.Tensor:
    """``image``: (B, 3, H, W) float -> alpha: (B, K, H, W) float32, K = 8 * len(dilations) neighbour
    weights per pixel (non-negative, summing to 1 over K), in :func:`_offsets` order (centre excluded)."""
    image = image.float()
    dilations = tuple(dilations)
    offsets, pad = _offsets(dilations), max(dilations)
    denom = local_std(image, dilations) + eps  # (B, 3, H, W)
    kappa = torch.stack([-((image - n).abs() / denom).mean(dim=1) for n in _neighbours(image, offsets, pad)],
                        dim=1) * sharpness  # (B, K, H, W)
    return torch.softmax(kappa, dim=1)


@torch.no_grad()
def pamr(image: torch.Tensor | None, masks: torch.Tensor, iterations: int = 10,
         dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24), sharpness: float = 10.0,
         alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Refine ``masks``: (B, C, H, W) float (scores or probabilities) with ``image``: (B, 3, H, W) float
    RGB (any range; [0, 1] expected). Returns (B, C, H, W) float32, each value a convex combination of
    the input values (so ranges are kept). Memory: the K affinity maps plus two copies of ``masks``.

    ``alpha``: (B, K, H, W) affinities already computed by :func:`affinities` with the same ``dilations``
    (``image`` and ``sharpness`` are then unused; ``image`` may be None): refining the channels of a
    mask in separate calls with one alpha gives the same result as one call on all channels."""
    if alpha is None:
        if image is None or image.shape[0] != masks.shape[0] or image.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"image {None if image is None else tuple(image.shape)} and masks "
                             f"{tuple(masks.shape)} differ in batch or size")
        alpha = affinities(image.to(masks.device), dilations, sharpness)  # (B, K, H, W)
    offsets, pad = _offsets(tuple(dilations)), max(dilations)
    if alpha.shape != (masks.shape[0], len(offsets), *masks.shape[-2:]):
        raise ValueError(f"alpha {tuple(alpha.shape)} does not fit masks {tuple(masks.shape)} and "
                         f"{len(dilations)} dilations")
    alpha = alpha.to(masks.device)
    m = masks.float()
    for _ in range(iterations):
        out = torch.zeros_like(m)
        for k, shifted in enumerate(_neighbours(m, offsets, pad)):
            out.addcmul_(alpha[:, k:k + 1], shifted)
        m = out
    return m
