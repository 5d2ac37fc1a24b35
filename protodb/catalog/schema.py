"""The SQL catalog: what exists, where it came from, and which version of it is current.

Every row has a global identifier (a UUID, or a content hash where the row *is* its content:
extractors and generator specs), so two catalogs can be merged without collisions. Rows that
protodb writes record the protodb version that wrote them.

Prototype sets are immutable once ``status == "ready"``; readers only ever see ready sets.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from protodb._version import __version__
from protodb.entities import PROTOTYPE_KINDS as PROTO_KINDS  # noqa: F401 - the one definition

# Constraint names are explicit so that Alembic batch mode (SQLite) can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

THING, STUFF = "thing", "stuff"
LABEL_SOURCES = ("llm", "lexicon", "manual")
SET_PENDING, SET_READY = "pending", "ready"


class Damaged:
    """What a JSON column holds when its stored text is not JSON (a damaged catalog): the raw text.
    Readers turn it into one clear DamagedData line; ``verify`` lists it."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    def __repr__(self) -> str:
        return f"Damaged({str(self.raw)[:40]!r})"


class SafeJSON(TypeDecorator):
    """JSON whose stored text, when it is not JSON, reads back as :class:`Damaged` instead of raising
    from every query that touches the row."""

    impl = JSON
    cache_ok = True

    @property
    def python_type(self):
        return dict

    def result_processor(self, dialect, coltype):
        inner = self.impl_instance.result_processor(dialect, coltype)

        def process(value):
            try:
                return inner(value) if inner is not None else value
            except (ValueError, TypeError):
                return Damaged(value)

        return process


def new_id() -> str:
    """A fresh global identifier (UUID4, 32 lowercase hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: SafeJSON, list[Any]: SafeJSON}


class _Stamped:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    protodb_version: Mapped[str] = mapped_column(String(32), default=__version__)


class ClassRow(_Stamped, Base):
    """A nameable class (``boat``); ``kind`` is its current thing/stuff label."""

    __tablename__ = "classes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(8), default=THING)

    labels: Mapped[list["LabelRow"]] = relationship(
        back_populates="cls", order_by="LabelRow.created_at", cascade="all, delete-orphan"
    )


class LabelRow(_Stamped, Base):
    """One thing/stuff decision, kept as history: who decided (llm/lexicon/manual) and how."""

    __tablename__ = "class_labels"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    model: Mapped[Optional[str]] = mapped_column(String(200))
    prompt: Mapped[Optional[str]] = mapped_column(Text)
    raw_answer: Mapped[Optional[str]] = mapped_column(Text)

    cls: Mapped[ClassRow] = relationship(back_populates="labels")


class VocabularyRow(_Stamped, Base):
    """A named list of classes (``voc``, ``camvid``, or a user's own)."""

    __tablename__ = "vocabularies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[Optional[str]] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    background: Mapped[bool] = mapped_column(Boolean, default=True)  # score a background class

    members: Mapped[list["VocabularyMemberRow"]] = relationship(
        back_populates="vocabulary", order_by="VocabularyMemberRow.position",
        cascade="all, delete-orphan",
    )


class VocabularyMemberRow(Base):
    """A class in a vocabulary, optionally pinned (``ref`` like ``boat@3`` or ``boat@paper``)."""

    __tablename__ = "vocabulary_members"
    vocabulary_id: Mapped[str] = mapped_column(
        ForeignKey("vocabularies.id", ondelete="CASCADE"), primary_key=True
    )
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    ref: Mapped[Optional[str]] = mapped_column(String(200))

    vocabulary: Mapped[VocabularyRow] = relationship(back_populates="members")
    cls: Mapped[ClassRow] = relationship()


class ExtractorRow(_Stamped, Base):
    """A feature extractor as data. ``id`` = sha256 of its canonical config + weights hash."""

    __tablename__ = "extractors"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(SafeJSON)
    weights_hash: Mapped[Optional[str]] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)


class GeneratorSpecRow(_Stamped, Base):
    """A text-to-image generator and its sampling settings. ``id`` = sha256 of the spec."""

    __tablename__ = "generator_specs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(String(500))
    revision: Mapped[Optional[str]] = mapped_column(String(200))
    scheduler: Mapped[str] = mapped_column(String(100))
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(SafeJSON)


class GenerationRunRow(_Stamped, Base):
    """One add-class run's generation settings for one class."""

    __tablename__ = "generation_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id"), index=True)
    generator_spec_id: Mapped[str] = mapped_column(ForeignKey("generator_specs.id"))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[Optional[str]] = mapped_column(Text)
    base_seed: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer)


