"""Warm segmenters, one per (vocabulary or class list, extractors, options), reloaded live when the
catalog changes.

A :class:`VocabularySegmenter` holds a vocabulary's match tables and loaded extractors; building one
reads every class's vectors, so the server keeps one per :class:`ServeKey` — what was asked to be
segmented (a vocabulary name or an ad-hoc class list) and the options that change the tables or the
labelling (extractors, levels, background, PAMR, skip-missing) — and reuses it for every request
with that key. The ``--vocab`` ones are pinned (warmed at start, never evicted); others are built on
first use and kept up to ``max_warm`` (least recently used evicted first). Explanations are always
computed (they cost a lookup), and left out of the answer unless asked for.

Live reload. A watcher thread reads the catalog's change stamp (:mod:`protodb.services.changes`,
a handful of aggregates) every ``interval`` seconds. Only when it moved does it re-resolve what each
warm segmenter serves: the vocabulary's version and background flag, and for every class ref the
ready sets ``db.sets.resolve`` names (set id, extractor, thing/stuff kind). When that key differs — a
new ready set or version (another process ran add-class, or an import), a relabel, a vocabulary
edit, a moved tag — a new segmenter is built off to the side (the old one keeps answering) and
swapped in with one assignment, so a request sees the old segmenter or the new one, never a
half-built table. Readers only ever resolve ``ready`` sets: a pending set of a running build is
invisible until its commit marks it ready. A rebuild that fails (say a set's vectors are damaged)
keeps the previous segmenter and reports the error in ``/api/vocabularies``; it is tried again on
the next change, and at least every ``FULL_CHECK`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from protodb.errors import InvalidInput, NotFound, ProtoDBError
from protodb.names import Ref, parse_class_list
from protodb.segment.options import SegmentOptions, parse_levels

log = logging.getLogger(__name__)

FULL_CHECK = 60.0  # seconds: re-resolve every warm segmenter at least this often


@dataclass(frozen=True)
class ServeKey:
    """What one warm segmenter segments with: a vocabulary or a class list, and the options that
    change its tables or its labelling."""

    vocab: str | None
    classes: tuple[str, ...] | None
    extractors: tuple[str, ...]
    levels: tuple[str, ...]
    background: bool | None
    pamr: bool
    skip_missing: bool

    @property
    def label(self) -> str:
        return self.vocab if self.vocab else "classes:" + ",".join(self.classes or ())

    def options(self, base: SegmentOptions) -> SegmentOptions:
        return base.replace(vocab=self.vocab, classes=",".join(self.classes) if self.classes else None,
                            extractors=self.extractors, levels=self.levels, background=self.background,
                            pamr=self.pamr, skip_missing=self.skip_missing, explain=True, runner_up=True)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "classes": list(self.classes) if self.classes else None,
                "extractors": list(self.extractors), "levels": list(self.levels), "background": self.background,
                "pamr": self.pamr, "skip_missing": self.skip_missing}


@dataclass(frozen=True)
class Served:
    """One warm segmenter and what it was built from (immutable: swapped whole)."""

    key: ServeKey
    segmenter: Any  # VocabularySegmenter
    resolved: tuple
    generation: int
    loaded_at: float
    build_seconds: float

    def describe(self) -> dict[str, Any]:
        v = self.segmenter.vocab
        return {**v.describe(), "key": self.key.to_dict(), "generation": self.generation,
                "loaded_at": round(self.loaded_at, 3), "build_seconds": round(self.build_seconds, 3),
                "set_ids": sorted(v.set_ids), "stuff": {n: s for n, s in zip(v.names, v.stuff)}}


class _Entry:
    def __init__(self, key: ServeKey):
        self.key = key
        self.lock = threading.Lock()  # one build at a time per key
        self.current: Served | None = None
        self.error: str | None = None
        self.generation = 0


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class WarmPool:
    """Warm segmenters of one database (``db``: a :class:`protodb.api.ProtoDB`).

    pinned: vocabulary names warmed at start and never evicted. defaults: the server's segment
    options (a request may override extractors, levels, background, PAMR, skip-missing).
    on_demand: other vocabularies and class lists may be asked for (False: only the pinned ones).
    """

    def __init__(self, db, pinned: Sequence[str] = (), defaults: SegmentOptions | None = None,
                 interval: float = 2.0, max_warm: int = 8, on_demand: bool = True,
                 build: Callable[[SegmentOptions], Any] | None = None):
        self.db = db
        self.defaults = defaults or SegmentOptions()
        self.interval = float(interval)
        self.max_warm = int(max_warm)
        self.on_demand = bool(on_demand)
        self._build_fn = build or db.segmenter
        self._changes = db.changes
        self._entries: OrderedDict[ServeKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._catalog_names: tuple[str, ...] = ()
        self._full_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        self.reloads = 0
        self.evictions = 0
        self.last_check: float | None = None
        self.pinned = tuple(self.key(vocab=name) for name in dict.fromkeys(pinned))
        self.refresh_names()

    # ------------------------------------------------------------------ what is served
    def refresh_names(self) -> tuple[str, ...]:
        self._catalog_names = tuple(v.name for v in self.db.vocabs.list() if not v.builtin)
        return self.names()

    def names(self) -> tuple[str, ...]:
        """Vocabularies offered: the pinned ones, then (on demand) every vocabulary of the catalog."""
        pinned = [k.vocab for k in self.pinned]
        return tuple(dict.fromkeys(pinned + (list(self._catalog_names) if self.on_demand else [])))

    def key(self, *, vocab: str | None = None, classes: str | Sequence[str] | None = None,
            extractors: Sequence[str] | None = None, levels: str | Sequence[str] | None = None,
            background: bool | None = None, pamr: bool | None = None, skip_missing: bool | None = None) -> ServeKey:
        """The key of a request; options not given take the server's defaults. With neither a
        vocabulary nor classes: the only offered vocabulary, if there is exactly one."""
        d = self.defaults
        if vocab and classes:
            raise InvalidInput("give either vocab=NAME or classes='cat,dog,boat@3', not both")
        refs = None
        if classes:
            items = parse_class_list(classes) if isinstance(classes, str) else [str(c).strip() for c in classes]
            refs = tuple(dict.fromkeys(str(Ref.parse(r)) for r in items if r))
            if not refs:
                raise InvalidInput("classes is empty; give a comma list such as classes=cat,dog")
        elif not vocab:
            names = self.names()
            if len(names) != 1:
                raise InvalidInput("say which vocabulary (vocab=NAME) or which classes (classes=cat,dog); offered: "
                                   + (", ".join(names) or "none"))
            vocab = names[0]
        return ServeKey(vocab=vocab or None, classes=refs,
                        extractors=tuple(dict.fromkeys(extractors if extractors is not None else d.extractors)),
                        levels=parse_levels(levels if levels is not None else d.levels),
                        background=d.background if background is None else bool(background),
                        pamr=d.pamr if pamr is None else bool(pamr),
                        skip_missing=d.skip_missing if skip_missing is None else bool(skip_missing))

    def check_allowed(self, key: ServeKey) -> ServeKey:
        """``key`` if this server segments it, else NotFound / InvalidInput saying what is served."""
        if key in self.pinned:
            return key
        if not self.on_demand:
            served = [k.vocab for k in self.pinned]
            if key.classes:
                raise NotFound(f"class lists are not served here (--vocab-only); served: {', '.join(served)}")
            if key.vocab in served:
                raise InvalidInput(f"vocabulary {key.vocab!r} is served with the server's options only "
                                   "(--vocab-only); leave out extractor, levels, background, pamr, skip_missing")
            raise NotFound(f"vocabulary {key.vocab!r} is not served here (--vocab-only); served: {', '.join(served)}")
        if key.vocab:
            self.db.vocabs.show(key.vocab)  # NotFound, naming the vocabularies there are
        return key

    def _entry(self, key: ServeKey) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(key)
            self._entries.move_to_end(key)
            self._evict()
            return entry

    def _evict(self) -> None:
        """Drop the least recently used unpinned segmenters beyond ``max_warm`` (caller holds _lock);
        requests still using one keep it until they finish."""
        extra = [k for k in self._entries if k not in self.pinned]
        while len(extra) > self.max_warm:
            gone = extra.pop(0)
            del self._entries[gone]
            self.evictions += 1
            log.info("evicted warm segmenter %s", gone.label)

    # ------------------------------------------------------------------ segmenters
    def warm(self) -> None:
        """Load every pinned vocabulary now (a server refuses to start when one cannot be served)."""
        self._stamp = self._changes.stamp()
        for key in self.pinned:
            self.get(key)

    def get(self, key: ServeKey) -> Served:
        """The warm segmenter of ``key`` (built on first use; blocks while that build runs)."""
        entry = self._entry(self.check_allowed(key))
        current = entry.current
        if current is not None:
            return current
        with entry.lock:
            if entry.current is None:
                try:
                    self._load(entry)
                except ProtoDBError as err:
                    entry.error = _first_line(err)
                    if key not in self.pinned:
                        with self._lock:
                            self._entries.pop(key, None)  # nothing warm to keep
                    raise
            return entry.current

    def resolved(self, key: ServeKey) -> tuple:
        """What a key resolves to now: the vocabulary's version and background flag, and per class ref
        the ready sets (extractor, set id, thing/stuff kind) the catalog names."""
        if key.vocab:
            v = self.db.vocabs.show(key.vocab)
            head, refs = (v.version, v.background), v.classes
        else:
            head, refs = (0, None), key.classes or ()
        out = []
        for ref in refs:
            try:
                sets = self.db.sets.resolve(ref)
            except NotFound:
                sets = []
            out.append((ref, tuple((s.extractor, s.id, s.kind) for s in sets)))
        return (head, tuple(out))

    def _load(self, entry: _Entry) -> Served:
        """Build a segmenter for ``entry`` off to the side and swap it in (caller holds entry.lock)."""
        resolved = self.resolved(entry.key)
        t0 = time.perf_counter()
        segmenter = self._build_fn(entry.key.options(self.defaults))
        entry.generation += 1
        served = Served(entry.key, segmenter, resolved, entry.generation, time.time(), time.perf_counter() - t0)
        entry.current = served  # the swap: one reference assignment
        entry.error = None
        log.info("serving %s generation %d: %s", entry.key.label, served.generation,
                 segmenter.vocab.describe()["sets"])
        return served

    # ------------------------------------------------------------------ live reload
    def check(self, force: bool = False) -> list[str]:
        """Rebuild the warm segmenters whose catalog resolution changed; returns their labels."""
        self.checks += 1
        self.last_check = time.time()
        stamp = self._changes.stamp()
        due = force or time.monotonic() - self._full_at > FULL_CHECK
        if stamp == self._stamp and not due:
            return []
        self._stamp = stamp  # read before resolving: a change after this moves the stamp again
        self._full_at = time.monotonic()
        names = self.refresh_names()
        with self._lock:
            for gone in [k for k in self._entries if k.vocab and k.vocab not in names and k not in self.pinned]:
                del self._entries[gone]  # a deleted vocabulary: free its tables
            entries = [e for e in self._entries.values() if e.current is not None]
        changed = []
        for entry in entries:
            try:
                if self.resolved(entry.key) == entry.current.resolved:
                    continue
                with entry.lock:
                    self._load(entry)
                changed.append(entry.key.label)
                self.reloads += 1
            except ProtoDBError as err:  # keep serving the previous segmenter
                entry.error = _first_line(err)
                log.warning("%s: not reloaded: %s", entry.key.label, entry.error)
            except Exception as err:  # noqa: BLE001 - a reload must never take the server down
                entry.error = f"{type(err).__name__}: {_first_line(err)}"
                log.exception("%s: reload failed", entry.key.label)
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

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict[str, Any]:
        """``vocabularies``: each offered vocabulary with its default-options segmenter (if warm);
        ``warm``: every warm segmenter (vocabularies, class lists, option variants)."""
        with self._lock:
            entries = list(self._entries.values())
        defaults = {k.vocab: k for k in (self.key(vocab=n) for n in self.names())}
        by_key = {e.key: e for e in entries}
        vocabularies = []
        for name, key in defaults.items():
            entry = by_key.get(key)
            item: dict[str, Any] = {"name": name, "pinned": key in self.pinned,
                                    "loaded": bool(entry and entry.current)}
            if entry and entry.current:
                item.update(entry.current.describe())
            if entry and entry.error:
                item["error"] = entry.error
            vocabularies.append(item)
        warm = []
        for e in entries:
            if e.current is not None:
                warm.append({"label": e.key.label, **e.current.describe(), **({"error": e.error} if e.error else {})})
        return {"vocabularies": vocabularies, "warm": warm, "on_demand": self.on_demand, "max_warm": self.max_warm}

    def stats(self) -> dict[str, Any]:
        return {"interval": self.interval, "checks": self.checks, "reloads": self.reloads,
                "evictions": self.evictions, "warm": sum(1 for e in self._entries.values() if e.current),
                "last_check": round(self.last_check, 3) if self.last_check else None}
