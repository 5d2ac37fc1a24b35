"""How a prototype set's support images were featurised, read back from what the build resolved.

A build resolves the feature short side and the support window plan once (``BuildConfig.short_side``,
``BuildConfig.support_windows``) and stores them in the set's config. Everything that later needs the
support images' patch grid — segment's explanations, inspect's traces, a bundle's region checks — reads
them here, never a default of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protodb.features.windows import WindowSpec, feature_size, support_window_spec


#: The short side of a set that records none (committed through the API without a build config): the
#: resolution protodb's builds and segmenting default to.
UNRECORDED_SHORT_SIDE = 448


@dataclass(frozen=True)
class SupportFeatures:
    """``short_side``: support images were resized so their short side is this (pixels); ``windows``: the
    recorded window plan (``{"sizes", "stride", "whole"}``) or None for one pass per image."""

    short_side: int
    windows: dict[str, Any] | None = None

    @classmethod
    def of(cls, config: dict | None, params: dict | None = None) -> "SupportFeatures":
        """From a set's stored build ``config``; sets written before configs were stored recorded the same
        values in ``params``. A set that records neither was committed through the API without a build
        (``SetService.commit``): it is taken at :data:`UNRECORDED_SHORT_SIDE`, one pass per image — the one
        place this is assumed."""
        for source in (config, params):
            if source and source.get("short_side"):
                return cls(int(source["short_side"]), source.get("support_windows") or None)
        return cls(UNRECORDED_SHORT_SIDE, None)

    def window_spec(self) -> WindowSpec | None:
        """The support windows as a :class:`WindowSpec` on images at their feature size (None: one pass)."""
        return support_window_spec(self.windows)

    def feature_size(self, width: int, height: int, patch: int) -> tuple[int, int]:
        """(H, W) pixels a (width x height) support image was featurised at."""
        return feature_size(width, height, self.short_side, patch)

    def grid(self, width: int, height: int, patch: int) -> tuple[int, int]:
        """(rows, cols) of a (width x height) support image's patch grid."""
        h, w = self.feature_size(width, height, patch)
        return h // patch, w // patch
