"""Name -> model resolution for one database: built-ins, the user's own, and offline presets.

* Extractors: the built-in JSON registry (``protodb/data/extractors.json``), extractors a user
  added with ``protodb extractor add`` (stored as data in the catalog's settings), and with
  ``--preset tiny`` a tiny random-weight ViT (``tiny-vit``).
* Generators: the built-in registry (``sd15``, ``sd-turbo``, ``lcm-sd15``), any local diffusers
  folder, and with ``--preset tiny`` a tiny random-weight Stable Diffusion (``tiny``).

Presets are data (:data:`PRESETS`): each names its default generator, extractors, support-image
resolution and image count. The tiny preset's models are built once into ``HOME/models/`` and
loaded back through the same code as real weights; what they produce is NOT meaningful.
Model files a database built itself are recorded relative to its home, so a copied database
(``cp -a``) loads its own copy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from protodb.entities import Damage, ExtractorRecord
from protodb.errors import DamagedData, InvalidInput
from protodb.hashing import persist_file_hashes, sha256_file, sha256_json
from protodb.models import extractors as ex
from protodb.models.extractors.loading import load_extractor
from protodb.models import generators as gen
from protodb.models import tiny
from protodb.models.extractors.spec import LOCAL_KEYS, resolve_file, resolve_paths
from protodb.stores import Stores

log = logging.getLogger(__name__)

TINY_EXTRACTOR, TINY_GENERATOR = "tiny-vit", "tiny"
_SETTING_PREFIX = "extractor:"


@dataclass(frozen=True)
class Preset:
    """Defaults a preset sets for ``add-class`` (and the pre-filter model for ``segment``)."""

    name: str
    generator: str
    extractors: tuple[str, ...]
    images: int
    short_side: int
    clip_model: str | None = None
    mask_extractor: str | None = None  # whose features make the shared masks (default: the first)


PRESETS: dict[str, Preset] = {
    # SD 1.5 (64 images, 30 steps), DINOv2 ViT-S/14 features
    "default": Preset("default", "sd15", ("dinov2-vits14",), 64, 448),
    # a tiny random-weight generator and extractor built locally (offline, seconds; results NOT meaningful)
    "tiny": Preset("tiny", TINY_GENERATOR, (TINY_EXTRACTOR,), 4, 64),
    # What OVDiff reports 67.1 mIoU on PASCAL VOC with: SD 1.5 draws 64 images (30 steps, guidance 8);
    # SD, DINO ViT-B/8 keys and CLIP ViT-B/16 keys (layer -2) are averaged; K = 32 (parts_for(64)); the CLIP
    # ViT-B/16 pre-filter. Masks come from DINO's features (what MaskCut/CutLER cut on).
    "paper": Preset("paper", "sd15", ("sd15", "dino-vitb8", "clip-vitb16"), 64, 448,
                    clip_model="openai/clip-vit-base-patch16", mask_extractor="dino-vitb8"),
}


class ModelRegistry:
    """Extractors and generators one database can use, by name."""

    def __init__(self, stores: Stores, preset: str | None = None):
        if preset is not None and preset not in PRESETS:
            raise InvalidInput(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        self.stores = stores
        self.preset = preset
        persist_file_hashes(stores.cache_dir / "file-hashes.json")  # weight files hashed once, not per run
        self._defaults = PRESETS[preset or "default"]
        self._tiny: dict[str, object] = {}

    # ------------------------------------------------------------------ defaults
    @property
    def default_extractors(self) -> tuple[str, ...]:
        return self._defaults.extractors

    @property
    def default_short_side(self) -> int:
        """Support-image feature resolution: the segmenter's short side (448, as in the paper),
        so prototypes and the images they label are seen at the same scale."""
        return self._defaults.short_side

    @property
    def default_generator(self) -> str:
        return self._defaults.generator

    @property
    def default_images(self) -> int:
        return self._defaults.images

    @property
    def default_clip_model(self) -> str | None:
        return self._defaults.clip_model

    @property
    def default_mask_extractor(self) -> str | None:
        return self._defaults.mask_extractor

    # ------------------------------------------------------------------ extractors
    def user_extractors(self) -> dict[str, ex.ExtractorSpec]:
        return {name: ex.spec_from_dict(json.loads(value))
                for name, value in self.stores.settings.with_prefix(_SETTING_PREFIX).items()}

    def extractor_names(self) -> list[str]:
        names = set(ex.builtin_specs()) | set(self.user_extractors())
        if self.preset == "tiny":
            names.add(TINY_EXTRACTOR)
        return sorted(names)

    def extractor_spec(self, name: str) -> ex.ExtractorSpec:
        if name == TINY_EXTRACTOR and self.preset == "tiny":
            if "extractor" not in self._tiny:
                self._tiny["extractor"] = tiny.build_tiny_extractor(
                    self.stores.models_dir / "tiny-vit", name=TINY_EXTRACTOR, relative_to=self.stores.home)
            return self._tiny["extractor"]  # type: ignore[return-value]
        user = self.user_extractors()
        if name in user:
            return user[name]
        builtins = ex.builtin_specs()
        if name in builtins:
            return builtins[name]
        hint = " (tiny-vit needs --preset tiny)" if name == TINY_EXTRACTOR else ""
        raise InvalidInput(f"unknown extractor {name!r}{hint}; known: {', '.join(self.extractor_names())} "
                           "(add your own: protodb extractor add NAME --onnx FILE ...)")

    def add_user_extractor(self, spec: ex.ExtractorSpec) -> None:
        if spec.name in ex.builtin_specs() or spec.name == TINY_EXTRACTOR:
            raise InvalidInput(f"{spec.name!r} is a built-in extractor name; choose another name")
        self.stores.settings.set(_SETTING_PREFIX + spec.name, json.dumps(spec.to_dict(), sort_keys=True))

    def load_extractor(self, spec: ex.ExtractorSpec, device, dtype, *, expect_weights: str | None = None):
        """Load ``spec`` (relative model paths resolved under the database home). ``expect_weights``:
        the weights hash the catalog recorded; other weights are DamagedData (one line)."""
        extractor = load_extractor(resolve_paths(spec, self.stores.home), device, dtype)
        if expect_weights and extractor.weights_hash != expect_weights:
            raise DamagedData(f"extractor {spec.name}: its weights do not match the hash recorded when its sets "
                              f"were built ({extractor.weights_hash[:12]} != {expect_weights[:12]}); the model "
                              "files were changed or damaged; run: protodb verify")
        return extractor

    @staticmethod
    def extractor_record(spec: ex.ExtractorSpec, extractor) -> ExtractorRecord:
        """The catalog row of an extractor: identity = config (minus local paths) + weights hash."""
        portable = {k: v for k, v in spec.config.items() if k not in LOCAL_KEYS}
        ident = sha256_json({"name": spec.name, "kind": spec.kind, "config": portable,
                             "weights": extractor.weights_hash})
        return ExtractorRecord(id=ident, name=spec.name, kind=spec.kind, config=spec.to_dict()["config"],
                               dim=int(extractor.dim), weights_hash=extractor.weights_hash)

    # ------------------------------------------------------------------ generators
    def generator_spec(self, name: str) -> gen.GeneratorSpec:
        if name == TINY_GENERATOR and self.preset == "tiny":
            if "generator" not in self._tiny:
                self._tiny["generator"] = tiny.build_tiny_generator(self.stores.models_dir / "tiny-generator")
            return self._tiny["generator"]  # type: ignore[return-value]
        builtins = gen.builtin_generators()
        if name in builtins:
            return builtins[name]
        folder = Path(name).expanduser()
        if (folder / "model_index.json").is_file():
            return builtins["sd15"].replace(name=folder.name, model_id=str(folder.resolve()))
        hint = " (tiny needs --preset tiny)" if name == TINY_GENERATOR else ""
        raise InvalidInput(f"unknown generator {name!r}{hint}; use one of {', '.join(sorted(builtins))} "
                           "or a local diffusers folder (with model_index.json)")

    def load_pipeline(self, spec: gen.GeneratorSpec, device, dtype):
        return gen.load_pipeline(spec, device, dtype)


def local_weight_file(spec: ex.ExtractorSpec, home: Path) -> Path | None:
    """The one local file whose sha256 is the extractor's ``weights_hash`` (a timm/tiny ``checkpoint``,
    an ONNX ``path``, the ONNX a ``dinov2`` was converted from), or None when the weights are elsewhere
    (hub cache, folders) or not on this machine."""
    resolved = resolve_paths(spec, home)
    key = {"timm": "checkpoint", "tiny": "checkpoint", "onnx": "path", "dinov2": "onnx"}.get(spec.kind)
    if key is None or not resolved.config.get(key):
        return None
    try:
        return resolve_file(resolved, key)
    except InvalidInput:
        return None


def check_weights(records: list[ExtractorRecord], home: Path) -> tuple[int, list[Damage]]:
    """Re-hash every local weight file of ``records`` against its recorded ``weights_hash`` (files that
    are not on this machine are not checked: loading them would fail with its own message)."""
    checked, damage = 0, []
    for rec in records:
        if rec.kind not in ex.KINDS:
            log.debug("extractor %s of kind %s has no weight files protodb knows", rec.name, rec.kind)
            continue
        spec = ex.spec_from_dict({"name": rec.name, "kind": rec.kind, "config": rec.config})
        path = local_weight_file(spec, home)
        if path is None or not rec.weights_hash or not path.is_file():
            continue  # weights not on this machine (another member of a shared catalog): nothing to compare
        checked += 1
        if sha256_file(path, memo=False) != rec.weights_hash:
            damage.append(Damage("model", rec.id, f"weights file {path} does not match the recorded hash "
                                                  "(changed or damaged)", name=rec.name))
    return checked, damage
