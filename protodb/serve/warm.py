"""Warm segmenters, one per served vocabulary, reloaded live when the catalog changes.

A :class:`VocabularySegmenter` holds a vocabulary's match tables and loaded extractors; building one
reads every class's vectors, so a server keeps one per vocabulary and reuses it for every request.

Live reload. A watcher thread reads the catalog's change stamp (:mod:`protodb.services.changes`,
a handful of aggregates) every ``interval`` seconds. Only when it moved does it re-resolve what each
loaded vocabulary serves: its version and background flag, and for every class ref the ready sets
``db.sets.resolve`` names (set id, extractor, thing/stuff kind). When that key differs — a new ready
set or version, a relabel, a vocabulary edit, a moved tag — a new segmenter is built off to the side
(the old one keeps answering) and swapped in with one assignment, so a request sees the old
segmenter or the new one, never a half-built table. Readers only ever resolve ``ready`` sets; a
pending set of a running build is invisible until its commit marks it ready. A rebuild that fails
(say a set's vectors are damaged) keeps the previous segmenter and reports the error in
``/api/vocabularies``; it is tried again on the next change, and at least every ``FULL_CHECK`` s.

With no vocabularies named, every vocabulary of the catalog is served, found by the same checks and
warmed on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from protodb.errors import NotFound, ProtoDBError
from protodb.segment.options import SegmentOptions
from protodb.services.changes import ChangeService

log = logging.getLogger(__name__)

FULL_CHECK = 60.0  # seconds: re-resolve every loaded vocabulary at least this often


@dataclass(frozen=True)
class Served:
    """One warm segmenter and what it was built from (immutable: swapped whole)."""

    name: str
    segmenter: Any  # VocabularySegmenter
    key: tuple
    generation: int
    loaded_at: float
    build_seconds: float

    def describe(self) -> dict[str, Any]:
        v = self.segmenter.vocab
        return {**v.describe(), "generation": self.generation, "loaded_at": round(self.loaded_at, 3),
                "build_seconds": round(self.build_seconds, 3), "set_ids": sorted(v.set_ids),
                "stuff": {n: s for n, s in zip(v.names, v.stuff)}}


class _Entry:
    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()  # one build at a time per vocabulary
        self.current: Served | None = None
        self.error: str | None = None
        self.generation = 0


class WarmPool:
    """Served vocabularies -> warm segmenters. ``db``: a :class:`protodb.api.ProtoDB`."""

    def __init__(self, db, names: tuple[str, ...] = (), options: SegmentOptions | None = None,
                 interval: float = 2.0, build: Callable[[str], Any] | None = None):
        self.db = db
        self.explicit = tuple(names)
        self.options = (options or SegmentOptions()).replace(explain=True)
        self.interval = float(interval)
        self._build_fn = build or (lambda name: db.segmenter(self.options.replace(vocab=name)))
        self._changes = ChangeService(db.stores)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._catalog_names: tuple[str, ...] = ()
        self._full_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        self.reloads = 0
        self.last_check: float | None = None
        self.refresh_names()

    # ------------------------------------------------------------------ what is served
    def refresh_names(self) -> tuple[str, ...]:
        """Every vocabulary of the catalog (only when none were named)."""
        if not self.explicit:
            self._catalog_names = tuple(v.name for v in self.db.vocabs.list() if not v.builtin)
        return self.names()

    def names(self) -> tuple[str, ...]:
        return self.explicit or self._catalog_names

    def check_served(self, name: str) -> str:
        """``name`` if it is served, else NotFound naming the served ones."""
        if name not in self.names() and not self.explicit:
            self.refresh_names()  # a vocabulary created since the last check
        if name not in self.names():
            served = ", ".join(self.names()) or "none (create one: protodb vocab create NAME CLASS...)"
            raise NotFound(f"vocabulary {name!r} is not served; served: {served}")
        return name

    def _entry(self, name: str) -> _Entry:
        with self._lock:
            return self._entries.setdefault(name, _Entry(name))

    # ------------------------------------------------------------------ segmenters
    def warm(self) -> None:
        """Load every named vocabulary now (a server refuses to start when one cannot be served)."""
        self._stamp = self._changes.stamp()
        for name in self.explicit:
            self.get(name)

    def get(self, name: str) -> Served:
        """The warm segmenter of ``name`` (built on first use; blocks while that build runs)."""
        entry = self._entry(self.check_served(name))
        current = entry.current
        if current is not None:
            return current
        with entry.lock:
            if entry.current is None:
                try:
                    self._load(entry)
                except ProtoDBError as err:
                    entry.error = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise
            return entry.current

    def key(self, name: str) -> tuple:
        """What a vocabulary resolves to now: its version, background flag, and per class ref the
        ready sets (extractor, set id, thing/stuff kind) the catalog names."""
        v = self.db.vocabs.show(name)
        resolved = []
        for ref in v.classes:
            try:
                sets = self.db.sets.resolve(ref)
            except NotFound:
                sets = []
            resolved.append((ref, tuple((s.extractor, s.id, s.kind) for s in sets)))
        return (v.version, v.background, tuple(resolved))

    def _load(self, entry: _Entry) -> Served:
        """Build a segmenter for ``entry`` off to the side and swap it in (caller holds entry.lock)."""
        key = self.key(entry.name)
        t0 = time.perf_counter()
        segmenter = self._build_fn(entry.name)
        entry.generation += 1
        served = Served(entry.name, segmenter, key, entry.generation, time.time(), time.perf_counter() - t0)
        entry.current = served  # the swap: one reference assignment
        entry.error = None
        log.info("serving %s generation %d: %s", entry.name, served.generation, segmenter.vocab.describe()["sets"])
        return served

    # ------------------------------------------------------------------ live reload
    def check(self, force: bool = False) -> list[str]:
        """Rebuild the loaded vocabularies whose catalog key changed; returns their names."""
        self.checks += 1
        self.last_check = time.time()
        stamp = self._changes.stamp()
        due = force or time.monotonic() - self._full_at > FULL_CHECK
        if stamp == self._stamp and not due:
            return []
        self._stamp = stamp  # read before the keys: a change after this moves the stamp again
        self._full_at = time.monotonic()
        names = self.refresh_names()
        with self._lock:
            for gone in [n for n in self._entries if n not in names]:  # a deleted vocabulary: free its tables
                del self._entries[gone]
            entries = [e for e in self._entries.values() if e.current is not None]
        changed = []
        for entry in entries:
            try:
                key = self.key(entry.name)
                if key == entry.current.key:
                    continue
                with entry.lock:
                    self._load(entry)
                changed.append(entry.name)
                self.reloads += 1
            except ProtoDBError as err:  # keep serving the previous segmenter
                entry.error = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.warning("vocabulary %s: not reloaded: %s", entry.name, entry.error)
            except Exception as err:  # noqa: BLE001 - a reload must never take the server down
                entry.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log.exception("vocabulary %s: reload failed", entry.name)
        return changed

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - e.g. the catalog is briefly unreachable; try again later
                log.exception("catalog check failed")

    def start(self) -> None:
        if self._thread is None:
            self._stamp = self._stamp or self._changes.stamp()
            self._thread = threading.Thread(target=self._watch, name="protodb-serve-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            entry = self._entries.get(name)
            served = entry.current if entry else None
            item: dict[str, Any] = {"name": name, "loaded": served is not None}
            if served is not None:
                item.update(served.describe())
            if entry is not None and entry.error:
                item["error"] = entry.error
            out.append(item)
        return out

    def stats(self) -> dict[str, Any]:
        return {"interval": self.interval, "checks": self.checks, "reloads": self.reloads,
                "last_check": round(self.last_check, 3) if self.last_check else None}
