"""Summary indexes of vocabularies for two-stage matching (``protodb index ...``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.output import say, table

from protodb.entities import IndexStatus

index_app = typer.Typer(help="Summary indexes of large vocabularies (the first stage of two-stage matching).",
                        no_args_is_help=True)


def _rows(statuses: list[IndexStatus]) -> None:
    table(["vocabulary", "extractor", "state", "kind", "classes", "vectors", "built", "build s"],
          [(s.vocabulary, s.extractor, s.state + (f" ({s.changed} sets changed)" if s.changed else ""), s.kind or "-",
            s.classes, s.rows, s.built_at or "-", "-" if s.build_seconds is None else f"{s.build_seconds:.1f}")
           for s in statuses])


@command(index_app, "build", db=WRITE)
def index_build(
    ctx: Ctx,
    vocab: Annotated[str, typer.Argument(help="The vocabulary to index.")],
    extractor: Annotated[Optional[list[str]], typer.Option(
        "--extractor", help="Only this extractor's index (repeatable; default: every extractor its classes share).",
        show_default=False)] = None,
    kind: Annotated[str, typer.Option(
        help="auto (ivf_pq from 500,000 summary vectors, else flat), flat (searched exactly in memory) or "
             "ivf_pq (LanceDB's IVF-PQ index, searched approximately).")] = "auto",
) -> None:
    """Build (or rebuild) the summary index of a vocabulary: every class's class and instance prototypes
    in a LanceDB table of the database, recorded with the sets it covers. A new set of one of its
    classes makes it stale (see: protodb index status). The previous index stays in use until the new
    one is complete, so a killed build changes nothing.

    Example: protodb index build lvis

    Example: protodb index build big --kind ivf_pq --json
    """
    with ctx.progress(unit="steps") as progress:
        statuses = ctx.db.indexes.build(vocab, extractors=extractor or (), kind=kind,
                                        progress=lambda stage: progress(stage, 0, None))
    ctx.emit(statuses, _rows)


@command(index_app, "status")
def index_status(
    ctx: Ctx,
    vocab: Annotated[Optional[str], typer.Argument(help="A vocabulary (default: every index).")] = None,
) -> None:
    """Whether each index is fresh (covers exactly the sets its vocabulary resolves to), stale (a class
    changed since it was built: rebuild it) or missing (its table is gone).

    Example: protodb index status lvis --json
    """
    ctx.emit(ctx.db.indexes.status(vocab), _rows)


@command(index_app, "drop", db=WRITE)
def index_drop(ctx: Ctx, vocab: Annotated[str, typer.Argument(help="The vocabulary whose index goes.")]) -> None:
    """Delete the summary index of a vocabulary (two-stage matching then reads an exact summary).

    Example: protodb index drop lvis
    """
    statuses = ctx.db.indexes.drop(vocab)
    ctx.emit(statuses, lambda ss: say(f"dropped {len(ss)} index(es) of {vocab}"))
