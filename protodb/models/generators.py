"""Text-to-image generators described by data, and loading them once per process.

A :class:`GeneratorSpec` names everything that decides what a generator draws (model id and
revision, pipeline class, scheduler, steps, guidance, size, prompt template, negative prompt), so the
catalog can record it and a user can add a generator by config. Built-in specs live in
``protodb/data/generators.json``.

>>> spec = builtin_generators()["sd15"].replace(steps=20)
>>> pipe = load_pipeline(spec, device="cuda", dtype=torch.float16)   # loaded once per process
>>> model_revision(pipe)                                             # commit of the cached snapshot
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.resources
import importlib.util
import inspect
import json
import os
import re
import struct
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protodb.errors import InvalidInput
from protodb.hashing import sha256_json

DEFAULT_PROMPT_TEMPLATE = "a good picture of a {name}"
DEFAULT_NEGATIVE_PROMPT = "text, low quality, blurry, cartoon, meme, low resolution, bad, poor, faded"
_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True, kw_only=True)
class GeneratorSpec:
    """Everything that decides what a text-to-image generator draws.

    model_id: a Hugging Face hub id (``owner/name``) or a local folder written by ``save_pretrained``.
    revision: hub branch/tag/commit; None means the cached snapshot of ``main``. Ignored for folders.
    pipeline: a diffusers pipeline class name, or "auto" (the class named in ``model_index.json``).
    scheduler: a diffusers scheduler class name (built ``from_config`` of the model's own scheduler
        config), or "default" to keep the model's scheduler.
    steps, guidance: denoising steps and guidance scale. Classifier-free guidance runs when
        guidance > 1 (for LatentConsistencyModelPipeline it is the embedded guidance, never CFG).
    width, height: image size in pixels (multiples of 8).
    prompt_template: must contain ``{name}``; negative_prompt: None for none.
    dtype: "auto" (use the dtype the caller passes) or float32 / float16 / bfloat16 to force one.
    """

    name: str
    model_id: str
    revision: str | None = None
    pipeline: str = "auto"
    scheduler: str = "default"
    steps: int
    guidance: float
    width: int
    height: int
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.name or not self.model_id:
            raise InvalidInput("a generator needs a non-empty name and model_id")
        if self.steps < 1:
            raise InvalidInput(f"generator {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise InvalidInput(f"generator {self.name!r}: guidance must be >= 0, got {self.guidance}")
        if self.width < 8 or self.height < 8 or self.width % 8 or self.height % 8:
            raise InvalidInput(
                f"generator {self.name!r}: width and height must be positive multiples of 8, "
                f"got {self.width}x{self.height}"
            )
        if "{name}" not in self.prompt_template:
            raise InvalidInput(
                f"generator {self.name!r}: prompt_template must contain '{{name}}', got {self.prompt_template!r}"
            )
        if self.dtype not in _DTYPES:
            raise InvalidInput(f"generator {self.name!r}: dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def replace(self, **changes: Any) -> GeneratorSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (what the catalog records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorSpec:
        """Build from a dict (e.g. user config); unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown generator field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as err:  # a required field is missing
            raise InvalidInput(f"generator config incomplete: {err}") from None

    def spec_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of all fields."""
        return sha256_json(self.to_dict())

    def model_key(self) -> tuple[str, str | None, str]:
        """What identifies the loaded weights + pipeline class (no scheduler, steps, guidance, size, prompts)."""
        model_id = str(Path(self.model_id).resolve()) if _is_local(self.model_id) else self.model_id
        return (model_id, self.revision, self.pipeline)


def builtin_generators() -> dict[str, GeneratorSpec]:
    """The generators shipped in ``protodb/data/generators.json``, by name (sd15, sd-turbo, lcm-sd15)."""
    text = importlib.resources.files("protodb").joinpath("data/generators.json").read_text("utf-8")
    raw = json.loads(text)
    return {
        name: GeneratorSpec.from_dict({"name": name, **cfg}) for name, cfg in raw.items() if not name.startswith("_")
    }


# --------------------------------------------------------------------------------------------
# Locating weights (local folder or Hugging Face cache)
# --------------------------------------------------------------------------------------------


def _is_local(model_id: str) -> bool:
    return Path(model_id).expanduser().is_dir() or not _HUB_ID.match(model_id)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if flag is not None:
        return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> str:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME/hub)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder (named by its commit hash) holding model_index.json, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "model_index.json", cache_dir=_hub_cache_dir(), revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def _missing_weights(spec: GeneratorSpec) -> InvalidInput:
    rev = f" (revision {spec.revision})" if spec.revision else ""
    return InvalidInput(
        f"generator {spec.name!r}: model {spec.model_id}{rev} is not in the local Hugging Face cache "
        f"({_hub_cache_dir()}); weights must be present locally: set HF_HOME to a cache that has them "
        f"or pass a local folder with --generator PATH"
    )


def resolve_model_folder(spec: GeneratorSpec) -> tuple[Path, str | None]:
    """(folder with model_index.json, hub commit hash or None for a local folder).

    Hub ids are looked up in the local cache first; when not cached, they are downloaded only if
    HF_HUB_OFFLINE is not set, and any failure becomes InvalidInput with the fix.
    """
    if _is_local(spec.model_id):
        folder = Path(spec.model_id).expanduser()
        if not (folder / "model_index.json").is_file():
            raise InvalidInput(
                f"generator {spec.name!r}: {folder} is not a diffusers pipeline folder (no model_index.json); "
                f"pass a folder written by save_pretrained"
            )
        return folder.resolve(), None
    snapshot = _cached_snapshot(spec.model_id, spec.revision)
    if snapshot is None:
        if _hub_offline():
            raise _missing_weights(spec)
        from diffusers import DiffusionPipeline

        try:
            with quiet_loading():  # the hub's own "couldn't connect" warnings: our one line says it
                DiffusionPipeline.download(spec.model_id, revision=spec.revision, cache_dir=_hub_cache_dir())
        except Exception:  # network, auth, missing repo: all mean "not available locally"
            raise _missing_weights(spec) from None
        snapshot = _cached_snapshot(spec.model_id, spec.revision)
        if snapshot is None:
            raise _missing_weights(spec)
    return snapshot, snapshot.name


# --------------------------------------------------------------------------------------------
# Loading, cached per process
# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_BASE: dict[tuple, Any] = {}  # (model key, device, dtype) -> pipeline as loaded (its own scheduler)
_PIPES: dict[tuple, Any] = {}  # (model key, scheduler, device, dtype) -> pipeline handed out
_ORIGIN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline -> (folder, commit)


def load_pipeline(spec: GeneratorSpec, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The diffusers pipeline for ``spec`` on ``device``, loaded at most once per process.

    dtype: the caller's choice (chosen once upstream); None means spec.dtype, or float32 when that is
    "auto"; a spec with a fixed dtype always wins over the caller's. Safety checker off, progress bar
    off, scheduler replaced per spec (``from_config`` of the model's scheduler config, so betas and
    timestep spacing stay the model's). Pipelines that differ only in scheduler share every model
    (``from_pipe``); steps, guidance, size and prompts never cause a reload.
    """
    resolved = _DTYPES[spec.dtype] or dtype or torch.float32
    device = torch.device(device)
    base_key = (spec.model_key(), str(device), str(resolved))
    key = (*base_key, spec.scheduler)
    with _LOCK:
        if key in _PIPES:
            return _PIPES[key]
        base = _BASE.get(base_key)
        if base is None:
            folder, commit = resolve_model_folder(spec)
            base = _load(spec, folder, device, resolved)
            _ORIGIN[base] = (folder, commit)
            _BASE[base_key] = base
        pipe = base if spec.scheduler == "default" else _with_scheduler(base, spec)
        _ORIGIN[pipe] = _ORIGIN[base]
        _PIPES[key] = pipe
        return pipe


