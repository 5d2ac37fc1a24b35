"""Prototype vectors in bundles: one Arrow IPC file per set (``prototype_schema(dim)``).

Incoming vectors are checked like local writes: the exact schema, only their own set id, known kinds,
finite values of unit length (an all-zero or 3e38 vector is refused), image ids that are
identifiers and regions inside the patch grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from protodb.entities import PROTOTYPE_KINDS as KINDS
from protodb.sharing.bundle.format import HEX, refuse
from protodb.storage.vectors import PrototypeRows, from_arrow, prototype_schema, to_ipc

UNIT_TOLERANCE = 1e-3  # prototypes are unit vectors: an all-zero or 3e38 vector is refused
MAX_GRID = 4096  # patch rows/columns of the largest support image protodb stores

def vectors_to_arrow(rows: PrototypeRows, set_id: str) -> bytes:
    """One set's prototypes as an Arrow IPC file (``prototype_schema(dim)``), byte-deterministic."""
    return to_ipc(rows, set_id)


def vectors_from_arrow(path: Path, set_id: str, dim: int, expected: int) -> PrototypeRows:
    """Read and check one set's Arrow IPC file: exact schema, its set id only, finite vectors."""
    name = f"vectors/{set_id}.arrow"
    try:
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_file(source)
            if not reader.schema.equals(prototype_schema(dim)):
                raise refuse(f"{name} does not have the prototype schema for {dim}-d vectors")
            table = reader.read_all()
            table.validate(full=True)
    except pa.ArrowException as err:
        raise refuse(f"{name} is not a valid Arrow IPC file ({str(err).splitlines()[0][:120]})") from None
    if table.num_rows != expected:
        raise refuse(f"{name} holds {table.num_rows} prototypes, its catalog row says {expected}")
    if set(table.column("set_id").to_pylist()) - {set_id}:
        raise refuse(f"{name} holds prototypes of another set")
    vectors = (table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
               .astype(np.float32).reshape(-1, dim))
    if not np.isfinite(vectors).all():
        raise refuse(f"{name} holds non-finite vectors")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if len(norms) and np.abs(norms - 1.0).max() > UNIT_TOLERANCE:
        raise refuse(f"{name} holds vectors that are not L2-normalised (norms {norms.min():.3g}..{norms.max():.3g})")
    weights = np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64)
    if len(weights) and (not np.isfinite(weights).all() or weights.min() < 0):
        raise refuse(f"{name} holds weights that are not finite non-negative numbers")
    regions = table.column("region").to_pylist()
    for r in regions:
        if r is not None and not (0 <= r[0] < r[2] <= MAX_GRID and 0 <= r[1] < r[3] <= MAX_GRID):
            raise refuse(f"{name} holds a region {r} that is not a box on a patch grid")
    kinds = table.column("kind").to_pylist()
    if set(kinds) - set(KINDS):
        raise refuse(f"{name} holds unknown prototype kinds {sorted(set(kinds) - set(KINDS))}")
    image_ids = table.column("image_id").to_pylist()
    if any(i is not None and not HEX.match(i) for i in image_ids):
        raise refuse(f"{name} holds an image id that is not a hex identifier")
    return from_arrow(table)
