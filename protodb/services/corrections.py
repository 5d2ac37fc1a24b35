"""Corrections: a user's pixels of a class on an image, kept as data with their provenance.

A correction is an image (stored as a content-addressed PNG artifact in the database home) and a mask of
one class on it (a PNG artifact, 0/255, the image's size), or a label map giving several classes at once
(one row per class, sharing a ``group_id``). Each row records the source image's hash (sha256 of the file
as given), the set and segment settings that produced the corrected result when known, the pixels
marked, the author (free text) and the time. Adding corrections never changes a prototype set: ``protodb
teach`` / ``add-class --with-corrections`` build a new version from the class's support plus its
corrections (:mod:`protodb.pipeline.build`).

Every input is checked before anything is written (unknown class, unreadable image or mask, a mask whose
size differs from the image's, a mask that marks nothing): bad input leaves the database as it was.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import PIL.Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from protodb.catalog import queries
from protodb.catalog.schema import ClassRow, CorrectionRow, new_id
from protodb.entities import CorrectionRecord
from protodb.errors import InvalidInput, NotFound
from protodb.images import MAX_PIXELS, decode_rgb, load_image, mask_png, png_bytes
from protodb.names import normalize_class_name, quoted
from protodb.stores import Stores

MAX_AUTHOR = 200


def _record(r: CorrectionRow, class_name: str) -> CorrectionRecord:
    return CorrectionRecord(id=r.id, class_name=class_name, group_id=r.group_id, image_sha256=r.image_sha256,
                            source_sha256=r.source_sha256, mask_sha256=r.mask_sha256, width=r.width, height=r.height,
                            pixels=r.pixels, label_value=r.label_value, origin=r.origin, author=r.author,
                            set_id=r.set_id, settings=r.settings if isinstance(r.settings, dict) else None,
                            created_at=_utc(r.created_at))


def _utc(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes, which are UTC here)."""
    if dt is None:
        return None
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)).isoformat()


def _read_bytes(src: bytes | str | Path, what: str) -> tuple[bytes, str]:
    """(bytes, name) of an upload or a file; one InvalidInput line when the file cannot be read."""
    if isinstance(src, (bytes, bytearray)):
        return bytes(src), what
    path = Path(src)
    try:
        return path.read_bytes(), path.name
    except FileNotFoundError:
        raise InvalidInput(f"{what} {path} does not exist") from None
    except (IsADirectoryError, PermissionError, OSError) as err:
        raise InvalidInput(f"cannot read {what} {path}: {err.strerror or type(err).__name__}") from None


