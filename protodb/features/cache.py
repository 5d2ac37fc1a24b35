"""The feature cache: patch features on disk, keyed by the extractor's identity, the image's sha256, its
feature size and the window plan (a tag), as float16 safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from protodb.fileio import atomic_path


class FeatureCache:
    """Features on disk under ``root/<extractor key>/<sha256>_<H>x<W>.safetensors`` (float16)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def _path(self, key: str, digest: str, size: tuple[int, int], tag: str = "") -> Path | None:
        if self.root is None:
            return None
        return self.root / key[:24] / f"{digest}_{size[0]}x{size[1]}{tag}.safetensors"

    def get(self, key: str, digest: str, size: tuple[int, int], tag: str = "") -> torch.Tensor | None:
        path = self._path(key, digest, size, tag)
        if path is None or not path.exists():
            return None
        try:
            return load_file(str(path))["feats"].float()
        except Exception:  # noqa: BLE001 - a torn file from a crash is recomputed
            return None

    def put(self, key: str, digest: str, size: tuple[int, int], feats: torch.Tensor, tag: str = "") -> None:
        path = self._path(key, digest, size, tag)
        if path is None:
            return
        with atomic_path(path) as tmp:
            save_file({"feats": feats.to(torch.float16).contiguous().cpu()}, str(tmp))


def extractor_key(extractor) -> str:
    """Config hash + weights hash, and the compute dtype unless float32 (bf16 or int8 features are not the
    float32 ones, so they never share cache entries); a :meth:`~protodb.models.extractors.base.Extractor.
    lighter` view's passes too."""
    key = f"{extractor.spec.config_hash()[:16]}{(extractor.weights_hash or '')[:8]}"
    if getattr(extractor, "_lighter", None):  # a lighter view (other tile stride, no mirror): other features
        key += "-" + extractor._lighter
    dtype = str(getattr(extractor, "dtype_label", None) or getattr(extractor, "dtype", "float32")).removeprefix("torch.")
    return key if dtype == "float32" else f"{key}-{dtype}"
