"""Window plans: how an image is cut for an extractor, shared by building prototypes and segmenting.

A :class:`WindowSpec` says how an image is resized (``short_side``) and which square windows slide over
it (sizes, stride, the whole image, scales, sub-patch sampling). :func:`plan_windows` turns a spec into
the windows of one image (pure planning, no torch); :func:`protodb.features.crops.window_calls` cuts them
into extractor calls. Support images are
featurised through a recorded plan (:data:`SUPPORT_WINDOWS`, the segment defaults) so that support
patches are seen in the contexts query patches are seen in (:mod:`protodb.features.featurize`); the
segmenter scores the same windows (:mod:`protodb.segment.windows`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from protodb.errors import InvalidInput

MAX_SUBPATCH = 4  # 16 extractor passes per window


#: The resize rule keeps the short side, up to this many times short_side**2 pixels in all (aspect
#: ratios up to 4:1 are unaffected); longer images are scaled so their AREA stays bounded, so an
#: 8000x4 strip cannot ask for a 896000x448 tensor.
MAX_AREA_FACTOR = 4


def feature_size(width: int, height: int, short_side: int, patch: int) -> tuple[int, int]:
    """(H, W) after resizing so the short side is ``short_side`` (area at most ``MAX_AREA_FACTOR *
    short_side**2``), both multiples of ``patch`` (at least one patch)."""
    scale = short_side / min(width, height)
    scale = min(scale, (MAX_AREA_FACTOR * short_side * short_side / (width * height)) ** 0.5)
    h = max(patch, int(round(height * scale / patch)) * patch)
    w = max(patch, int(round(width * scale / patch)) * patch)
    return h, w


def crop_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of ``size``-long windows covering [0, length) with ``stride``, the last flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


#: Windows of an extractor without tiles (OVDiff's sliding windows): squares of 448 and 336 at stride 224.
DEFAULT_SIZES: tuple[int, ...] = (448, 336)
DEFAULT_STRIDE = 224


@dataclass(frozen=True)
class WindowSpec:
    """``short_side``: side the image's short side is resized to (None: keep the size); ``sizes``: square
    window sides in resized pixels (clamped to the image); ``stride``: window step in resized pixels;
    ``whole``: also score the whole resized image as one window; ``batch``: crops per extractor call;
    ``scales``: extra passes at ``short_side * scale``, averaged; ``subpatch``: sample the patch grid n
    times per axis (n x n shifted passes per window, score maps at stride patch/n: thin objects).

    ``sizes``/``stride`` None (the defaults) mean *the extractor's windows* (:meth:`resolved`): a tiled
    extractor (config ``"tile"``, or a fixed-size ONNX graph) is scored through its own tiles, each window
    one tile, plus the whole image, where every patch is the mean over its tiles; any other extractor
    through :data:`DEFAULT_SIZES` at :data:`DEFAULT_STRIDE` plus the whole image. The tile windows score the
    best leave-one-drive-out mean on CamVid (39.84 against 39.43 for 448/336 windows with the same tiled
    features, ``benchmarks/bench_camvid.py --protocol lodo``) and need fewer distinct tiles (15 against 21
    for a 480x360 photo at short side 448), so they are the default where the extractor has tiles."""

    short_side: int | None = 448
    sizes: tuple[int, ...] | None = None
    stride: int | None = None
    whole: bool = True
    batch: int = 8
    scales: tuple[float, ...] = (1.0,)  # extra passes at short_side * scale (finer detail), averaged
    subpatch: int = 1

    def resolved(self, tile: tuple[int, int] | None = None) -> "WindowSpec":
        """This spec with its windows decided for an extractor whose tiles are ``tile`` ((size, stride), or
        None for an untiled one): sizes and stride left None become the tile (size,) and stride, or
        :data:`DEFAULT_SIZES` and :data:`DEFAULT_STRIDE`. Explicit values are kept."""
        if self.sizes is not None and self.stride is not None:
            return self
        sizes = self.sizes if self.sizes is not None else ((int(tile[0]),) if tile else DEFAULT_SIZES)
        stride = self.stride if self.stride is not None else (
            int(tile[1]) if tile and self.sizes is None else DEFAULT_STRIDE)
        return dataclasses.replace(self, sizes=tuple(sizes), stride=int(stride))

    def at_scales(self) -> list["WindowSpec"]:
        """One spec per scale: the same windows over the image resized to ``short_side * scale``."""
        if self.scales == (1.0,) or self.short_side is None:
            return [self]
        return [dataclasses.replace(self, short_side=int(round(self.short_side * s)), scales=(1.0,))
                for s in self.scales]

    def check(self) -> "WindowSpec":
        if self.sizes is not None and not self.sizes and not self.whole:
            raise InvalidInput("window spec has no window sizes and whole=False: nothing would be scored")
        if not 1 <= int(self.subpatch) <= MAX_SUBPATCH:
            raise InvalidInput(f"--subpatch takes 1 to {MAX_SUBPATCH} (n x n extractor passes per window); "
                               f"got {self.subpatch}")
        if not self.scales or any(not 0.25 <= s <= 4 for s in self.scales):
            raise InvalidInput(f"window scales must be between 0.25 and 4; got {self.scales}")
        bad_stride = self.stride is not None and self.stride <= 0
        if bad_stride or any(s <= 0 for s in self.sizes or ()) or (self.short_side is not None and self.short_side <= 0):
            raise InvalidInput(f"window sizes, stride and short side must be positive; got {self.sizes} / "
                               f"{self.stride} / {self.short_side}")
        return self


@dataclass(frozen=True)
class Window:
    """A crop of the resized image: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int


