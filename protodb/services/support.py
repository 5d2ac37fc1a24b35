"""Support images of a set with everything stored beside them: the image, its attention map and its
foreground/background masks (artifact digests), read-only. ``protodb serve`` lists them; the
artifacts themselves are read from the artifact store by digest."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import select

from protodb.catalog.schema import MaskRow, SetImageRow, SupportImageRow
from protodb.stores import Stores


class SupportService:
    def __init__(self, stores: Stores):
        self.stores = stores

    def of_set(self, set_id: str, mask_extractor_id: str) -> list[dict[str, Any]]:
        """The set's support images in build order: id, sha256, size, source, seed, origin,
        attention_sha256 and ``masks`` {role: sha256} made on ``mask_extractor_id``'s grid."""
        with self.stores.sessions.reader() as s:
            images = s.scalars(select(SupportImageRow).join(SetImageRow, SetImageRow.image_id == SupportImageRow.id)
                               .where(SetImageRow.set_id == set_id).order_by(SetImageRow.position)).all()
            masks = self._masks(s, [i.id for i in images], mask_extractor_id)
            return [{"id": i.id, "sha256": i.artifact_sha256, "size": [i.width, i.height], "source": i.source,
                     "seed": i.seed, "origin": i.origin, "attention_sha256": i.attention_sha256,
                     "masks": masks.get(i.id, {})} for i in images]

    @staticmethod
    def _masks(s, image_ids: Sequence[str], extractor_id: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if not image_ids:
            return out
        # an image built under several mask configs has several rows per role: the newest is shown
        for m in s.scalars(select(MaskRow).where(MaskRow.image_id.in_(list(image_ids)),
                                                 MaskRow.extractor_id == extractor_id).order_by(MaskRow.created_at)):
            out.setdefault(m.image_id, {})[m.role] = m.artifact_sha256
        return out
