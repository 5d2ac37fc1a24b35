"""CLIP vision towers (transformers): a q/k/v facet of one encoder layer."""

from __future__ import annotations

import torch

from protodb.device import dtype_name
from protodb.errors import InvalidInput
from protodb.models.extractors.base import (
    place_model,
    QKV_FACETS,
    Extractor,
    capture,
    check_facet,
    from_pretrained,
    load_error,
    pretrained_hash,
)
from protodb.models.extractors.spec import ExtractorSpec

class _ClipExtractor(Extractor):
    """transformers CLIP vision tower: q/k/v projection of ``encoder.layers[layer].self_attn`` (heads
    concatenated), class token dropped, position embeddings interpolated for any input size."""

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, weights_hash: str,
                 device: torch.device, dtype: torch.dtype):
        self._model = model
        facet = check_facet(spec, QKV_FACETS)
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
        tokens = capture(self._proj, lambda: self._model(pixel_values=x, interpolate_pos_encoding=True))
        return tokens[:, 1:].reshape(b, h // self.patch_size, w // self.patch_size, -1)


def load(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    from transformers import CLIPVisionModel

    cfg = spec.config
    if "model" not in cfg:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'model' (a hub id or a local folder)")
    try:
        model = from_pretrained(CLIPVisionModel, cfg["model"], revision=cfg.get("revision"))
    except (OSError, ValueError) as err:
        raise load_error(spec, err, "download the model once with network access or point config "
                                     "'model' at a local folder") from None
    model.eval()
    weights_hash = pretrained_hash(cfg["model"], cfg.get("revision"), [""], [model])
    extractor = _ClipExtractor(spec, model, weights_hash, device, place_model(model, device, dtype))
    extractor.dtype_label = dtype_name(dtype)
    return extractor
