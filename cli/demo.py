"""``protodb demo``: the offline end-to-end run (no database option: it makes its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protodb.demo import run_demo
from protodb_cli.app import Ctx, command
from protodb_cli.output import say

top = typer.Typer()


@command(top, "demo", db=None)
def demo(
    ctx: Ctx,
    out: Annotated[Path, typer.Option(help="Folder for the demo database, pictures and report.")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer classes (the test suite's form).")] = False,
) -> None:
    """Offline end-to-end demo: build classes from real photos with a real DINOv2 (ONNX), draw one
    class with a stand-in generator, segment, inspect, write a report.

    Example: protodb demo --out demo-out
    """
    res = run_demo(out, quick=quick, say=(lambda m: None) if (ctx.quiet or ctx.json) else say)
    if ctx.json:
        ctx.emit(res)
