"""``add-class`` requests and the one resolved configuration that is their provenance.

An :class:`AddClassRequest` is what a user asked for (many fields optional). :func:`resolve` checks
every input before anything is written and turns it into a frozen :class:`BuildConfig` (generator
spec with its resolved revision, extractor records with weights hashes, k, seed, sizes, segmenter,
mask rules, pipeline and protodb versions), in the manner of diffusers' ``register_to_config``:
the config is stored whole with each set it builds (``SetConfig.to_dict()``) and its canonical
hash is the set's ``config_hash``. ``protodb inspect`` shows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from protodb._version import __version__
from protodb.entities import ExtractorRecord, plain
from protodb.errors import InvalidInput
from protodb.features.plan import SupportFeatures
from protodb.hashing import sha256_json
from protodb.lazy import lazy_import
from protodb.names import normalize_class_name
from protodb.speed import speed_preset
from protodb.thing_stuff import choose_lexicon

np = lazy_import("numpy")
if TYPE_CHECKING:
    from protodb.models.generators import GeneratorSpec

#: Bump when the way prototypes are computed from the same inputs changes (new config hashes).
PIPELINE_VERSION = 2
#: Above this many generated images add-class asks for ``--yes`` (:func:`check_image_count`).
MAX_IMAGES_WITHOUT_CONFIRM = 1024
#: Rough cost of one generated image (seconds on one modern GPU at 512 px, 30 steps) and its bytes,
#: for the refusal of very large builds.
SECONDS_PER_IMAGE, BYTES_PER_IMAGE = 3.3, 600_000
MAX_SEED = 2**31 - 1


def parse_bg_value(text: str | int | None) -> int | None:
    """``--bg-value``: a label value (0..65535) or ``none`` (the label maps have no background label)."""
    if text is None or isinstance(text, int):
        return text
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"--bg-value must be a label value (0..65535) or 'none', got {text!r}") from None
    if not 0 <= value <= 65535:
        raise InvalidInput(f"--bg-value must be a label value (0..65535) or 'none', got {value}")
    return value


def effective_bg_value(mask_value: int | None, bg_value: int | None) -> int | None:
    """The label maps' background value as used: when it is the class's own value (CamVid's sky is 0,
    the default background value) the maps have no background label for this class, so every other
    label is background (None)."""
    return None if mask_value is not None and bg_value == mask_value else bg_value


@dataclass(frozen=True)
class AddClassRequest:
    """What ``protodb add-class`` was asked to build. Defaults follow the OVDiff paper (None: the
    preset's default)."""

    name: str
    images: int | None = None  # generated support images (default: 64; 4 with --preset tiny)
    generator: str | None = None
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    seed: int = 0
    prompt: str | None = None
    negative_prompt: str | None = None
    extractors: Sequence[str] = ()
    exemplars: Path | None = None
    masks: Path | None = None
    mask_value: int | None = None
    bg_value: int | None = 0  # label maps: pixels of this value are background; None: any other label
    exemplar_background: bool = True  # False: exemplar photos give no background prototypes
    kind: str | None = None  # "thing" | "stuff" override
    lexicon: str | None = None  # which lexicon labels a new class without an LLM (protodb.thing_stuff.choose_lexicon)
    k: int | None = None  # part prototypes; None: parts_for(number of support images)
    new_version: bool = False
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    short_side: int | None = None  # feature resolution of support images (default: 448; tiny: 64)
    mask_min_fraction: float = 0.5  # given masks: a patch is foreground when this share of it is
    segmenter: str = "auto"  # unsupervised proposals: auto (a usable plugin, else ncut), ncut, NAME
    mask_tau: float | str | None = None  # ncut affinity threshold: a cosine or "pQ" (percentile); None: 0.2
    mask_extractor: str | None = None  # whose features make the (shared) masks; default: the first
    # support images through segment's windows (False: one pass; None: the speed preset's); a window plan
    # {"sizes", "stride", "whole"} (features.windows.window_plan) featurises them through those windows instead
    support_windows: bool | dict | None = None
    yes: bool = False  # confirm a very large build
    speed: str | None = None  # a speed preset (protodb.speed): support windows and dtype where not given
    with_corrections: bool = False  # add the class's stored corrections as exemplars (with their masks)
    support_from: str | None = None  # a set id: its exemplar images (and given masks) are exemplars again
    augment: Sequence[str] = ()  # more views of each exemplar photo as support images (pipeline.views: zoom, light)

    def replace(self, **changes: Any) -> "AddClassRequest":
        return dataclasses.replace(self, **changes)

    def with_speed(self) -> "AddClassRequest":
        """This request with its speed preset (default :data:`protodb.speed.DEFAULT_SPEED`) resolved:
        ``support_windows`` when None, ``dtype`` when ``auto`` and a preset is named (int8 on CPUs without bf16
        units for ``fast``)."""
        preset = speed_preset(self.speed)
        windows = preset.support_windows if self.support_windows is None else self.support_windows
        dtype = preset.dtype(self.device, self.dtype) if self.speed else self.dtype
        return self.replace(support_windows=windows, dtype=dtype)


@dataclass(frozen=True)
class GenerationConfig:
    """How support images are drawn: the generator (with its resolved revision) and the prompts."""

    spec: GeneratorSpec
    revision: str | None
    images: int
    seed: int
    prompt: str
    negative_prompt: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.spec.to_dict(), "revision": self.revision, "images": self.images,
                "seed": self.seed, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


@dataclass(frozen=True)
class MaskConfig:
    """How support images are split into foreground and background (one mask per image, shared by
    every extractor of the class: made on ``source``'s patch grid)."""

    segmenter: str  # "ncut" or a plugin's name
    segmenter_params: dict[str, Any]
    source: str  # extractor name whose features make the masks
    source_id: str  # its catalog id (the mask rows carry it)
    given_value: int | None
    bg_value: int | None
    min_fraction: float
    exemplar_background: bool

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class ExemplarInput:
    """A real support image as given: file name, decoded image, its mask (and background mask)."""

    path: Path
    image: Any  # PIL.Image.Image, RGB
    mask: Any = None  # (H, W) bool or None
    background: Any = None  # (H, W) bool or None: pixels known to be background
    source: str = "exemplar"  # "exemplar" | "correction" (a stored correction: see protodb corrections ls) | "view"
    corrections: tuple[str, ...] = ()  # the correction ids behind it (provenance, not identity)
    view: str | None = None  # source "view": which view of its photo (pipeline.views, e.g. "zoom-1")

    def digest(self) -> dict[str, Any]:
        out = {"file": self.path.name, "mask": mask_digest(self.mask), "background": mask_digest(self.background)}
        if self.source == "view":
            out.update(source=self.source, view=self.view)
        elif self.source != "exemplar":  # absent for exemplars: sets built before keep their hash
            out.update(source=self.source, corrections=list(self.corrections))
        return out


@dataclass(frozen=True)
class BuildConfig:
    """The resolved add-class configuration (everything that decides what a set holds)."""

    class_name: str
    generation: GenerationConfig | None
    extractors: tuple[ExtractorRecord, ...]
    k: int
    seed: int
    short_side: int
    masks: MaskConfig
    preset: str | None
    new_version: bool = False
    pipeline_version: int = PIPELINE_VERSION
    protodb_version: str = __version__
    exemplars: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    support_windows: dict[str, Any] | None = None  # {"sizes", "stride", "whole"}; None: one pass per image
    augment: tuple[str, ...] = ()  # views of each exemplar photo added as support images (pipeline.views)

    def to_dict(self) -> dict[str, Any]:
        out = {"class": self.class_name, "pipeline_version": self.pipeline_version,
               "protodb_version": self.protodb_version, "preset": self.preset,
               "generation": self.generation.to_dict() if self.generation else None,
               "exemplars": list(self.exemplars), "extractors": [e.to_dict() for e in self.extractors],
               "k": self.k, "seed": self.seed, "short_side": self.short_side, "masks": self.masks.to_dict()}
        if self.support_windows is not None:  # absent for one pass: sets built before keep their hash
            out["support_windows"] = plain(self.support_windows)
        if self.augment:  # absent without views: sets built before keep their hash
            out["augment"] = list(self.augment)
        return out

    @property
    def support_features(self) -> SupportFeatures:
        """How this build featurises its support images (short side, window plan)."""
        return SupportFeatures(self.short_side, self.support_windows)

    def set_config(self, extractor: ExtractorRecord, support: Sequence[str]) -> "SetConfig":
        """The config of the set built for ``extractor`` from support images ``support`` (sha256s)."""
        return SetConfig(self, extractor, tuple(support))


@dataclass(frozen=True)
class SetConfig:
    """What one prototype set was built from: the build config, its extractor and its support images.
    ``to_dict()`` is stored with the set; ``config_hash`` is its canonical hash."""

    build: BuildConfig
    extractor: ExtractorRecord
    support: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = self.build.to_dict()
        out.pop("extractors")
        out["protodb_version"] = None  # provenance, not identity: the same config from a newer protodb
        return {**out, "extractor": self.extractor.to_dict(), "support": list(self.support),
                "built_by": self.build.protodb_version}

    @property
    def config_hash(self) -> str:
        """Canonical hash of :meth:`to_dict` without provenance-only facts (which protodb built it, the
        exemplars' file names, the ids of the corrections behind them): the same inputs under other names
        are the same set."""
        d = self.to_dict()
        d.pop("built_by")
        d["exemplars"] = [{k: v for k, v in e.items() if k not in ("file", "corrections")} for e in d["exemplars"]]
        return sha256_json(d)


def mask_digest(mask) -> str | None:
    """Content hash of a given (H, W) bool mask, so corrected masks make a new set."""
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    return hashlib.sha256(np.packbits(m).tobytes() + str(m.shape).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- defaults
PAPER_PARTS, PAPER_IMAGES = 32, 64  # OVDiff: K = 32 part prototypes from 64 generated images


def parts_for(n_images: int) -> int:
    """The default K: the paper's 32 parts per 64 support images, never fewer than 32 (a class built
    from 123 real photos gets 62, so its parts summarise as many patches each as the paper's do)."""
    return max(PAPER_PARTS, round(PAPER_PARTS * int(n_images) / PAPER_IMAGES))


# ---------------------------------------------------------------------------------------- checks
def check_image_count(images: int, yes: bool) -> None:
    """Refuse more than :data:`MAX_IMAGES_WITHOUT_CONFIRM` generated images per class without ``--yes``
    (the one guard every runner applies before anything starts)."""
    if images > MAX_IMAGES_WITHOUT_CONFIRM and not yes:
        hours = images * SECONDS_PER_IMAGE / 3600
        raise InvalidInput(f"--images {images} would take about {hours:.1f} GPU-hours and "
                           f"{images * BYTES_PER_IMAGE / 2**30:.1f} GiB per class; the limit without --yes is "
                           f"{MAX_IMAGES_WITHOUT_CONFIRM}")


def check_request(req: AddClassRequest) -> str:
    """Everything about a request that needs no model and no file: returns the class name."""
    name = normalize_class_name(req.name)
    if req.images is not None and req.images < 0:
        raise InvalidInput(f"--images must be >= 0, got {req.images}")
    if not 0.0 < req.mask_min_fraction <= 1.0:
        raise InvalidInput(f"--mask-min-fraction must be in (0, 1], got {req.mask_min_fraction}")
    if req.k is not None and req.k < 1:
        raise InvalidInput(f"-k must be >= 1, got {req.k}")
    if req.kind not in (None, "thing", "stuff"):
        raise InvalidInput(f"kind must be thing or stuff, got {req.kind!r}")
    choose_lexicon(req.lexicon)  # one line for an unknown lexicon, before any work
    if not 0 <= req.seed <= MAX_SEED:
        raise InvalidInput(f"--seed must be between 0 and {MAX_SEED}, got {req.seed}")
    if req.guidance is not None and (not math.isfinite(req.guidance) or req.guidance < 0):
        raise InvalidInput(f"--guidance must be a finite number >= 0, got {req.guidance}")
    if req.steps is not None and req.steps < 1:
        raise InvalidInput(f"--steps must be >= 1, got {req.steps}")
    if req.size is not None and (req.size < 8 or req.size % 8):
        raise InvalidInput(f"--size must be a positive multiple of 8, got {req.size}")
    if req.batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {req.batch_size}")
    if req.short_side is not None and not 16 <= req.short_side <= 4096:
        raise InvalidInput(f"short side must be between 16 and 4096 pixels, got {req.short_side}")
    if req.mask_tau is not None:
        from protodb.pipeline.masks import parse_tau  # deferred: torch

        parse_tau(req.mask_tau)
    if req.mask_value is not None and not 0 <= req.mask_value <= 65535:
        raise InvalidInput(f"--mask-value must be a label value 0..65535, got {req.mask_value}")
    if req.masks is not None and req.exemplars is None:
        raise InvalidInput("--masks needs --exemplars (masks are matched to exemplars by file stem)")
    if req.masks is None and req.mask_value is not None:
        raise InvalidInput("--mask-value needs --masks")
    return name


def rebuild_request(name: str, config: dict[str, Any] | None, params: dict[str, Any] | None, *, set_id: str,
                    extractor: str, **changes: Any) -> AddClassRequest:
    """The request that builds ``name`` again as its set ``set_id`` was built (``config``: the set's stored
    config; ``params``: its params), plus ``changes`` (``with_corrections=True`` for ``teach``): the same
    generated images (found stored, not drawn again), the same exemplars (taken from the set's stored
    support), extractor, seed, sizes and mask rules; K as chosen (``-k``) or, when it was the default, the
    default for the new support's size."""
    config, params = config or {}, params or {}
    gen = config.get("generation") or None
    masks = config.get("masks") or {}
    windows = config.get("support_windows", params.get("support_windows"))
    fields: dict[str, Any] = dict(name=name, images=0, seed=int(config.get("seed", params.get("seed", 0)) or 0),
                                  extractors=(extractor,), support_from=set_id,
                                  short_side=config.get("short_side") or params.get("short_side"),
                                  support_windows=windows is not None)
    if gen:
        spec = gen.get("generator") or {}
        generator = spec.get("name")
        model_id = str(spec.get("model_id") or "")
        if generator not in (None, "tiny") and Path(model_id).is_dir():
            generator = model_id
        fields.update(images=int(gen.get("images") or 0), seed=int(gen.get("seed") or 0), generator=generator,
                      steps=spec.get("steps"), guidance=spec.get("guidance"), size=spec.get("width"),
                      prompt=gen.get("prompt") or None, negative_prompt=gen.get("negative_prompt") or "")
    k, support = config.get("k"), config.get("support")
    if k is not None and support is not None and int(k) != parts_for(len(support)):
        fields["k"] = int(k)  # a K the user chose stays; the default rule follows the new support's size
    if masks:
        fields.update(mask_min_fraction=float(masks.get("min_fraction", 0.5)),
                      exemplar_background=bool(masks.get("exemplar_background", True)),
                      segmenter=masks.get("segmenter") or "auto")
    if config.get("augment"):
        fields["augment"] = tuple(config["augment"])  # the views are made again from the carried photos
    fields.update(changes)
    return AddClassRequest(**fields)


def prompt_template(name: str, prompt: str) -> str:
    """A user's ``--prompt`` as a template with ``{name}`` (the class name itself may stand for it)."""
    template = prompt
    if "{name}" not in template:
        template, n = re.subn(re.escape(name), "{name}", template, flags=re.IGNORECASE)
        if not n:
            raise InvalidInput(f"--prompt must contain the class name or '{{name}}': {prompt!r}")
    try:
        template.format(name=name)
    except (KeyError, IndexError, ValueError):
        raise InvalidInput(f"--prompt may hold no other {{...}} field than {{name}}: {prompt!r}") from None
    return template


def generator_changes(req: AddClassRequest, name: str) -> dict[str, Any]:
    """The fields of the generator spec a request overrides."""
    changes: dict[str, Any] = {}
    if req.steps is not None:
        changes["steps"] = req.steps
    if req.guidance is not None:
        changes["guidance"] = req.guidance
    if req.size is not None:
        changes["width"] = changes["height"] = req.size
    if req.prompt is not None:
        changes["prompt_template"] = prompt_template(name, req.prompt)
    if req.negative_prompt is not None:
        changes["negative_prompt"] = req.negative_prompt or None
    return changes
