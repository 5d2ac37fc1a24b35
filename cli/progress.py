"""Progress display: rich bars on a terminal, one plain line per stage when piped, nothing with --quiet."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from protodb_cli.common import err_console


@contextlib.contextmanager
def stage_progress(quiet: bool = False, *, unit: str = "items") -> Iterator:
    """Yields ``callback(stage, advance, total)`` as the pipeline and sharing code expect.

    ``unit="bytes"`` shows sizes and transfer speed. A total given again for a known stage resets it.
    """
    if quiet:
        yield lambda stage, n, total: None
        return
    if not err_console.is_terminal:
        seen: set[str] = set()

        def plain(stage: str, n: int, total: int | None) -> None:
            if total is not None and stage not in seen:
                seen.add(stage)
                err_console.print(f"{stage}: {total} {'bytes' if unit == 'bytes' else 'to do'}",
                                  markup=False, highlight=False)

        yield plain
        return
    counter = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), *counter, TimeElapsedColumn(),
                    console=err_console, transient=False)
    tasks: dict[str, int] = {}
    with bars:
        def update(stage: str, n: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            elif total is not None:
                bars.reset(tasks[stage], total=total)
            if n:
                bars.advance(tasks[stage], n)

        yield update
