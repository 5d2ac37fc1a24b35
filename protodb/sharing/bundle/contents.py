"""A verified bundle's contents: catalog rows (checked and cross-referenced), vectors, artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protodb.catalog import rules
from protodb.catalog.schema import SET_READY
from protodb.features.plan import SupportFeatures
from protodb.entities import PROTOTYPE_KINDS as KINDS
from protodb.errors import InvalidInput
from protodb.names import check_tag_name, normalize_class_name
from protodb.sharing.bundle.read import Staged, _load_json
from protodb.sharing.bundle.tables import FOREIGN_KEYS, TABLES, _check_rows
from protodb.sharing.bundle.format import Limits, refuse
from protodb.sharing.bundle.vectors import vectors_from_arrow
from protodb.storage.vectors import PrototypeRows

#: Tables a bundle may lack (written by a protodb from before they existed): read as empty.
OPTIONAL_TABLES = ("corrections",)


@dataclass
class Contents:
    """A verified bundle's catalog rows (by table), vectors (by set id) and artifact files."""

    manifest: dict[str, Any]
    manifest_sha256: str
    rows: dict[str, list[dict[str, Any]]]
    vectors: dict[str, PrototypeRows]
    artifacts: dict[str, Path | None]  # sha256 → staged file (None: already in the local store)
    #: vocabulary name (as in the manifest) → the fresh summary indexes it had where it was exported
    #: (extractor, kind, params: :func:`carried_indexes`); empty for bundles written before they travelled
    indexes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.manifest_sha256[:12]


def load_contents(staged: Staged, limits: Limits | None = None) -> Contents:
    """Parse and cross-check the catalog rows and vectors of a verified bundle (no catalog access)."""
    staged.verify()
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in TABLES:
        name = f"catalog/{table}.json"
        if name not in staged.files and table in OPTIONAL_TABLES:  # bundles written before the table existed
            rows[table] = []
            continue
        if name not in staged.files:
            raise refuse(f"the bundle has no {name}")
        rows[table] = _check_rows(table, _load_json(staged.files[name], name))
        total = sum(len(v) for v in rows.values())
        if limits is not None and total > limits.max_rows:
            raise refuse(f"the bundle holds more than {limits.max_rows} catalog rows (raise PROTODB_IMPORT_MAX_ROWS "
                         "if you trust it)")
    ids = {t: {r["id"] for r in rows[t]} for t in TABLES if "id" in TABLES[t].__table__.columns}

    for table, column, target, nullable in FOREIGN_KEYS:  # every reference stays inside the bundle
        if "id" not in TABLES[target].__table__.columns:
            continue
        for r in rows[table]:
            value = r.get(column)
            if value is None and nullable:
                continue
            if value not in ids[target]:
                raise refuse(f"catalog/{table}.json refers to {target} {str(value)[:64]} that the bundle lacks")
    names = [c["name"] for c in rows["classes"]]
    if len(set(names)) != len(names):
        raise refuse("catalog/classes.json names a class twice")
    for c in rows["classes"]:
        try:
            if normalize_class_name(c["name"]) != c["name"]:
                raise InvalidInput("not normalised")
        except InvalidInput:
            raise refuse(f"class name {c['name'][:60]!r} is not a valid class name") from None
    for t in rows["tags"]:
        try:
            check_tag_name(t["name"])
        except InvalidInput:
            raise refuse(f"tag {t['name'][:60]!r} is not a valid tag name") from None
    for v in rows["vocabularies"]:
        try:
            check_tag_name(v["name"])
        except InvalidInput:
            raise refuse(f"vocabulary {v['name'][:60]!r} is not a valid vocabulary name") from None

    artifacts: dict[str, Path | None] = {}
    for name, meta in staged.manifest["members"].items():
        if name.startswith("artifacts/"):
            artifacts[meta["sha256"]] = staged.files.get(name)
    for img in rows["support_images"]:
        for key in ("artifact_sha256", "attention_sha256"):
            if img.get(key) and img[key] not in artifacts:
                raise refuse(f"support image {img['id']} needs artifact {img[key]} that the bundle lacks")
    for m in rows["masks"]:
        if m["artifact_sha256"] not in artifacts:
            raise refuse(f"mask {m['id']} needs artifact {m['artifact_sha256']} that the bundle lacks")
    for c in rows["corrections"]:
        for key in ("image_sha256", "mask_sha256"):
            if c[key] not in artifacts:
                raise refuse(f"correction {c['id']} needs artifact {c[key]} that the bundle lacks")

    dims = {e["id"]: int(e["dim"]) for e in rows["extractors"]}
    listed = {s.get("id") for s in staged.manifest["contents"]["sets"] if isinstance(s, dict)}
    set_ids = {s["id"] for s in rows["prototype_sets"]}
    if listed != set_ids:
        raise refuse("the manifest's list of sets does not match catalog/prototype_sets.json")
    vector_members = {n for n in staged.manifest["members"] if n.startswith("vectors/")}
    if vector_members != {f"vectors/{i}.arrow" for i in set_ids}:
        raise refuse("the bundle's vector files do not match its prototype sets")
    lean = bool(staged.manifest.get("lean"))
    images_of: dict[str, set[str]] = {}
    for link in rows["prototype_set_images"]:
        images_of.setdefault(link["set_id"], set()).add(link["image_id"])
    vectors = {}
    for s in rows["prototype_sets"]:
        if s.get("status") != SET_READY or not isinstance(s.get("version"), int):
            raise refuse(f"set {s['id']} is not a ready, versioned set")
        counts = s.get("counts") or {}
        if rules.check_counts(counts):
            raise refuse(f"set {s['id']} {rules.check_counts(counts)}")
        expected = sum(counts.values())
        rows_ = vectors_from_arrow(staged.files[f"vectors/{s['id']}.arrow"], s["id"], dims[s["extractor_id"]],
                                   expected)
        got = {k: rows_.kinds.count(k) for k in KINDS}
        if any(got[k] != int(counts.get(k, 0)) for k in KINDS):
            raise refuse(f"vectors/{s['id']}.arrow kinds do not match the set's counts")
        _check_sources(s, rows_, rows, images_of, lean)
        vectors[s["id"]] = rows_
    return Contents(staged.manifest, staged.manifest_sha256, rows, vectors, artifacts,
                    carried_indexes(staged.manifest))


