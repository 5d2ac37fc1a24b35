"""Typed results: what protodb's services and workflows return.

Every entity is a frozen dataclass with ``to_dict()`` giving the JSON that ``--json`` prints (keys
as documented per class; a field named ``class_name`` is written as ``"class"``). ORM rows are
converted to entities by the services (``protodb.services``); nothing above the services reads a
row or a string-keyed dict of a set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: The six prototype kinds, foreground then background (the order they are built and stored in).
PROTOTYPE_KINDS = ("class", "instance", "part", "bg_class", "bg_instance", "bg_part")
FOREGROUND_KINDS = PROTOTYPE_KINDS[:3]
BACKGROUND_KINDS = PROTOTYPE_KINDS[3:]
#: The contact sheets of ``protodb inspect`` (and the page's prototype tabs): sheet name -> kinds traced.
SHEETS: dict[str, tuple[str, ...]] = {"parts": ("part",), "background": BACKGROUND_KINDS, "instances": ("instance",)}


def plain(value: Any) -> Any:
    """JSON-ready copy of ``value``: entities via ``to_dict``, tuples as lists, dicts and lists deep."""
    if isinstance(value, Entity):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Entity:
    """Base of the result dataclasses: ``to_dict()`` in field order; ``_json_names`` renames keys,
    ``_omit_none`` lists fields left out of the dict when None."""

    _json_names: ClassVar[dict[str, str]] = {}
    _omit_none: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._omit_none:
                continue
            out[self._json_names.get(f.name, f.name)] = plain(value)
        return out


def counts_of(raw: dict | None) -> dict[str, int]:
    """Prototype counts with every kind present (0 when absent)."""
    raw = raw or {}
    return {k: int(raw.get(k, 0)) for k in PROTOTYPE_KINDS}


# ---------------------------------------------------------------------------------------- database
@dataclass(frozen=True)
class DbInfo(Entity):
    """Where a database lives and what it holds (``protodb info``)."""

    home: str
    catalog_url: str
    schema_revision: str | None
    vectors_uri: str
    artifacts_uri: str
    protodb_version: str
    classes: int
    prototype_sets: int
    pending_sets: int
    support_images: int
    extractors: int


@dataclass(frozen=True)
class SchemaStatus(Entity):
    """The catalog's schema revision against this protodb's newest (``protodb db current``); ``check``
    adds ``in_sync`` / ``differences`` (ORM vs migrated schema)."""

    catalog_url: str
    revision: str | None
    head: str
    up_to_date: bool
    in_sync: bool | None = None
    differences: Any = None
    _omit_none: ClassVar[tuple[str, ...]] = ("in_sync",)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.in_sync is None:
            out.pop("differences", None)
        return out


# ---------------------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class PrototypeSet(Entity):
    """One prototype set: a class's prototypes for one extractor at one version.

    counts: prototypes per kind (all six kinds). images: support image ids in build order.
    config: the resolved build configuration stored with the set (its canonical hash is
    ``config_hash``); None for sets written before configs were stored. params: runtime facts
    (device, dtype, preset) that do not change what the set is.
    """

    id: str
    class_name: str
    kind: str
    extractor: str
    extractor_id: str
    version: int | None
    status: str
    counts: dict[str, int]
    images: tuple[str, ...]
    tags: tuple[str, ...]
    config_hash: str
    run_id: str | None
    params: dict[str, Any]
    vector_table: str
    vector_table_version: int | None
    bytes: int
    protodb_version: str
    created_at: str | None
    config: dict[str, Any] | None = None
    vectors_sha256: str | None = None
    _json_names: ClassVar[dict[str, str]] = {"class_name": "class"}

    @property
    def ref(self) -> str:
        """``class@version``."""
        return f"{self.class_name}@{self.version}"

    @property
    def size(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ClassVersion(Entity):
    """One version of a class across extractors (``protodb ls``)."""

    version: int
    status: str
    extractors: tuple[str, ...]
    images: int
    counts: dict[str, int]
    sets: tuple[str, ...]
    tags: tuple[str, ...]
    bytes: int
    created_at: str | None


@dataclass(frozen=True)
class ClassVersions(Entity):
    """A class with its ready versions."""

    name: str
    kind: str
    id: str
    versions: tuple[ClassVersion, ...]


@dataclass(frozen=True)
class TaggedSets(Entity):
    """What a tag pins (``protodb alias``)."""

    tag: str
    sets: tuple[PrototypeSet, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "sets": [{"class": s.class_name, "version": s.version,
                                           "extractor": s.extractor, "set": s.id} for s in self.sets]}


@dataclass(frozen=True)
class Untagged(Entity):
    tag: str
    removed: int


# ---------------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelEntry(Entity):
    kind: str
    source: str
    model: str | None
    prompt: str | None
    raw_answer: str | None
    at: str


@dataclass(frozen=True)
class LabelHistory(Entity):
    """A class's thing/stuff label and every earlier decision."""

    name: str
    kind: str
    history: tuple[LabelEntry, ...]


