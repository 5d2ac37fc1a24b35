"""Output for the command line: one helper for results (``emit``), one-line errors, progress bars.

Human output goes to stderr (rich tables and bars on a terminal, plain lines when piped), ``--json``
goes to stdout, ``--quiet`` silences everything but errors. User text is never read as rich markup.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from typing import Any, Callable, Iterator, Sequence

import click
import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from protodb.entities import plain
from protodb.errors import ProtoDBError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_CODES_HELP = "Exit codes: 0 ok, 1 error, 2 usage error, 3 some inputs failed (the others finished)."

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(plain(data), indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def say(message: str, quiet: bool = False) -> None:
    """One human line on stderr (stdout stays clean for --json and pipes)."""
    if not quiet:
        err_console.print(message, markup=False, highlight=False)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """One line on stderr and exit ``code``."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> None:
    """A rich table on a terminal; tab-separated plain lines (with a header) when not a terminal."""
    if not rows:
        if empty:
            say(empty)
        return
    if not err_console.is_terminal:  # tab-separated lines for pipes and files (rich would expand tabs)
        for r in [columns, *rows]:
            sys.stderr.write("\t".join("" if v is None else str(v) for v in r) + "\n")
        sys.stderr.flush()
        return
    t = Table(*columns)
    for r in rows:
        t.add_row(*("" if v is None else Text(str(v)) for v in r))
    err_console.print(t)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as everywhere in protodb's output)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _sigterm(_signum, _frame):  # SIGTERM unwinds like Ctrl-C: temporary files are removed
    raise KeyboardInterrupt


def handle_errors(fn: Callable) -> Callable:
    """User-caused errors become one line on stderr and a non-zero exit; SIGTERM cleans up like ^C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with contextlib.suppress(ValueError):  # not the main thread (tests): no handler needed
            signal.signal(signal.SIGTERM, _sigterm)
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


@contextlib.contextmanager
def progress_bars(quiet: bool = False, *, unit: str = "items", inputs: str | None = None) -> Iterator[Callable]:
    """The one progress display of the command line: rich bars on a terminal (elapsed and remaining time),
    one plain line per stage when piped, nothing when quiet.

    Yields ``callback(stage, advance, total)`` as the pipeline and sharing code call it (a total given
    again for a known stage resets it; ``unit="bytes"`` shows sizes and speed), or with ``inputs=LABEL``
    ``callback(done, total)`` over a command's inputs (``segment``, ``eval``; silent when piped)."""
    if quiet or (inputs is not None and not err_console.is_terminal):
        yield (lambda done, total: None) if inputs is not None else (lambda stage, n, total: None)
        return
    if not err_console.is_terminal:
        seen: set[str] = set()

        def plain_line(stage: str, n: int, total: int | None) -> None:
            if total is not None and stage not in seen:
                seen.add(stage)
                say(f"{stage}: {total} {'bytes' if unit == 'bytes' else 'to do'}")

        yield plain_line
        return
    counter = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), *counter, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=False)
    tasks: dict[str, int] = {}
    with bars:
        def update(stage: str, n: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            elif total is not None:
                bars.reset(tasks[stage], total=total)
            if n:
                bars.advance(tasks[stage], n)

        if inputs is None:
            yield update
        else:
            task = bars.add_task(inputs, total=None)
            yield lambda done, total: bars.update(task, completed=done, total=total)
