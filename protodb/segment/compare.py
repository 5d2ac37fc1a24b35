"""``protodb compare A B``: two versions of a class segment the same images; per-class IoU of each and the change.

Ground truth comes from one of two places:

* a labelled folder (``labels``: one PNG per image, matched by file stem): with ``values`` {class: label
  value} every named class is scored; without, each map is a binary mask of the compared class (non-zero);
* the class's stored corrections (no ``labels``): the corrected images (those among ``images`` when a folder
  is given, matched by the file's sha256, else all of them), the corrected pixels being the class and the
  rest of each image not. ``hit`` is then also given: the share of the corrected pixels each version labels
  as the class.

IoU of a class = sum over images of |pred ∩ gt| / sum of |pred ∪ gt| (pixels), as in mIoU evaluation.
Both versions segment with the same other classes (``others``) and settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import PIL.Image

from protodb.entities import CompareReport
from protodb.errors import InvalidInput
from protodb.images import IMAGE_EXTENSIONS, load_image
from protodb.names import Ref
from protodb.services.corrections import CorrectionService, decode_mask_array


@dataclass
class Truth:
    """One image to score: its name, the image and {class: (H, W) bool} ground truth."""

    name: str
    image: PIL.Image.Image
    masks: dict[str, np.ndarray]


@dataclass
class _Tally:
    inter: dict[str, int] = field(default_factory=dict)
    union: dict[str, int] = field(default_factory=dict)
    hit: dict[str, int] = field(default_factory=dict)
    gt: dict[str, int] = field(default_factory=dict)

    def add(self, cls: str, pred: np.ndarray, gt: np.ndarray) -> None:
        self.inter[cls] = self.inter.get(cls, 0) + int((pred & gt).sum())
        self.union[cls] = self.union.get(cls, 0) + int((pred | gt).sum())
        self.gt[cls] = self.gt.get(cls, 0) + int(gt.sum())

    def iou(self, cls: str) -> float | None:
        u = self.union.get(cls, 0)
        return self.inter.get(cls, 0) / u if u else None

    def share(self, cls: str) -> float | None:
        g = self.gt.get(cls, 0)
        return self.inter.get(cls, 0) / g if g else None


def _images(folder: Path) -> list[Path]:
    if not Path(folder).is_dir():
        raise InvalidInput(f"image folder {folder} does not exist")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise InvalidInput(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def truth_from_labels(images: Path, labels: Path, class_name: str,
                      values: Mapping[str, int] | None = None) -> list[Truth]:
    """Images of ``images`` with the label map of the same stem in ``labels`` (images without one are left
    out); ``values`` {class: label value}, or None: the maps are binary masks of ``class_name``."""
    if not Path(labels).is_dir():
        raise InvalidInput(f"label folder {labels} does not exist")
    by_stem = {p.stem: p for p in Path(labels).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    out = []
    for path in _images(images):
        if path.stem not in by_stem:
            continue
        image = load_image(path)
        lm = decode_mask_array(by_stem[path.stem].read_bytes(), f"label map {by_stem[path.stem].name}")
        if lm.shape != (image.height, image.width):
            raise InvalidInput(f"label map {by_stem[path.stem].name} is {lm.shape[1]}x{lm.shape[0]}, image "
                               f"{path.name} is {image.width}x{image.height}")
        masks = {c: lm == v for c, v in values.items()} if values else {class_name: lm != 0}
        out.append(Truth(path.name, image, masks))
    if not out:
        raise InvalidInput(f"no label map in {labels} matches an image in {images} (matched by file stem)")
    return out


def truth_from_corrections(corrections: CorrectionService, class_name: str, images: Path | None = None) -> list[Truth]:
    """The class's corrected images (only those whose file in ``images`` has the corrected file's sha256,
    when a folder is given) with the union of their corrected pixels as the class."""
    groups = corrections.by_image(class_name)
    if images is not None:
        wanted = {hashlib.sha256(p.read_bytes()).hexdigest() for p in _images(images)}
        groups = [g for g in groups if {r.source_sha256 for r in g[0]} & wanted or g[0][0].image_sha256 in wanted]
    if not groups:
        where = f" among the images in {images}" if images is not None else ""
        raise InvalidInput(f"class {class_name!r} has no corrections{where} to compare on; give --labels, or add "
                           f"one with: protodb teach {class_name} IMAGE --mask MASK")
    return [Truth(recs[0].origin or recs[0].id, image, {class_name: mask}) for recs, image, mask in groups]


def compare(a: str, b: str, segment_a: Callable[[PIL.Image.Image, str], object],
            segment_b: Callable[[PIL.Image.Image, str], object], truths: Sequence[Truth], *, on: str,
            settings: dict | None = None, progress: Callable[[int, int], None] | None = None) -> CompareReport:
    """Score versions ``a`` and ``b`` (refs) on ``truths``; ``segment_x(image, name)`` returns an
    :class:`protodb.segment.result.ImageResult`. Classes are scored by name (``boat@2`` scores as ``boat``)."""
    tallies = {"a": _Tally(), "b": _Tally()}
    for i, t in enumerate(truths):
        for key, seg in (("a", segment_a), ("b", segment_b)):
            res = seg(t.image, t.name)
            names = list(res.names)
            for cls, gt in t.masks.items():
                pred = res.labels == names.index(cls) if cls in names else np.zeros_like(gt)
                tallies[key].add(cls, pred, gt)
        if progress:
            progress(i + 1, len(truths))
    classes = {}
    for cls in sorted({c for t in truths for c in t.masks}):
        ia, ib = tallies["a"].iou(cls), tallies["b"].iou(cls)
        entry = {"a": _r(ia), "b": _r(ib), "change": _r(ib - ia) if ia is not None and ib is not None else None,
                 "pixels": tallies["a"].gt.get(cls, 0)}
        if on == "corrections":
            ha, hb = tallies["a"].share(cls), tallies["b"].share(cls)
            entry.update(hit_a=_r(ha), hit_b=_r(hb))
        classes[cls] = entry
    both = [c for c in classes.values() if c["a"] is not None and c["b"] is not None]
    mean = {"a": _r(float(np.mean([c["a"] for c in both]))) if both else None,
            "b": _r(float(np.mean([c["b"] for c in both]))) if both else None}
    mean["change"] = _r(mean["b"] - mean["a"]) if both else None
    return CompareReport(a=a, b=b, on=on, images=len(truths), classes=classes, mean=mean, settings=settings or {})


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def class_of(ref: str) -> str:
    return Ref.parse(ref).name


__all__ = ["Truth", "compare", "truth_from_corrections", "truth_from_labels", "class_of"]