@dataclass(frozen=True)
class LabelFailure(Entity):
    """A class the LLM gave no usable label for (it keeps the label it had)."""

    name: str
    reason: str


@dataclass(frozen=True)
class LabelRun(Entity):
    """``protodb vocab label``: how each class of a vocabulary got its thing/stuff label.

    ``already``: decided before (LLM, by hand, or a dataset's split), untouched; ``lexicon``: the
    built-in stuff lexicon names it; ``dataset``: labelled now from a dataset's own thing/stuff split;
    ``llm``: labelled now by the LLM; ``left``: still only the lexicon's default "thing" (no LLM asked);
    ``changed``: classes whose kind changed; ``requests``: LLM requests sent.
    """

    vocabulary: str
    classes: int
    already: int
    lexicon: int
    dataset: int
    llm: int
    left: int
    changed: int
    failed: tuple[LabelFailure, ...]
    requests: int
    batch_size: int
    model: str | None


# ---------------------------------------------------------------------------------------- vocabularies
@dataclass(frozen=True)
class Vocabulary(Entity):
    """A vocabulary's definition: refs in order (``boat`` or pinned ``boat@3``)."""

    name: str
    description: str | None
    version: int
    builtin: bool
    background: bool | None
    classes: tuple[str, ...]
    kinds: tuple[str, ...] | None


@dataclass(frozen=True)
class VocabularySummary(Entity):
    """One row of ``protodb vocab list``."""

    name: str
    classes: int
    version: int
    builtin: bool
    description: str | None


# ---------------------------------------------------------------------------------------- integrity
@dataclass(frozen=True)
class Damage(Entity):
    """One damaged thing found by ``verify``: what (set, artifact, row, table), its id, and why."""

    what: str
    id: str
    problem: str
    name: str | None = None
    _omit_none: ClassVar[tuple[str, ...]] = ("name",)


@dataclass(frozen=True)
class VerifyReport(Entity):
    """``protodb verify``: artifacts re-hashed, sets' vectors counted and checksummed, rows checked."""

    artifacts_checked: int
    missing: tuple[str, ...]
    corrupt: tuple[str, ...]
    sets_checked: int
    bad_sets: tuple[dict[str, Any], ...]
    damage: tuple[Damage, ...] = ()
    models_checked: int = 0
    indexes: tuple[IndexStatus, ...] = ()  # every recorded summary index: fresh, stale or missing

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.bad_sets or self.damage)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ok": self.ok}


@dataclass(frozen=True)
class IndexStatus(Entity):
    """The summary index of one vocabulary for one extractor (``protodb index build|status|drop``).

    state: ``fresh`` (covers exactly the sets the vocabulary resolves to now), ``stale`` (a class was
    added, removed or got a new set since it was built: two-stage matching falls back to an exact
    summary until it is rebuilt), ``missing`` (recorded, but its table is gone) or ``none`` (never built).
    kind: ``flat`` (summary vectors searched exactly in memory) or ``ivf_pq`` (LanceDB's IVF-PQ index,
    searched approximately with ``params``' nprobes and refine factor). classes / rows: classes covered
    and summary vectors (class + instance prototypes) held.
    """

    vocabulary: str
    extractor: str
    state: str
    kind: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    classes: int = 0
    rows: int = 0
    table: str | None = None
    built_at: str | None = None
    build_seconds: float | None = None
    changed: int | None = None  # classes whose set differs from the index's (stale only)


# ---------------------------------------------------------------------------------------- building
@dataclass(frozen=True)
class BuiltSet(Entity):
    """A set an add-class run produced or found (``reused``: the same config existed already)."""

    set: PrototypeSet
    reused: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.set.to_dict(), "reused": self.reused}


