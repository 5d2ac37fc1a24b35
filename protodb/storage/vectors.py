"""Prototype vectors in LanceDB: one table per extractor, with an explicit Arrow schema.

Row layout (``prototype_schema(dim)``):

======== ====================================== ===============================================
column   type                                   meaning
======== ====================================== ===============================================
id       string                                 global id of the prototype row
set_id   string                                 the catalog's prototype set id
kind     string                                 class|instance|part|bg_class|bg_instance|bg_part
image_id string (nullable)                      support image the prototype came from
region   fixed_size_list<int32>[4] (nullable)   (y0, x0, y1, x1) patch-grid box in that image
weight   float32                                number of patches it summarises
vector   fixed_size_list<float32>[dim]          L2-normalised feature
======== ====================================== ===============================================

Rows are only ever appended (and rows of discarded unfinished sets deleted); readers go through
the catalog, which only lists ``ready`` sets, so rows of an unfinished set are never served.
Each set's rows have a checksum (:meth:`PrototypeRows.checksum`) recorded in the catalog at commit,
so damage in the table's files is found by ``verify`` and when the set is loaded.

Beside them, derived tables that can always be computed again: vocabulary summary indexes
(``idx_*``, :class:`SummaryTables`) and text embeddings of prompts per CLIP model (``txt_*``,
:class:`TextEmbeddingTables`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from protodb.entities import PROTOTYPE_KINDS as KINDS
from protodb.fileio import atomic_write
from protodb.lazy import lazy_import

np = lazy_import("numpy")
lancedb = lazy_import("lancedb")  # 1.7 s to import: only commands that touch vectors pay it
pa = lazy_import("pyarrow")
log = logging.getLogger(__name__)


def prototype_schema(dim: int):
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("set_id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("image_id", pa.string()),
            pa.field("region", pa.list_(pa.int32(), 4)),
            pa.field("weight", pa.float32(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def table_name(extractor_id: str) -> str:
    """LanceDB table for an extractor (ids are content hashes, so names never collide)."""
    return f"protos_{extractor_id[:24]}"


@dataclass
class PrototypeRows:
    """Prototypes as columns. ``vectors``: (N, D) float32, L2-normalised."""

    vectors: np.ndarray
    kinds: list[str]
    image_ids: list[str | None] = field(default_factory=list)
    regions: list[tuple[int, int, int, int] | None] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    set_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.kinds)
        vectors = np.asarray(self.vectors, dtype=np.float32)
        self.vectors = vectors.reshape(n, vectors.shape[-1] if vectors.ndim == 2 else -1)
        self.image_ids = self.image_ids or [None] * n
        self.regions = self.regions or [None] * n
        self.weights = self.weights or [1.0] * n
        bad = set(self.kinds) - set(KINDS)
        if bad:
            raise ValueError(f"unknown prototype kinds {sorted(bad)}; expected {KINDS}")
        if not (len(self.image_ids) == len(self.regions) == len(self.weights) == n):
            raise ValueError("prototype columns differ in length")

    def __len__(self) -> int:
        return len(self.kinds)

    def checksum(self) -> str:
        """sha256 over the rows' contents (kind, image, region, weight, vector bytes), independent of
        row order and row ids: the same prototypes always give the same checksum."""
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        weights = np.asarray(self.weights, dtype=np.float32)
        digests = []
        for i, kind in enumerate(self.kinds):
            h = hashlib.sha256(f"{kind}|{self.image_ids[i]}|{self.regions[i] and list(self.regions[i])}|".encode())
            h.update(weights[i:i + 1].tobytes())
            h.update(vectors[i].tobytes())
            digests.append(h.digest())
        return hashlib.sha256(b"".join(sorted(digests))).hexdigest()

    def select(self, mask: np.ndarray) -> "PrototypeRows":
        idx = np.flatnonzero(mask)
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        return PrototypeRows(
            vectors=self.vectors[idx], kinds=pick(self.kinds), image_ids=pick(self.image_ids),
            regions=pick(self.regions), weights=pick(self.weights), ids=pick(self.ids),
            set_ids=pick(self.set_ids),
        )


def to_arrow(rows: PrototypeRows, set_id: str, ids: Sequence[str] | None = None):
    """``rows`` of ``set_id`` as an Arrow table with :func:`prototype_schema` (``ids``: row ids; default
    the rows' own, else ``SET-i``)."""
    dim = int(rows.vectors.shape[1])
    n = len(rows)
    ids = list(ids) if ids is not None else (list(rows.ids) if rows.ids else [f"{set_id}-{i}" for i in range(n)])
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "set_id": pa.array([set_id] * n, pa.string()),
            "kind": pa.array(list(rows.kinds), pa.string()),
            "image_id": pa.array(list(rows.image_ids), pa.string()),
            "region": pa.array([list(r) if r is not None else None for r in rows.regions], type=pa.list_(pa.int32(), 4)),
            "weight": pa.array(rows.weights, type=pa.float32()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(rows.vectors, np.float32).reshape(-1), type=pa.float32()), dim),
        },
        schema=prototype_schema(dim),
    )


