"""More views of each exemplar photo: support augmentation for few-shot classes (``add-class --augment``).

A class built from one or two real photos has prototypes from one scale and one light. ``--augment``
adds derived views of every exemplar as further support images, each with its masks cut and resized the
same way (nearest neighbour), so the prototypes also see the class larger (``zoom``) or in other light
(``light``). Views are support images like any other (stored, masked, featurised, clustered) whose
``source`` is ``"view"`` and whose origin names the photo and the view (``dog.jpg#zoom-1``); the build
config records which views were asked for and each view's digest, so the same request gives the same set.

Views (:data:`VIEWS`):

- ``zoom``: two crops of 2/3 of the photo's width and height (4/9 of its area) at positions drawn from a
  seeded generator (the build seed and the photo's content), resized back to the photo's size: the
  objects 1.5x larger, as a closer photo would show them;
- ``light``: a darker, lower-contrast, bluer view (gamma 1.6) and a brighter, washed-out, warmer one
  (gamma 0.7, saturation 0.7): the photo under dusk and noon light.

A view whose class mask is empty (a zoom that missed the object) is left out, as an exemplar with an
empty mask is.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image

from protodb.errors import InvalidInput
from protodb.pipeline.config import ExemplarInput

ZOOM_SIDE = 2 / 3  # the crop's share of each side: objects 1.5x larger
ZOOM_VIEWS = 2


def _resize_mask(mask: np.ndarray | None, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray | None:
    """``mask`` (H, W) bool cut to ``box`` (left, top, right, bottom) and resized to ``size`` (W, H), nearest."""
    if mask is None:
        return None
    left, top, right, bottom = box
    crop = PIL.Image.fromarray(np.asarray(mask, dtype=np.uint8)[top:bottom, left:right] * 255)
    return np.asarray(crop.resize(size, PIL.Image.NEAREST)) > 127


def _seed(ex: ExemplarInput, seed: int) -> int:
    """A generator seed from the build seed and the photo's pixels (the same photo, the same crops)."""
    h = hashlib.sha256(str(seed).encode())
    h.update(np.asarray(ex.image, dtype=np.uint8).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def zoom_views(ex: ExemplarInput, seed: int) -> list[tuple[str, ExemplarInput]]:
    """:data:`ZOOM_VIEWS` crops of :data:`ZOOM_SIDE` of each side, resized back to the photo's size."""
    W, H = ex.image.size
    w, h = max(1, round(W * ZOOM_SIDE)), max(1, round(H * ZOOM_SIDE))
    rng = np.random.default_rng(_seed(ex, seed))
    out = []
    for i in range(ZOOM_VIEWS):
        left, top = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        box = (left, top, left + w, top + h)
        image = ex.image.crop(box).resize((W, H), PIL.Image.BICUBIC)
        out.append((f"zoom-{i + 1}", dataclasses.replace(
            ex, image=image, mask=_resize_mask(ex.mask, box, (W, H)),
            background=_resize_mask(ex.background, box, (W, H)))))
    return out


def _relight(image: PIL.Image.Image, gamma: float, contrast: float, saturation: float,
             tint: tuple[float, float, float]) -> PIL.Image.Image:
    a = (np.asarray(image.convert("RGB"), dtype=np.float32) / 255) ** gamma
    a = contrast * a + (1 - contrast) * a.mean()
    a = saturation * a + (1 - saturation) * a.mean(axis=-1, keepdims=True)
    a = a * np.asarray(tint, dtype=np.float32)
    return PIL.Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


LIGHTS = {"dusk": dict(gamma=1.6, contrast=0.85, saturation=1.0, tint=(0.92, 0.97, 1.06)),
          "noon": dict(gamma=0.7, contrast=1.0, saturation=0.7, tint=(1.05, 1.0, 0.93))}


def light_views(ex: ExemplarInput, seed: int) -> list[tuple[str, ExemplarInput]]:
    """The photo under :data:`LIGHTS` (same geometry: the masks are the photo's)."""
    return [(f"light-{name}", dataclasses.replace(ex, image=_relight(ex.image, **params)))
            for name, params in LIGHTS.items()]


#: View name -> function(exemplar, build seed) -> [(view id, exemplar of the view)].
VIEWS: dict[str, Callable[[ExemplarInput, int], list[tuple[str, ExemplarInput]]]] = {
    "zoom": zoom_views, "light": light_views}


def check_views(names) -> tuple[str, ...]:
    """The view names asked for, checked (one line naming the choices), in registry order, once each."""
    names = tuple(names or ())
    bad = [n for n in names if n not in VIEWS]
    if bad:
        raise InvalidInput(f"unknown --augment view {bad[0]!r}; choose from {', '.join(VIEWS)}")
    return tuple(n for n in VIEWS if n in names)


def with_views(exemplars: list[ExemplarInput], names, seed: int) -> list[ExemplarInput]:
    """``exemplars`` followed by the views ``names`` of each photo exemplar (not of corrections or views);
    views whose class mask is empty are left out."""
    names = check_views(names)
    out = list(exemplars)
    for ex in exemplars:
        if ex.source != "exemplar":
            continue
        for name in names:
            for view, vex in VIEWS[name](ex, seed):
                if vex.mask is not None and not np.asarray(vex.mask).any():
                    continue  # the crop missed the object
                out.append(dataclasses.replace(vex, path=Path(f"{ex.path.name}#{view}"), source="view", view=view))
    return out


__all__ = ["VIEWS", "check_views", "light_views", "with_views", "zoom_views"]
