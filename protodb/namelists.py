"""Class-name lists read from files: ``protodb vocab create NAME --from-file names.txt``.

A list is either text, one class per line (``boat``, ``boat@3``; blank lines and lines whose first
non-blank character is ``#`` are skipped), or a JSON list of strings (the file's first non-blank
character is ``[``; a file starting with ``{`` is refused as JSON that is not a list). Every name goes through the one class-name rule
(:class:`protodb.names.Ref` / :func:`protodb.names.normalize_class_name`) before anything is written:
the first bad entry is one InvalidInput line naming the file and its line number.

Two entries that name the same class after normalisation (``Cat`` and ``cat ``) are one class: the
first is kept, the later ones are reported as duplicates. The same class pinned two different ways
(``boat@2`` and ``boat@3``) is an error, since it is not clear which one is meant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from protodb.entities import Entity
from protodb.errors import InvalidInput
from protodb.names import Ref

MAX_FILE_BYTES = 64 << 20  # a name list, not a data set


@dataclass(frozen=True)
class Duplicate(Entity):
    """An entry dropped because an earlier entry names the same class."""

    line: int
    text: str
    same_as_line: int


@dataclass(frozen=True)
class NameList(Entity):
    """The classes of a list file, in file order, each once. ``lines``: the line of each ref."""

    source: str
    refs: tuple[str, ...]
    lines: tuple[int, ...]
    duplicates: tuple[Duplicate, ...]


def _read_text(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    else:
        p = Path(path)
        if not p.is_file():
            raise InvalidInput(f"no file {path!r}; give a text file with one class name per line")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{path} is over {MAX_FILE_BYTES >> 20} MiB; a name list is one name per line")
        data = p.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(f"{path} is over {MAX_FILE_BYTES >> 20} MiB; a name list is one name per line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InvalidInput(f"{path} line {line}: not UTF-8 text (byte {err.start})") from None


def _json_entries(path: str, text: str) -> list[tuple[int, str]]:
    """(line, item) for each item of a JSON list, with the line where the item starts."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"{path} line {err.lineno}: not a JSON list of names ({err.msg})") from None
    if not isinstance(parsed, list):
        raise InvalidInput(f"{path} line 1: a JSON name list is a list of strings, not {type(parsed).__name__}")
    decoder, ws = json.JSONDecoder(), " \t\r\n"
    pos, line, out = text.index("[") + 1, 1 + text.count("\n", 0, text.index("[")), []
    while True:  # walk the (already valid) list to know where each item starts
        start = pos
        while text[pos] in ws:
            pos += 1
        line += text.count("\n", start, pos)
        if text[pos] == "]":
            break
        value, end = decoder.raw_decode(text, pos)
        if not isinstance(value, str):
            raise InvalidInput(f"{path} line {line}: item {len(out) + 1} is {json.dumps(value)[:40]}, "
                               "not a class name (a JSON name list holds strings)")
        out.append((line, value))
        line += text.count("\n", pos, end)
        pos = end
        while text[pos] in ws + ",":
            line += text[pos] == "\n"
            pos += 1
    return out


def _text_entries(text: str) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            out.append((number, stripped))
    return out


def parse_name_list(text: str, source: str = "<names>") -> NameList:
    """The classes of list ``text`` (see the module docstring); ``source`` names it in errors."""
    is_json = text.lstrip().startswith(("[", "{"))
    entries = _json_entries(source, text) if is_json else _text_entries(text)
    refs: list[str] = []
    lines: list[int] = []
    first: dict[str, tuple[int, str]] = {}  # class name -> (line, ref)
    duplicates: list[Duplicate] = []
    for line, item in entries:
        try:
            ref = Ref.parse(item)
        except InvalidInput as err:
            raise InvalidInput(f"{source} line {line}: {err}") from None
        seen = first.get(ref.name)
        if seen is not None:
            if seen[1] != str(ref):
                raise InvalidInput(f"{source} line {line}: {str(ref)!r} names class {ref.name!r} again, "
                                   f"pinned differently from line {seen[0]} ({seen[1]!r}); keep one")
            duplicates.append(Duplicate(line, item, seen[0]))
            continue
        first[ref.name] = (line, str(ref))
        refs.append(str(ref))
        lines.append(line)
    if not refs:
        raise InvalidInput(f"{source} has no class names (blank lines and # comments are skipped); "
                           "write one name per line")
    return NameList(source, tuple(refs), tuple(lines), tuple(duplicates))


def read_name_list(path: str | Path) -> NameList:
    """:func:`parse_name_list` of file ``path`` (``-``: standard input)."""
    path = str(path)
    return parse_name_list(_read_text(path), "<stdin>" if path == "-" else path)


__all__ = ["Duplicate", "NameList", "parse_name_list", "read_name_list"]
