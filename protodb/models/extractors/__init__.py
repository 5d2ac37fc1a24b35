"""Feature extractors as data: a name -> config registry and the code that turns a config into a model.

=================  ======================================================================
``spec``           :class:`ExtractorSpec`, the built-in registry (``data/extractors.json``)
``base``           :class:`Extractor` (the call contract) and shared loading/hashing helpers
``timm``           timm ViTs (DINO, DINOv2) and the tiny random-weight ViT
``clip``           CLIP vision towers (transformers)
``sd``             Stable Diffusion UNet decoder features (diffusers)
``onnx``           ONNX ViTs (onnxruntime); ``onnx_proto`` reads the graph without ``onnx``
``dinov2``         transformers ``Dinov2Model`` folders (an ONNX DINOv2 converted once)
``loading``        :func:`load_extractor`: once per process and (config hash, device, dtype)
=================  ======================================================================

``loading`` finds a backend by kind through ``LOADERS`` (``"module:function"`` strings: a backend's
libraries are imported only when a spec of its kind is loaded). This package's top level re-exports
only the spec side (no torch), so describing extractors stays cheap.
"""

from __future__ import annotations

from protodb.models.extractors.spec import (
    CLIP_MEAN,
    CLIP_STD,
    FOCUS_PACKAGE,
    FOCUS_RESOURCE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINDS,
    TINY_KWARGS,
    TINY_MODEL,
    TINY_NAME,
    ExtractorSpec,
    builtin_specs,
    focus_onnx_path,
    onnx_spec,
    spec_from_dict,
)

__all__ = ["CLIP_MEAN", "CLIP_STD", "ExtractorSpec", "FOCUS_PACKAGE", "FOCUS_RESOURCE", "IMAGENET_MEAN",
           "IMAGENET_STD", "KINDS", "TINY_KWARGS", "TINY_MODEL", "TINY_NAME", "builtin_specs", "focus_onnx_path",
           "onnx_spec", "spec_from_dict"]
