"""The database itself: init, info, verify, and the catalog schema (``protodb db ...``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from protodb.entities import DbInfo, SchemaStatus, VerifyReport
from protodb_cli.app import SCHEMA, WRITE, Ctx, command
from protodb_cli.output import fail, say, table

top = typer.Typer()
db_app = typer.Typer(help="Catalog schema: current revision, upgrade, check.", no_args_is_help=True)


@command(top, "init", db=WRITE)
def init(
    ctx: Ctx,
    vectors: Annotated[Optional[str], typer.Option(help="Where vectors live for everyone using this catalog (folder or s3://...).")] = None,
    artifacts: Annotated[Optional[str], typer.Option(help="Where artifacts live for everyone using this catalog (folder or s3://...).")] = None,
) -> None:
    """Create a database (catalog at the newest schema) or check an existing one.

    Example: protodb init --db ./protos
    Example: protodb init --catalog postgresql://postgres@127.0.0.1/team --vectors s3://b/v --artifacts s3://b/a
    """
    if vectors:
        ctx.db.stores.settings.set("vectors_uri", vectors)
    if artifacts:
        ctx.db.stores.settings.set("artifacts_uri", artifacts)
    ctx.emit(ctx.db.info(), lambda i: say(f"protodb database ready: catalog {i.catalog_url} (schema {i.schema_revision})"))


def _info(i: DbInfo) -> None:
    table(["key", "value"], [(k, v) for k, v in i.to_dict().items()])


@command(top, "info")
def info(ctx: Ctx) -> None:
    """Where the database lives, its schema revision and what it holds.

    Example: protodb info --json
    """
    ctx.emit(ctx.db.info(), _info)


def _verify(r: VerifyReport) -> None:
    say(f"checked {r.artifacts_checked} artifacts, {r.sets_checked} sets and {r.models_checked} model files: "
        f"{len(r.damage)} problems" + ("" if r.damage else " (ok)"))
    for d in r.damage:
        say(f"damaged {d.what} {d.name or d.id}: {d.problem}")
    for i in r.indexes:
        if i.state == "stale":
            say(f"index of {i.vocabulary} ({i.extractor}) is stale: its classes' sets changed since it was built; "
                f"rebuild: protodb index build {i.vocabulary}")


@command(top, "verify")
def verify(ctx: Ctx) -> None:
    """Re-hash every artifact and model file, read and checksum every ready set's vectors; name each
    damaged set, artifact, model or row, and exit 1 on any problem.

    Example: protodb verify --json
    """
    report = ctx.db.verify()
    ctx.emit(report, _verify)
    if not report.ok:
        raise typer.Exit(1)


def _schema_line(s: SchemaStatus) -> None:
    say(f"{s.catalog_url}: revision {s.revision} (head {s.head})" + ("" if s.up_to_date else " — run: protodb db upgrade"))


@command(db_app, "current", db=SCHEMA)
def db_current(ctx: Ctx) -> None:
    """Show the catalog's schema revision and this protodb's newest one.

    Example: protodb db current --json
    """
    ctx.emit(ctx.open_db(create=False, check_schema=False).schema.current(), _schema_line)


@command(db_app, "upgrade", db=SCHEMA)
def db_upgrade(ctx: Ctx, target: Annotated[str, typer.Argument(help="Revision to upgrade to.")] = "head") -> None:
    """Migrate the catalog to the newest schema (safe to run twice).

    Example: protodb db upgrade
    """
    ctx.emit(ctx.open_db(create=True, check_schema=False).schema.upgrade(target),
             lambda s: say(f"catalog at revision {s.revision}"))


@command(db_app, "downgrade", db=SCHEMA)
def db_downgrade(ctx: Ctx, target: Annotated[str, typer.Argument(
        help="Revision to go back to, or 'base' (drops everything).")]) -> None:
    """Migrate the catalog back to an older revision (developers).

    Example: protodb db downgrade base
    """
    ctx.emit(ctx.open_db(create=False, check_schema=False).schema.downgrade(target),
             lambda s: say(f"catalog at revision {s.revision}"))


@command(db_app, "check", db=SCHEMA)
def db_check(ctx: Ctx) -> None:
    """Compare the ORM with the migrated schema; exit 1 when they differ.

    Example: protodb db check
    """
    data = ctx.open_db(create=False, check_schema=False).schema.check()
    ctx.emit(data, lambda s: say(f"schema in sync at revision {s.revision}") if s.in_sync else None)
    if not data.in_sync:
        fail(f"ORM and migrations differ: {data.differences}")


