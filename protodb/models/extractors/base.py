"""The loaded extractor: the call contract every backend implements, and shared loading helpers.

An extractor maps a batch of RGB images to dense, L2-normalised patch features::

    images: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of ``patch_size``
    ->      (B, H/p, W/p, D) float32, L2-normalised along D

Any extractor's config may say ``"flip": true``: its features are then the normalised mean of the
features of the image and of its mirror image (mirrored back), f(x) = n(n(g(x)) + M n(g(M x))) with M the
left-right mirror and n the L2 normalisation: twice the compute for features that no longer depend on
which way the scene faces (support images and segmented images alike, since both go through the same
extractor). ``"flip"`` is part of the config, so it is part of the extractor's identity and its cache key.
The mirror pass goes through the backbone in the same batch as the image.

Any extractor's config may also say ``"tile": {"size": S, "stride": T}``: the backbone then only ever sees
S x S tiles at stride T (the last flush with the border; images smaller than S padded with the mean
colour), each patch's feature the mean over the tiles holding it, then normalised. This is how a fixed
224x224 ONNX graph has always run (its graph side is its tile), and it lets the same weights in torch give
the features that generalise best across CamVid drives (a ViT-S/14 sees 16x16-patch contexts, as it was
trained) instead of one pass over a 448-pixel window. :meth:`Extractor.window_features` featurises many
windows of one image and computes each distinct tile once (overlapping windows share tiles).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pathlib
import threading
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F

from protodb.device import INT8
from protodb.errors import InvalidInput
from protodb.features.windows import Window, crop_starts
from protodb.hashing import sha256_files
from protodb.models.extractors.spec import IMAGENET_MEAN, IMAGENET_STD, ExtractorSpec
from protodb.paths import user_cache_dir

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


def place_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Move ``model`` to ``device`` in ``dtype`` and return the dtype its inputs take. ``dtype`` int8
    (:data:`protodb.device.INT8`): float32 with every ``nn.Linear`` replaced in place by torch's dynamic
    int8 quantised linear (weights int8, activations quantised per call); the inputs stay float32. Call
    before looking up submodules to hook (the linear layers are new objects afterwards)."""
    if dtype is not INT8:
        model.to(device=device, dtype=dtype)
        return dtype
    if device.type != "cpu":
        raise InvalidInput("int8 extractors run on the CPU only")
    model.to(device=device, dtype=torch.float32)
    with warnings.catch_warnings():  # torch's notice that quantised tensor types will move elsewhere
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return torch.float32


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
    weight files loaded); ``device``; ``dtype`` (compute dtype; outputs are always float32);
    ``dtype_label`` (``"int8"`` when the linear layers are int8-quantised, else the dtype's name).
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
        self.dtype_label = str(dtype).removeprefix("torch.")
        self.tile = self._tile_of(cfg, input_size if fixed_size else None)
        self.batch = max(1, int(cfg.get("batch", 8)))
        self.compiled = False  # whether the backbone runs through torch.compile (:meth:`compile`)

    def _tile_of(self, cfg: dict, fixed: int | None) -> tuple[int, int] | None:
        """(size, stride) of the tiles the backbone sees, or None for one pass over any input."""
        raw = cfg.get("tile")
        if raw is None and fixed is None:
            return None
        p = self.patch_size
        size = int(raw["size"]) if raw else int(fixed)
        stride = raw.get("stride") if raw else cfg.get("stride")
        stride = int(stride) if stride is not None else max(p, (size // 2) // p * p)
        if fixed is not None and size != fixed:
            raise InvalidInput(f"extractor {self.spec.name!r}: tile size {size} but the graph takes {fixed}x{fixed}")
        if size <= 0 or size % p or stride <= 0 or stride % p or stride > size:
            raise InvalidInput(f"extractor {self.spec.name!r}: tile size {size} and stride {stride} must be "
                               f"positive multiples of the patch size {p}, stride <= size")
        return size, stride

    def __repr__(self) -> str:
        return (f"Extractor({self.spec.name!r}, kind={self.spec.kind}, dim={self.dim}, "
                f"patch_size={self.patch_size}, device={self.device}, dtype={self.dtype})")

    @property
    def flip(self) -> bool:
        """Whether features are averaged with those of the mirror image (config ``"flip"``; a
        :meth:`lighter` view may turn it off)."""
        return bool(self.spec.config.get("flip", False)) and not getattr(self, "_no_mirror", False)

    def lighter(self, *, tile_stride: int | None = None, mirror: bool = True) -> "Extractor":
        """A cheaper view of this extractor (the same loaded model, not a copy of it) for segmenting:
        its tiles at ``tile_stride`` instead of the configured stride (tiled extractors only; a multiple of
        the patch size, at most the tile size: the tile size means tiles that do not overlap) and, with
        ``mirror=False``, without the mirror pass. The features are of the same kind — the same backbone
        on tiles of the same size — so they match prototypes built with the extractor's own settings;
        what it costs in quality is measured per speed preset (README). ``self`` when nothing changes."""
        view = copy.copy(self)
        changed = False
        if tile_stride is not None and self.tile is not None and int(tile_stride) != self.tile[1]:
            size, p = self.tile[0], self.patch_size
            if tile_stride <= 0 or tile_stride % p or tile_stride > size:
                raise InvalidInput(f"tile stride {tile_stride}: a positive multiple of {p}, at most the tile "
                                   f"size {size}")
            view.tile, changed = (size, int(tile_stride)), True
        if not mirror and self.flip:
            view._no_mirror, changed = True, True
        if changed:  # part of the feature cache key (protodb.features.cache.extractor_key)
            view._lighter = f"t{view.tile[1] if view.tile else 0}m{int(view.flip)}"
        return view if changed else self

    def passes(self) -> dict[str, Any]:
        """What one feature call runs: ``{"tile": [size, stride] or None, "mirror": bool}``."""
        return {"tile": list(self.tile) if self.tile is not None else None, "mirror": self.flip}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        if not self.flip:
            return self._normalised(images).to(self.device)
        b = images.shape[0]  # the mirror image in the same batch, its features mirrored back along the columns
        feats = self._normalised(torch.cat([images, images.flip(-1)]))
        return F.normalize(feats[:b] + feats[b:].flip(2), dim=-1).to(self.device)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D) float32, L2-normalised: the backbone (tiled when configured)."""
        if self.tile is not None:
            return self._tiled_windows(images[:, None] if images.ndim == 4 else images, None)
        if self.squash and tuple(images.shape[2:]) != (self.input_size, self.input_size):
            return self._squashed(images)
        with self._lock, torch.no_grad():
            feats = self._features(images)
        if feats.shape[:3] != (images.shape[0], images.shape[2] // self.patch_size, images.shape[3] // self.patch_size):
            raise RuntimeError(f"{self.spec.name}: feature grid {tuple(feats.shape)} does not match the input")
        return F.normalize(feats.float(), dim=-1)

    def compile(self) -> bool:
        """Run the backbone through ``torch.compile`` (inductor; its cache in the user cache, never the working
        directory) where the extractor supports it: torch backbones read at their final tokens, not int8.
        Returns whether it did. The first call of each input shape compiles (about a minute for ViT-S/14 on 2
        cores); later ones are faster (``benchmarks/bench_speed.py --compile``). Off unless asked:
        ``PROTODB_COMPILE=1``, for long-running processes such as ``protodb serve``."""
        if self.dtype_label == "int8" or not self._compilable():
            return False
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):  # torch sets its default itself
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(user_cache_dir() / "inductor")
        self._compile_backbone()
        self.compiled = True
        return True

    def _compilable(self) -> bool:
        return False

    def _compile_backbone(self) -> None:
        raise NotImplementedError

    @property
    def squash(self) -> bool:
        """Whether every input is resized to ``input_size`` x ``input_size`` whatever its aspect (config
        ``"squash": true``), as the OVDiff authors feed Stable Diffusion (512) and CLIP (448): the features
        are then resized back to the input's own patch grid (bilinear, renormalised)."""
        return bool(self.spec.config.get("squash", False)) and bool(self.input_size)

    def _squashed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D): the backbone on the images squashed to ``input_size`` square,
        its normalised (S/p, S/p) grid resized to (H/p, W/p) and normalised again (a prototype's cosine with
        it is then the resized cosine map up to that norm, as the authors resize similarity maps)."""
        side, p = int(self.input_size), self.patch_size
        square = F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0, 1)
        with self._lock, torch.no_grad():
            feats = F.normalize(self._features(square).float(), dim=-1)  # (B, S/p, S/p, D)
        grid = (images.shape[2] // p, images.shape[3] // p)
        back = F.interpolate(feats.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
        return F.normalize(back.permute(0, 2, 3, 1), dim=-1)

    # ------------------------------------------------------------------------------------------- tiles
    def window_features(self, image: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
        """Features of several windows of ONE image: ``image`` (3, H, W) float RGB in [0, 1], ``windows``
        in its pixels (sides multiples of ``patch_size``) -> per window (h/p, w/p, D) float32, normalised,
        on ``device``; each equal (up to float rounding) to ``self(crop[None])[0]``.

        Tiled extractors run each distinct tile once: on a 480x360 photo scored at short side 448 the
        windows 448 and 336 at stride 224, plus the whole image, need 21 tiles, not 57 (a tiled extractor's default
        windows are its own tiles plus the whole image: 15 tiles, :meth:`WindowSpec.resolved`).
        Others batch the windows of one size (``batch`` per call)."""
        self._check(image[None])
        if self.tile is None:
            out: list[torch.Tensor | None] = [None] * len(windows)
            groups: dict[tuple[int, int], list[int]] = {}
            for i, w in enumerate(windows):
                groups.setdefault((w.height, w.width), []).append(i)
            for (wh, ww), idx in groups.items():
                for b in range(0, len(idx), self.batch):
                    part = idx[b:b + self.batch]
                    crops = torch.stack([image[:, windows[i].top:windows[i].top + wh,
                                               windows[i].left:windows[i].left + ww] for i in part])
                    for i, f in zip(part, self(crops)):
                        out[i] = f
            return out  # type: ignore[return-value]
        feats = self._tiled_windows(image, windows)
        if self.flip:
            W = int(image.shape[2])
            mirrored = [Window(w.top, W - w.left - w.width, w.height, w.width) for w in windows]
            back = self._tiled_windows(image.flip(-1), mirrored)
            feats = [F.normalize(f + m.flip(1), dim=-1) for f, m in zip(feats, back)]
        return [f.to(self.device) for f in feats]

    def _tiled_windows(self, image: torch.Tensor, windows: list[Window] | None):
        """Tiled features without the mirror pass. ``windows`` None: ``image`` is a batch (B, 1, 3, H, W)
        viewed as B one-window images -> (B, H/p, W/p, D). Else ``image`` (3, H, W) and a list of windows
        -> list of (h/p, w/p, D). Every distinct tile (position and valid extent) runs once."""
        size, stride = self.tile  # type: ignore[misc]
        p = self.patch_size
        if windows is None:
            sources = [(image[i, 0], Window(0, 0, int(image.shape[3]), int(image.shape[4])))
                       for i in range(image.shape[0])]
        else:
            sources = [(image, w) for w in windows]
        keys: dict[tuple, int] = {}
        tiles: list[torch.Tensor] = []
        layout: list[list[tuple[int, int, int, int, int]]] = []  # per window: (tile, row, col, rows, cols)
        for src, (img, win) in enumerate(sources):
            entries = []
            for ty in crop_starts(win.height, size, stride):
                for tx in crop_starts(win.width, size, stride):
                    hv, wv = min(size, win.height - ty), min(size, win.width - tx)
                    key = (src if windows is None else -1, win.top + ty, win.left + tx, hv, wv)
                    if key not in keys:
                        keys[key] = len(tiles)
                        tiles.append(self._tile_crop(img, win.top + ty, win.left + tx, hv, wv, size))
                    entries.append((keys[key], ty // p, tx // p, hv // p, wv // p))
            layout.append(entries)
        raw = self._run_tiles(torch.stack(tiles))
        out = []
        for (img, win), entries in zip(sources, layout):
            acc = torch.zeros(win.height // p, win.width // p, raw.shape[-1], device=raw.device)
            count = torch.zeros(win.height // p, win.width // p, 1, device=raw.device)
            for t, r, c, rows, cols in entries:
                acc[r:r + rows, c:c + cols] += raw[t, :rows, :cols]
                count[r:r + rows, c:c + cols] += 1
            out.append(F.normalize(acc / count, dim=-1))
        return torch.stack(out) if windows is None else out

    def _tile_crop(self, img: torch.Tensor, top: int, left: int, hv: int, wv: int, size: int) -> torch.Tensor:
        """(3, size, size): the image's pixels, padded with the mean colour (zero once normalised)."""
        crop = img[:, top:top + hv, left:left + wv].float()
        if (hv, wv) == (size, size):
            return crop
        out = self._mean[0].to(crop.device).expand(3, size, size).clone()
        out[:, :hv, :wv] = crop
        return out

    def _run_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, S/p, S/p, D) float32 on the extractor's device, raw (not normalised), ``batch`` tiles per call."""
        outs = []
        g = tiles.shape[2] // self.patch_size
        for b in range(0, len(tiles), self.batch):
            part = tiles[b:b + self.batch]
            with self._lock, torch.no_grad():
                f = self._features(part)
            if f.shape[:3] != (len(part), g, g):
                raise RuntimeError(f"{self.spec.name}: feature grid {tuple(f.shape)} does not match the tile")
            outs.append(f.float().to(self.device))
        return torch.cat(outs)

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
