"""Sharing between databases: bundle files (export/import) and remotes (push/pull)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

from protodb.entities import ExportReport, ImportReport, IndexStatus, PullReport, PushReport, Remote, RemoteRef
from protodb.services.sets import SetService
from protodb.services.vocabs import VocabService
from protodb.sharing import merge, remote
from protodb.sharing.bundle import Limits, Selection, build_bundle, load_contents, read_tar, write_tar
from protodb.sharing.ports import IndexLookup
from protodb.stores import Stores

Progress = Callable[[str, int, "int | None"], None]
log = logging.getLogger(__name__)


def selection(vocab: str | None, classes: Sequence[str] | str | None, all_sets: bool) -> Selection:
    """What to share from the three CLI forms (``--vocab``, ``--classes a,b``, ``--all``)."""
    if isinstance(classes, str):
        classes = Selection.parse_classes(classes)
    return Selection(vocab=vocab, classes=tuple(classes or ()), all=all_sets)


class _Indexes:
    """The summary indexes as bundles see them, made on first need: a vocabulary without an index record
    is answered from the settings alone (no numpy, torch or LanceDB for a bundle without indexes)."""

    def __init__(self, stores: Stores, factory: Callable[[], IndexLookup]):
        self.stores, self.factory = stores, factory
        self._made: IndexLookup | None = None

    def _get(self) -> IndexLookup:
        if self._made is None:
            self._made = self.factory()
        return self._made

    def portable(self, vocab: str) -> list[dict[str, Any]]:
        if not self.stores.settings.with_prefix(f"index:{vocab}:"):
            return []
        return self._get().portable(vocab)

    def rebuild_carried(self, vocab: str, extractor: str, kind: str,
                        params: dict[str, Any]) -> tuple[IndexStatus, bool]:
        return self._get().rebuild_carried(vocab, extractor, kind, params)


class SharingService:
    """``indexes``: makes the vocabularies' summary indexes (the facade passes
    :class:`protodb.segment.index.VocabIndexes`); with it, bundles record each vocabulary's fresh indexes
    and an import rebuilds them here. Without it they neither travel nor get rebuilt."""

    def __init__(self, stores: Stores, sets: SetService, vocabs: VocabService,
                 indexes: Callable[[], IndexLookup] | None = None):
        self.stores, self.sets, self.vocabs = stores, sets, vocabs
        self.indexes = _Indexes(stores, indexes) if indexes is not None else None

    # ------------------------------------------------------------------ bundle files
    def export(self, out: str | os.PathLike, *, vocab: str | None = None,
               classes: Sequence[str] | str | None = None, all_sets: bool = False, lean: bool = False,
               compress: bool | None = None, progress: Progress | None = None) -> ExportReport:
        """Write the chosen ready sets and everything they depend on as one deterministic archive.

        Exactly one of ``vocab`` (with its definition), ``classes`` (refs: ``boat``, ``boat@3``) or
        ``all_sets``. ``lean`` leaves out support images, masks and attention maps. gzip when
        ``compress`` or ``out`` ends in .gz/.tgz.
        """
        parts = build_bundle(self.stores, self.sets, self.vocabs, selection(vocab, classes, all_sets), lean=lean,
                             indexes=self.indexes)
        return write_tar(parts, out, staging=self.stores.staging_dir, compress=compress, progress=progress)

    def import_bundle(self, path: str | os.PathLike, *, dry_run: bool = False, max_bytes: int | None = None,
                      max_member_bytes: int | None = None, progress: Progress | None = None) -> ImportReport:
        """Verify a bundle whole (paths, types, sizes, every hash, schema revision, every row), then
        merge it: identical objects skipped, other-provenance sets added as new versions, nothing
        overwritten. ``dry_run`` reports what would be added/skipped. Hostile input: InvalidInput,
        nothing written."""
        limits = Limits.from_env(max_bytes, max_member_bytes)
        with read_tar(path, self.stores.staging_dir, limits) as staged:
            contents = load_contents(staged, limits)
            out = merge.apply(self.stores, contents, dry_run=dry_run, progress=progress)
        return dataclasses.replace(self._rebuild_indexes(out), path=str(path))

    def _rebuild_indexes(self, report: ImportReport) -> ImportReport:
        """Rebuild here the indexes an imported bundle carried (after its one catalog transaction: the
        import stands whatever happens here). A failed rebuild is reported in ``indexes`` (``failed``,
        with the reason), never raised; ``protodb index build`` makes it later."""
        if report.dry_run or not report.indexes:
            return report
        done = []
        for ix in report.indexes:
            if self.indexes is None:
                done.append({**ix, "state": "failed", "error": "indexes are not rebuilt in this process"})
                continue
            try:
                st, built = self.indexes.rebuild_carried(ix["vocabulary"], ix["extractor"], ix["kind"],
                                                         ix["params"])
            except Exception as err:  # noqa: BLE001 - any failure leaves the import standing, said in one line
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                log.debug("rebuilding the index of %s (%s) failed", ix["vocabulary"], ix["extractor"], exc_info=True)
                done.append({**ix, "state": "failed", "error": first})
                continue
            done.append({**ix, "state": "rebuilt" if built else "fresh", "table": st.table})
        return dataclasses.replace(report, indexes=tuple(done))

    # ------------------------------------------------------------------ remotes
    def remote_add(self, name: str, url: str) -> Remote:
        """Remember a remote (stored as setting ``remote:NAME``): s3://bucket/prefix, file://..., a path."""
        remote.check_remote_name(name)
        url = remote.normalize_url(url)
        self.stores.settings.set(remote.SETTING_PREFIX + name, url)
        return Remote(name, url)

    def remote_list(self) -> list[Remote]:
        return remote.list_remotes(self.stores.settings)

    def remote_remove(self, name: str) -> Remote:
        url = remote.remote_url(self.stores.settings, name)
        self.stores.settings.delete(remote.SETTING_PREFIX + name)
        return Remote(name, url)

    def remote_show(self, name: str) -> list[RemoteRef]:
        """What a remote holds: its refs (vocabularies and classes pushed there)."""
        return remote.remote_refs(self.stores.settings, name)

    def push(self, remote_name: str, *, vocab: str | None = None, classes: Sequence[str] | str | None = None,
             all_sets: bool = False, lean: bool = False, progress: Progress | None = None) -> PushReport:
        """Upload to a remote what it lacks of the chosen bundles (content-addressed), refs last."""
        return remote.push(self.stores, self.sets, self.vocabs, remote_name, selection(vocab, classes, all_sets),
                           lean=lean, progress=progress, indexes=self.indexes)

    def pull(self, remote_name: str, *, vocab: str | None = None, classes: Sequence[str] | str | None = None,
             all_sets: bool = False, dry_run: bool = False, max_bytes: int | None = None,
             max_member_bytes: int | None = None, progress: Progress | None = None) -> PullReport:
        """Fetch what is missing here of a remote's refs (verified) and import them like bundles."""
        out = remote.pull(self.stores, remote_name, selection(vocab, classes, all_sets), dry_run=dry_run,
                          limits=Limits.from_env(max_bytes, max_member_bytes), progress=progress)
        return dataclasses.replace(out, imports=tuple(self._rebuild_indexes(imp) for imp in out.imports))
