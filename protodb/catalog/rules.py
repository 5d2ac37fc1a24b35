"""Value rules of the catalog's columns: what a row may hold, beyond its SQL type.

Local writes produce only values inside these rules; rows that come from elsewhere (bundles,
remotes) are checked against them before anything is written, so an import can never store a
version of -5, a width of 2**70, a mask role "evil" or a time in year 1. Integer columns are 32-bit
in the catalog (PostgreSQL ``integer``), so every integer is also checked against that range.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from protodb.catalog.schema import LABEL_SOURCES, SET_READY, STUFF, THING
from protodb.entities import PROTOTYPE_KINDS

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_SIDE = 65_535  # pixels: the largest image side protodb stores
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(9999, 1, 1, tzinfo=timezone.utc)

#: (table, column) -> allowed values
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("classes", "kind"): (THING, STUFF),
    ("class_labels", "kind"): (THING, STUFF),
    ("class_labels", "source"): LABEL_SOURCES,
    ("masks", "role"): ("foreground", "background"),
    ("support_images", "source"): ("generated", "exemplar", "correction", "view"),
    ("prototype_sets", "status"): (SET_READY,),
}

#: (table, column) -> inclusive (min, max) for integers and numbers
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("prototype_sets", "version"): (1, INT32_MAX),
    ("prototype_sets", "vector_table_version"): (0, INT32_MAX),
    ("prototype_sets", "nbytes"): (0, INT32_MAX),
    ("support_images", "width"): (1, MAX_SIDE),
    ("support_images", "height"): (1, MAX_SIDE),
    ("support_images", "index_in_run"): (0, INT32_MAX),
    ("support_images", "seed"): (0, INT32_MAX),
    ("generation_runs", "base_seed"): (0, INT32_MAX),
    ("generation_runs", "num_images"): (0, INT32_MAX),
    ("generator_specs", "steps"): (1, 100_000),
    ("generator_specs", "guidance"): (0.0, 1000.0),
    ("generator_specs", "width"): (8, MAX_SIDE),
    ("generator_specs", "height"): (8, MAX_SIDE),
    ("extractors", "dim"): (1, 1 << 16),
    ("vocabularies", "version"): (0, INT32_MAX),
    ("vocabulary_members", "position"): (0, INT32_MAX),
    ("prototype_set_images", "position"): (0, INT32_MAX),
    ("corrections", "width"): (1, MAX_SIDE),
    ("corrections", "height"): (1, MAX_SIDE),
    ("corrections", "pixels"): (1, INT32_MAX),
    ("corrections", "label_value"): (0, 65_535),
}


def check(table: str, column: str, value: Any) -> str | None:
    """Why ``value`` may not stand in ``table.column`` (None when it may). ``value`` has its SQL
    type already (checked by the caller); None is handled by the caller."""
    allowed = CHOICES.get((table, column))
    if allowed is not None and value not in allowed:
        return f"holds {str(value)[:40]!r}; allowed: {', '.join(allowed)}"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT32_MIN <= value <= INT32_MAX:
        return f"holds {value}, outside the 32-bit range of the catalog"
    bounds = RANGES.get((table, column))
    if bounds is not None and isinstance(value, (int, float)) and not bounds[0] <= value <= bounds[1]:
        return f"holds {value}, outside {bounds[0]}..{bounds[1]}"
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if not EARLIEST <= aware < LATEST:
            return f"holds the time {value.isoformat()}, outside 1970..9999"
    return None


def check_counts(counts: Any) -> str | None:
    """Why a set's ``counts`` JSON is not valid (None when it is)."""
    if not isinstance(counts, dict) or set(counts) - set(PROTOTYPE_KINDS):
        return "holds unknown prototype kinds"
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT32_MAX for v in counts.values()):
        return "holds counts that are not non-negative integers"
    return None