def decode_mask_array(data: bytes, name: str = "mask", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A mask or label-map file → (H, W) integer array. Colour masks: the largest of R, G, B per pixel
    (a painted canvas: any colour is the class); grey and 16-bit label maps as stored."""
    if not data:
        raise InvalidInput(f"{name}: empty file (0 bytes); send a PNG mask")
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise InvalidInput(f"{name}: mask is {im.width}x{im.height}, over the pixel limit")
            if im.mode == "P":
                im = im.convert("RGBA")
            arr = np.asarray(im)
    except InvalidInput:
        raise
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        why = " ".join(str(err).split())[:80] or type(err).__name__
        raise InvalidInput(f"{name}: not a readable mask image ({why})") from None
    if arr.ndim == 3:
        if arr.shape[2] == 4:  # a canvas: transparent is not marked, whatever its colour
            arr = np.where(arr[..., 3] > 0, arr[..., :3].max(axis=2), 0)
        else:
            arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


@dataclass(frozen=True)
class CorrectionInput:
    """A checked correction, ready to store: the decoded image and one bool (H, W) mask per class."""

    image: PIL.Image.Image
    source_sha256: str
    origin: str
    masks: tuple[tuple[str, np.ndarray, int | None], ...]  # (class name, mask, label value)


class CorrectionService:
    """Add, list and load corrections (rows here, image and mask artifacts in the store)."""

    def __init__(self, stores: Stores):
        self.stores = stores

    # ------------------------------------------------------------------ checking
    def _class_ids(self, s: Session, names: Sequence[str]) -> dict[str, str]:
        out = {}
        for name in names:
            row = queries.get_class(s, name)
            if row is None:
                raise NotFound(f"no class {name!r} in this database; build it first: protodb add-class {quoted(name)}")
            out[name] = row.id
        return out

    def check(self, image: bytes | str | Path, *, mask: bytes | str | Path | np.ndarray | None = None,
              class_name: str | None = None, label_map: bytes | str | Path | np.ndarray | None = None,
              values: Mapping[int, str] | None = None, name: str | None = None,
              max_pixels: int = MAX_PIXELS) -> CorrectionInput:
        """Decode and check a correction without writing anything. Either ``class_name`` + ``mask`` (any
        non-zero pixel is the class) or ``label_map`` + ``values`` {label value: class name}. Raises
        InvalidInput (unreadable files, size mismatch, nothing marked) or NotFound (unknown class)."""
        data, origin = _read_bytes(image, "image")
        origin = name or origin
        if not data:
            raise InvalidInput(f"{origin}: empty image (0 bytes); send an image file")
        try:
            img = load_image(data, max_pixels=max_pixels)
        except InvalidInput as err:
            message = str(err)
            message = message.split(": ", 1)[1] if message.startswith("<bytes>: ") else message
            raise InvalidInput(f"{origin}: {message}") from None
        if (mask is None) == (label_map is None):
            raise InvalidInput("give a mask with its class, or a label map with its values, not both or neither")
        if mask is not None:
            if not class_name:
                raise InvalidInput("a mask needs its class name")
            arr, what = self._array(mask, "mask", max_pixels)
            pairs = [(normalize_class_name(class_name), arr != 0, None)]
        else:
            if not values:
                raise InvalidInput("a label map needs its values: {label value: class name}")
            arr, what = self._array(label_map, "label map", max_pixels)
            pairs = []
            for value, cname in sorted(values.items()):
                if not 0 <= int(value) <= 65535:
                    raise InvalidInput(f"label value {value} is outside 0..65535")
                pairs.append((normalize_class_name(cname), arr == int(value), int(value)))
        if arr.ndim != 2 or arr.shape != (img.height, img.width):
            shape = f"{arr.shape[1]}x{arr.shape[0]}" if arr.ndim >= 2 else str(arr.shape)
            raise InvalidInput(f"{what} is {shape} but the image is {img.width}x{img.height}; "
                               "a mask must have the image's size")
        names = [p[0] for p in pairs]
        if len(set(names)) != len(names):
            raise InvalidInput("a label map names the same class for two values")
        for cname, m, value in pairs:
            if not m.any():
                which = f"value {value} ({cname})" if value is not None else f"the mask of {cname!r}"
                raise InvalidInput(f"{which} marks no pixel; paint the class before adding the correction")
        with self.stores.sessions.reader() as s:
            self._class_ids(s, names)
        return CorrectionInput(img, hashlib.sha256(data).hexdigest(), origin, tuple(pairs))

    @staticmethod
    def _array(src, what: str, max_pixels: int) -> tuple[np.ndarray, str]:
        """(array, how to name it in a message) of a mask given as an array, bytes or a file."""
        if isinstance(src, np.ndarray):
            return np.asarray(src), what
        data, name = _read_bytes(src, what)
        label = what if name == what else f"{what} {name}"
        return decode_mask_array(data, label, max_pixels), label

    # ------------------------------------------------------------------ writing
    def add(self, image: bytes | str | Path, *, author: str | None = None, set_id: str | None = None,
            settings: dict[str, Any] | None = None, **kwargs) -> tuple[CorrectionRecord, ...]:
        """Check (:meth:`check`, same arguments), then store the image and masks as artifacts and one row
        per class in one transaction. ``author``: free text (at most 200 characters); ``set_id`` and
        ``settings``: the set and segment settings that produced the corrected result, when known."""
        if author is not None:
            author = " ".join(str(author).split())
            if len(author) > MAX_AUTHOR:
                raise InvalidInput(f"author is longer than {MAX_AUTHOR} characters")
        if set_id is not None and not (isinstance(set_id, str) and len(set_id) == 32
                                       and all(c in "0123456789abcdef" for c in set_id)):
            raise InvalidInput("set id is 32 lowercase hex characters")
        checked = self.check(image, **kwargs)
        image_sha = self.stores.artifacts.put(png_bytes(checked.image))
        masks = [(cname, self.stores.artifacts.put(mask_png(m)), int(m.sum()), value)
                 for cname, m, value in checked.masks]
        group = new_id()

        def rows(s: Session) -> list[CorrectionRecord]:
            ids = self._class_ids(s, [m[0] for m in masks])
            out = []
            for cname, sha, pixels, value in masks:
                row = CorrectionRow(class_id=ids[cname], group_id=group, image_sha256=image_sha,
                                    source_sha256=checked.source_sha256, mask_sha256=sha,
                                    width=checked.image.width, height=checked.image.height, pixels=pixels,
                                    label_value=value, origin=checked.origin[:500], author=author or None,
                                    set_id=set_id, settings=settings)
                s.add(row)
                s.flush()
                out.append(_record(row, cname))
            return out

        return tuple(self.stores.sessions.transact(rows, what="corrections"))

    # ------------------------------------------------------------------ reading
    def ls(self, class_name: str | None = None) -> tuple[CorrectionRecord, ...]:
        """Every correction (of ``class_name`` only, when given), oldest first. NotFound for an unknown class."""
        with self.stores.sessions.reader() as s:
            q = select(CorrectionRow, ClassRow.name).join(ClassRow, CorrectionRow.class_id == ClassRow.id)
            if class_name is not None:
                name = normalize_class_name(class_name)
                if queries.get_class(s, name) is None:
                    raise NotFound(f"no class {name!r} in this database; see: protodb ls")
                q = q.where(ClassRow.name == name)
            q = q.order_by(CorrectionRow.created_at, CorrectionRow.id)
            return tuple(_record(r, n) for r, n in s.execute(q).tuples())

    def get(self, correction_id: str) -> CorrectionRecord:
        with self.stores.sessions.reader() as s:
            row = s.get(CorrectionRow, correction_id)
            if row is None:
                raise NotFound(f"no correction {correction_id[:40]!r}; see: protodb corrections ls")
            return _record(row, s.get(ClassRow, row.class_id).name)

    def load(self, rec: CorrectionRecord) -> tuple[PIL.Image.Image, np.ndarray]:
        """(RGB image, (H, W) bool mask) of a correction, from the artifact store."""
        image = decode_rgb(self.stores.artifacts.get(rec.image_sha256))
        with PIL.Image.open(io.BytesIO(self.stores.artifacts.get(rec.mask_sha256))) as im:
            mask = np.asarray(im.convert("L")) > 127
        return image, mask

    def by_image(self, class_name: str) -> list[tuple[tuple[CorrectionRecord, ...], PIL.Image.Image, np.ndarray]]:
        """A class's corrections grouped by image (several strokes on one photo are one exemplar): per image
        (its records, the image, the union of their masks), oldest image first."""
        groups: dict[str, list[CorrectionRecord]] = {}
        for rec in self.ls(class_name):
            groups.setdefault(rec.image_sha256, []).append(rec)
        out = []
        for recs in groups.values():
            image, mask = self.load(recs[0])
            for rec in recs[1:]:
                mask = mask | self.load(rec)[1]
            out.append((tuple(recs), image, mask))
        return out