def _pipeline_class(spec: GeneratorSpec, folder: Path):
    import diffusers

    name = spec.pipeline
    if name == "auto":
        name = json.loads((folder / "model_index.json").read_text("utf-8")).get("_class_name", "DiffusionPipeline")
        if isinstance(name, list):  # custom pipelines: [module, class]
            return diffusers.DiffusionPipeline
    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type):
        raise InvalidInput(f"generator {spec.name!r}: unknown diffusers pipeline class {name!r}")
    return cls


def _load(spec: GeneratorSpec, folder: Path, device: torch.device, dtype: torch.dtype):
    cls = _pipeline_class(spec, folder)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    params = inspect.signature(cls.__init__).parameters
    if "safety_checker" in params:
        kwargs["safety_checker"] = None
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    with quiet_loading():
        try:
            pipe = cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as err:
            raise InvalidInput(f"generator {spec.name!r}: cannot load {folder}: {str(err).splitlines()[0]}") from None
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers/transformers loading chatter (progress bars, info warnings) for a moment."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.set_verbosity(m.ERROR)
        m.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        for m, verbosity, bars in saved:
            m.set_verbosity(verbosity)
            if bars:
                m.enable_progress_bar()


def _with_scheduler(base, spec: GeneratorSpec):
    import diffusers

    cls = getattr(diffusers, spec.scheduler, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise InvalidInput(f"generator {spec.name!r}: unknown diffusers scheduler {spec.scheduler!r}")
    with quiet_loading():
        pipe = type(base).from_pipe(base, scheduler=cls.from_config(base.scheduler.config), torch_dtype=base.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------
# Revisions
# --------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".onnx_data", ".gguf")
_FULL_HASH_LIMIT = 64 * 2**20  # files up to 64 MiB are hashed whole
_SAMPLE = 2**20  # bigger files: header + first and last MiB of tensor data


def model_revision(pipe_or_spec) -> str | None:
    """What exact weights a pipeline (or spec) uses.

    Hub snapshot: its commit hash (40 hex). Local folder: "sha256:<hex>" over model_index.json, every
    JSON/TXT config (scheduler, tokenizer, component configs) and every weight file: whole contents
    for files up to 64 MiB; for bigger files their size, the safetensors header (names, dtypes,
    shapes, offsets) and the first and last MiB of tensor data (a fine-tune changes those bytes).
    None when a spec's hub model is not available locally.
    """
    if isinstance(pipe_or_spec, GeneratorSpec):
        spec = pipe_or_spec
        if not _is_local(spec.model_id):
            snapshot = _cached_snapshot(spec.model_id, spec.revision)
            return snapshot.name if snapshot is not None else None
        folder = Path(spec.model_id).expanduser()
        if not (folder / "model_index.json").is_file():
            return None
    else:
        origin = _ORIGIN.get(pipe_or_spec)
        if origin is None:
            name = getattr(getattr(pipe_or_spec, "config", None), "_name_or_path", None)
            if not name or not (Path(name) / "model_index.json").is_file():
                return None
            origin = (Path(name), None)
        folder, commit = origin
        if commit is not None:
            return commit
    return folder_hash(folder)


def folder_hash(folder: Path) -> str:
    """sha256 of a pipeline folder's configs and weights (see model_revision), cached per file state."""
    folder = Path(folder).resolve()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.suffix in {".json", ".txt"})
    )
    state = tuple((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    return _folder_hash_cached(str(folder), state)


_HASHES: dict[tuple, str] = {}


def _folder_hash_cached(folder: str, state: tuple) -> str:
    key = (folder, state)  # size/mtime only decide whether to re-read, never the hash itself
    if key not in _HASHES:
        h = hashlib.sha256()
        for rel, size, _ in state:
            h.update(f"{rel}\0{size}\0".encode())
            _hash_file(Path(folder) / rel, size, h)
        _HASHES[key] = "sha256:" + h.hexdigest()
    return _HASHES[key]


def _hash_file(path: Path, size: int, h) -> None:
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
            return
        start = 0
        if path.suffix == ".safetensors":
            (header_len,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(header_len))
            start = 8 + header_len
        f.seek(start)
        h.update(f.read(_SAMPLE))
        f.seek(max(start, size - _SAMPLE))
        h.update(f.read(_SAMPLE))
