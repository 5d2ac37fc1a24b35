"""``protodb``: the command line. The root only wires the command groups; each group lives in its own
module and is thin: parse, call the Python API (``protodb.api.ProtoDB``), print with ``emit``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from protodb._version import __version__
from protodb_cli import build, classes, db, demo, extractor, index, segment, serve, share, teach, vocab
from protodb_cli.app import CatalogOpt, DbOpt, VerboseOpt, register
from protodb_cli.output import EXIT_CODES_HELP

app = typer.Typer(
    name="protodb",
    help="Training-free open-vocabulary segmentation (OVDiff) with a persistent prototype database.\n\n"
    "Example: protodb init --db ./protos && protodb info --db ./protos --json\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the protodb version.")] = None,
    db_path: DbOpt = None,
    catalog: CatalogOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    ctx.obj = {"db_path": db_path, "catalog": catalog, "verbose": verbose}


register(app, db.top, build.top, classes.top, segment.top, teach.top, share.top, demo.top, serve.top,
         subgroups={"db": db.db_app, "vocab": vocab.vocab_app, "remote": share.remote_app,
                    "extractor": extractor.extractor_app, "corrections": teach.corrections_app,
                    "index": index.index_app})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