#: At most this many indexes per vocabulary in a manifest (one per extractor), parameters per index.
MAX_INDEXES, MAX_INDEX_PARAMS = 64, 16


def carried_indexes(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The ``indexes`` a manifest records per vocabulary (absent in bundles from before they travelled: none),
    checked for shape only: extractor and kind are short strings, params a small dict of integers. Whether
    the kind and parameters make an index is for the rebuild to find out (it fails alone, not the import)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest["contents"]["vocabularies"]:
        if not isinstance(entry, dict) or "indexes" not in entry:
            continue
        name, carried = entry.get("name"), entry["indexes"]
        if not isinstance(name, str) or not isinstance(carried, list) or len(carried) > MAX_INDEXES:
            raise refuse("the manifest's vocabulary indexes are malformed")
        checked = []
        for ix in carried:
            params = ix.get("params") if isinstance(ix, dict) else None
            if (not isinstance(ix, dict) or not _short(ix.get("extractor"), 200) or not _short(ix.get("kind"), 32)
                    or not isinstance(params, dict) or len(params) > MAX_INDEX_PARAMS
                    or not all(_short(k, 64) and isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 31
                               for k, v in params.items())):
                raise refuse(f"the manifest's index of vocabulary {name[:60]!r} is malformed")
            checked.append({"extractor": ix["extractor"], "kind": ix["kind"], "params": dict(params)})
        if len({ix["extractor"] for ix in checked}) != len(checked):
            raise refuse(f"the manifest names two indexes of vocabulary {name[:60]!r} for one extractor")
        out[name] = checked
    return out


def _short(value: Any, n: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= n and value.isprintable()


def _check_sources(pset: dict, vec: PrototypeRows, rows: dict, images_of: dict[str, set[str]], lean: bool) -> None:
    """Every prototype's source image is one of the set's support images (unless the bundle is lean,
    which carries no images), and its region lies on that image's patch grid."""
    name = f"vectors/{pset['id']}.arrow"
    if lean:
        return
    own = images_of.get(pset["id"], set())
    by_id = {i["id"]: i for i in rows["support_images"]}
    ext = next(e for e in rows["extractors"] if e["id"] == pset["extractor_id"])
    patch = int((ext.get("config") or {}).get("patch_size") or 1)
    plan = SupportFeatures.of(pset.get("config"), pset.get("params"))
    for image_id, region in zip(vec.image_ids, vec.regions):
        if image_id is None:
            continue
        if image_id not in own:
            raise refuse(f"{name} names support image {image_id[:32]} that is not one of the set's images")
        img = by_id[image_id]
        gh, gw = plan.grid(int(img["width"]), int(img["height"]), patch)
        if region is not None and (region[2] > gh or region[3] > gw):
            raise refuse(f"{name} holds a region {list(region)} outside its image's {gh}x{gw} patch grid")