def resized_size(H: int, W: int, spec: WindowSpec, patch: int) -> tuple[int, int]:
    """Size (H', W') the image is scored at: short side ``spec.short_side``, aspect kept, both sides
    rounded to the nearest multiple of ``patch`` (at least one patch)."""
    if H <= 0 or W <= 0:
        raise InvalidInput(f"image has no pixels ({H}x{W})")
    return feature_size(W, H, spec.short_side or min(H, W), patch)  # as support images are sized


def plan_windows(H: int, W: int, spec: WindowSpec, patch: int) -> list[Window]:
    """Windows over the image of original size (H, W) once resized to :func:`resized_size`.

    For each size in ``spec.sizes`` (clamped to the short side, rounded down to a multiple of ``patch``):
    square windows at ``spec.stride`` covering every pixel, the last row/column flush with the border;
    then the whole image when ``spec.whole``. Duplicates are dropped; coordinates are resized pixels.
    A spec whose windows are not decided yet (``sizes``/``stride`` None) takes an untiled extractor's
    (:meth:`WindowSpec.resolved`): resolve it with the extractor's tile first where the extractor has one.
    """
    spec = spec.resolved()
    if not spec.sizes and not spec.whole:
        raise InvalidInput("window spec has no window sizes and whole=False: nothing would be scored")
    if spec.stride <= 0 or any(s <= 0 for s in spec.sizes):
        raise InvalidInput(f"window sizes and stride must be positive; got {spec.sizes} / {spec.stride}")
    H2, W2 = resized_size(H, W, spec, patch)
    out: list[Window] = []
    for size in spec.sizes:
        side = max(patch, min(size, H2, W2) // patch * patch)
        if spec.whole and side * 2 < min(size, spec.short_side or size):
            continue  # a thin strip: windows this narrow add nothing the whole image does not
        stride = min(spec.stride, side)  # windows never leave gaps
        for top in crop_starts(H2, side, stride):
            for left in crop_starts(W2, side, stride):
                win = Window(top, left, side, side)
                if win not in out:
                    out.append(win)
    if spec.whole and Window(0, 0, H2, W2) not in out:
        out.append(Window(0, 0, H2, W2))
    return out


def window_plan(spec: WindowSpec) -> dict[str, Any]:
    """The part of a window spec that decides support features: ``{"sizes", "stride", "whole"}`` (windows
    not yet decided: an untiled extractor's, see :meth:`WindowSpec.resolved`)."""
    spec = spec.resolved()
    return {"sizes": list(spec.sizes), "stride": spec.stride, "whole": spec.whole}


#: The window plan support images of an untiled extractor are featurised with (segment's defaults for it), as
#: recorded in a build; a tiled extractor's are its tiles plus the whole image (:func:`support_plan`).
SUPPORT_WINDOWS = window_plan(WindowSpec())


def support_plan(value: "bool | dict | None", tile: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """The support window plan a build records for ``AddClassRequest.support_windows``: True -> segment's
    default windows for an extractor with tiles ``tile`` (:meth:`WindowSpec.resolved`; untiled:
    :data:`SUPPORT_WINDOWS`), False/None -> None (one pass), a plan ``{"sizes", "stride", "whole"}`` -> that
    plan, checked (one clear error for a plan with no windows or non-positive sizes)."""
    if value is None or value is False:
        return None
    if value is True:
        return window_plan(WindowSpec().resolved(tile))
    if not isinstance(value, dict) or not {"sizes", "stride", "whole"} <= set(value):
        raise InvalidInput(f"support windows take true/false or a plan {{'sizes', 'stride', 'whole'}}; got {value!r}")
    spec = WindowSpec(short_side=None, sizes=tuple(int(v) for v in value["sizes"]), stride=int(value["stride"]),
                      whole=bool(value["whole"])).check()
    return window_plan(spec)


def support_window_spec(plan: dict | None) -> WindowSpec | None:
    """The :class:`WindowSpec` of a recorded support window plan (``{"sizes", "stride", "whole"}``), on
    images already at their feature size; None (one pass over the whole image) for None."""
    if not plan:
        return None
    return WindowSpec(short_side=None, sizes=tuple(int(v) for v in plan["sizes"]), stride=int(plan["stride"]),
                      whole=bool(plan["whole"]))
