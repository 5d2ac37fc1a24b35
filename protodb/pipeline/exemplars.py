"""Real support images: an exemplar folder, optionally with masks or label maps (matched by stem).

Files that cannot be used are skipped with a logged reason (symlink loops, dangling links, folders
named like images); unreadable images and masks are one clear error. A label map gives the class
(``mask_value``) and, for the background, only pixels labelled ``bg_value`` (0 by default): pixels of
another labelled class (a person, a car in a photo of a dog) are never background.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import PIL.Image

from protodb.errors import InvalidInput
from protodb.images import IMAGE_EXTENSIONS, load_image
from protodb.pipeline.config import ExemplarInput
from protodb.pipeline.masks import masks_from_labels

log = logging.getLogger(__name__)


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files in ``folder`` (by extension, sorted) and a note for each entry skipped."""
    found, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_symlink() and not p.exists():
            skipped.append(f"{p.name}: dangling or looping symbolic link")
        elif p.is_dir():
            skipped.append(f"{p.name}: a folder, not an image file")
        elif not p.is_file():
            skipped.append(f"{p.name}: not a regular file")
        else:
            found.append(p)
    for note in skipped:
        log.warning("skipped %s", note)
    return found, skipped


def _load_label_map(path: Path) -> np.ndarray:
    try:
        with PIL.Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidInput(f"cannot read mask {path}: {' '.join(str(err).split()) or type(err).__name__}") from None
    return arr if arr.ndim == 2 else arr[..., 0]


def find_exemplars(exemplars: Path | None, masks: Path | None) -> tuple[list[Path], dict[str, Path], list[str]]:
    """Exemplar files, their masks by stem, and what was skipped. InvalidInput for missing folders."""
    if exemplars is None:
        return [], {}, []
    folder = Path(exemplars)
    if not folder.is_dir():
        raise InvalidInput(f"exemplar folder {folder} does not exist")
    files, skipped = list_images(folder)
    if not files:
        raise InvalidInput(f"exemplar folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_files: dict[str, Path] = {}
    if masks is not None:
        mfolder = Path(masks)
        if not mfolder.is_dir():
            raise InvalidInput(f"mask folder {mfolder} does not exist")
        by_stem = {p.stem: p for p in list_images(mfolder)[0]}
        mask_files = {p.stem: by_stem[p.stem] for p in files if p.stem in by_stem}
        if not mask_files:
            raise InvalidInput(f"no mask in {mfolder} matches an exemplar file name (matched by stem)")
    return files, mask_files, skipped


def load_exemplars(files: list[Path], masks: dict[str, Path], mask_value: int | None,
                   bg_value: int | None = 0) -> list[ExemplarInput]:
    """Decode exemplar images (EXIF-rotated, RGB) and their masks; exemplars whose mask is empty
    (the class is not in that image) are left out. With ``mask_value`` the masks are label maps and
    the background is the pixels equal to ``bg_value``; otherwise (binary masks, or ``bg_value`` None)
    ``background`` is None: the rest of the image, unless exemplar backgrounds are off."""
    out = []
    for path in files:
        image = load_image(path)  # EXIF, 16-bit, CMYK, alpha, bombs: as for segment inputs
        given = background = None
        if path.stem in masks:
            lm = _load_label_map(masks[path.stem])
            if lm.shape != (image.height, image.width):
                raise InvalidInput(f"mask {masks[path.stem]} is {lm.shape[1]}x{lm.shape[0]}, "
                                   f"exemplar {path.name} is {image.width}x{image.height}")
            given = masks_from_labels(lm, mask_value)
            if not given.any():
                log.info("exemplar %s does not show the class (empty mask): left out", path.name)
                continue
            if mask_value is not None and bg_value is not None:
                background = (lm == bg_value) & ~given
        out.append(ExemplarInput(path=path, image=image, mask=given, background=background))
    if files and not out:
        raise InvalidInput(f"no exemplar shows the class (every mask is empty for value {mask_value})")
    return out


__all__ = ["find_exemplars", "list_images", "load_exemplars"]
