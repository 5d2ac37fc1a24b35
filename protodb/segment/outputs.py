"""What a segment run writes per input (:class:`OutputWriter`, the one writer every runner uses): a palette
label PNG, an overlay PNG, a JSON (:meth:`protodb.segment.result.ImageResult.document`: legend, classes
present, vocabulary and settings) and, with explain, a PNG showing the support crop that won.

Label PNGs: with a background class, value 0 is background and class i of the vocabulary is i + 1
(PASCAL style); without, class i is i. More than 256 labels: a 16-bit grey PNG of the ids.
Output names mirror the inputs' paths relative to their common folder, so two inputs never share one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import fsspec
import numpy as np
import PIL.Image
import PIL.ImageDraw

from protodb.errors import InvalidInput
from protodb.fileio import atomic_write, is_remote_uri
from protodb.images import png_bytes
from protodb.render import CELL, crop_with_context

if TYPE_CHECKING:
    from protodb.segment.result import ImageResult


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours; index 0 is black (background in PASCAL-style maps)."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(1, n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):  # the PASCAL VOC bit-interleaved colour map
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def output_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """A unique output name per input: its path relative to the inputs' common folder, without the
    extension (``A/x.png`` and ``B/x.png`` -> ``A/x`` and ``B/x``); inputs that would still collide
    (``x.png`` and ``x.jpg`` in one folder) keep their extension (``x.jpg``)."""
    if not paths:
        return {}
    parents = [os.path.abspath(p.parent) for p in paths]
    common = os.path.commonpath(parents)
    stems: dict[Path, str] = {}
    for p, parent in zip(paths, parents):
        rel = os.path.relpath(parent, common)
        stems[p] = p.stem if rel == "." else f"{rel}/{p.stem}"
    seen: dict[str, int] = {}
    for s in stems.values():
        seen[s] = seen.get(s, 0) + 1
    return {p: (f"{s}{p.suffix}" if seen[s] > 1 else s) for p, s in stems.items()}


def check_out(out: Path) -> Path:
    """``--out`` must be a folder we can write to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file; give a folder for the outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInput(f"cannot create --out folder {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidInput(f"--out folder {out} is not writable")
    return out


def label_values(labels: np.ndarray, names: list[str], background: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Vocabulary-index labels (C = background) -> PNG values and their legend."""
    C = len(names)
    if background:
        return np.where(labels == C, 0, labels + 1).astype(np.int64), {0: "background", **{i + 1: n for i, n in enumerate(names)}}
    return labels.astype(np.int64), dict(enumerate(names))


def label_png(values: np.ndarray, n_labels: int) -> bytes:
    pal = palette(n_labels)
    if len(pal) <= 256:  # palette PNG: values are class ids, colours for viewing
        lab = PIL.Image.fromarray(values.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(pal)] = pal
        lab.putpalette(flat.ravel().tolist())
        return png_bytes(lab)
    return png_bytes(PIL.Image.fromarray(values.astype(np.uint16)))


def overlay(image: PIL.Image.Image, values: np.ndarray, n_labels: int, clear: int | None = None) -> np.ndarray:
    """The image blended with the label colours; pixels of value ``clear`` (e.g. 0, the background) are
    left as the image (None: every value is coloured, the background black)."""
    rgb = np.asarray(image, np.float32)
    colour = palette(n_labels)[values].astype(np.float32)
    out = 0.45 * rgb + 0.55 * colour
    if clear is not None:
        out = np.where((values == clear)[..., None], rgb, out)
    return out.astype(np.uint8)


class OutputWriter:
    """Writes each result's label PNG, overlay PNG, explain PNG (with explanations) and JSON under ``out``:
    a local folder (checked when the writer is made), or an fsspec URL such as ``s3://bucket/prefix`` (the
    files are made in a local temporary folder and uploaded, the JSON last, so an input counts as done only
    when all its files are there). ``support_crop``: the support-image crop a winner names (the
    segmenter's :meth:`~protodb.segment.segmenter.VocabularySegmenter.support_crop`)."""

    def __init__(self, out: str | os.PathLike, support_crop: Callable[[dict], PIL.Image.Image | None] | None = None):
        self.remote = is_remote_uri(str(out))
        self.out = str(out).rstrip("/") if self.remote else check_out(Path(out))
        self.support_crop = support_crop or (lambda _winner: None)
        self._fs = fsspec.core.url_to_fs(self.out)[0] if self.remote else None

    def write(self, result: "ImageResult", stem: str) -> dict[str, str]:
        """The files of ``result`` named ``stem`` + ``.labels.png``, ``.overlay.png``, (``.explain.png``),
        ``.json`` (whose ``input`` is ``stem``); returns {kind: path or URL}."""
        if not self.remote:
            return self._write_local(result, Path(self.out) / stem, stem)
        tmp = Path(tempfile.mkdtemp(prefix="protodb-seg-"))
        try:
            local = self._write_local(result, tmp / Path(stem).name, stem)
            files = {}
            for kind in sorted(local, key=lambda k: k == "json"):  # the JSON last: it marks the input done
                target = f"{self.out}/{stem}{Path(local[kind]).name[len(Path(stem).name):]}"
                self._fs.put_file(local[kind], target)
                files[kind] = target
            return files
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_local(self, result: "ImageResult", base: Path, stem: str) -> dict[str, str]:
        values, legend = result.values()
        n = max(legend) + 1
        paths = {"labels": f"{base}.labels.png", "overlay": f"{base}.overlay.png", "json": f"{base}.json"}
        atomic_write(paths["labels"], label_png(values, n))
        over = overlay(result.image, values, n)
        atomic_write(paths["overlay"], png_bytes(over))
        if result.winners:
            paths["explain"] = f"{base}.explain.png"
            atomic_write(paths["explain"], png_bytes(render_explain(over, result.winners, self.support_crop)))
        atomic_write(paths["json"], json.dumps(result.document(stem), indent=1).encode())
        return paths


def render_explain(over: np.ndarray, winners: dict, support_crop: Callable[[dict], PIL.Image.Image | None]
                   ) -> PIL.Image.Image:
    """Left: the overlay with each region's winning pixel marked; right: the support region that won."""
    rows = len(winners)
    W = over.shape[1] + 2 * (CELL + 8) + 8
    H = max(over.shape[0], rows * (CELL + 20) + 8)
    sheet = PIL.Image.new("RGB", (W, H), (250, 250, 250))
    sheet.paste(PIL.Image.fromarray(over), (0, 0))
    draw = PIL.ImageDraw.Draw(sheet)
    x0 = over.shape[1] + 8
    for r, (name, w) in enumerate(sorted(winners.items())):
        y = 4 + r * (CELL + 20)
        py, px = w["pixel"]
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], outline=(255, 255, 255), width=2)
        draw.text((px + 6, py - 6), name, fill=(255, 255, 255))
        draw.text((x0, y + CELL + 2), f"{name} {w.get('kind', '?')} {w['score']:.2f}", fill=(0, 0, 0))
        crop = support_crop(w)
        if crop is not None:
            sheet.paste(crop, (x0, y))
    return sheet


def support_crop_of(image: PIL.Image.Image | None, box: list[int] | None) -> PIL.Image.Image | None:
    return crop_with_context(image, box) if image is not None and box else None
