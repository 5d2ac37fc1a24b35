"""Pixel-Adaptive Mask Refinement (PAMR; Araslanov & Roth, CVPR 2020), written from the paper's description.

Each pixel i looks at the pixels j of 3x3 neighbourhoods at several dilations (8 neighbours per
dilation, borders replicated). Its affinity to a neighbour is

    kappa_ij = -mean_over_channels( |I_i - I_j| / (sigma_i + eps) ) * sharpness
    alpha_ij = softmax over all neighbours j of i (every dilation together) of kappa_ij

where sigma_i is the standard deviation of each colour channel over i's neighbours, so the kernel adapts to
local contrast. The masks are then repeatedly replaced by their affinity-weighted neighbour average,
m_i <- sum_j alpha_ij m_j: values spread within regions of similar colour and stop at colour edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _neighbours(x: torch.Tensor, offsets: list[tuple[int, int]], pad: int):
    """Yield (B, C, H, W) views of ``x`` shifted by each offset (replicate padding)."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    for dy, dx in offsets:
        yield padded[..., pad + dy:pad + dy + H, pad + dx:pad + dx + W]


def affinities(image: torch.Tensor, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24),
               sharpness: float = 10.0, eps: float = 1e-6) -> torch.Tensor:
    """``image``: (B, 3, H, W) float -> alpha: (B, K, H, W) float32, K = 8 * len(dilations) neighbour
    weights per pixel (non-negative, summing to 1 over K), in :func:`_offsets` order."""
    image = image.float()
    offsets = _offsets(tuple(dilations))
    pad = max(dilations)
    neigh = torch.stack(list(_neighbours(image, offsets, pad)), dim=2)  # (B, 3, K, H, W)
    sigma = neigh.std(dim=2, keepdim=True)  # (B, 3, 1, H, W)
    kappa = -((image[:, :, None] - neigh).abs() / (sigma + eps)).mean(dim=1) * sharpness  # (B, K, H, W)
    return torch.softmax(kappa, dim=1)


@torch.no_grad()
def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = 10,
         dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24), sharpness: float = 10.0) -> torch.Tensor:
    """Refine ``masks``: (B, C, H, W) float (scores or probabilities) with ``image``: (B, 3, H, W) float
    RGB (any range; [0, 1] expected). Returns (B, C, H, W) float32, each value a convex combination of
    the input values (so ranges are kept). Memory: the K affinity maps plus two copies of ``masks``."""
    if image.shape[0] != masks.shape[0] or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and masks {tuple(masks.shape)} differ in batch or size")
    image = image.to(masks.device)
    alpha = affinities(image, dilations, sharpness)  # (B, K, H, W)
    offsets, pad = _offsets(tuple(dilations)), max(dilations)
    m = masks.float()
    for _ in range(iterations):
        out = torch.zeros_like(m)
        for k, shifted in enumerate(_neighbours(m, offsets, pad)):
            out.addcmul_(alpha[:, k:k + 1], shifted)
        m = out
    return m