@dataclass(frozen=True)
class AddClassResult(Entity):
    """What ``protodb add-class`` built for one class."""

    name: str
    kind: str
    label_source: str
    generated_images: int
    reused_images: int
    exemplar_images: int
    preset: str | None
    sets: tuple[BuiltSet, ...]
    vocab: str | None = None
    skipped: tuple[str, ...] = ()  # exemplar files left out, each "NAME: reason"
    _omit_none: ClassVar[tuple[str, ...]] = ("vocab",)


@dataclass(frozen=True)
class ClassFailure(Entity):
    """A class of a batch build that failed (the others were still built)."""

    name: str
    error: str


@dataclass(frozen=True)
class AddVocabResult(Entity):
    """What ``protodb add-vocab`` built."""

    vocab: str
    classes: tuple[AddClassResult, ...]
    already_built: tuple[str, ...]
    failed: tuple[ClassFailure, ...] = ()


@dataclass(frozen=True)
class ExtractorRecord(Entity):
    """An extractor as the catalog stores it. ``id``: sha256 of its portable config + weights hash."""

    id: str
    name: str
    kind: str
    config: dict
    dim: int
    weights_hash: str | None


@dataclass(frozen=True)
class ExtractorInfo(Entity):
    """An extractor as registered (``protodb extractor add/list``)."""

    name: str
    kind: str
    config: dict[str, Any]
    dim: int | None = None
    weights_hash: str | None = None
    _omit_none: ClassVar[tuple[str, ...]] = ("dim", "weights_hash")


# ---------------------------------------------------------------------------------------- segmenting
@dataclass(frozen=True)
class SegmentOutput(Entity):
    """One segmented input: label fractions and scores per class present, the files written."""

    input: str
    size: tuple[int, int]
    present: dict[str, dict[str, float]]
    files: dict[str, str] | None = None
    explain: dict[str, Any] | None = None
    _omit_none: ClassVar[tuple[str, ...]] = ("files", "explain")


@dataclass(frozen=True)
class InputFailure(Entity):
    """An input that could not be segmented: its name and one line saying why. ``cause``: the exception
    (not serialised; a runner that answers per input, such as the HTTP service, maps it to a status)."""

    input: str
    error: str
    cause: BaseException | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "error": self.error}


@dataclass(frozen=True)
class SegmentReport(Entity):
    """``protodb segment``: the vocabulary and settings used, one output per input that worked, one
    failure per input that did not."""

    vocabulary: dict[str, Any]
    settings: dict[str, Any]
    outputs: tuple[SegmentOutput, ...]
    failed: tuple[InputFailure, ...]
    seconds: float
    skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["seconds"] = round(self.seconds, 3)
        if not self.skipped:
            out.pop("skipped")
        return out


@dataclass(frozen=True)
class EvalReport(Entity):
    """``protodb eval``: mIoU (intersections and unions summed over the split) and per-class IoU."""

    dataset: str
    split: str
    root: str
    images: int
    miou: float | None
    per_class: dict[str, float | None]
    accuracy: float | None
    seconds_per_image: float
    vocabulary: dict[str, Any]
    settings: dict[str, Any]


@dataclass(frozen=True)
class InspectReport(Entity):
    """``protodb inspect``: a class's versions, the chosen set's provenance, the files written."""

    class_name: str
    versions: tuple[ClassVersion, ...]
    provenance: dict[str, Any]
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    _json_names: ClassVar[dict[str, str]] = {"class_name": "class"}


# ---------------------------------------------------------------------------------------- sharing
@dataclass(frozen=True)
class ExportReport(Entity):
    path: str
    bytes: int
    compressed: bool
    manifest_sha256: str
    bundle: str
    lean: bool
    classes: tuple[str, ...]
    sets: tuple[dict[str, Any], ...]
    vocabularies: tuple[str, ...]
    members: int
    artifacts: int


@dataclass(frozen=True)
class ImportReport(Entity):
    """What an import added and skipped (``added`` / ``skipped`` as documented in the README).

    indexes: the summary indexes the bundle carried for its vocabularies, one dict each: ``vocabulary``
    (its name here), ``extractor``, ``kind``, ``params`` and ``state``: ``would rebuild`` (dry run),
    ``rebuilt`` (built here after the import), ``fresh`` (an index of that kind was fresh here already)
    or ``failed`` (with ``error``: the import stands; rebuild it with ``protodb index build``)."""

    bundle: str
    manifest_sha256: str
    dry_run: bool
    lean: bool
    protodb_version: str | None
    schema_revision: str | None
    origin_tag: str | None
    added: dict[str, Any]
    skipped: dict[str, Any]
    warnings: tuple[str, ...]
    indexes: tuple[dict[str, Any], ...] = ()
    path: str | None = None
    ref: dict[str, Any] | None = None
    _omit_none: ClassVar[tuple[str, ...]] = ("path", "ref")