def from_arrow(arrow) -> PrototypeRows:
    """An Arrow table of :func:`prototype_schema` as PrototypeRows (row order kept)."""
    dim = arrow.schema.field("vector").type.list_size
    vectors = (arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
               .astype(np.float32).reshape(-1, dim))
    return PrototypeRows(
        vectors=vectors, kinds=arrow.column("kind").to_pylist(), image_ids=arrow.column("image_id").to_pylist(),
        regions=[tuple(r) if r is not None else None for r in arrow.column("region").to_pylist()],
        weights=arrow.column("weight").to_pylist(), ids=arrow.column("id").to_pylist(),
        set_ids=arrow.column("set_id").to_pylist())


def to_ipc(rows: PrototypeRows, set_id: str) -> bytes:
    """One set's prototypes as Arrow IPC file bytes (deterministic for the same rows)."""
    table = to_arrow(rows, set_id)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class VectorCache:
    """Ready sets are immutable, so their rows are kept as one Arrow IPC file each under ``folder``
    (``<set id>.arrow``) after the first read: later reads need neither LanceDB (1.7 s to import) nor
    a table scan. The caller checks every read against the set's checksum; a damaged or stale file is
    dropped and read again from the table. Failing to write (a read-only home) only costs speed."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def get(self, set_id: str) -> PrototypeRows | None:
        path = self.folder / f"{set_id}.arrow"
        if not path.is_file():
            return None
        try:
            with pa.memory_map(str(path), "r") as source:
                return from_arrow(pa.ipc.open_file(source).read_all())
        except (OSError, ValueError, pa.ArrowException):
            self.drop(set_id)
            return None

    def put(self, set_id: str, rows: PrototypeRows) -> None:
        try:
            atomic_write(self.folder / f"{set_id}.arrow", to_ipc(rows, set_id))
        except OSError as err:
            log.debug("vector cache not written (%s)", err)

    def drop(self, set_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.folder / f"{set_id}.arrow").unlink()


class VectorStore:
    """LanceDB database at ``uri`` (a local folder or any URL LanceDB accepts, e.g. ``s3://``)."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self._db = lancedb.connect(self.uri)
        self._tables: dict = {}

    def _table(self, name: str, dim: int | None = None):
        if name in self._tables:
            return self._tables[name]
        if self._exists(name):
            table = self._db.open_table(name)
        elif dim is None:
            return None
        else:
            table = self._db.create_table(name, schema=prototype_schema(dim), exist_ok=True)
        self._tables[name] = table
        return table

    def _exists(self, name: str) -> bool:
        return name in self._db.list_tables().tables

    def add(self, name: str, set_id: str, rows: PrototypeRows) -> int:
        """Append the prototypes of ``set_id``; returns the table version that holds them."""
        dim = rows.vectors.shape[1]
        table = self._table(name, dim)
        existing = table.schema.field("vector").type.list_size
        if existing != dim:
            raise ValueError(f"table {name} holds {existing}-d vectors, got {dim}-d")
        n = len(rows)
        table.add(to_arrow(rows, set_id, ids=[uuid.uuid4().hex for _ in range(n)]))
        log.debug("added %d rows of set %s to %s", n, set_id, name)
        return int(table.version)

    def add_many(self, name: str, set_ids: Sequence[str], rows: PrototypeRows) -> int:
        """Append rows of several sets at once (``set_ids``: (N,) the set of each row) in ONE table version;
        returns that version."""
        dim = rows.vectors.shape[1]
        table = self._table(name, dim)
        existing = table.schema.field("vector").type.list_size
        if existing != dim:
            raise ValueError(f"table {name} holds {existing}-d vectors, got {dim}-d")
        arrow = to_arrow(rows, "-", ids=[uuid.uuid4().hex for _ in range(len(rows))])
        arrow = arrow.set_column(arrow.schema.get_field_index("set_id"), pa.field("set_id", pa.string(), nullable=False), pa.array(list(set_ids), pa.string()))
        table.add(arrow)
        return int(table.version)

    def read(
        self, name: str, set_ids: Sequence[str], kinds: Sequence[str] | None = None
    ) -> PrototypeRows:
        """The prototypes of ``set_ids`` (optionally only ``kinds``), in insertion order."""
        table = self._table(name)
        if table is None or not set_ids:
            return PrototypeRows(vectors=np.zeros((0, 0), np.float32), kinds=[])
        table.checkout_latest()
        where = f"set_id IN ({_sql_list(set_ids)})"
        if kinds:
            where += f" AND kind IN ({_sql_list(kinds)})"
        return from_arrow(table.search().where(where).limit(None).to_arrow())

    def delete_sets(self, name: str, set_ids: Sequence[str]) -> None:
        table = self._table(name)
        if table is not None and set_ids:
            table.delete(f"set_id IN ({_sql_list(set_ids)})")

    def set_ids(self, name: str) -> set[str]:
        table = self._table(name)
        if table is None:
            return set()
        table.checkout_latest()
        return set(
            table.search().select(["set_id"]).limit(None).to_arrow().column("set_id").to_pylist()
        )

    def table_names(self) -> list[str]:
        return list(self._db.list_tables().tables)

    def version(self, name: str) -> int | None:
        table = self._table(name)
        return None if table is None else int(table.version)


def summary_schema(dim: int):
    """Rows of a vocabulary's summary index table: ``cls`` the class's position in the list the index
    covers, ``set_id`` its set, ``kind`` (class|instance) and the L2-normalised ``vector``."""
    return pa.schema([pa.field("cls", pa.int32(), nullable=False), pa.field("set_id", pa.string(), nullable=False),
                      pa.field("kind", pa.string(), nullable=False),
                      pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])


class SummaryTables:
    """Summary index tables (``idx_*``) beside the prototype tables in the same LanceDB database: written
    whole under a fresh name, optionally given a LanceDB vector index, searched, read back and dropped."""

    PREFIX = "idx_"

    def __init__(self, store: VectorStore):
        self.store = store

    def names(self) -> list[str]:
        return [n for n in self.store.table_names() if n.startswith(self.PREFIX)]

    def write(self, name: str, cls: "np.ndarray", set_ids: Sequence[str], kinds: Sequence[str],
              vectors: "np.ndarray") -> None:
        """A new table ``name``: ``cls`` (R,) int, ``set_ids`` / ``kinds`` (R,), ``vectors`` (R, D) float32."""
        dim = int(vectors.shape[1])
        data = pa.table({"cls": pa.array(np.asarray(cls, np.int32)), "set_id": pa.array(list(set_ids), pa.string()),
                         "kind": pa.array(list(kinds), pa.string()),
                         "vector": pa.FixedSizeListArray.from_arrays(
                             pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), dim)},
                        schema=summary_schema(dim))
        self.store._db.create_table(name, data=data)

    def add_vector_index(self, name: str, kind: str, params: dict) -> None:
        """A LanceDB vector index (``kind`` ivf_pq) on ``name``'s vectors, dot-product distance."""
        from lancedb.index import IvfPq  # deferred with lancedb

        if kind != "ivf_pq":
            raise ValueError(f"unknown vector index kind {kind!r}")
        table = self.store._db.open_table(name)
        table.create_index("vector", config=IvfPq(distance_type="dot", num_partitions=params["num_partitions"],
                                                  num_sub_vectors=params["num_sub_vectors"]))

    def read(self, name: str):
        """(cls (R,) int64, vectors (R, D) float32) of table ``name``."""
        arrow = self.store._db.open_table(name).to_arrow()
        dim = arrow.schema.field("vector").type.list_size
        vectors = arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        return arrow.column("cls").to_numpy().astype(np.int64), np.asarray(vectors, np.float32)

    def search(self, name: str, queries: "np.ndarray", limit: int, *, nprobes: int, refine_factor: int):
        """For each of ``queries`` (K, D): the ``limit`` nearest rows by dot product, as (query index (M,),
        cls (M,), similarity (M,)) arrays sorted by query, then similarity descending."""
        table = self.store._tables.get(name) or self.store._db.open_table(name)
        self.store._tables[name] = table
        q = np.ascontiguousarray(queries, np.float32)
        res = (table.search(q if len(q) > 1 else q[0]).distance_type("dot").select(["cls", "_distance"]).limit(int(limit))
               .nprobes(int(nprobes)).refine_factor(int(refine_factor)).to_arrow())
        qi = res.column("query_index").to_numpy() if "query_index" in res.column_names else np.zeros(res.num_rows, int)
        sim = 1.0 - res.column("_distance").to_numpy()  # LanceDB's "dot" distance is 1 - dot
        return qi.astype(np.int64), res.column("cls").to_numpy().astype(np.int64), sim

    def exists(self, name: str) -> bool:
        return name in self.store.table_names()

    def drop(self, name: str) -> None:
        self.store._tables.pop(name, None)
        with contextlib.suppress(Exception):  # noqa: BLE001 - a table already gone is what we wanted
            self.store._db.drop_table(name)


