"""ONNX ViTs through onnxruntime: any tensor of the graph can be the patch tokens."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import platform

import numpy as np
import torch

from protodb.errors import InvalidInput
from protodb.fileio import atomic_path
from protodb.hashing import sha256_bytes, sha256_file
from protodb.lazy import lazy_import
from protodb.models.extractors.base import Extractor, load_error
from protodb.models.extractors.onnx_proto import graph_output_names, with_extra_output
from protodb.models.extractors.spec import ExtractorSpec, resolve_file

ort = lazy_import("onnxruntime")
log = logging.getLogger(__name__)

def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _OnnxExtractor(Extractor):
    """ONNX ViT via onnxruntime. Graph tensor ``output_name`` holds tokens (B, N, D); the first N - h*w
    (or ``prefix_tokens``) are dropped. A graph with a fixed square input side S is a tiled extractor
    (:class:`~protodb.models.extractors.base.Extractor`): S x S tiles at config ``stride`` (default S/2
    aligned to the patch grid; images smaller than S are padded with the mean colour), overlapping patch
    features averaged, then normalised; overlapping windows of one image share their tiles."""

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
            if shape[2] != shape[3]:
                raise InvalidInput(f"extractor {spec.name!r}: graph input {shape[2]}x{shape[3]} is not square; "
                                   "protodb tiles images with square crops")
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
            side = (shape[2], shape[3]) if fixed else (p * 2, p * 2)
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
        """(B, 3, H, W) -> (B, H/p, W/p, D) raw tokens; a fixed graph only ever gets its own side (tiles)."""
        p = self.patch_size
        x = self._normalise(images).cpu().numpy()
        return torch.from_numpy(self._grid(self._run(x), x.shape[2] // p, x.shape[3] // p))


def load(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:

    cfg = spec.config
    if not cfg.get("output_name"):
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'output_name' (the tokens tensor)")
    path = resolve_file(spec, "path", "ONNX file")
    weights_hash = sha256_file(path)  # remembered per size+mtime: no re-hash per run
    options = ort.SessionOptions()
    options.intra_op_num_threads = _available_cpus()
    options.log_severity_level = 3  # onnxruntime's own warnings (e.g. about saved optimised graphs)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = _cached_session(weights_hash, cfg, options, providers)
    if session is None:
        model_bytes = path.read_bytes()
        try:
            graph_output_names(model_bytes)
            readable = bool(model_bytes)
        except (ValueError, IndexError):
            readable = False
        if not readable:
            raise InvalidInput(f"extractor {spec.name!r}: {path} is not an ONNX model (empty or not a protobuf file)")
        try:
            if cfg["output_name"] not in graph_output_names(model_bytes):
                if cfg["output_name"].encode("utf-8") not in model_bytes:
                    raise InvalidInput(f"extractor {spec.name!r}: {path.name} has no tensor named "
                                       f"{cfg['output_name']!r}; check output_name")
                model_bytes = with_extra_output(model_bytes, cfg["output_name"])
            session = _session(model_bytes, weights_hash, cfg, options, providers)
        except InvalidInput:
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime (and a malformed file) raise their own types
            raise load_error(spec, err, "check that the file is a valid ONNX model with its weights inside") from None
    return _OnnxExtractor(spec, session, weights_hash, device, dtype)


def _machine_key(providers: list[str]) -> str:
    """What an optimized graph depends on: onnxruntime's version, the CPU and the providers."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                flags = line
                break
    return sha256_bytes(f"{ort.__version__}|{platform.machine()}|{flags}|{providers}".encode())[:16]


def _optimized_path(weights_hash: str, cfg: dict, providers: list[str]) -> pathlib.Path | None:
    cache = cfg.get("cache")
    if not cache or providers[0] != "CPUExecutionProvider":
        return None
    key = sha256_bytes(f"{weights_hash}|{cfg['output_name']}|{_machine_key(providers)}".encode())[:32]
    return pathlib.Path(cache) / f"onnx-{key}.ort.onnx"


def _cached_session(weights_hash: str, cfg: dict, options, providers: list[str]):
    """The session from the graph optimised on an earlier load (config ``cache``, per machine), or None.
    Loading it skips reading the original file and optimising (0.43 s -> 0.12 s for ViT-S/14)."""
    optimized = _optimized_path(weights_hash, cfg, providers)
    if optimized is None or not optimized.is_file():
        return None
    fast = ort.SessionOptions()
    fast.intra_op_num_threads = options.intra_op_num_threads
    fast.log_severity_level = 3
    fast.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(optimized), fast, providers=providers)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: optimise again
        log.info("cached optimized graph %s unusable (%s); optimising again", optimized.name, err)
        return None


def _session(model_bytes: bytes, weights_hash: str, cfg: dict, options, providers: list[str]):
    """A session from the model bytes; with config ``cache`` the optimised graph is saved for next time."""
    optimized = _optimized_path(weights_hash, cfg, providers)
    if optimized is None:
        return ort.InferenceSession(model_bytes, options, providers=providers)
    try:
        with atomic_path(optimized) as tmp:
            options.optimized_model_filepath = str(tmp)
            return ort.InferenceSession(model_bytes, options, providers=providers)
    except OSError as err:  # a read-only home: no cache, same session
        log.debug("optimized graph not cached (%s)", err)
        options.optimized_model_filepath = ""
        return ort.InferenceSession(model_bytes, options, providers=providers)