@dataclass(frozen=True)
class Remote(Entity):
    name: str
    url: str


@dataclass(frozen=True)
class RemoteRef(Entity):
    """One ref on a remote: a pushed vocabulary or class and the bundle it names."""

    kind: str
    name: str
    bundle: str | None
    sets: int
    bytes: int | None
    pushed_at: str | None


@dataclass(frozen=True)
class PushReport(Entity):
    remote: str
    url: str
    refs: tuple[dict[str, Any], ...]
    uploaded: int
    uploaded_bytes: int
    already_there: int
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class PullReport(Entity):
    remote: str
    url: str
    dry_run: bool
    downloaded_bytes: int
    imports: tuple[ImportReport, ...]


@dataclass(frozen=True)
class SupportImageRecord(Entity):
    """A stored support image: its artifact, size and where it came from."""

    id: str
    sha256: str
    width: int
    height: int
    source: str
    seed: int | None = None
    origin: str | None = None
    attention_sha256: str | None = None


@dataclass(frozen=True)
class CorrectionRecord(Entity):
    """A stored correction: the pixels of one class on one image and where they came from.

    ``image_sha256`` / ``mask_sha256``: PNG artifacts (the mask 0/255, the image's size); ``source_sha256``:
    sha256 of the image file as given; ``pixels``: how many pixels are marked; ``label_value``: the value
    in the label map it came from (None for a mask); ``set_id`` / ``settings``: the set and segment settings
    that produced the corrected result, when known; ``created_at``: ISO 8601 UTC."""

    id: str
    class_name: str
    group_id: str
    image_sha256: str
    source_sha256: str
    mask_sha256: str
    width: int
    height: int
    pixels: int
    label_value: int | None = None
    origin: str | None = None
    author: str | None = None
    set_id: str | None = None
    settings: dict[str, Any] | None = None
    created_at: str | None = None
    _json_names: ClassVar[dict[str, str]] = {"class_name": "class"}


@dataclass(frozen=True)
class TeachResult(Entity):
    """``protodb teach``: the corrections stored, the version they corrected (``previous``, which stays
    addressable) and what was built from its support plus every correction of the class (None when
    only stored)."""

    class_name: str
    corrections: tuple[CorrectionRecord, ...]
    previous: str | None
    built: AddClassResult | None = None
    _json_names: ClassVar[dict[str, str]] = {"class_name": "class"}


@dataclass(frozen=True)
class CompareReport(Entity):
    """``protodb compare A B``: per-class IoU of two versions on the same images, and the change.

    ``classes`` {class: {"a": IoU or None, "b": IoU or None, "change": b - a or None, "pixels": ground-truth
    pixels}}; ``on``: "labels" (a labelled folder) or "corrections" (the corrected pixels of the class's
    corrections); ``mean``: {"a", "b", "change"} over classes with both values."""

    a: str
    b: str
    on: str
    images: int
    classes: dict[str, dict[str, Any]]
    mean: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- scale-out (Ray)
@dataclass(frozen=True)
class CostEstimate(Entity):
    """Accelerator time a plan needs, from per-image costs (``source`` says where they come from)."""

    seconds_per_image: float
    images: int
    seconds: float
    gpu_hours: float
    source: str


@dataclass(frozen=True)
class BuildPlan(Entity):
    """``add-class`` / ``add-vocab --dry-run``: what a build would do (nothing is started or written)."""

    classes: tuple[str, ...]
    already_built: tuple[str, ...]
    images: int
    tasks: dict[str, int]
    shard_size: int
    generator: str
    ray: str | None
    estimate: CostEstimate


@dataclass(frozen=True)
class SegmentPlan(Entity):
    """``segment --dry-run``: inputs to label, inputs whose outputs exist, tasks and the estimate."""

    inputs: int
    to_segment: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[InputFailure, ...]
    batch_size: int
    tasks: int
    ray: str | None
    estimate: CostEstimate
