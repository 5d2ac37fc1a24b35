"""Bundles: one deterministic archive holding chosen prototype sets and all they depend on.

=================  ======================================================================
``format``         member names, manifest constants, size limits, what to share (Selection)
``tables``         which catalog tables travel (from the ORM metadata) and how a row is checked
``vectors``        one Arrow IPC file per set, checked like a local write
``export``         collect a selection and write the archive (deterministic, atomic)
``read``           the hostile side: stream members into a private folder, verify every hash
``contents``       cross-check a verified bundle's rows, vectors and artifacts
=================  ======================================================================
"""

from __future__ import annotations

from protodb.sharing.bundle.contents import Contents, load_contents
from protodb.sharing.bundle.export import BundleParts, build_bundle, select_sets, write_tar
from protodb.sharing.bundle.format import MANIFEST, Limits, Selection, refuse
from protodb.sharing.bundle.read import Staged, check_limits, check_manifest, read_tar
from protodb.sharing.bundle.tables import FOREIGN_KEYS, TABLES

__all__ = ["BundleParts", "Contents", "FOREIGN_KEYS", "Limits", "MANIFEST", "Selection", "Staged", "TABLES",
           "build_bundle", "check_limits", "check_manifest", "load_contents", "read_tar", "refuse",
           "select_sets", "write_tar"]
