"""Thing/stuff labels of classes: the current label and the full history of decisions.

How a new class is labelled (manual override, an LLM, the built-in lexicon) is decided by
:mod:`protodb.thing_stuff`; this service records and reads the decisions.

Many classes at once (:meth:`LabelService.label_classes`, ``protodb vocab label``) go lexicon first:
a class whose label was decided before (by the LLM, by hand, or from a dataset's split) is left as it
is; one the lexicon names is stuff (the built-in stuff list, or with ``lexicon="ovdiff"`` the OVDiff
authors' table, which also decides the things it lists); one a built-in dataset defines
(:func:`protodb.vocabularies.dataset_kinds`: LVIS, Objects365 and OpenImages classes are things,
ADE's stuff classes stuff) gets that label (``source="lexicon"``, ``raw_answer="dataset: ..."``);
the rest, which only carry the lexicon's default "thing", are asked of the LLM in batches
(:func:`protodb.thing_stuff.classify_many_with_llm`), each answered batch stored at once, so a stopped
run keeps its work and running it again asks only about what is left.
"""

from __future__ import annotations

from typing import Callable, Sequence

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session

from protodb.catalog import queries
from protodb.catalog.schema import ClassRow, LabelRow, new_id
from protodb.entities import LabelEntry, LabelFailure, LabelHistory, LabelRun
from protodb.errors import InvalidInput, NotFound
from protodb.names import normalize_class_name, quoted
from protodb.stores import Stores
from protodb.thing_stuff import (
    DEFAULT_BATCH_SIZE,
    ENV_BASE_URL,
    ENV_MODEL,
    KINDS,
    Label,
    LLMBatchAborted,
    LLMClient,
    LLMError,
    classify_many_with_llm,
    choose_lexicon,
    classify_with_lexicon,
    lexicon_kind,
)
from protodb.vocabularies import dataset_kinds

DATASET_NOTE = "dataset:"  # raw_answer prefix of a label taken from a dataset's own thing/stuff split
_CHUNK = 500  # names per IN (...) query


def ensure_classes(s: Session, names: Sequence[str], lexicon: str | None = None) -> dict[str, str]:
    """name -> class id for already-normalised ``names``, creating the missing classes in bulk, each
    labelled by the lexicon (as :meth:`protodb.services.sets.SetService.ensure_class` does; ``lexicon``:
    :func:`protodb.thing_stuff.choose_lexicon`)."""
    names = list(dict.fromkeys(names))
    ids: dict[str, str] = {}
    for i in range(0, len(names), _CHUNK):
        ids.update((n, cid) for cid, n in s.execute(
            select(ClassRow.id, ClassRow.name).where(ClassRow.name.in_(names[i:i + _CHUNK]))))
    new_classes, new_labels = [], []
    for name in names:
        if name not in ids:
            label = label_record(classify_with_lexicon(name, lexicon))
            ids[name] = new_id()
            new_classes.append({"id": ids[name], "name": name, "kind": label["kind"]})
            new_labels.append({"id": new_id(), "class_id": ids[name], **label})
    if new_classes:
        s.execute(insert(ClassRow), new_classes)
        s.execute(insert(LabelRow), new_labels)
    return ids


def label_record(label: Label) -> dict:
    """A :class:`protodb.thing_stuff.Label` as the columns of a label row."""
    return {"kind": label.kind, "source": label.source, "model": label.model, "prompt": label.prompt,
            "raw_answer": label.raw_answer}


