"""Progress display: rich bars on a terminal, one plain line per stage when piped, nothing with --quiet."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from protodb_cli.common import err_console


@contextlib.contextmanager
def stage_progress(quiet: bool = False) -> Iterator:
    """Yields ``callback(stage, advance, total)`` as the pipeline expects."""
    if quiet:
        yield lambda stage, n, total: None
        return
    if not err_console.is_terminal:
        seen: set[str] = set()

        def plain(stage: str, n: int, total: int | None) -> None:
            if total is not None and stage not in seen:
                seen.add(stage)
                err_console.print(f"{stage}: {total} to do")

        yield plain
        return
    bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=False)
    tasks: dict[str, int] = {}
    with bars:
        def update(stage: str, n: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            elif total is not None:
                bars.update(tasks[stage], total=total)
            if n:
                bars.advance(tasks[stage], n)

        yield update
