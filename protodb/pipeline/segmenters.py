"""Unsupervised segmenters that propose object regions in support images.

Built in: ``ncut`` (MaskCut-style normalised cut on the extractor's patch features; no weights).
Plugins: any installed package can add one through the entry-point group ``protodb.segmenters``
(e.g. a CutLER plugin). An entry point names an object with::

    name: str                       # "cutler"
    def available() -> bool         # e.g. its checkpoint (PROTODB_CUTLER_CHECKPOINT) exists
    def params() -> dict            # recorded with every mask it makes (checkpoint hash, thresholds)
    def segment(image: PIL.Image.Image, grid: tuple[int, int]) -> list[np.ndarray]
        # up to a few (h, w) bool proposals on the extractor's patch grid, most object-like first

``--segmenter auto`` (the default) uses the first plugin that is installed AND available, else
``ncut``; ``--segmenter NAME`` insists on one. The catalog records which one made each mask.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from protodb.errors import InvalidInput

GROUP = "protodb.segmenters"
log = logging.getLogger(__name__)


def plugins() -> dict[str, Any]:
    """Installed segmenter plugins by name (loaded lazily from their entry points)."""
    found = {}
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not break protodb
            log.warning("segmenter plugin %s (%s) cannot be loaded, skipped: %s: %s", ep.name, ep.value,
                        type(err).__name__, err)
            continue
        found[getattr(obj, "name", ep.name)] = obj
    return found


def choose(name: str = "auto"):
    """The plugin object to use, or None for the built-in normalised cut."""
    if name == "ncut":
        return None
    found = plugins()
    if name == "auto":
        for plugin in found.values():
            try:
                if plugin.available():
                    log.info("using segmenter plugin %s", getattr(plugin, "name", plugin))
                    return plugin
                log.info("segmenter plugin %s is installed but not usable (checkpoint?); skipped", plugin.name)
            except Exception as err:  # noqa: BLE001
                log.warning("segmenter plugin %s failed its availability check, skipped: %s", plugin, err)
                continue
        return None
    if name not in found:
        raise InvalidInput(f"unknown segmenter {name!r}; installed: ncut"
                           + "".join(f", {n}" for n in sorted(found)))
    if not found[name].available():
        raise InvalidInput(f"segmenter {name!r} is installed but not usable (missing checkpoint?); "
                           "use --segmenter ncut")
    return found[name]
