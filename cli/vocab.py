"""Vocabularies: named lists of classes to segment with (``protodb vocab ...``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from protodb.entities import Vocabulary
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.output import say, table

vocab_app = typer.Typer(help="Vocabularies: named lists of classes to segment with.", no_args_is_help=True)


def _show(v: Vocabulary) -> None:
    src = "built-in" if v.builtin else f"version {v.version}"
    say(f"{v.name} ({src}, {len(v.classes)} classes): {', '.join(v.classes)}")


@command(vocab_app, "list")
def vocab_list(ctx: Ctx) -> None:
    """List vocabularies (yours and the built-in ones).

    Example: protodb vocab list --json
    """
    rows = ctx.db.overview.vocabularies()
    ctx.emit(rows, lambda rs: table(["name", "classes", "version", "source", "description"],
                                    [(r.name, r.classes, r.version, "built-in" if r.builtin else "catalog",
                                      r.description or "") for r in rs]))


@command(vocab_app, "show")
def vocab_show(ctx: Ctx, name: str) -> None:
    """Show a vocabulary's classes.

    Example: protodb vocab show voc
    """
    ctx.emit(ctx.db.vocabs.show(name), _show)


@command(vocab_app, "create", db=WRITE)
def vocab_create(
    ctx: Ctx,
    name: str,
    classes: Annotated[list[str], typer.Argument(help="Classes; pin versions with boat@3.")],
    description: Annotated[Optional[str], typer.Option(help="What it is for.")] = None,
) -> None:
    """Create a vocabulary.

    Example: protodb vocab create pets cat dog "guinea pig"
    """
    ctx.emit(ctx.db.vocabs.create(name, classes, description=description), _show)


@command(vocab_app, "add", db=WRITE)
def vocab_add(ctx: Ctx, name: str, classes: list[str]) -> None:
    """Add classes to a vocabulary (or re-pin them).

    Example: protodb vocab add pets hamster boat@2
    """
    ctx.emit(ctx.db.vocabs.add(name, classes), _show)


@command(vocab_app, "remove")
def vocab_remove(ctx: Ctx, name: str, classes: list[str]) -> None:
    """Remove classes from a vocabulary.

    Example: protodb vocab remove pets hamster
    """
    ctx.emit(ctx.db.vocabs.remove(name, classes), _show)
