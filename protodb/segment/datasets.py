"""Evaluation datasets in their mmsegmentation-compatible folder layouts, and their label conventions.

Every loader maps the label values in the files to ONE index space, the same as :class:`SegmentResult`:
``0..K-1`` the K classes of the vocabulary (in vocabulary order), ``K`` the background for datasets that
score a background class, and ``255`` for pixels that are not scored. So ``num_classes`` = K (+1 with
background) and predictions from :func:`protodb.segment.match.segment_image` compare directly.

==============  =========================================================  ===================================
name            layout under ``root``                                      file value v  ->  index
==============  =========================================================  ===================================
voc             JPEGImages/{id}.jpg, SegmentationClass/{id}.png,           0 -> 20 (background), 1..20 -> v-1,
                ImageSets/Segmentation/{split}.txt                         255 -> 255 (K = 20)
context         JPEGImages/{id}.jpg, SegmentationClassContext/{id}.png,    0 -> 59 (background), 1..59 -> v-1,
(=context60)    ImageSets/SegmentationContext/{split}.txt (VOC2010)        255 -> 255 (K = 59); mmseg
                                                                           PascalContextDataset
context59       same files as context                                      0 -> 255 (reduce_zero_label),
                                                                           1..59 -> v-1 (K = 59, no bg);
                                                                           mmseg PascalContextDataset59
coco-object     images/{split}2017/{id}.jpg, annotations/{split}2017/      0 -> 80 (background), 1..80 -> v-1,
                {id}_instanceTrainIds.png (or {id}.png)                    255 -> 255 (K = 80)
ade20k          images/{validation|training}/{id}.jpg,                     0 -> 255 (reduce_zero_label),
                annotations/{validation|training}/{id}.png                 1..150 -> v-1 (K = 150, no bg)
cityscapes      leftImg8bit/{split}/{city}/{id}_leftImg8bit.png,           trainIds: 0..18 -> v, 255 -> 255
                gtFine/{split}/{city}/{id}_gtFine_labelTrainIds.png        (K = 19, no bg)
camvid          {split}/{name}.png, {split}annot/{name}.png                0..10 -> v, 11 (void) -> 255
                                                                           (K = 11, no bg)
==============  =========================================================  ===================================

Any other value (e.g. 21..254 in VOC) is mapped to 255. Split "val" is "validation" for ade20k.
Label files must be single-channel (palette, grey or 16-bit) PNGs holding label values, not colours.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from protodb.errors import InvalidInput
from protodb.images import IMAGE_EXTENSIONS as _IMAGE_EXTS
from protodb.vocabularies import load_builtin

IGNORE = 255

# name -> (vocabulary, background scored (None: the vocabulary's), file values that mean "ignore"
# besides the vocabulary's ignore_index). The offset of class 0 in the files is the vocabulary's
# ``label_offset`` (protodb/data/vocabularies/*.json): one source for both.
_CONVENTIONS = {
    "voc": ("voc", None, (255,)),
    "context": ("context", None, (255,)),
    "context59": ("context", False, (255,)),
    "coco-object": ("coco-object", None, (255,)),
    "ade20k": ("ade20k", None, (255,)),
    "cityscapes": ("cityscapes", None, (255,)),
    "camvid": ("camvid", None, ()),
}
_ALIASES = {"context60": "context", "pascal-voc": "voc", "ade": "ade20k", "coco": "coco-object"}


def dataset_names() -> list[str]:
    """Names accepted by :func:`iter_dataset` / :func:`label_convention` (aliases not included)."""
    return sorted(_CONVENTIONS)


def _key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _CONVENTIONS:
        raise InvalidInput(f"unknown dataset {name!r}; use one of: {', '.join(dataset_names())}")
    return key


def label_convention(name: str) -> dict:
    """How ``name``'s label files map to indices (see the module table). Keys: ``name``, ``vocabulary``
    (built-in vocabulary holding the class names), ``classes`` (K), ``num_classes`` (K + background),
    ``background`` (bool: index K is the background), ``offset`` (file value of class 0),
    ``reduce_zero_label`` (file value 0 is ignored), ``file_ignore`` (file values that mean "not scored"),
    ``ignore_index`` (255, the index those pixels get)."""
    key = _key(name)
    vocab, background, extra_ignore = _CONVENTIONS[key]
    doc = load_builtin(vocab)
    k, offset = len(doc["classes"]), int(doc["label_offset"])
    background = bool(doc["background"]) if background is None else background
    file_ignore = tuple(dict.fromkeys((*extra_ignore, int(doc["ignore_index"]))))
    return {"name": key, "vocabulary": vocab, "classes": k, "num_classes": k + int(background),
            "background": background, "offset": offset, "reduce_zero_label": offset == 1 and not background,
            "file_ignore": list(file_ignore), "ignore_index": IGNORE}


def _lookup(convention: dict, size: int) -> np.ndarray:
    """(size,) int64 table: file value -> index."""
    values = np.arange(size)
    idx = values - convention["offset"]
    out = np.where((idx >= 0) & (idx < convention["classes"]), idx, IGNORE)
    if convention["background"]:
        out[0] = convention["classes"]
    for v in convention["file_ignore"]:
        if v < size:
            out[v] = IGNORE
    return out.astype(np.int64)


def load_label(path: str | Path, convention: dict | str) -> np.ndarray:
    """Read a label PNG and map it to (H, W) int64 indices: 0..K-1 classes, K background (when the
    convention has one), 255 not scored. ``convention``: a :func:`label_convention` dict or a name."""
    conv = label_convention(convention) if isinstance(convention, str) else convention
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise InvalidInput(f"{path}: label image is colour ({im.mode}); labels must be single-channel "
                                   "PNGs of class values (convert colour-coded labels first)")
            raw = np.asarray(im.convert("L") if im.mode in ("1", "LA", "PA") else im)
    except InvalidInput:
        raise
    except (OSError, ValueError) as err:
        raise InvalidInput(f"{path}: cannot read label image ({err})") from None
    raw = raw.astype(np.int64)
    if raw.ndim != 2:
        raise InvalidInput(f"{path}: label image has shape {raw.shape}; expected (H, W)")
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
        raise InvalidInput(f"{path}: label values outside 0..65535")
    return _lookup(conv, max(256, int(raw.max(initial=0)) + 1))[raw]


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InvalidInput(f"{what} folder not found: {path}; check the dataset root and split")
    return path


def _from_list(root: Path, images: str, labels: str, listing: Path, ext: str = ".jpg"):
    if not listing.is_file():
        raise InvalidInput(f"split list not found: {listing}; check the dataset root and split")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return [(root / images / f"{i}{ext}", root / labels / f"{i}.png") for i in ids]


def _pairs(key: str, root: Path, split: str) -> list[tuple[Path, Path]]:
    if key == "voc":
        return _from_list(root, "JPEGImages", "SegmentationClass",
                          root / "ImageSets" / "Segmentation" / f"{split}.txt")
    if key in ("context", "context59"):
        return _from_list(root, "JPEGImages", "SegmentationClassContext",
                          root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    if key == "coco-object":
        img_dir = _need_dir(root / "images" / f"{split}2017", "image")
        ann_dir = _need_dir(root / "annotations" / f"{split}2017", "annotation")
        out = []
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS):
            label = ann_dir / f"{img.stem}_instanceTrainIds.png"
            out.append((img, label if label.is_file() else ann_dir / f"{img.stem}.png"))
        return out
    if key == "ade20k":
        sub = {"val": "validation", "train": "training"}.get(split, split)
        img_dir = _need_dir(root / "images" / sub, "image")
        ann_dir = _need_dir(root / "annotations" / sub, "annotation")
        return [(img, ann_dir / f"{img.stem}.png")
                for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)]
    if key == "cityscapes":
        img_dir = _need_dir(root / "leftImg8bit" / split, "image")
        _need_dir(root / "gtFine" / split, "annotation")
        out = []
        for img in sorted(Path(p) for p in glob.glob(str(img_dir / "*" / "*_leftImg8bit.png"))):
            stem = img.name[: -len("_leftImg8bit.png")]
            out.append((img, root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"))
        return out
    if key == "camvid":
        img_dir = _need_dir(root / split, "image")
        ann_dir = _need_dir(root / f"{split}annot", "annotation")
        return [(img, ann_dir / img.name)
                for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)]
    raise AssertionError(key)


def iter_dataset(name: str, root: str | Path, split: str = "val",
                 limit: int | None = None) -> Iterator[tuple[Path, Path]]:
    """(image path, label path) pairs of ``split`` in a stable order (split-list order, else sorted),
    at most ``limit``. InvalidInput when the layout is not found or a label file is missing."""
    key = _key(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InvalidInput(f"dataset root not found: {root}")
    pairs = _pairs(key, root, split)
    if not pairs:
        raise InvalidInput(f"no images found for {key} split {split!r} under {root}")
    for n, (img, label) in enumerate(pairs):
        if limit is not None and n >= limit:
            return
        if not img.is_file():
            raise InvalidInput(f"{key}: image listed for split {split!r} is missing: {img}")
        if not label.is_file():
            raise InvalidInput(f"{key}: no label file for {img.name}: expected {label}")
        yield img, label