class LabelService:
    def __init__(self, stores: Stores):
        self.stores = stores

    def current(self, name: str) -> str | None:
        """The class's thing/stuff label, or None for a class this database does not know."""
        with self.stores.sessions.reader() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            return cls.kind if cls is not None else None

    def record(self, s: Session, class_id: str, label: Label) -> None:
        """Add one decision to a class's history (inside the caller's transaction)."""
        s.add(LabelRow(class_id=class_id, **label_record(label)))

    def set(self, name: str, kind: str) -> LabelHistory:
        """Change a class's thing/stuff label by hand; the history keeps every earlier label."""
        if kind not in KINDS:
            raise InvalidInput(f"kind must be thing or stuff, got {kind!r}")
        with self.stores.sessions.session() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {quoted(name)}")
            cls.kind = kind
            self.record(s, cls.id, Label(kind=kind, source="manual"))
        return self.history(name)

    def history(self, name: str) -> LabelHistory:
        with self.stores.sessions.reader() as s:
            cls = queries.get_class(s, normalize_class_name(name))
            if cls is None:
                raise NotFound(f"no class {name!r}; run: protodb add-class {quoted(name)}")
            rows = s.scalars(select(LabelRow).where(LabelRow.class_id == cls.id).order_by(LabelRow.created_at)).all()
            return LabelHistory(cls.name, cls.kind, tuple(
                LabelEntry(h.kind, h.source, h.model, h.prompt, h.raw_answer, h.created_at.isoformat())
                for h in rows))

    # ------------------------------------------------------------------ many classes at once
    def _state(self, names: list[str]) -> dict[str, tuple[str, str, bool]]:
        """name -> (class id, kind, decided) for the names the catalog has."""
        out: dict[str, tuple[str, str, bool]] = {}
        decided_rule = or_(LabelRow.source.in_(("llm", "manual")),
                           and_(LabelRow.source == "lexicon", LabelRow.raw_answer.like(f"{DATASET_NOTE}%")))
        with self.stores.sessions.reader() as s:
            for i in range(0, len(names), _CHUNK):
                rows = s.execute(select(ClassRow.id, ClassRow.name, ClassRow.kind)
                                 .where(ClassRow.name.in_(names[i:i + _CHUNK]))).all()
                decided = set(s.scalars(select(LabelRow.class_id).distinct().where(
                    LabelRow.class_id.in_([r[0] for r in rows]), decided_rule)))
                out.update((name, (cid, kind, cid in decided)) for cid, name, kind in rows)
        return out

    def _store(self, s: Session, ids: dict[str, str], labels: dict[str, Label]) -> None:
        if not labels:
            return
        s.execute(insert(LabelRow), [{"id": new_id(), "class_id": ids[n], **label_record(lab)}
                                     for n, lab in labels.items()])
        for kind in KINDS:
            chosen = [ids[n] for n, lab in labels.items() if lab.kind == kind]
            for i in range(0, len(chosen), _CHUNK):
                s.execute(update(ClassRow).where(ClassRow.id.in_(chosen[i:i + _CHUNK])).values(kind=kind))

    def label_classes(self, names: Sequence[str], *, vocabulary: str = "", client: LLMClient | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, lexicon_only: bool = False,
                      on_progress: Callable[[str, int, int | None], None] | None = None,
                      lexicon: str | None = None) -> LabelRun:
        """Label every class of ``names`` that has no decided label yet (see the module docstring);
        classes the catalog lacks are created (labelled by the lexicon) first.

        ``client``: the LLM for what the lexicon and the datasets leave open (None: InvalidInput
        when any is left, before anything is written, unless ``lexicon_only``). Raises LLMError
        (one line, with the counts) when the endpoint fails twice in a row; answered batches stay.
        """
        if not 1 <= int(batch_size) <= 500:
            raise InvalidInput(f"--batch-size must be 1..500, not {batch_size}")
        lexicon = choose_lexicon(lexicon)
        names = list(dict.fromkeys(normalize_class_name(n) for n in names))
        state = self._state(names)
        from_dataset = dataset_kinds()
        already = by_lexicon = 0
        now: dict[str, Label] = {}
        ask: list[str] = []
        for name in names:
            cid, kind, decided = state.get(name, (None, None, False))
            if decided:
                already += 1
            elif (listed := lexicon_kind(name, lexicon)) == "stuff":
                by_lexicon += 1
                if kind not in (None, "stuff"):  # created otherwise (an import): the lexicon says stuff
                    now[name] = classify_with_lexicon(name, lexicon)
            elif listed == "thing":  # the authors' table decides its things too
                now[name] = Label("thing", "lexicon", raw_answer=f"{DATASET_NOTE} the {lexicon} lexicon lists it as thing")
            elif name in from_dataset:
                kind_ds, vocabs = from_dataset[name]
                now[name] = Label(kind_ds, "lexicon", raw_answer=f"{DATASET_NOTE} the {', '.join(vocabs)} "
                                  f"vocabular{'ies' if len(vocabs) > 1 else 'y'}' dataset defines it as {kind_ds}")
            else:
                ask.append(name)
        if ask and client is None and not lexicon_only:
            raise InvalidInput(
                f"{len(ask)} class(es) have only the lexicon's default label and no LLM is configured: set "
                f"{ENV_BASE_URL} and {ENV_MODEL} (an OpenAI-compatible endpoint), or pass --lexicon-only")
        dataset = sum(1 for lab in now.values() if (lab.raw_answer or "").startswith(DATASET_NOTE))
        changed = sum(1 for n, lab in now.items() if state.get(n, (None, "thing"))[1] != lab.kind)
        ids: dict[str, str] = {}

        def write(labels: dict[str, Label]) -> None:
            with self.stores.sessions.session() as s:
                if not ids:
                    ids.update(ensure_classes(s, names, lexicon))
                self._store(s, ids, labels)

        write(now)
        for name in names:  # classes created just now carry the lexicon's first label
            state.setdefault(name, (ids[name], classify_with_lexicon(name, lexicon).kind, False))
        progress = on_progress or (lambda stage, n, total: None)
        report_llm, failed, requests = {}, {}, 0
        if ask and not lexicon_only:
            stage = f"labelling {len(ask)} classes"
            progress(stage, 0, len(ask))

            def on_batch(labels: dict[str, Label], bad: dict[str, str]) -> None:
                write(labels)
                progress(stage, len(labels) + len(bad), None)

            try:
                report = classify_many_with_llm(client, ask, batch_size=batch_size, on_batch=on_batch)
            except LLMBatchAborted as err:
                raise LLMError(f"{err}; {len(err.report.labels)} of {len(ask)} classes labelled by the LLM were "
                               "kept; run the same command again to label the rest") from None
            report_llm, failed, requests = report.labels, report.failed, report.requests
            changed += sum(1 for n, lab in report_llm.items() if state[n][1] != lab.kind)
        return LabelRun(
            vocabulary=vocabulary, classes=len(names), already=already, lexicon=by_lexicon, dataset=dataset,
            llm=len(report_llm), left=len(ask) - len(report_llm) - len(failed) if ask else 0, changed=changed,
            failed=tuple(LabelFailure(n, why) for n, why in failed.items()), requests=requests,
            batch_size=int(batch_size), model=client.model if client is not None and ask and not lexicon_only else None)
