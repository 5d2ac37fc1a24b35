"""Errors a user can cause. Each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations


class ProtoDBError(Exception):
    """A problem the user can fix. ``str(err)`` is one line, shown as is by the CLI (exit code 1)."""

    exit_code = 1


class NotFound(ProtoDBError):
    """A class, version, alias, vocabulary or extractor that does not exist."""


class SchemaMismatch(ProtoDBError):
    """The catalog was written by another schema revision than this protodb knows."""


class InvalidInput(ProtoDBError):
    """Bad arguments or files (empty names, missing folders, unreadable images...)."""


class DamagedData(ProtoDBError):
    """Stored data (vectors, artifacts, model weights, catalog rows) does not match what was
    recorded; ``protodb verify`` lists every damage."""
