"""Summary indexes of vocabularies: the first stage of two-stage matching (:mod:`protodb.segment.shortlist`).

A vocabulary's summary for one extractor is every class's class and instance prototypes (foreground only:
:data:`SUMMARY_KINDS`), a few vectors per class instead of the hundreds a full set holds. ``protodb index
build VOCAB`` writes it as a LanceDB table ``idx_<random>`` in the database's vector store, optionally with
LanceDB's IVF-PQ vector index over it, and records it in the catalog's settings under
``index:<vocab>:<extractor id>`` as JSON: the table, its kind and parameters, and the *coverage key* — a
sha256 over the (class, set id) list it was built from. The index is fresh while the vocabulary resolves
to exactly those sets; a new set version, an added or removed class makes it stale (``status`` and
``protodb verify`` say so; two-stage matching then uses an exact summary read from the sets).

A build writes a new table under a new name and only then swaps the catalog record (one transaction),
dropping the old table after: a build killed at any point leaves the previous index recorded and usable;
the orphan table it leaves is removed by the next build or drop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from protodb.entities import Damage, IndexStatus, PrototypeSet
from protodb.errors import InvalidInput, NotFound
from protodb.lazy import lazy_import
from protodb.segment.vocab import ResolvedVocabulary, resolve_vocabulary
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService
from protodb.storage.vectors import SummaryTables
from protodb.stores import Stores

pa = lazy_import("pyarrow")
pc = lazy_import("pyarrow.compute")
log = logging.getLogger(__name__)

#: Prototype kinds a class contributes to the summary (its mean and one per support image).
SUMMARY_KINDS = ("class", "instance")
#: ``--kind auto`` gives an IVF-PQ index from this many summary vectors on (below: ``flat``, searched
#: exactly in memory, which measured faster than LanceDB's ANN search up to this size on a 2-core CPU).
ANN_MIN_ROWS = 500_000
#: Sets read one by one (checksummed, through the vector cache) up to this many; more: one table scan.
_PER_SET_READS = 256
KINDS = ("auto", "flat", "ivf_pq")
#: The IVF-PQ parameters an index records (:func:`ann_params`), each a positive integer.
ANN_PARAMS = ("num_partitions", "num_sub_vectors", "nprobes", "refine_factor")


def setting_key(vocab: str, extractor_id: str) -> str:
    return f"index:{vocab}:{extractor_id[:16]}"


def coverage_key(sets: Sequence[PrototypeSet]) -> str:
    """sha256 over the (class, set id) list an index covers, in vocabulary order."""
    return hashlib.sha256("\n".join(f"{s.class_name}|{s.id}" for s in sets).encode()).hexdigest()


@dataclass
class Summary:
    """Summary vectors of a list of sets. ``owner``: (R,) int64 position of each row's set in that list;
    ``vectors``: (R, D) float32, L2-normalised; ``set_ids`` / ``kinds``: (R,)."""

    owner: np.ndarray
    vectors: np.ndarray
    set_ids: list[str]
    kinds: list[str]


def read_summary(stores: Stores, sets: SetService, psets: Sequence[PrototypeSet]) -> Summary:
    """The class and instance prototypes of ``psets`` (all of one extractor): read set by set through the
    checksummed cache when few, else in one scan of the prototype table (only those kinds' rows)."""
    position = {s.id: i for i, s in enumerate(psets)}
    if len(psets) <= _PER_SET_READS:
        owner, vecs, ids, kinds = [], [], [], []
        for i, pset in enumerate(psets):
            rows = sets.prototypes(pset, kinds=SUMMARY_KINDS)
            owner += [i] * len(rows)
            vecs.append(rows.vectors)
            ids += [pset.id] * len(rows)
            kinds += list(rows.kinds)
        return Summary(np.asarray(owner, np.int64), np.concatenate(vecs).astype(np.float32), ids, kinds)
    parts = []
    for table_name in sorted({s.vector_table for s in psets}):
        table = stores.vectors._table(table_name)
        if table is None:
            raise NotFound(f"vector table {table_name} does not exist; run: protodb verify")
        table.checkout_latest()
        kinds_sql = ", ".join(f"'{k}'" for k in SUMMARY_KINDS)
        arrow = (table.search().where(f"kind IN ({kinds_sql})").select(["set_id", "kind", "vector"])
                 .limit(None).to_arrow())
        wanted = pa.array([s.id for s in psets if s.vector_table == table_name], pa.string())
        parts.append(arrow.filter(pc.is_in(arrow.column("set_id"), value_set=wanted)))
    arrow = pa.concat_tables(parts)
    dim = arrow.schema.field("vector").type.list_size
    set_ids = arrow.column("set_id").to_pylist()
    vectors = arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return Summary(np.array([position[s] for s in set_ids], np.int64), np.asarray(vectors, np.float32), set_ids,
                   arrow.column("kind").to_pylist())


def check_params(kind: str, params: dict[str, Any] | None) -> dict[str, int]:
    """``params`` for an index of ``kind`` (flat: none; ivf_pq: every one of :data:`ANN_PARAMS`, positive
    integers), or InvalidInput."""
    params = dict(params or {})
    if kind == "flat":
        if params:
            raise InvalidInput(f"a flat index takes no parameters; got {sorted(params)}")
        return {}
    if kind != "ivf_pq" or set(params) != set(ANN_PARAMS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in params.values()):
        raise InvalidInput(f"an ivf_pq index takes {', '.join(ANN_PARAMS)} (positive integers); got {params}")
    return {k: int(params[k]) for k in ANN_PARAMS}


def ann_params(rows: int, dim: int) -> dict[str, int]:
    """IVF-PQ parameters for ``rows`` summary vectors: about sqrt(rows) partitions, 8 dimensions per PQ
    sub-vector, and the search settings (partitions probed, exact re-ranking factor)."""
    return {"num_partitions": max(1, min(4096, int(math.sqrt(rows)))),
            "num_sub_vectors": dim // 8 if dim % 8 == 0 else 1, "nprobes": 32, "refine_factor": 10}


class VocabIndexes:
    """Build, check, open and drop the summary indexes of one database's vocabularies."""

    def __init__(self, stores: Stores, sets: SetService, vocabs: VocabService):
        self.stores, self.sets, self.vocabs = stores, sets, vocabs
        self._tables: SummaryTables | None = None

    @property
    def tables(self) -> SummaryTables:
        """The summary tables (connects LanceDB on first use)."""
        if self._tables is None:
            self._tables = SummaryTables(self.stores.vectors)
        return self._tables

    # ------------------------------------------------------------------ records
    def records(self, vocab: str | None = None) -> list[dict[str, Any]]:
        """Every recorded index (of ``vocab`` only when given), as stored."""
        out = []
        for key, value in self.stores.settings.with_prefix("index:").items():
            try:
                rec = json.loads(value)
            except ValueError:
                rec = {"vocabulary": key.split(":")[0], "extractor": "?", "table": None}
            if vocab is None or rec.get("vocabulary") == vocab:
                out.append(rec)
        return sorted(out, key=lambda r: (r.get("vocabulary", ""), r.get("extractor", "")))

    def record_for(self, vocab: str, extractor_id: str) -> dict[str, Any] | None:
        raw = self.stores.settings.get(setting_key(vocab, extractor_id))
        return json.loads(raw) if raw else None

    def _resolve(self, vocab: str, extractors: Sequence[str] = ()) -> ResolvedVocabulary:
        return resolve_vocabulary(self.sets, self.vocabs, vocab=vocab, classes=None, extractors=list(extractors),
                                  skip_missing=True)

    # ------------------------------------------------------------------ build
    def build(self, vocab: str, *, extractors: Sequence[str] = (), kind: str = "auto",
              params: dict[str, Any] | None = None,
              progress: Callable[[str], None] | None = None) -> list[IndexStatus]:
        """(Re)build the summary index of ``vocab`` for each extractor (default: those all its classes share).

        ``params``: the IVF-PQ parameters to use instead of :func:`ann_params` (``kind`` ivf_pq only; an
        imported bundle's index is rebuilt with the parameters it was built with)."""
        if kind not in KINDS:
            raise InvalidInput(f"--kind takes {', '.join(KINDS)}; got {kind!r}")
        if params is not None:
            if kind != "ivf_pq":
                raise InvalidInput(f"index parameters are for --kind ivf_pq, not {kind!r}")
            params = check_params(kind, params)
        r = self._resolve(vocab, extractors)
        out = []
        for e in r.extractors:
            psets = r.sets[e]
            t0 = time.perf_counter()
            if progress:
                progress(f"reading the summary of {len(psets)} classes ({e})")
            summary = read_summary(self.stores, self.sets, psets)
            rows, dim = summary.vectors.shape
            chosen = kind if kind != "auto" else ("ivf_pq" if rows >= ANN_MIN_ROWS else "flat")
            if chosen == "ivf_pq" and rows < 256:
                raise InvalidInput(f"an IVF-PQ index needs at least 256 summary vectors; {vocab} has {rows}: "
                                   "use --kind flat")
            if chosen == "ivf_pq" and params is not None and dim % params["num_sub_vectors"]:
                raise InvalidInput(f"num_sub_vectors {params['num_sub_vectors']} does not divide the "
                                   f"{dim}-d vectors of {e}")
            chosen_params = (params or ann_params(rows, dim)) if chosen == "ivf_pq" else {}
            name = f"{SummaryTables.PREFIX}{uuid.uuid4().hex[:20]}"
            self.tables.write(name, summary.owner, summary.set_ids, summary.kinds, summary.vectors)
            if chosen == "ivf_pq":
                if progress:
                    progress(f"training IVF-PQ over {rows} vectors ({e})")
                try:
                    self.tables.add_vector_index(name, chosen, chosen_params)
                except Exception:
                    self.tables.drop(name)  # nothing recorded names it yet
                    raise
            record = {"vocabulary": r.name, "vocab_version": r.version, "extractor": e,
                      "extractor_id": psets[0].extractor_id, "table": name, "kind": chosen, "params": chosen_params,
                      "summary_kinds": list(SUMMARY_KINDS), "classes": len(psets), "rows": int(rows),
                      "coverage": coverage_key(psets), "set_ids": None,
                      "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "build_seconds": round(time.perf_counter() - t0, 3)}
            record["set_ids"] = [s.id for s in psets]  # to say how many classes changed when stale
            key = setting_key(r.name, psets[0].extractor_id)
            old = self.stores.settings.get(key)
            self.stores.settings.set(key, json.dumps(record))  # the swap: one catalog transaction
            if old:
                previous = json.loads(old).get("table")
                if previous and previous != name:
                    self.tables.drop(previous)
            log.info("index of %s (%s): %s over %d vectors of %d classes in %.1f s", r.name, e, chosen, rows,
                     len(psets), record["build_seconds"])
            out.append(self._status(record, psets))
        self.drop_orphans()
        return out

    def drop_orphans(self) -> int:
        """Drop ``idx_*`` tables no record names (left by killed builds)."""
        named = {r.get("table") for r in self.records()}
        orphans = [n for n in self.tables.names() if n not in named]
        for n in orphans:
            self.tables.drop(n)
        return len(orphans)

    # ------------------------------------------------------------------ status
    def _status(self, rec: dict[str, Any], current: Sequence[PrototypeSet] | None) -> IndexStatus:
        base = {"vocabulary": rec.get("vocabulary", "?"), "extractor": rec.get("extractor", "?"),
                "kind": rec.get("kind"), "params": dict(rec.get("params") or {}),
                "classes": int(rec.get("classes") or 0), "rows": int(rec.get("rows") or 0), "table": rec.get("table"),
                "built_at": rec.get("built_at"), "build_seconds": rec.get("build_seconds")}
        if not rec.get("table") or not self.tables.exists(rec["table"]):
            return IndexStatus(state="missing", **base)
        if current is None or coverage_key(current) != rec.get("coverage"):
            ids = list(rec.get("set_ids") or [])
            now = [s.id for s in current or []]
            changed = len(set(now) ^ set(ids)) if ids else None
            return IndexStatus(state="stale", changed=changed, **base)
        return IndexStatus(state="fresh", **base)

    def status(self, vocab: str | None = None) -> list[IndexStatus]:
        """The state of every recorded index (of ``vocab``; a vocabulary without one: state ``none``)."""
        recs = self.records(vocab)
        out, resolved = [], {}
        for rec in recs:
            name = rec.get("vocabulary")
            if name not in resolved:
                try:
                    resolved[name] = self._resolve(name)
                except (NotFound, InvalidInput):
                    resolved[name] = None
            r = resolved[name]
            current = r.sets.get(rec.get("extractor")) if r is not None else None
            out.append(self._status(rec, current))
        if vocab is not None and not recs:
            self.vocabs.show(vocab)  # NotFound for a vocabulary that does not exist
            out.append(IndexStatus(vocabulary=vocab, extractor="-", state="none"))
        return out

    def drop(self, vocab: str) -> list[IndexStatus]:
        """Forget and delete the indexes of ``vocab`` (two-stage matching then uses exact summaries)."""
        recs = self.records(vocab)
        if not recs:
            raise NotFound(f"vocabulary {vocab!r} has no index; build one: protodb index build {vocab}")
        out = []
        for rec in recs:
            self.stores.settings.delete(setting_key(vocab, rec.get("extractor_id", "")))
            if rec.get("table"):
                self.tables.drop(rec["table"])
            out.append(self._status({**rec, "table": None}, None))
        self.drop_orphans()
        return out

    def verify(self) -> tuple[list[IndexStatus], list[Damage]]:
        """Every recorded index's state; a recorded index whose table is gone or unreadable is damage."""
        if not self.records():
            return [], []
        statuses, damage = self.status(), []
        for st in statuses:
            if st.state == "missing":
                damage.append(Damage("index", st.table or "-", f"its table is missing; rebuild: protodb index build "
                                     f"{st.vocabulary}", name=f"{st.vocabulary} ({st.extractor})"))
        return statuses, damage

    # ------------------------------------------------------------------ bundles
    def portable(self, vocab: str) -> list[dict[str, Any]]:
        """What a bundle carrying ``vocab`` records of its indexes: per extractor whose index is fresh, its
        name, kind and parameters (and the classes and rows it covered), sorted by extractor; stale or
        missing indexes are left out (the receiving database has nothing to rebuild for them)."""
        if not self.records(vocab):
            return []
        return sorted(({"extractor": st.extractor, "kind": st.kind, "params": dict(st.params),
                        "classes": st.classes, "rows": st.rows}
                       for st in self.status(vocab) if st.state == "fresh"), key=lambda d: d["extractor"])

    def rebuild_carried(self, vocab: str, extractor: str, kind: str,
                        params: dict[str, Any]) -> tuple[IndexStatus, bool]:
        """After an import: the index of ``vocab`` for ``extractor`` as a bundle recorded it (``kind`` flat
        or ivf_pq, with its ``params``): (its status, whether it was built). An index here that is fresh
        already, of that kind and with those parameters is kept; else it is built. Raises what
        :meth:`build` raises."""
        if kind not in ("flat", "ivf_pq"):
            raise InvalidInput(f"unknown index kind {kind!r}")
        params = check_params(kind, params)
        for st in self.status(vocab):
            if st.extractor == extractor and st.state == "fresh" and st.kind == kind and st.params == params:
                return st, False
        (st,) = self.build(vocab, extractors=[extractor], kind=kind, params=params if kind == "ivf_pq" else None)
        return st, True

    # ------------------------------------------------------------------ opening for stage 1
    def fresh_record(self, resolved: ResolvedVocabulary, extractor: str) -> tuple[dict | None, str]:
        """(the index record, ``fresh``) when ``resolved``'s sets for ``extractor`` are what it covers; else
        (None, ``none`` | ``stale`` | ``missing``)."""
        psets = resolved.sets[extractor]
        rec = self.record_for(resolved.name, psets[0].extractor_id) if resolved.version or resolved.name != "ad-hoc" \
            else None
        if rec is None:
            return None, "none"
        if not self.tables.exists(rec.get("table") or ""):
            return None, "missing"
        if rec.get("coverage") != coverage_key(psets):
            return None, "stale"
        return rec, "fresh"
