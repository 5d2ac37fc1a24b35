"""``protodb inspect``: provenance of a set, prototypes traced back to support-image patches, and
contact sheets.

A trace answers "what does part 7 of boat look like?": the support-image patches whose features
are nearest (cosine) to that prototype, with their boxes in pixels of the stored support image.
Features come from the feature cache when present, else the set's extractor recomputes them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from protodb.entities import SHEETS, InspectReport, PrototypeSet
from protodb.errors import DamagedData
from protodb.fileio import atomic_write
from protodb.images import decode_attention, decode_rgb, png_bytes
from protodb.models.extractors import spec_from_dict
from protodb.models.registry import ModelRegistry
from protodb.names import Ref, file_stem
from protodb.features.cache import FeatureCache
from protodb.features.featurize import featurize
from protodb.features.plan import SupportFeatures
from protodb.render import CAPTION, CELL, GAP, LABEL_W, crop_with_context, patch_box, sheet_size
from protodb.services.corrections import CorrectionService
from protodb.services.labels import LabelService
from protodb.services.sets import SetService
from protodb.services.support import SupportService
from protodb.stores import Stores



class Inspector:
    """Reads one set's provenance and draws its sheets."""

    def __init__(self, stores: Stores, sets: SetService, labels: LabelService, support: SupportService,
                 registry: ModelRegistry):
        self.stores, self.sets, self.labels, self.support, self.registry = stores, sets, labels, support, registry

    def _artifact(self, digest: str) -> bytes:
        try:
            return self.stores.artifacts.get(digest)
        except (FileNotFoundError, OSError, ValueError) as err:
            raise DamagedData(f"artifact {str(digest)[:16]} cannot be read ({type(err).__name__}); "
                              "run: protodb verify") from None

    def image(self, digest: str) -> PIL.Image.Image:
        try:
            return decode_rgb(self._artifact(digest))
        except (OSError, ValueError, SyntaxError) as err:
            raise DamagedData(f"artifact {digest[:16]} is not a readable image ({type(err).__name__}); "
                              "run: protodb verify") from None

    # ------------------------------------------------------------------ provenance
    def provenance(self, pset: PrototypeSet) -> dict[str, Any]:
        """Everything that produced one prototype set, as JSON-able data (with the stored config)."""
        sup = self.support.provenance(pset)
        recs = sup["images"]
        ext = self.sets.extractor_row(pset.extractor_id)
        sizes = self._sizes([h for r in recs for h in (r["sha256"], r["attention_sha256"]) if h])
        return {
            "class": pset.class_name, "version": pset.version, "set": pset.id, "status": pset.status,
            "created_at": pset.created_at, "protodb_version": pset.protodb_version, "generator": sup["generator"],
            "seeds": [r["seed"] for r in recs if r["seed"] is not None], "images": recs,
            "extractor": {"name": ext.name, "kind": ext.kind, "id": ext.id, "weights_hash": ext.weights_hash,
                          "dim": ext.dim, "config": ext.config},
            "masks": sup["masks"], "mask_extractor_id": sup["mask_extractor_id"], "counts": dict(pset.counts),
            "params": dict(pset.params), "config": pset.config, "config_hash": pset.config_hash,
            "bytes": {"vectors": pset.bytes, "images": sizes, "masks": self._sizes(sup["mask_shas"])},
            "tags": list(pset.tags), "label": self.labels.history(pset.class_name).to_dict(),
            "corrections": self.corrections(pset),
        }

    def corrections(self, pset: PrototypeSet) -> dict[str, Any]:
        """The class's stored corrections (``all``, oldest first) and which of them this set was built
        from (``used``: their ids)."""
        used = [c for e in (pset.config or {}).get("exemplars", []) for c in e.get("corrections", [])]
        return {"used": used, "all": [r.to_dict() for r in CorrectionService(self.stores).ls(pset.class_name)]}

    def _sizes(self, digests) -> int:
        total = 0
        for h in set(digests):
            try:
                total += self.stores.artifacts.size(h)
            except (FileNotFoundError, OSError, ValueError):
                raise DamagedData(f"artifact {str(h)[:16]} is missing; run: protodb verify") from None
        return int(total)

    # ------------------------------------------------------------------ traces
    def support_features(self, prov: dict) -> list[tuple[dict, PIL.Image.Image, torch.Tensor]]:
        """(image record, image, (h, w, D) features) for every support image of a set."""
        e = prov["extractor"]
        spec = spec_from_dict({"name": e["name"], "kind": e["kind"], "config": e["config"]})
        extractor = self.registry.load_extractor(spec, "cpu", torch.float32)
        images = [self.image(i["sha256"]) for i in prov["images"]]
        plan = SupportFeatures.of(prov["config"], prov["params"])
        feats = featurize(extractor, [(i["sha256"], im) for i, im in zip(prov["images"], images)],
                          short_side=plan.short_side, cache=FeatureCache(self.stores.cache_dir / "features"),
                          windows=plan.window_spec())
        return list(zip(prov["images"], images, feats))

    def trace(self, pset: PrototypeSet, kinds: Sequence[str], top: int = 6,
              prepared: tuple[dict, list] | None = None) -> dict[str, Any]:
        """For each prototype of ``kinds``: the ``top`` nearest support patches.

        Returns ``{"prototypes": [{"id", "kind", "index", "nearest": [{"image", "patch": [y, x],
        "box": [x0, y0, x1, y1], "similarity"}]}], "provenance": ..., "images": {id: PIL image}}``.
        """
        if prepared is None:  # (provenance, support_features): computed once when tracing several kinds
            prov = self.provenance(pset)
            prepared = (prov, self.support_features(prov))
        prov, feats = prepared
        rows = self.sets.prototypes(pset, kinds=list(kinds))
        flat, where = [], []
        for rec, im, f in feats:
            h, w, d = f.shape
            flat.append(f.reshape(-1, d))
            where += [(rec["id"], yy, xx, (h, w), im.size) for yy in range(h) for xx in range(w)]
        allf = torch.cat(flat).numpy().astype(np.float32)
        sims = rows.vectors @ allf.T  # (P, N) cosine: both sides L2-normalised
        out, per_kind = [], {}
        for p in range(len(rows)):
            kind = rows.kinds[p]
            idx = per_kind.get(kind, 0)
            per_kind[kind] = idx + 1
            nearest = []
            for j in np.argsort(-sims[p], kind="stable")[:top]:
                image_id, yy, xx, grid, size = where[j]
                nearest.append({"image": image_id, "patch": [yy, xx], "box": patch_box(yy, xx, grid, size),
                                "similarity": round(float(sims[p, j]), 4)})
            out.append({"id": rows.ids[p], "kind": kind, "index": idx, "nearest": nearest})
        return {"prototypes": out, "provenance": prov, "images": {rec["id"]: im for rec, im, _ in feats}}

    # ------------------------------------------------------------------ rendering
    def render_sheet(self, traced: dict, out_path: Path, top: int = 6) -> Path:
        """One row per prototype: its name, then crops of its nearest patches (outlined) + similarity."""
        protos, images = traced["prototypes"], traced["images"]
        W, H = sheet_size(len(protos), top)
        sheet = PIL.Image.new("RGB", (W, H), (250, 250, 250))
        draw = PIL.ImageDraw.Draw(sheet)
        cls = traced["provenance"]["class"]
        for r, p in enumerate(protos):
            y = GAP + r * (CELL + CAPTION + GAP)
            draw.text((GAP, y + CELL // 2 - 6), f"{cls} {p['kind']} {p['index']}", fill=(0, 0, 0))
            for c, n in enumerate(p["nearest"][:top]):
                x = LABEL_W + c * (CELL + GAP)
                sheet.paste(crop_with_context(images[n["image"]], n["box"]), (x, y))
                draw.text((x + 2, y + CELL + 2), f"{n['similarity']:.3f}", fill=(0, 0, 0))
        atomic_write(out_path, png_bytes(sheet))
        return out_path

    def render_support(self, prov: dict, out_path: Path, thumb: int = 160) -> Path:
        """Support images, each with its foreground (green) / background (red) masks and attention map."""
        recs = prov["images"]
        W, H = 3 * (thumb + GAP) + GAP, len(recs) * (thumb + GAP) + GAP
        sheet = PIL.Image.new("RGB", (W, max(H, thumb)), (250, 250, 250))
        masks = self.support.masks([r["id"] for r in recs], prov["mask_extractor_id"])
        for r, rec in enumerate(recs):
            y = GAP + r * (thumb + GAP)
            im = self.image(rec["sha256"]).resize((thumb, thumb))
            sheet.paste(im, (GAP, y))
            over = np.asarray(im, dtype=np.float32).copy()
            for role, colour in (("foreground", (0, 200, 0)), ("background", (220, 0, 0))):
                sha = masks.get(rec["id"], {}).get(role)
                if sha is None:
                    continue
                mask = np.asarray(PIL.Image.open(io.BytesIO(self._artifact(sha))).resize((thumb, thumb))) > 127
                over[mask] = 0.5 * over[mask] + 0.5 * np.array(colour, np.float32)
            sheet.paste(PIL.Image.fromarray(over.astype(np.uint8)), (2 * GAP + thumb, y))
            if rec.get("attention_sha256"):
                att = decode_attention(self._artifact(rec["attention_sha256"]))
                heat = PIL.Image.fromarray((att * 255).astype(np.uint8)).resize((thumb, thumb))
                sheet.paste(heat.convert("RGB"), (3 * GAP + 2 * thumb, y))
        atomic_write(out_path, png_bytes(sheet))
        return out_path

    # ------------------------------------------------------------------ the command
    def inspect(self, ref: str, *, extractor: str | None = None, parts: bool = False, background: bool = False,
                instances: bool = False, images: bool = False, out: str | Path | None = None,
                top: int = 6) -> InspectReport:
        """Provenance of a class's set (newest, ``boat@3`` or ``boat@tag``) and, on request, contact
        sheets tracing prototypes back to support-image patches (PNG + JSON in ``out``)."""
        name = Ref.parse(ref).name
        chosen = self.sets.resolve(ref, extractor)[0]
        listing = self.sets.ls([name])
        prov = self.provenance(chosen)
        files: dict[str, dict[str, str]] = {}
        flags = {"parts": parts, "background": background, "instances": instances}
        if any(flags.values()) or images:
            folder = Path(out or self.stores.home / "out" / "inspect")
            stem = file_stem(f"{name}@{chosen.version}-{chosen.extractor}")
            prepared = None
            for label, kinds in SHEETS.items():
                if not flags[label]:
                    continue
                prepared = prepared or (prov, self.support_features(prov))
                traced = self.trace(chosen, kinds, top=top, prepared=prepared)
                png = self.render_sheet(traced, folder / f"{stem}-{label}.png", top=top)
                js = folder / f"{stem}-{label}.json"
                atomic_write(js, json.dumps({p["id"]: {"kind": p["kind"], "index": p["index"], "nearest": p["nearest"]}
                                             for p in traced["prototypes"]}, indent=1).encode())
                files[label] = {"png": str(png), "json": str(js)}
            if images:
                files["images"] = {"png": str(self.render_support(prov, folder / f"{stem}-images.png"))}
        return InspectReport(class_name=name, versions=listing[0].versions if listing else (), provenance=prov,
                             files=files)
