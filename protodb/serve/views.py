"""The catalog as the web page reads it: classes with thumbnails, one set's provenance, its support
images (with masks and attention maps) and its prototypes traced to support patches.

Everything here reads through the services (only ``ready`` sets are ever resolved). The class list
is cached until the catalog's change stamp moves; traces are cached per set id and sheet (a ready set
never changes, so a trace is computed once: it needs the set's extractor to featurize the support
images, so it runs on the worker pool like segmenting).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

from protodb.entities import SHEETS, PrototypeSet
from protodb.errors import NotFound
from protodb.names import Ref

SET_ID = re.compile(r"^[0-9a-f]{32}$")
TRACE_CACHE = 64


class CatalogViews:
    def __init__(self, db, trace_top: int = 6):
        self.db = db
        self.trace_top = trace_top
        self._lock = threading.Lock()
        self._classes: tuple[tuple, dict] | None = None
        self._traces: OrderedDict[tuple[str, str, int], dict] = OrderedDict()

    @property
    def inspector(self):
        return self.db.inspector

    # ------------------------------------------------------------------ gallery
    def classes(self) -> dict[str, Any]:
        """Every class with ready versions; each version names its sets and a thumbnail artifact."""
        stamp = self.db.changes.stamp()
        with self._lock:
            if self._classes is not None and self._classes[0] == stamp:
                return self._classes[1]
        listing = self.db.sets.ls()
        first_images: dict[str, str] = {}
        sets_by_id: dict[str, PrototypeSet] = {}
        for c in listing:
            for v in c.versions:
                for set_id in v.sets:
                    pset = self.db.sets.get(set_id)
                    sets_by_id[set_id] = pset
                    if pset.images and v.sets[0] == set_id:
                        first_images[set_id] = pset.images[0]
        images = self.db.sets.support_images(list(first_images.values()))
        out = []
        for c in listing:
            versions = []
            for v in c.versions:
                img = images.get(first_images.get(v.sets[0], ""))
                versions.append({
                    **v.to_dict(),
                    "thumbnail": img.sha256 if img else None,
                    "sets_detail": [{"id": sid, "extractor": sets_by_id[sid].extractor, "ref": sets_by_id[sid].ref,
                                     "preset": sets_by_id[sid].params.get("preset")} for sid in v.sets],
                })
            out.append({"name": c.name, "kind": c.kind, "id": c.id, "versions": versions})
        data = {"classes": out}
        with self._lock:
            self._classes = (stamp, data)
        return data

    def class_detail(self, name: str) -> dict[str, Any]:
        listing = self.db.sets.ls([name])
        history = self.db.labels.history(name)  # NotFound for an unknown class
        return {"name": history.name, "kind": history.kind, "label": history.to_dict(),
                "versions": [v.to_dict() for v in (listing[0].versions if listing else ())]}

    # ------------------------------------------------------------------ one set
    def find_set(self, key: str, extractor: str | None = None) -> PrototypeSet:
        """A ready set by id (32 hex) or by reference (``boat``, ``boat@2``, ``boat@tag``)."""
        if SET_ID.match(key):
            try:
                pset = self.db.sets.get(key)
            except NotFound:
                pset = None
            if pset is None or pset.status != "ready":
                raise NotFound(f"no ready prototype set {key}")
            return pset
        Ref.parse(key)
        return self.db.sets.resolve(key, extractor)[0]

    def set_detail(self, key: str, extractor: str | None = None) -> dict[str, Any]:
        pset = self.find_set(key, extractor)
        prov = self.inspector.provenance(pset)
        siblings = [s.to_dict() for s in self.db.sets.resolve(pset.class_name)]
        return {"set": pset.to_dict(), "ref": pset.ref, "provenance": prov, "newest": siblings,
                "mask_extractor": self.extractor_name(prov["mask_extractor_id"])}

    def extractor_name(self, extractor_id: str) -> dict[str, Any]:
        """{id, name, patch_size} of an extractor (the name is what people know it by, not its hash)."""
        rec = self.db.sets.extractor_row(extractor_id)
        return {"id": rec.id, "name": rec.name, "patch_size": (rec.config or {}).get("patch_size")}

    def images(self, key: str) -> dict[str, Any]:
        """The set's support images with their attention maps and fg/bg masks (artifact digests), and
        the extractor whose patch grid made the masks (``mask_extractor``: id, name, patch size)."""
        doc = self.db.support.images_of(self.find_set(key))
        return {**doc, "mask_extractor": self.extractor_name(doc["mask_extractor_id"])}

    def trace(self, key: str, sheet: str = "parts", top: int | None = None) -> dict[str, Any]:
        """Each prototype of a sheet (parts, instances, background): its ``top`` nearest support
        patches (boxes in support-image pixels), as ``protodb inspect`` draws them."""
        if sheet not in SHEETS:
            raise NotFound(f"no sheet {sheet!r}; sheets: {', '.join(SHEETS)}")
        top = int(top or self.trace_top)
        pset = self.find_set(key)
        cache_key = (pset.id, sheet, top)
        with self._lock:
            if cache_key in self._traces:
                self._traces.move_to_end(cache_key)
                return self._traces[cache_key]
        traced = self.inspector.trace(pset, list(SHEETS[sheet]), top=top)
        prov = traced["provenance"]
        data = {
            "set": pset.id, "ref": pset.ref, "class": pset.class_name, "version": pset.version,
            "extractor": pset.extractor, "sheet": sheet, "kinds": list(SHEETS[sheet]), "top": top,
            "images": [{"id": i["id"], "sha256": i["sha256"], "size": i["size"], "source": i["source"]}
                       for i in prov["images"]],
            "prototypes": [{"id": p["id"], "kind": p["kind"], "index": p["index"], "nearest": p["nearest"]}
                           for p in traced["prototypes"]],
        }
        with self._lock:
            self._traces[cache_key] = data
            while len(self._traces) > TRACE_CACHE:
                self._traces.popitem(last=False)
        return data
