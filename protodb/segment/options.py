"""What ``protodb segment`` / ``eval`` were asked (:class:`SegmentOptions`) and what they resolved to
(:class:`SegmentSettings`, frozen, written into every output JSON)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from protodb.errors import InvalidInput
from protodb.features.windows import WindowSpec
from protodb.speed import speed_preset

LEVELS = ("class", "instance", "part")
#: Vocabularies of this many classes or more are matched in two stages by default
#: (:mod:`protodb.segment.shortlist`); below, every class is scored.
TWO_STAGE_MIN_CLASSES = 2000
#: Classes shortlisted per image by default.
DEFAULT_SHORTLIST = 192
CLIP_ENV = "PROTODB_CLIP_MODEL"


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
    runner_up: bool = False  # also the best other column per pixel (confidence; protodb serve turns it on)
    speed: str | None = None  # a speed preset (protodb.speed): its windows, and its dtype where dtype is auto
    bg_margin: float = 0.0  # subtracted from the background column's score before the argmax (clutter)
    vote: int = 1  # a column's score: the mean of its `vote` best prototype cosines (1: the single max)
    exhaustive: bool = False  # score every class (no shortlist) whatever the vocabulary's size
    shortlist: int | None = None  # two-stage matching with this many classes per image (None: by size)

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


def with_speed(opts: SegmentOptions, device) -> SegmentOptions:
    """``opts`` with its speed preset applied: the preset's windows, its segment-time passes (recorded as
    ``speed``; :meth:`protodb.speed.SpeedPreset.segment_extractor`) and its dtype where ``dtype`` is ``auto``.

    Without a preset the default one (:data:`protodb.speed.DEFAULT_SPEED`, the recommended setting) gives the
    passes and the dtype, and ``opts.windows`` stay as given (explicit windows are the caller's; the default
    :class:`WindowSpec` is the default preset's windows)."""
    preset = speed_preset(opts.speed)
    windows = preset.windows(opts.windows) if opts.speed else opts.windows
    return opts.replace(speed=preset.name, windows=windows, dtype=preset.dtype(device, opts.dtype))


def check_options(opts: SegmentOptions) -> tuple[str, ...]:
    """Everything about a request that needs no catalog and no model; returns the levels."""
    levels = parse_levels(opts.levels)
    if opts.speed:
        speed_preset(opts.speed)
    if bool(opts.vocab) == bool(opts.classes):
        raise InvalidInput("give either --vocab NAME or --classes 'cat,dog,boat@3'")
    if not math.isfinite(opts.stuff_threshold) or not -1.0 <= opts.stuff_threshold <= 1.0:
        raise InvalidInput(f"the stuff threshold is a cosine in [-1, 1], got {opts.stuff_threshold}")
    if not math.isfinite(opts.bg_margin) or not -2.0 <= opts.bg_margin <= 2.0:
        raise InvalidInput(f"--bg-margin is a cosine difference in [-2, 2], got {opts.bg_margin}")
    if isinstance(opts.vote, bool) or not isinstance(opts.vote, int) or not 1 <= opts.vote <= 64:
        raise InvalidInput(f"--vote takes 1 to 64 prototypes per class, got {opts.vote}")
    if opts.exhaustive and opts.shortlist is not None:
        raise InvalidInput("give --exhaustive or --shortlist N, not both")
    if opts.shortlist is not None and opts.shortlist < 1:
        raise InvalidInput(f"--shortlist takes a number of classes >= 1; got {opts.shortlist}")
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
    windows: WindowSpec  # resolved for the (first) extractor: the windows it was scored through
    explain: bool
    speed: str | None = None
    bg_margin: float = 0.0
    vote: int = 1
    #: how classes were matched: {"mode": "exhaustive"} or {"mode": "two-stage", "shortlist": N, "queries": K,
    #: "stage1": exact|flat|ivf_pq, "index_state", "index_table", "index_params", "extractor"}
    matching: dict[str, Any] = field(default_factory=lambda: {"mode": "exhaustive"})
    #: when an ensemble's extractors are scored through different windows: {extractor: {sizes, stride, whole}}
    windows_by_extractor: dict[str, Any] = field(default_factory=dict)
    #: per extractor, what one feature call ran: {extractor: {"tile": [size, stride] | None, "mirror": bool}}
    passes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        w = self.windows.resolved()
        return {"levels": list(self.levels), "background": self.background, "prefilter": self.prefilter,
                "clip_model": self.clip_model, "pamr": self.pamr, "device": self.device, "dtype": self.dtype,
                "stuff_threshold": self.stuff_threshold,
                "windows": {"short_side": w.short_side, "sizes": list(w.sizes), "stride": w.stride, "whole": w.whole,
                            "scales": list(w.scales), "subpatch": w.subpatch},
                "explain": self.explain, "bg_margin": self.bg_margin, "vote": self.vote, "matching": dict(self.matching),
                **({"speed": self.speed} if self.speed else {}),
                **({"windows_by_extractor": dict(self.windows_by_extractor)} if self.windows_by_extractor else {}),
                **({"passes": dict(self.passes)} if self.passes else {})}
