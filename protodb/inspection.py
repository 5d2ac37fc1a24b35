"""Looking inside a prototype set: provenance, prototypes traced back to support-image patches,
and contact sheets.

A trace answers "what does part 7 of boat look like?": the support-image patches whose features
are nearest (cosine) to that prototype, with their boxes in pixels of the stored support image.
Features come from the feature cache when present, else the set's extractor recomputes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from sqlalchemy import select

from protodb.catalog.schema import (
    ExtractorRow,
    GenerationRunRow,
    GeneratorSpecRow,
    MaskRow,
    PrototypeSetRow,
    SetImageRow,
    SupportImageRow,
)
from protodb.pipeline import imageio
from protodb.pipeline.features import FeatureCache, featurize

# contact-sheet geometry (pixels)
CELL = 96          # each crop is resized to CELL x CELL
CAPTION = 16       # similarity text under each crop
LABEL_W = 120      # left column naming the prototype
GAP = 4
CONTEXT = 2        # crop = the patch plus this many patches on each side


def sheet_size(rows: int, top: int) -> tuple[int, int]:
    """(width, height) of a contact sheet with ``rows`` prototypes and ``top`` crops per row."""
    return LABEL_W + top * (CELL + GAP) + GAP, rows * (CELL + CAPTION + GAP) + GAP


# ---------------------------------------------------------------------------------- provenance
def provenance(db, set_summary: dict[str, Any]) -> dict[str, Any]:
    """Everything that produced one prototype set, as JSON-able data."""
    with db.session() as s:
        row = s.get(PrototypeSetRow, set_summary["id"])
        ext = s.get(ExtractorRow, row.extractor_id)
        images = s.scalars(
            select(SupportImageRow).join(SetImageRow, SetImageRow.image_id == SupportImageRow.id)
            .where(SetImageRow.set_id == row.id).order_by(SetImageRow.position)
        ).all()
        generator = None
        if row.run_id:
            run = s.get(GenerationRunRow, row.run_id)
            spec = s.get(GeneratorSpecRow, run.generator_spec_id)
            generator = {
                "name": spec.name, "model_id": spec.model_id, "revision": spec.revision,
                "scheduler": spec.scheduler, "steps": spec.steps, "guidance": spec.guidance,
                "size": [spec.width, spec.height], "dtype": spec.dtype,
                "prompt": run.prompt, "negative_prompt": run.negative_prompt, "base_seed": run.base_seed,
            }
        masks = s.scalars(select(MaskRow).where(
            MaskRow.image_id.in_([i.id for i in images]), MaskRow.extractor_id == row.extractor_id)).all()
        methods: dict[str, dict] = {}
        for m in masks:
            methods.setdefault(m.method, {k: v for k, v in (m.params or {}).items() if k != "grid"})
        img_bytes = sum(db.artifacts.size(h) for i in images
                        for h in (i.artifact_sha256, i.attention_sha256) if h)
        mask_bytes = sum(db.artifacts.size(h) for h in {m.artifact_sha256 for m in masks})
        out = {
            "class": set_summary["class"], "version": row.version, "set": row.id,
            "status": row.status, "created_at": set_summary["created_at"],
            "protodb_version": row.protodb_version,
            "generator": generator,
            "seeds": [i.seed for i in images if i.seed is not None],
            "images": [{"id": i.id, "source": i.source, "seed": i.seed, "origin": i.origin,
                        "size": [i.width, i.height], "sha256": i.artifact_sha256,
                        "attention_sha256": i.attention_sha256} for i in images],
            "extractor": {"name": ext.name, "kind": ext.kind, "id": ext.id,
                          "weights_hash": ext.weights_hash, "dim": ext.dim, "config": ext.config},
            "masks": methods,
            "counts": dict(row.counts or {}),
            "params": dict(row.params or {}),
            "bytes": {"vectors": int(row.nbytes or 0), "images": int(img_bytes), "masks": int(mask_bytes)},
            "tags": set_summary["tags"],
        }
    out["label"] = db.label_history(set_summary["class"])
    return out


# ---------------------------------------------------------------------------------- traces
def _extractor_for(db, ext_cfg: dict, registry):
    from protodb.models.extractors import spec_from_dict

    spec = spec_from_dict({"name": ext_cfg["name"], "kind": ext_cfg["kind"], "config": ext_cfg["config"]})
    return registry.load_extractor(spec, "cpu", torch.float32)


def support_features(db, prov: dict, registry) -> list[tuple[dict, PIL.Image.Image, torch.Tensor]]:
    """(image record, image, (h, w, D) features) for every support image of a set."""
    extractor = _extractor_for(db, prov["extractor"], registry)
    images = [imageio.decode_rgb(db.artifacts.get(i["sha256"])) for i in prov["images"]]
    short = prov["params"].get("short_side") or extractor.input_size or 448
    feats = featurize(extractor, [(i["sha256"], im) for i, im in zip(prov["images"], images)],
                      short_side=short, cache=FeatureCache(Path(db.home) / "cache" / "features"))
    return list(zip(prov["images"], images, feats))


def patch_box(y: int, x: int, grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """Patch (y, x) of an (h, w) grid → [x0, y0, x1, y1] pixels of a (W, H) image."""
    h, w = grid
    W, H = size
    return [int(round(x * W / w)), int(round(y * H / h)), int(round((x + 1) * W / w)),
            int(round((y + 1) * H / h))]


def trace(db, set_summary: dict, kinds: Sequence[str], registry, top: int = 6,
          prepared: tuple[dict, list] | None = None) -> dict[str, Any]:
    """For each prototype of ``kinds``: the ``top`` nearest support patches.

    Returns ``{"prototypes": [{"id", "kind", "index", "nearest": [{"image", "patch": [y, x],
    "box": [x0, y0, x1, y1], "similarity"}]}], "provenance": …, "images": {id: PIL image}}``
    (the decoded support images, so rendering does not decode them again).
    """
    if prepared is None:  # (provenance, support_features): computed once when tracing several kinds
        prov = provenance(db, set_summary)
        prepared = (prov, support_features(db, prov, registry))
    prov, feats = prepared
    rows = db.prototypes(set_summary, kinds=list(kinds))
    flat, where = [], []
    for rec, im, f in feats:
        h, w, d = f.shape
        flat.append(f.reshape(-1, d))
        where += [(rec["id"], yy, xx, (h, w), im.size) for yy in range(h) for xx in range(w)]
    allf = torch.cat(flat).numpy().astype(np.float32)
    sims = rows.vectors @ allf.T  # (P, N) cosine: both sides L2-normalised
    out = []
    per_kind: dict[str, int] = {}
    for p in range(len(rows)):
        kind = rows.kinds[p]
        idx = per_kind.get(kind, 0)
        per_kind[kind] = idx + 1
        order = np.argsort(-sims[p], kind="stable")[:top]
        nearest = []
        for j in order:
            image_id, yy, xx, grid, size = where[j]
            nearest.append({"image": image_id, "patch": [yy, xx], "box": patch_box(yy, xx, grid, size),
                            "similarity": round(float(sims[p, j]), 4)})
        out.append({"id": rows.ids[p], "kind": kind, "index": idx, "nearest": nearest})
    return {"prototypes": out, "provenance": prov, "images": {rec["id"]: im for rec, im, _ in feats}}


# ---------------------------------------------------------------------------------- rendering
def _crop(image: PIL.Image.Image, box: list[int]) -> PIL.Image.Image:
    x0, y0, x1, y1 = box
    pw, ph = x1 - x0, y1 - y0
    cx0, cy0 = max(0, x0 - CONTEXT * pw), max(0, y0 - CONTEXT * ph)
    cx1, cy1 = min(image.width, x1 + CONTEXT * pw), min(image.height, y1 + CONTEXT * ph)
    crop = image.crop((cx0, cy0, cx1, cy1)).resize((CELL, CELL), PIL.Image.BILINEAR)
    sx, sy = CELL / max(1, cx1 - cx0), CELL / max(1, cy1 - cy0)
    draw = PIL.ImageDraw.Draw(crop)
    draw.rectangle([(x0 - cx0) * sx, (y0 - cy0) * sy, (x1 - cx0) * sx - 1, (y1 - cy0) * sy - 1],
                   outline=(255, 40, 40), width=2)
    return crop


def render_sheet(db, traced: dict, out_path: Path, top: int = 6) -> Path:
    """One row per prototype: its name, then crops of its nearest patches (outlined) + similarity."""
    protos = traced["prototypes"]
    images = traced.get("images") or {i["id"]: imageio.decode_rgb(db.artifacts.get(i["sha256"]))
                                      for i in traced["provenance"]["images"]}
    W, H = sheet_size(len(protos), top)
    sheet = PIL.Image.new("RGB", (W, H), (250, 250, 250))
    draw = PIL.ImageDraw.Draw(sheet)
    cls = traced["provenance"]["class"]
    for r, p in enumerate(protos):
        y = GAP + r * (CELL + CAPTION + GAP)
        draw.text((GAP, y + CELL // 2 - 6), f"{cls} {p['kind']} {p['index']}", fill=(0, 0, 0))
        for c, n in enumerate(p["nearest"][:top]):
            x = LABEL_W + c * (CELL + GAP)
            sheet.paste(_crop(images[n["image"]], n["box"]), (x, y))
            draw.text((x + 2, y + CELL + 2), f"{n['similarity']:.3f}", fill=(0, 0, 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path


def render_support(db, prov: dict, out_path: Path, thumb: int = 160) -> Path:
    """Support images, each with its foreground (green) / background (red) masks and attention map."""
    recs = prov["images"]
    W, H = 3 * (thumb + GAP) + GAP, len(recs) * (thumb + GAP) + GAP
    sheet = PIL.Image.new("RGB", (W, max(H, thumb)), (250, 250, 250))
    with db.session() as s:
        for r, rec in enumerate(recs):
            y = GAP + r * (thumb + GAP)
            im = imageio.decode_rgb(db.artifacts.get(rec["sha256"])).resize((thumb, thumb))
            sheet.paste(im, (GAP, y))
            overlay = np.asarray(im, dtype=np.float32)
            for role, colour in (("foreground", (0, 200, 0)), ("background", (220, 0, 0))):
                m = s.scalar(select(MaskRow).where(MaskRow.image_id == rec["id"], MaskRow.role == role,
                                                   MaskRow.extractor_id == prov["extractor"]["id"]))
                if m is None:
                    continue
                mask = np.asarray(PIL.Image.open(_bytes(db, m.artifact_sha256)).resize((thumb, thumb))) > 127
                overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array(colour, np.float32)
            sheet.paste(PIL.Image.fromarray(overlay.astype(np.uint8)), (2 * GAP + thumb, y))
            if rec.get("attention_sha256"):
                att = imageio.decode_attention(db.artifacts.get(rec["attention_sha256"]))
                heat = PIL.Image.fromarray((att * 255).astype(np.uint8)).resize((thumb, thumb))
                sheet.paste(heat.convert("RGB"), (3 * GAP + 2 * thumb, y))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path


def _bytes(db, digest: str):
    import io

    return io.BytesIO(db.artifacts.get(digest))
