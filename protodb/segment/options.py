"""What ``protodb segment`` / ``eval`` were asked (:class:`SegmentOptions`) and what they resolved to
(:class:`SegmentSettings`, frozen, written into every output JSON)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from protodb.errors import InvalidInput

LEVELS = ("class", "instance", "part")
MAX_SUBPATCH = 4  # 16 extractor passes per window
CLIP_ENV = "PROTODB_CLIP_MODEL"


@dataclass(frozen=True)
class WindowSpec:
    """``short_side``: side the image's short side is resized to (None: keep the size); ``sizes``: square
    window sides in resized pixels (clamped to the image); ``stride``: window step in resized pixels;
    ``whole``: also score the whole resized image as one window; ``batch``: crops per extractor call;
    ``scales``: extra passes at ``short_side * scale``, averaged; ``subpatch``: sample the patch grid n
    times per axis (n x n shifted passes per window, score maps at stride patch/n: thin objects)."""

    short_side: int | None = 448
    sizes: tuple[int, ...] = (448, 336)
    stride: int = 224
    whole: bool = True
    batch: int = 8
    scales: tuple[float, ...] = (1.0,)  # extra passes at short_side * scale (finer detail), averaged
    subpatch: int = 1

    def at_scales(self) -> list["WindowSpec"]:
        """One spec per scale: the same windows over the image resized to ``short_side * scale``."""
        if self.scales == (1.0,) or self.short_side is None:
            return [self]
        return [dataclasses.replace(self, short_side=int(round(self.short_side * s)), scales=(1.0,))
                for s in self.scales]

    def check(self) -> "WindowSpec":
        if not self.sizes and not self.whole:
            raise InvalidInput("window spec has no window sizes and whole=False: nothing would be scored")
        if not 1 <= int(self.subpatch) <= MAX_SUBPATCH:
            raise InvalidInput(f"--subpatch takes 1 to {MAX_SUBPATCH} (n x n extractor passes per window); "
                               f"got {self.subpatch}")
        if not self.scales or any(not 0.25 <= s <= 4 for s in self.scales):
            raise InvalidInput(f"window scales must be between 0.25 and 4; got {self.scales}")
        if self.stride <= 0 or any(s <= 0 for s in self.sizes) or (self.short_side is not None and self.short_side <= 0):
            raise InvalidInput(f"window sizes, stride and short side must be positive; got {self.sizes} / "
                               f"{self.stride} / {self.short_side}")
        return self


@dataclass(frozen=True)
class SegmentOptions:
    """A segment request. None fields take the vocabulary's or the environment's default."""

    vocab: str | None = None
    classes: str | None = None
    extractors: Sequence[str] = ()
    levels: Sequence[str] | str = LEVELS
    background: bool | None = None  # None: the vocabulary's own setting (True for user vocabularies)
    prefilter: bool | None = None  # None: on when a CLIP model is configured
    clip_model: str | None = None
    pamr: bool = False
    device: str = "auto"
    dtype: str = "auto"
    stuff_threshold: float = 0.85
    windows: WindowSpec = field(default_factory=WindowSpec)
    explain: bool = False
    skip_missing: bool = False  # segment with the usable classes when some have no prototypes
    preset: str | None = None  # a preset's pre-filter model (``paper``: CLIP ViT-B/16) unless clip_model

    def replace(self, **changes: Any) -> "SegmentOptions":
        return dataclasses.replace(self, **changes)


def parse_levels(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in LEVELS]
    if bad or not items:
        raise InvalidInput(f"--levels takes a comma list of {', '.join(LEVELS)}; got {text!r}")
    return tuple(dict.fromkeys(items))


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,1.5"`` -> (1.0, 1.5); InvalidInput for anything else."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        scales = tuple(float(v) for v in items if str(v).strip())
    except ValueError:
        scales = ()
    if not scales or any(not 0.25 <= s <= 4 for s in scales):
        raise InvalidInput(f"--scales takes a comma list of numbers between 0.25 and 4 (e.g. 1,1.5); got {text!r}")
    return scales


def clip_model_from(opts: SegmentOptions) -> str | None:
    return opts.clip_model or os.environ.get(CLIP_ENV) or None


def check_options(opts: SegmentOptions) -> tuple[str, ...]:
    """Everything about a request that needs no catalog and no model; returns the levels."""
    levels = parse_levels(opts.levels)
    if bool(opts.vocab) == bool(opts.classes):
        raise InvalidInput("give either --vocab NAME or --classes 'cat,dog,boat@3'")
    if not math.isfinite(opts.stuff_threshold) or not -1.0 <= opts.stuff_threshold <= 1.0:
        raise InvalidInput(f"the stuff threshold is a cosine in [-1, 1], got {opts.stuff_threshold}")
    if opts.prefilter and not clip_model_from(opts):
        raise InvalidInput(f"the CLIP pre-filter needs a model: --clip-model PATH_OR_ID or {CLIP_ENV}")
    return levels


@dataclass(frozen=True)
class SegmentSettings:
    """The resolved settings of a segment run (the provenance of every output)."""

    levels: tuple[str, ...]
    background: bool
    prefilter: bool
    clip_model: str | None
    pamr: bool
    device: str
    dtype: str
    stuff_threshold: float
    windows: WindowSpec
    explain: bool

    def to_dict(self) -> dict[str, Any]:
        w = self.windows
        return {"levels": list(self.levels), "background": self.background, "prefilter": self.prefilter,
                "clip_model": self.clip_model, "pamr": self.pamr, "device": self.device, "dtype": self.dtype,
                "stuff_threshold": self.stuff_threshold,
                "windows": {"short_side": w.short_side, "sizes": list(w.sizes), "stride": w.stride, "whole": w.whole,
                            "scales": list(w.scales), "subpatch": w.subpatch},
                "explain": self.explain}
