"""``protodb``: the command line. Thin: parse, call ``protodb.api``, print."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from protodb_cli.common import (
    EXIT_CODES_HELP,
    CatalogOpt,
    DbOpt,
    JsonOpt,
    QuietOpt,
    err_console,
    fail,
    handle_errors,
    human_bytes,
    open_db,
    print_json,
    say,
)

app = typer.Typer(
    name="protodb",
    help="Training-free open-vocabulary segmentation (OVDiff) with a persistent prototype database.\n\n"
    "Example: protodb init --db ./protos && protodb info --db ./protos --json\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Catalog schema: current revision, upgrade, check.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _version(value: bool) -> None:
    if value:
        from protodb import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                     help="Print the protodb version.")
    ] = None,
) -> None:
    pass


@app.command()
@handle_errors
def init(
    db: DbOpt = None,
    catalog: CatalogOpt = None,
    vectors: Annotated[Optional[str], typer.Option(
        help="Where vectors live for everyone using this catalog (folder or s3://…).")] = None,
    artifacts: Annotated[Optional[str], typer.Option(
        help="Where artifacts live for everyone using this catalog (folder or s3://…).")] = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a database (catalog at the newest schema) or check an existing one.

    Example: protodb init --db ./protos
    Example: protodb init --catalog postgresql://postgres@127.0.0.1/team --vectors s3://b/v --artifacts s3://b/a
    """
    pdb = open_db(db, catalog)
    if vectors:
        pdb.set_setting("vectors_uri", vectors)
    if artifacts:
        pdb.set_setting("artifacts_uri", artifacts)
    info = pdb.info()
    if json:
        print_json(info)
    else:
        say(f"protodb database ready: catalog {info['catalog_url']} "
            f"(schema {info['schema_revision']})", quiet)


@app.command()
@handle_errors
def info(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """Where the database lives, its schema revision and what it holds.

    Example: protodb info --json
    """
    data = open_db(db, catalog).info()
    if json:
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(key, str(value))
    err_console.print(table)


@app.command("ls")
@handle_errors
def ls_(
    names: Annotated[Optional[list[str]], typer.Argument(help="Only these classes.")] = None,
    db: DbOpt = None,
    catalog: CatalogOpt = None,
    json: JsonOpt = False,
) -> None:
    """List classes with their ready versions, extractors, thing/stuff label and sizes.

    Example: protodb ls --json
    """
    data = open_db(db, catalog).ls(names)
    if json:
        print_json(data)
        return
    table = Table("class", "kind", "version", "extractors", "images", "prototypes", "tags", "bytes")
    for cls in data:
        if not cls["versions"]:
            table.add_row(cls["name"], cls["kind"], "-", "-", "-", "-", "", "-")
        for v in cls["versions"]:
            table.add_row(
                cls["name"], cls["kind"], str(v["version"]), ",".join(v["extractors"]),
                str(v["images"]), str(sum(v["counts"].values())), ",".join(v["tags"]),
                human_bytes(v["bytes"]),
            )
    err_console.print(table if data else "no classes yet; add one with: protodb add-class boat")


@app.command()
@handle_errors
def verify(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """Re-hash every artifact and count every ready set's vectors; exit 1 on any problem.

    Example: protodb verify --json
    """
    report = open_db(db, catalog).verify()
    if json:
        print_json(report)
    else:
        say(f"checked {report['artifacts_checked']} artifacts and {report['sets_checked']} sets: "
            f"{len(report['missing'])} missing, {len(report['corrupt'])} corrupt, "
            f"{len(report['bad_sets'])} sets with wrong vector counts")
        for digest in report["missing"]:
            say(f"missing  {digest}")
        for digest in report["corrupt"]:
            say(f"corrupt  {digest}")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
@handle_errors
def alias(
    tag: Annotated[str, typer.Argument(help="Alias or tag name, e.g. voc:paper.")],
    refs: Annotated[Optional[list[str]], typer.Argument(
        help="Sets to pin: boat, boat@3, cat@other-tag. None: show what the tag pins.")] = None,
    extractor: Annotated[Optional[str], typer.Option(help="Only this extractor's sets.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Delete the tag.")] = False,
    db: DbOpt = None,
    catalog: CatalogOpt = None,
    json: JsonOpt = False,
) -> None:
    """Pin prototype sets under a name: then boat@NAME, or every set tagged NAME, can be used.

    Example: protodb alias voc:paper boat@2 cat@1 dog
    """
    pdb = open_db(db, catalog)
    if remove:
        n = pdb.untag(tag)
        out = {"tag": tag, "removed": n}
        print_json(out) if json else say(f"removed tag {tag} from {n} sets")
        return
    sets = pdb.tag(tag, refs, extractor=extractor) if refs else pdb.tagged(tag)
    out = [{"class": s["class"], "version": s["version"], "extractor": s["extractor"],
            "set": s["id"]} for s in sets]
    if json:
        print_json({"tag": tag, "sets": out})
    else:
        for row in out:
            say(f"{tag}: {row['class']}@{row['version']} ({row['extractor']})")


@db_app.command("current")
@handle_errors
def db_current(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """Show the catalog's schema revision and this protodb's newest one.

    Example: protodb db current --json
    """
    data = open_db(db, catalog, create=False, check_schema=False).db_current()
    print_json(data) if json else say(
        f"{data['catalog_url']}: revision {data['revision']} (head {data['head']})"
        + ("" if data["up_to_date"] else " — run: protodb db upgrade")
    )


@db_app.command("upgrade")
@handle_errors
def db_upgrade(
    target: Annotated[str, typer.Argument(help="Revision to upgrade to.")] = "head",
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Migrate the catalog to the newest schema (safe to run twice).

    Example: protodb db upgrade
    """
    data = open_db(db, catalog, check_schema=False).db_upgrade(target)
    print_json(data) if json else say(f"catalog at revision {data['revision']}")


@db_app.command("downgrade")
@handle_errors
def db_downgrade(
    target: Annotated[str, typer.Argument(help="Revision to go back to, or 'base' (drops everything).")],
    db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False,
) -> None:
    """Migrate the catalog back to an older revision (developers).

    Example: protodb db downgrade base
    """
    data = open_db(db, catalog, create=False, check_schema=False).db_downgrade(target)
    print_json(data) if json else say(f"catalog at revision {data['revision']}")


@db_app.command("check")
@handle_errors
def db_check(db: DbOpt = None, catalog: CatalogOpt = None, json: JsonOpt = False) -> None:
    """Compare the ORM with the migrated schema; exit 1 when they differ.

    Example: protodb db check
    """
    data = open_db(db, catalog, check_schema=False).db_check()
    if json:
        print_json(data)
    elif data["in_sync"]:
        say(f"schema in sync at revision {data['revision']}")
    if not data["in_sync"]:
        fail(f"ORM and migrations differ: {data['differences']}")


def main() -> None:
    app()


# Command groups that live in their own modules register themselves on ``app``.
from protodb_cli import commands  # noqa: E402,F401


if __name__ == "__main__":
    main()
