"""Vocabularies: named lists of classes to segment with (``protodb vocab ...``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from protodb.entities import LabelRun, Vocabulary
from protodb.errors import InvalidInput
from protodb.namelists import NameList, read_name_list
from protodb.names import check_tag_name
from protodb.thing_stuff import DEFAULT_BATCH_SIZE, LLMClient
from protodb_cli.app import WRITE, Ctx, command
from protodb_cli.options import LexiconOpt
from protodb_cli.output import EXIT_PARTIAL, say, table

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
    classes: Annotated[Optional[list[str]], typer.Argument(help="Classes; pin versions with boat@3.", show_default=False)] = None,
    description: Annotated[Optional[str], typer.Option(help="What it is for.")] = None,
    from_file: Annotated[Optional[str], typer.Option(
        "--from-file", metavar="PATH",
        help="Read the classes from a file: one name per line (blank lines and # comments skipped) "
             "or a JSON list of names; '-' reads standard input. Names that are the same class after "
             "normalising (Cat, cat) are kept once.", show_default=False)] = None,
) -> None:
    """Create a vocabulary.

    Example: protodb vocab create pets cat dog "guinea pig"

    Example: protodb vocab create my-lvis --from-file lvis_names.txt
    """
    if from_file is None:
        if not classes:
            raise InvalidInput(f"give the classes, e.g. protodb vocab create {name} cat dog, "
                               f"or a file: protodb vocab create {name} --from-file names.txt")
        ctx.emit(ctx.db.vocabs.create(name, classes, description=description), _show)
        return
    if classes:
        raise InvalidInput("give the classes either as arguments or with --from-file, not both")
    check_tag_name(name)
    names = read_name_list(from_file)  # every line checked before the database is opened
    vocab = ctx.db.vocabs.create(name, list(names.refs), description=description)
    ctx.emit({**vocab.to_dict(), "from_file": names.source, "duplicates": names.duplicates},
             lambda _: _show_created(vocab, names))


def _show_created(v: Vocabulary, names: NameList) -> None:
    shown = ", ".join(v.classes[:12]) + (f", ... ({len(v.classes) - 12} more)" if len(v.classes) > 12 else "")
    say(f"created {v.name} (version {v.version}, {len(v.classes)} classes) from {names.source}: {shown}")
    if names.duplicates:
        first = names.duplicates[0]
        say(f"{len(names.duplicates)} duplicate name(s) kept once (line {first.line} {first.text!r} "
            f"is the class of line {first.same_as_line})")


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


@command(vocab_app, "label", db=WRITE)
def vocab_label(
    ctx: Ctx,
    name: str,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=500,
                                            help="Class names per LLM request.")] = DEFAULT_BATCH_SIZE,
    lexicon_only: Annotated[bool, typer.Option(
        "--lexicon-only", help="Use only the stuff lexicon and the datasets' own thing/stuff splits; ask no LLM.")] = False,
    lexicon: LexiconOpt = None,
) -> None:
    """Label every class of a vocabulary that has no thing/stuff decision yet: the built-in stuff
    lexicon and the datasets' own splits first, then the LLM ($PROTODB_LLM_BASE_URL,
    $PROTODB_LLM_MODEL) in batches of --batch-size names per request. Answered batches are kept if
    the run stops; running it again asks only about the rest. Labels decided by the LLM or by hand
    before are never changed (change one with: protodb label NAME --stuff).

    Example: protodb vocab label lvis --batch-size 100
    Example: protodb vocab label ade --lexicon ovdiff --lexicon-only   # the OVDiff authors' table
    """
    client = None if lexicon_only else LLMClient.from_env()
    with ctx.progress(unit="classes") as progress:
        run = ctx.db.vocabs.label(name, client=client, batch_size=batch_size, lexicon_only=lexicon_only,
                                  on_progress=progress, lexicon=lexicon)
    ctx.emit(run, _show_labelled)
    if run.failed:
        raise typer.Exit(EXIT_PARTIAL)


def _show_labelled(r: LabelRun) -> None:
    asked = f", {r.llm} by {r.model} in {r.requests} request(s)" if r.model else ""
    say(f"{r.vocabulary}: {r.classes} classes: {r.already} decided before, {r.lexicon} stuff by the lexicon, "
        f"{r.dataset} from the datasets' own splits{asked}; {r.changed} changed kind"
        + (f"; {r.left} left with the lexicon's default 'thing'" if r.left else ""))
    for f in r.failed[:5]:
        say(f"no usable LLM label for {f.name!r}: {f.reason}")
    if len(r.failed) > 5:
        say(f"... and {len(r.failed) - 5} more without a usable label (see --json)")
