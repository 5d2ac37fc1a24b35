"""Support-image bytes: canonical PNG encoding, decoding, and the tensors extractors take."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


def png_bytes(image: PIL.Image.Image | np.ndarray) -> bytes:
    """Deterministic PNG bytes (same pixels → same bytes → same sha256)."""
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool → 8-bit PNG with 0/255."""
    return png_bytes((np.asarray(mask, dtype=bool).astype(np.uint8) * 255))


def attention_png(attention: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] → 16-bit grayscale PNG (lossless to 1/65535)."""
    arr = np.clip(np.asarray(attention, dtype=np.float32), 0.0, 1.0)
    return png_bytes(PIL.Image.fromarray((arr * 65535.0 + 0.5).astype(np.uint16)))


def decode_attention(data: bytes) -> np.ndarray:
    """Inverse of :func:`attention_png`: (H, W) float32 in [0, 1]."""
    return np.asarray(PIL.Image.open(io.BytesIO(data)), dtype=np.float32) / 65535.0


def decode_rgb(data: bytes) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def feature_size(width: int, height: int, short_side: int, patch: int) -> tuple[int, int]:
    """(H, W) after resizing so the short side is ``short_side``, both multiples of ``patch``."""
    scale = short_side / min(width, height)
    h = max(patch, int(round(height * scale / patch)) * patch)
    w = max(patch, int(round(width * scale / patch)) * patch)
    return h, w


def to_tensor(image: PIL.Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image → (3, H, W) float32 in [0, 1], resized (bilinear, antialiased) to ``size``=(H, W)."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    t = arr.permute(2, 0, 1).float().div_(255.0)
    if size is not None and tuple(t.shape[1:]) != tuple(size):
        t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        t = t.clamp_(0.0, 1.0)
    return t
