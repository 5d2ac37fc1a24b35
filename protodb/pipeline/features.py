"""Patch features of support images, computed once per (image, extractor, size).

The cache is a folder of safetensors files keyed by the extractor's identity, the image's sha256
and the input size, so an image used by several classes — or by a re-run — is featurised once.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from protodb.fileio import atomic_path
from protodb.images import feature_size, to_tensor


class FeatureCache:
    """Features on disk under ``root/<extractor key>/<sha256>_<H>x<W>.safetensors`` (float16)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def _path(self, key: str, digest: str, size: tuple[int, int]) -> Path | None:
        if self.root is None:
            return None
        return self.root / key[:24] / f"{digest}_{size[0]}x{size[1]}.safetensors"

    def get(self, key: str, digest: str, size: tuple[int, int]) -> torch.Tensor | None:
        path = self._path(key, digest, size)
        if path is None or not path.exists():
            return None
        try:
            return load_file(str(path))["feats"].float()
        except Exception:  # noqa: BLE001 - a torn file from a crash is recomputed
            return None

    def put(self, key: str, digest: str, size: tuple[int, int], feats: torch.Tensor) -> None:
        path = self._path(key, digest, size)
        if path is None:
            return
        with atomic_path(path) as tmp:
            save_file({"feats": feats.to(torch.float16).contiguous().cpu()}, str(tmp))


def extractor_key(extractor) -> str:
    return f"{extractor.spec.config_hash()[:16]}{(extractor.weights_hash or '')[:8]}"


def featurize(
    extractor,
    images: Sequence[tuple[str, PIL.Image.Image]],
    *,
    short_side: int,
    cache: FeatureCache | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Features of ``images`` (``(sha256, image)`` pairs): a list of (h, w, D) float32 CPU tensors.

    Each image is resized so its short side is ``short_side`` (multiples of the patch size).
    Images of the same size are batched into one extractor call; cached features are reused.
    """
    key = extractor_key(extractor)
    out: list[torch.Tensor | None] = [None] * len(images)
    todo: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (digest, image) in enumerate(images):
        size = feature_size(image.width, image.height, short_side, extractor.patch_size)
        cached = cache.get(key, digest, size) if cache else None
        if cached is not None:
            out[i] = cached
            if progress:
                progress(1)
        else:
            todo[size].append(i)
    for size, idx in todo.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            batch = torch.stack([to_tensor(images[i][1], size) for i in chunk])
            with torch.inference_mode():
                # rounded through float16 like the cache, so fresh and cached runs agree exactly
                feats = extractor(batch).to(torch.float16).float().cpu()
            for i, f in zip(chunk, feats):
                out[i] = f
                if cache:
                    cache.put(key, images[i][0], size, f)
            if progress:
                progress(len(chunk))
    return out  # type: ignore[return-value]
