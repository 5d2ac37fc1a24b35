"""timm ViTs (DINO, DINOv2) and the tiny random-weight ViT of the offline preset."""

from __future__ import annotations

import os
import pathlib

import torch

from protodb.device import dtype_name
from protodb.errors import InvalidInput
from protodb.hashing import sha256_file
from protodb.lazy import lazy_import
from protodb.models.extractors.base import (
    place_model,
    QKV_FACETS,
    Extractor,
    capture,
    check_facet,
    load_error,
    state_dict_hash,
)
from protodb.models.extractors.spec import ExtractorSpec

timm = lazy_import("timm")

class _TimmExtractor(Extractor):
    """timm ViT: qkv facet of ``blocks[layer].attn`` (heads concatenated) or final normalised tokens;
    prefix (class + register) tokens dropped."""

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, weights_hash: str,
                 device: torch.device, dtype: torch.dtype):
        self._model = model
        self._facet = check_facet(spec, (*QKV_FACETS, "token"))
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if patch != spec.config["patch_size"]:
            raise InvalidInput(f"extractor {spec.name!r}: config patch_size {spec.config['patch_size']} "
                               f"but the model's is {patch}; fix the config")
        self._attn = model.blocks[spec.config.get("layer", -1)].attn
        dim = model.num_features if self._facet == "token" else self._attn.num_heads * self._attn.head_dim
        super().__init__(spec, dim=dim, patch_size=patch, input_size=spec.config.get("input_size"),
                         weights_hash=weights_hash, device=device, dtype=dtype)

    def _compilable(self) -> bool:
        return self._facet == "token"  # a hooked qkv facet stays eager

    def _compile_backbone(self) -> None:
        self._model.forward_features = torch.compile(self._model.forward_features, dynamic=False)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        if self._facet == "token":
            tokens = self._model.forward_features(x)
        else:
            qkv = capture(self._attn.qkv, lambda: self._model.forward_features(x))
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


def load(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:

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
        raise load_error(spec, err, "download the weights once with network access or set config "
                                     "'checkpoint' to a local .safetensors file") from None
    model.eval()
    loaded = local or _timm_cached_file(cfg["model"])
    weights_hash = sha256_file(loaded) if loaded else state_dict_hash(model)
    extractor = _TimmExtractor(spec, model, weights_hash, device, place_model(model, device, dtype))
    extractor.dtype_label = dtype_name(dtype)
    return extractor
