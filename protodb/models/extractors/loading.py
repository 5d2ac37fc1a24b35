"""Loading extractors once per process, by kind (see the package docstring)."""

from __future__ import annotations

import importlib
import logging
import os
import threading

import torch

from protodb.device import INT8
from protodb.errors import InvalidInput
from protodb.models.extractors.base import Extractor
from protodb.models.extractors.spec import ExtractorSpec, resolve_paths
from protodb.paths import user_cache_dir

log = logging.getLogger(__name__)

#: kind -> "module:function" that loads a spec of that kind on (device, dtype).
LOADERS: dict[str, str] = {
    "timm": "protodb.models.extractors.timm:load",
    "tiny": "protodb.models.extractors.timm:load",
    "clip": "protodb.models.extractors.clip:load",
    "sd": "protodb.models.extractors.sd:load",
    "onnx": "protodb.models.extractors.onnx:load",
    "dinov2": "protodb.models.extractors.dinov2:load",
}
#: Kinds whose linear layers int8 dynamic quantisation applies to (``--dtype int8``, CPU).
INT8_KINDS = frozenset({"timm", "tiny", "dinov2", "clip"})
_CACHE: dict[tuple[str, str, str], Extractor] = {}
_CACHE_LOCK = threading.Lock()


def _loader(kind: str):
    module, _, func = LOADERS[kind].partition(":")
    return getattr(importlib.import_module(module), func)


COMPILE_ENV = "PROTODB_COMPILE"


def compile_asked() -> bool:
    """Whether extractors load through ``torch.compile`` (``PROTODB_COMPILE=1``; :meth:`Extractor.compile`)."""
    return os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_extractor(spec: ExtractorSpec, device: str | torch.device = "cpu",
                   dtype: torch.dtype | str = torch.float32) -> Extractor:
    """Load (once per process and (config_hash, device, dtype)) the extractor ``spec`` describes.
    ``dtype`` is the compute dtype of torch models (e.g. torch.bfloat16; ONNX runs in its graph's dtype);
    outputs are float32 whatever it is. Relative model paths in the config (``cache``, ``path``, ...) that
    no database home resolved go under the user cache (:func:`protodb.paths.user_cache_dir`), never
    under the working directory."""
    spec = resolve_paths(spec, user_cache_dir())
    if isinstance(dtype, str):
        dtype = INT8 if dtype == "int8" else getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidInput("dtype must be a torch dtype name such as 'float32' or 'bfloat16', or 'int8'")
    if spec.kind == "onnx":
        dtype = torch.float32  # the graph's own dtype: one session whatever the caller asks
    if dtype is INT8 and spec.kind not in INT8_KINDS:
        log.info("extractor %s (%s) has no int8 mode: it runs in float32", spec.name, spec.kind)
        dtype = torch.float32
    device = torch.device(device)
    compiled = compile_asked()
    key = (spec.config_hash(), str(device), str(dtype), compiled)
    with _CACHE_LOCK:
        if key not in _CACHE:
            log.info("loading extractor %s (%s) on %s/%s", spec.name, spec.kind, device, dtype)
            _CACHE[key] = _loader(spec.kind)(spec, device, dtype)
            if compiled and _CACHE[key].compile():
                log.info("extractor %s runs through torch.compile (%s=1)", spec.name, COMPILE_ENV)
        else:
            log.debug("extractor %s already loaded", spec.name)
        return _CACHE[key]


def clear_extractor_cache() -> None:
    """Forget all loaded extractors (frees their memory once no caller holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
