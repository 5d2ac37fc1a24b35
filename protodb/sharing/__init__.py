"""Sharing prototype databases between teams.

Three ways, one format:

* **Bundles** (``bundle.py``): one deterministic tar(.gz) with a manifest, the catalog rows of the
  chosen prototype sets and everything they depend on (JSON), their vectors (Arrow IPC) and
  artifacts (content-addressed). ``protodb export`` / ``protodb import``.
* **Remotes** (``remote.py``): the same members stored content-addressed on any fsspec URL
  (``s3://…``, ``file://…``) with small refs naming bundle manifests. ``protodb push`` / ``pull``.
* **A live database** (``live.py``): a PostgreSQL catalog with vectors and artifacts on object
  storage, selected by configuration; vector commits are serialised through the catalog.

Importing (``merge.py``) never overwrites: identical objects are deduplicated by identifier or
hash, sets of a class that exists here with other provenance become new versions, and every
hash and the schema revision are checked before anything is written.
"""

from __future__ import annotations

from protodb.sharing.bundle import Limits, Selection

__all__ = ["Limits", "Selection"]
