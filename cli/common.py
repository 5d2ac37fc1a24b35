"""Shared CLI plumbing: database options, JSON/human output, one-line errors, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import click
import typer
from rich.console import Console
from rich.text import Text

import protodb
from protodb.errors import ProtoDBError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 usage error, 3 some inputs failed (the others finished)."
)

DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="Database folder (default: $PROTODB_HOME or ~/.protodb).",
                 envvar="PROTODB_HOME", show_default=False),
]
CatalogOpt = Annotated[
    Optional[str],
    typer.Option("--catalog", help="Catalog URL, e.g. postgresql://user@host/db "
                 "(default: $PROTODB_CATALOG_URL or DB/catalog.sqlite).",
                 envvar="PROTODB_CATALOG_URL", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def open_db(db: Path | None, catalog: str | None, *, create: bool = True,
            check_schema: bool = True) -> protodb.api.ProtoDB:
    from protodb.api import ProtoDB

    return ProtoDB(db, catalog_url=catalog, create=create, check_schema=check_schema)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """One line on stderr (user text is never read as rich markup) and exit ``code``."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn user-caused errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except ProtoDBError as err:
            fail(str(err).splitlines()[0] if str(err) else type(err).__name__, err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; nothing half-written is visible, re-run to continue", 130)
        except Exception as err:  # noqa: BLE001 - last resort: still one line, details on demand
            if os.environ.get("PROTODB_DEBUG"):
                raise
            fail(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                 "(set PROTODB_DEBUG=1 for the traceback)")

    return wrapper


def say(message: str, quiet: bool = False) -> None:
    """Human output goes to stderr so that stdout stays clean for --json and pipes."""
    if not quiet:
        err_console.print(message, markup=False, highlight=False)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as everywhere in protodb's output)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
