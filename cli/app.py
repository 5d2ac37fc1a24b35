"""How commands are declared: ``@command(group)`` gives a function ``fn(ctx: Ctx, ...)`` the shared
options once (``--db``, ``--catalog``, ``--json``, ``--quiet``, ``-v``), opens the database the way the
command needs (read-only commands never create one), turns errors into one line, and hands it a
:class:`Ctx` with ``emit(result, human=render)`` instead of ``if json:`` branches.

Options several commands share are declared once as an :class:`OptionGroup`: a parameter of ``fn``
annotated with the group (``run: Annotated[BuildRun, RUN]``) becomes the group's options on the command
line and reaches ``fn`` as one value built from them.

``--db`` and ``--catalog`` (and ``-v``) may also come before the command: ``protodb --db X ls``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import click
import typer

import protodb
from protodb import logs
from protodb_cli.output import handle_errors, print_json, progress_bars, say

READ, WRITE, SCHEMA = "read", "write", "schema"

DbOpt = Annotated[Optional[Path], typer.Option(
    "--db", help="Database folder (default: $PROTODB_HOME or ~/.protodb).", envvar="PROTODB_HOME",
    show_default=False)]
CatalogOpt = Annotated[Optional[str], typer.Option(
    "--catalog", help="Catalog URL, e.g. postgresql://user@host/db (default: $PROTODB_CATALOG_URL or "
    "DB/catalog.sqlite).", envvar="PROTODB_CATALOG_URL", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Log decisions on stderr (-vv: debug). Or PROTODB_LOG=debug.")]

_SHARED = {
    "db_path": (DbOpt, None), "catalog": (CatalogOpt, None), "json": (JsonOpt, False),
    "quiet": (QuietOpt, False), "verbose": (VerboseOpt, 0),
}


class Ctx:
    """One command invocation: its shared options, its database (opened on first use), its output."""

    def __init__(self, mode: str | None, db_path: Path | None, catalog: str | None, json: bool, quiet: bool):
        self.mode, self.db_path, self.catalog, self.json, self.quiet = mode, db_path, catalog, json, quiet
        self._db = None

    @property
    def db(self) -> "protodb.api.ProtoDB":
        if self._db is None:
            self._db = protodb.api.ProtoDB(self.db_path, catalog_url=self.catalog, create=self.mode == WRITE,
                                           check_schema=self.mode != SCHEMA)
        return self._db

    def open_db(self, *, create: bool, check_schema: bool = True) -> "protodb.api.ProtoDB":
        """Open with explicit rules (``db`` subcommands)."""
        self._db = protodb.api.ProtoDB(self.db_path, catalog_url=self.catalog, create=create,
                                       check_schema=check_schema)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def emit(self, result: Any, human: Callable[[Any], None] | None = None) -> None:
        """``--json``: the result's ``to_dict()`` on stdout; otherwise ``human(result)`` unless quiet."""
        if self.json:
            print_json(result)
        elif not self.quiet and human is not None:
            human(result)

    def say(self, message: str) -> None:
        if not self.json:
            say(message, self.quiet)

    def progress(self, unit: str = "items"):
        """``progress(stage, advance, total)`` for the pipeline and sharing code (bars on a terminal)."""
        return progress_bars(self.quiet or self.json, unit=unit)

    def input_progress(self, label: str):
        """``progress(done, total)`` over a command's inputs (``segment``, ``eval``)."""
        return progress_bars(self.quiet or self.json, inputs=label)


@dataclass(frozen=True)
class OptionGroup:
    """Options shared by several commands, declared once: ``params`` {parameter: (Annotated type,
    default)}; ``build(**values)`` makes the one value the command receives."""

    params: dict[str, tuple[Any, Any]]
    build: Callable[..., Any]


def _group_of(annotation: Any) -> OptionGroup | None:
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in typing.get_args(annotation)[1:] if isinstance(m, OptionGroup)), None)
    return None


def register(app: typer.Typer, *groups: typer.Typer, subgroups: dict[str, typer.Typer] | None = None) -> None:
    """Put the commands of ``groups`` (top-level ``typer.Typer`` collections) and the sub-command apps of
    ``subgroups`` ({name: app}, e.g. ``protodb vocab ...``) on the root ``app``."""
    for group in groups:
        app.registered_commands.extend(group.registered_commands)
    for name, sub in (subgroups or {}).items():
        app.add_typer(sub, name=name)


def command(group: typer.Typer, name: str | None = None, *, db: str | None = READ, json: bool = True,
            quiet: bool = True):
    """Register ``fn(ctx, ...)`` on ``group``; ``db``: READ (must exist, never created), WRITE
    (created when missing), SCHEMA (no revision check; ``db`` subcommands) or None (no database)."""
    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        params, option_groups = [], {}
        for p in sig.parameters.values():
            options = _group_of(p.annotation)
            if options is not None:  # fn gets options.build(**values) of the group's options
                option_groups[p.name] = options
            elif p.name != "ctx":
                params.append(p)
        for options in option_groups.values():
            params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                       for k, (a, d) in options.params.items()]
        shared = [k for k in _SHARED if (db is not None or k not in ("db_path", "catalog"))
                  and (json or k != "json") and (quiet or k != "quiet")]
        for key in shared:
            annotation, default = _SHARED[key]
            params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        # typer passes the click context to a parameter annotated typer.Context (root options live there)
        params.append(inspect.Parameter("click_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(fn)
        @handle_errors
        def run(*args, **kwargs):
            root = _root_options(kwargs.pop("click_ctx", None))
            opts = {k: kwargs.pop(k, _SHARED[k][1]) for k in shared}
            for key, options in option_groups.items():
                kwargs[key] = options.build(**{k: kwargs.pop(k, d) for k, (_a, d) in options.params.items()})
            logs.configure(max(opts.get("verbose", 0), root.get("verbose", 0)))
            ctx = Ctx(db, opts.get("db_path") or root.get("db_path"), opts.get("catalog") or root.get("catalog"),
                      opts.get("json", False), opts.get("quiet", False))
            try:
                return fn(ctx, *args, **kwargs)
            finally:
                ctx.close()

        run.__signature__ = sig.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        group.command(name)(run)
        return fn

    return deco


def _root_options(click_ctx: click.Context | None) -> dict[str, Any]:
    """What the root callback stored (``protodb --db X -v CMD``): ``db_path``, ``catalog``, ``verbose``."""
    while click_ctx is not None and click_ctx.parent is not None:
        click_ctx = click_ctx.parent
    return dict((click_ctx.obj or {}) if click_ctx is not None else {})
