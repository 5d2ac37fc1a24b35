"""One segmentation as the JSON ``POST /api/segment`` answers.

Always: ``input``, ``size`` [w, h], ``vocabulary`` (name, version, classes, the sets used),
``generation`` (which build of the warm segmenter answered), ``settings``, ``present`` {class: {fraction, score}},
``legend`` {value: class} and ``colours`` {value: [r, g, b]} — values as in ``protodb segment``'s label
PNGs (with a background, 0 = background and class i = i + 1). On request (``outputs``):

``labels``   ``labels_png``: base64 of the palette label PNG (the default)
``overlay``  ``overlay_png``: base64 PNG of the image blended with the label colours
``maps``     ``maps``: per-pixel ``labels`` (base64, row-major, little-endian ``labels_dtype``) and
             ``scores`` (base64 little-endian int16, the winning cosine x ``scores_scale``)
``explain``  ``explain``: per class, the winning prototype, its set, support image (``support_sha256``
             for ``/api/artifacts``, ``support_size``) and ``box`` [x0, y0, x1, y1] in that image
``runner_up`` ``maps`` (as above) plus ``runner_up_labels`` and ``runner_up_scores``: per pixel the best
             other column (the label value it would have had) and its cosine, same encodings

The overlay leaves background pixels as the photo (not black). Always also ``confidence``: how far
the winners beat their runners-up, per image and per class present, with warnings when the result is
doubtful (:mod:`protodb.segment.confidence` states the rule).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from protodb.errors import InvalidInput
from protodb.images import png_bytes
from protodb.segment.confidence import confidence
from protodb.segment.outputs import label_png, label_values, overlay, palette
from protodb.segment.result import ImageResult

OUTPUTS = ("labels", "overlay", "maps", "explain", "runner_up")
SCORES_SCALE = 10000


def parse_outputs(text: str | None) -> set[str]:
    if text is None or not str(text).strip():
        return {"labels"}
    items = {t.strip() for t in str(text).split(",") if t.strip()}
    bad = sorted(items - set(OUTPUTS) - {"none"})
    if bad:
        raise InvalidInput(f"outputs takes a comma list of {', '.join(OUTPUTS)} (or none); got {', '.join(bad)}")
    return items - {"none"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def segment_doc(served, result: ImageResult, *, outputs: set[str]) -> dict[str, Any]:
    """The answer for one :class:`ImageResult` of ``served``'s segmenter: its document (as written beside
    ``protodb segment``'s outputs) with the warm segmenter's generation, the colours and the asked outputs."""
    seg = served.segmenter
    image = result.image
    values, legend = result.values()
    n = max(legend) + 1
    pal = palette(n)
    base = result.document()
    doc: dict[str, Any] = {
        "input": base["input"], "size": base["size"], "vocabulary": base["vocabulary"],
        "generation": served.generation, "settings": base["settings"], "present": base["present"],
        "legend": base["legend"], "colours": {str(k): [int(c) for c in pal[k]] for k in legend},
        "prefilter_kept": base["prefilter_kept"], "seconds": round(result.seconds, 4),
        "confidence": confidence(result.labels, result.scores, runner_up=result.runner_up,
                                 runner_up_labels=result.runner_up_labels, kept=result.kept,
                                 names=result.names, background=result.background),
    }
    if "labels" in outputs:
        doc["labels_png"] = _b64(label_png(values, n))
    if "overlay" in outputs:
        doc["overlay_png"] = _b64(png_bytes(overlay(image, values, n, clear=0 if result.background else None)))
    if "maps" in outputs or "runner_up" in outputs:
        dtype = "<u1" if n <= 256 else "<u2"
        scores = np.clip(np.nan_to_num(np.asarray(result.scores, np.float32)), -1.0, 1.0)
        doc["maps"] = {"width": image.width, "height": image.height,
                       "labels_dtype": "uint8" if dtype == "<u1" else "uint16",
                       "labels": _b64(np.ascontiguousarray(values, dtype=dtype).tobytes()),
                       "scores": _b64(np.rint(scores * SCORES_SCALE).astype("<i2").tobytes()),
                       "scores_scale": SCORES_SCALE}
        if "runner_up" in outputs:
            doc["maps"].update(runner_up_maps(result, dtype))
    if "explain" in outputs:
        doc["explain"] = explain(seg, result.winners)
    return doc


def runner_up_maps(result: ImageResult, dtype: str) -> dict[str, Any]:
    """``runner_up_labels`` / ``runner_up_scores`` (base64, as ``labels`` / ``scores``); both None when a
    single column competed."""
    if result.runner_up is None:
        return {"runner_up_labels": None, "runner_up_scores": None}
    values, _ = label_values(result.runner_up_labels, result.names, result.background)
    scores = np.clip(np.nan_to_num(np.asarray(result.runner_up, np.float32)), -1.0, 1.0)
    return {"runner_up_labels": _b64(np.ascontiguousarray(values, dtype=dtype).tobytes()),
            "runner_up_scores": _b64(np.rint(scores * SCORES_SCALE).astype("<i2").tobytes())}


def explain(seg, winners: dict) -> dict[str, Any]:
    """The segmenter's winners with the support image's artifact digest and size added."""
    ids = [w["support_image"] for w in winners.values() if w.get("support_image")]
    sups = seg.sets.support_images(ids) if ids else {}
    out = {}
    for name, w in winners.items():
        item = dict(w)
        sup = sups.get(w.get("support_image") or "")
        if sup is not None:
            item["support_sha256"] = sup.sha256
            item["support_size"] = [sup.width, sup.height]
        out[name] = item
    return out