class SupportImageRow(_Stamped, Base):
    """A support image (generated or a real exemplar), stored as a content-addressed artifact."""

    __tablename__ = "support_images"
    __table_args__ = (UniqueConstraint("run_id", "index_in_run"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id"), index=True)
    run_id: Mapped[Optional[str]] = mapped_column(ForeignKey("generation_runs.id"))
    index_in_run: Mapped[Optional[int]] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # "generated" | "exemplar" | "correction" | "view"
    artifact_sha256: Mapped[str] = mapped_column(String(64), index=True)
    attention_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[Optional[int]] = mapped_column(Integer)
    prompt: Mapped[Optional[str]] = mapped_column(Text)
    origin: Mapped[Optional[str]] = mapped_column(Text)  # exemplar file name


class MaskRow(_Stamped, Base):
    """A foreground or background mask of a support image (PNG artifact, 0/255)."""

    __tablename__ = "masks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("support_images.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # "foreground" | "background"
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(SafeJSON)
    extractor_id: Mapped[Optional[str]] = mapped_column(ForeignKey("extractors.id"))


class PrototypeSetRow(_Stamped, Base):
    """The prototypes of one class for one extractor at one version.

    ``version`` is assigned in the same transaction that marks the set ready, so versions
    have no gaps; while ``status == "pending"`` it is NULL and the set is invisible.
    """

    __tablename__ = "prototype_sets"
    __table_args__ = (
        UniqueConstraint("class_id", "extractor_id", "version"),
        Index("ix_prototype_sets_lookup", "class_id", "extractor_id", "status"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id"))
    extractor_id: Mapped[str] = mapped_column(ForeignKey("extractors.id"))
    version: Mapped[Optional[int]] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=SET_PENDING)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    run_id: Mapped[Optional[str]] = mapped_column(ForeignKey("generation_runs.id"))
    counts: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    vector_table: Mapped[str] = mapped_column(String(200))
    vector_table_version: Mapped[Optional[int]] = mapped_column(Integer)
    nbytes: Mapped[int] = mapped_column(Integer, default=0)
    ready_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    config: Mapped[Optional[dict[str, Any]]] = mapped_column(SafeJSON)  # resolved build config
    vectors_sha256: Mapped[Optional[str]] = mapped_column(String(64))  # checksum at commit

    cls: Mapped[ClassRow] = relationship()
    extractor: Mapped[ExtractorRow] = relationship()
    images: Mapped[list["SetImageRow"]] = relationship(cascade="all, delete-orphan")


class SetImageRow(Base):
    """Which support images a prototype set was built from."""

    __tablename__ = "prototype_set_images"
    set_id: Mapped[str] = mapped_column(
        ForeignKey("prototype_sets.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[str] = mapped_column(ForeignKey("support_images.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class TagRow(_Stamped, Base):
    """A name that pins prototype sets: an alias pins one, a tag (``voc:paper``) pins many."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("name", "set_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    set_id: Mapped[str] = mapped_column(ForeignKey("prototype_sets.id", ondelete="CASCADE"))
    note: Mapped[Optional[str]] = mapped_column(Text)


class SettingRow(Base):
    """Database-wide settings (e.g. where vectors and artifacts live for a shared database)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)



class CorrectionRow(_Stamped, Base):
    """A user's correction of a segmentation: an image and the pixels of one class on it, with provenance.

    ``image_sha256``: the image as a PNG artifact (content-addressed); ``source_sha256``: sha256 of the
    image file as given (the photo that was segmented); ``mask_sha256``: PNG artifact, 0/255, the same size
    as the image, 255 where the class is. ``set_id``/``settings``: the prototype set and segment settings
    that produced the corrected result, when known (plain values, no foreign key: they may be elsewhere).
    A label map with several classes is stored as one row per class, sharing ``group_id``. Rows are only
    ever added: a correction never changes an existing prototype set; ``teach``/``add-class
    --with-corrections`` build a new version from them.
    """

    __tablename__ = "corrections"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id"), index=True)
    group_id: Mapped[str] = mapped_column(String(32), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_sha256: Mapped[str] = mapped_column(String(64))
    mask_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    pixels: Mapped[int] = mapped_column(Integer)
    label_value: Mapped[Optional[int]] = mapped_column(Integer)
    origin: Mapped[Optional[str]] = mapped_column(Text)  # the image's file name as given
    author: Mapped[Optional[str]] = mapped_column(String(200))
    set_id: Mapped[Optional[str]] = mapped_column(String(32))
    settings: Mapped[Optional[dict[str, Any]]] = mapped_column(SafeJSON)