def text_schema(dim: int):
    """Rows of a text-embedding table: the ``prompt`` and its L2-normalised ``vector``."""
    return pa.schema([pa.field("prompt", pa.string(), nullable=False),
                      pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])


class TextEmbeddingTables:
    """Text embeddings of prompts (the CLIP pre-filter's class prompts), one table per text model
    (``txt_<model key>``) beside the prototype tables in the same LanceDB database: appended in batches,
    read back whole. Callers serialise appends with the stores' vector lock on the table's name."""

    PREFIX = "txt_"

    def __init__(self, store: VectorStore):
        self.store = store

    def name(self, model_key: str) -> str:
        """The table of the model whose key (hex) is ``model_key``."""
        return f"{self.PREFIX}{model_key[:32]}"

    def names(self) -> list[str]:
        return [n for n in self.store.table_names() if n.startswith(self.PREFIX)]

    def read(self, name: str, prompts: "set[str] | None" = None) -> tuple[list[str], "np.ndarray"]:
        """(prompts, (N, E) float32 vectors) stored in ``name`` (only those in ``prompts`` when given; a
        prompt stored twice by racing writers comes once; a damaged row — not finite, not unit length — is
        left out, so the caller embeds that prompt again); ([], (0, 0)) when there is no such table."""
        if name not in self.store.table_names():
            return [], np.zeros((0, 0), np.float32)
        texts, vectors = self._rows(name)
        dim = vectors.shape[1]
        usable = self.usable(vectors)
        keep, seen = [], set()
        for i, t in enumerate(texts):
            if usable[i] and t not in seen and (prompts is None or t in prompts):
                seen.add(t)
                keep.append(i)
        return [texts[i] for i in keep], np.asarray(vectors[keep], np.float32).reshape(-1, dim)

    def _rows(self, name: str) -> tuple[list[str], "np.ndarray"]:
        arrow = self.store._db.open_table(name).to_arrow()
        dim = arrow.schema.field("vector").type.list_size
        texts = arrow.column("prompt").to_pylist()
        vectors = arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        return texts, vectors

    @staticmethod
    def usable(vectors: "np.ndarray") -> "np.ndarray":
        """(N,) bool: rows that are finite and L2-normalised (within 1e-3), as every stored embedding is."""
        v = np.asarray(vectors, np.float64)
        finite = np.isfinite(v).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(v), v, 0.0), axis=1)
        return finite & (np.abs(norms - 1.0) <= 1e-3)

    def check(self, name: str) -> list[str]:
        """What is wrong with table ``name`` (empty: nothing): unreadable, rows that are not finite or not unit
        length, empty prompts."""
        try:
            texts, vectors = self._rows(name)
        except Exception as err:  # noqa: BLE001 - LanceDB reports missing/torn fragments in many types
            return [f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"]
        problems = []
        bad = int((~self.usable(vectors)).sum()) if len(texts) else 0
        if bad:
            problems.append(f"{bad} of {len(texts)} text embeddings are not finite or not unit length")
        if any(not t for t in texts):
            problems.append("holds an empty prompt")
        return problems

    def drop_damaged(self, name: str) -> int:
        """Delete every row of a prompt that has a damaged row (not finite, not unit length) from ``name``;
        returns how many prompts lost their rows (they are embedded again when next needed)."""
        if name not in self.store.table_names():
            return 0
        texts, vectors = self._rows(name)
        bad = sorted({t for t, ok in zip(texts, self.usable(vectors)) if not ok})
        if bad:
            quoted = ", ".join("'" + t.replace("'", "''") + "'" for t in bad)
            self.store._db.open_table(name).delete(f"prompt IN ({quoted})")
        return len(bad)

    def add(self, name: str, prompts: Sequence[str], vectors: "np.ndarray") -> None:
        """Append ``prompts`` with their (N, E) ``vectors`` (the table is made on the first append)."""
        dim = int(vectors.shape[1])
        data = pa.table({"prompt": pa.array(list(prompts), pa.string()),
                         "vector": pa.FixedSizeListArray.from_arrays(
                             pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), dim)},
                        schema=text_schema(dim))
        if name in self.store.table_names():
            table = self.store._db.open_table(name)
            have = table.schema.field("vector").type.list_size
            if have != dim:
                raise ValueError(f"table {name} holds {have}-d text embeddings, got {dim}-d")
            table.add(data)
        else:
            self.store._db.create_table(name, data=data)


def _sql_list(values: Sequence[str]) -> str:
    out = []
    for v in values:
        if not all(c.isalnum() or c in "_-" for c in v):
            raise ValueError(f"unsafe identifier in vector query: {v!r}")
        out.append(f"'{v}'")
    return ", ".join(out)
