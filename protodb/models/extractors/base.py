"""The loaded extractor: the call contract every backend implements, and shared loading helpers.

An extractor maps a batch of RGB images to dense, L2-normalised patch features::

    images: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of ``patch_size``
    ->      (B, H/p, W/p, D) float32, L2-normalised along D

Any extractor's config may say ``"flip": true``: its features are then the normalised mean of the
features of the image and of its mirror image (mirrored back), f(x) = n(n(g(x)) + M n(g(M x))) with M the
left-right mirror and n the L2 normalisation: twice the compute for features that no longer depend on
which way the scene faces (support images and segmented images alike, since both go through the same
extractor). ``"flip"`` is part of the config, so it is part of the extractor's identity and its cache key.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import threading
from typing import Any, Callable

import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.hashing import sha256_files
from protodb.models.extractors.spec import IMAGENET_MEAN, IMAGENET_STD, ExtractorSpec

log = logging.getLogger(__name__)
QKV_FACETS = ("query", "key", "value")

def state_dict_hash(module: torch.nn.Module) -> str:
    """Fallback when the loaded weight files cannot be located: sha256 over names, dtypes and bytes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def weight_files(folder: pathlib.Path, variant: str | None = None) -> list[pathlib.Path]:
    """The weight files a from_pretrained call reads in ``folder``: safetensors (else .bin), matching
    ``variant`` ("fp16" -> ``*.fp16.safetensors``) or, without one, files with no variant infix."""
    for ext in (".safetensors", ".bin"):
        files = sorted(p for p in folder.glob(f"*{ext}") if p.is_file())
        if variant:
            chosen = [p for p in files if f".{variant}." in p.name]
        else:
            chosen = [p for p in files if p.name.count(".") == 1]
        if chosen:
            return chosen
    return []


def local_dir(model: str, revision: str | None) -> pathlib.Path | None:
    """``model`` itself when it is a folder, else its cached hub snapshot (no network), else None."""
    if pathlib.Path(model).expanduser().is_dir():
        return pathlib.Path(model).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return pathlib.Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not resolvable locally"
        return None


def pretrained_hash(model: str, revision: str | None, subfolders: list[str], modules: list[torch.nn.Module],
                     variant: str | None = None) -> str:
    """Hash of the weight files of a transformers/diffusers model (local folder or hub cache)."""
    root = local_dir(model, revision)
    files: dict[str, pathlib.Path] = {}
    for sub in subfolders if root is not None else []:
        found = weight_files(root / sub if sub else root, variant)
        if not found:  # one component not located: do not give a hash of only part of the weights
            files = {}
            break
        files.update({f"{sub}/{f.name}" if sub else f.name: f for f in found})
    if files:
        return sha256_files(files)
    digest = hashlib.sha256("".join(state_dict_hash(m) for m in modules).encode())
    return digest.hexdigest()


def from_pretrained(cls, source: str, **kwargs):
    """``cls.from_pretrained`` from a local folder or the local hub cache first; the network only when
    the files are not here (and HF_HUB_OFFLINE is not set)."""
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if pathlib.Path(source).expanduser().is_dir():
            raise
    return cls.from_pretrained(source, **kwargs)


class _StopForward(Exception):
    """Raised by a capture hook once the wanted tensor is seen, to skip the rest of the network."""


def capture(module: torch.nn.Module, run: Callable[[], Any], stop: bool = True) -> torch.Tensor:
    """Run ``run()`` and return the output of ``module`` (first tensor if a tuple); with ``stop`` the
    forward pass is cut right after ``module``."""
    box: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        box["out"] = out[0] if isinstance(out, (tuple, list)) else out
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        run()
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "out" not in box:
        raise RuntimeError(f"hooked module {type(module).__name__} was not called")
    return box["out"]


class Extractor:
    """A loaded extractor. Call it on ``images: (B, 3, H, W)`` float RGB in [0, 1] (H, W multiples of
    ``patch_size``; the caller resizes) to get ``(B, H/p, W/p, dim)`` float32, L2-normalised along the last
    axis, on ``device``.

    Attributes: ``spec``; ``dim`` (feature size D); ``patch_size`` (p); ``input_size`` (the fixed graph
    input side when ``fixed_size``, else the preferred side, or None); ``weights_hash`` (sha256 of the
    weight files loaded); ``device``; ``dtype`` (compute dtype; outputs are always float32).
    """

    def __init__(self, spec: ExtractorSpec, *, dim: int, patch_size: int, input_size: int | None,
                 weights_hash: str, device: torch.device, dtype: torch.dtype, fixed_size: bool = False):
        self.spec = spec
        self.dim = int(dim)
        self.patch_size = int(patch_size)
        self.input_size = input_size
        self.fixed_size = fixed_size
        self.weights_hash = weights_hash
        self.device = device
        self.dtype = dtype
        cfg = spec.config
        self._mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.get("std", IMAGENET_STD), dtype=torch.float32).view(1, 3, 1, 1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Extractor({self.spec.name!r}, kind={self.spec.kind}, dim={self.dim}, "
                f"patch_size={self.patch_size}, device={self.device}, dtype={self.dtype})")

    @property
    def flip(self) -> bool:
        """Whether features are averaged with those of the mirror image (config ``"flip"``)."""
        return bool(self.spec.config.get("flip", False))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        feats = self._normalised(images)
        if self.flip:  # the mirror image's features, mirrored back along the grid's columns
            feats = F.normalize(feats + self._normalised(images.flip(-1)).flip(2), dim=-1)
        return feats.to(self.device)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D) float32, L2-normalised: one pass of the backbone."""
        with self._lock, torch.no_grad():
            feats = self._features(images)
        if feats.shape[:3] != (images.shape[0], images.shape[2] // self.patch_size, images.shape[3] // self.patch_size):
            raise RuntimeError(f"{self.spec.name}: feature grid {tuple(feats.shape)} does not match the input")
        return F.normalize(feats.float(), dim=-1)

    def _check(self, images: torch.Tensor) -> None:
        p = self.patch_size
        ok = (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3
              and images.is_floating_point() and images.shape[0] > 0 and images.shape[2] > 0
              and images.shape[3] > 0 and images.shape[2] % p == 0 and images.shape[3] % p == 0)
        if not ok:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InvalidInput(f"{self.spec.name} needs float images (B, 3, H, W) in [0, 1] with H and W "
                               f"multiples of {p}; got {shape}: resize or crop first")

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (images - mean) / std, float32, on the images' device."""
        x = images.float()
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D), any float dtype, not yet normalised."""
        raise NotImplementedError


def check_facet(spec: ExtractorSpec, allowed: tuple[str, ...]) -> str:
    facet = spec.config.get("facet", "key")
    if facet not in allowed:
        raise InvalidInput(f"extractor {spec.name!r}: facet {facet!r} is not supported by kind "
                           f"{spec.kind}; use one of {', '.join(allowed)}")
    return facet


def load_error(spec: ExtractorSpec, err: Exception, fix: str) -> InvalidInput:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InvalidInput(f"cannot load extractor {spec.name!r} ({type(err).__name__}: {first[:200]}); {fix}")
