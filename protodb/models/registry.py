"""Name → model resolution for one database: built-ins, the user's own, and offline presets.

* Extractors: the built-in JSON registry (``protodb/data/extractors.json``), extractors a user
  added with ``protodb extractor add`` (stored as data in the catalog's settings), and with
  ``--preset tiny`` a tiny random-weight ViT (``tiny-vit``).
* Generators: the built-in registry (``sd15``, ``sd-turbo``, ``lcm-sd15``), any local diffusers
  folder, and with ``--preset tiny`` a tiny random-weight Stable Diffusion (``tiny``).

The tiny preset's models are built once into ``HOME/models/`` with ``save_pretrained`` /
safetensors and loaded back through the same code as real weights. They exist so the whole
flow runs offline in seconds; what they produce is NOT meaningful, and every set they build
says so in its provenance (``params.preset == "tiny"``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from protodb.errors import InvalidInput
from protodb.models import extractors as ex
from protodb.models import generators as gen

PRESETS = ("tiny",)
TINY_EXTRACTOR, TINY_GENERATOR = "tiny-vit", "tiny"
_LOCAL_KEYS = ("checkpoint", "path")  # machine-local paths: not part of an extractor's identity
_SETTING_PREFIX = "extractor:"


class ModelRegistry:
    def __init__(self, db, preset: str | None = None):
        if preset is not None and preset not in PRESETS:
            raise InvalidInput(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        self.db = db
        self.preset = preset
        self._tiny: dict[str, Any] = {}

    # ------------------------------------------------------------------ defaults
    @property
    def default_extractor(self) -> str:
        return TINY_EXTRACTOR if self.preset == "tiny" else "dinov2-vits14"

    @property
    def default_short_side(self) -> int:
        """Support-image feature resolution: the segmenter's short side (448, as in the paper),
        so prototypes and the images they label are seen at the same scale."""
        return 64 if self.preset == "tiny" else 448

    @property
    def default_generator(self) -> str:
        return TINY_GENERATOR if self.preset == "tiny" else "sd15"

    # ------------------------------------------------------------------ extractors
    def user_extractors(self) -> dict[str, ex.ExtractorSpec]:
        from sqlalchemy import select

        from protodb.catalog.schema import SettingRow

        with self.db.session() as s:
            rows = s.scalars(select(SettingRow).where(SettingRow.key.startswith(_SETTING_PREFIX))).all()
            return {r.key[len(_SETTING_PREFIX):]: ex.spec_from_dict(json.loads(r.value)) for r in rows}

    def extractor_names(self) -> list[str]:
        names = set(ex.builtin_specs()) | set(self.user_extractors())
        if self.preset == "tiny":
            names.add(TINY_EXTRACTOR)
        return sorted(names)

    def extractor_spec(self, name: str) -> ex.ExtractorSpec:
        if name == TINY_EXTRACTOR and self.preset == "tiny":
            if "extractor" not in self._tiny:
                self._tiny["extractor"] = ex.build_tiny_extractor(
                    Path(self.db.home) / "models" / "tiny-vit", name=TINY_EXTRACTOR)
            return self._tiny["extractor"]
        user = self.user_extractors()
        if name in user:
            return user[name]
        builtins = ex.builtin_specs()
        if name in builtins:
            return builtins[name]
        hint = " (tiny-vit needs --preset tiny)" if name == TINY_EXTRACTOR else ""
        raise InvalidInput(
            f"unknown extractor {name!r}{hint}; known: {', '.join(self.extractor_names())} "
            "(add your own: protodb extractor add NAME --onnx FILE ...)"
        )

    def add_user_extractor(self, spec: ex.ExtractorSpec) -> None:
        if spec.name in ex.builtin_specs() or spec.name == TINY_EXTRACTOR:
            raise InvalidInput(f"{spec.name!r} is a built-in extractor name; choose another name")
        self.db.set_setting(_SETTING_PREFIX + spec.name, json.dumps(spec.to_dict(), sort_keys=True))

    def load_extractor(self, spec: ex.ExtractorSpec, device, dtype):
        return ex.load_extractor(spec, device, dtype)

    @staticmethod
    def extractor_record(spec: ex.ExtractorSpec, extractor) -> dict[str, Any]:
        """The catalog row of an extractor: identity = config (minus local paths) + weights hash."""
        portable = {k: v for k, v in spec.config.items() if k not in _LOCAL_KEYS}
        ident = json.dumps({"name": spec.name, "kind": spec.kind, "config": portable,
                            "weights": extractor.weights_hash}, sort_keys=True)
        return {
            "id": hashlib.sha256(ident.encode()).hexdigest(),
            "name": spec.name, "kind": spec.kind, "config": spec.to_dict()["config"],
            "dim": int(extractor.dim), "weights_hash": extractor.weights_hash,
        }

    # ------------------------------------------------------------------ generators
    def generator_spec(self, name: str) -> gen.GeneratorSpec:
        if name == TINY_GENERATOR and self.preset == "tiny":
            if "generator" not in self._tiny:
                self._tiny["generator"] = gen.build_tiny_generator(
                    Path(self.db.home) / "models" / "tiny-generator")
            return self._tiny["generator"]
        builtins = gen.builtin_generators()
        if name in builtins:
            return builtins[name]
        folder = Path(name).expanduser()
        if (folder / "model_index.json").is_file():
            base = builtins["sd15"]
            return base.replace(name=folder.name, model_id=str(folder.resolve()))
        hint = " (tiny needs --preset tiny)" if name == TINY_GENERATOR else ""
        raise InvalidInput(
            f"unknown generator {name!r}{hint}; use one of {', '.join(sorted(builtins))} "
            "or a local diffusers folder (with model_index.json)"
        )

    def load_pipeline(self, spec: gen.GeneratorSpec, device, dtype):
        return gen.load_pipeline(spec, device, dtype)
