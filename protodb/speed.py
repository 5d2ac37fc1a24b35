"""Speed presets: named trade-offs between segment/build cost and quality, as data.

A preset fixes what costs extractor passes without changing which prototypes match which features: the
windows segment scores (sizes, whole image), the passes one feature call runs at segment time (a tiled
extractor's tile stride, a mirroring extractor's mirror pass: :meth:`protodb.models.extractors.base.Extractor.
lighter`), whether support images are featurised through the windows at build time, and the compute dtype on
the CPU. It never changes the prototypes' extractor (a lighter view is the same model on tiles of the same
size), so one database serves every preset.

==========  ==========================================  ===========================  ===============  ===========================
preset      segment windows                             segment passes               support features dtype (``--dtype auto``)
==========  ==========================================  ===========================  ===============  ===========================
best        the extractor's windows + the whole image,  no mirror pass               through windows  bf16 with bf16 units, else
            each sampled 2x2 times (sub-patch shifts)                                                  fp32
balanced    the extractor's windows + the whole image   no mirror pass               through windows  the same
fast        the whole image only                        tiles side by side, no       through windows  int8 on CPUs without bf16
                                                        mirror pass                                    units
==========  ==========================================  ===========================  ===============  ===========================

The default (no ``--speed``: :data:`DEFAULT_SPEED`) is ``balanced``, the recommended setting: the best
leave-one-drive-out mean within the speed budget (#19: at least 5x cheaper per photo than the previous
recommendation). Without a named preset, segment takes the default's passes and dtype but keeps windows given
explicitly.

Chosen by the leave-one-drive-out mean (README; ``focus-vits14-tiles-flip -k 128``, whose tokens are the last
block's; the recommended extractor is now ``focus-vits14-tiles-flip-l4``, the last four blocks': 41.23 with
``balanced``): skipping the mirror pass
at segment time (prototypes keep it) scores 39.82 against 39.84 with it, at half the passes; sub-patch sampling
adds 1.09 (40.91) at 4x the passes, so it is ``best``, not the default; tiles side by side instead of at stride
112 cost 3.2 (36.59 with the mirror, 36.21 without), so only ``fast`` lays them so.

The extractor's windows (:meth:`protodb.features.windows.WindowSpec.resolved`): a tiled extractor's own tiles
(224 at stride 112 for ``focus-vits14-tiles-flip`` and ``-l4``), else squares of 448 and 336 at stride 224.

An explicit ``--dtype`` other than ``auto`` always wins over the preset's. Each preset's quality (CamVid val and
the leave-one-drive-out mean) and cost per photo are in the README table, measured by
``benchmarks/bench_speed.py`` and ``benchmarks/bench_camvid.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from protodb.errors import InvalidInput
from protodb.features.windows import WindowSpec


@dataclass(frozen=True)
class SpeedPreset:
    """``sizes``/``whole``: segment's window sizes (None: the extractor's windows) and whole-image pass;
    ``support_windows``: support images
    through those windows (False: one pass); ``int8_without_bf16``: ``--dtype auto`` means int8 on a CPU
    without bf16 units; ``tiles_touch``: a tiled extractor's tiles at segment time do not overlap (stride =
    tile size, not the configured stride); ``mirror``: False skips a mirroring extractor's mirror pass at
    segment time. The last two change segment's passes only (:meth:`protodb.models.extractors.base.
    Extractor.lighter`), never the support features: prototypes stay the extractor's own."""

    name: str
    description: str
    sizes: tuple[int, ...] | None
    whole: bool
    support_windows: bool
    int8_without_bf16: bool
    tiles_touch: bool = False
    mirror: bool = True
    subpatch: int | None = None  # segment samples the patch grid n x n times (None: as the caller asks)

    def windows(self, base: WindowSpec | None = None) -> WindowSpec:
        """``base`` (scales and short side kept) with this preset's window sizes, whole pass and, where it sets
        one, sub-patch sampling."""
        spec = dataclasses.replace(base or WindowSpec(), sizes=self.sizes, whole=self.whole)
        return spec if self.subpatch is None else dataclasses.replace(spec, subpatch=self.subpatch)

    def dtype(self, device, requested: str = "auto") -> str:
        """The dtype to run with on ``device`` (a torch device or its name, ``auto`` included): ``requested``
        unless it is ``auto``; then int8 where this preset asks for it (CPU without bf16 units), else ``auto``."""
        if (requested or "auto").lower() != "auto":
            return requested
        if not self.int8_without_bf16:
            return "auto"
        from protodb.device import choose_device, cpu_has_fast_bf16  # deferred: torch

        cpu = choose_device(str(device)).type == "cpu"
        return "int8" if cpu and not cpu_has_fast_bf16() else "auto"

    def segment_extractor(self, extractor):
        """The view of a loaded extractor segment runs with this preset (itself when nothing changes)."""
        if not self.tiles_touch and self.mirror:
            return extractor
        tile = getattr(extractor, "tile", None)
        lighter = getattr(extractor, "lighter", None)
        if lighter is None:
            return extractor
        return lighter(tile_stride=tile[0] if (self.tiles_touch and tile is not None) else None, mirror=self.mirror)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "sizes": None if self.sizes is None else list(self.sizes), "whole": self.whole,
                "support_windows": self.support_windows, "int8_without_bf16": self.int8_without_bf16,
                "tiles_touch": self.tiles_touch, "mirror": self.mirror, "subpatch": self.subpatch}


PRESETS: dict[str, SpeedPreset] = {p.name: p for p in (
    SpeedPreset("best", "every window sampled 2x2 times (sub-patch shifts of half a patch: score maps at half the "
                "patch stride), no mirror pass at segment time: the best LODO mean, 4x balanced's passes", None, True,
                True, False, mirror=False, subpatch=2),
    SpeedPreset("balanced", "every window without the mirror pass at segment time (the prototypes keep it): the "
                "recommended setting and the default, the same LODO mean as with the mirror pass at half the passes",
                None, True, True, False, mirror=False),
    SpeedPreset("fast", "the whole image only, a tiled extractor's tiles side by side, no mirror pass, int8 linear "
                "layers on CPUs without bf16", (), True, True, True, tiles_touch=True, mirror=False),
)}
DEFAULT_SPEED = "balanced"  # the recommended setting: the best LODO mean within #19's speed budget


def speed_preset(name: str | None) -> SpeedPreset:
    """The preset called ``name`` (None: :data:`DEFAULT_SPEED`); one clear error for any other name."""
    key = (name or DEFAULT_SPEED).lower()
    if key not in PRESETS:
        raise InvalidInput(f"unknown speed preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[key]
